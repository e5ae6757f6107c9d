"""One JSON codec for the whole package (orjson: fast, strict, UTC-aware)."""

from __future__ import annotations

from typing import Any

import orjson

_OPTS = orjson.OPT_NON_STR_KEYS


def dumps(value: Any) -> str:
    return orjson.dumps(value, option=_OPTS).decode()


def dumpb(value: Any) -> bytes:
    return orjson.dumps(value, option=_OPTS)


def loads(value: str | bytes) -> Any:
    return orjson.loads(value)
