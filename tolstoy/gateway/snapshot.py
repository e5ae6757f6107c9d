"""The ``subscribed`` reply's ``data.snapshot`` for ``executions:{id}``: the state as of ``lastSeq``.

The execution row (whose ``last_seq`` is the snapshot's position), its step runs
and the flow definition are read in one read transaction, so they describe one
moment: REPEATABLE READ on PostgreSQL; on SQLite a read transaction already is a
snapshot (WAL). Only state is included (statuses, attempts, timings, progress),
never variables, outputs or errors: those travel in the (masked) events.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from tolstoy.store.db import Database
from tolstoy.store.tables import executions, flow_versions, step_runs
from tolstoy.timeutil import iso

_EXECUTION_COLUMNS = (
    executions.c.id,
    executions.c.flow_id,
    executions.c.flow_version,
    executions.c.status,
    executions.c.total_steps,
    executions.c.completed_steps,
    executions.c.failed_steps,
    executions.c.skipped_steps,
    executions.c.progress,
    executions.c.current_step,
    executions.c.last_seq,
    executions.c.created_at,
    executions.c.started_at,
    executions.c.finished_at,
)
_STEP_COLUMNS = (
    step_runs.c.step_id,
    step_runs.c.step_type,
    step_runs.c.status,
    step_runs.c.attempt,
    step_runs.c.started_at,
    step_runs.c.finished_at,
    step_runs.c.duration_ms,
    step_runs.c.next_attempt_at,
)


async def read(db: Database, org_id: str, execution_id: str) -> dict[str, Any] | None:
    """The snapshot of ``org_id``'s execution, or None when that organization has no such execution."""
    async with db.read() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execution_options(isolation_level="REPEATABLE READ")
        stmt = select(*_EXECUTION_COLUMNS).where(
            executions.c.id == execution_id, executions.c.org_id == org_id
        )
        row = (await conn.execute(stmt)).first()
        if row is None:
            return None
        steps = [
            dict(r._mapping)
            for r in await conn.execute(
                select(*_STEP_COLUMNS).where(step_runs.c.execution_id == execution_id)
            )
        ]
        definition = (
            await conn.execute(
                select(flow_versions.c.definition).where(
                    flow_versions.c.flow_id == row.flow_id, flow_versions.c.version == row.flow_version
                )
            )
        ).scalar()
    return _snapshot(dict(row._mapping), steps, definition if isinstance(definition, dict) else None)


def _snapshot(
    row: dict[str, Any], steps: list[dict[str, Any]], definition: dict[str, Any] | None
) -> dict[str, Any]:
    total = row["total_steps"] or 0
    done = row["completed_steps"] + row["failed_steps"] + row["skipped_steps"]
    return {
        "executionId": row["id"],
        "flowId": row["flow_id"],
        "flowVersion": row["flow_version"],
        "status": row["status"],
        "lastSeq": row["last_seq"],
        "totalSteps": total,
        "completedSteps": row["completed_steps"],
        "failedSteps": row["failed_steps"],
        "skippedSteps": row["skipped_steps"],
        "progressPercentage": round(100 * done / total, 1) if total else 0.0,
        "progress": row["progress"],
        "currentStep": row["current_step"],
        "createdAt": iso(row["created_at"]),
        "startedAt": iso(row["started_at"]),
        "finishedAt": iso(row["finished_at"]),
        "steps": _steps(steps, definition),
    }


def _steps(rows: list[dict[str, Any]], definition: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every step of the definition in order (``pending`` until it ran), then any the definition lacks."""
    by_id = {r["step_id"]: r for r in rows}
    out: list[dict[str, Any]] = []
    for step in (definition or {}).get("steps", []):
        if not isinstance(step, dict) or "id" not in step:
            continue
        found = by_id.pop(step["id"], None)
        item = (
            _step(found)
            if found
            else {"stepId": step["id"], "type": step.get("type"), "status": "pending", "attempt": 0}
        )
        item["name"] = step.get("name") or step["id"]
        out.append(item)
    out.extend(_step(r) for r in by_id.values())
    return out


def _step(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "stepId": row["step_id"],
        "type": row["step_type"],
        "status": row["status"],
        "attempt": row["attempt"],
        "startedAt": iso(row["started_at"]),
        "finishedAt": iso(row["finished_at"]),
        "duration": row["duration_ms"],
        "nextAttemptAt": iso(row["next_attempt_at"]),
    }
