"""The event-specific fields of step and execution events (PROTOCOL.md §1), built in one place."""

from __future__ import annotations

from typing import Any

from tolstoy.engine.attempt import StepState
from tolstoy.engine.definition import StepDefinition
from tolstoy.engine.states import ExecutionStatus
from tolstoy.events.types import EventType as ET
from tolstoy.timeutil import iso

TERMINAL_TYPES = {
    ExecutionStatus.COMPLETED: ET.EXECUTION_COMPLETED,
    ExecutionStatus.FAILED: ET.EXECUTION_FAILED,
    ExecutionStatus.CANCELLED: ET.EXECUTION_CANCELLED,
}


def step_started(step: StepDefinition, state: StepState) -> tuple[str, dict[str, Any]]:
    return ET.STEP_STARTED, {
        "stepId": step.id,
        "stepName": state.name,
        "stepType": step.type,
        "status": "running",
        "attempt": state.attempt,
    }


def step_completed(state: StepState, output: Any) -> tuple[str, dict[str, Any]]:
    return ET.STEP_COMPLETED, {
        "stepId": state.id,
        "stepName": state.name,
        "status": "completed",
        "attempt": state.attempt,
        "duration": state.duration_ms,
        "output": output,
    }


def step_failed(state: StepState, error: dict[str, Any], next_at: int | None) -> tuple[str, dict[str, Any]]:
    fields = {
        "stepId": state.id,
        "stepName": state.name,
        "status": "failed",
        "attempt": state.attempt,
        "error": error,
        "willRetry": next_at is not None,
        "duration": state.duration_ms,
    }
    if next_at is not None:
        fields["nextRetryAt"] = iso(next_at)
    return ET.STEP_FAILED, fields


def step_retrying(state: StepState, error: dict[str, Any], delay: int) -> tuple[str, dict[str, Any]]:
    return ET.STEP_RETRYING, {
        "stepId": state.id,
        "stepName": state.name,
        "status": "retrying",
        "attempt": state.attempt + 1,
        "delayMs": delay,
        "nextRetryAt": iso(state.next_attempt_at),
        "error": error,
    }


def step_skipped(state: StepState, reason: str) -> tuple[str, dict[str, Any]]:
    return ET.STEP_SKIPPED, {
        "stepId": state.id,
        "stepName": state.name,
        "status": "skipped",
        "reason": reason,
    }


def terminal(
    status: ExecutionStatus, counts: dict[str, int], duration: int, total: int, **extra: Any
) -> tuple[str, dict[str, Any]]:
    """``execution.completed|failed|cancelled`` with counts; ``extra`` adds output, error or by."""
    fields: dict[str, Any] = {
        "status": status.value,
        "duration": duration,
        "totalSteps": total,
        "completedSteps": counts["completed_steps"],
        "failedSteps": counts["failed_steps"],
        "skippedSteps": counts["skipped_steps"],
    }
    fields.update(extra)
    return TERMINAL_TYPES[status], fields


def flow_timeout_error(timeout_ms: int | None) -> dict[str, Any]:
    return {
        "message": f"execution timed out after {timeout_ms} ms",
        "code": "flow_timeout",
        "category": "timeout",
        "retryable": False,
    }
