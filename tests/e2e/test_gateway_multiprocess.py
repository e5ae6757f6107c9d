"""Scale-out for real: two ``serve --workers 0`` gateways and a ``worker`` process on PostgreSQL and Redis.

A client on gateway A watches an execution the worker runs; a client on gateway B
watches the whole organization. Redis (a private redis-server) is killed and
restarted in the middle. Both clients must end up with exactly the stored
event log: every event, once, in order.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.backends import PgTemplate, pg_url, require_postgres
from tests.e2e.conftest import REPO, TOLSTOY, free_port
from tests.e2e.workers import WorkerPool
from tests.integration.gateway_harness import RedisProcess, client
from tolstoy.config import Settings

SECRET = "e2e-shared-secret-key"
FLOW = """
name: scale-out-watched
steps:
  - id: before
    type: code
    config:
      source: |
        def main(context):
            for i in range(5):
                context.log(f"before {i}")
            return 1
  - id: wait
    type: delay
    config: {durationMs: 1500}
  - id: after
    type: code
    config:
      source: |
        def main(context):
            for i in range(5):
                context.log(f"after {i}")
                context.progress(i + 1, 5)
            return 2
"""


class Gateway:
    """``tolstoy serve --workers 0``: API and gateway only; stopped by PID."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home, self.env, self.port = home, env, free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        env = {**self.env, "HOME": str(self.home), "TOLSTOY_HOME": str(self.home)}
        with open(self.home / "serve.log", "wb") as log:
            args = [TOLSTOY, "serve", "--port", str(self.port), "--workers", "0", "--grace", "2"]
            self.proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        async with httpx.AsyncClient(timeout=2) as http:
            for _ in range(600):
                if self.proc.poll() is not None:
                    pytest.fail(f"gateway exited: {(self.home / 'serve.log').read_text()[-2000:]}")
                try:
                    if (await http.get(f"http://{self.address}/health")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)  # another process's readiness
        pytest.fail("gateway did not become healthy")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None


@pytest.fixture
def redis() -> Iterator[RedisProcess]:
    server = RedisProcess()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def database(pg_template: PgTemplate) -> AsyncIterator[str]:
    require_postgres()
    name = await pg_template.clone()
    try:
        yield pg_url(name)
    finally:
        await pg_template.drop(name)


async def test_a_client_on_one_gateway_watches_a_worker_through_a_redis_restart(
    database: str, redis: RedisProcess, tmp_path: Path
) -> None:
    bus_url = f"{redis.url}?prefix=e2e&health_interval=0.3&health_timeout=0.5"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "TOLSTOY_DATABASE_URL": database,
        "TOLSTOY_BUS_URL": bus_url,
        "TOLSTOY_SECRET_KEY": SECRET,
        "TOLSTOY_LOG_LEVEL": "warning",
        "TOLSTOY_ALLOW_PRIVATE_NETWORKS": "true",
    }
    a, b = Gateway(tmp_path / "a", env), Gateway(tmp_path / "b", env)
    settings = Settings.from_env(
        {**env, "TOLSTOY_HOME": str(tmp_path / "w"), "TOLSTOY_POLL_INTERVAL_MS": "100"}
    )
    workers = WorkerPool(settings, tmp_path)
    try:
        await a.start()  # first: it bootstraps the organization
        await b.start()
        workers.spawn()
        key = orjson.loads((a.home / "credentials").read_bytes())["apiKey"]
        await _watch_through_restart(a, b, key, redis)
    finally:
        for pid in workers.alive():
            workers.terminate(pid)
        a.stop()
        b.stop()


async def _watch_through_restart(a: Gateway, b: Gateway, key: str, redis: RedisProcess) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=f"http://{a.address}", headers=headers, timeout=10) as api:
        flow = await api.post("/api/v1/flows", content=FLOW, headers={"content-type": "application/yaml"})
        assert flow.status_code == 201, flow.text
        async with client(a.address, key) as on_a, client(b.address, key) as on_b:
            assert (await on_b.subscribe("executions"))["type"] == "subscribed"
            started = await api.post(f"/api/v1/flows/{flow.json()['id']}/execute", json={})
            execution_id = started.json()["executionId"]
            assert (await on_a.subscribe(f"executions:{execution_id}", since=0))["type"] == "subscribed"
            before = await on_a.events_until(
                lambda m: m["type"] == "step.started" and m["data"]["stepId"] == "wait"
            )
            redis.stop()
            await asyncio.sleep(0.5)  # the outage itself: Redis stays down while the worker goes on
            redis.start()
            seen_on_a = before + await on_a.events_until(_terminal)
            seen_on_b = await on_b.events_until(_terminal)
            stored = (
                await api.get(f"/api/v1/executions/{execution_id}/events", params={"limit": 1000})
            ).json()
    assert [e["data"] for e in seen_on_a] == stored["items"]
    assert [e["data"] for e in seen_on_b] == stored["items"]
    assert stored["items"][-1]["type"] == "execution.completed"


def _terminal(message: dict[str, Any]) -> bool:
    return message["type"] in ("execution.completed", "execution.failed", "execution.cancelled")
