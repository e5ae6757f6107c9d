"""Steps that wait instead of work: ``delay`` and ``approval``.

A waiting step holds no worker slot for long: when every open step of an
execution is waiting (a delay, an approval, a retry back-off), the runner
*parks* it — status ``waiting``, lease released, ``run_after`` set to the
earliest wake-up — and any worker claims it again then (or, for an approval,
as soon as it is decided). Timers live in the store, so waits survive restarts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tolstoy import ids
from tolstoy.engine.attempt import StepState, prepare_config
from tolstoy.engine.definition import StepDefinition
from tolstoy.engine.steps.approval import ApprovalConfig
from tolstoy.engine.steps.delay import DelayConfig, wake_at_ms
from tolstoy.engine.steps.registry import get_step_type
from tolstoy.errors import StepError
from tolstoy.events.types import EventType as ET
from tolstoy.store import approvals as approval_store
from tolstoy.store.db import Database
from tolstoy.timeutil import iso, now_ms

WAIT_TYPES = frozenset({"delay", "approval"})
FAR_FUTURE_MS = 10 * 365 * 24 * 3600 * 1000


@dataclass(slots=True)
class WaitStart:
    """What beginning a wait commits: events, extra statements, and the wake-up time."""

    events: list[tuple[str, dict[str, Any]]]
    statements: list[Any]
    wake_at: int | None


def begin(
    step: StepDefinition, state: StepState, scope: Mapping[str, Any], ids_: Mapping[str, str]
) -> WaitStart:
    """Render the step's config and describe the start of its wait (raises StepError on bad config)."""
    config = prepare_config(get_step_type(step.type), step.config, scope)
    now = now_ms()
    if isinstance(config, DelayConfig):
        wake = wake_at_ms(config, now)
        waiting = {"status": "waiting", "reason": "delay", "stepId": step.id, "until": iso(wake)}
        return WaitStart([(ET.EXECUTION_WAITING, waiting)], [], wake)
    assert isinstance(config, ApprovalConfig)
    approval_id = ids.new_id("apr")
    expires = now + config.timeout_ms if config.timeout_ms else None
    row = {
        "id": approval_id,
        "org_id": ids_["org_id"],
        "execution_id": ids_["execution_id"],
        "step_id": step.id,
        "prompt": config.prompt,
        "approvers": config.approvers,
        "expires_at": expires,
        "created_at": now,
    }
    required: dict[str, Any] = {
        "approvalId": approval_id,
        "stepId": step.id,
        "stepName": state.name,
        "prompt": config.prompt,
        "status": "pending",
    }
    if config.approvers:
        required["approvers"] = config.approvers
    if expires:
        required["expiresAt"] = iso(expires)
    waiting = {"status": "waiting", "reason": "approval", "stepId": step.id, "approvalId": approval_id}
    if expires:
        waiting["until"] = iso(expires)
    return WaitStart(
        [(ET.APPROVAL_REQUIRED, required), (ET.EXECUTION_WAITING, waiting)],
        [approval_store.insert_pending(row)],
        expires,
    )


async def wait_delay(state: StepState) -> dict[str, Any]:
    """Sleep until the stored wake-up time; the output says how long the step waited."""
    wake = state.next_attempt_at or now_ms()
    await asyncio.sleep(max(0, wake - now_ms()) / 1000)
    return {"waitedMs": now_ms() - (state.started_at or wake)}


async def wait_approval(
    db: Database, execution_id: str, state: StepState, poll_s: float, on_pending: Callable[[], None]
) -> dict[str, Any]:
    """Wait for a decision (or the expiry); granted returns the output, anything else raises StepError.

    ``on_pending`` is called each time the approval is found still pending (the runner may park then).
    """
    while True:
        row = await approval_store.for_step(db, execution_id, state.id)
        if row is None:
            raise StepError("approval request is missing", category="system", code="approval_missing")
        if row["status"] == "granted":
            return {"decision": "granted", "by": row["decided_by"], "comment": row["comment"]}
        if row["status"] == "denied":
            raise StepError(_denied_message(row), category="permission", code="approval_denied")
        if row["status"] == "expired" or (row["expires_at"] and row["expires_at"] <= now_ms()):
            raise ApprovalExpired(row["id"])
        on_pending()
        await asyncio.sleep(poll_s)


def _denied_message(row: Mapping[str, Any]) -> str:
    comment = f": {row['comment']}" if row.get("comment") else ""
    return f"approval {row['id']} was denied by {row['decided_by']}{comment}"


class ApprovalExpired(StepError):
    """The approval's timeout passed with no decision; the runner records ``approval.expired``."""

    def __init__(self, approval_id: str) -> None:
        super().__init__(
            f"approval {approval_id} expired with no decision", category="timeout", code="approval_expired"
        )
        self.approval_id = approval_id


def expire_parts(exc: ApprovalExpired, step_id: str) -> tuple[tuple[str, dict[str, Any]], Any]:
    """The ``approval.expired`` event and the statement that records it."""
    event = (ET.APPROVAL_EXPIRED, {"approvalId": exc.approval_id, "stepId": step_id, "status": "expired"})
    return event, approval_store.decide(exc.approval_id, "expired", None, None, now_ms())
