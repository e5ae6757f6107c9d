"""Event types (PROTOCOL.md §1) and the committed-event record the bus and gateway carry."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from tolstoy import jsonutil
from tolstoy.timeutil import iso


class EventType(StrEnum):
    EXECUTION_QUEUED = "execution.queued"
    EXECUTION_STARTED = "execution.started"
    EXECUTION_PROGRESS = "execution.progress"
    EXECUTION_WAITING = "execution.waiting"
    EXECUTION_PAUSED = "execution.paused"
    EXECUTION_RESUMED = "execution.resumed"
    EXECUTION_COMPLETED = "execution.completed"
    EXECUTION_FAILED = "execution.failed"
    EXECUTION_CANCELLED = "execution.cancelled"
    STEP_STARTED = "step.started"
    STEP_COMPLETED = "step.completed"
    STEP_FAILED = "step.failed"
    STEP_RETRYING = "step.retrying"
    STEP_SKIPPED = "step.skipped"
    LOG = "log"
    APPROVAL_REQUIRED = "approval.required"
    APPROVAL_GRANTED = "approval.granted"
    APPROVAL_DENIED = "approval.denied"
    APPROVAL_EXPIRED = "approval.expired"


TERMINAL_EVENTS = frozenset(
    {EventType.EXECUTION_COMPLETED, EventType.EXECUTION_FAILED, EventType.EXECUTION_CANCELLED}
)
CONFLATABLE_EVENTS = frozenset({EventType.LOG, EventType.EXECUTION_PROGRESS})
"""Events a slow subscriber may receive only the latest of (per execution and step)."""


@dataclass(frozen=True, slots=True)
class Event:
    """One committed event: routing keys plus ``body``, its wire JSON encoded exactly once."""

    execution_id: str
    org_id: str
    flow_id: str
    seq: int
    type: str
    ts: int
    step_id: str | None
    status: str | None
    body: str
    level: str | None = None

    @property
    def id(self) -> str:
        return f"{self.execution_id}:{self.seq}"

    @property
    def is_terminal(self) -> bool:
        return self.type in TERMINAL_EVENTS

    def as_dict(self) -> dict[str, Any]:
        value: dict[str, Any] = jsonutil.loads(self.body)
        return value


def encode_event(
    *,
    execution_id: str,
    org_id: str,
    flow_id: str,
    seq: int,
    type: str,
    ts: int,
    fields: dict[str, Any],
) -> Event:
    """Build the wire form: common fields first, then the event-specific ones, flat."""
    body: dict[str, Any] = {
        "id": f"{execution_id}:{seq}",
        "type": type,
        "orgId": org_id,
        "flowId": flow_id,
        "executionId": execution_id,
        "seq": seq,
        "timestamp": iso(ts),
    }
    body.update(fields)
    status = fields.get("status")
    return Event(
        execution_id=execution_id,
        org_id=org_id,
        flow_id=flow_id,
        seq=seq,
        type=type,
        ts=ts,
        step_id=fields.get("stepId"),
        status=status if isinstance(status, str) else None,
        body=jsonutil.dumps(body),
        level=fields.get("level") if type == "log" else None,
    )
