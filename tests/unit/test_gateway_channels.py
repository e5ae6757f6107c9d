"""Channel names, their authorization, and filters (PROTOCOL.md §2)."""

from __future__ import annotations

import pytest

from tolstoy.events.types import encode_event
from tolstoy.gateway.auth import Viewer
from tolstoy.gateway.channels import ChannelKind, parse_channel, parse_filters, validate_pattern
from tolstoy.gateway.protocol import ErrorCode, ProtocolError

KEY = Viewer("org_a", None, "key_1")


def event(type_: str = "step.completed", **fields: object) -> object:
    return encode_event(
        execution_id=str(fields.pop("execution", "exec_1")),
        org_id="org_a",
        flow_id=str(fields.pop("flow", "flow_1")),
        seq=1,
        type=type_,
        ts=0,
        fields=fields,
    )


@pytest.mark.parametrize(
    ("name", "kind", "key"),
    [
        ("executions", ChannelKind.EXECUTIONS, None),
        ("executions:exec_1_ab", ChannelKind.EXECUTION, "exec_1_ab"),
        ("workflows:flow_x", ChannelKind.WORKFLOW, "flow_x"),
        ("approvals", ChannelKind.APPROVALS, None),
        ("alerts", ChannelKind.ALERTS, None),
        ("flows.org_a.exec_9", ChannelKind.EXECUTION, "exec_9"),
    ],
)
def test_every_channel_of_the_protocol_parses(name: str, kind: ChannelKind, key: str | None) -> None:
    channel = parse_channel(name, KEY)
    assert (channel.name, channel.kind, channel.key) == (name, kind, key)


def test_the_alias_is_refused_for_another_organization() -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_channel("flows.org_b.exec_9", KEY)
    assert caught.value.code is ErrorCode.FORBIDDEN


@pytest.mark.parametrize(
    "name", ["", "exec", "executions:", "executions:a b", "workflows:x/y", "flows.org_a", 5]
)
def test_unknown_or_malformed_channels_are_bad_requests(name: object) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_channel(name, KEY)
    assert caught.value.code is ErrorCode.BAD_REQUEST


def test_token_patterns_allow_only_matching_channels_and_aliases_match_canonically() -> None:
    token = Viewer("org_a", ("executions:exec_1*",), "key_1")
    assert parse_channel("executions:exec_12", token).key == "exec_12"
    assert parse_channel("flows.org_a.exec_12", token).key == "exec_12"
    for name in ("executions", "executions:exec_2", "workflows:exec_1"):
        with pytest.raises(ProtocolError) as caught:
            parse_channel(name, token)
        assert caught.value.code is ErrorCode.FORBIDDEN


def test_channels_carry_only_their_events() -> None:
    step, approval = event(), event("approval.required", approvalId="apr_1")
    assert parse_channel("executions", KEY).carries(step)
    assert parse_channel("approvals", KEY).carries(approval)
    assert not parse_channel("approvals", KEY).carries(step)
    assert parse_channel("workflows:flow_1", KEY).carries(step)
    assert not parse_channel("workflows:flow_2", KEY).carries(step)
    assert not parse_channel("alerts", KEY).carries(step)


def test_filters_combine_with_and_and_types_match_by_prefix() -> None:
    filters = parse_filters({"flowIds": ["flow_1"], "types": ["step.", "log"], "statuses": ["failed"]})
    assert filters.matches(event("step.failed", status="failed"))
    assert not filters.matches(event("step.failed", status="failed", flow="flow_2"))
    assert not filters.matches(event("step.completed", status="completed"))
    assert not filters.matches(event("execution.failed", status="failed"))
    assert parse_filters({"executionIds": "exec_1"}).matches(event())
    assert parse_filters(None).empty


@pytest.mark.parametrize(
    "value", [[1], {"colour": ["x"]}, {"types": [1]}, {"flowIds": ["x"] * 101}, {"types": ""}]
)
def test_malformed_filters_are_bad_requests(value: object) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_filters(value)
    assert caught.value.code is ErrorCode.BAD_REQUEST


def test_token_patterns_are_validated() -> None:
    for pattern in ("executions:*", "executions", "workflows:flow_1", "flows.org_a.*", "*"):
        validate_pattern(pattern, "org_a")
    with pytest.raises(ProtocolError) as caught:
        validate_pattern("flows.org_b.*", "org_a")
    assert caught.value.code is ErrorCode.FORBIDDEN
    for bad in ("", "nope", "executions: x"):
        with pytest.raises(ProtocolError):
            validate_pattern(bad, "org_a")
