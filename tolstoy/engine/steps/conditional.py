"""``conditional``: ``{"result": bool}`` of one expression."""

from __future__ import annotations

from typing import Any

from pydantic import field_validator

from tolstoy.engine.steps.base import StepConfig, StepContext, StepType
from tolstoy.engine.steps.data_transform import evaluate


class ConditionalConfig(StepConfig):
    condition: str

    @field_validator("condition")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("'condition' must not be empty")
        return value


class ConditionalStep(StepType):
    name = "conditional"
    config_model = ConditionalConfig
    raw_keys = frozenset({"condition"})

    async def run(self, config: ConditionalConfig, ctx: StepContext) -> dict[str, Any]:
        return {"result": bool(evaluate(config.condition, ctx))}
