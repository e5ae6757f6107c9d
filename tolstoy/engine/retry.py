"""Retry policies: how many attempts a step gets and how long to wait between them."""

from __future__ import annotations

import random
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic.alias_generators import to_camel

MAX_DELAY_MS = 86_400_000
"""One day: longer waits belong to a ``delay`` step, not to a retry."""

_RNG = random.Random()


class RetryPolicy(BaseModel):
    """A step's (or a flow's default) retry settings; ``maxAttempts: 1`` means no retry."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    max_attempts: int = Field(default=1, ge=1, le=100)
    backoff: Literal["exponential", "fixed"] = "exponential"
    base_delay_ms: int = Field(default=1000, ge=0, le=MAX_DELAY_MS)
    max_delay_ms: int = Field(default=60_000, ge=0, le=MAX_DELAY_MS)
    jitter: float = Field(default=0.2, ge=0.0, le=1.0)

    @field_validator("max_delay_ms")
    @classmethod
    def _not_below_base(cls, value: int, info: ValidationInfo) -> int:
        base = info.data.get("base_delay_ms")
        if base is not None and value < base:
            raise ValueError(f"maxDelayMs ({value}) must be >= baseDelayMs ({base})")
        return value


def effective_policy(step_policy: RetryPolicy | None, flow_policy: RetryPolicy | None) -> RetryPolicy:
    """The flow's policy overridden, field by field, by what the step set explicitly.

    The merge is not re-validated: a step's ``baseDelayMs`` above the flow's
    ``maxDelayMs`` is legal, and ``delay_ms`` caps it.
    """
    if step_policy is None:
        return flow_policy or RetryPolicy()
    if flow_policy is None:
        return step_policy
    update = {name: getattr(step_policy, name) for name in step_policy.model_fields_set}
    return flow_policy.model_copy(update=update)


def delay_ms(policy: RetryPolicy, attempt: int, *, rng: random.Random | None = None) -> int:
    """Milliseconds to wait before attempt ``attempt + 1``, after attempt ``attempt`` (from 1) failed."""
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    if policy.backoff == "fixed":
        delay = float(policy.base_delay_ms)
    else:
        # The exponent is bounded: past 2**40 any base hits the cap anyway.
        delay = float(policy.base_delay_ms * 2 ** min(attempt - 1, 40))
    delay = min(delay, policy.max_delay_ms)
    if policy.jitter > 0:
        delay *= (rng or _RNG).uniform(1 - policy.jitter, 1 + policy.jitter)
    return max(0, min(round(delay), policy.max_delay_ms))


def should_retry(policy: RetryPolicy, attempt: int, retryable: bool) -> bool:
    """Whether a failed attempt number ``attempt`` (from 1) earns another one."""
    return retryable and attempt < policy.max_attempts
