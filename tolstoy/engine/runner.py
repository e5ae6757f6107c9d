"""Runs one claimed execution: the step DAG, retries, timeouts, cancel, pause, waits, release.

Every transition goes through the journal as one fenced write (state change and its
events together). The runner keeps the execution's state in memory (a ``Ledger``) and
writes absolute values, so a takeover simply reloads it from the store and carries on:
completed steps keep their outputs, an interrupted step runs again with ``attempt + 1``
and the same idempotency key, waits and back-offs resume from their stored deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Mapping, Sequence
from enum import Enum
from typing import Any

import structlog

from tolstoy import metrics
from tolstoy.engine import context, fields, templating, waits
from tolstoy.engine.attempt import PURE_TYPES, StepState, internal_error, run_attempt
from tolstoy.engine.definition import FlowDefinition, StepDefinition
from tolstoy.engine.ledger import BAD_UPSTREAM, Ledger, finish_step
from tolstoy.engine.retry import delay_ms, effective_policy, should_retry
from tolstoy.engine.runtime import Runtime
from tolstoy.engine.states import ExecutionStatus, StepStatus
from tolstoy.engine.steps.base import StepContext
from tolstoy.engine.writer import Events, Writer
from tolstoy.errors import Conflict, LeaseLost, StepError
from tolstoy.events.types import EventType as ET
from tolstoy.masking import Masker
from tolstoy.store import approvals as approval_store
from tolstoy.timeutil import now_ms

log = structlog.get_logger(__name__)

ACTIVE = ("queued", "running", "waiting")
CANCELLABLE = (*ACTIVE, "paused")


class Stop(Enum):
    """Why a runner should stop starting steps."""

    CANCEL = "cancel"
    PAUSE = "pause"
    LOST = "lost"
    SHUTDOWN = "shutdown"


class _Fenced(Exception):
    """Our lease is gone: stop without writing anything more."""


class ExecutionRunner:
    """Drives one execution from its current checkpoint to a terminal state (or a release)."""

    def __init__(
        self,
        runtime: Runtime,
        row: Mapping[str, Any],
        definition: FlowDefinition,
        step_rows: Sequence[Mapping[str, Any]],
        secrets: dict[str, str],
    ) -> None:
        self.rt = runtime
        self.row = dict(row)
        self.id: str = row["id"]
        self.org_id: str = row["org_id"]
        self.flow_id: str = row["flow_id"]
        self.epoch: int = row["lease_epoch"]
        self.defn = definition
        self.ledger = Ledger(definition, step_rows)
        self.secrets = secrets
        self.masker = Masker(secrets.values())
        self._asks_approval = any(s.type == "approval" for s in definition.steps)
        self.tasks: dict[str, asyncio.Task[Any]] = {}
        self._armed: set[str] = set()
        """Steps whose wait has checked its condition at least once: only those may be parked."""
        self.stop: Stop | None = None
        self.stop_by: str | None = None
        self._ended = False
        """The terminal event is written: nothing more is."""
        self.writer = Writer(runtime.journal, self.id, self.org_id, self.flow_id, self.epoch)
        self._control = asyncio.Event()
        if row.get("cancel_requested"):
            self.request(Stop.CANCEL)
        elif row.get("pause_requested"):
            self.request(Stop.PAUSE)

    # -- control, called by the worker -------------------------------------------------

    def request(self, stop: Stop, by: str | None = None) -> None:
        """Ask the runner to stop; CANCEL and LOST override a pending PAUSE or SHUTDOWN."""
        if self.stop in (Stop.CANCEL, Stop.LOST) and stop is not Stop.LOST:
            return
        self.stop, self.stop_by = stop, by or self.stop_by
        self._control.set()
        if stop in (Stop.CANCEL, Stop.LOST, Stop.SHUTDOWN):
            for task in self.tasks.values():
                task.cancel()

    # -- the main loop -----------------------------------------------------------------

    async def run(self) -> None:
        try:
            if self.stop is Stop.CANCEL:  # cancelled while no worker held it: end without starting
                await self._finish_cancelled()
            else:
                await self._begin()
                await self._loop()
        except _Fenced:
            log.info("lease lost; stopping without further writes", execution_id=self.id)
        finally:
            await self._cancel_tasks()

    async def _begin(self) -> None:
        started: dict[str, Any] = {"status": "running", "totalSteps": len(self.defn.steps)}
        if self.row.get("started_at") is not None:
            started["resumed"] = True
        self.row["started_at"] = self.row.get("started_at") or now_ms()
        execution = {"status": "running", "started_at": self.row["started_at"], "wait_reason": None}
        await self._commit([(ET.EXECUTION_STARTED, started)], execution=execution, defer=True)
        for state in self.ledger.in_flight():
            self._spawn(self.ledger.by_id[state.id], state)

    async def _loop(self) -> None:
        while not self._ended:
            if self.stop is Stop.LOST:
                raise _Fenced
            if self.stop is Stop.CANCEL:
                return await self._finish_cancelled()
            if self.stop is Stop.SHUTDOWN:
                return await self._release()
            if self._deadline_passed():
                return await self._finish_timed_out()
            if self.stop is None:
                await self._schedule()
            if self._ended or await self._settled_or_parked():
                return
            await self._flush()
            await self._wait()

    async def _settled_or_parked(self) -> bool:
        """End, pause or park when nothing runs but waits; True if the runner is done."""
        if not self.tasks:
            if self.stop is Stop.PAUSE and not self.ledger.all_terminal():
                await self._finish_paused()
            else:
                await self._terminal(ExecutionStatus.COMPLETED, [], [], output=self.ledger.output())
            return True
        if not self.ledger.all_waiting(self.tasks, self._armed):
            return False
        if self.stop is Stop.PAUSE:
            await self._cancel_tasks()
            await self._finish_paused()
            return True
        wake = self.ledger.earliest_wake(self.tasks)
        if wake is None or wake - now_ms() > self.rt.settings.park_after_ms:
            await self._park(wake)
            return True
        return False

    async def _wait(self) -> None:
        control = asyncio.ensure_future(self._control.wait())
        try:
            await asyncio.wait(
                [control, *self.tasks.values()],
                timeout=self._time_left(),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            control.cancel()
        self._control.clear()
        for step_id, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[step_id]
                self._armed.discard(step_id)
                await self._settle(self.ledger.by_id[step_id], self.ledger.steps[step_id], task)

    # -- scheduling ---------------------------------------------------------------------

    async def _schedule(self) -> None:
        """Start every ready step; skip those whose upstream failed or whose executeIf is false."""
        while self.stop is None and not self._ended:
            ready = [r for r in self.ledger.ready() if r[0].id not in self.tasks]
            if not ready:
                return
            for step, state, deps in ready:
                await self._start_or_skip(step, state, deps)

    async def _start_or_skip(self, step: StepDefinition, state: StepState, deps: list[StepState]) -> None:
        bad = next((d for d in deps if d.status in BAD_UPSTREAM), None)
        if bad is not None:
            return await self._skip(state, f"dependency {bad.id!r} {BAD_UPSTREAM[bad.status]}")
        if step.execute_if:
            try:
                go = bool(templating.evaluate(step.execute_if, self._scope()))
            except StepError as exc:
                self._begin_attempt(state)
                return await self._on_failure(step, state, exc, started_event=True)
            if not go:
                return await self._skip(state, "executeIf evaluated to false")
        if step.type in waits.WAIT_TYPES:
            return await self._begin_wait(step, state)
        if step.type in PURE_TYPES:
            return await self._run_inline(step, state)
        self._spawn(step, state)

    async def _run_inline(self, step: StepDefinition, state: StepState) -> None:
        """A pure step (no I/O, no wait, no side effect) runs here and now rather than in a task;
        its result joins the pending write, so a chain of them commits as one transaction."""
        self._begin_attempt(state)
        try:
            output = await run_attempt(step, self._context(step, state), self._scope())
        except StepError as exc:
            return await self._on_failure(step, state, exc, started_event=True)
        except Exception as exc:
            return await self._on_failure(step, state, self._unexpected(step, exc), started_event=True)
        await self._on_success(step, state, output)

    def _begin_attempt(self, state: StepState) -> None:
        state.attempt += 1
        state.move(StepStatus.RUNNING)
        state.started_at, state.next_attempt_at, state.reason = now_ms(), None, None

    async def _begin_wait(self, step: StepDefinition, state: StepState) -> None:
        self._begin_attempt(state)
        try:
            start = waits.begin(step, state, self._scope(), {"org_id": self.org_id, "execution_id": self.id})
        except StepError as exc:
            return await self._on_failure(step, state, exc, started_event=True)
        state.move(StepStatus.WAITING)
        state.next_attempt_at = start.wake_at
        events = [fields.step_started(step, state), *start.events]
        await self._commit(
            events, execution={"current_step": step.id}, steps=[state], statements=start.statements
        )
        self._spawn(step, state)

    def _spawn(self, step: StepDefinition, state: StepState) -> None:
        work = self._waiter(step, state) if state.status is StepStatus.WAITING else self._attempt(step, state)
        self.tasks[step.id] = asyncio.create_task(work, name=f"{self.id}:{step.id}")

    async def _waiter(self, step: StepDefinition, state: StepState) -> Any:
        if step.type == "delay":
            self._arm(step.id)
            return await waits.wait_delay(state)
        poll = self.rt.settings.poll_interval_ms / 1000
        return await waits.wait_approval(
            self.rt.db, self.id, state, poll, on_pending=lambda: self._arm(step.id)
        )

    def _arm(self, step_id: str) -> None:
        if step_id not in self._armed:
            self._armed.add(step_id)
            self._control.set()  # let the loop consider parking

    async def _attempt(self, step: StepDefinition, state: StepState) -> Any:
        if state.status is StepStatus.RETRYING and state.next_attempt_at:
            self._arm(step.id)
            await asyncio.sleep(max(0, state.next_attempt_at - now_ms()) / 1000)
        self._begin_attempt(state)
        if step.type not in PURE_TYPES:
            await self._commit(
                [fields.step_started(step, state)], execution={"current_step": step.id}, steps=[state]
            )
        return await run_attempt(step, self._context(step, state), self._scope())

    async def _settle(self, step: StepDefinition, state: StepState, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return await self._on_success(step, state, task.result())
        if isinstance(exc, _Fenced | LeaseLost):
            raise _Fenced from exc
        if isinstance(exc, waits.ApprovalExpired):
            event, statement = waits.expire_parts(exc, step.id)
            return await self._on_failure(
                step, state, exc, started_event=False, prefix=[event], statements=[statement]
            )
        if not isinstance(exc, StepError):
            exc = self._unexpected(step, exc)
        await self._on_failure(step, state, exc, started_event=step.type in PURE_TYPES)

    def _unexpected(self, step: StepDefinition, exc: BaseException) -> StepError:
        """A bug, not a step failure: logged with its traceback, shown to users without it."""
        log.error("step raised unexpectedly", execution_id=self.id, step_id=step.id, exc_info=exc)
        return internal_error(exc)

    # -- step outcomes ------------------------------------------------------------------

    async def _on_success(self, step: StepDefinition, state: StepState, output: Any) -> None:
        finish_step(state, StepStatus.COMPLETED)
        state.output, state.error = output, None
        pure = step.type in PURE_TYPES
        events = [fields.step_started(step, state)] if pure else []
        events.append(fields.step_completed(state, self.masker.value(output)))
        await self._commit(events, execution=self.ledger.counts(), steps=[state], defer=pure)

    async def _on_failure(
        self,
        step: StepDefinition,
        state: StepState,
        exc: StepError,
        *,
        started_event: bool,
        prefix: Events | None = None,
        statements: list[Any] | None = None,
    ) -> None:
        error = self.masker.value(exc.as_event_error())
        events = [fields.step_started(step, state)] if started_event else []
        events.extend(prefix or ())
        policy = effective_policy(step.retry, self.defn.settings.retry if self.defn.settings else None)
        if should_retry(policy, state.attempt, exc.retryable) and self.stop is None:
            return await self._schedule_retry(
                step, state, error, events, delay_ms(policy, state.attempt), statements
            )
        finish_step(state, StepStatus.FAILED)
        state.error = error
        events.append(fields.step_failed(state, error, None))
        if not step.critical:
            return await self._commit(
                events, execution=self.ledger.counts(), steps=[state], statements=statements
            )
        await self._cancel_tasks()
        cancelled = self.ledger.cancel_open()
        await self._terminal(
            ExecutionStatus.FAILED, events, [state, *cancelled], error=error, statements=statements
        )

    async def _schedule_retry(
        self,
        step: StepDefinition,
        state: StepState,
        error: dict[str, Any],
        events: Events,
        delay: int,
        statements: list[Any] | None,
    ) -> None:
        state.duration_ms = now_ms() - (state.started_at or now_ms())
        state.move(StepStatus.RETRYING)
        state.error, state.next_attempt_at = error, now_ms() + delay
        events.append(fields.step_failed(state, error, state.next_attempt_at))
        events.append(fields.step_retrying(state, error, delay))
        await self._commit(events, steps=[state], statements=statements)
        self._spawn(step, state)

    async def _skip(self, state: StepState, reason: str) -> None:
        state.move(StepStatus.SKIPPED)
        state.reason = reason
        await self._commit(
            [fields.step_skipped(state, reason)], execution=self.ledger.counts(), steps=[state], defer=True
        )

    # -- endings ------------------------------------------------------------------------

    async def _finish_cancelled(self) -> None:
        await self._cancel_tasks()
        await self._terminal(ExecutionStatus.CANCELLED, [], self.ledger.cancel_open(), by=self.stop_by)

    async def _finish_timed_out(self) -> None:
        await self._cancel_tasks()
        error = fields.flow_timeout_error(self.defn.settings.timeout_ms if self.defn.settings else None)
        await self._terminal(ExecutionStatus.FAILED, [], self.ledger.cancel_open(), error=error)

    async def _finish_paused(self) -> None:
        event = (ET.EXECUTION_PAUSED, {"status": "paused", "by": self.stop_by})
        execution = {
            "status": "paused",
            "lease_owner": None,
            "lease_expires_at": None,
            "pause_requested": False,
        }
        await self._commit([event], execution=execution)

    async def _park(self, wake: int | None) -> None:
        """Every open step waits: give the slot back; any worker takes the execution again at ``wake``."""
        await self._cancel_tasks()
        run_after = wake if wake is not None else now_ms() + waits.FAR_FUTURE_MS
        execution = {
            "status": "waiting",
            "wait_reason": self.ledger.wait_reason(),
            "run_after": run_after,
            "lease_owner": None,
            "lease_expires_at": None,
        }
        await self._commit([], execution=execution)

    async def _release(self) -> None:
        """Hand the execution back at once (graceful shutdown), keeping its place in the queue; no event."""
        await self._commit([], execution={"lease_owner": None, "lease_expires_at": None})

    async def _terminal(
        self,
        status: ExecutionStatus,
        events: Events,
        steps: list[StepState],
        *,
        output: Any = None,
        error: dict[str, Any] | None = None,
        by: str | None = None,
        statements: list[Any] | None = None,
    ) -> None:
        now = now_ms()
        counts = self.ledger.counts()
        extra: dict[str, Any] = {}
        if status is ExecutionStatus.COMPLETED:
            extra["output"] = self.masker.value(output)
        if error is not None:
            extra["error"] = error
        if status is ExecutionStatus.CANCELLED:
            extra["by"] = by
        duration = now - (self.row["started_at"] or now)
        events.append(fields.terminal(status, counts, duration, len(self.defn.steps), **extra))
        execution = {
            **counts,
            "status": status.value,
            "finished_at": now,
            "output": output,
            "error": error,
            "lease_owner": None,
            "lease_expires_at": None,
            "current_step": None,
        }
        statuses = CANCELLABLE if status is ExecutionStatus.CANCELLED else ACTIVE
        if self._asks_approval:
            statements = [*(statements or ()), approval_store.withdraw_pending(self.id, now)]
        self._ended = True
        await self._commit(events, execution=execution, steps=steps, statements=statements, statuses=statuses)
        metrics.EXECUTIONS_FINISHED.labels(status.value).inc()

    # -- helpers ------------------------------------------------------------------------

    async def _commit(
        self,
        events: Events,
        *,
        execution: dict[str, Any] | None = None,
        steps: list[StepState] | None = None,
        statements: list[Any] | None = None,
        statuses: tuple[str, ...] = ACTIVE,
        defer: bool = False,
    ) -> None:
        """One fenced write; ``defer`` for work a crash may redo (see ``writer.py``)."""
        rows = [s.row(self.id) for s in steps or ()]
        await self._fenced(
            self.writer.commit(
                events,
                execution=execution,
                steps=rows,
                statements=statements or (),
                statuses=statuses,
                defer=defer,
            )
        )

    async def _flush(self) -> None:
        await self._fenced(self.writer.flush())

    async def _fenced(self, write: Awaitable[None]) -> None:
        try:
            await write
        except (LeaseLost, Conflict) as exc:
            metrics.LEASES_LOST.inc()
            self.request(Stop.LOST)
            raise _Fenced from exc

    async def _cancel_tasks(self) -> None:
        tasks = list(self.tasks.values())
        self.tasks.clear()
        self._armed.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    def _deadline_passed(self) -> bool:
        left = self._time_left()
        return left is not None and left <= 0

    def _time_left(self) -> float | None:
        timeout = self.defn.settings.timeout_ms if self.defn.settings else None
        if not timeout:
            return None
        started: int = self.row["started_at"]
        return (started + timeout - now_ms()) / 1000

    def _scope(self) -> dict[str, Any]:
        return context.scope(self.row, self.ledger, self.secrets)

    def _context(self, step: StepDefinition, state: StepState) -> StepContext:
        return context.step_context(
            self.row, self.ledger, step, state, self.rt.settings, self.masker, self._commit
        )
