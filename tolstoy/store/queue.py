"""The execution queue: claim with a lease, renew, and read control flags.

A claim takes executions that are due (``run_after <= now``) and either unleased
or whose lease expired (their worker died), bumps ``lease_epoch`` (the fencing
token every later write of the new owner carries) and sets the expiry. On
PostgreSQL the candidates are locked with ``FOR UPDATE SKIP LOCKED`` so
concurrent workers never claim the same row; on SQLite the writer transaction
(``BEGIN IMMEDIATE``) serialises claims.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, bindparam, func, or_, select, text, update

from tolstoy.store import flows as flow_store
from tolstoy.store.db import Database
from tolstoy.store.tables import executions, flow_versions

CLAIMABLE = ("queued", "running", "waiting")
CANCELLABLE = (*CLAIMABLE, "paused")
_LOOKAHEAD = 50  # extra candidates read so executions over a flow's limit don't starve the others


@dataclass(frozen=True, slots=True)
class Claim:
    """An execution this worker now holds, with the fencing epoch of its lease."""

    row: dict[str, Any]
    definition: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.row["id"])

    @property
    def epoch(self) -> int:
        return int(self.row["lease_epoch"])


@dataclass(frozen=True, slots=True)
class ClaimResult:
    """What one claim took, what waits on a concurrency limit (not yet told so), and how many
    of the taken had an expired lease (their worker died: the reconciler's count)."""

    claims: list[Claim]
    newly_waiting: list[dict[str, Any]]
    reclaimed: int


@dataclass(frozen=True, slots=True)
class LeaseState:
    """What a renewal learned about one held execution."""

    execution_id: str
    cancel_requested: bool
    pause_requested: bool


def _due() -> Any:
    """Due, or with a cancel request whatever its timer says (a parked or paused execution
    that was cancelled while its runner was letting go of it), and held by nobody alive."""
    c = executions.c
    now: Any = bindparam("now")
    unleased = c.lease_owner.is_(None)
    expired = c.lease_expires_at < now
    due = and_(c.status.in_(CLAIMABLE), c.run_after <= now)
    cancelled = and_(c.status.in_(CANCELLABLE), c.cancel_requested.is_(True))
    return and_(or_(due, cancelled), or_(unleased, expired))


_c = executions.c
_CANDIDATES = (
    select(_c.id, _c.org_id, _c.flow_id, _c.status, _c.concurrency_limit, _c.lease_owner, _c.wait_reason)
    .where(_due())
    .order_by(_c.run_after, _c.created_at)
    .limit(bindparam("limit"))
)
"""Built once (claims run constantly); ``now`` and ``limit`` are bound per claim."""
_CANDIDATES_LOCKED = _CANDIDATES.with_for_update(skip_locked=True)
_LEASE = (
    update(executions)
    .where(_c.id.in_(bindparam("ids", expanding=True)))
    .values(
        lease_owner=bindparam("owner"),
        lease_epoch=_c.lease_epoch + 1,
        lease_expires_at=bindparam("expires"),
    )
    .returning(*executions.c)
)


class Queue:
    """Claims, renews and releases execution leases for one worker."""

    def __init__(self, db: Database, worker_id: str, lease_ttl_ms: int) -> None:
        self.db, self.worker_id, self.lease_ttl_ms = db, worker_id, lease_ttl_ms

    async def claim(self, limit: int, now: int) -> ClaimResult:
        """Lease up to ``limit`` due executions, honouring per-flow concurrency limits."""
        if limit <= 0:
            return ClaimResult([], [], 0)
        async with self.db.write() as conn:
            candidates = await self._candidates(conn, limit, now)
            if not candidates:
                return ClaimResult([], [], 0)
            chosen, refused = await self._within_limits(conn, candidates, limit, now)
            claims: list[Claim] = []
            if chosen:
                lease = {
                    "ids": [c["id"] for c in chosen],
                    "owner": self.worker_id,
                    "expires": now + self.lease_ttl_ms,
                }
                rows = [dict(r._mapping) for r in await conn.execute(_LEASE, lease)]
                rows.sort(key=lambda r: (r["run_after"], r["created_at"]))
                claims = await self._with_definitions(conn, rows)
            reclaimed = sum(1 for c in chosen if c["lease_owner"] is not None)
            return ClaimResult(claims, [r for r in refused if r["wait_reason"] != "concurrency"], reclaimed)

    async def _candidates(self, conn: Any, limit: int, now: int) -> list[dict[str, Any]]:
        pick = _CANDIDATES if self.db.is_sqlite else _CANDIDATES_LOCKED
        rows = await conn.execute(pick, {"now": now, "limit": limit + _LOOKAHEAD})
        return [dict(r._mapping) for r in rows]

    async def _within_limits(
        self, conn: Any, candidates: list[dict[str, Any]], limit: int, now: int
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Split candidates into those that fit (in order, at most ``limit``) and those over their limit."""
        limited = sorted({r["flow_id"] for r in candidates if r["concurrency_limit"]})
        active = await self._active_counts(conn, limited, now) if limited else {}
        chosen: list[dict[str, Any]] = []
        refused: list[dict[str, Any]] = []
        for row in candidates:
            if len(chosen) >= limit:
                break
            cap = row["concurrency_limit"]
            if cap and active.get(row["flow_id"], 0) >= cap:
                refused.append(row)
                continue
            if cap:
                active[row["flow_id"]] = active.get(row["flow_id"], 0) + 1
            chosen.append(row)
        return chosen, refused

    async def _active_counts(self, conn: Any, flow_ids: list[str], now: int) -> dict[str, int]:
        if not self.db.is_sqlite:  # serialise limit checks of one flow across workers
            for flow_id in flow_ids:
                await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:f))"), {"f": flow_id})
        stmt = (
            select(executions.c.flow_id, func.count())
            .where(
                executions.c.flow_id.in_(flow_ids),
                executions.c.lease_owner.is_not(None),
                executions.c.lease_expires_at >= now,
            )
            .group_by(executions.c.flow_id)
        )
        return {r[0]: int(r[1]) for r in await conn.execute(stmt)}

    async def _with_definitions(self, conn: Any, rows: list[dict[str, Any]]) -> list[Claim]:
        keys = {(r["flow_id"], r["flow_version"]) for r in rows}
        defs = {k: d for k in keys if (d := flow_store.cached_definition(*k)) is not None}
        missing = keys - defs.keys()
        if missing:
            c = flow_versions.c
            stmt = select(c.flow_id, c.version, c.definition).where(
                or_(*(and_(c.flow_id == f, c.version == v) for f, v in missing))
            )
            for r in await conn.execute(stmt):
                defs[(r.flow_id, r.version)] = r.definition
                flow_store.remember_definition(r.flow_id, r.version, r.definition)
        return [Claim(row=r, definition=defs[(r["flow_id"], r["flow_version"])]) for r in rows]

    async def renew(self, held: Sequence[str], now: int) -> list[LeaseState]:
        """Extend the leases still ours; an id missing from the answer was lost."""
        if not held:
            return []
        async with self.db.write() as conn:
            mine = (executions.c.id.in_(sorted(held)), executions.c.lease_owner == self.worker_id)
            if not self.db.is_sqlite:  # lock in id order, as the journal does: no deadlocks
                lock = select(executions.c.id).where(*mine).order_by(executions.c.id).with_for_update()
                await conn.execute(lock)
            stmt = (
                update(executions)
                .where(*mine)
                .values(lease_expires_at=now + self.lease_ttl_ms)
                .returning(executions.c.id, executions.c.cancel_requested, executions.c.pause_requested)
            )
            return [
                LeaseState(r.id, bool(r.cancel_requested), bool(r.pause_requested))
                for r in await conn.execute(stmt)
            ]

    async def next_due_at(self) -> int | None:
        """When the earliest unleased queued or waiting execution becomes due (for timers)."""
        async with self.db.read() as conn:
            stmt = select(func.min(executions.c.run_after)).where(
                executions.c.status.in_(CLAIMABLE), executions.c.lease_owner.is_(None)
            )
            value = (await conn.execute(stmt)).scalar()
            return int(value) if value is not None else None
