"""Gateway fan-out: M WebSocket subscribers of one channel on one ``tolstoy serve --workers 0`` process.

Setup (PostgreSQL + Redis only): a throw-away PostgreSQL database (with
``synchronous_commit = off`` on it alone unless ``--fsync``: a commit is still
a real, ordered commit, but the producer does not wait for the disk), the
shared Redis on 127.0.0.1:6379 with a bus prefix of this run's own
(``redis://…/13?prefix=tolstoy-bench-fanout-<hex>:``; pub/sub ignores the
database number and creates no keys, so there is nothing to clean up), an
organization with an API key, and one running execution whose channel
``executions:<id>`` everyone watches. The gateway under test is a real
``tolstoy serve --workers 0`` subprocess (uvicorn with
``tolstoy.gateway.fastws``), started and stopped by PID. With ``--backend
sqlite`` there is nothing to measure (a gateway process never sees another
process's commits without the Redis bus): a note, and no row.

Producer: this process, with its own ``Services`` on the same database and bus,
commits ``log`` events of that execution through ``Journal.commit`` at R per
second on an absolute schedule: ``single`` (one event per commit, each awaited
before the next, so every event is its own transaction and bus message) or
``burst`` (10 events per commit at the same event rate: one bus message, so
the gateway writes the 10 frames to each socket at once). A journal listener
records ``time.monotonic_ns()`` of every seq right after its commit, before the
bus publish (CLOCK_MONOTONIC is one clock for every process of the machine).
``made/s`` is the rate the producer reached (one commit at a time costs it
about 1 ms of CPU, so ``single`` stops short of 1,000/s on 2 busy cores).

Load generator: ``bench/fanout_client.c``, compiled here with ``gcc -O2`` into
``bench/results/``: one epoll thread, nonblocking sockets, real handshakes and
masked client frames; it answers pings and checks on every connection that seq
goes up by exactly one (a hole or a repeat is ``loss``; a delivery conflated
under backpressure lists the seqs it stands for, counted as ``conflated``). 20
of its connections (probes, spread evenly over the connection order, so over
the gateway's fan-out order) record the CLOCK_MONOTONIC receive time of every
seq: ``p50/p99/max`` is receive - commit over them, in ms.

Per fan-out scenario: subscribe everyone (the connections of one M are reused
across its rows), warm up (0.5 s of events, drained), then the measured
window: ``events`` at the rate (at most ``--max-deliveries`` ÷ M of them), until
every connection holds the last seq (or ``--drain-timeout``). Over that window:

- ``server CPU s``: utime+stime of the gateway process (/proc/<pid>/stat); on
  loopback this includes the kernel's TCP receive path of the client side,
  which Linux runs in the sender's context. ``server µs/delivery`` = that ÷
  deliveries, the headline figure (targets: ≤ 9 µs single, ≤ 3 µs burst).
  ``server sys %`` is the kernel's share; ``writes/delivery`` the gateway's
  write syscalls (``syscw`` of /proc/<pid>/io) per delivery: 1.0 when every
  event is its own write, less when the gateway coalesced several events of a
  loop tick into one write (bursts, or a gateway running behind).
- ``deliveries/s``: deliveries ÷ (first measured commit → last delivery).
- ``generator``/``producer`` CPU s: the C client and this process; ``others``:
  processes that are not part of this run (the machine is shared); ``busy %``
  from /proc/stat (200 % = both cores): who was the limit. ``RSS MB``: VmRSS
  at the end of the window.

Other rows: ``idle`` (a fresh gateway: VmRSS with one connection, then with
10,000 subscribed idle connections: ``KB/conn``; server CPU over 5 idle
seconds), ``replay`` (100,000 stored events, committed in batches of 1,000
before any gateway starts; one client subscribes with ``since: 0`` and reads
up to the terminal event: ``deliv/s`` from its subscribe frame to its last
delivery), and ``2 nodes`` (two gateway processes, half of the 100 subscribers
on each, 100 events/s; both gateways' CPU and RSS added). The one-node rows
cross Redis too: the producer is another process, as a worker would be.

``pass``: ``yes`` when the row's target is met with no loss and no connection
closed, else ``no:`` and what missed; for a single row, ``coalesced`` when it
met the CPU target only because the gateway fell behind and wrote several
events per write (``writes/deliv`` < 0.9): not a single-write figure.
``--profile py-spy|perf`` profiles the gateway over each window into
bench/results/. Figures vary with the other load of the machine (``others``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bench
from bench import percentile
from bench._fanout_parts import (
    PROBES,
    Client,
    Gateway,
    Producer,
    Profiler,
    drained,
    finish,
    new_execution,
)
from bench._proc import (
    REDIS_HOST,
    REDIS_PORT,
    ProcessCpu,
    compile_client,
    cpu_by_process,
    cpu_spent,
    describe,
    machine_ticks,
    other_load,
    redis_reachable,
)

TITLE = "bench/fanout: one channel fanned out by `tolstoy serve --workers 0` (PostgreSQL + Redis)"
REDIS_DB = 13
BURST = 10
TARGET_US_SINGLE, TARGET_US_BURST = 9.0, 3.0
TARGET_P99_ONE_MS, TARGET_P99_TWO_MS = 5.0, 15.0
TARGET_KB_IDLE, TARGET_REPLAY = 20.0, 100_000.0
SINGLE_WRITES = 0.9
"""A single row measures one write per delivery only if the gateway made at least this many."""
FLOW = {
    "name": "bench-fanout",
    "steps": [{"id": "a", "type": "data_transform", "config": {"expression": "1"}}],
}
COLUMNS = (
    "scenario",
    "subscribers",
    "rate/s",
    "mode",
    "events",
    "produced/s",
    "window s",
    "deliveries",
    "deliveries/s",
    "loss",
    "closed",
    "conflated",
    "p50 ms",
    "p99 ms",
    "max ms",
    "server CPU s",
    "server µs/delivery",
    "server sys %",
    "writes/delivery",
    "server RSS MB",
    "KB/conn",
    "generator CPU s",
    "producer CPU s",
    "machine busy %",
    "others CPU s",
    "target",
    "pass",
)


# -- measuring --------------------------------------------------------------------------


@dataclass
class Snapshot:
    """Counters of every process at one instant."""

    at_ns: int
    server_cpu: tuple[float, float]
    server_writes: int
    generator_cpu: float
    producer_cpu: float
    machine: tuple[int, int]
    clients: list[dict[str, Any]]
    by_command: ProcessCpu


async def snapshot(
    gateways: Sequence[Gateway], clients: Sequence[Client], target: int | None = None
) -> Snapshot:
    stats = [await c.stats(target) for c in clients]
    user = sum(g.cpu()[0] for g in gateways)
    system = sum(g.cpu()[1] for g in gateways)
    own = os.times()
    return Snapshot(
        at_ns=time.monotonic_ns(),
        server_cpu=(user, system),
        server_writes=sum(g.writes() for g in gateways),
        generator_cpu=sum(c.cpu() for c in clients),
        producer_cpu=own.user + own.system,
        machine=machine_ticks(),
        clients=stats,
        by_command=cpu_by_process(),
    )


def run_labels(gateways: Sequence[Gateway], clients: Sequence[Client]) -> dict[int, str]:
    labels = {os.getpid(): "producer(this)"}
    labels.update({g.pid: "gateway" for g in gateways})
    labels.update({c.pid: "generator" for c in clients})
    return labels


def _sum(stats: list[dict[str, Any]], key: str) -> int:
    return sum(int(s[key]) for s in stats)


@dataclass
class Window:
    """One measured scenario, waiting for its latencies (known once the probes are written out)."""

    row: dict[str, Any]
    first_seq: int
    last_seq: int
    check: str


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def measured_row(
    name: str,
    m: int,
    rate: float,
    mode: str,
    events: int,
    produce_s: float,
    before: Snapshot,
    after: Snapshot,
    rss: int,
    labels: dict[int, str],
) -> dict[str, Any]:
    deliveries = _sum(after.clients, "deliveries") - _sum(before.clients, "deliveries")
    last_ns = max(int(s["last_ns"]) for s in after.clients)
    span_s = max(1e-9, (last_ns - before.at_ns) / 1e9)
    cpu = sum(after.server_cpu) - sum(before.server_cpu)
    sys_s = after.server_cpu[1] - before.server_cpu[1]
    loss = (
        _sum(after.clients, "gaps")
        - _sum(before.clients, "gaps")
        + _sum(after.clients, "dups")
        - _sum(before.clients, "dups")
        + _sum(after.clients, "behind")
    )
    closed = _sum(after.clients, "closed") - _sum(before.clients, "closed")
    conflated = _sum(after.clients, "conflated_seqs") - _sum(before.clients, "conflated_seqs")
    busy = (after.machine[0] - before.machine[0]) / max(1, after.machine[1] - before.machine[1])
    writes = after.server_writes - before.server_writes
    return {
        "scenario": name,
        "subscribers": m,
        "rate/s": rate,
        "mode": mode,
        "events": events,
        "produced/s": round(events / produce_s) if produce_s > 0 else None,
        "window s": round(span_s, 2),
        "deliveries": deliveries,
        "deliveries/s": round(deliveries / span_s),
        "loss": loss,
        "closed": closed,
        "conflated": conflated,
        "p50 ms": None,
        "p99 ms": None,
        "max ms": None,
        "server CPU s": round(cpu, 2),
        "server µs/delivery": _r(cpu * 1e6 / deliveries) if deliveries else None,
        "server sys %": round(100 * sys_s / cpu) if cpu else None,
        "writes/delivery": _r(writes / deliveries, 3) if deliveries else None,
        "server RSS MB": round(rss / 2**20, 1),
        "KB/conn": None,
        "generator CPU s": round(after.generator_cpu - before.generator_cpu, 2),
        "producer CPU s": round(after.producer_cpu - before.producer_cpu, 2),
        "machine busy %": round(100 * busy * (os.cpu_count() or 1)),
        "others CPU s": round(other_load(cpu_spent(before.by_command, after.by_command, labels), labels), 2),
        "target": "",
        "pass": "",
    }


def add_latency(window: Window, samples: list[tuple[int, int]], commits: dict[int, int]) -> None:
    lat = [
        (ns - commits[seq]) / 1e6
        for seq, ns in samples
        if window.first_seq <= seq <= window.last_seq and seq in commits
    ]
    row = window.row
    row["p50 ms"], row["p99 ms"] = _r(percentile(lat, 50)), _r(percentile(lat, 99))
    row["max ms"] = _r(max(lat)) if lat else None
    judge(row, window.check)


def verdict(misses: list[str]) -> str:
    """``yes``, or ``no:`` and what missed (``µs``, ``p99``, ``loss``, ``closed`` …)."""
    return "yes" if not misses else "no: " + ", ".join(misses)


def judge(row: dict[str, Any], check: str) -> None:
    """Fill ``target`` and ``pass`` for one of the issue's targets (every one also needs no loss and
    no closed connection)."""
    misses = [k for k in ("loss", "closed") if row[k]]
    us, p99 = row["server µs/delivery"], row["p99 ms"]
    if check in ("single", "single+p99"):
        row["target"] = f"≤ {TARGET_US_SINGLE:g} µs"
        if us is None or us > TARGET_US_SINGLE:
            misses.append("µs")
        if check == "single+p99":
            row["target"] += f", p99 ≤ {TARGET_P99_ONE_MS:g} ms"
            if p99 is None or p99 > TARGET_P99_ONE_MS:
                misses.append("p99")
        writes = row["writes/delivery"]
        if not misses and writes is not None and writes < SINGLE_WRITES:
            # The gateway fell behind and wrote several events per write: not the single-write case.
            row["pass"] = "coalesced"
            return
    elif check == "burst":
        row["target"] = f"≤ {TARGET_US_BURST:g} µs"
        if us is None or us > TARGET_US_BURST:
            misses.append("µs")
    elif check == "two-node":
        row["target"] = f"p99 ≤ {TARGET_P99_TWO_MS:g} ms"
        if p99 is None or p99 > TARGET_P99_TWO_MS:
            misses.append("p99")
    else:
        return
    row["pass"] = verdict(misses)


# -- the rig ----------------------------------------------------------------------------


@dataclass
class Rig:
    args: argparse.Namespace
    workdir: Path
    exe: Path
    env: dict[str, str]
    services: Any
    key: str
    producer: Producer
    gateways: list[Gateway] = field(default_factory=list)
    clients: list[Client] = field(default_factory=list)

    @property
    def channel(self) -> str:
        return f"executions:{self.producer.execution_id}"

    async def gateway(self) -> Gateway:
        gateway = Gateway(self.env, self.workdir / f"gateway-{len(self.gateways) + 1}.log")
        self.gateways.append(gateway)
        await gateway.start()
        return gateway

    async def client(self, gateway: Gateway, conns: int, **kwargs: Any) -> Client:
        client = await Client.start(
            self.exe,
            gateway.port,
            self.key,
            kwargs.pop("channel", self.channel),
            conns,
            self.workdir,
            **kwargs,
        )
        self.clients.append(client)
        return client

    async def connect(self, gateway: Gateway, conns: int, **kwargs: Any) -> Client:
        client = await self.client(gateway, conns, **kwargs)
        stats = await client.wait_ready(timeout=30 + conns / 100)
        if stats["live"] < conns:
            print(f"  note: {stats['live']} of {conns} connections subscribed ({stats['failed']} failed)")
        return client

    async def close_clients(self) -> None:
        for client in self.clients:
            await client.kill()
        self.clients.clear()

    def stop_gateways(self) -> None:
        for gateway in self.gateways:
            gateway.stop()
        self.gateways.clear()


async def fanout_window(
    rig: Rig,
    gateways: list[Gateway],
    clients: list[Client],
    m: int,
    rate: float,
    mode: str,
    name: str,
    check: str,
) -> Window:
    """Warm up, then one measured window of ``events`` at ``rate``."""
    args, producer = rig.args, rig.producer
    per_commit = 1 if mode == "single" else BURST
    demand_cap = args.max_deliveries // m
    events = max(per_commit, min(int(rate * args.window), demand_cap)) // per_commit * per_commit
    warm = max(per_commit, min(int(rate * 0.5), demand_cap // 4)) // per_commit * per_commit
    await producer.run(warm, rate, per_commit, timeout=10)
    await drained(clients, producer.last_seq, timeout=30)
    profiler = Profiler(args.profile, gateways[0].pid, name) if args.profile else None
    try:
        before = await snapshot(gateways, clients)
        first = producer.last_seq + 1
        produce_s = await producer.run(events, rate, per_commit, timeout=4 * args.window + 10)
        last = producer.last_seq
        await drained(clients, last, timeout=args.drain_timeout)
        after = await snapshot(gateways, clients, target=last)
    finally:
        if profiler is not None:
            profiler.stop()
    rss = sum(g.rss() for g in gateways)
    labels = run_labels(gateways, clients)
    row = measured_row(name, m, rate, mode, last - first + 1, produce_s, before, after, rss, labels)
    print(
        f"  {name}: {row['deliveries']:,} deliveries, {row['deliveries/s']:,}/s, "
        f"{row['server µs/delivery']} µs/delivery, loss {row['loss']}, closed {row['closed']}"
    )
    print(f"    CPU in the window: {describe(cpu_spent(before.by_command, after.by_command, labels))}")
    return Window(row, first, last, check)


async def fanout_group(
    rig: Rig, gateway: Gateway, m: int, plan: list[tuple[float, str]]
) -> list[dict[str, Any]]:
    """M connections, then one window per (rate, mode) of ``plan``; latencies once the probes are out."""
    began, cpu = time.monotonic(), sum(gateway.cpu())
    client = await rig.connect(gateway, m)
    spent = (sum(gateway.cpu()) - cpu) * 1000 / m
    print(
        f"  {m} subscribers connected in {time.monotonic() - began:.1f}s ({spent:.1f} ms of server CPU each)"
    )
    windows = []
    try:
        for rate, mode in plan:
            name = f"{mode} {_k(m)}x{_k(rate)}"
            check = "single+p99" if (mode == "single" and m == 100 and rate == 100) else mode
            windows.append(await fanout_window(rig, [gateway], [client], m, rate, mode, name, check))
        await client.quit()
    finally:
        await rig.close_clients()
    samples = client.probes()
    for window in windows:
        add_latency(window, samples, rig.producer.commits)
    return [w.row for w in windows]


async def two_nodes(rig: Rig, first: Gateway) -> dict[str, Any]:
    second = await rig.gateway()
    m, rate = 100, 100.0
    half = m // 2
    clients = [
        await rig.connect(first, half, probes=PROBES // 2),
        await rig.connect(second, half, probes=PROBES // 2),
    ]
    try:
        window = await fanout_window(
            rig, [first, second], clients, m, rate, "single", "2 nodes 100x100", "two-node"
        )
        for client in clients:
            await client.quit()
    finally:
        await rig.close_clients()
        second.stop()
        rig.gateways.remove(second)
    samples = [s for c in clients for s in c.probes()]
    add_latency(window, samples, rig.producer.commits)
    window.row["scenario"] = "2 nodes 100x100"
    return window.row


async def idle(rig: Rig, conns: int) -> dict[str, Any]:
    """RSS per idle subscribed connection on a fresh gateway, and its CPU while they idle."""
    gateway = await rig.gateway()
    try:
        await rig.connect(gateway, 1)
        await asyncio.sleep(1.0)
        base = gateway.rss()
        began, cpu_began = time.monotonic(), sum(gateway.cpu())
        crowd = await rig.connect(gateway, conns, probes=0)
        stats = await crowd.stats()
        connect_s, connect_cpu = time.monotonic() - began, sum(gateway.cpu()) - cpu_began
        await asyncio.sleep(2.0)
        before = await snapshot([gateway], [crowd])
        await asyncio.sleep(rig.args.idle_seconds)
        after = await snapshot([gateway], [crowd])
        labels = run_labels([gateway], rig.clients)
        rss = gateway.rss()
        live = int(stats["live"])
        print(
            f"  {live} idle connections in {connect_s:.1f}s ({connect_cpu * 1000 / max(1, live):.1f} ms of "
            f"server CPU each); RSS {base / 2**20:.0f} → {rss / 2**20:.0f} MB"
        )
        kb = (rss - base) / 1024 / max(1, live)
        cpu = sum(after.server_cpu) - sum(before.server_cpu)
        busy = (after.machine[0] - before.machine[0]) / max(1, after.machine[1] - before.machine[1])
        row: dict[str, Any] = dict.fromkeys(COLUMNS)
        row.update(
            {
                "scenario": f"idle {_k(conns)}",
                "subscribers": live,
                "window s": rig.args.idle_seconds,
                "deliveries": 0,
                "closed": int(after.clients[0]["closed"]),
                "server CPU s": round(cpu, 2),
                "server sys %": round(100 * (after.server_cpu[1] - before.server_cpu[1]) / cpu)
                if cpu
                else None,
                "server RSS MB": round(rss / 2**20, 1),
                "KB/conn": round(kb, 1),
                "generator CPU s": round(after.generator_cpu - before.generator_cpu, 2),
                "machine busy %": round(100 * busy * (os.cpu_count() or 1)),
                "others CPU s": round(
                    other_load(cpu_spent(before.by_command, after.by_command, labels), labels), 2
                ),
                "target": f"≤ {TARGET_KB_IDLE:g} KB/conn",
                "pass": verdict(
                    [*(["KB"] if kb > TARGET_KB_IDLE else []), *(["failed"] if live < conns else [])]
                ),
            }
        )
        return row
    finally:
        await rig.close_clients()
        gateway.stop()
        rig.gateways.remove(gateway)


async def replay(rig: Rig, gateway: Gateway, stored: Producer, events: int) -> dict[str, Any]:
    """One client reads the whole stored history of ``stored`` (``since: 0``) up to its terminal event."""
    target = stored.last_seq
    profiler = Profiler(rig.args.profile, gateway.pid, "replay") if rig.args.profile else None
    before = await snapshot([gateway], [])
    client = await rig.client(gateway, 1, channel=f"executions:{stored.execution_id}", since=0, probes=0)
    try:
        await client.wait_ready(timeout=30)
        stats = await drained([client], target, timeout=120)
        after = await snapshot([gateway], [client], target=target)
        labels = run_labels([gateway], [client])
        final = await client.quit()
    finally:
        if profiler is not None:
            profiler.stop()
        await rig.close_clients()
    received = int(final["deliveries"])
    span = max(1e-9, (int(final["last_ns"]) - int(final["sub_sent_ns"])) / 1e9)
    cpu = sum(after.server_cpu) - sum(before.server_cpu)
    rate = received / span
    busy = (after.machine[0] - before.machine[0]) / max(1, after.machine[1] - before.machine[1])
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(
        {
            "scenario": f"replay {_k(events)}",
            "subscribers": 1,
            "mode": "since 0",
            "events": target,
            "window s": round(span, 2),
            "deliveries": received,
            "deliveries/s": round(rate),
            "loss": int(final["gaps"]) + int(final["dups"]) + int(stats[0]["behind"]),
            "closed": int(final["closed"]),
            "conflated": int(final["conflated_seqs"]),
            "server CPU s": round(cpu, 2),
            "server µs/delivery": _r(cpu * 1e6 / received) if received else None,
            "server sys %": round(100 * (after.server_cpu[1] - before.server_cpu[1]) / cpu) if cpu else None,
            "writes/delivery": _r((after.server_writes - before.server_writes) / received, 3)
            if received
            else None,
            "server RSS MB": round(gateway.rss() / 2**20, 1),
            "generator CPU s": round(after.generator_cpu, 2),
            "machine busy %": round(100 * busy * (os.cpu_count() or 1)),
            "others CPU s": round(
                other_load(cpu_spent(before.by_command, after.by_command, labels), labels), 2
            ),
            "target": f"≥ {TARGET_REPLAY / 1000:g}k events/s",
        }
    )
    misses = [k for k in ("loss", "closed") if row[k]]
    row["pass"] = verdict([*(["rate"] if rate < TARGET_REPLAY else []), *misses])
    print(f"  replay: {received:,} events in {span:.2f}s = {rate:,.0f}/s, server {cpu:.2f} CPU s")
    return row


async def seed(services: Any, org_id: str, flow_id: str, events: int) -> Producer:
    """An execution with ``events`` stored log events and a terminal event (committed 1,000 at a time)."""
    stored = await new_execution(services, org_id, flow_id)
    began = time.monotonic()
    for done in range(0, events, 1000):
        await stored.commit(min(1000, events - done))
    await finish(stored)
    print(f"  stored {events:,} events in {time.monotonic() - began:.1f}s")
    return stored


def _k(n: float) -> str:
    n = int(n)
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


# -- running ----------------------------------------------------------------------------


async def run(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    from tolstoy import logs
    from tolstoy.config import Settings
    from tolstoy.services import Services
    from tolstoy.store import flows as flow_store
    from tolstoy.store import identity

    exe = compile_client()
    logs.configure("warning", "console")
    bus_url = (
        f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}?prefix=tolstoy-bench-fanout-{secrets.token_hex(4)}:"
    )
    rows: list[dict[str, Any]] = []
    async with bench.temp_store("postgres", workdir) as store:
        if not args.fsync:
            await _no_commit_flush(store)
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(store.home),
            **bench.bench_env(store, TOLSTOY_BUS_URL=bus_url),
        }
        services = await Services.open(Settings.from_env(env), workers=0, migrate_db=False)
        rig: Rig | None = None
        try:
            org, key = await identity.create_organization(services.db, "bench-fanout")
            flow = await flow_store.create(services.db, str(org["id"]), FLOW)
            stored = await seed(services, str(org["id"]), str(flow["id"]), args.replay_events)
            producer = await new_execution(services, str(org["id"]), str(flow["id"]))
            rig = Rig(args, workdir, exe, env, services, key, producer)
            if args.idle_conns:
                rows.append(await idle(rig, args.idle_conns))
            gateway = await rig.gateway()
            extra = [(m, rate, "single") for m, rate in args.single] + [
                (m, r, "burst") for m, r in args.burst
            ]
            for m in sorted({*args.subscribers, *(m for m, _, _ in extra)}):
                plan = [(rate, "single") for rate in args.rates] if m in args.subscribers else []
                plan += [(rate, mode) for em, rate, mode in extra if em == m]
                rows.extend(await fanout_group(rig, gateway, m, plan))
            if args.replay_events:
                rows.append(await replay(rig, gateway, stored, args.replay_events))
            if args.two_nodes:
                rows.append(await two_nodes(rig, gateway))
        finally:
            if rig is not None:
                await rig.close_clients()
                rig.stop_gateways()
            await services.close(grace_s=1.0)
            with contextlib.suppress(OSError):
                for line in (workdir / "clients.log").read_text(errors="replace").splitlines()[-5:]:
                    print(f"  generator logged: {line[:300]}")
    return [{k: row.get(k) for k in COLUMNS} for row in rows]


async def _no_commit_flush(store: bench.Store) -> None:
    """``synchronous_commit = off`` on the throw-away database only: a commit is still a commit
    (visible, in order, in the WAL) but the producer does not wait for the disk flush."""
    import asyncpg

    name = store.url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(host=bench.PG_HOST, port=bench.PG_PORT, user=bench.PG_USER, database=name)
    try:
        await conn.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    finally:
        await conn.close()


def _pair(text: str) -> tuple[int, float]:
    m, _, rate = text.partition("x")
    return int(m), float(rate)


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench fanout", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--subscribers", type=int, nargs="*", help="M of the single rows (100 1000 5000)")
    parser.add_argument("--rates", type=float, nargs="*", help="events/s of the single rows (100 1000)")
    parser.add_argument(
        "--burst",
        nargs="*",
        type=_pair,
        help="burst rows as MxRATE (100x1000 1000x100 1000x1000; quick 1000x1000)",
    )
    parser.add_argument(
        "--single",
        nargs="*",
        type=_pair,
        help="more single rows as MxRATE (default 1000x50: below saturation)",
    )
    parser.add_argument("--window", type=float, default=0.0, help="seconds of events per row (5; quick 1.5)")
    parser.add_argument("--max-deliveries", type=int, default=0, help="cap of M x events per row")
    parser.add_argument("--drain-timeout", type=float, default=60.0, help="seconds to wait for the last seq")
    parser.add_argument("--idle-conns", type=int, default=None, help="idle connections (10000; quick 2000)")
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--replay-events", type=int, default=None, help="stored events (100000; quick 20000)")
    parser.add_argument("--no-two-nodes", dest="two_nodes", action="store_false")
    parser.add_argument(
        "--profile",
        choices=["py-spy", "perf"],
        help="profile the gateway over each measured window (into bench/results/)",
    )
    parser.add_argument(
        "--fsync",
        action="store_true",
        help="keep synchronous_commit on (the producer then waits for the disk)",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.subscribers = (
        args.subscribers if args.subscribers is not None else ([100, 1000] if quick else [100, 1000, 5000])
    )
    args.rates = args.rates if args.rates is not None else [100.0, 1000.0]
    if args.single is None:
        args.single = [] if quick else [(1000, 50.0)]
    if args.burst is None:
        args.burst = [(1000, 1000.0)] if quick else [(100, 1000.0), (1000, 100.0), (1000, 1000.0)]
    args.window = args.window or (1.5 if quick else 5.0)
    args.max_deliveries = args.max_deliveries or (400_000 if quick else 2_500_000)
    args.idle_conns = args.idle_conns if args.idle_conns is not None else (2000 if quick else 10_000)
    args.replay_events = (
        args.replay_events if args.replay_events is not None else (20_000 if quick else 100_000)
    )
    return args


SUMMARY: tuple[tuple[str, dict[str, str]], ...] = (
    (
        "delivery",
        {
            "subscribers": "M",
            "rate/s": "rate/s",
            "events": "events",
            "produced/s": "made/s",
            "window s": "window s",
            "deliveries": "deliveries",
            "deliveries/s": "deliv/s",
            "loss": "loss",
            "closed": "closed",
            "conflated": "confl.",
        },
    ),
    (
        "latency (ms) and server cost",
        {
            "p50 ms": "p50",
            "p99 ms": "p99",
            "max ms": "max",
            "server CPU s": "CPU s",
            "server µs/delivery": "µs/deliv",
            "server sys %": "sys %",
            "writes/delivery": "writes/deliv",
            "server RSS MB": "RSS MB",
            "KB/conn": "KB/conn",
        },
    ),
    (
        "who was the limit (CPU s) and the verdict",
        {
            "server CPU s": "server",
            "generator CPU s": "generator",
            "producer CPU s": "producer",
            "others CPU s": "others",
            "machine busy %": "busy %",
            "target": "target",
            "pass": "pass",
        },
    ),
)
"""The readable form of the rows: column → short header, per table."""


def print_summary(rows: list[dict[str, Any]]) -> None:
    """The rows as three narrow tables, one line per scenario (the runner's turned table of this many
    scenarios is too narrow to read at 120 columns; bench/results/fanout.json has everything)."""
    from rich.console import Console
    from rich.table import Table

    from bench.__main__ import _cell

    console = Console(width=max(Console().width, 120))
    for title, columns in SUMMARY:
        table = Table(title=f"bench/fanout: {title}", title_justify="left")
        table.add_column("scenario", no_wrap=True)
        for header in columns.values():
            table.add_column(
                header, justify="left" if header in ("target", "pass") else "right", no_wrap=True
            )
        for row in rows:
            table.add_row(str(row["scenario"]), *(_cell(row.get(c)) for c in columns))
        console.print(table)


async def main(argv: list[str]) -> list[dict[str, Any]]:
    args = _args(argv)
    if "postgres" not in bench.selected_backends("postgres" if args.backend == "both" else args.backend):
        print(
            "note: bench/fanout runs on PostgreSQL + Redis only (a gateway process needs the Redis bus "
            "to see another process's commits); no rows"
        )
        return []
    if not redis_reachable():
        print(f"note: Redis is not reachable at {REDIS_HOST}:{REDIS_PORT}; bench/fanout needs it; no rows")
        return []
    with tempfile.TemporaryDirectory(prefix="tolstoy-fanout-") as tmp:
        rows = await run(args, Path(tmp))
    print_summary(rows)
    return rows
