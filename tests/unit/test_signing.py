"""Webhook signatures: the seed-compatible ``sha256=`` one and Standard Webhooks ``v1,``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import shutil
import subprocess
from typing import Any

import pytest

from tolstoy import jsonutil
from tolstoy.webhooks import signing

SECRET = "s3cr3t-ключ"
TIMESTAMP_MS = 1754575523456


def _reference_seed(secret: str, timestamp_ms: int, payload: dict[str, Any]) -> str:
    """JSON.stringify({timestamp, ...payload}) for plain data, computed from scratch."""
    message = json.dumps({"timestamp": timestamp_ms, **payload}, separators=(",", ":"), ensure_ascii=False)
    return "sha256=" + hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def _verify_standard(
    secret: str, headers: dict[str, str], body: bytes, now_s: int, tolerance_s: int = 300
) -> bool:
    """A Standard Webhooks verifier written from the specification, not from our code."""
    key = base64.b64decode(secret[len("whsec_") :]) if secret.startswith("whsec_") else secret.encode()
    msg_id, timestamp = headers["webhook-id"], headers["webhook-timestamp"]
    if abs(now_s - int(timestamp)) > tolerance_s:
        return False
    expected = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    for candidate in headers["webhook-signature"].split(" "):
        version, _, signature = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(base64.b64decode(signature), expected):
            return True
    return False


def test_seed_signature_matches_an_independent_computation() -> None:
    payload = {"eventType": "flow.completed", "data": {"name": "Zoë ✓", "n": 3, "ok": True, "x": None}}
    assert signing.seed_signature(SECRET, TIMESTAMP_MS, payload) == _reference_seed(
        SECRET, TIMESTAMP_MS, payload
    )


def test_seed_signature_changes_with_secret_timestamp_and_payload() -> None:
    base = signing.seed_signature(SECRET, TIMESTAMP_MS, {"a": 1})
    assert signing.seed_signature("other", TIMESTAMP_MS, {"a": 1}) != base
    assert signing.seed_signature(SECRET, TIMESTAMP_MS + 1, {"a": 1}) != base
    assert signing.seed_signature(SECRET, TIMESTAMP_MS, {"a": 2}) != base


def test_a_timestamp_in_the_payload_keeps_first_place_and_wins_like_the_spread() -> None:
    payload = {"eventType": "x", "timestamp": 5}
    expected = hmac.new(SECRET.encode(), b'{"timestamp":5,"eventType":"x"}', hashlib.sha256).hexdigest()
    assert signing.seed_signature(SECRET, TIMESTAMP_MS, payload) == f"sha256={expected}"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.0, "1"),
        (-0.0, "0"),
        (0.1, "0.1"),
        (1e21, "1e+21"),
        (1e16, "10000000000000000"),
        (1.5e-7, "1.5e-7"),
        (0.000001, "0.000001"),
        (123456.789, "123456.789"),
        (float("nan"), "null"),
        (float("inf"), "null"),
        (2**53 + 1, "9007199254740992"),
        (12345678901234567890, "12345678901234567000"),
        (True, "true"),
        (None, "null"),
        ("é\u2028", '"é\u2028"'),
        ('\x1f\n"\\', '"\\u001f\\n\\"\\\\"'),
        ("\ud800", '"\\ud800"'),
        ({"b": 1, "2": 2, "1": 3, "01": 4, "a": [1.0, {}]}, '{"1":3,"2":2,"b":1,"01":4,"a":[1,{}]}'),
    ],
)
def test_js_stringify_prints_what_javascript_prints(value: Any, expected: str) -> None:
    assert signing.js_stringify(value) == expected


def test_js_stringify_refuses_non_json_values() -> None:
    with pytest.raises(TypeError):
        signing.js_stringify({"a": {1, 2}})


@pytest.mark.parametrize(
    "secret", ["plain-secret", "whsec_" + base64.b64encode(b"\x00\x01binary key").decode()]
)
def test_standard_signature_verifies_with_an_independent_verifier(secret: str) -> None:
    body = jsonutil.dumpb({"eventType": "webhook.test", "timestamp": TIMESTAMP_MS, "data": {"é": 1}})
    headers = signing.signed_headers(
        secret=secret,
        event_type="webhook.test",
        delivery_id="whd_1_abcdef",
        timestamp_ms=TIMESTAMP_MS,
        body=body,
    )
    now_s = TIMESTAMP_MS // 1000
    assert headers["webhook-signature"].startswith("v1,")
    assert _verify_standard(secret, headers, body, now_s)
    assert not _verify_standard(secret, headers, body + b" ", now_s)
    assert not _verify_standard(
        secret + "x" if not secret.startswith("whsec_") else "wrong", headers, body, now_s
    )


def test_whsec_secret_key_is_decoded_and_plain_secret_is_utf8() -> None:
    assert signing.standard_key("whsec_" + base64.b64encode(b"raw").decode()) == b"raw"
    assert signing.standard_key("ключ") == "ключ".encode()
    with pytest.raises(ValueError, match="base64"):
        signing.standard_key("whsec_not*base64")


def test_signed_headers_carry_every_protocol_header() -> None:
    body = jsonutil.dumpb(
        signing.webhook_body("flow.started", TIMESTAMP_MS, {"executionId": "e"}, {"orgId": "o"})
    )
    headers = signing.signed_headers(
        secret=SECRET,
        event_type="flow.started",
        delivery_id="whd_1754575523456_ab12cd",
        timestamp_ms=TIMESTAMP_MS,
        body=body,
        extra={"X-Custom": "1", "Content-Type": "text/plain", "X-Webhook-Signature": "forged"},
    )
    assert headers["content-type"] == "application/json"
    assert headers["x-webhook-event"] == "flow.started"
    assert headers["x-webhook-timestamp"] == str(TIMESTAMP_MS)
    assert headers["x-webhook-delivery"] == headers["webhook-id"] == "whd_1754575523456_ab12cd"
    assert headers["webhook-timestamp"] == str(TIMESTAMP_MS // 1000)
    assert headers["x-custom"] == "1"
    assert headers["x-webhook-signature"] == signing.seed_signature(SECRET, TIMESTAMP_MS, json.loads(body))
    assert headers["webhook-signature"] == signing.standard_signature(
        SECRET, "whd_1754575523456_ab12cd", TIMESTAMP_MS // 1000, body
    )


def test_signed_headers_without_a_secret_have_no_signatures() -> None:
    headers = signing.signed_headers(
        secret=None, event_type="e", delivery_id="whd_1_a", timestamp_ms=TIMESTAMP_MS, body=b"{}"
    )
    assert set(headers) == {"content-type", "x-webhook-event", "x-webhook-timestamp", "x-webhook-delivery"}


def test_webhook_body_and_delivery_id_shapes() -> None:
    body = signing.webhook_body("flow.completed", TIMESTAMP_MS, {"status": "completed"}, {"deliveryId": "d"})
    assert list(body) == ["eventType", "timestamp", "data", "metadata"]
    assert body["timestamp"] == TIMESTAMP_MS and body["data"] == {"status": "completed"}
    assert re.fullmatch(r"whd_1754575523456_[a-z0-9]{6}", signing.new_delivery_id(TIMESTAMP_MS))
    assert signing.new_delivery_id(TIMESTAMP_MS) != signing.new_delivery_id(TIMESTAMP_MS)


_NODE_VERIFIER = r"""
const crypto = require('crypto');
const input = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const headers = input.headers, payload = JSON.parse(input.body);
const timestamp = Number(headers['x-webhook-timestamp']);
const expected = 'sha256=' + crypto.createHmac('sha256', input.secret)
  .update(JSON.stringify({timestamp, ...payload})).digest('hex');
process.stdout.write(expected === headers['x-webhook-signature'] ? 'valid' : 'invalid ' + expected);
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js")
@pytest.mark.parametrize(
    "data",
    [
        {"status": "completed", "output": {"ticketId": "ABC-123"}},
        {"floats": [1.0, 2.50, 1e21, 1e-7, 1e16], "big": 12345678901234567890, "neg": -0.0},
        {"text": "Zoë ✓ 😀 \u2028 \x1f \ud800", "10": "index keys", "2": "come first", "z": None},
    ],
)
def test_the_documented_node_verifier_accepts_the_signature(data: dict[str, Any]) -> None:
    body = json.dumps(signing.webhook_body("flow.completed", TIMESTAMP_MS, data, {"orgId": "o"})).encode()
    headers = signing.signed_headers(
        secret=SECRET,
        event_type="flow.completed",
        delivery_id="whd_1_x",
        timestamp_ms=TIMESTAMP_MS,
        body=body,
    )
    stdin = json.dumps({"headers": headers, "body": body.decode(), "secret": SECRET})
    node = shutil.which("node") or "node"
    result = subprocess.run(
        [node, "-e", _NODE_VERIFIER], input=stdin, capture_output=True, text=True, timeout=30
    )
    assert result.stdout == "valid", result.stdout + result.stderr
