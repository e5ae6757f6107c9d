"""Slow consumers: conflation of logs and progress under backpressure, 4008 on overflow, others unaffected."""

from __future__ import annotations

import asyncio
import socket
from contextlib import asynccontextmanager
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import wait_until
from tests.integration.gateway_harness import Client, assert_in_order, client, producer, serve
from tolstoy import metrics
from tolstoy.gateway import history


@asynccontextmanager
async def slow_client(address: str, key: str):
    """A client that reads nothing until told to: tiny receive buffer, at most one queued message."""
    host, port = address.split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.setblocking(False)
    headers = {"Authorization": f"Bearer {key}"}
    async with connect(f"ws://{address}/ws", sock=sock, additional_headers=headers, max_queue=1) as ws:
        yield Client(ws)


def squeeze(services: Any) -> None:
    """Make the server side of every open connection hold little in the kernel and the transport."""
    for session in services.gateway.sessions:
        transport = session.sink.proto.transport
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        transport.set_write_buffer_limits(high=8192)


async def test_a_consumer_that_stops_reading_is_closed_with_4008_and_others_keep_up(services, org) -> None:
    services.gateway.queue_max_bytes, services.gateway.queue_max_messages = 64 * 1024, 300
    closes_before = metrics.SLOW_CONSUMER_CLOSES._value.get()
    p = await producer(services, org["id"])
    channel = f"executions:{p.execution_id}"
    async with serve(services) as address, slow_client(address, org["key"]) as slow:
        await slow.subscribe(channel)
        squeeze(services)
        async with client(address, org["key"]) as fast:
            await fast.subscribe(channel)
            reading = asyncio.create_task(fast.events(1500))
            await p.emit(1500, type_="step.started", per_write=100, stepId="a", stepName="A" * 200)
            assert_in_order(await reading, 2, 1501)
            await wait_until(lambda: _slow_closed(services, org["id"]), what="the slow consumer to be closed")
            with pytest.raises(ConnectionClosed):
                while True:
                    await slow.recv()
            assert slow.ws.close_code == 4008 and slow.ws.close_reason == "slow_consumer"
            assert metrics.SLOW_CONSUMER_CLOSES._value.get() == closes_before + 1
            await p.emit(1)
            assert_in_order(await fast.events(1), 1502, 1502)


async def _slow_closed(services: Any, org_id: str) -> bool:
    return services.gateway.stats.report(org_id, services.gateway.sessions)["drops"]["slowConsumer"] == 1


async def test_pending_logs_and_progress_are_conflated_and_lifecycle_events_all_arrive(services, org) -> None:
    p = await producer(services, org["id"])
    async with serve(services) as address, slow_client(address, org["key"]) as slow:
        await slow.subscribe(f"executions:{p.execution_id}")
        squeeze(services)
        await p.emit(1, type_="step.started", stepId="a")
        for _ in range(40):
            await p.emit(10, per_write=10, message="x" * 300)
            progress = {"stepId": "a", "current": 1, "total": 2, "percent": 50}
            await p.emit(10, type_="execution.progress", per_write=10, **progress)
        await p.emit(1, type_="log", level="error", message="boom")
        await p.emit(1, type_="step.completed", stepId="a")
        await p.finish()
        last = p.seq
        events = await slow.events_until(lambda m: m["data"]["seq"] == last)
        delivered = [e["data"]["seq"] for e in events]
        conflated = [s for e in events for s in e.get("conflated", [])]
        assert sorted(delivered + conflated) == list(range(2, last + 1)), (
            "each seq delivered or accounted for"
        )
        assert conflated, "nothing was conflated: the consumer was never behind"
        by_type = {e["type"] for e in events}
        assert {"step.started", "step.completed", "execution.completed"} <= by_type
        assert any(e["type"] == "log" and e["data"]["level"] == "error" for e in events)
        assert delivered == sorted(delivered)
        stats = services.gateway.stats.report(org["id"], services.gateway.sessions)
        assert stats["drops"]["conflated"] == len(conflated)


async def test_a_client_that_keeps_up_is_not_closed_by_a_burst_that_arrived_during_its_replay(
    services, org, monkeypatch
) -> None:
    """The join buffer never overflows the outbox it is drained into: beyond its bound, replay again."""
    services.gateway.queue_max_bytes, services.gateway.queue_max_messages = 256 * 1024, 300
    closes_before = metrics.SLOW_CONSUMER_CLOSES._value.get()
    p = await producer(services, org["id"])
    await p.emit(50, per_write=50)  # the history: seq 2..51
    gate = asyncio.Event()
    read_page = history.execution_page

    async def slow_page(*args: Any, **kwargs: Any) -> Any:
        await gate.wait()  # a slow store: the replay's reads wait until the burst is committed
        return await read_page(*args, **kwargs)

    monkeypatch.setattr(history, "execution_page", slow_page)
    async with serve(services) as address, client(address, org["key"]) as c:
        reply = await c.subscribe(f"executions:{p.execution_id}", since=0)
        assert reply["type"] == "subscribed" and reply["data"]["lastSeq"] == 51
        await p.emit(600, per_write=100)  # twice the outbox's message bound, all during the replay
        gate.set()
        assert_in_order(await c.events(651), 1, 651)
        await p.emit(1)
        assert_in_order(await c.events(1), 652, 652)
    assert metrics.SLOW_CONSUMER_CLOSES._value.get() == closes_before
