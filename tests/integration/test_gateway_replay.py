"""Replay from the store, then live: no gap and no duplicate, whatever the timing or the bus loses."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from tests.conftest import make_settings, wait_until
from tests.integration.gateway_harness import (
    DroppingBus,
    assert_in_order,
    client,
    new_org,
    open_services,
    producer,
    serve,
)
from tolstoy.events.bus import create_bus
from tolstoy.gateway import topic as topic_module
from tolstoy.gateway.route import OrgRoute


async def _watch(address: str, key: str, channel: str, since: int, last: int) -> list[dict[str, Any]]:
    async with client(address, key) as c:
        reply = await c.subscribe(channel, since=since)
        assert reply["type"] == "subscribed", reply
        return await c.events_until(lambda m: m["data"]["seq"] >= last)


async def test_replay_then_live_has_no_gap_or_duplicate_while_events_are_produced(services, org) -> None:
    """Clients join at random moments with random ``since`` while the execution is being written."""
    rng = random.Random(4)
    total = 240
    for _ in range(3):  # iterations: each a fresh execution and fresh clients
        p = await producer(services, org["id"])
        channel = f"executions:{p.execution_id}"
        async with serve(services) as address:
            watchers = []

            async def produce(p=p) -> None:
                while p.seq < total:
                    await p.emit(rng.randint(1, 4), per_write=rng.randint(1, 4))
                    if rng.random() < 0.3:
                        await asyncio.sleep(0)
                await p.finish()

            producing = asyncio.create_task(produce())
            for _ in range(8):
                since = rng.randint(0, p.seq)
                watching = _watch(address, org["key"], channel, since, total + 1)
                watchers.append((since, asyncio.create_task(watching)))
                await asyncio.sleep(rng.random() * 0.02)
            await producing
            for since, watcher in watchers:
                assert_in_order(await asyncio.wait_for(watcher, 20), since + 1, total + 1)


async def test_a_long_history_is_replayed_in_order_in_pages(services, org) -> None:
    p = await producer(services, org["id"])
    await p.emit(1300, per_write=100)
    async with serve(services) as address, client(address, org["key"]) as c:
        reply = await c.subscribe(f"executions:{p.execution_id}", since=0)
        assert reply["data"]["replayed"] == 1301
        assert_in_order(await c.events(1301), 1, 1301)
        await p.emit(1)
        assert_in_order(await c.events(1), 1302, 1302)


async def test_a_live_buffer_overflowing_during_replay_falls_back_to_the_store(
    services, org, monkeypatch
) -> None:
    monkeypatch.setattr(topic_module, "MAX_JOIN_BUFFER", 3)
    p = await producer(services, org["id"])
    await p.emit(600, per_write=100)
    async with serve(services) as address:
        watcher = asyncio.create_task(_watch(address, org["key"], f"executions:{p.execution_id}", 0, 700))
        await p.emit(99, per_write=3)
        await p.emit(1)
        assert_in_order(await asyncio.wait_for(watcher, 20), 1, 700)


@pytest.fixture
async def lossy(backend, tmp_path):
    """Services whose bus drops every third published batch, and the very last one."""
    settings = make_settings(backend, tmp_path / "lossy")
    state = {"n": 0, "drop_terminal": True}

    def drop(events) -> bool:
        state["n"] += 1
        if state["drop_terminal"] and any(e.is_terminal for e in events):
            return True
        return state["n"] % 3 == 0

    bus = DroppingBus(create_bus(settings.bus_url), drop)
    async with open_services(settings, bus=bus) as services:
        services.gateway.tail_check_s = 0.2
        yield services, bus


async def test_gaps_left_by_the_bus_are_backfilled_from_the_store(lossy) -> None:
    services, bus = lossy
    org = await new_org(services)
    p = await producer(services, org["id"])
    async with serve(services) as address, client(address, org["key"]) as c:
        await c.subscribe(f"executions:{p.execution_id}")
        for _ in range(20):
            await p.emit(1)
        await p.finish()  # its publish is dropped too: only the store knows it
        events = await c.events(21)
        assert_in_order(events, 2, 22)
        assert events[-1]["type"] == "execution.completed"
        assert bus.dropped and 22 in bus.dropped


async def test_org_wide_channels_resume_from_an_event_id_or_a_time(services, org, backend) -> None:
    first = await producer(services, org["id"])
    await first.emit(3)  # seq 2..4
    second = await producer(services, org["id"], first.flow_id)
    await second.emit(2)  # seq 2..3
    async with serve(services) as address, client(address, org["key"]) as c:
        reply = await c.subscribe("executions", since=f"{first.execution_id}:3")
        assert reply["data"]["replayed"] >= 4
        got = await c.events(reply["data"]["replayed"])
        ids = [e["data"]["id"] for e in got]
        for expected in (f"{first.execution_id}:4", f"{second.execution_id}:1", f"{second.execution_id}:3"):
            assert expected in ids
        if not backend.is_postgres:  # exact on SQLite; PostgreSQL resumes a little earlier (at-least-once)
            assert f"{first.execution_id}:2" not in ids
        assert len(ids) == len(set(ids))
        await first.emit(1)
        live = await c.events(1)
        assert live[0]["data"]["id"] == f"{first.execution_id}:5" and live[0]["channel"] == "executions"
    async with serve(services) as address, client(address, org["key"]) as c:
        only_second = {"executionIds": [second.execution_id]}
        reply = await c.subscribe(f"workflows:{first.flow_id}", since=0, filters=only_second)
        assert reply["data"]["replayed"] == 3
        assert_in_order(await c.events(3), 1, 3)
        since = "2000-01-01T00:00:00Z"
        reply = await c.subscribe("executions", since=since, filters={"types": ["execution."]})
        got = await c.events(reply["data"]["replayed"])
        assert {e["type"] for e in got} == {"execution.started"} and len(got) == 2


async def test_org_wide_filters_apply_live_and_stats_count_what_was_sent(services, org, api) -> None:
    p = await producer(services, org["id"])
    async with serve(services) as address, client(address, org["key"]) as c:
        await c.subscribe(f"executions:{p.execution_id}")
        await c.subscribe("executions", filters={"types": ["log"]})
        await p.emit(2)
        got = await c.events(4)
        assert sorted((e["channel"], e["data"]["seq"]) for e in got) == [
            ("executions", 2),
            ("executions", 3),
            (f"executions:{p.execution_id}", 2),
            (f"executions:{p.execution_id}", 3),
        ]
        await wait_until(lambda: _stats_out(api, 4), what="messagesOut to reach 4")
        stats = (await api.get("/api/v1/gateway/stats")).json()
        assert stats["totalClients"] == 1 and stats["totalSubscriptions"] == 2
        assert stats["channels"] == {"executions": 1, f"executions:{p.execution_id}": 1}
        assert stats["drops"] == {"conflated": 0, "slowConsumer": 0}


async def _stats_out(api, n: int) -> bool:
    return (await api.get("/api/v1/gateway/stats")).json()["messagesOut"] >= n


async def _collect(c: Any, done: Any) -> list[dict[str, Any]]:
    """Event deliveries of every channel of ``c`` until ``done(deliveries)``."""
    got: list[dict[str, Any]] = []
    while not done(got):
        got += await c.events(1)
    return got


def _on(got: list[dict[str, Any]], channel: str) -> list[dict[str, Any]]:
    return [e for e in got if e["channel"] == channel]


async def test_backfilled_events_pass_the_channel_and_the_filters(lossy) -> None:
    services, bus = lossy
    org = await new_org(services)
    p = await producer(services, org["id"])
    by_type, by_status = "executions", f"workflows:{p.flow_id}"
    async with serve(services) as address, client(address, org["key"]) as c:
        await c.subscribe(by_type, filters={"types": ["step."]})
        await c.subscribe(by_status, filters={"statuses": ["completed"]})
        await c.subscribe("approvals")
        for n in range(8):
            await p.emit(2)
            await p.emit(1, type_="step.completed", stepId="a", status="completed")
            await p.emit(1, type_="approval.required", approvalId=f"ap_{n}", stepId="a")
        await p.finish()  # dropped too: the tail check brings it
        got = await _collect(c, lambda g: len(_on(g, by_type)) >= 8 and len(_on(g, by_status)) >= 9)
        probe = await c.send("ping")
        while (message := await c.recv())["type"] != "pong":
            got.append(message)
        assert message["id"] == probe
    assert bus.dropped, "the bus lost batches, so some events came from the store"
    steps = [4 * n + 4 for n in range(8)]  # step.completed at seq 4, 8, …
    assert [(e["type"], e["data"]["seq"]) for e in _on(got, by_type)] == [
        ("step.completed", s) for s in steps
    ]
    assert [e["data"]["seq"] for e in _on(got, by_status)] == [*steps, p.seq]
    assert _on(got, by_status)[-1]["type"] == "execution.completed"
    approvals = _on(got, "approvals")
    assert {e["type"] for e in approvals} <= {"approval.required"}, "no other event on approvals"
    assert len(got) == 8 + 9 + len(approvals)


async def test_a_gap_the_store_cannot_fill_closes_with_1013_rather_than_skip_and_since_resumes(
    lossy, monkeypatch
) -> None:
    services, _ = lossy
    monkeypatch.setattr(topic_module, "BACKFILL_RETRY_DELAYS_S", (0.01, 0.01), raising=False)
    store = {"down": True, "reads": 0}
    read = OrgRoute.backfill

    async def backfill(self: OrgRoute, execution_id: str, after: int, before: int) -> list[Any]:
        store["reads"] += 1
        if store["down"]:
            raise ConnectionError("the store is unreachable")
        return await read(self, execution_id, after, before)

    monkeypatch.setattr(OrgRoute, "backfill", backfill)
    org = await new_org(services)
    p = await producer(services, org["id"])
    channel = f"executions:{p.execution_id}"
    async with serve(services) as address:
        async with client(address, org["key"]) as c:
            await c.subscribe(channel)
            for _ in range(6):
                await p.emit(1)  # every third batch is lost on the bus: a gap the store must fill
            got: list[dict[str, Any]] = []
            with pytest.raises(ConnectionClosed):
                while True:
                    got.append(await c.recv())
            assert c.ws.close_code == 1013
        assert store["reads"] == 3, "read three times (two retries) before giving up"
        assert_in_order(got, 2, 1 + len(got))  # no hole: what came is a prefix
        store["down"] = False
        await p.finish()
        async with client(address, org["key"]) as c:
            reply = await c.subscribe(channel, since=1 + len(got))
            assert reply["type"] == "subscribed"
            assert_in_order(await c.events(p.seq - 1 - len(got)), 2 + len(got), p.seq)


async def test_a_lost_last_event_reaches_org_wide_subscribers_through_the_tail_check(lossy) -> None:
    services, bus = lossy
    org = await new_org(services)
    p = await producer(services, org["id"])
    channels = ("executions", f"workflows:{p.flow_id}")
    async with serve(services) as address, client(address, org["key"]) as c:
        for channel in channels:
            await c.subscribe(channel)
        await p.emit(1)
        await p.finish()  # the final batch is dropped: no later event reveals the gap
        last = p.seq
        got = await _collect(c, lambda g: all(_ended(_on(g, ch)) for ch in channels))
    assert last in bus.dropped
    for channel in channels:
        assert_in_order(_on(got, channel), 2, last)


def _ended(events: list[dict[str, Any]]) -> bool:
    return bool(events) and events[-1]["type"] == "execution.completed"
