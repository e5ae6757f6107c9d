"""``delay``: wait ``durationMs`` or until an ISO timestamp.

For now ``run`` sleeps in the worker; ``wake_at_ms`` is the pure part the engine uses
to make the wait durable (persist the wake time, release the worker, resume later).
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import Field, field_validator, model_validator

from tolstoy.engine.steps.base import StepConfig, StepContext, StepType
from tolstoy.timeutil import now_ms, parse_iso

MAX_DELAY_MS = 366 * 24 * 3600 * 1000


class DelayConfig(StepConfig):
    duration_ms: int | None = Field(default=None, alias="durationMs", ge=0, le=MAX_DELAY_MS)
    until: str | None = None

    @field_validator("until")
    @classmethod
    def _iso(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_iso(value)
            except ValueError:
                raise ValueError(f"'until' is not an ISO-8601 timestamp: {value!r}") from None
        return value

    @model_validator(mode="after")
    def _one_of(self) -> DelayConfig:
        if (self.duration_ms is None) == (self.until is None):
            raise ValueError("give exactly one of 'durationMs' or 'until'")
        return self


def wake_at_ms(config: DelayConfig, now: int) -> int:
    """Epoch ms at which a delay that starts at ``now`` ends (never before ``now``)."""
    if config.duration_ms is not None:
        return now + config.duration_ms
    return max(now, parse_iso(config.until or ""))


class DelayStep(StepType):
    name = "delay"
    config_model = DelayConfig

    async def run(self, config: DelayConfig, ctx: StepContext) -> dict[str, Any]:
        start = now_ms()
        waited = wake_at_ms(config, start) - start
        await asyncio.sleep(waited / 1000)
        return {"waitedMs": waited}
