"""Rows to the API's camelCase shapes (one function per noun)."""

from __future__ import annotations

from typing import Any

from tolstoy.masking import Masker
from tolstoy.timeutil import iso as iso
from tolstoy.timeutil import now_ms


def flow(row: dict[str, Any], definition: dict[str, Any] | None = None) -> dict[str, Any]:
    out = {
        "id": row["id"],
        "name": row["name"],
        "description": row.get("description"),
        "version": row["current_version"],
        "createdAt": iso(row["created_at"]),
        "updatedAt": iso(row["updated_at"]),
    }
    if definition is not None:
        out["definition"] = definition
    return out


def execution(row: dict[str, Any], masker: Masker | None = None) -> dict[str, Any]:
    """The execution with its live-status fields (progress, elapsed, estimate)."""
    m = masker or Masker()
    total = row["total_steps"] or 0
    done = row["completed_steps"] + row["failed_steps"] + row["skipped_steps"]
    started, finished = row.get("started_at"), row.get("finished_at")
    elapsed = ((finished or now_ms()) - started) if started else None
    remaining = None
    if elapsed is not None and finished is None and 0 < done < total:
        remaining = int(elapsed / done * (total - done))
    elif finished is not None:
        remaining = 0
    return {
        "id": row["id"],
        "flowId": row["flow_id"],
        "flowVersion": row["flow_version"],
        "status": row["status"],
        "variables": m.value(row["variables"]),
        "output": m.value(row.get("output")),
        "error": m.value(row.get("error")),
        "totalSteps": total,
        "completedSteps": row["completed_steps"],
        "failedSteps": row["failed_steps"],
        "skippedSteps": row["skipped_steps"],
        "progressPercentage": round(100 * done / total, 1) if total else 0.0,
        "progress": m.value(row.get("progress")),
        "currentStep": row.get("current_step"),
        "elapsedTime": elapsed,
        "estimatedRemainingTime": remaining,
        "lastSeq": row["last_seq"],
        "retryOf": row.get("retry_of"),
        "idempotencyKey": row.get("idempotency_key"),
        "cancelRequested": bool(row.get("cancel_requested")),
        "pauseRequested": bool(row.get("pause_requested")),
        "createdAt": iso(row["created_at"]),
        "startedAt": iso(started),
        "finishedAt": iso(finished),
    }


def step(row: dict[str, Any], masker: Masker | None = None) -> dict[str, Any]:
    m = masker or Masker()
    return {
        "stepId": row["step_id"],
        "type": row["step_type"],
        "status": row["status"],
        "attempt": row["attempt"],
        "output": m.value(row.get("output")),
        "error": m.value(row.get("error")),
        "reason": row.get("reason"),
        "startedAt": iso(row.get("started_at")),
        "finishedAt": iso(row.get("finished_at")),
        "duration": row.get("duration_ms"),
        "nextAttemptAt": iso(row.get("next_attempt_at")),
    }


def user(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "orgId": row["org_id"],
        "email": row["email"],
        "name": row["name"],
        "role": row["role"],
        "createdAt": iso(row["created_at"]),
    }


def api_key(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "prefix": row["prefix"],
        "userId": row["user_id"],
        "createdAt": iso(row["created_at"]),
        "lastUsedAt": iso(row.get("last_used_at")),
    }


def retrying(step_rows: list[dict[str, Any]], masker: Masker | None = None) -> dict[str, Any] | None:
    """The step waiting for its next attempt, if any: which, attempt number, when, and the last error."""
    m = masker or Masker()
    for row in step_rows:
        if row["status"] == "retrying":
            return {
                "stepId": row["step_id"],
                "nextAttempt": row["attempt"] + 1,
                "nextAttemptAt": iso(row.get("next_attempt_at")),
                "lastError": m.value(row.get("error")),
            }
    return None


def approval(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "executionId": row["execution_id"],
        "stepId": row["step_id"],
        "status": row["status"],
        "prompt": row.get("prompt"),
        "approvers": row.get("approvers"),
        "decidedBy": row.get("decided_by"),
        "comment": row.get("comment"),
        "expiresAt": iso(row.get("expires_at")),
        "createdAt": iso(row["created_at"]),
        "decidedAt": iso(row.get("decided_at")),
    }
