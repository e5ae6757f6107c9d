"""The registry and the in-process step types: transform, conditional, delay, approval, action."""

from __future__ import annotations

import time
from typing import Any

import pytest
from pydantic import ValidationError

from tolstoy.engine.steps.action import ActionConfig, ActionStep
from tolstoy.engine.steps.approval import ApprovalConfig, ApprovalStep
from tolstoy.engine.steps.base import StepConfig, StepContext, StepType
from tolstoy.engine.steps.conditional import ConditionalConfig, ConditionalStep
from tolstoy.engine.steps.data_transform import DataTransformConfig, DataTransformStep
from tolstoy.engine.steps.delay import DelayConfig, DelayStep, wake_at_ms
from tolstoy.engine.steps.registry import STEP_TYPES, get_step_type
from tolstoy.errors import StepError, ValidationFailed
from tolstoy.timeutil import parse_iso


def make_ctx(**overrides: Any) -> StepContext:
    values: dict[str, Any] = {
        "execution_id": "exec_1_abc",
        "org_id": "org_1",
        "flow_id": "flow_1",
        "step_id": "s",
        "step_name": "S",
        "step_type": "data_transform",
        "attempt": 1,
        "variables": {"n": 3, "name": "Ada"},
        "steps": {"fetch": {"status": 201, "json": {"items": [1, 2, 3]}}},
        "meta": {"executionId": "exec_1_abc"},
    }
    return StepContext(**(values | overrides))


# --- registry -----------------------------------------------------------------------


def test_every_step_type_is_registered_under_its_name() -> None:
    expected = {
        "http_request",
        "data_transform",
        "conditional",
        "delay",
        "code",
        "webhook",
        "approval",
        "action",
    }
    assert set(STEP_TYPES) == expected
    for name, cls in STEP_TYPES.items():
        assert cls.name == name and issubclass(cls, StepType) and issubclass(cls.config_model, StepConfig)


def test_get_step_type_returns_one_shared_instance() -> None:
    first = get_step_type("code")
    assert first is get_step_type("code") and isinstance(first, STEP_TYPES["code"])


def test_an_unknown_step_type_names_the_known_ones() -> None:
    with pytest.raises(ValidationFailed, match="http_request") as info:
        get_step_type("teleport")
    assert info.value.details[0].field == "type"


# --- data_transform and conditional -------------------------------------------------


async def transform(config: dict[str, Any]) -> Any:
    return await DataTransformStep().run(DataTransformConfig.model_validate(config), make_ctx())


async def test_an_expression_sees_variables_step_outputs_and_meta() -> None:
    expression = (
        "{'total': steps['fetch'].output.json['items'] | sum, 'n': variables.n, 'id': meta.executionId}"
    )
    assert await transform({"expression": expression}) == {"total": 6, "n": 3, "id": "exec_1_abc"}


async def test_a_template_is_returned_as_rendered_by_the_runner() -> None:
    template = {"greeting": "Hello Ada", "list": [1, None]}
    assert await transform({"template": template}) == template
    assert await transform({"template": None}) is None


async def test_a_failing_expression_is_a_validation_error() -> None:
    with pytest.raises(StepError) as info:
        await transform({"expression": "variables.missing + 1"})
    assert info.value.category == "validation"


@pytest.mark.parametrize("config", [{}, {"expression": "1", "template": {}}, {"expression": "  "}])
def test_transform_needs_exactly_one_of_expression_and_template(config: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        DataTransformConfig.model_validate(config)


@pytest.mark.parametrize(
    ("condition", "result"),
    [("steps['fetch'].output.status == 201", True), ("variables.n > 5", False), ("variables.name", True)],
)
async def test_conditional_returns_the_truth_of_its_condition(condition: str, result: bool) -> None:
    config = ConditionalConfig.model_validate({"condition": condition})
    assert await ConditionalStep().run(config, make_ctx()) == {"result": result}


def test_expressions_are_raw_keys() -> None:
    assert DataTransformStep.raw_keys == {"expression"}
    assert ConditionalStep.raw_keys == {"condition"}


# --- delay --------------------------------------------------------------------------


def test_wake_at_for_a_duration_and_for_an_instant() -> None:
    now = parse_iso("2025-08-07T14:00:00.000Z")
    assert wake_at_ms(DelayConfig.model_validate({"durationMs": 1500}), now) == now + 1500
    until = DelayConfig.model_validate({"until": "2025-08-07T16:00:00+02:00"})
    assert wake_at_ms(until, now) == now
    later = DelayConfig.model_validate({"until": "2025-08-07T14:00:05Z"})
    assert wake_at_ms(later, now) == now + 5000


async def test_delay_waits_and_reports_the_wait() -> None:
    started = time.monotonic()
    out = await DelayStep().run(DelayConfig.model_validate({"durationMs": 50}), make_ctx())
    assert out == {"waitedMs": 50} and time.monotonic() - started >= 0.045
    assert await DelayStep().run(
        DelayConfig.model_validate({"until": "2000-01-01T00:00:00Z"}), make_ctx()
    ) == {"waitedMs": 0}


@pytest.mark.parametrize(
    "config",
    [{}, {"durationMs": 1, "until": "2030-01-01T00:00:00Z"}, {"durationMs": -1}, {"until": "tomorrow"}],
)
def test_delay_needs_exactly_one_valid_bound(config: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        DelayConfig.model_validate(config)


# --- approval and action ------------------------------------------------------------


def test_approval_and_action_configs() -> None:
    approval = ApprovalConfig.model_validate(
        {"prompt": "Ship it?", "timeoutMs": 60000, "approvers": ["usr_1"]}
    )
    assert (approval.timeout_ms, approval.approvers) == (60000, ["usr_1"])
    assert ActionConfig.model_validate({"action": "act_1"}).inputs == {}
    for model, config in ((ApprovalConfig, {}), (ActionConfig, {"action": ""})):
        with pytest.raises(ValidationError):
            model.model_validate(config)


async def test_approval_and_action_do_not_run_as_steps() -> None:
    runs = [
        ApprovalStep().run(ApprovalConfig.model_validate({"prompt": "ok?"}), make_ctx()),
        ActionStep().run(ActionConfig.model_validate({"action": "act_1", "inputs": {"a": 1}}), make_ctx()),
    ]
    for run in runs:
        with pytest.raises(StepError) as info:
            await run
        assert (info.value.category, info.value.error_code) == ("system", "not_supported")
