import json
import sys
import types
from collections.abc import Callable
from typing import Any, Literal

import pytest
from pydantic import ConfigDict, Field
from pydantic.alias_generators import to_camel

from tolstoy.engine.definition import (
    MAX_DEFINITION_BYTES,
    FlowDefinition,
    parse_definition,
    resolved_dependencies,
    topological_order,
)
from tolstoy.engine.steps.base import StepConfig, StepContext, StepType
from tolstoy.errors import BadRequest, FieldError, TooLarge, ValidationFailed

# --- a small fake registry, independent of the real step types ------------------------------


class _Config(StepConfig):
    model_config = ConfigDict(alias_generator=to_camel)


class HttpConfig(_Config):
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
    url: str
    headers: dict[str, str] | None = None
    json_body: Any = Field(default=None, alias="json")
    timeout_ms: int | None = None
    accept_status: list[int] | None = None


class TransformConfig(_Config):
    expression: str | None = None
    template: Any = None


class ConditionalConfig(_Config):
    condition: str


class CodeConfig(_Config):
    source: str
    timeout_ms: int | None = None


class _Fake(StepType):
    async def run(self, config: Any, ctx: StepContext) -> Any:
        return None


class HttpStep(_Fake):
    name = "http_request"
    config_model = HttpConfig


class TransformStep(_Fake):
    name = "data_transform"
    config_model = TransformConfig


class ConditionalStep(_Fake):
    name = "conditional"
    config_model = ConditionalConfig


class CodeStep(_Fake):
    name = "code"
    config_model = CodeConfig
    raw_keys = frozenset({"source"})


TYPES: dict[str, type[StepType]] = {t.name: t for t in (HttpStep, TransformStep, ConditionalStep, CodeStep)}

EXAMPLE = """\
name: github-issue-triage
description: Create an issue and notify Slack
settings: {concurrency: 5, timeoutMs: 300000,
           retry: {maxAttempts: 3, backoff: exponential, baseDelayMs: 1000}}
variables: {repo: owner/repo}
steps:
  - id: create-issue
    type: http_request
    name: Create GitHub Issue
    config: {method: POST, url: "https://api.github.com/repos/{{ variables.repo }}/issues",
             headers: {Authorization: "Bearer {{ secrets.github_token }}"},
             json: {title: "{{ variables.title }}"}}
    retry: {maxAttempts: 5}
  - id: notify
    type: http_request
    dependsOn: [create-issue]
    executeIf: "steps['create-issue'].output.status == 201"
    critical: false
    config: {method: POST, url: "{{ variables.slackHook }}",
             json: {text: "Issue {{ steps['create-issue'].output.json.number }}"}}
"""


def parse(raw: Any, **kwargs: Any) -> FlowDefinition:
    return parse_definition(raw, step_types=TYPES, **kwargs)


def step(step_id: str, **fields: Any) -> dict[str, Any]:
    fields.setdefault("type", "http_request")
    fields.setdefault("config", {"method": "GET", "url": "https://example.com"})
    return {"id": step_id, **fields}


def flow(*steps: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"name": "f", **fields, "steps": list(steps)}


def problems(raw: Any) -> list[FieldError]:
    with pytest.raises(ValidationFailed) as info:
        parse(raw)
    assert info.value.message == "flow definition is invalid"
    return info.value.details


def fields_and_codes(raw: Any) -> set[tuple[str, str]]:
    return {(p.field, p.code) for p in problems(raw)}


def only_problem(raw: Any) -> FieldError:
    found = problems(raw)
    assert len(found) == 1, found
    return found[0]


# --- parsing ---------------------------------------------------------------------------------


def test_parses_the_api_example_from_yaml() -> None:
    defn = parse(EXAMPLE)
    assert defn.name == "github-issue-triage"
    assert defn.settings is not None and defn.settings.concurrency == 5
    assert defn.settings.retry is not None and defn.settings.retry.max_attempts == 3
    first, second = defn.steps
    assert first.retry is not None and first.retry.max_attempts == 5
    assert first.depends_on is None and first.critical is True
    assert second.depends_on == ["create-issue"] and second.critical is False
    assert second.execute_if == "steps['create-issue'].output.status == 201"
    assert first.config["json"] == {"title": "{{ variables.title }}"}


def test_model_dump_round_trips_with_camel_case() -> None:
    defn = parse(EXAMPLE)
    dumped = defn.model_dump(by_alias=True, exclude_none=True)
    assert dumped["steps"][1]["dependsOn"] == ["create-issue"]
    assert "executeIf" in dumped["steps"][1] and "execute_if" not in dumped["steps"][1]
    assert "dependsOn" not in dumped["steps"][0]
    assert parse(dumped) == defn
    assert parse(json.dumps(dumped)) == defn


def test_parses_json_text_and_bytes() -> None:
    raw = json.dumps(flow(step("a")))
    assert parse(raw).steps[0].id == "a"
    assert parse(raw.encode()).steps[0].id == "a"
    assert parse(raw, content_type="application/json; charset=utf-8").steps[0].id == "a"


def test_parses_json_looking_yaml() -> None:
    defn = parse("{name: f, steps: [{id: a, type: code, config: {source: x}}]}")
    assert defn.steps[0].config == {"source": "x"}


def test_malformed_yaml_names_line_and_column() -> None:
    with pytest.raises(BadRequest) as info:
        parse("name: f\nsteps:\n  - id: a\n   type: [unclosed\n")
    assert "not valid YAML" in info.value.message
    assert "line 4" in info.value.message and "column" in info.value.message


def test_malformed_json_names_line_and_column() -> None:
    with pytest.raises(BadRequest) as info:
        parse('{\n  "name": "f",\n  "steps": [}\n', content_type="application/json")
    assert "not valid JSON" in info.value.message
    assert "line 3" in info.value.message and "column" in info.value.message


def test_yaml_aliases_are_refused() -> None:
    text = "name: f\nvariables: {a: &x [1, 2]}\nsteps:\n  - {id: a, type: code, config: {source: *x}}\n"
    with pytest.raises(BadRequest) as info:
        parse(text)
    assert "aliases" in info.value.message and "line 4" in info.value.message


def test_yaml_timestamps_stay_strings() -> None:
    defn = parse("name: f\nvariables: {day: 2024-01-02}\nsteps: [{id: a, type: code, config: {source: x}}]\n")
    assert defn.variables == {"day": "2024-01-02"}


def test_yaml_values_json_cannot_hold_are_refused() -> None:
    with pytest.raises(BadRequest):
        parse(
            "name: f\nvariables: {b: !!binary aGVsbG8=}\nsteps: [{id: a, type: code, config: {source: x}}]\n"
        )


@pytest.mark.parametrize(
    "encode",
    [json.dumps, lambda d: json.dumps(d).encode(), lambda d: d],
    ids=["str", "bytes", "mapping"],
)
def test_over_one_mebibyte_is_too_large(encode: Callable[[dict[str, Any]], Any]) -> None:
    big = flow(step("a"), variables={"blob": "x" * MAX_DEFINITION_BYTES})
    with pytest.raises(TooLarge) as info:
        parse(encode(big))
    assert info.value.status == 413


def test_just_under_the_limit_is_fine() -> None:
    small = json.dumps(flow(step("a"), variables={"blob": ""}))
    raw = json.dumps(flow(step("a"), variables={"blob": "x" * (MAX_DEFINITION_BYTES - len(small))}))
    assert len(raw.encode()) == MAX_DEFINITION_BYTES
    assert parse(raw).variables is not None


def test_size_limit_counts_bytes_not_characters() -> None:
    text = json.dumps(
        flow(step("a"), variables={"blob": "é" * (MAX_DEFINITION_BYTES // 2)}), ensure_ascii=False
    )
    assert len(text) < MAX_DEFINITION_BYTES
    with pytest.raises(TooLarge):
        parse(text)


def test_size_limit_is_configurable() -> None:
    with pytest.raises(TooLarge):
        parse(json.dumps(flow(step("a"))), max_bytes=50)


def test_default_registry_is_used_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = types.ModuleType("tolstoy.engine.steps.registry")
    registry.STEP_TYPES = {"code": CodeStep}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tolstoy.engine.steps.registry", registry)
    assert parse_definition(flow(step("a", type="code", config={"source": "x"}))).steps[0].type == "code"
    with pytest.raises(ValidationFailed) as info:
        parse_definition(flow(step("a")))
    assert info.value.details[0].code == "unknown_step_type"


# --- shape errors from the models ------------------------------------------------------------


def test_not_a_mapping() -> None:
    problem = only_problem("- just\n- a list\n")
    assert (problem.field, problem.code) == ("", "type")
    assert "got a list" in problem.message


def test_missing_fields() -> None:
    assert fields_and_codes({"steps": [{"type": "code", "config": {"source": "x"}}]}) == {
        ("name", "missing"),
        ("steps[0].id", "missing"),
    }


def test_unknown_keys_are_refused() -> None:
    raw = flow(step("a", dependson=["x"]), extra=1, settings={"paralellism": 2})
    assert fields_and_codes(raw) == {
        ("extra", "unknown_field"),
        ("steps[0].dependson", "unknown_field"),
        ("settings.paralellism", "unknown_field"),
    }


def test_wrong_types() -> None:
    raw = flow(step("a", critical="maybe", dependsOn="b", config=[1]), variables=[1])
    assert fields_and_codes(raw) == {
        ("steps[0].critical", "type"),
        ("steps[0].dependsOn", "type"),
        ("steps[0].config", "type"),
        ("variables", "type"),
    }


def test_a_step_that_is_not_a_mapping() -> None:
    problem = only_problem(flow(step("a"), "oops"))  # type: ignore[arg-type]
    assert (problem.field, problem.code) == ("steps[1]", "type")
    assert problem.message == "expected a mapping, got a string"


@pytest.mark.parametrize(
    ("step_id", "code"), [("has space", "pattern"), ("ä", "pattern"), ("x" * 65, "range"), ("", "range")]
)
def test_step_id_format(step_id: str, code: str) -> None:
    problem = only_problem(flow(step(step_id)))
    assert (problem.field, problem.code) == ("steps[0].id", code)


def test_step_id_at_the_limits_is_fine() -> None:
    assert parse(flow(step("A_b-9" + "x" * 59))).steps[0].id.startswith("A_b-9")


def test_at_least_one_step_and_at_most_500() -> None:
    assert fields_and_codes(flow()) == {("steps", "range")}
    many = [step(f"s{i}") for i in range(501)]
    assert fields_and_codes(flow(*many)) == {("steps", "range")}
    assert len(parse(flow(*many[:500])).steps) == 500


def test_numeric_settings() -> None:
    raw = flow(step("a", timeoutMs=0), settings={"concurrency": 0, "timeoutMs": -5})
    assert fields_and_codes(raw) == {
        ("steps[0].timeoutMs", "range"),
        ("settings.concurrency", "range"),
        ("settings.timeoutMs", "range"),
    }


# --- retry settings --------------------------------------------------------------------------


def test_bad_retry_settings() -> None:
    raw = flow(
        step("a", retry={"maxAttempts": 0, "backoff": "linear"}),
        step("b", retry={"baseDelayMs": -1}),
        settings={"retry": {"maxAttempts": 101, "baseDelayMs": 5000, "maxDelayMs": 100}},
    )
    assert fields_and_codes(raw) == {
        ("steps[0].retry.maxAttempts", "retry"),
        ("steps[0].retry.backoff", "retry"),
        ("steps[1].retry.baseDelayMs", "retry"),
        ("settings.retry.maxAttempts", "retry"),
        ("settings.retry.maxDelayMs", "retry"),
    }


def test_retry_cap_message() -> None:
    problem = only_problem(flow(step("a", retry={"baseDelayMs": 500, "maxDelayMs": 100})))
    assert problem.message == "maxDelayMs (100) must be >= baseDelayMs (500)"


# --- step types and config -------------------------------------------------------------------


def test_unknown_step_type_lists_the_known_ones() -> None:
    problem = only_problem(flow(step("a"), step("b", type="telepathy", config={})))
    assert (problem.field, problem.code) == ("steps[1].type", "unknown_step_type")
    assert "'telepathy'" in problem.message
    assert "code, conditional, data_transform, http_request" in problem.message


def test_config_unknown_and_missing_keys() -> None:
    raw = flow(step("a", config={"method": "GET", "bogus": 1}))
    assert fields_and_codes(raw) == {("steps[0].config.url", "config"), ("steps[0].config.bogus", "config")}


def test_config_types_are_checked_where_there_is_no_template() -> None:
    config = {"method": "FETCH", "url": "https://x", "timeoutMs": "soon", "headers": {"A": 1}}
    assert fields_and_codes(flow(step("a", config=config))) == {
        ("steps[0].config.method", "config"),
        ("steps[0].config.timeoutMs", "config"),
        ("steps[0].config.headers.A", "config"),
    }


def test_templated_config_values_are_checked_at_run_time() -> None:
    config = {
        "method": "{{ variables.method }}",
        "url": "{{ variables.url }}",
        "timeoutMs": "{{ variables.timeout }}",
        "headers": "{{ variables.headers }}",
        "acceptStatus": [200, "{{ variables.extra }}"],
    }
    assert parse(flow(step("a", config=config))).steps[0].config == config


def test_only_the_templated_element_is_spared() -> None:
    config = {"method": "GET", "url": "https://x", "acceptStatus": ["{{ variables.code }}", "nope"]}
    problem = only_problem(flow(step("a", config=config)))
    assert (problem.field, problem.code) == ("steps[0].config.acceptStatus[1]", "config")


def test_templated_values_do_not_excuse_unknown_keys() -> None:
    config = {"method": "GET", "url": "https://x", "bogus": "{{ variables.x }}"}
    assert fields_and_codes(flow(step("a", config=config))) == {("steps[0].config.bogus", "config")}


def test_config_of_an_unknown_type_is_not_checked_against_a_model() -> None:
    raw = flow(step("a", type="nope", config={"anything": 1}))
    assert fields_and_codes(raw) == {("steps[0].type", "unknown_step_type")}


# --- templates and expressions ---------------------------------------------------------------


def test_template_syntax_in_config_and_name() -> None:
    config = {
        "method": "GET",
        "url": "https://x/{{ variables.id ",
        "headers": {"X-Trace": "{% if %}"},
        "json": {"items": ["ok", "{{ }}"]},
    }
    assert fields_and_codes(flow(step("a", name="Call {{ oops", config=config))) == {
        ("steps[0].name", "template_syntax"),
        ("steps[0].config.url", "template_syntax"),
        ("steps[0].config.headers.X-Trace", "template_syntax"),
        ("steps[0].config.json.items[1]", "template_syntax"),
    }


def test_template_syntax_message_is_clear() -> None:
    problem = only_problem(flow(step("a", config={"method": "GET", "url": "{{ x"})))
    assert "syntax error" in problem.message and "line 1" in problem.message


def test_raw_keys_are_not_templates() -> None:
    source = 'def main(context):\n    return f"{{{{literal}}}} {{% not a tag"\n'
    assert parse(flow(step("a", type="code", config={"source": source}))).steps[0].config["source"] == source


def test_expression_syntax_in_execute_if() -> None:
    problem = only_problem(flow(step("a", executeIf="steps['x'].output.status ==")))
    assert (problem.field, problem.code) == ("steps[0].executeIf", "expression_syntax")


def test_execute_if_with_braces_gets_a_hint() -> None:
    problem = only_problem(flow(step("a", executeIf="{{ variables.go }}")))
    assert problem.code == "expression_syntax" and "without {{ }}" in problem.message


def test_expression_syntax_in_transform_and_conditional() -> None:
    raw = flow(
        step("t", type="data_transform", config={"expression": "variables.a +"}),
        step("c", type="conditional", config={"condition": "a and"}),
        step("ok", type="conditional", config={"condition": "variables.a > 1"}),
    )
    assert fields_and_codes(raw) == {
        ("steps[0].config.expression", "expression_syntax"),
        ("steps[1].config.condition", "expression_syntax"),
    }


def test_transform_template_is_checked_as_a_template() -> None:
    raw = flow(step("t", type="data_transform", config={"template": {"a": ["{{ broken"]}}))
    assert fields_and_codes(raw) == {("steps[0].config.template.a[0]", "template_syntax")}


# --- dependencies ----------------------------------------------------------------------------


def test_duplicate_ids() -> None:
    problem = only_problem(flow(step("a"), step("b"), step("a")))
    assert (problem.field, problem.code) == ("steps[2].id", "duplicate_id")
    assert "steps[0]" in problem.message


def test_unknown_dependency_suggests_a_close_name() -> None:
    problem = only_problem(flow(step("create-issue"), step("b", dependsOn=["create-isue"])))
    assert (problem.field, problem.code) == ("steps[1].dependsOn[0]", "unknown_dependency")
    assert "did you mean 'create-issue'" in problem.message


def test_self_dependency() -> None:
    problem = only_problem(flow(step("a"), step("b", dependsOn=["a", "b"])))
    assert (problem.field, problem.code) == ("steps[1].dependsOn[1]", "self_dependency")


def test_cycle_reports_its_path() -> None:
    problem = only_problem(flow(step("a", dependsOn=["b"]), step("b", dependsOn=["a"])))
    assert (problem.field, problem.code) == ("steps[0].dependsOn", "cycle")
    assert problem.message == "dependency cycle: a -> b -> a"


def test_cycle_through_an_implicit_dependency() -> None:
    problem = only_problem(flow(step("a", dependsOn=["c"]), step("b"), step("c")))
    assert problem.code == "cycle"
    assert problem.field == "steps[0].dependsOn"
    assert problem.message == "dependency cycle: a -> c -> b -> a"


def test_three_step_cycle_beside_a_valid_branch() -> None:
    raw = flow(
        step("root", dependsOn=[]),
        step("x", dependsOn=["z"]),
        step("y", dependsOn=["x"]),
        step("z", dependsOn=["y", "root"]),
    )
    problem = only_problem(raw)
    assert problem.code == "cycle"
    assert problem.message == "dependency cycle: x -> z -> y -> x"


def test_all_problems_are_reported_together() -> None:
    raw = flow(
        step("a", type="telepathy", config={}),
        step("b", retry={"maxAttempts": 0}, dependsOn=["a", "ghost"]),
        step("a"),
        step("c", dependsOn=["b"], executeIf="x ==", config={"method": "GET", "url": "{{ x"}),
        description=5,
    )
    assert fields_and_codes(raw) == {
        ("description", "type"),
        ("steps[1].retry.maxAttempts", "retry"),
        ("steps[0].type", "unknown_step_type"),
        ("steps[3].executeIf", "expression_syntax"),
        ("steps[3].config.url", "template_syntax"),
        ("steps[2].id", "duplicate_id"),
    }


def test_an_invalid_step_still_counts_as_a_known_dependency() -> None:
    raw = flow(step("a", critical="maybe"), step("b", dependsOn=["a"]))
    assert fields_and_codes(raw) == {("steps[0].critical", "type")}


def test_error_body_lists_every_detail() -> None:
    with pytest.raises(ValidationFailed) as info:
        parse(flow(step("a", type="nope", config={}), step("b", dependsOn=["zzz"])))
    body = info.value.as_body()["error"]
    assert info.value.status == 422
    assert body["code"] == "validation_failed"
    assert [d["code"] for d in body["details"]] == ["unknown_step_type", "unknown_dependency"]


def test_resolved_dependencies() -> None:
    defn = parse(flow(step("a"), step("b"), step("c", dependsOn=[]), step("d", dependsOn=["a", "c", "a"])))
    assert resolved_dependencies(defn) == {"a": (), "b": ("a",), "c": (), "d": ("a", "c")}


def test_topological_order_keeps_definition_order_for_ties() -> None:
    defn = parse(
        flow(
            step("d", dependsOn=["b", "c"]),
            step("b", dependsOn=["a"]),
            step("c", dependsOn=["a"]),
            step("a", dependsOn=[]),
            step("e", dependsOn=[]),
        )
    )
    assert topological_order(defn) == ["a", "b", "c", "d", "e"]


def test_topological_order_of_a_chain() -> None:
    defn = parse(flow(step("x"), step("y"), step("z")))
    assert topological_order(defn) == ["x", "y", "z"]


def test_topological_order_refuses_an_unchecked_cycle() -> None:
    defn = FlowDefinition.model_validate(flow(step("a", dependsOn=["b"]), step("b", dependsOn=["a"])))
    with pytest.raises(ValidationFailed):
        topological_order(defn)
