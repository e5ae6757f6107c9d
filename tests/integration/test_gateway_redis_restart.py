"""A Redis restart in the middle of a watched execution: zero events lost, none repeated, order kept."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.conftest import make_settings, wait_until
from tests.integration.gateway_harness import (
    RedisProcess,
    assert_in_order,
    client,
    new_org,
    open_services,
    producer,
    serve,
)


@pytest.fixture
async def on_private_redis(backend, tmp_path) -> AsyncIterator[tuple[object, RedisProcess]]:
    """Services whose bus is a private redis-server (whatever the store) that the test may kill."""
    redis = RedisProcess()
    redis.start()
    try:
        url = f"{redis.url}?prefix=t&health_interval=0.3&health_timeout=0.5"
        settings = make_settings(backend, tmp_path / "home").with_(bus_url=url)
        async with open_services(settings) as services:
            yield services, redis
    finally:
        redis.stop()


async def test_a_client_watching_through_a_redis_restart_gets_every_event_once(on_private_redis) -> None:
    services, redis = on_private_redis
    org = await new_org(services)
    p = await producer(services, org["id"])
    watched = await producer(services, org["id"], p.flow_id)
    async with (
        serve(services) as address,
        client(address, org["key"]) as c,
        client(address, org["key"]) as all_,
    ):
        await c.subscribe(f"executions:{p.execution_id}", since=0)
        await all_.subscribe("executions", filters={"executionIds": [watched.execution_id]})
        assert_in_order(await c.events(1), 1, 1)
        await p.emit(5)
        redis.stop()
        for _ in range(30):  # produced while the bus is down: only the store has them
            await p.emit(1)
            await watched.emit(1)
            await asyncio.sleep(0.005)
        redis.start()
        await p.emit(5)
        await p.finish()
        await watched.finish()
        events = await c.events_until(lambda m: m["type"] == "execution.completed")
        assert_in_order(events, 2, 42)
        org_wide = await all_.events_until(lambda m: m["type"] == "execution.completed")
        # Org-wide channels are at-least-once: the resync may also bring the event just before subscribing.
        assert_in_order(org_wide[-31:], 2, 32)
        assert [e["data"]["seq"] for e in org_wide[:-31]] in ([], [1])

        async def reconnected() -> bool:
            return services.bus.connected.is_set()

        await wait_until(reconnected, 5, "the bus to be connected again")
