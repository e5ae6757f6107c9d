"""Outgoing webhook bodies, headers and signatures (PROTOCOL.md §5).

Two signatures over one delivery:

- ``x-webhook-signature: sha256=<hex>``, compatible with the original platform's Node.js
  verifier, which parses the body and HMACs ``JSON.stringify({timestamp, ...payload})``.
  That string is JavaScript's, not Python's, so ``js_stringify`` reproduces it exactly:
  numbers as JS prints them (``1.0`` -> ``1``, ``1e16`` -> ``10000000000000000``,
  integers past 2**53 rounded to a double, NaN/Infinity -> ``null``), object keys that
  are array indices ("0", "17") first in numeric order as JS engines order them, lone
  surrogates escaped, everything else as ``json.dumps(..., ensure_ascii=False)``
  with compact separators. The HMAC key is the secret's UTF-8 bytes, always.
- Standard Webhooks ``webhook-id`` / ``webhook-timestamp`` (seconds) /
  ``webhook-signature: v1,<base64>`` over ``{id}.{timestamp}.{raw body}``; the key is
  the base64-decoded rest of a ``whsec_`` secret, else the secret's UTF-8 bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
import secrets
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

__all__ = [
    "js_stringify",
    "new_delivery_id",
    "seed_signature",
    "signed_headers",
    "standard_key",
    "standard_signature",
    "webhook_body",
]

_MAX_SAFE_INTEGER = 2**53
_MAX_ARRAY_INDEX = 2**32 - 2
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def webhook_body(
    event_type: str, timestamp_ms: int, data: Mapping[str, Any], metadata: Mapping[str, Any]
) -> dict[str, Any]:
    """The JSON body of a delivery: ``{eventType, timestamp, data, metadata}``."""
    return {
        "eventType": event_type,
        "timestamp": timestamp_ms,
        "data": dict(data),
        "metadata": dict(metadata),
    }


def new_delivery_id(timestamp_ms: int) -> str:
    """``whd_{epoch ms}_{6 random chars}``."""
    return f"whd_{timestamp_ms}_{''.join(secrets.choice(_ID_ALPHABET) for _ in range(6))}"


# --- JSON.stringify, exactly ------------------------------------------------------


def _js_number(value: float) -> str:
    """ECMAScript Number::toString for a finite double (shortest round-trip digits, like repr)."""
    if value == 0:
        return "0"
    if value < 0:
        return "-" + _js_number(-value)
    _, digit_tuple, exponent = Decimal(repr(value)).normalize().as_tuple()
    if not isinstance(exponent, int):  # NaN or infinity: the caller filters them out
        return "null"
    digits = "".join(map(str, digit_tuple))
    k, n = len(digits), exponent + len(digits)
    if k <= n <= 21:
        return digits + "0" * (n - k)
    if 0 < n <= 21:
        return f"{digits[:n]}.{digits[n:]}"
    if -6 < n <= 0:
        return "0." + "0" * -n + digits
    mantissa = digits if k == 1 else f"{digits[0]}.{digits[1:]}"
    return f"{mantissa}e{'+' if n - 1 >= 0 else '-'}{abs(n - 1)}"


def _js_string(value: str) -> str:
    quoted = json.dumps(value, ensure_ascii=False)
    return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", quoted)


def _is_array_index(key: str) -> bool:
    return key.isdigit() and key.isascii() and str(int(key)) == key and int(key) <= _MAX_ARRAY_INDEX


def _js_keys(obj: Mapping[Any, Any]) -> list[tuple[str, Any]]:
    items = [(str(k), v) for k, v in obj.items()]
    indices = sorted((item for item in items if _is_array_index(item[0])), key=lambda item: int(item[0]))
    return indices + [item for item in items if not _is_array_index(item[0])]


def js_stringify(value: Any) -> str:
    """What JavaScript's ``JSON.stringify`` prints for ``value`` after a JSON round trip."""
    if value is None or value is True or value is False:
        return json.dumps(value)
    if isinstance(value, int):
        return str(value) if abs(value) < _MAX_SAFE_INTEGER else js_stringify(float(value))
    if isinstance(value, float):
        return _js_number(value) if math.isfinite(value) else "null"
    if isinstance(value, str):
        return _js_string(value)
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{_js_string(k)}:{js_stringify(v)}" for k, v in _js_keys(value)) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(js_stringify(v) for v in value) + "]"
    raise TypeError(f"{type(value).__name__} is not JSON data")


def _js_spread(value: Any) -> dict[str, Any]:
    """The own properties ``{...value}`` copies for a parsed JSON value."""
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    if isinstance(value, list | str):
        return {str(i): v for i, v in enumerate(value)}
    return {}


# --- signatures ---------------------------------------------------------------------


def seed_signature(secret: str, timestamp_ms: int, payload: Mapping[str, Any]) -> str:
    """``sha256=<hex>`` over ``JSON.stringify({timestamp, ...payload})``; a ``timestamp`` key in
    ``payload`` keeps the first position and overrides the value, as the spread does."""
    message = js_stringify({"timestamp": timestamp_ms, **payload})
    digest = hmac.new(secret.encode(), message.encode(), hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


def standard_key(secret: str) -> bytes:
    """The Standard Webhooks HMAC key; raises ValueError for a ``whsec_`` secret that is not base64."""
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except binascii.Error:
            raise ValueError("a secret starting with 'whsec_' must continue in base64") from None
    return secret.encode()


def standard_signature(secret: str, msg_id: str, timestamp_s: int, body: bytes) -> str:
    """``v1,<base64>``: HMAC-SHA256 over ``{msg_id}.{timestamp_s}.{body}``."""
    signed = f"{msg_id}.{timestamp_s}.".encode() + body
    digest = hmac.new(standard_key(secret), signed, hashlib.sha256).digest()
    return f"v1,{base64.b64encode(digest).decode()}"


def signed_headers(
    *,
    secret: str | None,
    event_type: str,
    delivery_id: str,
    timestamp_ms: int,
    body: bytes,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Every header of a delivery of ``body`` (JSON); signatures only when there is a secret.

    ``extra`` (the registration's custom headers) cannot override the protocol's own.
    """
    headers = {name.lower(): value for name, value in (extra or {}).items()}
    headers |= {
        "content-type": "application/json",
        "x-webhook-event": event_type,
        "x-webhook-timestamp": str(timestamp_ms),
        "x-webhook-delivery": delivery_id,
    }
    if secret:
        payload = _js_spread(json.loads(body))
        timestamp_s = timestamp_ms // 1000
        headers |= {
            "x-webhook-signature": seed_signature(secret, timestamp_ms, payload),
            "webhook-id": delivery_id,
            "webhook-timestamp": str(timestamp_s),
            "webhook-signature": standard_signature(secret, delivery_id, timestamp_s, body),
        }
    return headers
