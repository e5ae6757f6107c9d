"""Engine behaviour through the API on both backends: retries, criticality, timeouts, sandbox, masking."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.helpers import (
    assert_log_is_whole,
    create_flow,
    events_of,
    run_flow,
    start,
    types_of,
    wait_status,
)
from tests.httpserver import HANG, LocalServer, Reply, Seen


@pytest.fixture
async def server() -> AsyncIterator[LocalServer]:
    srv = LocalServer()
    await srv.start()
    yield srv
    await srv.stop()


def flaky(failures: int) -> Any:
    """A route that answers 500 ``failures`` times, then 200 with a JSON body."""
    count = {"n": 0}

    def route(seen: Seen) -> Reply:
        count["n"] += 1
        if count["n"] <= failures:
            return Reply(500, body=b"upstream broke")
        return Reply(200, {"content-type": "application/json"}, b'{"ok": true}')

    return route


async def test_a_retryable_failure_is_retried_with_the_same_idempotency_key(api, server: LocalServer) -> None:
    server.routes["/flaky"] = flaky(2)
    detail = await run_flow(
        api,
        f"""
name: retry
steps:
  - id: call
    type: http_request
    retry: {{maxAttempts: 4, baseDelayMs: 10, maxDelayMs: 20}}
    config: {{url: "{server.url("/flaky")}"}}
""",
    )
    assert detail["status"] == "completed"
    assert detail["output"]["call"]["json"] == {"ok": True}
    events = await events_of(api, detail["id"])
    assert_log_is_whole(events)
    assert types_of(events, "call") == ["step.started", "step.failed", "step.retrying"] * 2 + [
        "step.started",
        "step.completed",
    ]
    failed = [e for e in events if e["type"] == "step.failed"]
    assert all(e["willRetry"] and e["nextRetryAt"] and e["error"]["category"] == "network" for e in failed)
    assert [e["attempt"] for e in events if e["type"] == "step.started"] == [1, 2, 3]
    keys = {s.headers["idempotency-key"] for s in server.seen}
    assert keys == {f"{detail['id']}:call"}


async def test_a_non_retryable_failure_is_not_retried(api, server: LocalServer) -> None:
    server.routes["/missing"] = lambda seen: Reply(404)
    detail = await run_flow(
        api,
        f"""
name: no-retry
steps:
  - id: call
    type: http_request
    retry: {{maxAttempts: 5, baseDelayMs: 10}}
    config: {{url: "{server.url("/missing")}"}}
""",
    )
    assert detail["status"] == "failed"
    assert detail["error"]["category"] == "validation"
    assert len(server.seen) == 1


async def test_a_non_critical_failure_skips_dependants_and_the_flow_goes_on(api) -> None:
    detail = await run_flow(
        api,
        """
name: non-critical
steps:
  - id: fragile
    type: code
    critical: false
    config: {source: "def main(context):\\n    raise ValueError('boom')\\n"}
  - id: needs-fragile
    type: data_transform
    config: {expression: "1"}
  - id: independent
    type: data_transform
    dependsOn: []
    config: {expression: "'still here'"}
""",
    )
    assert detail["status"] == "completed"
    assert detail["failedSteps"] == 1 and detail["skippedSteps"] == 1 and detail["completedSteps"] == 1
    events = await events_of(api, detail["id"])
    assert_log_is_whole(events)
    failed = next(e for e in events if e["type"] == "step.failed")
    assert failed["error"] == {
        "message": "ValueError: boom",
        "code": "code_error",
        "category": "system",
        "retryable": False,
    }
    skipped = next(e for e in events if e["type"] == "step.skipped")
    assert skipped["stepId"] == "needs-fragile" and "fragile" in skipped["reason"]


async def test_a_critical_failure_fails_the_execution_once(api) -> None:
    detail = await run_flow(
        api,
        """
name: critical
steps:
  - id: explode
    type: code
    config: {source: "def main(context):\\n    return 1 / 0\\n"}
  - id: never
    type: data_transform
    config: {expression: "1"}
""",
    )
    assert detail["status"] == "failed"
    assert detail["error"]["code"] == "code_error"
    events = await events_of(api, detail["id"])
    assert_log_is_whole(events)
    assert "never" not in {e.get("stepId") for e in events}


async def test_a_template_that_fails_at_run_time_fails_the_step_as_validation(api) -> None:
    detail = await run_flow(
        api,
        """
name: bad-template
steps:
  - id: t
    type: data_transform
    config: {template: {x: "{{ variables.nope.deeper }}"}}
""",
    )
    assert detail["status"] == "failed"
    assert detail["error"]["category"] == "validation"
    assert "nope" in detail["error"]["message"]


@pytest.mark.parametrize(
    ("source", "category", "code"),
    [
        ("def main(context):\n    while True:\n        pass\n", "timeout", "code_timeout"),
        (
            "def main(context):\n    x = bytearray(1024 * 1024 * 1024)\n    return len(x)\n",
            "system",
            "memory_limit",
        ),
        ("import os\ndef main(context):\n    os._exit(3)\n", "system", "code_crashed"),
    ],
)
async def test_code_that_misbehaves_fails_its_step_and_the_worker_lives_on(
    api, source: str, category: str, code: str
) -> None:
    flow = {
        "name": "sandbox",
        "steps": [
            {"id": "c", "type": "code", "config": {"source": source, "timeoutMs": 700, "memoryMb": 128}}
        ],
    }
    detail = await run_flow(api, flow)
    assert detail["status"] == "failed"
    assert (detail["error"]["category"], detail["error"]["code"]) == (category, code)
    after = await run_flow(
        api,
        {"name": "after", "steps": [{"id": "a", "type": "data_transform", "config": {"expression": "42"}}]},
    )
    assert after["status"] == "completed" and after["output"] == {"a": 42}


async def test_a_step_timeout_is_a_timeout_failure(api) -> None:
    detail = await run_flow(
        api,
        """
name: slow-step
steps:
  - id: slow
    type: code
    timeoutMs: 300
    config: {source: "import time\\ndef main(context):\\n    time.sleep(30)\\n"}
""",
    )
    assert detail["status"] == "failed"
    assert detail["error"]["category"] == "timeout"


async def test_the_flow_timeout_fails_the_execution(api) -> None:
    detail = await run_flow(
        api,
        """
name: slow-flow
settings: {timeoutMs: 400}
steps:
  - id: slow
    type: code
    config: {source: "import time\\ndef main(context):\\n    time.sleep(30)\\n"}
""",
    )
    assert detail["status"] == "failed"
    assert detail["error"]["code"] == "flow_timeout"
    assert_log_is_whole(await events_of(api, detail["id"]))


async def test_code_progress_and_logs_become_events_in_order(api) -> None:
    detail = await run_flow(
        api,
        """
name: progress
steps:
  - id: sync
    type: code
    config:
      source: |
        def main(context):
            for day in range(1, 4):
                context.progress(day, 3, f"processing day {day} of 3")
                context.log(f"synced day {day}", level="info", day=day)
            return {"days": 3}
""",
    )
    assert detail["status"] == "completed"
    events = await events_of(api, detail["id"])
    progress = [e for e in events if e["type"] == "execution.progress"]
    assert [(p["current"], p["total"], p["message"]) for p in progress] == [
        (d, 3, f"processing day {d} of 3") for d in (1, 2, 3)
    ]
    logs = (await api.get(f"/api/v1/executions/{detail['id']}/logs", params={"levels": "info"})).json()[
        "items"
    ]
    assert [(entry["message"], entry["metadata"]) for entry in logs] == [
        (f"synced day {d}", {"day": d}) for d in (1, 2, 3)
    ]
    assert detail["progress"]["percent"] == 100.0


async def test_independent_steps_run_concurrently(api, server: LocalServer) -> None:
    both_arrived = asyncio.Event()
    arrived: list[str] = []

    def barrier(seen: Seen) -> Reply:
        arrived.append(seen.path)
        if len(arrived) >= 2:
            both_arrived.set()
        return HANG if len(arrived) < 2 else Reply(200)

    server.routes["/a"] = barrier
    server.routes["/b"] = barrier
    # If the steps ran one after the other, /a would hang until its timeout and fail the flow.
    flow = f"""
name: parallel
steps:
  - id: a
    type: http_request
    config: {{url: "{server.url("/a")}", timeoutMs: 3000}}
    critical: false
  - id: b
    type: http_request
    dependsOn: []
    config: {{url: "{server.url("/b")}"}}
"""
    execution_id = await start(api, await create_flow(api, flow))
    await asyncio.wait_for(both_arrived.wait(), 10)
    detail = await wait_status(api, execution_id, {"completed", "failed"})
    assert detail["status"] == "completed"


async def test_secrets_render_in_steps_but_are_masked_everywhere(api, server: LocalServer) -> None:
    secret = "s3cr3t-token-value-123"
    assert (await api.put("/api/v1/secrets/token", json={"value": secret})).status_code == 204
    server.routes["/echo"] = lambda seen: Reply(
        200, {"content-type": "application/json"}, b'{"auth": "%s"}' % seen.headers["authorization"].encode()
    )
    detail = await run_flow(
        api,
        f"""
name: secret-use
steps:
  - id: call
    type: http_request
    config: {{url: "{server.url("/echo")}", headers: {{Authorization: "Bearer {{{{ secrets.token }}}}"}}}}
  - id: leak
    type: code
    config:
      source: |
        def main(context):
            context.log("token is " + context.steps["call"]["json"]["auth"])
            raise RuntimeError(context.steps["call"]["json"]["auth"])
""",
    )
    assert server.seen[0].headers["authorization"] == f"Bearer {secret}"
    assert detail["status"] == "failed"
    everything = str(await events_of(api, detail["id"]))
    everything += str((await api.get(f"/api/v1/executions/{detail['id']}")).json())
    everything += str((await api.get(f"/api/v1/executions/{detail['id']}/steps")).json())
    everything += str((await api.get("/api/v1/secrets")).json())
    assert secret not in everything
    assert "***" in everything


CHAIN = {
    "name": "chain",
    "steps": [{"id": f"s{i}", "type": "data_transform", "config": {"expression": str(i)}} for i in range(4)],
}


def _batches(services: Any, flow_id: str) -> list[list[str]]:
    """Every committed batch's event types of ``flow_id``'s executions, as the journal hands them out."""
    seen: list[list[str]] = []

    def listener(events: Any) -> None:
        mine = [str(e.type) for e in events if e.flow_id == flow_id]
        if mine:
            seen.append(mine)

    services.journal.add_listener(listener)
    return seen


async def test_a_chain_of_pure_steps_commits_as_one_transaction(api, services: Any) -> None:
    flow_id = await create_flow(api, CHAIN)
    batches = _batches(services, flow_id)
    execution_id = await start(api, flow_id)
    detail = await wait_status(api, execution_id, {"completed", "failed"})
    assert detail["status"] == "completed" and detail["output"] == {"s3": 3}
    assert_log_is_whole(await events_of(api, execution_id))
    chain = ["step.started", "step.completed"] * 4
    assert batches == [["execution.queued"], ["execution.started", *chain, "execution.completed"]], (
        "the start, every step and the end go out in one commit"
    )
    steps = (await api.get(f"/api/v1/executions/{execution_id}/steps")).json()["items"]
    assert [(s["stepId"], s["status"]) for s in steps] == [(f"s{i}", "completed") for i in range(4)]


async def test_a_long_chain_still_commits_as_it_goes(api, services: Any, monkeypatch: Any) -> None:
    from tolstoy.engine import writer

    monkeypatch.setattr(writer, "FLUSH_AFTER_S", 0.0)  # every deferred write is already "too old"
    flow_id = await create_flow(api, CHAIN)
    batches = _batches(services, flow_id)
    await wait_status(api, await start(api, flow_id), {"completed", "failed"})
    one_step = ["step.started", "step.completed"]
    assert batches == [["execution.queued"], ["execution.started"], *[one_step] * 4, ["execution.completed"]]


async def test_a_failed_execution_ends_once_and_loses_no_lease(api) -> None:
    from tolstoy import metrics

    lost = metrics.REGISTRY.get_sample_value("tolstoy_leases_lost_total") or 0.0
    detail = await run_flow(
        api,
        {
            "name": "fails-fast",
            "steps": [
                {"id": "bad", "type": "data_transform", "config": {"expression": "1 // 0"}},
                {"id": "after", "type": "data_transform", "config": {"expression": "2"}},
            ],
        },
    )
    assert detail["status"] == "failed"
    assert_log_is_whole(await events_of(api, detail["id"]))
    assert (metrics.REGISTRY.get_sample_value("tolstoy_leases_lost_total") or 0.0) == lost, (
        "ending an execution must not look like losing its lease"
    )
