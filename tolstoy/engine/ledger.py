"""The runner's book of one execution's steps: states, dependencies, counts, output, scope."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tolstoy import metrics
from tolstoy.engine.attempt import StepState
from tolstoy.engine.definition import FlowDefinition, StepDefinition, resolved_dependencies
from tolstoy.engine.states import StepStatus
from tolstoy.timeutil import now_ms

BAD_UPSTREAM = {
    StepStatus.FAILED: "failed",
    StepStatus.SKIPPED: "was skipped",
    StepStatus.CANCELLED: "was cancelled",
}
_WAITING = (StepStatus.WAITING, StepStatus.RETRYING)
_COUNTED = {
    StepStatus.COMPLETED: "completed_steps",
    StepStatus.FAILED: "failed_steps",
    StepStatus.SKIPPED: "skipped_steps",
}


class Ledger:
    """Step states of one execution, loaded from its checkpoint (``step_runs``)."""

    def __init__(self, definition: FlowDefinition, rows: Sequence[Mapping[str, Any]]) -> None:
        self.defn = definition
        self.by_id: dict[str, StepDefinition] = {s.id: s for s in definition.steps}
        self.deps = resolved_dependencies(definition)
        loaded = {r["step_id"]: r for r in rows}
        self.steps: dict[str, StepState] = {}
        for s in definition.steps:
            name = s.name or s.id
            known = loaded.get(s.id)
            self.steps[s.id] = StepState.from_row(known, name) if known else StepState(s.id, s.type, name)

    def ready(self) -> list[tuple[StepDefinition, StepState, list[StepState]]]:
        """Pending steps whose dependencies have all ended, with those dependencies."""
        out = []
        for step in self.defn.steps:
            state = self.steps[step.id]
            deps = [self.steps[d] for d in self.deps[step.id]]
            if state.status is StepStatus.PENDING and all(d.status.is_terminal for d in deps):
                out.append((step, state, deps))
        return out

    def in_flight(self) -> list[StepState]:
        """Steps a resumed runner must pick up: interrupted attempts, back-offs, waits."""
        resume = (StepStatus.RUNNING, StepStatus.RETRYING, StepStatus.WAITING)
        return [s for s in self.steps.values() if s.status in resume]

    def all_waiting(self, ids: Iterable[str], armed: set[str]) -> bool:
        ids = list(ids)
        return bool(ids) and all(self.steps[i].status in _WAITING and i in armed for i in ids)

    def earliest_wake(self, ids: Iterable[str]) -> int | None:
        known = [t for i in ids if (t := self.steps[i].next_attempt_at) is not None]
        return min(known) if known else None

    def wait_reason(self) -> str:
        reasons = {
            s.type if s.status is StepStatus.WAITING else "retry"
            for s in self.steps.values()
            if s.status in _WAITING
        }
        return next((r for r in ("approval", "delay", "retry") if r in reasons), "delay")

    def all_terminal(self) -> bool:
        return all(s.status.is_terminal for s in self.steps.values())

    def cancel_open(self) -> list[StepState]:
        open_steps = [s for s in self.steps.values() if not s.status.is_terminal]
        for state in open_steps:
            state.move(StepStatus.CANCELLED)
            state.finished_at = now_ms()
        return open_steps

    def counts(self) -> dict[str, int]:
        tally = dict.fromkeys(_COUNTED.values(), 0)
        for state in self.steps.values():
            if state.status in _COUNTED:
                tally[_COUNTED[state.status]] += 1
        return tally

    def output(self) -> dict[str, Any]:
        """Outputs by step id of the completed sink steps (no other step depends on them);
        when no sink completed, of the last completed step."""
        upstream = {d for deps in self.deps.values() for d in deps}
        done = [s.id for s in self.defn.steps if self.steps[s.id].status is StepStatus.COMPLETED]
        sinks = [i for i in done if i not in upstream] or done[-1:]
        return {i: self.steps[i].output for i in sinks}

    def outputs(self) -> dict[str, Any]:
        """Outputs of the completed steps, by id (what a code step sees as ``context.steps``)."""
        return {k: s.output for k, s in self.steps.items() if s.status is StepStatus.COMPLETED}

    def scope_steps(self) -> dict[str, dict[str, Any]]:
        """``steps`` as templates see it: ``steps['id'].output`` and ``.status``."""
        return {k: {"output": s.output, "status": s.status.value} for k, s in self.steps.items()}


def finish_step(state: StepState, to: StepStatus) -> None:
    """End an attempt: status, finish time, duration, and its metrics."""
    state.move(to)
    state.finished_at = now_ms()
    state.duration_ms = state.finished_at - (state.started_at or state.finished_at)
    state.next_attempt_at = None
    metrics.STEPS_FINISHED.labels(state.type, to.value).inc()
    metrics.STEP_DURATION_MS.labels(state.type).observe(state.duration_ms)
