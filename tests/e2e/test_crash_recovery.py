"""Guarantee 3 with real processes: SIGKILL a worker at random points; another finishes its work.

Each round starts a few executions of a mixed flow (HTTP calls to a local server that counts
idempotency keys, a transform), kills the worker holding one of them at a random moment —
before a step, during one, or between a commit and the next step — starts a replacement,
and checks every execution: completed, seq 1..n with no gap, one terminal event, every
completed step ran exactly once, an interrupted step at most twice, always with one key.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_settings
from tests.e2e.workers import WorkerPool, owner_pid
from tests.helpers import assert_log_is_whole
from tests.httpserver import LocalServer, Reply, Seen
from tolstoy.services import Services
from tolstoy.store import executions as exec_store
from tolstoy.store import flows as flow_store
from tolstoy.store import identity

ROUNDS = 12  # per backend: 24 kill trials in all
PER_ROUND = 3
HTTP_STEPS = ("fetch", "push", "notify")


def crash_flow(base: str) -> dict[str, Any]:
    def call(step_id: str) -> dict[str, Any]:
        return {
            "id": step_id,
            "type": "http_request",
            "retry": {"maxAttempts": 3, "baseDelayMs": 50},
            "config": {"method": "POST", "url": f"{base}/{step_id}", "json": {"step": step_id}},
        }

    transform = {
        "id": "shape",
        "type": "data_transform",
        "config": {"expression": "steps['fetch'].output.status"},
    }
    return {"name": "crashy", "steps": [call("fetch"), transform, call("push"), call("notify")]}


class CountingServer(LocalServer):
    """Counts requests per idempotency key and answers after a random short delay."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__()
        self.keys: Counter[str] = Counter()
        self.rng = rng
        for step in HTTP_STEPS:
            self.routes[f"/{step}"] = self.handle

    async def handle(self, seen: Seen) -> Reply:
        self.keys[seen.headers["idempotency-key"]] += 1
        await asyncio.sleep(self.rng.uniform(0.0, 0.15))
        return Reply(200, {"content-type": "application/json"}, b'{"ok": true}')


@pytest.fixture
async def rig(backend: Any, tmp_path: Path) -> AsyncIterator[tuple[Services, WorkerPool, dict[str, Any]]]:
    settings = make_settings(backend, tmp_path / "home").with_(
        lease_ttl_ms=1000, lease_renew_ms=200, poll_interval_ms=100
    )
    services = await Services.open(settings, workers=0)
    pool = WorkerPool(settings, tmp_path)
    org, _ = await identity.create_organization(services.db, "crash")
    try:
        yield services, pool, org
    finally:
        pool.stop_all()
        await services.close(0)


async def wait_finished(
    services: Services, org_id: str, ids: list[str], timeout: float = 40
) -> list[dict[str, Any]]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        rows = [await exec_store.get(services.db, org_id, i) for i in ids]
        if all(r["status"] in ("completed", "failed", "cancelled") for r in rows):
            return rows
        if loop.time() > deadline:
            pytest.fail(f"executions did not finish: {[(r['id'], r['status']) for r in rows]}")
        await asyncio.sleep(0.05)


def check_execution(execution_id: str, events: list[dict[str, Any]], keys: Counter[str]) -> None:
    assert_log_is_whole(events)
    assert events[-1]["type"] == "execution.completed", events[-1]
    for step in (*HTTP_STEPS, "shape"):
        mine = [e for e in events if e.get("stepId") == step]
        completed = [e for e in mine if e["type"] == "step.completed"]
        assert len(completed) == 1, f"{execution_id}/{step} completed {len(completed)} times"
        assert all(e["type"] != "step.started" for e in mine if e["seq"] > completed[0]["seq"]), (
            "re-run after done"
        )
        if step in HTTP_STEPS:
            runs = keys[f"{execution_id}:{step}"]
            assert 1 <= runs <= 2, f"{execution_id}/{step} ran {runs} times"


async def test_sigkilled_workers_executions_finish_elsewhere_exactly_once(rig: Any) -> None:
    services, pool, org = rig
    seed = int(os.environ.get("TOLSTOY_CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    server = CountingServer(rng)
    await server.start()
    try:
        flow = await flow_store.create(services.db, org["id"], crash_flow(f"http://127.0.0.1:{server.port}"))
        pool.spawn()
        pool.spawn()
        kills = resumed = 0
        for _ in range(ROUNDS):
            ids = [(await services.executions.start(org["id"], flow, {}))[0]["id"] for _ in range(PER_ROUND)]
            await asyncio.sleep(rng.uniform(0.05, 0.5))  # the random kill point, not a wait for work
            rows = [await exec_store.get(services.db, org["id"], i) for i in ids]
            owners = [p for r in rows if (p := owner_pid(r["lease_owner"])) in pool.alive()]
            if owners:
                pool.kill(rng.choice(owners))
                kills += 1
            pool.spawn()
            for row in await wait_finished(services, org["id"], ids):
                events = [
                    e
                    for _, body in await exec_store.event_bodies(services.db, row["id"])
                    for e in [json.loads(body)]
                ]
                check_execution(row["id"], events, server.keys)
                resumed += any(e["type"] == "execution.started" and e.get("resumed") for e in events)
        assert kills >= ROUNDS // 2, f"only {kills} kills happened (seed {seed})"
        assert resumed >= 1, f"no execution was ever resumed by another worker (seed {seed})"
    finally:
        await server.stop()


def code_flow(name: str, seconds: float) -> dict[str, Any]:
    source = f"import time\ndef main(context):\n    time.sleep({seconds})\n    return {seconds}\n"
    return {
        "name": name,
        "steps": [
            {"id": "work", "type": "code", "config": {"source": source, "timeoutMs": 120000}},
            {"id": "after", "type": "data_transform", "config": {"expression": "'done'"}},
        ],
    }


async def test_sigterm_finishes_running_steps_and_releases_the_rest_at_once(rig: Any) -> None:
    services, pool, org = rig
    short = await flow_store.create(services.db, org["id"], code_flow("short", 0.5))
    long = await flow_store.create(services.db, org["id"], code_flow("long", 60))
    pid = pool.spawn()
    quick_id = (await services.executions.start(org["id"], short, {}))[0]["id"]
    slow_id = (await services.executions.start(org["id"], long, {}))[0]["id"]

    async def both_running() -> bool:
        rows = [await exec_store.get(services.db, org["id"], i) for i in (quick_id, slow_id)]
        return all(r["status"] == "running" and r["lease_owner"] for r in rows)

    await _until(both_running, "both executions running on the worker")
    assert pool.terminate(pid, timeout=20) == 0
    quick = await exec_store.get(services.db, org["id"], quick_id)
    assert quick["status"] == "completed", "a step running at SIGTERM finishes within the grace period"
    slow = await exec_store.get(services.db, org["id"], slow_id)
    assert slow["status"] == "running" and slow["lease_owner"] is None, (
        "the rest is released, not left to expire"
    )
    pool.spawn()

    async def taken_over() -> bool:
        row = await exec_store.get(services.db, org["id"], slow_id)
        return row["lease_owner"] is not None

    await _until(taken_over, "another worker taking the released execution")
    await services.executions.cancel(org["id"], slow_id, by="test")
    (row,) = await wait_finished(services, org["id"], [slow_id])
    assert row["status"] == "cancelled"


async def _until(predicate: Any, what: str, timeout: float = 20) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
