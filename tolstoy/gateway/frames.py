"""Encoded server messages, built once and shared by every subscriber that receives them.

A ``Frame`` holds the JSON payload and, built at the same time, the complete
WebSocket text frame (header + payload) that is written unchanged to every
transport: one encode per event per channel, never one per subscriber.
"""

from __future__ import annotations

import struct

from tolstoy.events.types import Event
from tolstoy.gateway.protocol import delivery, json_string
from tolstoy.timeutil import iso

_LEN16 = struct.Struct("!BBH")
_LEN64 = struct.Struct("!BBQ")
PING_FRAME = b"\x89\x00"
"""An unmasked WebSocket ping with no payload (server to client)."""


def ws_text_frame(payload: bytes) -> bytes:
    """The unmasked, unfragmented WebSocket text frame carrying ``payload`` (RFC 6455 §5.2)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return _LEN16.pack(0x81, 126, n) + payload
    return _LEN64.pack(0x81, 127, n) + payload


class Frame:
    """One server message: JSON ``payload``, its WebSocket frame ``ws``, and the event it carries (if any)."""

    __slots__ = ("event", "payload", "size", "skipped", "ws")

    def __init__(self, payload: bytes, event: Event | None = None, skipped: list[int] | None = None) -> None:
        self.payload = payload
        self.ws = ws_text_frame(payload)
        self.size = len(self.ws)
        self.event = event
        self.skipped = skipped
        """``seq`` of earlier events this one replaced under backpressure (see ``conflated_delivery``)."""


class Stamps:
    """ISO timestamps of event times, cached: the events of one commit share one time."""

    __slots__ = ("_iso", "_ms")

    def __init__(self) -> None:
        self._ms, self._iso = -1, ""

    def __call__(self, ms: int) -> str:
        if ms != self._ms:
            self._ms, self._iso = ms, iso(ms) or ""
        return self._iso


stamp = Stamps()
_type_json: dict[str, bytes] = {}


def type_json(event_type: str) -> bytes:
    """The JSON string of an event type (cached: there are few types)."""
    cached = _type_json.get(event_type)
    if cached is None:
        cached = json_string(event_type)
        if len(_type_json) < 1024:
            _type_json[event_type] = cached
    return cached


def event_frame(event: Event, channel_json: bytes) -> Frame:
    """The delivery of ``event`` on the channel whose JSON-encoded name is ``channel_json``."""
    payload = delivery(type_json(event.type), channel_json, stamp(event.ts), event.body.encode())
    return Frame(payload, event)
