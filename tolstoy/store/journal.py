"""The execution log's only writer: a state change and its events in one transaction.

Each ``Write`` updates one execution row (bumping ``last_seq`` by the number of
events, which hands out the next gap-free ``seq`` under the row lock), upserts
step runs and inserts the events. Writes submitted concurrently are grouped
into one transaction (group commit), and a write may be *fenced*: it only
lands while the execution's ``lease_epoch`` is the one the writer holds.
Events are published to the bus strictly after the commit, in commit order.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import insert, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from tolstoy import metrics
from tolstoy.errors import Conflict, LeaseLost, TolstoyError
from tolstoy.events.bus import Bus
from tolstoy.events.types import Event, encode_event
from tolstoy.store import pgbatch
from tolstoy.store.db import Database
from tolstoy.store.tables import events, executions, step_runs
from tolstoy.timeutil import now_ms

log = structlog.get_logger(__name__)

STEP_COLUMNS = tuple(c.name for c in step_runs.columns)
QUEUE_CHANNEL = "tolstoy_queue"
"""PostgreSQL LISTEN/NOTIFY channel that wakes idle workers when an execution becomes due."""
CommitListener = Callable[[Sequence[Event]], None]


@dataclass(slots=True)
class Write:
    """One atomic change of one execution and the events that describe it."""

    execution_id: str
    org_id: str
    flow_id: str
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    execution: dict[str, Any] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)
    create: dict[str, Any] | None = None
    """A full ``executions`` row to insert instead of updating one."""
    epoch: int | None = None
    """Fencing: commit only while ``lease_epoch`` equals this."""
    only_if_status: tuple[str, ...] | None = None
    only_if_unleased: bool = False
    statements: list[Any] = field(default_factory=list)
    """Further statements of the same transaction (built by store helpers, e.g. approvals)."""
    notify: bool = False
    """Wake idle workers of every process (PostgreSQL NOTIFY on commit) — set when work became due."""
    ts: int = field(default_factory=now_ms)

    def event(self, type: str, **fields: Any) -> Write:
        self.events.append((type, fields))
        return self


@dataclass(slots=True)
class _Pending:
    write: Write
    future: asyncio.Future[list[Event]]


@dataclass(slots=True)
class _Lane:
    """One stream of transactions; an execution's writes always take the same lane."""

    queue: list[_Pending] = field(default_factory=list)
    task: asyncio.Task[None] | None = None


class Journal:
    """Commits ``Write``s with group commit, then publishes their events.

    On PostgreSQL, ``lanes`` transactions run at once, each for its own share of executions
    (by id), so one slow round trip doesn't hold every execution back; an execution's writes
    stay in order because they always share a lane. SQLite has one writer: one lane.
    """

    def __init__(self, db: Database, bus: Bus, lanes: int | None = None) -> None:
        self.db, self.bus = db, bus
        count = lanes if lanes is not None else (1 if db.is_sqlite else 2)
        self._lanes = [_Lane() for _ in range(max(1, count))]
        self._listeners: list[CommitListener] = []

    def add_listener(self, listener: CommitListener) -> None:
        """Call ``listener`` with every committed batch of events (in this process), after commit."""
        self._listeners.append(listener)

    async def commit(self, write: Write) -> list[Event]:
        """Commit ``write``; return its events. Raises LeaseLost or Conflict if a guard fails."""
        future: asyncio.Future[list[Event]] = asyncio.get_running_loop().create_future()
        lane = self._lanes[zlib.crc32(write.execution_id.encode()) % len(self._lanes)]
        lane.queue.append(_Pending(write, future))
        if lane.task is None or lane.task.done():
            lane.task = asyncio.create_task(self._drain(lane), name="journal-drain")
        # A caller cancelled while waiting does not un-commit its write: the task goes on.
        return await asyncio.shield(future)

    async def close(self) -> None:
        tasks = [lane.task for lane in self._lanes if lane.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _drain(self, lane: _Lane) -> None:
        while lane.queue:
            batch, lane.queue = lane.queue, []
            await self._commit_batch(batch)

    async def _commit_batch(self, batch: list[_Pending]) -> None:
        try:
            results = await self._transaction([p.write for p in batch])
        except Exception as exc:
            if len(batch) > 1:  # one bad write must not sink the others: retry them one by one
                for pending in batch:
                    await self._commit_batch([pending])
                return
            _resolve(batch[0].future, exc)
            return
        metrics.JOURNAL_BATCH_SIZE.observe(len(batch))
        committed: list[Event] = []
        for result in results:
            if isinstance(result, list):
                committed.extend(result)
        await self._publish(committed)
        for pending, result in zip(batch, results, strict=True):
            _resolve(pending.future, result)

    async def _transaction(self, writes: list[Write]) -> list[list[Event] | TolstoyError]:
        async with self.db.write() as conn:
            if conn.dialect.name == "postgresql":
                results = await pgbatch.transaction(conn, writes, _encode)
                if any(w.notify for w in writes):
                    await conn.execute(text(f"NOTIFY {QUEUE_CHANNEL}"))
                return results
            return await _core_transaction(conn, writes)

    async def _publish(self, committed: list[Event]) -> None:
        if not committed:
            return
        for listener in self._listeners:
            try:
                listener(committed)
            except Exception:
                log.exception("commit listener failed")
        by_org: dict[str, list[Event]] = {}
        for event in committed:
            by_org.setdefault(event.org_id, []).append(event)
        for org_id, org_events in by_org.items():
            try:
                await self.bus.publish(org_id, org_events)
                metrics.BUS_PUBLISHED.inc(len(org_events))
            except Exception as exc:  # the store has them; subscribers backfill
                metrics.BUS_PUBLISH_ERRORS.inc()
                log.warning("bus publish failed", org_id=org_id, error=str(exc))


async def _core_transaction(conn: AsyncConnection, writes: list[Write]) -> list[list[Event] | TolstoyError]:
    """The portable path (SQLite): one statement per write, in the writer's transaction."""
    results: list[list[Event] | TolstoyError] = [[] for _ in writes]
    step_rows: list[dict[str, Any]] = []
    event_rows: list[dict[str, Any]] = []
    for i, write in enumerate(writes):
        first_seq = await _claim_seqs(conn, write)
        if isinstance(first_seq, TolstoyError):
            results[i] = first_seq
            continue
        for statement in write.statements:
            await conn.execute(statement)
        results[i] = encoded = _encode(write, first_seq)
        step_rows.extend(_full_step_row(row) for row in write.steps)
        event_rows.extend(_event_row(e) for e in encoded)
    if step_rows:
        await conn.execute(_step_upsert(conn), step_rows)
    if event_rows:
        await conn.execute(insert(events), event_rows)
    return results


def _resolve(future: asyncio.Future[list[Event]], result: list[Event] | BaseException) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


async def _claim_seqs(conn: AsyncConnection, write: Write) -> int | TolstoyError:
    """Insert or update the execution row and reserve ``len(events)`` seqs; return the first."""
    n = len(write.events)
    if write.create is not None:
        await conn.execute(insert(executions).values(**write.create, last_seq=n))
        return 1
    stmt = update(executions).where(executions.c.id == write.execution_id)
    if write.epoch is not None:
        stmt = stmt.where(executions.c.lease_epoch == write.epoch)
    if write.only_if_status is not None:
        stmt = stmt.where(executions.c.status.in_(write.only_if_status))
    if write.only_if_unleased:
        stmt = stmt.where(executions.c.lease_owner.is_(None))
    stmt = stmt.values(last_seq=executions.c.last_seq + n, **write.execution).returning(executions.c.last_seq)
    row = (await conn.execute(stmt)).first()
    if row is None:
        if write.epoch is not None:
            return LeaseLost(f"execution {write.execution_id} is no longer leased at epoch {write.epoch}")
        return Conflict(f"execution {write.execution_id} changed state; try again")
    last: int = row[0]
    return last - n + 1


def _encode(write: Write, first_seq: int) -> list[Event]:
    return [
        encode_event(
            execution_id=write.execution_id,
            org_id=write.org_id,
            flow_id=write.flow_id,
            seq=first_seq + i,
            type=type_,
            ts=write.ts,
            fields=fields,
        )
        for i, (type_, fields) in enumerate(write.events)
    ]


def _event_row(event: Event) -> dict[str, Any]:
    return {
        "execution_id": event.execution_id,
        "seq": event.seq,
        "org_id": event.org_id,
        "flow_id": event.flow_id,
        "type": event.type,
        "step_id": event.step_id,
        "level": event.level,
        "ts": event.ts,
        "body": event.body,
    }


def _full_step_row(row: dict[str, Any]) -> dict[str, Any]:
    return {name: row.get(name) for name in STEP_COLUMNS}


def _step_upsert(conn: AsyncConnection) -> Any:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(step_runs)
    keys = {"execution_id", "step_id"}
    return stmt.on_conflict_do_update(
        index_elements=["execution_id", "step_id"],
        set_={name: stmt.excluded[name] for name in STEP_COLUMNS if name not in keys},
    )
