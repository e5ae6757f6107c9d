"""Client frame parsing and server message encoding (PROTOCOL.md §3)."""

from __future__ import annotations

import orjson
import pytest

from tolstoy.gateway.protocol import (
    MAX_CLIENT_FRAME_BYTES,
    ClientType,
    ErrorCode,
    ProtocolError,
    conflated_delivery,
    delivery,
    error_message,
    json_string,
    parse_client_frame,
    server_message,
)


def test_a_subscribe_frame_parses_with_its_id_and_data() -> None:
    message = parse_client_frame('{"type":"subscribe","id":"a1","data":{"channel":"executions"}}')
    assert (message.type, message.id, message.data) == (ClientType.SUBSCRIBE, "a1", {"channel": "executions"})


def test_ping_without_data_or_id_parses() -> None:
    message = parse_client_frame(b'{"type":"ping"}')
    assert (message.type, message.id, message.data) == (ClientType.PING, None, {})


@pytest.mark.parametrize(
    ("raw", "code", "words"),
    [
        ("not json", ErrorCode.BAD_REQUEST, "not valid JSON"),
        ("[1,2]", ErrorCode.BAD_REQUEST, "expected a JSON object, got list"),
        ('{"type":"publish"}', ErrorCode.BAD_REQUEST, "unknown message type 'publish'"),
        ('{"type":"subscribe","data":[1]}', ErrorCode.BAD_REQUEST, "'data' must be an object"),
        ('{"type":"ping","id":{"x":1}}', ErrorCode.BAD_REQUEST, "'id' must be"),
        ('{"type":"ping","id":true}', ErrorCode.BAD_REQUEST, "'id' must be"),
    ],
)
def test_malformed_frames_are_refused_with_a_code_and_a_clear_message(
    raw: str, code: ErrorCode, words: str
) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_client_frame(raw)
    assert caught.value.code is code
    assert words in caught.value.message


def test_the_request_id_survives_a_refused_type_so_the_error_can_name_it() -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_client_frame('{"type":"nope","id":7}')
    assert caught.value.request_id == 7


def test_frames_over_64_kib_are_too_large() -> None:
    raw = '{"type":"ping","data":{"pad":"' + "x" * MAX_CLIENT_FRAME_BYTES + '"}}'
    with pytest.raises(ProtocolError) as caught:
        parse_client_frame(raw)
    assert caught.value.code is ErrorCode.TOO_LARGE


def test_server_messages_carry_type_id_timestamp_and_data() -> None:
    message = orjson.loads(server_message("pong", {}, "r9"))
    assert message["type"] == "pong" and message["id"] == "r9" and message["data"] == {}
    assert message["timestamp"].endswith("Z")
    error = orjson.loads(error_message(ErrorCode.NOT_FOUND, "no such thing", 3))
    assert error["type"] == "error" and error["id"] == 3
    assert error["data"] == {"code": "not_found", "message": "no such thing"}


def test_a_delivery_splices_the_committed_body_unchanged() -> None:
    body = b'{"id":"exec_1:2","seq":2,"message":"caf\\u00e9 \\"quoted\\""}'
    payload = delivery(json_string("log"), json_string('workflows:f"1'), "2025-01-01T00:00:00.000Z", body)
    message = orjson.loads(payload)
    assert message == {
        "type": "log",
        "channel": 'workflows:f"1',
        "timestamp": "2025-01-01T00:00:00.000Z",
        "data": orjson.loads(body),
    }
    assert body in payload


def test_a_conflated_delivery_lists_the_seqs_it_replaces() -> None:
    payload = delivery(
        json_string("log"), json_string("executions"), "2025-01-01T00:00:00.000Z", b'{"seq":9}'
    )
    assert orjson.loads(conflated_delivery(payload, [3, 5]))["conflated"] == [3, 5]
