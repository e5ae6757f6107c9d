"""Sandboxed Jinja2 templates and expressions over a step's scope.

The scope is a mapping with ``variables``, ``steps`` (step id -> ``{"output", "status"}``),
``secrets`` and ``meta``. A string that is exactly one ``{{ expr }}`` renders to the
expression's native value (int, dict, list …); any other template renders to a string,
in which non-string values (dicts, lists, booleans, null) appear as JSON. A missing
name, key or attribute is an error, never a silent empty string. Every failure at
render time is a ``StepError`` of category ``validation``, code ``template_error``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any, NoReturn

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, Undefined
from jinja2.environment import TemplateExpression
from jinja2.exceptions import SecurityError, TemplateError, TemplateRuntimeError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tolstoy import jsonutil
from tolstoy.errors import StepError

_SINGLE_EXPRESSION = re.compile(r"\A\s*\{\{(?P<expr>.*)\}\}\s*\Z", re.DOTALL)
_MAX_SEQUENCE = 1_000_000
_MAX_POWER_BITS = 100_000
_MAX_SOURCE_IN_MESSAGE = 200


class _Undefined(StrictUndefined):
    """Strict, and says which keys a mapping does have when one is missing."""

    __slots__ = ()

    @property
    def _undefined_message(self) -> str:
        obj, name = self._undefined_obj, self._undefined_name
        if self._undefined_hint is None and isinstance(obj, Mapping) and isinstance(name, str):
            keys = sorted(str(k) for k in obj)
            shown = ", ".join(keys[:10]) + (", …" if len(keys) > 10 else "")
            return f"no key {name!r} (available: {shown or 'none'})"
        return super()._undefined_message


class _Environment(ImmutableSandboxedEnvironment):
    """The sandbox, with data keys before dict methods and bounded ``*`` and ``**``."""

    intercepted_binops = frozenset({"*", "**"})

    def getattr(self, obj: Any, attribute: str) -> Any:
        # ``output.json.items`` must be the key "items" when there is one, not dict.items.
        if isinstance(obj, dict) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _check_binop_size(operator, left, right)
        return super().call_binop(context, operator, left, right)


def _check_binop_size(operator: str, left: Any, right: Any) -> None:
    """Refuse ``'x' * 10**9`` and ``10 ** 10**9`` before they eat the worker's memory."""
    if operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0:
        if max(abs(left).bit_length(), 1) * right > _MAX_POWER_BITS:
            raise SecurityError("the result of ** would be too large")
    if operator == "*":
        for seq, count in ((left, right), (right, left)):
            if isinstance(seq, str | list | tuple) and isinstance(count, int):
                if len(seq) * count > _MAX_SEQUENCE:
                    raise SecurityError("the result of * would be too large")


def _finalize(value: Any) -> Any:
    """Inside a larger string, non-string values appear as JSON (``true``, ``{"a": 1}``)."""
    if isinstance(value, str | int | float | Undefined) and not isinstance(value, bool):
        return value
    try:
        return jsonutil.dumps(value)
    except TypeError:
        return value


def _tojson(value: Any) -> str:
    if isinstance(value, Undefined):
        _raise_undefined(value)
    return jsonutil.dumps(value)


def _fromjson(value: Any) -> Any:
    if isinstance(value, Undefined):
        _raise_undefined(value)
    if not isinstance(value, str | bytes):
        raise TemplateRuntimeError(f"fromjson expects a string, got {type(value).__name__}")
    try:
        return jsonutil.loads(value)
    except ValueError:
        raise TemplateRuntimeError("fromjson: the string is not valid JSON") from None


def _raise_undefined(value: Undefined) -> NoReturn:
    str(value)  # a strict undefined raises its own UndefinedError or SecurityError here
    raise TypeError("undefined value")


def _make_environment() -> _Environment:
    env = _Environment(undefined=_Undefined, autoescape=False, keep_trailing_newline=True, finalize=_finalize)
    filters: dict[str, Callable[..., Any]] = {"tojson": _tojson, "fromjson": _fromjson}
    env.filters.update(filters)
    return env


_ENV = _make_environment()


@lru_cache(maxsize=4096)
def _template(source: str) -> Template:
    return _ENV.from_string(source)


@lru_cache(maxsize=4096)
def _expression(source: str) -> TemplateExpression:
    return _ENV.compile_expression(source, undefined_to_none=False)


def _shorten(source: str) -> str:
    if len(source) <= _MAX_SOURCE_IN_MESSAGE:
        return source
    return source[: _MAX_SOURCE_IN_MESSAGE - 1] + "…"


def _describe(exc: Exception) -> str:
    if isinstance(exc, TemplateSyntaxError):
        return f"syntax error: {exc.message} (line {exc.lineno})"
    if isinstance(exc, SecurityError):
        return f"not allowed: {exc.message or exc}"
    if isinstance(exc, TemplateError):
        return exc.message or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"


def _failure(kind: str, source: str, exc: Exception) -> StepError:
    message = f"{kind} {_shorten(source)!r} failed: {_describe(exc)}"
    return StepError(message, category="validation", code="template_error", retryable=False)


def _native(value: Any) -> Any:
    if isinstance(value, Undefined):
        _raise_undefined(value)
    if callable(value):
        raise TemplateRuntimeError("the value is a function or method, not data (a missing '()'?)")
    return value


def _render_string(source: str, scope: Mapping[str, Any]) -> Any:
    if "{{" not in source and "{%" not in source:
        return source
    match = _SINGLE_EXPRESSION.match(source)
    inner = match.group("expr") if match else None
    try:
        if inner is not None and "{{" not in inner and "}}" not in inner:
            try:
                expression = _expression(inner)
            except TemplateSyntaxError:
                return _template(source).render(scope)  # e.g. ``{{- x -}}``: let Jinja decide
            return _native(expression(scope))
        return _template(source).render(scope)
    except Exception as exc:
        raise _failure("template", source, exc) from exc


def render(value: Any, scope: Mapping[str, Any]) -> Any:
    """Render every template string in a JSON structure (dict keys are left alone)."""
    if isinstance(value, str):
        return _render_string(value, scope)
    if isinstance(value, dict):
        return {key: render(item, scope) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [render(item, scope) for item in value]
    return value


def evaluate(expression: str, scope: Mapping[str, Any]) -> Any:
    """The native value of a bare expression such as ``steps['a'].output.status == 201``."""
    try:
        return _native(_expression(_bare(expression))(scope))
    except Exception as exc:
        raise _failure("expression", expression, exc) from exc


def _bare(expression: str) -> str:
    if expression.strip().startswith("{{"):
        raise TemplateSyntaxError("expressions are written bare, without {{ }}", 1)
    return expression


def check_template(source: str) -> str | None:
    """None when ``source`` is a valid template, else what is wrong with it."""
    try:
        _template(source)
    except TemplateSyntaxError as exc:
        return _describe(exc)
    return None


def check_expression(source: str) -> str | None:
    """None when ``source`` is a valid bare expression, else what is wrong with it."""
    try:
        _expression(_bare(source))
    except TemplateSyntaxError as exc:
        return _describe(exc)
    return None


def has_template(value: Any) -> bool:
    """Whether any string in a JSON structure holds ``{{`` or ``{%``."""
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, dict):
        return any(has_template(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(has_template(item) for item in value)
    return False


def find_template_errors(value: Any, path: str = "") -> list[tuple[str, str]]:
    """``(path, message)`` for every string with a template syntax error, e.g. ``("headers.A", …)``."""
    if isinstance(value, str):
        if "{{" not in value and "{%" not in value:
            return []
        message = check_template(value)
        return [] if message is None else [(path, message)]
    if isinstance(value, dict):
        found: list[tuple[str, str]] = []
        for key, item in value.items():
            found += find_template_errors(item, f"{path}.{key}" if path else str(key))
        return found
    if isinstance(value, list | tuple):
        return [err for i, item in enumerate(value) for err in find_template_errors(item, f"{path}[{i}]")]
    return []
