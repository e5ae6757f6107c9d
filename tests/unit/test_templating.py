from typing import Any

import pytest

from tolstoy.engine import templating
from tolstoy.engine.templating import (
    check_expression,
    check_template,
    evaluate,
    find_template_errors,
    has_template,
    render,
)
from tolstoy.errors import StepError

SCOPE: dict[str, Any] = {
    "variables": {"repo": "owner/repo", "count": 3, "tags": ["a", "b"], "obj": {"a": 1, "items": [1, 2]}},
    "steps": {
        "create-issue": {
            "status": "completed",
            "output": {"status": 201, "json": {"number": 42, "labels": ["bug"]}, "text": "{}"},
        }
    },
    "secrets": {"github_token": "s3cr3t-value"},
    "meta": {"executionId": "exec_1"},
}


def render_error(value: Any) -> StepError:
    with pytest.raises(StepError) as info:
        render(value, SCOPE)
    return info.value


def evaluate_error(expression: str) -> StepError:
    with pytest.raises(StepError) as info:
        evaluate(expression, SCOPE)
    return info.value


def test_plain_strings_and_non_strings_pass_through() -> None:
    assert render("no templates here", SCOPE) == "no templates here"
    assert render(5, SCOPE) == 5
    assert render(None, SCOPE) is None
    assert render(True, SCOPE) is True


def test_plain_strings_never_reach_jinja(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(source: str) -> None:
        raise AssertionError("compiled a plain string")

    monkeypatch.setattr(templating, "_template", boom)
    monkeypatch.setattr(templating, "_expression", boom)
    config = {"url": "https://example.com/a?b=c", "n": [1, "x", {"k": "v"}]}
    assert render(config, SCOPE) == config


def test_single_expression_returns_native_values() -> None:
    assert render("{{ variables.count }}", SCOPE) == 3
    assert render("{{ variables.tags }}", SCOPE) == ["a", "b"]
    assert render("  {{ variables.obj }}\n", SCOPE) == {"a": 1, "items": [1, 2]}
    assert render("{{ variables.count > 2 }}", SCOPE) is True
    assert render("{{ none }}", SCOPE) is None


def test_mixed_strings_render_to_str() -> None:
    assert render("count={{ variables.count }}", SCOPE) == "count=3"
    assert render("{{ variables.count }}{{ variables.count }}", SCOPE) == "33"
    assert render("{% if variables.count %}yes{% endif %}", SCOPE) == "yes"


def test_non_string_values_inside_a_string_appear_as_json() -> None:
    rendered = render("o={{ variables.obj }} b={{ true }} n={{ none }} f={{ 1.5 }}", SCOPE)
    assert rendered == 'o={"a":1,"items":[1,2]} b=true n=null f=1.5'


def test_trailing_newline_is_kept() -> None:
    assert render("Repo {{ variables.repo }}\n", SCOPE) == "Repo owner/repo\n"


def test_nested_structures_are_rendered_and_keys_are_not() -> None:
    config = {
        "url": "https://api.github.com/repos/{{ variables.repo }}/issues",
        "headers": {"Authorization": "Bearer {{ secrets.github_token }}"},
        "json": {"n": "{{ steps['create-issue'].output.json.number }}", "list": ["{{ variables.count }}", 1]},
        "{{ key }}": "kept",
    }
    assert render(config, SCOPE) == {
        "url": "https://api.github.com/repos/owner/repo/issues",
        "headers": {"Authorization": "Bearer s3cr3t-value"},
        "json": {"n": 42, "list": [3, 1]},
        "{{ key }}": "kept",
    }


def test_render_does_not_mutate_its_input() -> None:
    config = {"a": ["{{ variables.count }}"]}
    render(config, SCOPE)
    assert config == {"a": ["{{ variables.count }}"]}


def test_attribute_access_on_dicts() -> None:
    assert render("{{ steps['create-issue'].output.json.number }}", SCOPE) == 42
    assert render("{{ steps['create-issue'].output.json.labels[0] }}", SCOPE) == "bug"


def test_dict_keys_win_over_dict_methods() -> None:
    assert render("{{ variables.obj.items }}", SCOPE) == [1, 2]
    assert render("{% for k, v in variables.obj | items %}{{ k }}{% endfor %}", SCOPE) == "aitems"
    assert (
        render("{% for k, v in steps['create-issue'].items() %}{{ k }}{% endfor %}", SCOPE) == "statusoutput"
    )


def test_undefined_variable_is_an_error_naming_it() -> None:
    error = render_error("Hello {{ variables.nope }}")
    assert error.category == "validation"
    assert error.error_code == "template_error"
    assert error.retryable is False
    assert "no key 'nope'" in error.message
    assert "{{ variables.nope }}" in error.message


def test_undefined_top_level_name() -> None:
    assert "'nothing' is undefined" in render_error("{{ nothing }}").message


def test_missing_output_key_is_an_error_not_an_empty_string() -> None:
    error = render_error("x{{ steps['create-issue'].output.missing }}")
    assert "no key 'missing'" in error.message
    assert "available: json, status, text" in error.message


def test_missing_key_as_native_value_is_an_error() -> None:
    assert "no key 'missing'" in render_error("{{ steps['create-issue'].output.missing }}").message


def test_missing_step_is_an_error() -> None:
    assert "no key 'other'" in render_error("{{ steps.other.output }}").message


def test_default_filter_rescues_a_missing_key() -> None:
    assert render("{{ steps['create-issue'].output.missing | default('x') }}", SCOPE) == "x"


def test_errors_never_leak_secret_values_or_tracebacks() -> None:
    error = render_error("{{ secrets.github_token + 1 }}")
    assert "s3cr3t-value" not in error.message
    assert "Traceback" not in error.message
    assert error.category == "validation"


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "x {{ variables.__class__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ self.__init__.__globals__ }}",
        "{{ variables.tags.append(1) }}",
        "{{ variables.obj.update({}) }}",
        "{{ ().__class__.__base__.__subclasses__() }}",
    ],
)
def test_sandbox_escapes_are_refused(source: str) -> None:
    error = render_error(source)
    assert error.category == "validation"
    assert error.error_code == "template_error"
    assert "not allowed" in error.message or "unsafe" in error.message


@pytest.mark.parametrize("source", ["{{ 'a' * 100000000 }}", "{{ 10 ** 10000000 }}", "{{ [1] * 10000000 }}"])
def test_huge_results_are_refused(source: str) -> None:
    assert "too large" in render_error(source).message


def test_small_repetition_is_fine() -> None:
    assert render("{{ 'ab' * 3 }}", SCOPE) == "ababab"
    assert render("{{ 2 ** 10 }}", SCOPE) == 1024


def test_runtime_errors_become_step_errors() -> None:
    assert "ZeroDivisionError" in render_error("{{ 1 / 0 }}").message


def test_syntax_error_at_render_time() -> None:
    error = render_error("{{ broken")
    assert error.error_code == "template_error"
    assert "syntax error" in error.message


def test_a_method_is_not_data() -> None:
    assert "function or method" in render_error("{{ variables.repo.upper }}").message
    assert render("{{ variables.repo.upper() }}", SCOPE) == "OWNER/REPO"


def test_tojson_and_fromjson_filters() -> None:
    assert render("{{ variables.obj | tojson }}", SCOPE) == '{"a":1,"items":[1,2]}'
    assert render("{{ '{\"a\": [1, 2]}' | fromjson }}", SCOPE) == {"a": [1, 2]}
    assert "not valid JSON" in render_error("{{ 'nope' | fromjson }}").message
    assert "expects a string" in render_error("{{ 3 | fromjson }}").message
    assert "'zzz' is undefined" in render_error("{{ zzz | tojson }}").message


def test_evaluate_returns_native_values() -> None:
    assert evaluate("steps['create-issue'].output.status == 201", SCOPE) is True
    assert evaluate("steps['create-issue'].output.status == 404", SCOPE) is False
    assert evaluate("variables.tags | length", SCOPE) == 2
    assert evaluate("{'n': variables.count * 2}", SCOPE) == {"n": 6}


def test_evaluate_errors() -> None:
    assert "no key 'nope'" in evaluate_error("steps['create-issue'].output.nope == 1").message
    assert "no key 'nope'" in evaluate_error("steps['create-issue'].output.nope").message
    assert "unsafe" in evaluate_error("variables.__class__").message
    error = evaluate_error("a ==")
    assert error.error_code == "template_error" and "syntax error" in error.message


def test_evaluate_refuses_braces_with_a_hint() -> None:
    assert "without {{ }}" in evaluate_error("{{ variables.count }}").message


def test_compiled_sources_are_cached() -> None:
    templating._expression.cache_clear()
    for _ in range(5):
        evaluate("variables.count + 1", SCOPE)
    info = templating._expression.cache_info()
    assert info.misses == 1 and info.hits == 4


def test_check_template() -> None:
    assert check_template("Hello {{ name }}") is None
    message = check_template("Hello {{ name ")
    assert message is not None and "syntax error" in message and "line 1" in message
    assert check_template("{% if x %}no end") is not None


def test_check_expression() -> None:
    assert check_expression("steps['a'].output.status == 201") is None
    assert check_expression("a ==") is not None
    assert check_expression("") is not None
    message = check_expression("{{ a }}")
    assert message is not None and "without {{ }}" in message


def test_find_template_errors_reports_paths() -> None:
    value = {"url": "{{ ok }}", "headers": {"A": "{{ bad "}, "list": ["x", "{% endif %}"], "n": 1}
    found = find_template_errors(value)
    assert [path for path, _ in found] == ["headers.A", "list[1]"]
    assert all("syntax error" in message for _, message in found)
    assert find_template_errors("{{ x", "steps[0].name") == [
        ("steps[0].name", find_template_errors("{{ x")[0][1])
    ]
    assert find_template_errors({"a": "{{ fine }}"}) == []


def test_has_template() -> None:
    assert has_template({"a": [1, {"b": "x {{ y }}"}]})
    assert has_template("{% if a %}{% endif %}")
    assert not has_template({"a": [1, {"b": "plain"}], "{{ key }}": 1})
