"""Time as epoch milliseconds inside, ISO-8601 UTC with milliseconds and ``Z`` on the wire."""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return _iso(ms)


@functools.lru_cache(maxsize=256)
def _iso(ms: int) -> str:
    # Cached: the events of one commit, and of commits close together, share their millisecond.
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def parse_iso(value: str) -> int:
    """Parse an ISO-8601 timestamp (``Z`` or offset; naive means UTC) into epoch ms."""
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)
