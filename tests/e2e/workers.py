"""Real ``tolstoy worker`` processes for crash tests: start, find by execution, SIGKILL, stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tolstoy.config import Settings


def worker_env(settings: Settings) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(settings.home),
        "TOLSTOY_HOME": str(settings.home),
        "TOLSTOY_DATABASE_URL": settings.database_url,
        "TOLSTOY_BUS_URL": settings.bus_url,
        "TOLSTOY_SECRET_KEY": settings.secret_key,
        "TOLSTOY_LEASE_TTL_MS": str(settings.lease_ttl_ms),
        "TOLSTOY_LEASE_RENEW_MS": str(settings.lease_renew_ms),
        "TOLSTOY_POLL_INTERVAL_MS": str(settings.poll_interval_ms),
        "TOLSTOY_ALLOW_PRIVATE_NETWORKS": "true",
        "TOLSTOY_LOG_LEVEL": "warning",
    }


class WorkerPool:
    """Worker processes of one test; every one is stopped by PID at the end."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings, self.log_dir = settings, log_dir
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def spawn(self, concurrency: int = 10) -> int:
        log = open(self.log_dir / f"worker-{len(self.procs)}.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "tolstoy", "worker", "--concurrency", str(concurrency), "--grace", "2"],
            env=worker_env(self.settings),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs[proc.pid] = proc
        return proc.pid

    def kill(self, pid: int) -> None:
        proc = self.procs.pop(pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def terminate(self, pid: int, timeout: float = 15) -> int:
        proc = self.procs.pop(pid)
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=timeout)

    def alive(self) -> list[int]:
        return [pid for pid, proc in self.procs.items() if proc.poll() is None]

    def stop_all(self) -> None:
        for pid in list(self.procs):
            proc = self.procs.pop(pid)
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


def owner_pid(lease_owner: str | None) -> int | None:
    """The PID in a lease owner id (``host:pid:wrk_…``)."""
    if not lease_owner:
        return None
    return int(lease_owner.rsplit(":", 2)[1])
