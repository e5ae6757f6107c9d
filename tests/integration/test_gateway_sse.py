"""Server-Sent Events (PROTOCOL.md §4): resume by Last-Event-ID or since, heartbeats, end after the end."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson

from tests.conftest import wait_until
from tests.integration.gateway_harness import client, new_org, producer, serve
from tolstoy import metrics
from tolstoy.gateway.topic import SubState


async def read_events(resp: httpx.Response, until: Any = None) -> tuple[list[dict[str, Any]], list[str]]:
    """Parse an SSE body into events (id, event, data) and comments, until the stream ends or ``until``."""
    events, comments, current = [], [], {}
    async for line in resp.aiter_lines():
        if line.startswith(":"):
            comments.append(line)
        elif line == "":
            if "data" in current:
                current["data"] = orjson.loads(current["data"])
                events.append(current)
                if until is not None and until(current):
                    break
            current = {}
        else:
            field, _, value = line.partition(": ")
            current[field] = value
    return events, comments


async def test_an_execution_stream_resumes_after_since_goes_live_and_ends_after_the_terminal_event(
    services, org
):
    p = await producer(services, org["id"])
    await p.emit(3)  # seq 2..4
    async with (
        serve(services) as address,
        httpx.AsyncClient(base_url=f"http://{address}", timeout=10) as http,
    ):
        headers = {"Authorization": f"Bearer {org['key']}"}
        async with http.stream(
            "GET", f"/api/v1/executions/{p.execution_id}/stream?since=2", headers=headers
        ) as resp:
            assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")

            async def produce() -> None:
                await p.emit(2)
                await p.finish()

            producing = asyncio.create_task(produce())
            events, _ = await asyncio.wait_for(read_events(resp), 10)  # ends by itself
            await producing
        assert [e["id"] for e in events] == ["3", "4", "5", "6", "7"]
        assert [e["event"] for e in events][-1] == "execution.completed"
        assert (
            events[0]["data"]["id"] == f"{p.execution_id}:3"
            and events[0]["data"]["type"] == events[0]["event"]
        )
        url = f"/api/v1/executions/{p.execution_id}/stream"
        again = await http.get(url, headers={**headers, "Last-Event-ID": "7"})
        assert again.status_code == 204
        # Last-Event-ID wins over ?since (a reconnecting browser keeps its URL); the default: all history.
        url = f"/api/v1/executions/{p.execution_id}/stream"
        async with http.stream(
            "GET", f"{url}?since=1&token={org['key']}", headers={"Last-Event-ID": "5"}
        ) as resp:
            events, _ = await read_events(resp)
        assert [e["id"] for e in events] == ["6", "7"]
        async with http.stream("GET", f"{url}?token={org['key']}") as resp:
            events, _ = await read_events(resp)
        assert [e["id"] for e in events] == ["1", "2", "3", "4", "5", "6", "7"]


async def test_streams_are_authenticated_scoped_to_the_organization_and_kept_alive(services, org) -> None:
    other = await new_org(services)
    theirs = await producer(services, other["id"])
    async with (
        serve(services) as address,
        httpx.AsyncClient(base_url=f"http://{address}", timeout=10) as http,
    ):
        url = f"/api/v1/executions/{theirs.execution_id}/stream"
        assert (await http.get(url)).status_code == 401
        assert (await http.get(url, headers={"Authorization": "Bearer tsk_nope"})).status_code == 401
        denied = await http.get(url, headers={"Authorization": f"Bearer {org['key']}"})
        assert denied.status_code == 404 and other["id"] not in denied.text
        mine = await http.get(
            "/api/v1/stream", params={"channel": f"workflows:{theirs.flow_id}", "token": org["key"]}
        )
        assert mine.status_code == 404
        bad = await http.get("/api/v1/stream", params={"channel": "nope", "token": org["key"]})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_request"
        services.settings = services.settings.with_(sse_heartbeat_s=0.05)  # an idle stream gets heartbeats
        mine = await producer(services, org["id"])
        async with http.stream(
            "GET", f"/api/v1/executions/{mine.execution_id}/stream?token={org['key']}"
        ) as resp:
            lines = []
            async for line in resp.aiter_lines():
                lines.append(line)
                if lines.count(": ping") >= 2:
                    break
        assert lines[0] == "retry: 2000" and "id: 1" in lines


async def test_a_channel_stream_filters_and_resumes_from_an_event_id(services, org, backend) -> None:
    first = await producer(services, org["id"])
    second = await producer(services, org["id"])
    await first.emit(2)
    await second.emit(2)
    async with (
        serve(services) as address,
        httpx.AsyncClient(base_url=f"http://{address}", timeout=10) as http,
    ):
        params = {
            "channel": "executions",
            "executionIds": second.execution_id,
            "types": "log,execution.",
            "token": org["key"],
        }
        headers = {"Last-Event-ID": f"{second.execution_id}:1"}
        async with http.stream("GET", "/api/v1/stream", params=params, headers=headers) as resp:
            assert resp.status_code == 200
            reading = asyncio.create_task(
                read_events(resp, until=lambda e: e["event"] == "execution.completed")
            )
            await asyncio.sleep(0.05)
            await first.finish()
            await second.finish()
            events, _ = await asyncio.wait_for(reading, 10)
        ids = [e["id"] for e in events]
        expected = [f"{second.execution_id}:{n}" for n in (2, 3, 4)]
        if backend.is_postgres:  # at-least-once: resumes a little before the event id
            assert ids[-3:] == expected and set(ids) <= {*expected, f"{second.execution_id}:1"}
        else:
            assert ids == expected


async def _live_sse(services: Any, n: int) -> bool:
    """Whether ``n`` SSE subscriptions are live members of their topics (so live events reach them)."""
    subs = [
        s
        for session in services.gateway.sessions
        if session.transport == "sse"
        for s in session.subs.values()
    ]
    return sum(sub.state is SubState.LIVE for sub in subs) >= n


async def test_a_per_execution_channel_stream_without_since_ends_like_the_execution_stream(services, org):
    finished = await producer(services, org["id"])
    await finished.emit(2)
    await finished.finish()  # seq 1..4
    running = await producer(services, org["id"])
    async with (
        serve(services) as address,
        httpx.AsyncClient(base_url=f"http://{address}", timeout=10) as http,
    ):
        for channel in (f"executions:{finished.execution_id}", f"flows.{org['id']}.{finished.execution_id}"):
            params = {"channel": channel, "token": org["key"]}
            async with http.stream("GET", "/api/v1/stream", params=params) as resp:
                assert resp.status_code == 200
                events, _ = await asyncio.wait_for(read_events(resp), 10)  # ends at once, by itself
            assert [(e["id"], e["event"]) for e in events] == [("4", "execution.completed")]
            again = await http.get("/api/v1/stream", params=params, headers={"Last-Event-ID": "4"})
            assert again.status_code == 204, "a reconnect that has the end is told to stop"
            hidden = await http.get("/api/v1/stream", params={**params, "types": "log"})
            assert hidden.status_code == 204, "nothing left that matches the filters"
        params = {"channel": f"executions:{running.execution_id}", "token": org["key"]}
        async with (
            http.stream("GET", "/api/v1/stream", params=params) as everything,
            http.stream("GET", "/api/v1/stream", params={**params, "types": "log"}) as logs,
        ):
            reading = [asyncio.create_task(read_events(r)) for r in (everything, logs)]
            await wait_until(lambda: _live_sse(services, 2), what="both streams to be live")
            await running.emit(2)
            await running.finish()
            (all_events, _), (log_events, _) = await asyncio.wait_for(asyncio.gather(*reading), 10)
        assert [e["id"] for e in all_events] == ["2", "3", "4"] and all_events[-1][
            "event"
        ] == "execution.completed"
        assert [e["id"] for e in log_events] == ["2", "3"], "ends with its execution, the end filtered out"


async def test_deliveries_are_counted_by_their_real_transport(services, org) -> None:
    def out(transport: str) -> float:
        return (
            metrics.REGISTRY.get_sample_value("tolstoy_messages_out_total", {"transport": transport}) or 0.0
        )

    p = await producer(services, org["id"])
    await p.emit(3)  # seq 1..4
    ws_before, sse_before = out("ws"), out("sse")
    async with (
        serve(services) as address,
        httpx.AsyncClient(base_url=f"http://{address}", timeout=10) as http,
    ):
        url = f"/api/v1/executions/{p.execution_id}/stream?token={org['key']}"
        async with http.stream("GET", url) as resp:
            reading = asyncio.create_task(read_events(resp, until=lambda e: e["id"] == "4"))
            events, _ = await asyncio.wait_for(reading, 10)
        assert len(events) == 4
        assert (out("sse"), out("ws")) == (sse_before + 4, ws_before)
        async with client(address, org["key"]) as c:
            await c.subscribe(f"executions:{p.execution_id}", since=1)
            await c.events(3)
        assert (out("sse"), out("ws")) == (sse_before + 4, ws_before + 3)
    assert metrics.REGISTRY.get_sample_value("tolstoy_messages_out_total", {"transport": "live"}) is None
