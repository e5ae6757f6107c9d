"""WebSocket frames built once: valid RFC 6455 text frames whatever the payload size."""

from __future__ import annotations

import pytest
from websockets.frames import Frame as WsFrame
from websockets.frames import Opcode
from websockets.streams import StreamReader

from tolstoy.events.types import encode_event
from tolstoy.gateway.frames import PING_FRAME, event_frame, ws_text_frame
from tolstoy.gateway.protocol import json_string


def parse(data: bytes) -> WsFrame:
    reader = StreamReader()
    reader.feed_data(data)
    parser = WsFrame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        frame: WsFrame = done.value
        return frame
    raise AssertionError("incomplete frame")


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_000])
def test_text_frames_of_every_length_class_parse_back(size: int) -> None:
    payload = b"x" * size
    frame = parse(ws_text_frame(payload))
    assert frame.opcode is Opcode.TEXT and frame.fin and bytes(frame.data) == payload


def test_the_ping_frame_is_an_empty_ping() -> None:
    frame = parse(PING_FRAME)
    assert frame.opcode is Opcode.PING and bytes(frame.data) == b""


def test_an_event_frame_is_the_delivery_envelope() -> None:
    event = encode_event(
        execution_id="exec_1",
        org_id="org_a",
        flow_id="f",
        seq=3,
        type="log",
        ts=1_700_000_000_123,
        fields={"message": "hi"},
    )
    frame = event_frame(event, json_string("executions:exec_1"))
    assert frame.event is event and frame.size == len(frame.ws)
    assert bytes(parse(frame.ws).data) == frame.payload
    assert frame.payload.startswith(
        b'{"type":"log","channel":"executions:exec_1","timestamp":"2023-11-14T22:13:20.123Z"'
    )
