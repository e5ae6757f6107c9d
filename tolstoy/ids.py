"""Identifiers: a type prefix and a random part (``flow_…``); executions carry their start time."""

from __future__ import annotations

import secrets
import string

from tolstoy.timeutil import now_ms

_ALPHABET = string.ascii_lowercase + string.digits


def _random(n: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(n))


def new_id(prefix: str, length: int = 12) -> str:
    return f"{prefix}_{_random(length)}"


def execution_id() -> str:
    return f"exec_{now_ms()}_{_random(6)}"
