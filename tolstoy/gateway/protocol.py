"""The WebSocket protocol's messages (PROTOCOL.md §3): parsing client frames, encoding server ones.

Every message is one JSON object ``{"type", "id"?, "timestamp"?, "data"}``. Client
frames are parsed into a ``ClientMessage`` or rejected with a ``ProtocolError``
carrying the error code and the request ``id`` (when one could be read), so the
connection answers ``error`` and stays open.

Event deliveries are built by splicing the event's committed JSON body into the
envelope, never by re-encoding it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

import orjson

from tolstoy.timeutil import iso, now_ms

MAX_CLIENT_FRAME_BYTES = 64 * 1024
MAX_REQUEST_ID_CHARS = 128


class ErrorCode(StrEnum):
    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    RATE_LIMITED = "rate_limited"
    TOO_LARGE = "too_large"
    UNAVAILABLE = "unavailable"
    """Not in PROTOCOL.md's list: a server-side failure (the store is down); retry later."""


class CloseCode(IntEnum):
    GOING_AWAY = 1001
    MESSAGE_TOO_BIG = 1009
    TRY_AGAIN_LATER = 1013
    """Events of a subscription could not be read from the store: reconnect and resume with ``since``."""
    SLOW_CONSUMER = 4008
    UNAUTHORIZED = 4401
    FORBIDDEN = 4403


class ClientType(StrEnum):
    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"
    PING = "ping"


RequestId = str | int | None


class ProtocolError(Exception):
    """A client frame or request the server refuses; becomes an ``error`` reply."""

    def __init__(self, code: ErrorCode, message: str, request_id: RequestId = None) -> None:
        super().__init__(message)
        self.code, self.message, self.request_id = code, message, request_id


@dataclass(frozen=True, slots=True)
class ClientMessage:
    type: ClientType
    id: RequestId
    data: dict[str, Any]


def parse_client_frame(raw: str | bytes) -> ClientMessage:
    """Parse one client frame; raises ``ProtocolError`` naming what was expected and what arrived."""
    size = len(raw.encode()) if isinstance(raw, str) else len(raw)
    if size > MAX_CLIENT_FRAME_BYTES:
        raise ProtocolError(
            ErrorCode.TOO_LARGE, f"frame of {size} bytes is over the {MAX_CLIENT_FRAME_BYTES}-byte limit"
        )
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "frame is not valid JSON") from None
    if not isinstance(value, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"expected a JSON object, got {type(value).__name__}")
    request_id = _request_id(value.get("id"))
    kind = value.get("type")
    if kind not in ClientType._value2member_map_:
        known = ", ".join(t.value for t in ClientType)
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f"unknown message type {kind!r}; expected one of {known}", request_id
        )
    data = value.get("data", {})
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f"'data' must be an object, got {type(data).__name__}", request_id
        )
    return ClientMessage(ClientType(str(kind)), request_id, data)


def _request_id(value: Any) -> RequestId:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if isinstance(value, str) and len(value) <= MAX_REQUEST_ID_CHARS:
        return value
    raise ProtocolError(
        ErrorCode.BAD_REQUEST,
        f"'id' must be a string of at most {MAX_REQUEST_ID_CHARS} characters or an integer",
    )


def server_message(type_: str, data: dict[str, Any], request_id: RequestId = None) -> bytes:
    """A control message (``subscribed``, ``unsubscribed``, ``pong``, ``error``) as JSON bytes."""
    message: dict[str, Any] = {"type": type_}
    if request_id is not None:
        message["id"] = request_id
    message["timestamp"] = iso(now_ms())
    message["data"] = data
    return orjson.dumps(message)


def error_message(code: ErrorCode, message: str, request_id: RequestId = None) -> bytes:
    return server_message("error", {"code": code.value, "message": message}, request_id)


def delivery(type_json: bytes, channel_json: bytes, timestamp: str, body: bytes) -> bytes:
    """``{"type", "channel", "timestamp", "data"}`` with the committed body spliced in as ``data``.

    ``type_json`` and ``channel_json`` are already encoded JSON strings (see ``json_string``);
    ISO timestamps never need escaping.
    """
    return b"".join(
        (
            b'{"type":',
            type_json,
            b',"channel":',
            channel_json,
            b',"timestamp":"',
            timestamp.encode(),
            b'","data":',
            body,
            b"}",
        )
    )


def json_string(value: str) -> bytes:
    return orjson.dumps(value)


def conflated_delivery(payload: bytes, skipped: list[int]) -> bytes:
    """A delivery that stands for earlier ``log``/``progress`` events dropped under backpressure.

    ``conflated`` lists the ``seq`` of those events so a client can still account
    for every ``seq`` of the execution (they are replayable from the store).
    """
    return payload[:-1] + b',"conflated":' + orjson.dumps(skipped) + b"}"
