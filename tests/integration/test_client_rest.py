"""The Python client against the real API (in-process), on both backends."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import assert_log_is_whole
from tolstoy.client import AuthError, Client, ConflictError, NotFoundError, ValidationError
from tolstoy.store import identity

HELLO = """
name: hello-sdk
variables: {who: world}
steps:
  - id: greet
    type: data_transform
    config: {expression: "'hello ' ~ variables.who"}
  - id: shout
    type: data_transform
    config: {expression: "steps['greet'].output | upper"}
"""

LOGGING = """
name: logging-sdk
steps:
  - id: work
    type: code
    config:
      source: |
        def main(context):
            context.log("starting", level="info")
            context.log("careful", level="warn", attempt=1)
            return 1
"""

SLOW = """
name: slow-sdk
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
    config: {expression: "steps['first'].output + 1"}
"""

FAILS_SECOND = """
name: fails-second-sdk
steps:
  - id: first
    type: data_transform
    config: {expression: "41"}
  - id: second
    type: code
    config:
      source: |
        def main(context):
            raise RuntimeError("boom")
"""

APPROVAL = """
name: approve-sdk
steps:
  - id: ask
    type: approval
    config: {prompt: "Ship it?", timeoutMs: 60000}
  - id: ship
    type: data_transform
    config: {expression: "steps['ask'].output.decision"}
"""

NAP = """
name: nap-sdk
steps:
  - id: nap
    type: delay
    config: {durationMs: 60000}
"""

TERMINAL = {"completed", "failed", "cancelled"}


@pytest.fixture
def app(services: Any) -> Any:
    from tolstoy.api.app import create_app

    async def existing() -> Any:
        return services

    application = create_app(existing, max_body_bytes=services.settings.max_definition_bytes)
    application.state.services = services
    return application


@pytest.fixture
def connect(app: Any) -> Callable[[str], Client]:
    """A client on the in-process app with ``key``."""

    def make(key: str) -> Client:
        return Client("http://tolstoy.test", key, transport=httpx.ASGITransport(app=app), env={})

    return make


@pytest.fixture
async def sdk(connect: Callable[[str], Client], org: dict[str, str]) -> AsyncIterator[Client]:
    async with connect(org["key"]) as client:
        yield client


async def wait_for(
    client: Client, execution_id: str, statuses: set[str], timeout: float = 20
) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            detail = await client.executions.get(execution_id)
            if detail["status"] in statuses:
                return detail
            await asyncio.sleep(0.02)


async def run(client: Client, definition: str, **variables: Any) -> dict[str, Any]:
    flow = await client.flows.apply(definition)
    started = await client.executions.start(flow["id"], variables)
    return await wait_for(client, started["executionId"], TERMINAL)


async def test_me_and_api_keys(sdk: Client, connect: Callable[[str], Client], org: dict[str, str]) -> None:
    me = await sdk.me()
    assert me["organization"]["id"] == org["id"]
    created = await sdk.api_keys.create("ci")
    assert created["key"] and created["name"] == "ci"
    async with connect(created["key"]) as other:
        assert (await other.me())["organization"]["id"] == org["id"]
        assert created["id"] in [k["id"] for k in await sdk.api_keys.list()]
        await sdk.api_keys.revoke(created["id"])
        with pytest.raises(AuthError) as caught:
            await other.me()
    assert caught.value.status == 401


async def test_apply_creates_then_versions_a_flow_by_name(sdk: Client, tmp_path: Path) -> None:
    first = await sdk.flows.apply(HELLO)
    path = tmp_path / "hello.yaml"
    path.write_text(HELLO.replace("who: world", "who: moon"))
    second = await sdk.flows.apply(path)
    assert (first["version"], second["version"]) == (1, 2)
    assert first["id"] == second["id"]
    stored = await sdk.flows.get(first["id"])
    assert stored["definition"]["variables"] == {"who": "moon"}
    assert sorted(v["version"] for v in await sdk.flows.versions(first["id"])) == [1, 2]
    assert (await sdk.flows.find("hello-sdk"))["id"] == first["id"]  # type: ignore[index]
    assert first["id"] in [f["id"] async for f in sdk.flows.iterate()]


async def test_an_invalid_definition_raises_with_field_details(sdk: Client) -> None:
    with pytest.raises(ValidationError) as caught:
        await sdk.flows.apply("name: broken\nsteps:\n  - {id: a, type: nope, config: {}}\n")
    assert caught.value.status == 422
    assert any(d["field"] == "steps[0].type" for d in caught.value.details), caught.value.details


async def test_an_execution_through_the_client(sdk: Client) -> None:
    done = await run(sdk, HELLO, who="sdk")
    assert done["status"] == "completed"
    assert done["output"] == {"shout": "HELLO SDK"}
    page = await sdk.executions.events(done["id"])
    assert_log_is_whole(page.items)
    assert page.next_since is None
    partial = await sdk.executions.events(done["id"], since=2, limit=2, types=["step."])
    assert [e["type"] for e in partial.items] == ["step.started", "step.completed"]
    steps = await sdk.executions.steps(done["id"])
    assert [(s["stepId"], s["status"]) for s in steps] == [("greet", "completed"), ("shout", "completed")]
    completed = await sdk.executions.list(status="completed", flow_id=done["flowId"])
    assert done["id"] in [e["id"] for e in completed.items]
    assert (await sdk.executions.list(status="failed", flow_id=done["flowId"])).items == []


async def test_logs_with_levels(sdk: Client) -> None:
    done = await run(sdk, LOGGING)
    assert [entry["message"] for entry in await sdk.executions.logs(done["id"])] == ["starting", "careful"]
    warnings = await sdk.executions.logs(done["id"], levels=["warn"])
    assert [(w["message"], w.get("metadata")) for w in warnings] == [("careful", {"attempt": 1})]


async def test_cancel(sdk: Client) -> None:
    flow = await sdk.flows.apply(NAP)
    started = await sdk.executions.start(flow["id"])
    await wait_for(sdk, started["executionId"], {"waiting", "running"})
    await sdk.executions.cancel(started["executionId"])
    done = await wait_for(sdk, started["executionId"], TERMINAL)
    assert done["status"] == "cancelled"


async def test_pause_and_resume(sdk: Client) -> None:
    flow = await sdk.flows.apply(SLOW)
    execution_id = (await sdk.executions.start(flow["id"]))["executionId"]
    await wait_for(sdk, execution_id, {"running"})
    await sdk.executions.pause(execution_id)
    paused = await wait_for(sdk, execution_id, {"paused"} | TERMINAL)
    assert paused["status"] == "paused"
    await sdk.executions.resume(execution_id)
    done = await wait_for(sdk, execution_id, TERMINAL)
    assert done["status"] == "completed" and done["output"] == {"second": 2}


async def test_retry_from_the_failed_step(sdk: Client) -> None:
    failed = await run(sdk, FAILS_SECOND)
    assert failed["status"] == "failed"
    retried = await sdk.executions.retry(failed["id"], from_failed_step=True)
    assert retried["retryOf"] == failed["id"] and retried["executionId"] != failed["id"]
    again = await wait_for(sdk, retried["executionId"], TERMINAL)
    assert again["retryOf"] == failed["id"]
    events = (await sdk.executions.events(again["id"])).items
    started = [e["stepId"] for e in events if e["type"] == "step.started"]
    assert started == ["second"], "the completed step's output is reused, not run again"


@pytest.mark.parametrize(("decision", "status"), [("grant", "completed"), ("deny", "failed")])
async def test_approvals(sdk: Client, decision: str, status: str) -> None:
    flow = await sdk.flows.apply(APPROVAL)
    execution_id = (await sdk.executions.start(flow["id"]))["executionId"]
    await wait_for(sdk, execution_id, {"waiting"})
    pending = [a for a in (await sdk.approvals.list()).items if a["executionId"] == execution_id]
    assert [a["prompt"] for a in pending] == ["Ship it?"]
    decided = await getattr(sdk.approvals, decision)(pending[0]["id"], comment="from the sdk")
    assert decided["status"] == {"grant": "granted", "deny": "denied"}[decision]
    assert decided["comment"] == "from the sdk"
    with pytest.raises(ConflictError):
        await sdk.approvals.grant(pending[0]["id"])
    assert (await wait_for(sdk, execution_id, TERMINAL))["status"] == status
    everything = await sdk.approvals.list(status=None)
    assert pending[0]["id"] in [a["id"] for a in everything.items]


async def test_unknown_and_foreign_objects_are_not_found(sdk: Client, connect: Callable[[str], Client],
                                                         services: Any) -> None:  # fmt: skip
    with pytest.raises(NotFoundError) as caught:
        await sdk.executions.get("exec_0_missing")
    assert caught.value.code == "not_found"
    _, other_key = await identity.create_organization(services.db, f"other-{secrets.token_hex(3)}")
    async with connect(other_key) as other:
        theirs = await other.flows.apply(HELLO)
        with pytest.raises(NotFoundError):
            await sdk.flows.get(theirs["id"])
        assert (await sdk.flows.find("hello-sdk")) is None
    async with connect("tsk_not_a_key") as stranger:
        with pytest.raises(AuthError):
            await stranger.flows.list()
