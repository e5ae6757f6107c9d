"""Approval requests of ``approval`` steps: statements for journal writes, and reads."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.sql import Executable

from tolstoy.errors import NotFound
from tolstoy.store.db import Database
from tolstoy.store.executions import decode_cursor, encode_cursor
from tolstoy.store.tables import approvals


def insert_pending(row: dict[str, Any]) -> Executable:
    return insert(approvals).values(**row, status="pending")


def decide(approval_id: str, status: str, by: str | None, comment: str | None, at: int) -> Executable:
    """Move a pending approval to ``status`` (granted, denied, expired)."""
    return (
        update(approvals)
        .where(approvals.c.id == approval_id, approvals.c.status == "pending")
        .values(status=status, decided_by=by, comment=comment, decided_at=at)
    )


def withdraw_pending(execution_id: str, at: int) -> Executable:
    """Close what an execution still asks for when it ends without an answer (cancelled, failed)."""
    return (
        update(approvals)
        .where(approvals.c.execution_id == execution_id, approvals.c.status == "pending")
        .values(status="cancelled", decided_at=at)
    )


async def get(db: Database, org_id: str, approval_id: str) -> dict[str, Any]:
    async with db.read() as conn:
        stmt = select(approvals).where(approvals.c.org_id == org_id, approvals.c.id == approval_id)
        row = (await conn.execute(stmt)).first()
    if row is None:
        raise NotFound(f"approval {approval_id!r} not found")
    return dict(row._mapping)


async def for_step(db: Database, execution_id: str, step_id: str) -> dict[str, Any] | None:
    async with db.read() as conn:
        stmt = select(approvals).where(
            approvals.c.execution_id == execution_id, approvals.c.step_id == step_id
        )
        row = (await conn.execute(stmt)).first()
    return dict(row._mapping) if row else None


async def list_page(
    db: Database, org_id: str, status: str | None, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    conds = [approvals.c.org_id == org_id]
    if status:
        conds.append(approvals.c.status == status)
    if cursor:
        at, id_ = decode_cursor(cursor)
        conds.append(
            (approvals.c.created_at < at) | ((approvals.c.created_at == at) & (approvals.c.id < id_))
        )
    stmt = (
        select(approvals)
        .where(*conds)
        .order_by(approvals.c.created_at.desc(), approvals.c.id.desc())
        .limit(limit + 1)
    )
    async with db.read() as conn:
        rows = [dict(r._mapping) for r in await conn.execute(stmt)]
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more and rows else None)
