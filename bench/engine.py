"""Engine throughput and latency: executions of a 5-step no-op ``data_transform`` flow.

Every execution goes the real way: what ``POST /flows/{id}/execute`` does (flow
lookup, the organization's secrets, ``ExecutionService.start`` committing
``execution.queued``) — or the endpoint itself over in-process ASGI with
``--via api`` — then real ``Worker``s claim it under a lease and the runner
commits every transition through the journal (group commit).

Scenarios, per backend:

- ``sequential``: one execution at a time (start, wait for its terminal event).
- ``inflight-50``: 50 clients, each starting the next execution as soon as its
  previous one ends (closed loop: always 50 in flight). Throughput.
- ``paced-<R>/s``: open loop, executions started at a fixed rate R — half the
  issue's target (250/s) and half the throughput ``inflight-50`` measured.

Timing is taken in this process by a journal listener at commit time
(``time.perf_counter_ns()`` when the committed batch is handed to listeners),
not from the events' ``ts`` (whole milliseconds):

- ``step→next p50/p99``: commit of step k's ``step.completed`` → commit of step
  k+1's. A ``data_transform`` step commits ``step.started`` and
  ``step.completed`` in one transaction, so this interval is the whole
  per-step overhead: journal round trip, scheduling, rendering, the commit.
- ``accept→1st step p99``: commit of ``execution.queued`` (the 202) → commit of
  the first step (claim, ``execution.started``, first step).
- ``exec/s``: executions finished / wall time from the first start to the last
  terminal commit; ``steps/s`` = 5 x that.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import os
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bench
from bench import ms, percentile
from bench._proc import cpu_times, machine_ticks

TITLE = "bench/engine: 5-step no-op data_transform flow, every step committed"
STEPS = 5
TARGET_RATE = 500.0
FLOW: dict[str, Any] = {
    "name": "bench-engine",
    "steps": [
        {"id": f"s{i}", "type": "data_transform", "config": {"template": {"step": i}}}
        for i in range(1, STEPS + 1)
    ],
}
_TERMINAL = {"execution.completed", "execution.failed", "execution.cancelled"}


# -- observation ------------------------------------------------------------------------


@dataclass(slots=True)
class Trace:
    """Commit times (perf_counter_ns) of one execution's events."""

    queued: int = 0
    started: int = 0
    steps: list[int] = field(default_factory=list)
    terminal: int = 0
    status: str = ""


class Tracker:
    """A journal listener: commit times of every execution, and waiters for their ends."""

    def __init__(self) -> None:
        self.traces: dict[str, Trace] = {}
        self.batches = 0
        self.events = 0
        self._waiters: dict[str, asyncio.Future[None]] = {}

    def reset(self) -> None:
        self.traces.clear()
        self.batches = self.events = 0

    def __call__(self, events: Sequence[Any]) -> None:
        now = time.perf_counter_ns()
        self.batches += 1
        self.events += len(events)
        for event in events:
            trace = self.traces.get(event.execution_id)
            if trace is None:
                trace = self.traces[event.execution_id] = Trace()
            kind = event.type
            if kind == "step.completed":
                trace.steps.append(now)
            elif kind == "execution.queued":
                trace.queued = now
            elif kind == "execution.started":
                trace.started = trace.started or now
            elif kind in _TERMINAL:
                trace.terminal, trace.status = now, kind.split(".", 1)[1]
                waiter = self._waiters.pop(event.execution_id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)

    async def wait(self, execution_id: str, timeout: float) -> None:
        trace = self.traces.get(execution_id)
        if trace is not None and trace.terminal:
            return
        waiter = self._waiters.get(execution_id)
        if waiter is None:
            waiter = self._waiters[execution_id] = asyncio.get_running_loop().create_future()
        await asyncio.wait_for(asyncio.shield(waiter), timeout)


class LogTally:
    """Counts the engine's log events by message instead of printing them (errors are shown)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def install(self) -> None:
        import structlog

        structlog.configure(processors=[self], cache_logger_on_first_use=False)

    def __call__(self, _logger: Any, method: str, event: dict[str, Any]) -> Any:
        import structlog

        self.counts[str(event.get("event"))] += 1
        if method in ("error", "exception", "critical") and self.counts[str(event.get("event"))] <= 3:
            print(f"  engine {method}: {event.get('event')} {event.get('execution_id', '')}")
        raise structlog.DropEvent


def _metric(name: str) -> float:
    from tolstoy import metrics

    return metrics.REGISTRY.get_sample_value(name) or 0.0


# -- starting executions ----------------------------------------------------------------

Starter = Callable[[], Awaitable[str]]


async def _service_starter(services: Any, org_id: str, flow_id: str) -> Starter:
    """What the execute endpoint does, minus HTTP: flow lookup, secrets, ExecutionService.start."""
    from tolstoy.store import flows as flow_store

    async def start() -> str:
        flow = await flow_store.get(services.db, org_id, flow_id)
        secrets = await services.secrets.values(org_id)
        row, _ = await services.executions.start(org_id, flow, {}, secrets=secrets)
        return str(row["id"])

    return start


@contextlib.asynccontextmanager
async def _api_starter(services: Any, key: str, flow_id: str) -> Any:
    """The execute endpoint itself, over in-process ASGI (auth, routing, validation, JSON)."""
    import httpx

    from tolstoy.api.app import create_app

    async def existing() -> Any:
        return services

    app = create_app(existing)
    app.state.services = services
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://bench", headers=headers) as client:

        async def start() -> str:
            resp = await client.post(f"/api/v1/flows/{flow_id}/execute", json={})
            if resp.status_code != 202:
                raise RuntimeError(f"execute answered {resp.status_code}: {resp.text[:200]}")
            return str(resp.json()["executionId"])

        yield start


# -- scenarios --------------------------------------------------------------------------


@dataclass(slots=True)
class Outcome:
    scenario: str
    ids: list[str]
    began: int
    offered: float | None = None
    errors: int = 0


async def sequential(start: Starter, tracker: Tracker, n: int, timeout: float) -> Outcome:
    out = Outcome("sequential", [], time.perf_counter_ns())
    deadline = time.monotonic() + timeout
    for _ in range(n):
        if time.monotonic() > deadline:
            break
        execution_id = await start()
        out.ids.append(execution_id)
        await tracker.wait(execution_id, max(0.1, deadline - time.monotonic()))
    return out


async def closed_loop(start: Starter, tracker: Tracker, n: int, inflight: int, timeout: float) -> Outcome:
    out = Outcome(f"inflight-{inflight}", [], time.perf_counter_ns())
    remaining = n
    deadline = time.monotonic() + timeout

    async def client() -> None:
        nonlocal remaining
        while remaining > 0 and time.monotonic() < deadline:
            remaining -= 1
            execution_id = await start()
            out.ids.append(execution_id)
            await tracker.wait(execution_id, max(0.1, deadline - time.monotonic()))

    async with asyncio.TaskGroup() as group:
        for _ in range(inflight):
            group.create_task(client())
    return out


async def paced(start: Starter, tracker: Tracker, rate: float, seconds: float, timeout: float) -> Outcome:
    """Start executions at ``rate``/s for ``seconds`` (open loop), then wait for them all."""
    n = max(1, round(rate * seconds))
    out = Outcome(f"paced-{rate:.0f}/s", [], time.perf_counter_ns(), offered=rate)
    t0 = time.monotonic()
    starts: list[asyncio.Task[str]] = []
    for i in range(n):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        starts.append(asyncio.create_task(start()))
    out.ids = list(await asyncio.gather(*starts))
    deadline = time.monotonic() + timeout
    for execution_id in out.ids:
        try:
            await tracker.wait(execution_id, max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            out.errors += 1
    return out


# -- CPU ------------------------------------------------------------------------------


def _backends_of(database: str) -> list[str]:
    """PIDs of the PostgreSQL backends serving ``database`` (their process title names it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if title.startswith(b"postgres: ") and f" {database} ".encode() in title:
                found.append(entry.name)
    return found


class CpuMeter:
    """CPU spent while a scenario runs: by this process, by the PostgreSQL backends serving its
    database (sampled, as pooled connections come and go) and by the whole machine."""

    def __init__(self, services: Any) -> None:
        url = services.db.url
        self.database = None if services.db.is_sqlite else url.rsplit("/", 1)[1].split("?")[0]
        self._py = 0.0
        self._host = (0.0, 0.0)
        self._first: dict[str, float] = {}
        self._last: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    def _sample(self, initial: bool = False, rescan: bool = True) -> None:
        if self.database is None:
            return
        pids = _backends_of(self.database) if rescan else list(self._last)
        for pid in pids:
            used = sum(cpu_times(int(pid)))
            self._first.setdefault(pid, used if initial else 0.0)
            self._last[pid] = max(used, self._last.get(pid, 0.0))

    async def _sampler(self) -> None:
        for tick in itertools.count(1):
            await asyncio.sleep(0.25)
            self._sample(rescan=tick % 4 == 0)  # a /proc scan costs; new backends are rare

    async def start(self) -> None:
        self._py, self._host = time.process_time(), machine_ticks()
        self._sample(initial=True)
        self._task = asyncio.create_task(self._sampler())

    async def stop(self) -> tuple[float, float | None, float | None]:
        """(this process's CPU s, PostgreSQL's CPU s, machine busy % of all CPUs)."""
        py = time.process_time() - self._py
        if self._task is not None:
            self._task.cancel()
        self._sample()
        busy, total = machine_ticks()
        host = 100 * (busy - self._host[0]) / (total - self._host[1]) if total > self._host[1] else None
        if self.database is None or not Path("/proc").exists():
            return py, None, host
        pg = sum(last - self._first.get(pid, 0.0) for pid, last in self._last.items())
        return py, pg, host


class SqlCounter:
    """Round trips this process makes to the store (SQLAlchemy engine events): statements, and
    BEGIN, COMMIT and ROLLBACK of connections not in autocommit."""

    def __init__(self, services: Any) -> None:
        from sqlalchemy import event

        self.statements = self.boundaries = self.connects = 0
        self.kinds: Counter[str] | None = None
        # One listener per pool: an engine made by execution_options() fires its parent's events too.
        engines = {id(e.sync_engine.pool): e for e in (services.db._writer, services.db._reader)}
        for engine in engines.values():
            sync = engine.sync_engine
            event.listen(sync, "before_cursor_execute", self._statement)
            for name in ("begin", "commit", "rollback"):
                event.listen(sync, name, self._boundary)
            event.listen(sync.pool, "connect", self._connect)

    def _connect(self, *_: Any) -> None:
        self.connects += 1

    def _statement(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        self.statements += 1
        if self.kinds is not None:
            self.kinds[" ".join(statement.split()[:4])[:60]] += 1

    def _boundary(self, conn: Any) -> None:
        if conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
            self.boundaries += 1

    def snapshot(self) -> tuple[int, int, int]:
        return self.statements, self.boundaries, self.connects


# -- figures ----------------------------------------------------------------------------


def summarize(
    backend: str,
    out: Outcome,
    tracker: Tracker,
    cpu: tuple[float, float | None, float | None],
    sql: tuple[int, int, int],
) -> dict[str, Any]:
    traces = [tracker.traces.get(i, Trace()) for i in out.ids]
    done = [t for t in traces if t.terminal]
    completed = [t for t in done if t.status == "completed" and len(t.steps) == STEPS]
    gaps = [b - a for t in completed for a, b in zip(t.steps, t.steps[1:], strict=False)]
    first = [t.steps[0] - t.queued for t in completed if t.queued]
    e2e = [t.terminal - t.queued for t in completed if t.queued]
    end = max((t.terminal for t in done), default=out.began)
    wall = max(1e-9, (end - out.began) / 1e9)
    rate = len(done) / wall
    row: dict[str, Any] = {
        "backend": backend,
        "scenario": out.scenario,
        "executions": len(out.ids),
        "completed": len(completed),
        "wall s": round(wall, 2),
        "exec/s": round(rate, 1),
        "steps/s": round(rate * STEPS, 0),
        "step→next p50 ms": ms(percentile(gaps, 50)),
        "step→next p99 ms": ms(percentile(gaps, 99)),
        "accept→1st step p50 ms": ms(percentile(first, 50)),
        "accept→1st step p99 ms": ms(percentile(first, 99)),
        "accept→end p99 ms": ms(percentile(e2e, 99)),
        "events/txn": round(tracker.events / tracker.batches, 1) if tracker.batches else None,
        "txn/s": round(tracker.batches / wall, 0),
        "SQL stmts/exec": round(sql[0] / len(done), 1) if done else None,
        "SQL round trips/exec": round((sql[0] + sql[1]) / len(done), 1) if done else None,
        "new DB conns": sql[2],
        "py CPU %": round(100 * cpu[0] / wall, 0),
        "py CPU ms/exec": round(1000 * cpu[0] / len(done), 2) if done else None,
        "pg CPU ms/exec": round(1000 * cpu[1] / len(done), 2) if done and cpu[1] is not None else None,
        "host CPU %": round(cpu[2], 0) if cpu[2] is not None else None,
        "load avg": round(os.getloadavg()[0], 1),
    }
    if out.offered is not None and rate < 0.95 * out.offered:
        row["scenario"] += " (saturated)"
    return row


async def verify(services: Any, ids: list[str]) -> str:
    """Check in the store: every execution completed, with 5 completed step runs and 13 events
    (more events mean a worker lost a lease and another resumed the execution)."""
    from sqlalchemy import func, select

    from tolstoy.store.tables import events, executions, step_runs

    missing = steps_missing = extra_events = 0
    async with services.db.read() as conn:
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            done = await conn.scalar(
                select(func.count()).where(executions.c.id.in_(chunk), executions.c.status == "completed")
            )
            steps = await conn.scalar(
                select(func.count()).where(
                    step_runs.c.execution_id.in_(chunk), step_runs.c.status == "completed"
                )
            )
            evs = await conn.scalar(select(func.count()).where(events.c.execution_id.in_(chunk)))
            missing += len(chunk) - int(done or 0)
            steps_missing += len(chunk) * STEPS - int(steps or 0)
            extra_events += int(evs or 0) - len(chunk) * (3 + 2 * STEPS)
    problems = [
        f"{missing} not completed" if missing else "",
        f"{steps_missing} step runs missing" if steps_missing else "",
        f"{extra_events:+d} events (takeovers)" if extra_events else "",
    ]
    return ", ".join(p for p in problems if p) or "ok"


# -- running ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    sequential: int
    inflight_n: int
    inflight: int
    paced_s: float
    warmup: int
    timeout: float
    scenarios: tuple[str, ...]


def _plan(args: argparse.Namespace) -> Plan:
    quick = args.quick
    return Plan(
        sequential=args.sequential or (30 if quick else 200),
        inflight_n=args.n or (400 if quick else 2000),
        inflight=args.inflight,
        paced_s=args.paced_seconds or (2.0 if quick else 4.0),
        warmup=20 if quick else 100,
        timeout=120.0 if quick else 300.0,
        scenarios=tuple(args.scenario or ("sequential", "inflight", "paced-target", "paced-half")),
    )


async def _setup(services: Any) -> tuple[str, str, str]:
    from tolstoy.engine.definition import parse_definition
    from tolstoy.store import flows as flow_store
    from tolstoy.store import identity

    org, key = await identity.create_organization(services.db, "bench")
    definition = parse_definition(FLOW).model_dump(by_alias=True, exclude_none=True)
    flow = await flow_store.create(services.db, str(org["id"]), definition)
    return str(org["id"]), key, str(flow["id"])


async def _profiled(profile: Path | None, work: Awaitable[Outcome]) -> Outcome:
    if profile is None:
        return await work
    from pyinstrument import Profiler

    profiler = Profiler(async_mode="disabled", interval=0.0005)
    profiler.start()
    try:
        return await work
    finally:
        profiler.stop()
        profile.with_suffix(".txt").write_text(profiler.output_text(unicode=True, show_all=False))
        profile.with_suffix(".html").write_text(profiler.output_html())
        print(f"profile: {profile.with_suffix('.txt')}")


async def run_backend(
    backend: str, plan: Plan, args: argparse.Namespace, workdir: Path
) -> list[dict[str, Any]]:
    from tolstoy.config import Settings
    from tolstoy.services import Services

    rows: list[dict[str, Any]] = []
    tally = LogTally()
    tally.install()
    async with bench.temp_store(backend, workdir) as store:
        settings = Settings.from_env(bench.bench_env(store))
        services = await Services.open(settings, workers=args.workers, migrate_db=False)
        tracker = Tracker()
        services.journal.add_listener(tracker)
        try:
            org_id, key, flow_id = await _setup(services)
            async with contextlib.AsyncExitStack() as stack:
                if args.via == "api":
                    start = await stack.enter_async_context(_api_starter(services, key, flow_id))
                else:
                    start = await _service_starter(services, org_id, flow_id)
                await closed_loop(start, tracker, plan.warmup, min(plan.inflight, plan.warmup), plan.timeout)
                rows = await _scenarios(backend, plan, args, start, tracker, services, tally)
        finally:
            await services.close(grace_s=5.0)
    return rows


async def _scenarios(
    backend: str,
    plan: Plan,
    args: argparse.Namespace,
    start: Starter,
    tracker: Tracker,
    services: Any,
    tally: LogTally,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    capacity: float | None = None
    counter = SqlCounter(services)
    for name in plan.scenarios:
        tracker.reset()
        if args.sql_breakdown:
            counter.kinds = Counter()
        meter = CpuMeter(services)
        await meter.start()
        sql0 = counter.snapshot()
        logs0, lost0 = dict(tally.counts), _metric("tolstoy_leases_lost_total")
        if name == "sequential":
            out = await sequential(start, tracker, plan.sequential, plan.timeout)
        elif name == "inflight":
            profile = bench.RESULTS / f"engine-{backend}-inflight" if args.profile else None
            if profile is not None:
                bench.RESULTS.mkdir(parents=True, exist_ok=True)
            work = closed_loop(start, tracker, plan.inflight_n, plan.inflight, plan.timeout)
            out = await _profiled(profile, work)
        elif name in ("paced-target", "paced-half"):
            rate = TARGET_RATE / 2 if name == "paced-target" else (capacity or 0) / 2
            if rate < 1:
                continue
            out = await paced(start, tracker, rate, plan.paced_s, plan.timeout)
        else:
            raise SystemExit(f"unknown scenario {name!r}")
        sql1 = counter.snapshot()
        if counter.kinds is not None:
            _print_kinds(counter.kinds, len(out.ids))
        cpu = await meter.stop()
        await asyncio.sleep(0.05)  # let the runners return after their terminal commit
        sql = (sql1[0] - sql0[0], sql1[1] - sql0[1], sql1[2] - sql0[2])
        row = summarize(backend, out, tracker, cpu, sql)
        row["renewals failed"] = tally.counts["lease renewal failed"] - logs0.get("lease renewal failed", 0)
        row["leases lost"] = int(_metric("tolstoy_leases_lost_total") - lost0)
        row["check"] = await verify(services, out.ids)
        if name == "inflight":
            capacity = row["exec/s"]
        rows.append(row)
        gap = row["step→next p99 ms"]
        print(f"  {backend} {row['scenario']}: {row['exec/s']} exec/s, step→next p99 {gap} ms")
    return rows


def _print_kinds(kinds: Counter[str], executions: int) -> None:
    print("  statements per execution (through SQLAlchemy), by kind:")
    for kind, count in kinds.most_common(12):
        print(f"    {count / max(1, executions):6.2f}  {kind}")


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench engine", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--via", choices=["service", "api"], default="service", help="how executions start")
    parser.add_argument("--workers", type=int, default=1, help="in-process workers (concurrency 50 each)")
    parser.add_argument("-n", type=int, default=0, help="executions of the inflight scenario")
    parser.add_argument("--inflight", type=int, default=50)
    parser.add_argument("--sequential", type=int, default=0, help="executions of the sequential scenario")
    parser.add_argument("--paced-seconds", type=float, default=0.0)
    parser.add_argument(
        "--scenario",
        action="append",
        choices=["sequential", "inflight", "paced-target", "paced-half"],
        help="run only these (repeatable)",
    )
    parser.add_argument("--profile", action="store_true", help="pyinstrument the inflight scenario")
    parser.add_argument("--sql-breakdown", action="store_true", help="print statements per execution by kind")
    return parser.parse_args(argv)


async def main(argv: list[str]) -> list[dict[str, Any]]:
    args = _args(argv)
    plan = _plan(args)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tolstoy-bench-") as tmp:
        for backend in bench.selected_backends(args.backend):
            rows.extend(await run_backend(backend, plan, args, Path(tmp)))
    for row in rows:
        for key, value in row.items():
            if isinstance(value, float) and math.isnan(value):
                row[key] = None
    return rows
