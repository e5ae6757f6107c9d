"""``action``: the config model; running actions is not supported yet."""

from __future__ import annotations

from typing import Any, NoReturn

from pydantic import Field

from tolstoy.engine.steps.base import StepConfig, StepContext, StepType
from tolstoy.errors import StepError


class ActionConfig(StepConfig):
    action: str = Field(min_length=1)
    inputs: dict[str, Any] = Field(default_factory=dict)


class ActionStep(StepType):
    name = "action"
    config_model = ActionConfig

    async def run(self, config: ActionConfig, ctx: StepContext) -> NoReturn:
        raise StepError(
            f"running action {config.action!r} is not supported yet", category="system", code="not_supported"
        )
