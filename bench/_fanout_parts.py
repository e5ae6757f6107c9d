"""The parts of bench/fanout: the gateway process under test, the C load generator, the producer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bench
from bench._proc import cpu_times, free_port, rss_bytes, stop_process, write_syscalls

PROBES = 20
RAMP = 200
"""Handshakes in flight per client process (each costs the gateway an auth and two snapshot reads)."""


# -- the gateway under test -------------------------------------------------------------


class Profiler:
    """A profile of a gateway over one window (``--profile py-spy|perf``), stopped by its PID.

    ``py-spy``: Python stacks (speedscope JSON; time inside a C call, the kernel's included, is
    the Python line that made it). ``perf``: user and kernel stacks (``perf report`` text).
    """

    def __init__(self, tool: str, pid: int, name: str) -> None:
        self.tool, self.proc = tool, None
        slug = "".join(c if c.isalnum() else "-" for c in name)
        if tool == "py-spy":
            exe = Path(sys.executable).with_name("py-spy")
            self.out = bench.RESULTS / f"fanout-{slug}.speedscope.json"
            args = [str(exe), "record", "-p", str(pid), "-o", str(self.out), "-f", "speedscope", "-r", "250"]
            args += ["--nonblocking", "-d", "300"]
        else:
            exe = Path(shutil.which("perf") or "/usr/bin/perf")
            self.out = bench.RESULTS / f"fanout-{slug}.perf.data"
            args = [str(exe), "record", "-F", "999", "-g", "-p", str(pid), "-o", str(self.out)]
        if not exe.exists():
            print(f"  note: --profile {tool}: {exe} not found (py-spy: .venv/bin/pip install py-spy)")
            return
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGINT)  # both write their file on SIGINT
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            stop_process(self.proc, timeout=5)
        if self.tool == "perf":
            report = self.out.with_suffix(".txt")
            with open(report, "w") as fh:
                subprocess.run(
                    ["perf", "report", "-i", str(self.out), "--stdio", "--no-children", "--sort", "dso,sym"],
                    stdout=fh,
                    stderr=subprocess.DEVNULL,
                    timeout=300,
                )
            print(f"    profile: {report}")
        else:
            print(f"    profile: {self.out}")


_ANNOUNCEMENTS = ("Tolstoy is running", "Dashboard:", "API key", "Organization:", "Credentials for the CLI")


class Gateway:
    """``tolstoy serve --workers 0`` on a free loopback port, stopped by its PID."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopped = False

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, timeout: float = 30.0) -> None:
        exe = Path(sys.executable).with_name("tolstoy")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "tolstoy"]
        args = ["serve", "--workers", "0", "--host", "127.0.0.1", "--port", str(self.port), "--grace", "1"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([*cmd, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not await self._healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the gateway on port {self.port} did not start:\n{tail}")
            await asyncio.sleep(0.1)

    async def _healthy(self) -> bool:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 1)
        except (OSError, TimeoutError):
            return False
        try:
            writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            status = await asyncio.wait_for(reader.readline(), 2)
            return b" 200 " in status
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()

    def stop(self) -> None:
        if self.proc is not None and not self.stopped:
            self.stopped = True
            stop_process(self.proc, timeout=15)
            said = [
                line
                for line in self.log.read_text(errors="replace").splitlines()
                if line.strip() and not line.startswith(_ANNOUNCEMENTS)
            ]
            for line in said[-5:]:
                print(f"  gateway {self.port} logged: {line[:300]}")

    def cpu(self) -> tuple[float, float]:
        return cpu_times(self.pid)

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def writes(self) -> int:
        return write_syscalls(self.pid)


# -- the load generator -----------------------------------------------------------------


class Client:
    """One ``fanout_client`` process, driven by stdin commands (``stats [seq]``, ``quit``)."""

    def __init__(self, proc: asyncio.subprocess.Process, conns: int, probe_file: Path) -> None:
        self.proc, self.conns, self.probe_file = proc, conns, probe_file
        self.final: dict[str, Any] | None = None

    @classmethod
    async def start(
        cls,
        exe: Path,
        port: int,
        token: str,
        channel: str,
        conns: int,
        workdir: Path,
        *,
        probes: int = PROBES,
        since: int | None = None,
        max_seconds: float = 900.0,
    ) -> Client:
        probe_file = workdir / f"probes-{secrets.token_hex(4)}.txt"
        args = [str(exe), "--port", str(port), "--channel", channel]
        args += ["--conns", str(conns), "--probes", str(min(probes, conns)), "--ramp", str(RAMP)]
        args += ["--probe-out", str(probe_file), "--max-seconds", str(max_seconds)]
        if since is not None:
            args += ["--since", str(since)]
        with open(workdir / "clients.log", "ab") as log:
            proc = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                env={"PATH": "/usr/bin:/bin", "FANOUT_TOKEN": token},  # the key stays off the command line
            )
        return cls(proc, conns, probe_file)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        return sum(cpu_times(self.pid))

    async def _ask(self, line: str, timeout: float = 30.0) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not raw:
            raise RuntimeError(f"fanout_client {self.pid} exited (see clients.log)")
        reply: dict[str, Any] = json.loads(raw)
        return reply

    async def stats(self, target: int | None = None) -> dict[str, Any]:
        return await self._ask("stats" if target is None else f"stats {target}")

    async def wait_ready(self, timeout: float) -> dict[str, Any]:
        """Until every connection is subscribed or failed (bounded by ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            stats = await self.stats()
            done = stats["started"] == stats["conns"] and stats["pending"] == 0
            if done or time.monotonic() > deadline:
                return stats
            await asyncio.sleep(0.1)

    async def quit(self) -> dict[str, Any]:
        if self.final is None:
            self.final = await self._ask("quit")
            await asyncio.wait_for(self.proc.wait(), 30)
        return self.final

    async def kill(self) -> None:
        if self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            await asyncio.wait_for(self.proc.wait(), 10)

    def probes(self) -> list[tuple[int, int]]:
        """(seq, receive ns) of every probe delivery (after ``quit``)."""
        out: list[tuple[int, int]] = []
        with contextlib.suppress(OSError):
            for line in self.probe_file.read_text().splitlines():
                _, seq, ns = line.split()
                out.append((int(seq), int(ns)))
        return out


async def drained(clients: Sequence[Client], target: int, timeout: float) -> list[dict[str, Any]]:
    """Poll until every live connection of every client holds seq ``target`` (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        stats = [await c.stats(target) for c in clients]
        if all(s["reached"] == s["live"] for s in stats) or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.02)


# -- the producer -----------------------------------------------------------------------


@dataclass
class Producer:
    """Commits ``log`` events of one execution through this process's journal at a fixed rate."""

    services: Any
    org_id: str
    flow_id: str
    execution_id: str
    last_seq: int = 0
    commits: dict[int, int] = field(default_factory=dict)
    """seq → time.monotonic_ns() right after its commit (a journal listener, before the bus publish)."""

    def listen(self) -> None:
        self.services.journal.add_listener(self._on_commit)

    def _on_commit(self, events: Sequence[Any]) -> None:
        now = time.monotonic_ns()
        for event in events:
            if event.execution_id == self.execution_id:
                self.commits[event.seq] = now

    def write(self, n: int) -> Any:
        from tolstoy.store.journal import Write

        write = Write(self.execution_id, self.org_id, self.flow_id)
        for i in range(n):
            write.event("log", level="info", message=f"fan-out {self.last_seq + i + 1}", stepId="a")
        return write

    async def commit(self, n: int) -> None:
        events = await self.services.journal.commit(self.write(n))
        self.last_seq = events[-1].seq

    async def run(self, events: int, rate: float, per_commit: int, timeout: float) -> float:
        """Commit ``events`` at ``rate``/s, ``per_commit`` to a transaction; returns the seconds taken."""
        loop = asyncio.get_running_loop()
        interval = per_commit / rate
        began = loop.time()
        deadline = began + timeout
        for i in range(math.ceil(events / per_commit)):
            delay = began + i * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.commit(per_commit)
            if loop.time() > deadline:
                break
        return loop.time() - began


async def new_execution(services: Any, org_id: str, flow_id: str) -> Producer:
    """A running execution (seq 1: ``execution.started``) that no worker claims."""
    from tolstoy.store import executions as exec_store
    from tolstoy.store.journal import Write
    from tolstoy.timeutil import now_ms

    now = now_ms()
    row = exec_store.new_row(
        org_id, flow_id, 1, 1, now, status="running", run_after=now + 86_400_000, started_at=now
    )
    write = Write(row["id"], org_id, flow_id, create=row)
    write.event("execution.started", status="running", totalSteps=1)
    await services.journal.commit(write)
    producer = Producer(services, org_id, flow_id, row["id"], last_seq=1)
    producer.listen()
    return producer


async def finish(producer: Producer) -> None:
    from tolstoy.store.journal import Write

    write = Write(producer.execution_id, producer.org_id, producer.flow_id, execution={"status": "completed"})
    write.event(
        "execution.completed",
        status="completed",
        duration=1,
        output={},
        totalSteps=1,
        completedSteps=1,
        failedSteps=0,
        skippedSteps=0,
    )
    events = await producer.services.journal.commit(write)
    producer.last_seq = events[-1].seq
