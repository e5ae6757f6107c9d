"""One attempt of one step: render its config, validate it, run it under its timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from tolstoy import jsonutil
from tolstoy.engine import templating
from tolstoy.engine.definition import StepDefinition
from tolstoy.engine.states import StepStatus
from tolstoy.engine.steps.base import StepContext, StepType
from tolstoy.engine.steps.registry import get_step_type
from tolstoy.errors import StepError

PURE_TYPES = frozenset({"data_transform", "conditional"})
"""Step types with no side effect and no wait: started and finished are committed together."""


@dataclass(slots=True)
class StepState:
    """The runner's view of one step; ``row()`` is its ``step_runs`` record."""

    id: str
    type: str
    name: str
    status: StepStatus = StepStatus.PENDING
    attempt: int = 0
    output: Any = None
    error: dict[str, Any] | None = None
    reason: str | None = None
    started_at: int | None = None
    finished_at: int | None = None
    duration_ms: int | None = None
    next_attempt_at: int | None = None

    def move(self, to: StepStatus) -> None:
        self.status = self.status.check(to)

    def row(self, execution_id: str) -> dict[str, Any]:
        return {
            "execution_id": execution_id,
            "step_id": self.id,
            "step_type": self.type,
            "attempt": self.attempt,
            "status": self.status.value,
            "output": self.output,
            "error": self.error,
            "reason": self.reason,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_ms": self.duration_ms,
            "next_attempt_at": self.next_attempt_at,
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any], name: str) -> StepState:
        return cls(
            id=row["step_id"],
            type=row["step_type"],
            name=name,
            status=StepStatus(row["status"]),
            attempt=row["attempt"],
            output=row["output"],
            error=row["error"],
            reason=row["reason"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            duration_ms=row["duration_ms"],
            next_attempt_at=row["next_attempt_at"],
        )


def prepare_config(step_type: StepType, raw: Mapping[str, Any], scope: Mapping[str, Any]) -> Any:
    """Render templates (except the type's raw keys) and validate against the type's model."""
    rendered = {
        key: value if key in step_type.raw_keys else templating.render(value, scope)
        for key, value in raw.items()
    }
    try:
        return step_type.config_model.model_validate(rendered)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}" for err in exc.errors()
        )
        raise StepError(
            f"config of step is invalid after rendering: {problems}",
            category="validation",
            code="invalid_config",
        ) from None


async def run_attempt(step: StepDefinition, ctx: StepContext, scope: Mapping[str, Any]) -> Any:
    """Run one attempt; return its output or raise StepError (timeouts included)."""
    step_type = get_step_type(step.type)
    config = prepare_config(step_type, step.config, scope)
    timeout_ms = step.timeout_ms
    try:
        if timeout_ms is None:
            output = await step_type.run(config, ctx)
        else:
            async with asyncio.timeout(timeout_ms / 1000):
                output = await step_type.run(config, ctx)
    except TimeoutError:
        raise StepError(
            f"step {step.id!r} timed out after {timeout_ms} ms",
            category="timeout",
            code="step_timeout",
            retryable=True,
        ) from None
    _check_output(output, ctx.max_output_bytes)
    return output


def _check_output(output: Any, limit: int) -> None:
    try:
        size = len(jsonutil.dumpb(output))
    except TypeError:
        raise StepError(
            "step output is not JSON-serializable", category="data", code="output_not_serializable"
        ) from None
    if size > limit:
        raise StepError(
            f"step output is {size} bytes, over the {limit}-byte limit",
            category="data",
            code="output_too_large",
        )


def internal_error(exc: BaseException) -> StepError:
    """What an unexpected exception in engine or step code becomes (no traceback leaks out)."""
    return StepError(f"internal error: {type(exc).__name__}", category="system", code="internal_error")
