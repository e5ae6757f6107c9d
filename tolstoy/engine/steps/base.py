"""The contract every step type implements.

The runner renders a step's ``config`` templates (except ``raw_keys``), validates
the result against ``config_model`` and calls ``run`` with a ``StepContext``.
``run`` returns the step's JSON-serializable output or raises ``StepError``.
Cancellation arrives as ``asyncio.CancelledError``: a step must let it
propagate after releasing what it holds (kill a subprocess, close a request).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

LogSink = Callable[[str, str, Mapping[str, Any] | None], Awaitable[None]]
"""``await log(level, message, metadata)`` records a ``log`` event for the step."""

ProgressSink = Callable[[int, int, str | None], Awaitable[None]]
"""``await progress(current, total, message)`` records an ``execution.progress`` event."""


async def _no_log(level: str, message: str, metadata: Mapping[str, Any] | None) -> None:
    return None


async def _no_progress(current: int, total: int, message: str | None) -> None:
    return None


class StepConfig(BaseModel):
    """Base of every step type's config model: camelCase keys, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


@dataclass(slots=True)
class StepContext:
    """What a step attempt may know: its identity, its inputs and where to report."""

    execution_id: str
    org_id: str
    flow_id: str
    step_id: str
    step_name: str
    step_type: str
    attempt: int
    timeout_ms: int | None = None
    variables: Mapping[str, Any] = field(default_factory=dict)
    steps: Mapping[str, Any] = field(default_factory=dict)
    """Outputs of completed steps, by step id."""
    meta: Mapping[str, Any] = field(default_factory=dict)
    allow_private_networks: bool = True
    max_output_bytes: int = 1_048_576
    log: LogSink = _no_log
    progress: ProgressSink = _no_progress

    @property
    def idempotency_key(self) -> str:
        """Stable across attempts and worker takeovers: ``{executionId}:{stepId}``."""
        return f"{self.execution_id}:{self.step_id}"


class StepType(ABC):
    """One kind of step (``http_request``, ``code`` …); stateless, one instance per process."""

    name: ClassVar[str]
    config_model: ClassVar[type[StepConfig]]
    raw_keys: ClassVar[frozenset[str]] = frozenset()
    """Config keys the runner must not render as templates (e.g. ``code.source``)."""

    @abstractmethod
    async def run(self, config: Any, ctx: StepContext) -> Any:
        """Run one attempt with the validated ``config``; return the output or raise StepError."""
