"""What a step sees: the template scope, ``meta``, and the StepContext with its live sinks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from tolstoy.config import Settings
from tolstoy.engine.attempt import StepState
from tolstoy.engine.definition import StepDefinition
from tolstoy.engine.ledger import Ledger
from tolstoy.engine.steps.base import StepContext
from tolstoy.events.types import EventType as ET
from tolstoy.masking import Masker
from tolstoy.timeutil import iso

Commit = Callable[..., Awaitable[None]]
"""The runner's fenced ``_commit(events, execution=…)``."""


def meta(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "executionId": row["id"],
        "flowId": row["flow_id"],
        "orgId": row["org_id"],
        "flowVersion": row["flow_version"],
        "startedAt": iso(row.get("started_at")),
    }


def scope(row: Mapping[str, Any], ledger: Ledger, secrets: Mapping[str, str]) -> dict[str, Any]:
    """What templates and expressions see: ``variables``, ``steps``, ``secrets``, ``meta``."""
    return {
        "variables": row["variables"],
        "steps": ledger.scope_steps(),
        "secrets": secrets,
        "meta": meta(row),
    }


def step_context(
    row: Mapping[str, Any],
    ledger: Ledger,
    step: StepDefinition,
    state: StepState,
    settings: Settings,
    masker: Masker,
    commit: Commit,
) -> StepContext:
    """The StepContext of one attempt; its log and progress sinks commit masked events."""

    async def emit_log(level: str, message: str, metadata: Mapping[str, Any] | None) -> None:
        event: dict[str, Any] = {"level": level, "message": masker.text(message), "stepId": step.id}
        if metadata:
            event["metadata"] = masker.value(dict(metadata))
        await commit([(ET.LOG, event)])

    async def emit_progress(current: int, total: int, message: str | None) -> None:
        percent = round(100 * current / total, 1) if total else None
        progress = {"stepId": step.id, "current": current, "total": total, "percent": percent}
        if message:
            progress["message"] = masker.text(message)
        await commit([(ET.EXECUTION_PROGRESS, progress)], execution={"progress": progress})

    return StepContext(
        execution_id=row["id"],
        org_id=row["org_id"],
        flow_id=row["flow_id"],
        step_id=step.id,
        step_name=state.name,
        step_type=step.type,
        attempt=state.attempt,
        timeout_ms=step.timeout_ms,
        variables=row["variables"],
        steps=ledger.outputs(),
        meta={**meta(row), "stepId": step.id, "attempt": state.attempt},
        allow_private_networks=settings.allow_private_networks,
        max_output_bytes=settings.max_output_bytes,
        log=emit_log,
        progress=emit_progress,
    )
