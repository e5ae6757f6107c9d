"""Reads of the event log for replay and backfill; every query is scoped to one organization.

The store is the truth: these return committed events exactly as they were
published (the stored ``body`` is the wire JSON), in order — by ``seq`` within
an execution, by ``gid`` (insertion order) across an organization.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, cast, func, or_, select
from sqlalchemy.dialects.postgresql import JSONB

from tolstoy.engine.states import ExecutionStatus
from tolstoy.events.types import Event
from tolstoy.gateway.channels import Channel, ChannelKind, Filters
from tolstoy.store.db import Database
from tolstoy.store.tables import events, executions, flows

PAGE_SIZE = 500
_FINISHED = frozenset(status.value for status in ExecutionStatus if status.is_terminal)
_COLUMNS = (
    events.c.execution_id,
    events.c.seq,
    events.c.org_id,
    events.c.flow_id,
    events.c.type,
    events.c.ts,
    events.c.step_id,
    events.c.level,
    events.c.body,
)


def _status(dialect: str) -> ColumnElement[Any]:
    """The ``status`` field of the stored body (events have no status column)."""
    if dialect == "postgresql":
        expr: ColumnElement[Any] = cast(events.c.body, JSONB)["status"].astext
        return expr
    return func.json_extract(events.c.body, "$.status")


def _event(row: Any, with_status: bool) -> Event:
    return Event(
        execution_id=row[0],
        seq=row[1],
        org_id=row[2],
        flow_id=row[3],
        type=row[4],
        ts=row[5],
        step_id=row[6],
        level=row[7],
        body=row[8],
        status=row[9] if with_status else None,
    )


def _filter_conditions(filters: Filters, dialect: str) -> list[ColumnElement[bool]]:
    conds: list[ColumnElement[bool]] = []
    if filters.flow_ids:
        conds.append(events.c.flow_id.in_(sorted(filters.flow_ids)))
    if filters.execution_ids:
        conds.append(events.c.execution_id.in_(sorted(filters.execution_ids)))
    if filters.statuses:
        conds.append(_status(dialect).in_(sorted(filters.statuses)))
    if filters.exact_types or filters.type_prefixes:
        by_type: list[ColumnElement[bool]] = []
        if filters.exact_types:
            by_type.append(events.c.type.in_(sorted(filters.exact_types)))
        by_type += [events.c.type.startswith(p, autoescape=True) for p in filters.type_prefixes]
        conds.append(or_(*by_type))
    return conds


def _channel_conditions(channel: Channel) -> list[ColumnElement[bool]]:
    """The SQL form of ``Channel.carries`` (replayed events are checked with it again)."""
    if channel.kind is ChannelKind.WORKFLOW:
        return [events.c.flow_id == channel.key]
    if channel.kind is ChannelKind.APPROVALS:
        return [events.c.type.startswith("approval.")]
    if channel.kind is ChannelKind.ALERTS:
        return [events.c.type.startswith("alert.")]
    if channel.kind is ChannelKind.EXECUTION:
        return [events.c.execution_id == channel.key]
    return []


async def execution_page(
    db: Database,
    org_id: str,
    execution_id: str,
    *,
    after: int,
    before: int,
    filters: Filters,
    limit: int = PAGE_SIZE,
    with_status: bool = False,
) -> list[Event]:
    """Events of one execution with ``after < seq < before``, in ``seq`` order."""
    dialect = "postgresql" if not db.is_sqlite else "sqlite"
    with_status = with_status or bool(filters.statuses)
    columns = (*_COLUMNS, _status(dialect)) if with_status else _COLUMNS
    conds = [
        events.c.execution_id == execution_id,
        events.c.org_id == org_id,
        events.c.seq > after,
        events.c.seq < before,
        *_filter_conditions(filters, dialect),
    ]
    stmt = select(*columns).where(*conds).order_by(events.c.seq).limit(limit)
    async with db.read() as conn:
        return [_event(r, with_status) for r in await conn.execute(stmt)]


async def count_execution(
    db: Database, org_id: str, execution_id: str, *, after: int, upto: int, filters: Filters
) -> int:
    if filters.empty:
        return max(0, upto - after)
    dialect = "postgresql" if not db.is_sqlite else "sqlite"
    conds = [
        events.c.execution_id == execution_id,
        events.c.org_id == org_id,
        events.c.seq > after,
        events.c.seq <= upto,
        *_filter_conditions(filters, dialect),
    ]
    async with db.read() as conn:
        return int((await conn.execute(select(func.count()).where(*conds))).scalar() or 0)


def _org_conditions(
    org_id: str, channel: Channel, filters: Filters, after_gid: int, upto_gid: int, dialect: str
) -> list[ColumnElement[bool]]:
    return [
        events.c.org_id == org_id,
        events.c.gid > after_gid,
        events.c.gid <= upto_gid,
        *_channel_conditions(channel),
        *_filter_conditions(filters, dialect),
    ]


async def org_page(
    db: Database,
    org_id: str,
    channel: Channel,
    filters: Filters,
    *,
    after_gid: int,
    upto_gid: int,
    limit: int = PAGE_SIZE,
) -> list[tuple[int, Event]]:
    """``(gid, event)`` of the organization's events on ``channel`` with ``after_gid < gid <= upto_gid``."""
    dialect = "postgresql" if not db.is_sqlite else "sqlite"
    conds = _org_conditions(org_id, channel, filters, after_gid, upto_gid, dialect)
    stmt = select(events.c.gid, *_COLUMNS, _status(dialect)).where(*conds).order_by(events.c.gid).limit(limit)
    async with db.read() as conn:
        return [(r[0], _event(r[1:], True)) for r in await conn.execute(stmt)]


async def count_org(
    db: Database, org_id: str, channel: Channel, filters: Filters, *, after_gid: int, upto_gid: int
) -> int:
    dialect = "postgresql" if not db.is_sqlite else "sqlite"
    conds = _org_conditions(org_id, channel, filters, after_gid, upto_gid, dialect)
    async with db.read() as conn:
        return int((await conn.execute(select(func.count()).where(*conds))).scalar() or 0)


async def max_gid(db: Database, org_id: str) -> int:
    async with db.read() as conn:
        return int(
            (await conn.execute(select(func.max(events.c.gid)).where(events.c.org_id == org_id))).scalar()
            or 0
        )


async def locate(db: Database, org_id: str, execution_id: str, seq: int) -> tuple[int, int] | None:
    """``(gid, ts)`` of one event of the organization, or None."""
    stmt = select(events.c.gid, events.c.ts).where(
        events.c.org_id == org_id, events.c.execution_id == execution_id, events.c.seq == seq
    )
    async with db.read() as conn:
        row = (await conn.execute(stmt)).first()
    return (int(row[0]), int(row[1])) if row else None


async def first_gid_at(db: Database, org_id: str, ts: int) -> int:
    """A ``gid`` before every event of the organization with a time at or after ``ts``.

    Event times grow with ``gid`` (up to commit skew, which callers cover with
    slack), so a binary search over ``gid`` with the ``(org_id, gid)`` index finds
    it in a few dozen indexed lookups, however long the history.
    """
    lo, hi = 0, await max_gid(db, org_id)
    async with db.read() as conn:
        while lo < hi:
            mid = (lo + hi) // 2
            stmt = (
                select(events.c.gid, events.c.ts)
                .where(events.c.org_id == org_id, events.c.gid > mid)
                .order_by(events.c.gid)
                .limit(1)
            )
            row = (await conn.execute(stmt)).first()
            if row is None or int(row[1]) >= ts:
                hi = mid
            else:
                lo = int(row[0])
    return lo


async def last_seqs(db: Database, org_id: str, execution_ids: Sequence[str]) -> dict[str, int]:
    """The store's ``last_seq`` of each of the organization's executions among ``execution_ids``."""
    if not execution_ids:
        return {}
    stmt = select(executions.c.id, executions.c.last_seq).where(
        executions.c.org_id == org_id, executions.c.id.in_(list(execution_ids))
    )
    async with db.read() as conn:
        return {r[0]: int(r[1]) for r in await conn.execute(stmt)}


async def flow_exists(db: Database, org_id: str, flow_id: str) -> bool:
    stmt = select(flows.c.id).where(flows.c.id == flow_id, flows.c.org_id == org_id)
    async with db.read() as conn:
        return (await conn.execute(stmt)).first() is not None


def is_finished(status: str) -> bool:
    """Whether an execution's stored ``status`` is terminal (nothing follows its last event)."""
    return status in _FINISHED


async def execution_state(db: Database, org_id: str, execution_id: str) -> tuple[str, int] | None:
    """``(status, last_seq)`` of the organization's execution, or None."""
    stmt = select(executions.c.status, executions.c.last_seq).where(
        executions.c.id == execution_id, executions.c.org_id == org_id
    )
    async with db.read() as conn:
        row = (await conn.execute(stmt)).first()
    return (str(row[0]), int(row[1])) if row else None
