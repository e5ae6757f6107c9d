"""Crash recovery with real processes: SIGKILL ``tolstoy worker``s at random points, and cancel.

Setup per backend: a throw-away store, a few ``tolstoy worker`` processes with the
default lease settings (``TOLSTOY_LEASE_*`` unset: renewed every 0.5 s, expiring
after 2 s), and a tiny HTTP server on 127.0.0.1 in this process that counts the
``Idempotency-Key`` of every request and answers after a random 0-150 ms. The
flow is four ``http_request`` steps to that server, so every step's run is seen.

A trial: start a few executions, wait a random 50-800 ms (a random point: before
a step, during its HTTP call, between a commit and the next step), SIGKILL the
worker that holds one of them, start a replacement, wait until they all end.
Three trials run side by side (``--lanes``) so that 100 kills take minutes, not ten.

Figures, over every execution of every trial:

- ``lost``: executions not terminal 30 s after their trial (must be 0).
- ``re-run completed``: a step that committed ``step.completed`` and was then
  requested again (requests with its key > the attempt it completed with, or
  more than one ``step.completed``) (must be 0).
- ``wrong terminal``: not ``completed``, not exactly one terminal event, or
  ``seq`` not 1..n (must be 0).
- ``kill→takeover``: SIGKILL → ``execution.started`` with ``resumed: true``
  (its ``ts``: whole ms, one machine's clock).
- ``kill→step restart``: SIGKILL → the next HTTP request of an interrupted
  execution at the server (this process's monotonic clock). Target p99 ≤ 3 s.
- ``cancel``: ``ExecutionService.cancel`` in this process (the API's call) for
  an execution whose step hangs on another process → the ``ts`` of its
  ``execution.cancelled``. Target p99 ≤ 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bench
from bench import percentile

TITLE = "bench/recovery: SIGKILLed workers (default lease settings) and cross-process cancel"
STEPS = ("a", "b", "c", "d")
TERMINAL = ("completed", "failed", "cancelled")
SETTLE_S = 30.0


# -- the counting server ----------------------------------------------------------------


@dataclass
class Hit:
    key: str
    at: float


@dataclass
class CountingServer:
    """HTTP/1.1 on 127.0.0.1: counts Idempotency-Keys, answers after a random delay; ``/hang``
    never answers (for cancel)."""

    rng: random.Random
    hits: list[Hit] = field(default_factory=list)
    keys: Counter[str] = field(default_factory=Counter)
    in_flight: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    port: int = 0
    _server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        key = ""
        try:
            async with asyncio.timeout(60):
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                path = head.split(" ", 2)[1]
                headers = dict(
                    (k.strip().lower(), v.strip())
                    for k, _, v in (line.partition(":") for line in head.split("\r\n")[1:] if line)
                )
                await reader.readexactly(int(headers.get("content-length", "0")))
                key = headers.get("idempotency-key", "")
                self.keys[key] += 1
                self.hits.append(Hit(key, time.monotonic()))
                self.in_flight[key.split(":", 1)[0]] += 1
                if path == "/hang":
                    await reader.read()  # until the client goes away
                    return
                await asyncio.sleep(self.rng.uniform(0.0, 0.15))
                body = b'{"ok": true}'
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, ValueError, IndexError):
            pass
        finally:
            if key:
                self.in_flight[key.split(":", 1)[0]] -= 1
            writer.close()

    def flow(self, name: str) -> dict[str, Any]:
        base = f"http://127.0.0.1:{self.port}"
        steps = [
            {"id": s, "type": "http_request", "config": {"method": "POST", "url": f"{base}/{s}", "json": {}}}
            for s in STEPS
        ]
        return {"name": name, "steps": steps}

    def hang_flow(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.port}/hang"
        step = {"id": "hang", "type": "http_request", "config": {"method": "POST", "url": url, "json": {}}}
        return {"name": "hang", "steps": [step]}


# -- worker processes -------------------------------------------------------------------


class Workers:
    """``tolstoy worker`` processes; each is stopped by its PID."""

    def __init__(self, env: dict[str, str], logs: Path, concurrency: int) -> None:
        self.env, self.logs, self.concurrency = env, logs, concurrency
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.spawned = 0

    def spawn(self) -> int:
        self.spawned += 1
        exe = Path(sys.executable).with_name("tolstoy")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "tolstoy"]
        with open(self.logs / f"worker-{self.spawned}.log", "wb") as log:
            proc = subprocess.Popen(
                [*cmd, "worker", "--concurrency", str(self.concurrency), "--grace", "2"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.procs[proc.pid] = proc
        return proc.pid

    def alive(self) -> list[int]:
        return [pid for pid, proc in self.procs.items() if proc.poll() is None]

    def kill(self, pid: int) -> None:
        proc = self.procs.pop(pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for pid, proc in list(self.procs.items()):
            try:
                proc.wait(timeout=8)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            del self.procs[pid]


def owner_pid(lease_owner: str | None) -> int | None:
    """The PID in a lease owner id (``host:pid:wrk_…``)."""
    if not lease_owner:
        return None
    with contextlib.suppress(ValueError, IndexError):
        return int(lease_owner.rsplit(":", 2)[1])
    return None


# -- trials -----------------------------------------------------------------------------


@dataclass
class Kill:
    pid: int
    at: float
    at_ms: int
    victims: list[str]
    during_step: int


@dataclass
class Rig:
    services: Any
    org_id: str
    server: CountingServer
    workers: Workers
    rng: random.Random
    started: list[str] = field(default_factory=list)
    kills: list[Kill] = field(default_factory=list)


async def _rows(rig: Rig, ids: list[str]) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from tolstoy.store.tables import executions

    async with rig.services.db.read() as conn:
        stmt = select(executions.c.id, executions.c.status, executions.c.lease_owner).where(
            executions.c.id.in_(ids)
        )
        return [dict(r._mapping) for r in await conn.execute(stmt)]


async def _leased(rig: Rig) -> list[dict[str, Any]]:
    """Every open execution that a worker holds."""
    from sqlalchemy import select

    from tolstoy.store.tables import executions

    async with rig.services.db.read() as conn:
        stmt = select(executions.c.id, executions.c.lease_owner).where(
            executions.c.lease_owner.is_not(None), executions.c.status.not_in(TERMINAL)
        )
        return [dict(r._mapping) for r in await conn.execute(stmt)]


async def _wait_terminal(rig: Rig, ids: list[str], timeout: float) -> list[str]:
    """Wait until every id is terminal; return those that are not by ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        open_ = [r["id"] for r in await _rows(rig, ids) if r["status"] not in TERMINAL]
        if not open_ or time.monotonic() > deadline:
            return open_
        await asyncio.sleep(0.05)


async def trial(rig: Rig, flow: dict[str, Any], per_trial: int) -> bool:
    """One SIGKILL trial; False when no execution was held by a live worker at the kill point."""
    ids = [(await rig.services.executions.start(rig.org_id, flow, {}))[0]["id"] for _ in range(per_trial)]
    rig.started.extend(ids)
    await asyncio.sleep(rig.rng.uniform(0.05, 0.8))  # the random kill point
    rows = [r for r in await _rows(rig, ids) if r["status"] not in TERMINAL]
    leased = await _leased(rig)
    alive = set(rig.workers.alive())  # from here to the kill nothing awaits: no other lane runs
    owners = sorted({p for r in rows if (p := owner_pid(r["lease_owner"])) in alive})
    killed = False
    if owners:
        pid = rig.rng.choice(owners)
        victims = [r["id"] for r in leased if owner_pid(r["lease_owner"]) == pid]  # this trial's and others'

        during = sum(1 for v in victims if rig.server.in_flight.get(v, 0) > 0)
        rig.workers.kill(pid)
        rig.kills.append(Kill(pid, time.monotonic(), time.time_ns() // 1_000_000, victims, during))
        killed = True
    rig.workers.spawn()
    await _wait_terminal(rig, ids, SETTLE_S)
    return killed


async def cancel_trial(rig: Rig, flow: dict[str, Any]) -> float | None:
    """Cancel an execution whose step hangs on a worker process; ms from request to its terminal event."""
    from tolstoy.store import executions as exec_store

    execution_id = (await rig.services.executions.start(rig.org_id, flow, {}))[0]["id"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # until its HTTP call hangs at the server
        if rig.server.in_flight.get(execution_id, 0) > 0:
            break
        await asyncio.sleep(0.02)
    else:
        return None
    await asyncio.sleep(rig.rng.uniform(0.0, 0.5))  # a random phase of the owner's renewal cycle
    requested = time.time_ns() // 1_000_000
    await rig.services.executions.cancel(rig.org_id, execution_id, by="bench")
    if await _wait_terminal(rig, [execution_id], 10):
        return None
    events = [json.loads(b) for _, b in await exec_store.event_bodies(rig.services.db, execution_id)]
    ends = [e for e in events if e["type"] == "execution.cancelled"]
    if not ends:
        return None
    from tolstoy.timeutil import parse_iso

    return float(parse_iso(ends[0]["timestamp"]) - requested)


# -- checking ---------------------------------------------------------------------------


@dataclass
class Verdict:
    lost: int = 0
    rerun_completed: int = 0
    wrong_terminal: int = 0
    interrupted_reruns: int = 0
    resumed: int = 0
    problems: list[str] = field(default_factory=list)


async def check(rig: Rig) -> tuple[Verdict, dict[str, list[dict[str, Any]]]]:
    from tolstoy.store import executions as exec_store

    verdict = Verdict()
    verdict.lost = len(await _wait_terminal(rig, rig.started, SETTLE_S))
    logs: dict[str, list[dict[str, Any]]] = {}
    for execution_id in rig.started:
        bodies = await exec_store.event_bodies(rig.services.db, execution_id)
        events = logs[execution_id] = [json.loads(b) for _, b in bodies]
        _check_log(execution_id, events, rig.server.keys, verdict)
    return verdict, logs


def _check_log(execution_id: str, events: list[dict[str, Any]], keys: Counter[str], verdict: Verdict) -> None:
    terminal = [e for e in events if e["type"] in {f"execution.{s}" for s in TERMINAL}]
    seqs = [e["seq"] for e in events]
    if not terminal:
        return  # counted as lost
    if (
        len(terminal) != 1
        or terminal[0]["type"] != "execution.completed"
        or seqs != list(range(1, len(events) + 1))
    ):
        verdict.wrong_terminal += 1
        verdict.problems.append(f"{execution_id}: {[e['type'] for e in terminal]}, seq {seqs[:3]}…")
    verdict.resumed += any(e["type"] == "execution.started" and e.get("resumed") for e in events)
    for step in STEPS:
        done = [e for e in events if e["type"] == "step.completed" and e.get("stepId") == step]
        runs = keys.get(f"{execution_id}:{step}", 0)
        if len(done) > 1 or (done and runs > done[0]["attempt"]):
            verdict.rerun_completed += 1
            verdict.problems.append(f"{execution_id}/{step}: completed {len(done)}x, requested {runs}x")
        verdict.interrupted_reruns += runs > 1


def latencies(
    rig: Rig, logs: dict[str, list[dict[str, Any]]], samples: list[dict[str, Any]] | None = None
) -> tuple[list[float], list[float]]:
    """(kill→takeover ms, kill→step restart ms) over every interrupted execution."""
    from tolstoy.timeutil import parse_iso

    by_execution: dict[str, list[float]] = defaultdict(list)
    for hit in rig.server.hits:
        by_execution[hit.key.split(":", 1)[0]].append(hit.at)
    takeover: list[float] = []
    restart: list[float] = []
    for kill in rig.kills:
        for victim in kill.victims:
            later = [t for t in by_execution.get(victim, []) if t > kill.at]
            if later:
                restart.append(1000 * (min(later) - kill.at))
            resumed = [
                parse_iso(e["timestamp"])
                for e in logs.get(victim, [])
                if e["type"] == "execution.started" and e.get("resumed")
            ]
            after = [t for t in resumed if t >= kill.at_ms]
            if after:
                takeover.append(float(min(after) - kill.at_ms))
            if samples is not None:
                samples.append(
                    {
                        "execution": victim,
                        "killed_pid": kill.pid,
                        "kill_at_ms": kill.at_ms,
                        "takeover_ms": min(after) - kill.at_ms if after else None,
                        "restart_ms": round(1000 * (min(later) - kill.at), 1) if later else None,
                        "killed_again": sum(1 for k in rig.kills if victim in k.victims) - 1,
                    }
                )
    return takeover, restart


# -- running ----------------------------------------------------------------------------


def _p(values: list[float], q: float) -> float | None:
    value = percentile(values, q)
    return None if value is None else round(value, 0)


async def run_backend(backend: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from tolstoy.config import Settings
    from tolstoy.services import Services
    from tolstoy.store import flows as flow_store
    from tolstoy.store import identity

    rng = random.Random(args.seed)
    async with bench.temp_store(backend, workdir) as store:
        env = {"PATH": "/usr/bin:/bin", "HOME": str(store.home), **bench.bench_env(store)}
        settings = Settings.from_env(env)
        services = await Services.open(settings, workers=0, migrate_db=False)
        server = CountingServer(rng)
        await server.start()
        workers = Workers(env, workdir, args.concurrency)
        try:
            org, _ = await identity.create_organization(services.db, "bench-recovery")
            rig = Rig(services, str(org["id"]), server, workers, rng)
            flow = await flow_store.create(services.db, rig.org_id, server.flow("crashy"))
            for _ in range(args.workers):
                workers.spawn()
            return await _measure(backend, args, rig, flow)
        finally:
            workers.stop_all()
            await server.stop()
            await services.close(grace_s=1.0)


async def _measure(backend: str, args: argparse.Namespace, rig: Rig, flow: dict[str, Any]) -> dict[str, Any]:
    from tolstoy.store import flows as flow_store

    began = time.monotonic()
    warm = [(await rig.services.executions.start(rig.org_id, flow, {}))[0]["id"] for _ in range(args.workers)]
    await _wait_terminal(rig, warm, 60)  # the workers are up
    rounds = 0
    deadline = began + args.max_minutes * 60

    async def lane() -> None:
        nonlocal rounds
        while len(rig.kills) < args.trials and rounds < 3 * args.trials and time.monotonic() < deadline:
            rounds += 1
            await trial(rig, flow, args.per_trial)
            if rounds % 20 == 0:
                print(f"  {backend}: {len(rig.kills)} kills after {rounds} rounds")

    await asyncio.gather(*(lane() for _ in range(args.lanes)))
    verdict, logs = await check(rig)
    samples: list[dict[str, Any]] = []
    takeover, restart = latencies(rig, logs, samples)
    bench.RESULTS.mkdir(parents=True, exist_ok=True)
    (bench.RESULTS / f"recovery-{backend}-samples.json").write_text(json.dumps(samples, indent=1))
    hang = await flow_store.create(rig.services.db, rig.org_id, rig.server.hang_flow())
    cancels = [c for _ in range(args.cancels) if (c := await cancel_trial(rig, hang)) is not None]
    for problem in verdict.problems[:10]:
        print(f"  problem: {problem}")
    return {
        "backend": backend,
        "kills": len(rig.kills),
        "executions": len(rig.started),
        "interrupted": sum(len(k.victims) for k in rig.kills),
        "mid-HTTP": sum(k.during_step for k in rig.kills),
        "resumed": verdict.resumed,
        "lost": verdict.lost,
        "re-run completed": verdict.rerun_completed,
        "wrong terminal": verdict.wrong_terminal,
        "steps run twice": verdict.interrupted_reruns,
        "kill→takeover p50 ms": _p(takeover, 50),
        "kill→takeover p99 ms": _p(takeover, 99),
        "kill→step restart p50 ms": _p(restart, 50),
        "kill→step restart p99 ms": _p(restart, 99),
        "restart ≤ 3 s": "yes" if restart and (_p(restart, 99) or 0) <= 3000 else "no",
        "cancels": len(cancels),
        "cancel p50 ms": _p(cancels, 50),
        "cancel p99 ms": _p(cancels, 99),
        "cancel ≤ 1 s": "yes" if cancels and (_p(cancels, 99) or 0) <= 1000 else "no",
        "minutes": round((time.monotonic() - began) / 60, 1),
        "load avg (1 min)": round(os.getloadavg()[0], 1),
    }


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench recovery", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--trials", type=int, default=0, help="SIGKILLs (default 100; --quick 12)")
    parser.add_argument("--per-trial", type=int, default=2, help="executions started per trial")
    parser.add_argument("--workers", type=int, default=4, help="worker processes alive at a time")
    parser.add_argument("--lanes", type=int, default=3, help="trials run side by side")
    parser.add_argument("--concurrency", type=int, default=10, help="--concurrency of each worker")
    parser.add_argument("--cancels", type=int, default=0, help="cancel trials (default 30; --quick 5)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--max-minutes", type=float, default=6.0, help="time bound of the kill trials")
    args = parser.parse_args(argv)
    args.trials = args.trials or (12 if args.quick else 100)
    args.cancels = args.cancels or (5 if args.quick else 30)
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    return args


async def main(argv: list[str]) -> list[dict[str, Any]]:
    args = _args(argv)
    print(f"  seed {args.seed} (--seed to replay the kill points)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="tolstoy-recovery-") as tmp:
        for backend in bench.selected_backends(args.backend):
            row = await run_backend(backend, args, Path(tmp))
            row["seed"] = args.seed
            rows.append(row)
    return rows
