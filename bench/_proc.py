"""What a benchmark reads of processes and the machine (/proc), and how it starts and stops them."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import bench

CLK_TCK = os.sysconf("SC_CLK_TCK")
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
CLIENT_SRC = Path(__file__).with_name("fanout_client.c")


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def rss_bytes(pid: int) -> int:
    return _field(Path(f"/proc/{pid}/status"), "VmRSS:") * 1024


def write_syscalls(pid: int) -> int:
    return _field(Path(f"/proc/{pid}/io"), "syscw:")


def _field(path: Path, name: str) -> int:
    """The number after ``name`` in a /proc file of ``name value`` lines (0 for a process gone)."""
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            if line.startswith(name):
                return int(line.split()[1])
    return 0


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])
    return total - idle, total


ProcessCpu = dict[int, tuple[str, float]]
SHARED_SERVICES = frozenset({"postgres", "redis-server", "kernel"})
"""Processes counted as part of the run (the store, the bus, kernel threads), not as other load."""


def cpu_by_process() -> ProcessCpu:
    """pid → (command name, CPU seconds) of every process of the machine (kernel threads: ``kernel``)."""
    out: ProcessCpu = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            head, _, tail = (entry / "stat").read_text().rpartition(")")
        except OSError:
            continue
        fields = tail.split()
        name = "kernel" if fields[1] in ("0", "2") else head.split("(", 1)[1]
        out[int(entry.name)] = (name, (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return out


def cpu_spent(before: ProcessCpu, after: ProcessCpu, labels: dict[int, str]) -> dict[str, float]:
    """CPU seconds between two readings by ``labels`` or command name (processes alive at both)."""
    spent: dict[str, float] = {}
    for pid, (name, seconds) in after.items():
        if pid in before:
            key = labels.get(pid, name)
            spent[key] = spent.get(key, 0.0) + seconds - before[pid][1]
    return spent


def other_load(spent: dict[str, float], labels: dict[int, str]) -> float:
    """CPU seconds of processes that are not part of this run (someone else's work on the machine)."""
    ours = {*labels.values(), *SHARED_SERVICES}
    return sum(v for k, v in spent.items() if k not in ours)


def describe(spent: dict[str, float], top: int = 7) -> str:
    ranked = sorted(((v, k) for k, v in spent.items() if v >= 0.01), reverse=True)[:top]
    return ", ".join(f"{k} {v:.2f}s" for v, k in ranked)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def redis_reachable() -> bool:
    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def compile_client() -> Path:
    """Build the load generator (once per source change) into bench/results/."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise RuntimeError(
            "bench/fanout needs a C compiler (gcc) to build its load generator bench/fanout_client.c; "
            "install gcc (apt-get install gcc) and run it again"
        )
    bench.RESULTS.mkdir(parents=True, exist_ok=True)
    exe = bench.RESULTS / "fanout_client"
    if not exe.exists() or exe.stat().st_mtime < CLIENT_SRC.stat().st_mtime:
        done = subprocess.run(
            [gcc, "-O2", "-Wall", "-o", str(exe), str(CLIENT_SRC)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(f"compiling {CLIENT_SRC} failed:\n{done.stderr}")
    return exe


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds (by PID)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
