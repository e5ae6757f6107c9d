"""Durable execution (issue 3): waits, approvals, pause/resume, retry, concurrency, across restarts."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.helpers import assert_log_is_whole, create_flow, events_of, start, types_of, wait_status
from tolstoy.config import Settings
from tolstoy.store import executions as exec_store
from tolstoy.store import identity


class Harness:
    """The app over services that can be restarted on the same store (a worker restart)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.services: Any = None
        self.client: httpx.AsyncClient | None = None

    async def open(self) -> None:
        from tolstoy.api.app import create_app
        from tolstoy.services import Services

        self.services = await Services.open(self.settings, workers=1)
        app = create_app(self._current)
        app.state.services = self.services
        self._app = app

    async def _current(self) -> Any:
        return self.services

    async def restart(self, grace_s: float = 0.0, workers: int = 1) -> None:
        from tolstoy.services import Services

        await self.services.close(grace_s)
        self.services = await Services.open(self.settings, workers=workers, migrate_db=False)
        self._app.state.services = self.services

    def api(self, key: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self._app)
        return httpx.AsyncClient(
            transport=transport, base_url="http://t", headers={"Authorization": f"Bearer {key}"}
        )


@pytest.fixture
async def harness(settings: Settings) -> AsyncIterator[Harness]:
    h = Harness(settings.with_(park_after_ms=200))
    await h.open()
    try:
        yield h
    finally:
        await h.services.close(0.5)


@pytest.fixture
async def client(harness: Harness) -> AsyncIterator[httpx.AsyncClient]:
    _, key = await identity.create_organization(harness.services.db, "durable")
    async with harness.api(key) as api:
        yield api


SLOW_THEN_DONE = """
name: {name}
steps:
  - id: first
    type: code
    config:
      source: |
        import time
        def main(context):
            time.sleep(0.6)
            return 1
  - id: second
    type: data_transform
    config: {{expression: "steps['first'].output + 1"}}
"""


async def row(harness: Harness, client: httpx.AsyncClient, execution_id: str) -> dict[str, Any]:
    me = (await client.get("/api/v1/me")).json()
    return await exec_store.get(harness.services.db, me["organization"]["id"], execution_id)


async def test_a_delay_holds_no_worker_and_survives_a_restart(
    harness: Harness, client: httpx.AsyncClient
) -> None:
    flow_id = await create_flow(
        client,
        """
name: nap
steps:
  - id: nap
    type: delay
    config: {durationMs: 1500}
  - id: after
    type: data_transform
    config: {expression: "steps['nap'].output.waitedMs >= 1500"}
""",
    )
    execution_id = await start(client, flow_id)
    parked = await wait_status(client, execution_id, "waiting")
    stored = await row(harness, client, execution_id)
    assert stored["lease_owner"] is None, "a parked execution holds no worker"
    assert parked["status"] == "waiting"
    await harness.restart()
    done = await wait_status(client, execution_id, {"completed", "failed"})
    assert done["status"] == "completed" and done["output"] == {"after": True}
    events = await events_of(client, execution_id)
    assert_log_is_whole(events)
    waiting = next(e for e in events if e["type"] == "execution.waiting")
    assert waiting["reason"] == "delay" and waiting["until"]
    assert any(e["type"] == "execution.started" and e.get("resumed") for e in events)


APPROVAL = """
name: approve-{suffix}
steps:
  - id: ask
    type: approval
    config: {{prompt: "Ship it?", timeoutMs: {timeout}}}
  - id: ship
    type: data_transform
    config: {{expression: "steps['ask'].output.decision"}}
"""


async def pending_approval(client: httpx.AsyncClient, execution_id: str) -> dict[str, Any]:
    await wait_status(client, execution_id, "waiting")
    items = (await client.get("/api/v1/approvals", params={"status": "pending"})).json()["items"]
    return next(a for a in items if a["executionId"] == execution_id)


async def wait_approval(client: httpx.AsyncClient, execution_id: str, timeout: float = 10) -> dict[str, Any]:
    """The pending approval request of ``execution_id``, once it exists."""
    async with asyncio.timeout(timeout):
        while True:
            items = (await client.get("/api/v1/approvals", params={"status": "pending"})).json()["items"]
            found = [a for a in items if a["executionId"] == execution_id]
            if found:
                return found[0]
            await asyncio.sleep(0.02)


async def test_an_approval_granted_after_a_restart_completes(
    harness: Harness, client: httpx.AsyncClient
) -> None:
    execution_id = await start(client, await create_flow(client, APPROVAL.format(suffix="g", timeout=60000)))
    approval = await pending_approval(client, execution_id)
    assert approval["prompt"] == "Ship it?"
    await harness.restart()
    granted = await client.post(f"/api/v1/approvals/{approval['id']}/grant", json={"comment": "go"})
    assert granted.status_code == 200 and granted.json()["status"] == "granted"
    again = await client.post(f"/api/v1/approvals/{approval['id']}/deny")
    assert again.status_code == 409
    done = await wait_status(client, execution_id, {"completed", "failed"})
    assert done["status"] == "completed" and done["output"] == {"ship": "granted"}
    events = await events_of(client, execution_id)
    assert_log_is_whole(events)
    assert ["approval.required", "approval.granted"] == [
        e["type"] for e in events if e["type"].startswith("approval.")
    ]


async def test_a_denied_approval_fails_the_step(harness: Harness, client: httpx.AsyncClient) -> None:
    execution_id = await start(client, await create_flow(client, APPROVAL.format(suffix="d", timeout=60000)))
    approval = await pending_approval(client, execution_id)
    await harness.restart()
    await client.post(f"/api/v1/approvals/{approval['id']}/deny", json={"comment": "not today"})
    done = await wait_status(client, execution_id, {"completed", "failed"})
    assert done["status"] == "failed"
    assert done["error"]["code"] == "approval_denied" and "not today" in done["error"]["message"]


@pytest.mark.parametrize("held", [False, True], ids=["parked", "held-by-a-runner"])
async def test_cancelling_withdraws_a_pending_approval(
    harness: Harness, client: httpx.AsyncClient, held: bool
) -> None:
    steps: list[dict[str, Any]] = [
        {"id": "ask", "type": "approval", "dependsOn": [], "config": {"prompt": "Ship it?"}}
    ]
    if held:  # a step still running keeps the execution on its worker
        source = "import time\ndef main(context):\n    time.sleep(30)\n"
        steps.append({"id": "busy", "type": "code", "dependsOn": [], "config": {"source": source}})
    execution_id = await start(client, await create_flow(client, {"name": f"ask-{held}", "steps": steps}))
    approval = await wait_approval(client, execution_id)
    assert ((await row(harness, client, execution_id))["lease_owner"] is not None) is held
    assert (await client.post(f"/api/v1/executions/{execution_id}/cancel")).status_code == 200
    await wait_status(client, execution_id, "cancelled", timeout=10)
    stored = (await client.get("/api/v1/approvals", params={"status": "cancelled"})).json()["items"]
    assert approval["id"] in [a["id"] for a in stored]
    pending = (await client.get("/api/v1/approvals", params={"status": "pending"})).json()["items"]
    assert approval["id"] not in [a["id"] for a in pending]
    late = await client.post(f"/api/v1/approvals/{approval['id']}/grant", json={})
    assert late.status_code == 409, late.text
    assert_log_is_whole(await events_of(client, execution_id))


async def test_an_approval_that_times_out_expires_and_fails(
    harness: Harness, client: httpx.AsyncClient
) -> None:
    execution_id = await start(client, await create_flow(client, APPROVAL.format(suffix="e", timeout=1200)))
    await pending_approval(client, execution_id)
    await harness.restart()
    done = await wait_status(client, execution_id, {"completed", "failed"})
    assert done["status"] == "failed" and done["error"]["code"] == "approval_expired"
    events = await events_of(client, execution_id)
    assert_log_is_whole(events)
    assert "approval.expired" in types_of(events)


async def test_pause_then_resume_after_a_restart(harness: Harness, client: httpx.AsyncClient) -> None:
    execution_id = await start(client, await create_flow(client, SLOW_THEN_DONE.format(name="pausable")))
    await wait_status(client, execution_id, "running")
    paused = await client.post(f"/api/v1/executions/{execution_id}/pause")
    assert paused.status_code == 200
    await wait_status(client, execution_id, "paused")
    detail = (await client.get(f"/api/v1/executions/{execution_id}")).json()
    assert detail["completedSteps"] == 1, "the running step finishes, no new step starts"
    assert (await row(harness, client, execution_id))["lease_owner"] is None
    await harness.restart()
    assert (await client.get(f"/api/v1/executions/{execution_id}")).json()["status"] == "paused"
    assert (await client.post(f"/api/v1/executions/{execution_id}/resume")).status_code == 200
    done = await wait_status(client, execution_id, {"completed", "failed"})
    assert done["status"] == "completed" and done["output"] == {"second": 2}
    events = await events_of(client, execution_id)
    assert_log_is_whole(events)
    assert types_of(events, "first").count("step.started") == 1, "a completed step never runs again"
    assert {"execution.paused", "execution.resumed"} <= set(types_of(events))


async def test_cancel_across_a_restart_stops_the_work(harness: Harness, client: httpx.AsyncClient) -> None:
    flow = {
        "name": "long",
        "steps": [
            {
                "id": "sleepy",
                "type": "code",
                "config": {
                    "source": "import time\ndef main(context):\n    time.sleep(60)\n",
                    "timeoutMs": 120000,
                },
            }
        ],
    }
    execution_id = await start(client, await create_flow(client, flow))
    await wait_status(client, execution_id, "running")
    await harness.restart(grace_s=0.0)
    await wait_status(client, execution_id, "running")
    resp = await client.post(f"/api/v1/executions/{execution_id}/cancel")
    assert resp.status_code == 200
    done = await wait_status(client, execution_id, {"cancelled", "completed", "failed"}, timeout=15)
    assert done["status"] == "cancelled"
    events = await events_of(client, execution_id)
    assert_log_is_whole(events)
    steps = (await client.get(f"/api/v1/executions/{execution_id}/steps")).json()["items"]
    assert steps[0]["status"] == "cancelled"


@pytest.mark.parametrize("parked_as", ["waiting", "paused"])
async def test_a_cancel_flag_left_on_a_let_go_execution_still_ends_it(
    harness: Harness, client: httpx.AsyncClient, parked_as: str
) -> None:
    """The race of a cancel request with a runner letting go (parking a long delay, pausing):
    the flag lands, the runner never sees it. The next claim must end the execution, not
    its timer (a minute away here)."""
    from sqlalchemy import update

    from tolstoy.store.tables import executions

    flow = {
        "name": f"nap-{parked_as}",
        "steps": [{"id": "nap", "type": "delay", "config": {"durationMs": 60000}}],
    }
    execution_id = await start(client, await create_flow(client, flow))
    await wait_status(client, execution_id, "waiting")
    if parked_as == "paused":
        assert (await client.post(f"/api/v1/executions/{execution_id}/pause")).status_code == 200
        await wait_status(client, execution_id, "paused")
    assert (await row(harness, client, execution_id))["lease_owner"] is None
    async with harness.services.db.write() as conn:  # what the API's flag write does, minus its signal
        await conn.execute(
            update(executions).where(executions.c.id == execution_id).values(cancel_requested=True)
        )
    done = await wait_status(client, execution_id, {"cancelled", "completed", "failed"}, timeout=10)
    assert done["status"] == "cancelled"
    events = await events_of(client, execution_id)
    assert_log_is_whole(events)
    assert events[-1]["type"] == "execution.cancelled"
    assert not any(e["type"] == "execution.started" and e.get("resumed") for e in events), (
        "a cancelled execution is ended, not resumed first"
    )
    steps = (await client.get(f"/api/v1/executions/{execution_id}/steps")).json()["items"]
    assert [s["status"] for s in steps] == ["cancelled"]


async def test_retry_from_the_failed_step_reuses_completed_outputs(client: httpx.AsyncClient) -> None:
    flow = {
        "name": "half",
        "steps": [
            {"id": "ok", "type": "data_transform", "config": {"expression": "'kept'"}},
            {"id": "bad", "type": "data_transform", "config": {"expression": "variables.flag.missing"}},
        ],
    }
    execution_id = await start(client, await create_flow(client, flow), variables={"flag": {}})
    assert (await wait_status(client, execution_id, {"completed", "failed"}))["status"] == "failed"
    retried = await client.post(f"/api/v1/executions/{execution_id}/retry", json={"fromFailedStep": True})
    assert retried.status_code == 202
    new_id = retried.json()["executionId"]
    done = await wait_status(client, new_id, {"completed", "failed"})
    assert done["retryOf"] == execution_id and done["status"] == "failed"
    events = await events_of(client, new_id)
    assert_log_is_whole(events)
    kept = [e for e in events if e.get("stepId") == "ok"]
    assert [e["type"] for e in kept] == ["step.completed"] and kept[0]["reusedFrom"] == execution_id
    assert types_of(events, "bad").count("step.started") == 1
    whole = await client.post(f"/api/v1/executions/{execution_id}/retry", json={})
    new_events = await events_of(client, whole.json()["executionId"]) if whole.status_code == 202 else []
    await wait_status(client, whole.json()["executionId"], {"completed", "failed"})
    new_events = await events_of(client, whole.json()["executionId"])
    assert types_of(new_events, "ok") == ["step.started", "step.completed"], "a plain retry runs everything"


async def test_a_flow_concurrency_limit_queues_the_rest_in_order(
    harness: Harness, client: httpx.AsyncClient
) -> None:
    flow_id = await create_flow(
        client,
        SLOW_THEN_DONE.format(name="one-at-a-time").replace(
            "steps:", "settings: {concurrency: 1}\nsteps:", 1
        ),
    )
    ids = [await start(client, flow_id) for _ in range(3)]
    await wait_status(client, ids[0], "running")
    await harness.restart()  # the limit and the order hold across a worker restart
    finished: list[dict[str, Any]] = [await wait_status(client, i, {"completed", "failed"}) for i in ids]
    assert all(d["status"] == "completed" for d in finished)
    spans = sorted((d["startedAt"], d["finishedAt"]) for d in finished)
    for (_, end), (begin, _) in itertools.pairwise(spans):
        assert begin >= end, f"two executions overlapped: {spans}"
    assert [d["id"] for d in sorted(finished, key=lambda d: d["startedAt"])] == ids, "they start in order"
    waited = [e for i in ids[1:] for e in await events_of(client, i) if e["type"] == "execution.waiting"]
    assert waited and all(e["reason"] == "concurrency" for e in waited)


async def test_a_retry_backoff_is_visible_on_the_execution(client: httpx.AsyncClient) -> None:
    flow = {
        "name": "visible-retry",
        "steps": [
            {
                "id": "net",
                "type": "http_request",
                "retry": {"maxAttempts": 2, "baseDelayMs": 3000, "jitter": 0},
                "config": {"url": "http://127.0.0.1:9/nothing-listens-here", "timeoutMs": 500},
            }
        ],
    }
    execution_id = await start(client, await create_flow(client, flow))

    async def retrying() -> dict[str, Any] | None:
        detail = (await client.get(f"/api/v1/executions/{execution_id}")).json()
        return detail["retrying"]

    state = None
    for _ in range(200):
        state = await retrying()
        if state:
            break
        await wait_status(client, execution_id, {"running", "waiting", "queued"})
    assert state is not None
    assert state["stepId"] == "net" and state["nextAttempt"] == 2 and state["nextAttemptAt"]
    assert state["lastError"]["category"] == "network"
