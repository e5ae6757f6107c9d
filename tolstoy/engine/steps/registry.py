"""Every step type by name; ``get_step_type`` hands out one shared instance of each."""

from __future__ import annotations

from functools import cache

from tolstoy.engine.steps.action import ActionStep
from tolstoy.engine.steps.approval import ApprovalStep
from tolstoy.engine.steps.base import StepType
from tolstoy.engine.steps.code import CodeStep
from tolstoy.engine.steps.conditional import ConditionalStep
from tolstoy.engine.steps.data_transform import DataTransformStep
from tolstoy.engine.steps.delay import DelayStep
from tolstoy.engine.steps.http_request import HttpRequestStep
from tolstoy.engine.steps.webhook import WebhookStep
from tolstoy.errors import FieldError, ValidationFailed

STEP_TYPES: dict[str, type[StepType]] = {
    cls.name: cls
    for cls in (
        HttpRequestStep,
        DataTransformStep,
        ConditionalStep,
        DelayStep,
        CodeStep,
        ApprovalStep,
        WebhookStep,
        ActionStep,
    )
}


@cache
def get_step_type(name: str) -> StepType:
    """The process's instance of step type ``name``; ValidationFailed naming the known ones if none."""
    try:
        cls = STEP_TYPES[name]
    except KeyError:
        known = ", ".join(sorted(STEP_TYPES))
        message = f"unknown step type {name!r} (known: {known})"
        raise ValidationFailed(message, details=[FieldError("type", message, "unknown_step_type")]) from None
    return cls()
