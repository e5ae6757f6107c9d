"""The journal's batch transaction on PostgreSQL, in a handful of round trips.

Why raw SQL here: the journal is the engine's hot path, and through SQLAlchemy Core a batch
of N writes costs N ``UPDATE … RETURNING`` round trips plus statement compilation for
each. On the asyncpg connection of the same transaction, with fixed statements and
array parameters (``unnest``), a batch costs: one statement that claims the seqs of every
execution in it (and checks the fencing guards), one ``executemany`` per shape of column
update, one step-run upsert and one event insert — whatever N is. Rare extra statements
(approvals) still go through Core on the same transaction. The SQLite path stays on Core,
where a "round trip" is a function call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from tolstoy import jsonutil
from tolstoy.errors import Conflict, LeaseLost, TolstoyError
from tolstoy.events.types import Event
from tolstoy.store.tables import executions, step_runs

Encode = Callable[[Any, int], list[Event]]

_SEQS = """
UPDATE executions AS e SET last_seq = e.last_seq + v.n
FROM unnest($1::varchar[], $2::int[], $3::int[], $4::text[], $5::bool[])
     AS v(id, n, epoch, statuses, unleased)
WHERE e.id = v.id
  AND (v.epoch IS NULL OR e.lease_epoch = v.epoch)
  AND (v.statuses IS NULL OR e.status = ANY(string_to_array(v.statuses, ',')))
  AND (NOT v.unleased OR e.lease_owner IS NULL)
RETURNING e.id, e.last_seq
"""

_LOCK = "SELECT id FROM executions WHERE id = ANY($1::varchar[]) ORDER BY id FOR UPDATE"
"""Row locks in id order, as the lease renewal takes them: concurrent transactions never deadlock."""

_STEP_COLUMNS = tuple(c.name for c in step_runs.columns)
_STEP_TYPES = {"attempt": "int", "duration_ms": "int", "started_at": "bigint", "finished_at": "bigint",
               "next_attempt_at": "bigint", "output": "json", "error": "json", "reason": "text"}  # fmt: skip
_STEPS = (
    f"INSERT INTO step_runs ({', '.join(_STEP_COLUMNS)}) SELECT * FROM unnest("
    + ", ".join(f"${i + 1}::{_STEP_TYPES.get(c, 'varchar')}[]" for i, c in enumerate(_STEP_COLUMNS))
    + ") ON CONFLICT (execution_id, step_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _STEP_COLUMNS if c not in ("execution_id", "step_id"))
)
_EVENTS = """
INSERT INTO events (execution_id, seq, org_id, flow_id, type, step_id, level, ts, body)
SELECT * FROM unnest($1::varchar[], $2::int[], $3::varchar[], $4::varchar[], $5::varchar[],
                     $6::varchar[], $7::varchar[], $8::bigint[], $9::text[])
"""
_JSON_COLUMNS = frozenset(c.name for c in executions.columns if c.type.__class__.__name__ == "JSON")
_UPDATES: dict[tuple[str, ...], str] = {}


def _update_sql(columns: tuple[str, ...]) -> str:
    sql = _UPDATES.get(columns)
    if sql is None:
        sets = ", ".join(
            f"{c} = ${i + 2}{'::json' if c in _JSON_COLUMNS else ''}" for i, c in enumerate(columns)
        )
        sql = _UPDATES[columns] = f"UPDATE executions SET {sets} WHERE id = $1"
    return sql


def _json(value: Any) -> str | None:
    return None if value is None else jsonutil.dumps(value)


async def transaction(
    conn: AsyncConnection, writes: Sequence[Any], encode: Encode
) -> list[list[Event] | TolstoyError]:
    """Apply ``writes`` (journal ``Write``s) in the open transaction of ``conn``; one result per write."""
    results: list[list[Event] | TolstoyError] = [[] for _ in writes]
    creates = [w.create for w in writes if w.create is not None]
    if creates:  # also begins the transaction
        await conn.execute(insert(executions), [{**row, "last_seq": 0} for row in creates])
    else:
        await conn.exec_driver_sql("SELECT 1")  # begin the transaction SQLAlchemy manages
    apg = (await conn.get_raw_connection()).driver_connection
    assert apg is not None
    steps: dict[tuple[str, str], dict[str, Any]] = {}
    events: list[Event] = []
    pending = sorted(range(len(writes)), key=lambda i: writes[i].execution_id)
    while pending:
        this_round, pending = _one_per_execution(writes, pending)
        firsts = await _claim_seqs(apg, [writes[i] for i in this_round])
        done = []
        for i in this_round:
            write, first = writes[i], firsts.get(writes[i].execution_id)
            if first is None:
                results[i] = _refusal(write)
                continue
            results[i] = encode(write, first)
            events.extend(results[i])  # type: ignore[arg-type]
            steps.update({(r["execution_id"], r["step_id"]): r for r in write.steps})
            done.append(write)
        await _apply_columns(apg, done)
        for write in done:
            for statement in write.statements:
                await conn.execute(statement)
    if steps:
        await apg.execute(_STEPS, *_step_arrays(list(steps.values())))
    if events:
        await apg.execute(_EVENTS, *_event_arrays(events))
    return results


def _one_per_execution(writes: Sequence[Any], pending: list[int]) -> tuple[list[int], list[int]]:
    """The first pending write of each execution (in order), and the rest for later rounds."""
    seen: set[str] = set()
    now: list[int] = []
    later: list[int] = []
    for i in pending:
        (later if writes[i].execution_id in seen else now).append(i)
        seen.add(writes[i].execution_id)
    return now, later


async def _claim_seqs(apg: Any, writes: list[Any]) -> dict[str, int]:
    """Bump last_seq of every execution whose guards hold; returns the first seq of each."""
    await apg.execute(_LOCK, sorted(w.execution_id for w in writes))
    rows = await apg.fetch(
        _SEQS,
        [w.execution_id for w in writes],
        [len(w.events) for w in writes],
        [w.epoch for w in writes],
        [",".join(w.only_if_status) if w.only_if_status is not None else None for w in writes],
        [w.only_if_unleased for w in writes],
    )
    n_by_id = {w.execution_id: len(w.events) for w in writes}
    return {r["id"]: r["last_seq"] - n_by_id[r["id"]] + 1 for r in rows}


def _refusal(write: Any) -> TolstoyError:
    if write.epoch is not None:
        return LeaseLost(f"execution {write.execution_id} is no longer leased at epoch {write.epoch}")
    return Conflict(f"execution {write.execution_id} changed state; try again")


async def _apply_columns(apg: Any, writes: list[Any]) -> None:
    """Column updates of the writes that passed, one executemany per set of columns."""
    shapes: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
    for write in writes:
        if write.create is not None or not write.execution:
            continue
        columns = tuple(sorted(write.execution))
        args = tuple(_json(write.execution[c]) if c in _JSON_COLUMNS else write.execution[c] for c in columns)
        shapes.setdefault(columns, []).append((write.execution_id, *args))
    for columns, rows in shapes.items():
        await apg.executemany(_update_sql(columns), rows)


def _step_arrays(rows: list[dict[str, Any]]) -> list[list[Any]]:
    return [
        [_json(r.get(c)) if _STEP_TYPES.get(c) == "json" else r.get(c) for r in rows] for c in _STEP_COLUMNS
    ]


def _event_arrays(evs: list[Event]) -> list[list[Any]]:
    columns = ("execution_id", "seq", "org_id", "flow_id", "type", "step_id", "level", "ts", "body")
    return [[getattr(e, c) for e in evs] for c in columns]
