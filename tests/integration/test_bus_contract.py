"""The bus contract, on every backend: ordered per organization, isolated between organizations."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest

from tests.backends import REDIS_URL, require_redis
from tests.conftest import wait_until
from tests.integration.gateway_harness import new_org, producer
from tolstoy import metrics
from tolstoy.events.bus import Bus, create_bus
from tolstoy.events.types import Event, encode_event


@pytest.fixture(params=["memory", "redis"])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[Bus]:
    if request.param == "redis":
        require_redis()
        url = f"{REDIS_URL}?prefix=t{secrets.token_hex(4)}"
    else:
        url = "memory://"
    instance = create_bus(url)
    await instance.start()
    try:
        yield instance
    finally:
        await instance.close()


def events(org_id: str, first: int, n: int) -> list[Event]:
    return [
        encode_event(execution_id="exec_1", org_id=org_id, flow_id="f", seq=s, type="log", ts=s,
                     fields={"message": f"m{s}"})
        for s in range(first, first + n)
    ]  # fmt: skip


async def test_batches_arrive_in_publish_order_to_every_subscriber_of_the_organization(bus: Bus) -> None:
    first: list[Event] = []
    second: list[Event] = []
    await bus.subscribe("org_a", first.extend)
    await bus.subscribe("org_a", second.extend)
    sent = events("org_a", 1, 30)
    for i in range(0, 30, 3):
        await bus.publish("org_a", sent[i : i + 3])

    async def all_arrived() -> bool:
        return len(first) == 30 and len(second) == 30

    await wait_until(all_arrived, 5, "every event on both subscribers")
    assert first == sent and second == sent


async def test_organizations_are_isolated_and_unsubscribing_stops_delivery(bus: Bus) -> None:
    got_a: list[Event] = []
    got_b: list[Event] = []
    sub_a = await bus.subscribe("org_a", got_a.extend)
    await bus.subscribe("org_b", got_b.extend)
    await bus.publish("org_b", events("org_b", 1, 2))
    await bus.publish("org_a", events("org_a", 1, 1))

    async def arrived() -> bool:
        return len(got_a) == 1 and len(got_b) == 2

    await wait_until(arrived, 5, "one event for org_a, two for org_b")
    assert {e.org_id for e in got_a} == {"org_a"} and {e.org_id for e in got_b} == {"org_b"}
    await sub_a.close()
    await bus.publish("org_a", events("org_a", 2, 1))
    await bus.publish("org_b", events("org_b", 3, 1))

    async def b_got_it() -> bool:
        return len(got_b) == 3

    await wait_until(b_got_it, 5, "org_b's third event")
    assert len(got_a) == 1


async def test_a_failing_subscriber_does_not_stop_the_others(bus: Bus) -> None:
    got: list[Event] = []

    def broken(batch: object) -> None:
        raise RuntimeError("subscriber bug")

    await bus.subscribe("org_a", broken)
    await bus.subscribe("org_a", got.extend)
    await bus.publish("org_a", events("org_a", 1, 2))

    async def arrived() -> bool:
        return len(got) == 2

    await wait_until(arrived, 5, "the healthy subscriber's events")


async def test_committed_events_are_counted_once_as_published(services) -> None:
    """``tolstoy_bus_published_total`` counts each committed event once, on every bus (Redis included)."""
    org = await new_org(services)
    before = metrics.REGISTRY.get_sample_value("tolstoy_bus_published_total") or 0.0
    p = await producer(services, org["id"])  # one event
    await p.emit(5, per_write=5)
    await p.emit(2)
    assert metrics.REGISTRY.get_sample_value("tolstoy_bus_published_total") == before + 8
