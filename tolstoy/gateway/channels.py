"""Channels and filters (PROTOCOL.md §2): parsing, authorization, and which events they carry.

Every channel is implicitly scoped to the subscriber's organization: the
gateway routes only that organization's bus channel to it and every replay
query carries its ``org_id``. The Ably-style alias ``flows.{orgId}.{executionId}``
names the organization explicitly and is refused unless it is the caller's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from tolstoy.events.types import Event
from tolstoy.gateway.auth import Viewer
from tolstoy.gateway.protocol import ErrorCode, ProtocolError

MAX_FILTER_VALUES = 100
_ID = re.compile(r"^[A-Za-z0-9_\-:]{1,100}$")
_ORG_LEVEL_PREFIXES = ("alert.", "webhook.")


class ChannelKind(StrEnum):
    EXECUTIONS = "executions"
    EXECUTION = "execution"
    WORKFLOW = "workflow"
    APPROVALS = "approvals"
    ALERTS = "alerts"


@dataclass(frozen=True, slots=True)
class Channel:
    """A parsed channel; ``name`` is what the client wrote and what every delivery carries."""

    name: str
    kind: ChannelKind
    key: str | None = None
    """The execution id (``execution``) or flow id (``workflow``)."""

    @property
    def canonical(self) -> str:
        if self.kind is ChannelKind.EXECUTION:
            return f"executions:{self.key}"
        if self.kind is ChannelKind.WORKFLOW:
            return f"workflows:{self.key}"
        return self.kind.value

    @property
    def is_execution(self) -> bool:
        return self.kind is ChannelKind.EXECUTION

    @property
    def complete(self) -> bool:
        """Whether it carries every event of each execution it shows, so that a ``seq`` skip is a loss.

        ``approvals`` and ``alerts`` show a few event types only: there, ``seq``
        skips ahead by design and must never be "filled" with the events between.
        """
        return self.kind in _COMPLETE_KINDS

    def carries(self, event: Event) -> bool:
        """Whether an event of the subscriber's organization belongs on this channel.

        The Python form of the channel's selection; ``history._channel_conditions``
        is its SQL form. Use it through ``selects`` (or ``Topic.receive``).
        """
        org_level = event.type.startswith(_ORG_LEVEL_PREFIXES)
        if self.kind is ChannelKind.EXECUTIONS:
            return not org_level
        if self.kind is ChannelKind.EXECUTION:
            return event.execution_id == self.key and not org_level
        if self.kind is ChannelKind.WORKFLOW:
            return event.flow_id == self.key and not org_level
        if self.kind is ChannelKind.APPROVALS:
            return event.type.startswith("approval.")
        return event.type.startswith("alert.")


_COMPLETE_KINDS = frozenset({ChannelKind.EXECUTIONS, ChannelKind.EXECUTION, ChannelKind.WORKFLOW})


def parse_channel(name: Any, viewer: Viewer) -> Channel:
    """Parse and authorize ``name`` for ``viewer``; raises ``ProtocolError`` (bad_request / forbidden)."""
    if not isinstance(name, str) or not name:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "'channel' must be a non-empty string")
    channel = _parse(name, viewer.org_id)
    if not viewer.may_subscribe({name, channel.canonical}):
        raise ProtocolError(ErrorCode.FORBIDDEN, f"this token does not allow channel {name!r}")
    return channel


def _parse(name: str, org_id: str) -> Channel:
    simple = {
        "executions": ChannelKind.EXECUTIONS,
        "approvals": ChannelKind.APPROVALS,
        "alerts": ChannelKind.ALERTS,
    }
    if name in simple:
        return Channel(name, simple[name])
    head, sep, key = name.partition(":")
    if sep and head in ("executions", "workflows"):
        kind = ChannelKind.EXECUTION if head == "executions" else ChannelKind.WORKFLOW
        return Channel(name, kind, _id(key, name))
    if name.startswith("flows."):
        org, dot, execution_id = name[len("flows.") :].partition(".")
        if not dot:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, f"expected 'flows.{{orgId}}.{{executionId}}', got {name!r}"
            )
        if org != org_id:
            raise ProtocolError(ErrorCode.FORBIDDEN, "channel names another organization")
        return Channel(name, ChannelKind.EXECUTION, _id(execution_id, name))
    raise ProtocolError(
        ErrorCode.BAD_REQUEST,
        f"unknown channel {name!r}; expected executions, executions:{{id}}, workflows:{{flowId}}, "
        "approvals, alerts or flows.{orgId}.{executionId}",
    )


def _id(value: str, name: str) -> str:
    if not _ID.match(value):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"channel {name!r} does not name a valid id")
    return value


@dataclass(frozen=True, slots=True)
class Filters:
    """Optional filters, combined with AND; ``types`` match exactly or by a prefix ending in ``.``."""

    flow_ids: frozenset[str] = frozenset()
    execution_ids: frozenset[str] = frozenset()
    statuses: frozenset[str] = frozenset()
    exact_types: frozenset[str] = frozenset()
    type_prefixes: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (
            self.flow_ids or self.execution_ids or self.statuses or self.exact_types or self.type_prefixes
        )

    @property
    def types(self) -> list[str]:
        return sorted(self.exact_types) + list(self.type_prefixes)

    def matches(self, event: Event) -> bool:
        if self.flow_ids and event.flow_id not in self.flow_ids:
            return False
        if self.execution_ids and event.execution_id not in self.execution_ids:
            return False
        if self.statuses and event.status not in self.statuses:
            return False
        if self.exact_types or self.type_prefixes:
            return event.type in self.exact_types or event.type.startswith(self.type_prefixes)
        return True


NO_FILTERS = Filters()


def selects(channel: Channel, filters: Filters, event: Event) -> bool:
    """Whether a subscription to ``channel`` with ``filters`` delivers ``event``.

    The one test every delivered event passes, live, backfilled or replayed
    (``Topic.receive`` applies its two halves around its ``seq`` tracking).
    """
    return channel.carries(event) and (filters.empty or filters.matches(event))


def parse_filters(value: Any) -> Filters:
    """Parse ``data.filters``; raises ``ProtocolError`` (bad_request) naming the offending field."""
    if value is None:
        return NO_FILTERS
    if not isinstance(value, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"'filters' must be an object, got {type(value).__name__}")
    known = {"flowIds", "executionIds", "statuses", "types"}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            f"unknown filter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}",
        )
    types = _strings(value, "types")
    return Filters(
        flow_ids=frozenset(_strings(value, "flowIds")),
        execution_ids=frozenset(_strings(value, "executionIds")),
        statuses=frozenset(_strings(value, "statuses")),
        exact_types=frozenset(t for t in types if not t.endswith(".")),
        type_prefixes=tuple(sorted({t for t in types if t.endswith(".")})),
    )


def _strings(value: dict[str, Any], field: str) -> list[str]:
    items = value.get(field)
    if items is None:
        return []
    if isinstance(items, str):
        items = [items]
    ok = isinstance(items, list) and len(items) <= MAX_FILTER_VALUES
    if not ok or not all(isinstance(i, str) and 0 < len(i) <= 100 for i in items):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            f"filter {field!r} must be a list of at most {MAX_FILTER_VALUES} non-empty strings",
        )
    return list(items)


def validate_pattern(pattern: str, org_id: str) -> None:
    """A channel pattern for a subscribe token: a channel, or an fnmatch pattern (``executions:*``).

    Raises ``ProtocolError`` for a pattern that is malformed or names another organization.
    """
    if not pattern or len(pattern) > 200 or any(c.isspace() for c in pattern):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "a channel pattern is 1 to 200 characters without spaces")
    if pattern.startswith("flows.") and not pattern.startswith(f"flows.{org_id}."):
        raise ProtocolError(ErrorCode.FORBIDDEN, "channel pattern names another organization")
    if not any(c in pattern for c in "*?["):
        _parse(pattern, org_id)
