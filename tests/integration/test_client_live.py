"""``client.watch`` / ``client.subscribe`` against the real app served over real sockets, on both backends.

The app runs in this process under uvicorn on a free port, so the client talks
HTTP and WebSocket exactly as it would to ``tolstoy serve``. Where the server has
no gateway at ``/ws`` the client follows the events endpoint; the
gateway-specific tests skip until the route is there.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn

from tests.helpers import assert_log_is_whole
from tolstoy.client import AuthError, Backoff, Client, NotFoundError, State

PIPELINE = """
name: live-sdk
variables: {days: 8}
steps:
  - id: sync
    type: code
    config:
      source: |
        import time
        def main(context):
            days = context.variables["days"]
            for day in range(1, days + 1):
                time.sleep(0.03)
                context.progress(day, days, f"processing day {day} of {days}")
                context.log(f"day {day} done")
            return days
  - id: summary
    type: data_transform
    config: {expression: "steps['sync'].output * 2"}
"""
FAST = Backoff(initial=0.02, maximum=0.2)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class LiveServer:
    def __init__(self, services: Any, url: str) -> None:
        self.services, self.url = services, url

    @property
    def has_gateway(self) -> bool:
        return getattr(self.services, "gateway", None) is not None


@pytest.fixture
async def server(services: Any) -> AsyncIterator[LiveServer]:
    from tolstoy.api.app import create_app

    async def existing() -> Any:
        return services

    app = create_app(existing, max_body_bytes=services.settings.max_definition_bytes)
    app.state.services = services
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    uv = uvicorn.Server(config)
    task = asyncio.create_task(uv.serve())
    async with asyncio.timeout(10):
        while not uv.started:
            await asyncio.sleep(0.01)
    try:
        yield LiveServer(services, f"http://127.0.0.1:{port}")
    finally:
        uv.should_exit = True
        await task


@pytest.fixture
async def sdk(server: LiveServer, org: dict[str, str]) -> AsyncIterator[Client]:
    async with Client(server.url, org["key"], reconnect=FAST, env={}) as client:
        yield client


async def start(client: Client, **variables: Any) -> str:
    flow = await client.flows.apply(PIPELINE)
    return str((await client.executions.start(flow["id"], variables))["executionId"])


async def collect(client: Client, execution_id: str, since: int = 0) -> list[dict[str, Any]]:
    async with asyncio.timeout(30):
        return [event async for event in client.watch(execution_id, since=since)]


async def test_watch_sees_every_event_once_in_order_through_the_terminal_one(sdk: Client) -> None:
    execution_id = await start(sdk)
    seen = await collect(sdk, execution_id)
    assert_log_is_whole(seen)
    assert seen[-1]["type"] == "execution.completed" and seen[-1]["output"] == {"summary": 16}
    assert [e["message"] for e in seen if e["type"] == "execution.progress"] == [
        f"processing day {d} of 8" for d in range(1, 9)
    ]
    stored = (await sdk.executions.events(execution_id)).items
    assert [e["id"] for e in seen] == [e["id"] for e in stored]


async def test_watch_since_replays_only_the_rest_of_a_finished_execution(sdk: Client) -> None:
    execution_id = await start(sdk, days=2)
    everything = await collect(sdk, execution_id)
    rest = await collect(sdk, execution_id, since=3)
    assert [e["seq"] for e in rest] == list(range(4, len(everything) + 1))
    assert rest[-1]["type"] == "execution.completed"
    assert await collect(sdk, execution_id, since=len(everything)) == [], "nothing after the end: no wait"


async def test_two_watchers_of_one_execution_see_the_same_events(sdk: Client) -> None:
    execution_id = await start(sdk, days=4)
    first, second = await asyncio.gather(collect(sdk, execution_id), collect(sdk, execution_id))
    assert [e["id"] for e in first] == [e["id"] for e in second]
    assert_log_is_whole(first)


async def test_watching_an_unknown_execution_raises_not_found(sdk: Client) -> None:
    with pytest.raises(NotFoundError):
        await collect(sdk, "exec_0_missing")


async def test_watching_with_a_bad_key_raises_auth_error(server: LiveServer) -> None:
    async with Client(server.url, "tsk_not_a_key", reconnect=FAST, env={}) as client:
        with pytest.raises(AuthError):
            await collect(client, "exec_0_missing")


async def test_watch_uses_the_gateway_when_the_server_has_one(server: LiveServer, sdk: Client) -> None:
    if not server.has_gateway:
        pytest.skip("this server has no /ws gateway yet")
    execution_id = await start(sdk, days=3)
    sub = sdk.watch(execution_id)
    seen = []
    async with asyncio.timeout(30):
        async for event in sub:
            seen.append(event)
            if len(seen) == 1:
                assert sub.state is State.SUBSCRIBED
                assert sub.snapshot is not None and "status" in sub.snapshot
    assert sub.connects == 1
    assert_log_is_whole(seen)


async def test_subscribe_to_the_organization_channel(server: LiveServer, sdk: Client) -> None:
    if not server.has_gateway:
        pytest.skip("this server has no /ws gateway yet")
    sub = sdk.subscribe("executions", filters={"types": ["execution.completed"]})
    first = asyncio.ensure_future(sub.__anext__())
    async with asyncio.timeout(30):
        while sub.state is not State.SUBSCRIBED:
            await asyncio.sleep(0.01)
        ids = {await start(sdk, days=1), await start(sdk, days=1)}
        done = {(await first)["executionId"], (await sub.__anext__())["executionId"]}
    await sub.aclose()
    assert done == ids
