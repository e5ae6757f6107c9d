"""What the API asks of the engine: start, cancel, pause, resume and retry executions.

These writes go through the journal like the runner's. Where an execution is
leased by a worker, the API only raises a flag (``cancel_requested`` …) and
signals a runner in this process; the owner acts on it within one lease
renewal wherever it runs, and only the owner writes its terminal event.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from tolstoy.engine.definition import FlowDefinition
from tolstoy.engine.runner import Stop
from tolstoy.errors import Conflict, Forbidden, ValidationFailed
from tolstoy.events.types import EventType as ET
from tolstoy.masking import Masker
from tolstoy.store import approvals as approval_store
from tolstoy.store import executions as exec_store
from tolstoy.store import flows as flow_store
from tolstoy.store.db import Database
from tolstoy.store.journal import Journal, Write
from tolstoy.timeutil import now_ms

Signal = Callable[[str, Stop, str | None], bool]
"""Deliver a control request to a runner in this process; False when none runs it here."""

OPEN = ("queued", "running", "waiting", "paused")


def _no_signal(execution_id: str, stop: Stop, by: str | None) -> bool:
    return False


class ExecutionService:
    """Starts and controls executions on behalf of API callers."""

    def __init__(self, db: Database, journal: Journal, signal: Signal = _no_signal) -> None:
        self.db, self.journal, self.signal = db, journal, signal
        self._parsed: dict[tuple[str, int], FlowDefinition] = {}

    async def start(
        self,
        org_id: str,
        flow: dict[str, Any],
        variables: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        created_by: str | None = None,
        retry_of: str | None = None,
        secrets: dict[str, str] | None = None,
        version: int | None = None,
        reuse: list[dict[str, Any]] | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Queue an execution (of ``version``, default the flow's current one); returns (row, created).

        ``reuse`` are completed step runs of an earlier execution whose outputs this one keeps.
        """
        if idempotency_key:
            existing = await exec_store.find_by_idempotency_key(self.db, org_id, idempotency_key)
            if existing is not None:
                return existing, False
        version = version or flow["current_version"]
        defn = await self._definition(flow["id"], version)
        merged = {**(defn.variables or {}), **variables}
        now = now_ms()
        concurrency = defn.settings.concurrency if defn.settings else None
        row = exec_store.new_row(
            org_id,
            flow["id"],
            version,
            len(defn.steps),
            now,
            concurrency_limit=concurrency,
            variables=merged,
            retry_of=retry_of,
            idempotency_key=idempotency_key,
            created_by=created_by,
        )
        fields: dict[str, Any] = {
            "status": "queued",
            "flowVersion": row["flow_version"],
            "totalSteps": row["total_steps"],
            "variables": Masker((secrets or {}).values()).value(merged),
        }
        if retry_of:
            fields["retryOf"] = retry_of
        write = Write(row["id"], org_id, flow["id"], create=row, ts=now, notify=True)
        write.event(ET.EXECUTION_QUEUED, **fields)
        _add_reused(write, reuse or [], retry_of, Masker((secrets or {}).values()))
        row["completed_steps"] = len(reuse or [])
        write.create = row
        try:
            await self.journal.commit(write)
        except Exception:
            if idempotency_key:  # a concurrent request with the same key won the race
                existing = await exec_store.find_by_idempotency_key(self.db, org_id, idempotency_key)
                if existing is not None:
                    return existing, False
            raise
        return row, True

    async def _definition(self, flow_id: str, version: int) -> FlowDefinition:
        parsed = self._parsed.get((flow_id, version))
        if parsed is None:
            parsed = FlowDefinition.model_validate(await flow_store.definition(self.db, flow_id, version))
            if len(self._parsed) > 2048:
                self._parsed.clear()
            self._parsed[(flow_id, version)] = parsed
        return parsed

    async def cancel(self, org_id: str, execution_id: str, by: str) -> dict[str, Any]:
        """Cancel now if no worker holds it, else flag it for its owner."""
        row = await exec_store.get(self.db, org_id, execution_id)
        _require_open(row, "cancel")
        if row["lease_owner"] is None:
            done = await self._cancel_unleased(row, by)
            if done:
                return await exec_store.get(self.db, org_id, execution_id)
        await self._flag(row, cancel_requested=True)
        if not self.signal(execution_id, Stop.CANCEL, by):
            # Its runner may have let go of it (parked, paused) since we looked: end it here if
            # nobody holds it now; else its owner, or the next claim, sees the flag.
            latest = await exec_store.get(self.db, org_id, execution_id)
            if latest["status"] in OPEN and latest["lease_owner"] is None:
                await self._cancel_unleased(latest, by)
        return await exec_store.get(self.db, org_id, execution_id)

    async def _cancel_unleased(self, row: dict[str, Any], by: str) -> bool:
        now = now_ms()
        fields = {
            "status": "cancelled",
            "by": by,
            "totalSteps": row["total_steps"],
            "completedSteps": row["completed_steps"],
            "failedSteps": row["failed_steps"],
            "skippedSteps": row["skipped_steps"],
        }
        write = Write(
            row["id"],
            row["org_id"],
            row["flow_id"],
            only_if_status=OPEN,
            only_if_unleased=True,
            execution={"status": "cancelled", "finished_at": now, "cancel_requested": True},
            statements=[approval_store.withdraw_pending(row["id"], now)],
        )
        write.event(ET.EXECUTION_CANCELLED, **fields)
        try:
            await self.journal.commit(write)
        except Conflict:
            return False
        return True

    async def pause(self, org_id: str, execution_id: str, by: str) -> dict[str, Any]:
        """Pause now if no worker holds it (queued or parked), else ask its owner to stop starting steps."""
        row = await exec_store.get(self.db, org_id, execution_id)
        _require_open(row, "pause")
        if row["status"] == "paused":
            return row
        if row["lease_owner"] is None:
            write = Write(
                row["id"],
                org_id,
                row["flow_id"],
                only_if_status=("queued", "waiting"),
                only_if_unleased=True,
                execution={"status": "paused", "pause_requested": False},
            )
            write.event(ET.EXECUTION_PAUSED, status="paused", by=by)
            with contextlib.suppress(Conflict):
                await self.journal.commit(write)
                return await exec_store.get(self.db, org_id, execution_id)
        await self._flag(row, pause_requested=True)
        self.signal(execution_id, Stop.PAUSE, by)
        return await exec_store.get(self.db, org_id, execution_id)

    async def resume(self, org_id: str, execution_id: str, by: str) -> dict[str, Any]:
        """Put a paused execution back in the queue; a pending pause request is withdrawn."""
        row = await exec_store.get(self.db, org_id, execution_id)
        _require_open(row, "resume")
        if row["status"] != "paused":
            if row["pause_requested"]:
                await self._flag(row, pause_requested=False)
                return await exec_store.get(self.db, org_id, execution_id)
            raise Conflict(f"execution {execution_id} is {row['status']}, not paused")
        write = Write(
            row["id"],
            org_id,
            row["flow_id"],
            only_if_status=("paused",),
            notify=True,
            execution={"status": "queued", "run_after": now_ms(), "pause_requested": False},
        )
        write.event(ET.EXECUTION_RESUMED, status="queued", by=by)
        await self.journal.commit(write)
        return await exec_store.get(self.db, org_id, execution_id)

    async def retry(
        self, org_id: str, execution_id: str, by: str, *, from_failed_step: bool, secrets: dict[str, str]
    ) -> dict[str, Any]:
        """A new execution of the same version and variables; optionally keeping completed steps."""
        row = await exec_store.get(self.db, org_id, execution_id)
        if row["status"] not in ("failed", "cancelled", "completed"):
            raise Conflict(
                f"execution {execution_id} is {row['status']}: only a finished execution can be retried"
            )
        flow = await flow_store.get(self.db, org_id, row["flow_id"])
        reuse = []
        if from_failed_step:
            steps = await exec_store.load_step_rows(self.db, execution_id)
            reuse = [s for s in steps if s["status"] == "completed"]
        new, _ = await self.start(
            org_id,
            flow,
            row["variables"],
            created_by=by,
            retry_of=execution_id,
            secrets=secrets,
            version=row["flow_version"],
            reuse=reuse,
        )
        return new

    async def decide_approval(
        self, org_id: str, approval_id: str, *, granted: bool, by: str, by_email: str, comment: str | None
    ) -> dict[str, Any]:
        """Grant or deny a pending approval and wake its execution."""
        approval = await approval_store.get(self.db, org_id, approval_id)
        if approval["status"] != "pending":
            raise Conflict(f"approval {approval_id} is already {approval['status']}")
        allowed = approval.get("approvers") or []
        if allowed and by not in allowed and by_email not in allowed:
            raise Forbidden(f"you are not among the approvers of {approval_id}")
        execution = await exec_store.get(self.db, org_id, approval["execution_id"])
        status = "granted" if granted else "denied"
        now = now_ms()
        write = Write(
            execution["id"],
            org_id,
            execution["flow_id"],
            only_if_status=("running", "waiting"),
            statements=[approval_store.decide(approval_id, status, by, comment, now)],
            notify=True,
        )
        if execution["lease_owner"] is None:
            write.execution["run_after"] = now
        fields: dict[str, Any] = {
            "approvalId": approval_id,
            "stepId": approval["step_id"],
            "status": status,
            "by": by,
        }
        if comment:
            fields["comment"] = comment
        write.event(ET.APPROVAL_GRANTED if granted else ET.APPROVAL_DENIED, **fields)
        await self.journal.commit(write)
        return await approval_store.get(self.db, org_id, approval_id)

    async def _flag(self, row: dict[str, Any], **flags: bool) -> None:
        write = Write(row["id"], row["org_id"], row["flow_id"], only_if_status=OPEN, execution=dict(flags))
        try:
            await self.journal.commit(write)
        except Conflict:
            raise Conflict(f"execution {row['id']} has already finished") from None


def _require_open(row: dict[str, Any], action: str) -> None:
    if row["status"] not in OPEN:
        raise Conflict(f"cannot {action} execution {row['id']}: it is {row['status']}")


def _add_reused(write: Write, reuse: list[dict[str, Any]], retry_of: str | None, masker: Masker) -> None:
    """Carry completed steps of the retried execution over, each with a ``step.completed`` event."""
    for step in reuse:
        write.steps.append({**step, "execution_id": write.execution_id})
        write.event(
            ET.STEP_COMPLETED,
            stepId=step["step_id"],
            status="completed",
            attempt=step["attempt"],
            duration=step["duration_ms"],
            output=masker.value(step["output"]),
            reusedFrom=retry_of,
        )


def validate_variables(value: Any) -> dict[str, Any]:
    from tolstoy.errors import FieldError

    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationFailed(
            "variables must be an object", details=[FieldError("variables", "expected an object", "type")]
        )
    return value
