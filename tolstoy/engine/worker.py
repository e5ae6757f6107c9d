"""A worker: claims due executions, runs them, keeps their leases, obeys control flags.

Cancel and pause reach a runner two ways: directly when the API runs in the
same process (``signal``), and through the lease renewal, which reads the
execution's flags every ``lease_renew_ms`` — so a request made on any process
is seen within one renewal interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Sequence

import structlog

from tolstoy import ids, metrics
from tolstoy.engine.runner import ExecutionRunner, Stop
from tolstoy.engine.runtime import Runtime
from tolstoy.errors import TolstoyError
from tolstoy.events.types import Event, EventType
from tolstoy.store import executions as exec_store
from tolstoy.store.journal import Write
from tolstoy.store.queue import Claim, Queue
from tolstoy.timeutil import now_ms

log = structlog.get_logger(__name__)

_WAKE_TYPES = frozenset({EventType.EXECUTION_QUEUED, EventType.EXECUTION_RESUMED})


class Worker:
    """Runs up to ``concurrency`` executions at once in this process."""

    def __init__(self, runtime: Runtime, *, concurrency: int, worker_id: str | None = None) -> None:
        self.rt = runtime
        self.concurrency = concurrency
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{ids.new_id('wrk', 6)}"
        self.queue = Queue(runtime.db, self.id, runtime.settings.lease_ttl_ms)
        self.runners: dict[str, ExecutionRunner] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._loops: list[asyncio.Task[None]] = []
        runtime.journal.add_listener(self._on_commit)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._loops = [
            asyncio.create_task(self._claim_loop(), name=f"claim:{self.id}"),
            asyncio.create_task(self._renew_loop(), name=f"renew:{self.id}"),
        ]

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop claiming; give running executions ``grace_s``, then release the rest."""
        self._stopping = True
        self._wake.set()
        pending = list(self._tasks.values())
        if pending:
            _, still = await asyncio.wait(pending, timeout=grace_s)
            for execution_id, runner in list(self.runners.items()):
                runner.request(Stop.SHUTDOWN)
                log.info("releasing execution on shutdown", execution_id=execution_id)
            if still:
                await asyncio.wait(still, timeout=max(grace_s, 5.0))
        for loop in self._loops:
            loop.cancel()
        for loop in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop

    async def drain(self, timeout_s: float) -> None:
        """Wait until nothing runs here (tests, benchmarks)."""
        async with asyncio.timeout(timeout_s):
            while self._tasks:
                await asyncio.wait(list(self._tasks.values()))

    # -- control ------------------------------------------------------------------------

    def signal(self, execution_id: str, stop: Stop, by: str | None = None) -> bool:
        """Deliver a control request to a runner in this process; False if not running here."""
        runner = self.runners.get(execution_id)
        if runner is None:
            return False
        runner.request(stop, by)
        return True

    def wake(self) -> None:
        """Look for due executions now (a notification from another process)."""
        self._wake.set()

    def _on_commit(self, events: Sequence[Event]) -> None:
        if any(e.type in _WAKE_TYPES for e in events):
            self._wake.set()

    # -- loops --------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        poll = self.rt.settings.poll_interval_ms / 1000
        while not self._stopping:
            free = self.concurrency - len(self._tasks)
            taken = 0
            if free > 0:
                taken = await self._claim_once(free)
            if taken and taken == free:
                continue  # there may be more: look again at once
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(poll):
                    await self._wake.wait()

    async def _claim_once(self, free: int) -> int:
        try:
            result = await self.queue.claim(free, now_ms())
        except Exception as exc:
            log.warning("claim failed; retrying", error=str(exc))
            await asyncio.sleep(self.rt.settings.poll_interval_ms / 1000)
            return 0
        if result.reclaimed:
            metrics.RECONCILED.inc(result.reclaimed)
            log.info("reclaimed executions whose worker stopped renewing", count=result.reclaimed)
        secrets: dict[str, dict[str, str] | None] = {}
        for claim in result.claims:
            org_id = claim.row["org_id"]
            if org_id not in secrets:
                secrets[org_id] = await self._secrets(org_id)
            org_secrets = secrets[org_id]
            if org_secrets is not None:  # else its lease expires and a later claim tries again
                await self._start(claim, org_secrets)
        for row in result.newly_waiting:
            await self._tell_waiting(row)
        return len(result.claims)

    async def _tell_waiting(self, row: dict[str, object]) -> None:
        """Record once that an execution waits for a free slot of its flow's concurrency limit."""
        write = Write(
            str(row["id"]),
            str(row["org_id"]),
            str(row["flow_id"]),
            only_if_status=("queued",),
            only_if_unleased=True,
            execution={"wait_reason": "concurrency"},
        )
        write.event(EventType.EXECUTION_WAITING, status="queued", reason="concurrency")
        with contextlib.suppress(TolstoyError):
            await self.rt.journal.commit(write)

    async def _secrets(self, org_id: str) -> dict[str, str] | None:
        try:
            return await self.rt.load_secrets(org_id)
        except Exception:
            log.exception("could not load the organization's secrets", org_id=org_id)
            return None

    async def _start(self, claim: Claim, secrets: dict[str, str]) -> None:
        row = claim.row
        fresh = row["started_at"] is None and not row["completed_steps"]  # no step has a record yet
        try:
            step_rows = [] if fresh else await exec_store.load_step_rows(self.rt.db, claim.id)
            definition = self.rt.definition(row["flow_id"], row["flow_version"], claim.definition)
        except Exception:
            log.exception("could not load claimed execution; its lease will expire", execution_id=claim.id)
            return
        runner = ExecutionRunner(self.rt, row, definition, step_rows, secrets)
        self.runners[claim.id] = runner
        task = asyncio.create_task(self._run(runner), name=f"run:{claim.id}")
        self._tasks[claim.id] = task
        metrics.EXECUTIONS_RUNNING.inc()

    async def _run(self, runner: ExecutionRunner) -> None:
        try:
            await runner.run()
        except Exception:
            log.exception(
                "runner crashed; the lease will expire and another worker resumes", execution_id=runner.id
            )
        finally:
            self.runners.pop(runner.id, None)
            self._tasks.pop(runner.id, None)
            metrics.EXECUTIONS_RUNNING.dec()
            self._wake.set()

    async def _renew_loop(self) -> None:
        interval = self.rt.settings.lease_renew_ms / 1000
        while True:
            await asyncio.sleep(interval)
            held = list(self.runners)
            if not held:
                continue
            try:
                states = await self.queue.renew(held, now_ms())
            except Exception as exc:
                log.warning("lease renewal failed", error=str(exc))
                continue
            self._apply(held, {s.execution_id: s for s in states})

    def _apply(self, held: list[str], states: dict[str, object]) -> None:
        for execution_id in held:
            runner = self.runners.get(execution_id)
            if runner is None:
                continue
            state = states.get(execution_id)
            if state is None:
                runner.request(Stop.LOST)
            elif getattr(state, "cancel_requested", False):
                runner.request(Stop.CANCEL)
            elif getattr(state, "pause_requested", False):
                runner.request(Stop.PAUSE)
