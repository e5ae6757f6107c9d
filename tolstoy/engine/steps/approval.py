"""``approval``: the config model; the engine itself waits for the decision."""

from __future__ import annotations

from typing import NoReturn

from pydantic import Field

from tolstoy.engine.steps.base import StepConfig, StepContext, StepType
from tolstoy.errors import StepError


class ApprovalConfig(StepConfig):
    prompt: str = Field(min_length=1)
    timeout_ms: int | None = Field(default=None, alias="timeoutMs", gt=0)
    approvers: list[str] | None = None


class ApprovalStep(StepType):
    name = "approval"
    config_model = ApprovalConfig

    async def run(self, config: ApprovalConfig, ctx: StepContext) -> NoReturn:
        raise StepError(
            "approval steps are handled by the engine, not run as a step",
            category="system",
            code="not_supported",
        )
