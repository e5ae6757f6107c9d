"""A real ``tolstoy serve`` in a subprocess, on each backend, and a way to run the real CLI against it."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import pytest

from tests.backends import REDIS_URL, Backend, PgTemplate, pg_url, require_postgres, require_redis

TOLSTOY = str(Path(sys.executable).with_name("tolstoy"))
REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str

    def lines(self) -> list[str]:
        return self.stdout.splitlines()

    def json_lines(self) -> list[Any]:
        return [orjson.loads(line) for line in self.stdout.splitlines() if line.strip()]


class ServerProcess:
    """``tolstoy serve --port PORT --workers 1`` with its own home, on one store; stopped by PID."""

    def __init__(self, backend: Backend, home: Path) -> None:
        self.backend, self.home = backend, home
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def server_env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(self.home),
            "TOLSTOY_HOME": str(self.home),
            "TOLSTOY_DATABASE_URL": self.backend.database_url,
            "TOLSTOY_BUS_URL": self.backend.bus_url,
            "TOLSTOY_LEASE_TTL_MS": "1500",
            "TOLSTOY_LEASE_RENEW_MS": "250",
            "TOLSTOY_ALLOW_PRIVATE_NETWORKS": "true",
            "TOLSTOY_LOG_LEVEL": "warning",
        }

    def cli_env(self, **extra: str) -> dict[str, str]:
        """What a user's shell has: the data dir (so the CLI finds the credentials), a 120-column width."""
        return {"PATH": os.environ.get("PATH", ""), "HOME": str(self.home), "TOLSTOY_HOME": str(self.home),
                "COLUMNS": "120", "LANG": "C.UTF-8", **extra}  # fmt: skip

    def start(self) -> None:
        """Start and wait until ``/health`` answers (blocking: the server is another process)."""
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.home / f"server-{self.starts}.log", "wb")
        self.starts += 1
        args = [TOLSTOY, "serve", "--port", str(self.port), "--workers", "1", "--grace", "2"]
        self.proc = subprocess.Popen(
            args, env=self.server_env(), stdout=log, stderr=subprocess.STDOUT, cwd=REPO
        )
        log.close()
        self.wait_healthy()

    def wait_healthy(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2) as http:
            while True:
                if self.proc is not None and self.proc.poll() is not None:
                    pytest.fail(f"tolstoy serve exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    if http.get(f"{self.url}/health").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"tolstoy serve not healthy after {timeout}s:\n{self.log_tail()}")
                time.sleep(0.05)  # polling another process's readiness, not waiting for our own work

    def log_tail(self, lines: int = 40) -> str:
        logs = sorted(self.home.glob("server-*.log"))
        return "\n".join(logs[-1].read_text(errors="replace").splitlines()[-lines:]) if logs else ""

    @property
    def credentials(self) -> dict[str, Any]:
        data: dict[str, Any] = orjson.loads((self.home / "credentials").read_bytes())
        return data

    def kill(self) -> None:
        """SIGKILL: a crash, with no goodbye to the clients."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = None
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()
        self.proc = None

    async def cli(self, *args: str, timeout: float = 60, **env: str) -> Result:
        """Run ``tolstoy ARGS`` as a user would (stdout is a pipe, not a terminal)."""
        proc = await asyncio.create_subprocess_exec(
            TOLSTOY, *args, env=self.cli_env(**env), cwd=REPO,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            async with asyncio.timeout(timeout):
                out, err = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        return Result(proc.returncode or 0, out.decode(), err.decode())

    def api(self) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.credentials['apiKey']}"}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=10)


@pytest.fixture
def tolstoy_server(backend: Backend, tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of this test's own (on sqlite or postgres), for tests that kill or restart it."""
    server = ServerProcess(backend, tmp_path / "home")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def shared_server(request: pytest.FixtureRequest, pg_template: PgTemplate,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:  # fmt: skip
    """One server per backend for a whole module of tests that only talk to it (saves a start per test)."""
    home = tmp_path_factory.mktemp(f"tolstoy-{request.param}") / "home"
    database = None
    if request.param == "sqlite":
        backend = Backend("sqlite", f"sqlite+aiosqlite:///{home.parent / 'tolstoy.db'}", "memory://")
    else:
        require_postgres()
        database = _in_thread(pg_template.clone())
        backend = Backend("postgres", pg_url(database), _bus_url())
    server = ServerProcess(backend, home)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        if database is not None:
            _in_thread(pg_template.drop(database))


def _in_thread(work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` on an event loop of its own (sync fixtures may run while a test's loop exists)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, work).result()


def _bus_url() -> str:
    """Redis when the bus backend exists and Redis answers, else the in-process bus (one process here)."""
    try:
        import tolstoy.events.bus.redis  # noqa: F401
    except ModuleNotFoundError:
        return "memory://"
    require_redis()
    sep = "&" if "?" in REDIS_URL else "?"
    return f"{REDIS_URL}{sep}prefix=e2e{secrets.token_hex(4)}"
