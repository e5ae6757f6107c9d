"""Reads of executions, their steps and their events (every query scoped to an organization)."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, or_, select

from tolstoy import ids, jsonutil
from tolstoy.errors import BadRequest, NotFound
from tolstoy.store.db import Database
from tolstoy.store.tables import events, executions, step_runs


@dataclass(frozen=True, slots=True)
class ExecutionFilter:
    status: Sequence[str] = ()
    flow_id: str | None = None
    created_from: int | None = None
    created_to: int | None = None


def new_row(
    org_id: str, flow_id: str, version: int, total_steps: int, now: int, **columns: Any
) -> dict[str, Any]:
    """A complete ``executions`` row for a journal ``Write(create=...)``: queued and due at ``now``
    unless ``columns`` say otherwise."""
    row: dict[str, Any] = {
        "id": ids.execution_id(),
        "org_id": org_id,
        "flow_id": flow_id,
        "concurrency_limit": None,
        "flow_version": version,
        "status": "queued",
        "variables": {},
        "total_steps": total_steps,
        "completed_steps": 0,
        "failed_steps": 0,
        "skipped_steps": 0,
        "run_after": now,
        "lease_epoch": 0,
        "cancel_requested": False,
        "pause_requested": False,
        "retry_of": None,
        "from_failed_step": False,
        "idempotency_key": None,
        "created_at": now,
        "created_by": None,
    }
    row.update(columns)
    return row


def encode_cursor(created_at: int, id_: str) -> str:
    return base64.urlsafe_b64encode(jsonutil.dumpb([created_at, id_])).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created_at, id_ = jsonutil.loads(base64.urlsafe_b64decode(padded))
        return int(created_at), str(id_)
    except Exception as exc:
        raise BadRequest("cursor is not one this server issued") from exc


async def get(db: Database, org_id: str, execution_id: str) -> dict[str, Any]:
    async with db.read() as conn:
        stmt = select(executions).where(executions.c.id == execution_id, executions.c.org_id == org_id)
        row = (await conn.execute(stmt)).first()
    if row is None:
        raise NotFound(f"execution {execution_id!r} not found")
    return dict(row._mapping)


async def find_by_idempotency_key(db: Database, org_id: str, key: str) -> dict[str, Any] | None:
    async with db.read() as conn:
        stmt = select(executions).where(executions.c.org_id == org_id, executions.c.idempotency_key == key)
        row = (await conn.execute(stmt)).first()
    return dict(row._mapping) if row else None


async def list_page(
    db: Database, org_id: str, flt: ExecutionFilter, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """Newest first; the cursor is the (created_at, id) of the last item."""
    conds = [executions.c.org_id == org_id]
    if flt.status:
        conds.append(executions.c.status.in_(list(flt.status)))
    if flt.flow_id:
        conds.append(executions.c.flow_id == flt.flow_id)
    if flt.created_from is not None:
        conds.append(executions.c.created_at >= flt.created_from)
    if flt.created_to is not None:
        conds.append(executions.c.created_at <= flt.created_to)
    if cursor:
        at, id_ = decode_cursor(cursor)
        conds.append(
            or_(executions.c.created_at < at, and_(executions.c.created_at == at, executions.c.id < id_))
        )
    stmt = (
        select(executions)
        .where(*conds)
        .order_by(executions.c.created_at.desc(), executions.c.id.desc())
        .limit(limit + 1)
    )
    async with db.read() as conn:
        rows = [dict(r._mapping) for r in await conn.execute(stmt)]
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more and rows else None
    return rows, next_cursor


async def load_step_rows(db: Database, execution_id: str) -> list[dict[str, Any]]:
    async with db.read() as conn:
        stmt = select(step_runs).where(step_runs.c.execution_id == execution_id)
        return [dict(r._mapping) for r in await conn.execute(stmt)]


async def event_bodies(
    db: Database,
    execution_id: str,
    *,
    since: int = 0,
    limit: int | None = None,
    types: Sequence[str] = (),
) -> list[tuple[int, str]]:
    """``(seq, body)`` of events with ``seq > since``, in order (types match exactly or by prefix)."""
    conds = [events.c.execution_id == execution_id, events.c.seq > since]
    if types:
        conds.append(or_(*(_type_match(t) for t in types)))
    stmt = select(events.c.seq, events.c.body).where(*conds).order_by(events.c.seq)
    if limit is not None:
        stmt = stmt.limit(limit)
    async with db.read() as conn:
        return [(r.seq, r.body) for r in await conn.execute(stmt)]


def _type_match(t: str) -> Any:
    return events.c.type.startswith(t) if t.endswith(".") else events.c.type == t


async def counts_by_status(db: Database, org_id: str, flow_id: str) -> dict[str, int]:
    stmt = (
        select(executions.c.status, func.count())
        .where(executions.c.org_id == org_id, executions.c.flow_id == flow_id)
        .group_by(executions.c.status)
    )
    async with db.read() as conn:
        return {r[0]: int(r[1]) for r in await conn.execute(stmt)}


async def durations(db: Database, org_id: str, flow_id: str, limit: int = 1000) -> list[int]:
    stmt = (
        select(executions.c.finished_at - executions.c.started_at)
        .where(
            executions.c.org_id == org_id,
            executions.c.flow_id == flow_id,
            executions.c.finished_at.is_not(None),
            executions.c.started_at.is_not(None),
        )
        .order_by(executions.c.created_at.desc())
        .limit(limit)
    )
    async with db.read() as conn:
        return [int(r[0]) for r in await conn.execute(stmt)]


async def log_bodies(
    db: Database, execution_id: str, *, levels: Sequence[str] = (), since: int = 0, limit: int = 1000
) -> list[str]:
    conds = [events.c.execution_id == execution_id, events.c.type == "log", events.c.seq > since]
    if levels:
        conds.append(events.c.level.in_(list(levels)))
    stmt = select(events.c.body).where(*conds).order_by(events.c.seq).limit(limit)
    async with db.read() as conn:
        return [r.body for r in await conn.execute(stmt)]


async def issue_counts(db: Database, execution_id: str) -> dict[str, int]:
    """``errorCount`` (error/fatal logs, failed attempts) and ``warningCount`` (warn logs, retries)."""
    stmt = (
        select(events.c.type, events.c.level, func.count())
        .where(
            events.c.execution_id == execution_id, events.c.type.in_(["log", "step.failed", "step.retrying"])
        )
        .group_by(events.c.type, events.c.level)
    )
    errors = warnings = 0
    async with db.read() as conn:
        for type_, level, n in await conn.execute(stmt):
            if type_ == "step.failed" or level in ("error", "fatal"):
                errors += int(n)
            elif type_ == "step.retrying" or level == "warn":
                warnings += int(n)
    return {"errorCount": errors, "warningCount": warnings}
