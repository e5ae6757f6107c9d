"""The Redis bus against a private redis-server: dead connections are detected, re-made and resynced."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tests.conftest import wait_until
from tests.integration.gateway_harness import RedisProcess
from tolstoy import metrics
from tolstoy.events.bus.redis import RedisBus
from tolstoy.events.types import Event, encode_event


@pytest.fixture
def redis() -> Iterator[RedisProcess]:
    server = RedisProcess()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def bus(redis: RedisProcess) -> AsyncIterator[RedisBus]:
    instance = RedisBus(f"{redis.url}?prefix=t&health_interval=0.2&health_timeout=0.3")
    await instance.start()
    try:
        yield instance
    finally:
        await instance.close()


def ev(seq: int) -> Event:
    return encode_event(
        execution_id="exec_1", org_id="org_a", flow_id="f", seq=seq, type="log", ts=seq, fields={}
    )


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.resyncs = 0

    def __call__(self, batch: list[Event]) -> None:
        self.events.extend(batch)

    def resync(self) -> None:
        self.resyncs += 1

    async def has(self, n: int) -> bool:
        return len(self.events) >= n

    async def resynced(self) -> bool:
        return self.resyncs >= 1


async def test_a_restarted_redis_is_reconnected_resynced_and_sent_what_was_queued(redis, bus) -> None:
    rec = Recorder()
    reconnects = metrics.BUS_RECONNECTS._value.get()
    errors = metrics.BUS_PUBLISH_ERRORS._value.get()
    await bus.subscribe("org_a", rec, rec.resync)
    await bus.publish("org_a", [ev(1)])
    await wait_until(lambda: rec.has(1), 5, "the first event")
    redis.stop()
    await bus.publish("org_a", [ev(2)])  # queued: Redis is down; never raises into the journal
    await wait_until(_failed(errors), 5, "a publish error to be counted")
    redis.start()
    await wait_until(rec.resynced, 10, "the subscriber to be told to resync")
    assert metrics.BUS_RECONNECTS._value.get() == reconnects + 1
    await wait_until(lambda: rec.has(2), 10, "the queued event after the restart")
    await bus.publish("org_a", [ev(3)])
    await wait_until(lambda: rec.has(3), 5, "a new event")
    assert [e.seq for e in rec.events] == [1, 2, 3]


def _failed(before: float):
    async def check() -> bool:
        return metrics.BUS_PUBLISH_ERRORS._value.get() > before

    return check


async def test_a_silent_connection_is_detected_by_the_health_check(redis, bus) -> None:
    rec = Recorder()
    await bus.subscribe("org_a", rec, rec.resync)
    assert bus.connected.is_set()
    redis.pause()  # the TCP connection stays up but nothing answers
    try:

        async def dropped() -> bool:
            return not bus.connected.is_set()

        await wait_until(dropped, 5, "the dead connection to be noticed")
    finally:
        redis.resume()
    await wait_until(rec.resynced, 10, "a resync after reconnecting")
    await bus.publish("org_a", [ev(1)])
    await wait_until(lambda: rec.has(1), 5, "delivery on the new connection")


async def test_subscribing_while_redis_is_down_resyncs_once_it_is_back(redis, bus) -> None:
    redis.stop()
    rec = Recorder()
    await bus.subscribe("org_a", rec, rec.resync)  # returns (unconfirmed) rather than hanging
    redis.start()
    await wait_until(rec.resynced, 10, "a resync once Redis is reachable")
    await bus.publish("org_a", [ev(1)])
    await wait_until(lambda: rec.has(1), 5, "delivery")


async def test_a_failed_publish_is_counted_once_however_often_it_is_retried(redis, bus, monkeypatch) -> None:
    errors, published = metrics.BUS_PUBLISH_ERRORS._value.get(), metrics.BUS_PUBLISHED._value.get()
    attempts = {"n": 0}
    send = bus._send

    async def counting_send(batch: Any) -> None:
        attempts["n"] += 1
        await send(batch)

    monkeypatch.setattr(bus, "_send", counting_send)
    redis.stop()
    await bus.publish("org_a", [ev(1), ev(2)])  # two batches queued before the publisher runs
    await bus.publish("org_a", [ev(3)])

    async def retried() -> bool:
        return attempts["n"] >= 4

    await wait_until(retried, 10, "the publisher to retry a few times")
    assert metrics.BUS_PUBLISH_ERRORS._value.get() == errors + 2, "each failed batch counted once"
    redis.start()

    async def sent() -> bool:
        return not bus._queue

    await wait_until(sent, 15, "the queued batches to be published once Redis is back")
    assert metrics.BUS_PUBLISH_ERRORS._value.get() == errors + 2
    assert metrics.BUS_PUBLISHED._value.get() == published, "the journal counts published events, not the bus"
