"""Masking of secret values in anything that leaves the engine (events, logs, errors)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

MASK = "***"
_SENSITIVE_KEYS = frozenset({"authorization", "proxy-authorization", "x-api-key", "cookie", "set-cookie"})


class Masker:
    """Replaces every known secret value, and the values of sensitive headers, with ``***``."""

    __slots__ = ("_values",)

    def __init__(self, values: Iterable[str] = ()) -> None:
        # Longest first so a secret containing another is masked whole.
        self._values = sorted({v for v in values if v and len(v) >= 3}, key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self._values)

    def text(self, value: str) -> str:
        for secret in self._values:
            if secret in value:
                value = value.replace(secret, MASK)
        return value

    def value(self, value: Any) -> Any:
        """Mask recursively through dicts and lists; sensitive header keys are masked outright."""
        if isinstance(value, str):
            return self.text(value) if self._values else value
        if isinstance(value, dict):
            return {
                k: (MASK if isinstance(k, str) and k.lower() in _SENSITIVE_KEYS and v else self.value(v))
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return value
