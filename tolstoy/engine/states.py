"""Lifecycles of executions and steps, with checked transitions."""

from __future__ import annotations

from enum import StrEnum

from tolstoy.errors import IllegalTransition


class ExecutionStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL_EXECUTION

    def check(self, to: ExecutionStatus) -> ExecutionStatus:
        """Return ``to`` if the transition is legal, else raise IllegalTransition."""
        if to not in _EXECUTION_MOVES[self]:
            raise IllegalTransition(f"execution cannot go from {self.value} to {to.value}")
        return to


class StepStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    WAITING = "waiting"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL_STEP

    def check(self, to: StepStatus) -> StepStatus:
        """Return ``to`` if the transition is legal, else raise IllegalTransition."""
        if to not in _STEP_MOVES[self]:
            raise IllegalTransition(f"step cannot go from {self.value} to {to.value}")
        return to


E = ExecutionStatus
_TERMINAL_EXECUTION = frozenset({E.COMPLETED, E.FAILED, E.CANCELLED})
_EXECUTION_MOVES: dict[ExecutionStatus, frozenset[ExecutionStatus]] = {
    E.QUEUED: frozenset({E.RUNNING, E.PAUSED, E.CANCELLED, E.QUEUED}),
    E.RUNNING: frozenset({E.RUNNING, E.WAITING, E.PAUSED, E.QUEUED, *_TERMINAL_EXECUTION}),
    E.WAITING: frozenset({E.RUNNING, E.WAITING, E.PAUSED, E.QUEUED, *_TERMINAL_EXECUTION}),
    E.PAUSED: frozenset({E.QUEUED, E.PAUSED, E.CANCELLED}),
    E.COMPLETED: frozenset(),
    E.FAILED: frozenset(),
    E.CANCELLED: frozenset(),
}

S = StepStatus
_TERMINAL_STEP = frozenset({S.COMPLETED, S.FAILED, S.SKIPPED, S.CANCELLED})
_STEP_MOVES: dict[StepStatus, frozenset[StepStatus]] = {
    S.PENDING: frozenset({S.RUNNING, S.SKIPPED, S.CANCELLED, S.WAITING}),
    S.RUNNING: frozenset({S.RUNNING, S.COMPLETED, S.FAILED, S.RETRYING, S.WAITING, S.CANCELLED}),
    S.RETRYING: frozenset({S.RUNNING, S.CANCELLED}),
    S.WAITING: frozenset({S.RUNNING, S.WAITING, S.COMPLETED, S.FAILED, S.CANCELLED}),
    S.COMPLETED: frozenset(),
    S.FAILED: frozenset(),
    S.SKIPPED: frozenset(),
    S.CANCELLED: frozenset(),
}
