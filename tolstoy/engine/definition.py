"""Flow definitions: the wire model, parsing from YAML or JSON, and every static check.

``parse_definition`` reports all the problems it finds in one ``ValidationFailed``,
each a ``FieldError`` whose ``field`` is a wire path such as ``steps[2].config.url``.
"""

from __future__ import annotations

import difflib
import heapq
import importlib
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, cast

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from pydantic.alias_generators import to_camel
from pydantic_core import ErrorDetails
from yaml.composer import ComposerError

from tolstoy import jsonutil
from tolstoy.engine import templating
from tolstoy.engine.retry import RetryPolicy
from tolstoy.engine.steps.base import StepType
from tolstoy.errors import BadRequest, FieldError, TooLarge, ValidationFailed

MAX_DEFINITION_BYTES = 1_048_576
MAX_STEPS = 500

StepTypes = Mapping[str, type[StepType]]

_EXPRESSION_KEYS: dict[str, tuple[str, ...]] = {
    "data_transform": ("expression",),
    "conditional": ("condition",),
}
_CODES = {"missing": "missing", "extra_forbidden": "unknown_field", "string_pattern_mismatch": "pattern"}
_RANGE_ERRORS = frozenset(
    {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "too_short", "too_long"}
    | {"string_too_short", "string_too_long"}
)


class _Wire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


StepId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class FlowSettings(_Wire):
    concurrency: int | None = Field(default=None, ge=1)
    timeout_ms: int | None = Field(default=None, gt=0)
    retry: RetryPolicy | None = None


class StepDefinition(_Wire):
    id: StepId
    type: str = Field(min_length=1)
    name: str | None = None
    depends_on: list[str] | None = None
    """None: the previous step in the list; ``[]``: no dependency."""
    execute_if: str | None = None
    critical: bool = True
    timeout_ms: int | None = Field(default=None, gt=0)
    retry: RetryPolicy | None = None
    config: dict[str, Any]


Indexed = Sequence[tuple[int, StepDefinition]]


class FlowDefinition(_Wire):
    name: str = Field(min_length=1, max_length=200)
    description: str | None = None
    settings: FlowSettings | None = None
    variables: dict[str, Any] | None = None
    steps: list[StepDefinition] = Field(min_length=1, max_length=MAX_STEPS)


def parse_definition(
    raw: str | bytes | Mapping[str, Any],
    *,
    content_type: str | None = None,
    step_types: StepTypes | None = None,
    max_bytes: int = MAX_DEFINITION_BYTES,
) -> FlowDefinition:
    """Parse and check a definition; raise BadRequest, TooLarge or ValidationFailed (every problem)."""
    data = _load(raw, content_type, max_bytes)
    types = _default_step_types() if step_types is None else step_types
    definition, errors = _validate(data, types)
    if errors or definition is None:
        raise ValidationFailed("flow definition is invalid", details=errors)
    return definition


def resolved_dependencies(definition: FlowDefinition) -> dict[str, tuple[str, ...]]:
    """Step id -> the ids it waits for, with the implicit "previous step" made explicit."""
    return _dependencies(list(enumerate(definition.steps)))


def topological_order(definition: FlowDefinition) -> list[str]:
    """Step ids, each after its dependencies; ties keep the definition's order."""
    deps = resolved_dependencies(definition)
    position = {step_id: i for i, step_id in enumerate(deps)}
    waiting = {step_id: {d for d in ds if d in deps} for step_id, ds in deps.items()}
    dependents: dict[str, list[str]] = {step_id: [] for step_id in deps}
    for step_id, ds in waiting.items():
        for dep in ds:
            dependents[dep].append(step_id)
    ready = [position[s] for s, ds in waiting.items() if not ds]
    order: list[str] = []
    while ready:
        step_id = definition.steps[heapq.heappop(ready)].id
        order.append(step_id)
        for dependent in dependents[step_id]:
            waiting[dependent].discard(step_id)
            if not waiting[dependent]:
                heapq.heappush(ready, position[dependent])
    if len(order) < len(deps):
        raise ValidationFailed("flow definition has a dependency cycle")
    return order


class _Loader(yaml.SafeLoader):
    """``safe_load`` minus aliases (no billion laughs) and timestamps (they stay strings, as in JSON)."""

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            raise ComposerError(None, None, "YAML aliases (*name) are not supported", mark)
        return super().compose_node(parent, index)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _load(raw: str | bytes | Mapping[str, Any], content_type: str | None, max_bytes: int) -> Any:
    if isinstance(raw, Mapping):
        _check_size(len(_to_json(dict(raw))), max_bytes)
        return dict(raw)
    _check_size(len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "surrogatepass")), max_bytes)
    text = _decode(raw).lstrip("\ufeff")
    kind = (content_type or "").lower()
    if "json" in kind:
        return _load_json(text)
    if "yaml" not in kind and text.lstrip()[:1] in ("{", "["):
        try:
            return jsonutil.loads(text)
        except orjson.JSONDecodeError:
            pass  # JSON-looking YAML such as ``{name: x}``
    data = _load_yaml(text)
    _to_json(data)
    return data


def _check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise TooLarge(f"flow definition is {size} bytes; the limit is {max_bytes}")


def _decode(raw: str | bytes) -> str:
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"flow definition is not UTF-8 (byte {exc.start})") from None


def _to_json(data: Any) -> bytes:
    try:
        return jsonutil.dumpb(data)
    except TypeError as exc:
        raise BadRequest(f"flow definition holds a value JSON cannot represent: {exc}") from None


def _load_json(text: str) -> Any:
    try:
        return jsonutil.loads(text)
    except orjson.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise BadRequest(f"flow definition is not valid JSON: {exc.msg} ({where})") from None


def _load_yaml(text: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise BadRequest(f"flow definition is not valid YAML: {exc.problem or exc.context}{where}") from None
    except yaml.YAMLError as exc:
        raise BadRequest(f"flow definition is not valid YAML: {exc}") from None


def _default_step_types() -> StepTypes:
    # Imported late: the registry imports every step type, and they may import this module.
    registry = importlib.import_module("tolstoy.engine.steps.registry")
    return cast(StepTypes, registry.STEP_TYPES)


def _validate(data: Any, types: StepTypes) -> tuple[FlowDefinition | None, list[FieldError]]:
    if not isinstance(data, dict):
        return None, [FieldError("", f"a flow definition must be a mapping, got {_kind(data)}", "type")]
    try:
        definition = FlowDefinition.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        steps, other_ids = _salvage_steps(data.get("steps"), errors)
        return None, _pydantic_errors(errors, "") + _step_checks(steps, types, other_ids)
    return definition, _step_checks(list(enumerate(definition.steps)), types, set())


def _salvage_steps(raw_steps: Any, errors: list[ErrorDetails]) -> tuple[Indexed, set[str]]:
    """The steps that are valid on their own, and the ids of the others (so they count as known)."""
    if not isinstance(raw_steps, list):
        return [], set()
    bad = {e["loc"][1] for e in errors if len(e["loc"]) > 1 and e["loc"][0] == "steps"}
    good: list[tuple[int, StepDefinition]] = []
    other_ids: set[str] = set()
    for i, raw in enumerate(raw_steps):
        if i not in bad:
            good.append((i, StepDefinition.model_validate(raw)))
        elif isinstance(raw, dict) and isinstance(raw.get("id"), str):
            other_ids.add(raw["id"])
    return good, other_ids


def _step_checks(steps: Indexed, types: StepTypes, other_ids: set[str]) -> list[FieldError]:
    errors = [error for i, step in steps for error in _step_errors(i, step, types)]
    return errors + _graph_errors(steps, other_ids)


def _step_errors(i: int, step: StepDefinition, types: StepTypes) -> list[FieldError]:
    prefix = f"steps[{i}]"
    errors: list[FieldError] = []
    step_type = types.get(step.type)
    if step_type is None:
        known = ", ".join(sorted(types))
        message = f"unknown step type {step.type!r}; known types: {known}"
        errors.append(FieldError(f"{prefix}.type", message, "unknown_step_type"))
    for path, message in templating.find_template_errors(step.name or "", f"{prefix}.name"):
        errors.append(FieldError(path, message, "template_syntax"))
    if step.execute_if is not None:
        errors += _expression_errors(f"{prefix}.executeIf", step.execute_if)
    errors += _config_syntax_errors(prefix, step, step_type)
    if step_type is not None:
        errors += _config_errors(f"{prefix}.config", step.config, step_type)
    return errors


def _expression_errors(field: str, source: str) -> list[FieldError]:
    message = templating.check_expression(source)
    return [] if message is None else [FieldError(field, message, "expression_syntax")]


def _config_syntax_errors(
    prefix: str, step: StepDefinition, step_type: type[StepType] | None
) -> list[FieldError]:
    expression_keys = _EXPRESSION_KEYS.get(step.type, ())
    raw_keys = step_type.raw_keys if step_type is not None else frozenset()
    errors: list[FieldError] = []
    for key, value in step.config.items():
        path = f"{prefix}.config.{key}"
        if key in expression_keys and isinstance(value, str):
            errors += _expression_errors(path, value)
        elif key not in raw_keys and key not in expression_keys:
            found = templating.find_template_errors(value, path)
            errors += [FieldError(where, message, "template_syntax") for where, message in found]
    return errors


def _config_errors(prefix: str, config: dict[str, Any], step_type: type[StepType]) -> list[FieldError]:
    """Unknown and missing keys always; other errors only where the value holds no template."""
    try:
        step_type.config_model.model_validate(config)
    except ValidationError as exc:
        kept = [e for e in exc.errors() if _applies_now(e, config, step_type.raw_keys)]
        return [FieldError(_join(prefix, e["loc"]), _message(e), "config") for e in kept]
    return []


def _applies_now(error: ErrorDetails, config: dict[str, Any], raw_keys: frozenset[str]) -> bool:
    if error["type"] in ("missing", "extra_forbidden"):
        return True
    loc = error["loc"]
    if loc and loc[0] in raw_keys:
        return True
    return not templating.has_template(_value_at(config, loc))


def _value_at(value: Any, loc: tuple[int | str, ...]) -> Any:
    """The deepest value along ``loc`` that exists (pydantic adds union tags that do not)."""
    for part in loc:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
            value = value[part]
        else:
            break
    return value


def _dependencies(steps: Indexed) -> dict[str, tuple[str, ...]]:
    by_index = dict(steps)
    result: dict[str, tuple[str, ...]] = {}
    for i, step in steps:
        if step.depends_on is None:
            previous = by_index.get(i - 1)
            deps: tuple[str, ...] = () if previous is None else (previous.id,)
        else:
            deps = tuple(dict.fromkeys(step.depends_on))
        result.setdefault(step.id, deps)
    return result


def _graph_errors(steps: Indexed, other_ids: set[str]) -> list[FieldError]:
    first: dict[str, int] = {}
    errors: list[FieldError] = []
    for i, step in steps:
        if step.id in first:
            message = f"duplicate step id {step.id!r}, already used by steps[{first[step.id]}]"
            errors.append(FieldError(f"steps[{i}].id", message, "duplicate_id"))
        first.setdefault(step.id, i)
    known = set(first) | other_ids
    for i, step in steps:
        for j, dep in enumerate(step.depends_on or ()):
            errors += _dependency_error(f"steps[{i}].dependsOn[{j}]", step.id, dep, known)
    return errors + _cycle_errors(steps, first)


def _dependency_error(field: str, step_id: str, dep: str, known: set[str]) -> list[FieldError]:
    if dep == step_id:
        return [FieldError(field, f"step {step_id!r} cannot depend on itself", "self_dependency")]
    if dep in known:
        return []
    close = difflib.get_close_matches(dep, sorted(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return [FieldError(field, f"unknown step {dep!r}{hint}", "unknown_dependency")]


def _cycle_errors(steps: Indexed, first: dict[str, int]) -> list[FieldError]:
    explicit = {step.id for _, step in steps if step.depends_on is not None}
    errors: list[FieldError] = []
    for cycle in _find_cycles(_dependencies(steps)):
        # Implicit edges point backwards, so every cycle has an explicit ``dependsOn``.
        start = min((n for n in cycle if n in explicit), key=first.__getitem__, default=cycle[0])
        at = cycle.index(start)
        path = [*cycle[at:], *cycle[:at], start]
        message = "dependency cycle: " + " -> ".join(path)
        errors.append(FieldError(f"steps[{first[start]}].dependsOn", message, "cycle"))
    return errors


def _find_cycles(deps: Mapping[str, tuple[str, ...]]) -> list[list[str]]:
    """One cycle per back edge of an iterative depth-first search; self-edges are ignored."""
    state: dict[str, bool] = {}  # True while on the path, False once finished
    cycles: list[list[str]] = []
    for root in deps:
        if root in state:
            continue
        path, pending = [root], [iter(deps[root])]
        state[root] = True
        while path:
            node = path[-1]
            nxt = next((d for d in pending[-1] if d in deps and d != node), None)
            if nxt is None:
                state[node] = False
                path.pop()
                pending.pop()
            elif state.get(nxt) is True:
                cycles.append(path[path.index(nxt) :])
            elif nxt not in state:
                state[nxt] = True
                path.append(nxt)
                pending.append(iter(deps[nxt]))
    return cycles


def _pydantic_errors(errors: list[ErrorDetails], prefix: str) -> list[FieldError]:
    return [FieldError(_join(prefix, e["loc"]), _message(e), _code(e)) for e in errors]


def _join(prefix: str, loc: tuple[int | str, ...]) -> str:
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else part)
    return path


def _message(error: ErrorDetails) -> str:
    kind = error["type"]
    if kind == "model_type":
        return f"expected a mapping, got {_kind(error.get('input'))}"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "value_error":
        return error["msg"].removeprefix("Value error, ")
    return error["msg"]


def _code(error: ErrorDetails) -> str:
    kind = error["type"]
    if kind in _CODES:
        return _CODES[kind]
    if kind.endswith(("_type", "_parsing")):
        return "type"
    if "retry" in error["loc"]:
        return "retry"
    return "range" if kind in _RANGE_ERRORS else "invalid"


def _kind(value: Any) -> str:
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, int | float) else type(value).__name__)
