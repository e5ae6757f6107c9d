"""``data_transform``: the value of one expression, or a template the runner has rendered."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import model_validator

from tolstoy.engine.steps.base import StepConfig, StepContext, StepType


def expression_scope(ctx: StepContext) -> dict[str, Any]:
    """What an expression sees: ``variables``, ``steps['id'].output`` and ``meta`` (no secrets)."""
    steps: Mapping[str, Any] = ctx.steps
    return {
        "variables": ctx.variables,
        "steps": {step_id: {"output": output} for step_id, output in steps.items()},
        "meta": ctx.meta,
    }


def evaluate(expression: str, ctx: StepContext) -> Any:
    """Evaluate a bare expression over the step's scope; failures are validation StepErrors."""
    from tolstoy.engine import templating

    return templating.evaluate(expression, expression_scope(ctx))


class DataTransformConfig(StepConfig):
    expression: str | None = None
    template: Any = None

    @model_validator(mode="after")
    def _one_of(self) -> DataTransformConfig:
        given = {"expression", "template"} & self.model_fields_set
        if len(given) != 1:
            raise ValueError("give exactly one of 'expression' or 'template'")
        if "expression" in given and not (self.expression or "").strip():
            raise ValueError("'expression' must not be empty")
        return self


class DataTransformStep(StepType):
    name = "data_transform"
    config_model = DataTransformConfig
    raw_keys = frozenset({"expression"})

    async def run(self, config: DataTransformConfig, ctx: StepContext) -> Any:
        if "expression" in config.model_fields_set and config.expression is not None:
            return evaluate(config.expression, ctx)
        return config.template
