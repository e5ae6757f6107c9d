"""The WebSocket protocol end to end (PROTOCOL.md §3), on both backends: every message and every error."""

from __future__ import annotations

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.integration.gateway_harness import assert_in_order, client, producer, serve


async def test_api_keys_authenticate_every_documented_way_and_bad_credentials_get_401(services, org) -> None:
    async with serve(services) as address:
        for via in ("bearer", "x-api-key", "query"):
            async with client(address, org["key"], via=via) as c:
                request_id = await c.send("ping")
                reply = await c.reply(request_id)
                assert (reply["type"], reply["id"], reply["data"]) == ("pong", request_id, {})
                assert reply["timestamp"].endswith("Z")
        for credential in (None, "tsk_not_a_key", "eyJhbGciOiJIUzI1NiJ9.e30.bad"):
            headers = {"Authorization": f"Bearer {credential}"} if credential else {}
            with pytest.raises(InvalidStatus) as caught:
                async with connect(f"ws://{address}/ws", additional_headers=headers):
                    pass
            assert caught.value.response.status_code == 401
            assert orjson.loads(caught.value.response.body)["error"]["code"] == "unauthorized"


async def test_subscribe_replies_with_a_snapshot_then_replays_then_goes_live(services, org) -> None:
    p = await producer(services, org["id"])
    await p.emit(2)  # seq 2, 3
    async with serve(services) as address, client(address, org["key"]) as c:
        reply = await c.subscribe(f"executions:{p.execution_id}", since=1)
        assert reply["type"] == "subscribed" and reply["id"] == "r1"
        data = reply["data"]
        assert (data["channel"], data["replayed"], data["lastSeq"]) == (f"executions:{p.execution_id}", 2, 3)
        snapshot = data["snapshot"]
        assert snapshot["status"] == "running" and snapshot["lastSeq"] == 3
        assert [(s["stepId"], s["status"]) for s in snapshot["steps"]] == [("a", "pending"), ("b", "pending")]
        replayed = await c.events(2)
        assert_in_order(replayed, 2, 3)
        await p.emit(1)
        await p.finish()
        live = await c.events(2)
        assert_in_order(live, 4, 5)
        delivery = live[-1]
        assert (
            delivery["type"] == "execution.completed"
            and delivery["channel"] == f"executions:{p.execution_id}"
        )
        assert delivery["timestamp"] == delivery["data"]["timestamp"]
        assert delivery["data"]["id"] == f"{p.execution_id}:5"


async def test_unsubscribe_stops_delivery_and_is_acknowledged(services, org) -> None:
    p = await producer(services, org["id"])
    channel = f"executions:{p.execution_id}"
    async with serve(services) as address, client(address, org["key"]) as c:
        await c.subscribe(channel)
        request_id = await c.send("unsubscribe", {"channel": channel})
        reply = await c.reply(request_id)
        assert reply["type"] == "unsubscribed" and reply["data"] == {"channel": channel}
        await p.emit(2)
        probe = await c.send("ping")
        assert (await c.recv())["id"] == probe  # nothing was delivered before the pong
        assert services.gateway.stats.report(org["id"], services.gateway.sessions)["totalSubscriptions"] == 0


REFUSED = [
    ("{oops", "bad_request", "not valid JSON"),
    ('{"type":"publish","id":"x1"}', "bad_request", "unknown message type"),
    ('{"type":"subscribe","id":"x1","data":{"channel":"nope"}}', "bad_request", "unknown channel"),
    (
        '{"type":"subscribe","id":"x1","data":{"channel":"executions","filters":{"colour":1}}}',
        "bad_request",
        "unknown filter",
    ),
    (
        '{"type":"subscribe","id":"x1","data":{"channel":"executions:exec_1","since":-1}}',
        "bad_request",
        "since",
    ),
    (
        '{"type":"subscribe","id":"x1","data":{"channel":"executions","since":"yesterday"}}',
        "bad_request",
        "not an event id",
    ),
    ('{"type":"subscribe","id":"x1","data":{"channel":"executions:exec_0_none"}}', "not_found", "not found"),
    ('{"type":"subscribe","id":"x1","data":{"channel":"workflows:flow_none"}}', "not_found", "not found"),
    (
        '{"type":"subscribe","id":"x1","data":{"channel":"executions","since":"exec_0_none:3"}}',
        "not_found",
        "not found",
    ),
    (
        '{"type":"subscribe","id":"x1","data":{"channel":"flows.org_other.exec_1"}}',
        "forbidden",
        "organization",
    ),
    ('{"type":"unsubscribe","id":"x1","data":{"channel":"executions"}}', "not_found", "not subscribed"),
    ('{"type":"ping","id":"x1","data":{"pad":"' + "x" * 70_000 + '"}}', "too_large", "limit"),
]


async def test_every_refused_frame_gets_an_error_and_the_connection_stays_open(services, org) -> None:
    async with serve(services) as address, client(address, org["key"]) as c:
        for frame, code, words in REFUSED:
            await c.ws.send(frame)
            error = await c.recv()
            assert error["type"] == "error" and error["data"]["code"] == code, (frame[:80], error)
            assert words in error["data"]["message"]
            if code != "too_large" and not frame.startswith("{oops"):
                assert error["id"] == "x1"
            assert (await c.reply(await c.send("ping")))["type"] == "pong"
        await c.ws.send(b'{"type":"ping"}')
        assert (await c.recv())["data"]["code"] == "bad_request"
        assert (await c.subscribe("executions"))["type"] == "subscribed"
        again = await c.subscribe("executions")
        assert again["type"] == "error" and "already subscribed" in again["data"]["message"]


async def test_too_many_messages_are_rate_limited_and_huge_frames_close_with_1009(services, org) -> None:
    async with serve(services) as address, client(address, org["key"]) as c:
        for _ in range(150):
            await c.ws.send('{"type":"ping"}')
        replies = [await c.recv() for _ in range(150)]
        codes = {r["data"].get("code") for r in replies if r["type"] == "error"}
        assert codes == {"rate_limited"}
        assert sum(r["type"] == "pong" for r in replies) >= 100
        await c.ws.send('{"type":"ping","data":{"pad":"' + "x" * 1_100_000 + '"}}')
        with pytest.raises(ConnectionClosed):
            await c.recv()
        assert c.ws.close_code == 1009


async def test_graceful_shutdown_sends_1001_to_every_client(services, org) -> None:
    async with serve(services) as address:
        async with client(address, org["key"]) as first, client(address, org["key"]) as second:
            await first.subscribe("executions")
            await second.subscribe("executions")
            await services.gateway.close()
            for c in (first, second):
                with pytest.raises(ConnectionClosed):
                    await c.recv()
                assert c.ws.close_code == 1001
