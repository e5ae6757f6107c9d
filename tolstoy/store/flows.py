"""Flows and their immutable versions (PUT makes a new version; executions pin one)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, bindparam, insert, or_, select, update

from tolstoy import ids
from tolstoy.errors import Conflict, NotFound
from tolstoy.store.db import Database
from tolstoy.store.executions import decode_cursor, encode_cursor
from tolstoy.store.tables import flow_versions, flows
from tolstoy.timeutil import now_ms


def _live(org_id: str) -> Any:
    return and_(flows.c.org_id == org_id, flows.c.deleted_at.is_(None))


async def create(db: Database, org_id: str, definition: dict[str, Any]) -> dict[str, Any]:
    now = now_ms()
    flow_id = ids.new_id("flow")
    row = {
        "id": flow_id,
        "org_id": org_id,
        "name": definition["name"],
        "description": definition.get("description"),
        "current_version": 1,
        "created_at": now,
        "updated_at": now,
    }
    async with db.write() as conn:
        taken = await conn.execute(
            select(flows.c.id).where(_live(org_id), flows.c.name == definition["name"])
        )
        if taken.first() is not None:
            raise Conflict(
                f"a flow named {definition['name']!r} exists already; PUT /api/v1/flows/{{id}} updates it"
            )
        await conn.execute(insert(flows).values(**row))
        await conn.execute(
            insert(flow_versions).values(flow_id=flow_id, version=1, definition=definition, created_at=now)
        )
    return row


async def new_version(db: Database, org_id: str, flow_id: str, definition: dict[str, Any]) -> dict[str, Any]:
    now = now_ms()
    async with db.write() as conn:
        stmt = (
            update(flows)
            .where(_live(org_id), flows.c.id == flow_id)
            .values(
                current_version=flows.c.current_version + 1,
                updated_at=now,
                name=definition["name"],
                description=definition.get("description"),
            )
            .returning(*flows.c)
        )
        row = (await conn.execute(stmt)).first()
        if row is None:
            raise NotFound(f"flow {flow_id!r} not found")
        await conn.execute(
            insert(flow_versions).values(
                flow_id=flow_id, version=row.current_version, definition=definition, created_at=now
            )
        )
    return dict(row._mapping)


_GET = select(flows).where(
    flows.c.org_id == bindparam("org_id"), flows.c.deleted_at.is_(None), flows.c.id == bindparam("flow_id")
)
"""Built once: every execute request runs it (building the expression costs more than the query)."""


async def get(db: Database, org_id: str, flow_id: str) -> dict[str, Any]:
    async with db.read() as conn:
        row = (await conn.execute(_GET, {"org_id": org_id, "flow_id": flow_id})).first()
    if row is None:
        raise NotFound(f"flow {flow_id!r} not found")
    return dict(row._mapping)


async def get_by_name(db: Database, org_id: str, name: str) -> dict[str, Any] | None:
    async with db.read() as conn:
        row = (await conn.execute(select(flows).where(_live(org_id), flows.c.name == name))).first()
    return dict(row._mapping) if row else None


_VERSIONS: dict[tuple[str, int], dict[str, Any]] = {}
_VERSIONS_MAX = 4096


def cached_definition(flow_id: str, version: int) -> dict[str, Any] | None:
    """A version already read in this process (versions are immutable, so never stale)."""
    return _VERSIONS.get((flow_id, version))


def remember_definition(flow_id: str, version: int, definition: dict[str, Any]) -> None:
    if len(_VERSIONS) >= _VERSIONS_MAX:
        _VERSIONS.clear()
    _VERSIONS[(flow_id, version)] = definition


async def definition(db: Database, flow_id: str, version: int) -> dict[str, Any]:
    cached = cached_definition(flow_id, version)
    if cached is not None:
        return cached
    async with db.read() as conn:
        stmt = select(flow_versions.c.definition).where(
            flow_versions.c.flow_id == flow_id, flow_versions.c.version == version
        )
        value = (await conn.execute(stmt)).scalar()
    if value is None:
        raise NotFound(f"version {version} of flow {flow_id!r} not found")
    result: dict[str, Any] = value
    remember_definition(flow_id, version, result)
    return result


async def versions(db: Database, org_id: str, flow_id: str) -> list[dict[str, Any]]:
    await get(db, org_id, flow_id)
    async with db.read() as conn:
        stmt = (
            select(flow_versions.c.version, flow_versions.c.created_at, flow_versions.c.definition)
            .where(flow_versions.c.flow_id == flow_id)
            .order_by(flow_versions.c.version.desc())
        )
        return [dict(r._mapping) for r in await conn.execute(stmt)]


async def delete(db: Database, org_id: str, flow_id: str) -> None:
    async with db.write() as conn:
        stmt = update(flows).where(_live(org_id), flows.c.id == flow_id).values(deleted_at=now_ms())
        if (await conn.execute(stmt)).rowcount == 0:
            raise NotFound(f"flow {flow_id!r} not found")


async def list_page(
    db: Database, org_id: str, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    conds = [_live(org_id)]
    if cursor:
        at, id_ = decode_cursor(cursor)
        conds.append(or_(flows.c.created_at < at, and_(flows.c.created_at == at, flows.c.id < id_)))
    stmt = select(flows).where(*conds).order_by(flows.c.created_at.desc(), flows.c.id.desc()).limit(limit + 1)
    async with db.read() as conn:
        rows = [dict(r._mapping) for r in await conn.execute(stmt)]
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more and rows else None)
