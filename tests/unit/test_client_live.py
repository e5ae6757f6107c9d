"""The client's live subscriptions against a scripted WebSocket gateway (PROTOCOL.md §3).

Each test scripts what the fake gateway does on each successive connection (send
these events, then drop / close with a code), and asserts what the caller of
``watch``/``subscribe`` saw and what the client asked the gateway for.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from tolstoy.client import AuthError, Backoff, BadRequestError, Client, NotFoundError, State
from tolstoy.client.live import execution_of, ws_url

EXEC = "exec_1_abc"
TERMINAL = 6
FAST = Backoff(initial=0.01, maximum=0.05)
Script = Callable[[ServerConnection, dict[str, Any]], Awaitable[None]]


def event(seq: int, execution_id: str = EXEC) -> dict[str, Any]:
    kind = {1: "execution.queued", 2: "execution.started", TERMINAL: "execution.completed"}.get(seq, "log")
    return {"id": f"{execution_id}:{seq}", "type": kind, "executionId": execution_id, "seq": seq,
            "timestamp": f"2025-08-07T14:05:{seq:02d}.000Z", "message": f"event {seq}"}  # fmt: skip


async def send_event(ws: ServerConnection, body: dict[str, Any], channel: str = f"executions:{EXEC}") -> None:
    await ws.send(
        json.dumps({"type": body["type"], "channel": channel, "timestamp": body["timestamp"], "data": body})
    )


async def subscribed(ws: ServerConnection, sub: dict[str, Any], last_seq: int = TERMINAL) -> None:
    data = {"channel": sub["data"]["channel"], "replayed": 0, "lastSeq": last_seq,
            "snapshot": {"status": "running", "lastSeq": last_seq}}  # fmt: skip
    await ws.send(json.dumps({"type": "subscribed", "id": sub.get("id"), "data": data}))


async def replay(
    ws: ServerConnection, sub: dict[str, Any], upto: int = TERMINAL, *, overlap: int = 0
) -> None:
    """Subscribed, then the events after ``since`` up to ``upto`` (re-sending ``overlap`` older ones)."""
    await subscribed(ws, sub)
    since = int(sub["data"].get("since") or 0)
    for seq in range(max(1, since + 1 - overlap), upto + 1):
        await send_event(ws, event(seq))


class FakeGateway:
    """A WebSocket server at ``/ws`` running ``scripts[n]`` for its n-th connection (the last repeats)."""

    def __init__(self, scripts: list[Script], reject: Response | None = None) -> None:
        self.scripts = scripts
        self.reject = reject
        self.subscribes: list[dict[str, Any]] = []
        self.headers: list[Headers] = []
        self.server: Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> None:
        self.server = await serve(self._handle, "127.0.0.1", port, process_request=self._process)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def _process(self, connection: ServerConnection, request: Request) -> Response | None:
        self.headers.append(request.headers)
        if request.path != "/ws":
            return connection.respond(404, "not found")
        return self.reject

    async def _handle(self, ws: ServerConnection) -> None:
        script = self.scripts[min(len(self.subscribes), len(self.scripts) - 1)]
        sub = json.loads(await ws.recv())
        self.subscribes.append(sub)
        await script(ws, sub)
        await ws.wait_closed()

    @property
    def sinces(self) -> list[Any]:
        return [s["data"].get("since") for s in self.subscribes]


@pytest.fixture
async def gateway() -> AsyncIterator[Callable[..., Awaitable[FakeGateway]]]:
    started: list[FakeGateway] = []

    async def make(scripts: list[Script], reject: Response | None = None) -> FakeGateway:
        fake = FakeGateway(scripts, reject)
        await fake.start()
        started.append(fake)
        return fake

    yield make
    for fake in started:
        await fake.stop()


def rest(events: list[dict[str, Any]] | None = None, me_status: int = 200) -> httpx.MockTransport:
    """The REST side: ``events?since=`` over ``events``, and ``/api/v1/me``."""
    stored = events if events is not None else [event(s) for s in range(1, TERMINAL + 1)]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/me":
            if me_status != 200:
                return httpx.Response(
                    me_status,
                    json={"error": {"code": "unauthorized", "message": "invalid or revoked API key"}},
                )
            return httpx.Response(200, json={"organization": {"id": "org_1"}})
        since = int(request.url.params.get("since", "0"))
        limit = int(request.url.params.get("limit", "1000"))
        items = [e for e in stored if e["seq"] > since][:limit]
        return httpx.Response(200, json={"items": items, "nextSince": None})

    return httpx.MockTransport(handler)


def client_for(fake: FakeGateway, transport: httpx.MockTransport | None = None, **kwargs: Any) -> Client:
    return Client(
        fake.url, "tsk_test", transport=transport or rest(), reconnect=kwargs.pop("reconnect", FAST), env={}
    )


async def seqs_of(client: Client, since: int = 0) -> list[int]:
    async with asyncio.timeout(10):
        return [e["seq"] async for e in client.watch(EXEC, since=since)]


async def test_watch_yields_every_event_once_and_stops_after_the_terminal_one(gateway) -> None:
    async def everything(ws: ServerConnection, sub: dict[str, Any]) -> None:
        await replay(ws, sub)
        await send_event(ws, event(TERMINAL + 1))  # anything after the terminal event is not the caller's

    fake = await gateway([everything])
    async with client_for(fake) as client:
        assert await seqs_of(client) == [1, 2, 3, 4, 5, 6]
    assert fake.sinces == [0]
    assert fake.subscribes[0]["type"] == "subscribe"
    assert fake.subscribes[0]["data"]["channel"] == f"executions:{EXEC}"
    assert fake.headers[0]["Authorization"] == "Bearer tsk_test"


async def test_a_dropped_connection_resumes_from_the_last_seq_without_duplicates(gateway) -> None:
    async def drop_after_three(ws: ServerConnection, sub: dict[str, Any]) -> None:
        await replay(ws, sub, upto=3)
        ws.transport.abort()  # no close frame: what a killed gateway looks like

    async def resend_some(ws: ServerConnection, sub: dict[str, Any]) -> None:
        await replay(ws, sub, overlap=2)  # at-least-once on the wire: the client must drop 2 and 3

    fake = await gateway([drop_after_three, resend_some])
    async with client_for(fake) as client:
        assert await seqs_of(client) == [1, 2, 3, 4, 5, 6]
    assert fake.sinces == [0, 3]


async def test_slow_consumer_close_resubscribes_at_once_with_since(gateway) -> None:
    async def slow(ws: ServerConnection, sub: dict[str, Any]) -> None:
        await replay(ws, sub, upto=2)
        await ws.close(4008, "slow_consumer")

    fake = await gateway([slow, replay])
    # A backoff of a minute would time the test out: 4008 must not wait for it.
    async with client_for(fake, reconnect=Backoff(initial=60, maximum=60)) as client:
        assert await seqs_of(client) == [1, 2, 3, 4, 5, 6]
    assert fake.sinces == [0, 2]


async def test_a_server_shutdown_is_followed_by_a_reconnect_with_backoff(gateway) -> None:
    async def going_away(ws: ServerConnection, sub: dict[str, Any]) -> None:
        await replay(ws, sub, upto=4)
        await ws.close(1001, "server shutdown")

    fake = await gateway([going_away, replay])
    async with client_for(fake) as client:
        assert await seqs_of(client) == [1, 2, 3, 4, 5, 6]
    assert fake.sinces == [0, 4]


async def test_watch_survives_a_gateway_that_is_down_for_a_while(gateway) -> None:
    fake = await gateway([replay])
    port = fake.port
    await fake.stop()  # refused connections until it is back on the same port
    async with client_for(fake) as client:
        sub = client.watch(EXEC)
        first = asyncio.ensure_future(sub.__anext__())
        async with asyncio.timeout(10):
            while sub.state is not State.WAITING or sub.failures < 3:
                await asyncio.sleep(0.01)
        await fake.start(port)
        async with asyncio.timeout(10):
            seqs = [(await first)["seq"]] + [e["seq"] async for e in sub]
    assert seqs == [1, 2, 3, 4, 5, 6]
    assert sub.state is State.CLOSED


async def test_a_hole_in_seq_is_filled_from_the_events_endpoint(gateway) -> None:
    async def skip_ahead(ws: ServerConnection, sub: dict[str, Any]) -> None:
        await subscribed(ws, sub)
        for seq in (1, 2, 5, 6):  # 3 and 4 lost between the bus and the gateway
            await send_event(ws, event(seq))

    fake = await gateway([skip_ahead])
    async with client_for(fake) as client:
        assert await seqs_of(client) == [1, 2, 3, 4, 5, 6]


async def test_events_conflated_by_a_backed_up_gateway_are_fetched_from_the_store(gateway) -> None:
    async def conflating(ws: ServerConnection, sub: dict[str, Any]) -> None:
        await subscribed(ws, sub)
        for seq in (1, 2, 3):
            await send_event(ws, event(seq))
        body = event(5)  # the latest log kept, 4 dropped under backpressure
        envelope = {
            "type": "log",
            "channel": f"executions:{EXEC}",
            "timestamp": body["timestamp"],
            "data": body,
        }
        await ws.send(json.dumps({**envelope, "conflated": [4]}))
        await send_event(ws, event(6))

    fake = await gateway([conflating])
    async with client_for(fake) as client:
        events = [e async for e in client.watch(EXEC)]
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5, 6]
    assert events[3]["message"] == "event 4"


async def test_watch_since_skips_what_the_caller_has_seen(gateway) -> None:
    fake = await gateway([replay])
    async with client_for(fake) as client:
        assert await seqs_of(client, since=4) == [5, 6]
    assert fake.sinces == [4]


async def test_watch_since_the_end_of_a_finished_execution_ends_at_once(gateway) -> None:
    async def finished(ws: ServerConnection, sub: dict[str, Any]) -> None:
        data = {"channel": sub["data"]["channel"], "replayed": 0, "lastSeq": TERMINAL,
                "snapshot": {"status": "completed", "lastSeq": TERMINAL}}  # fmt: skip
        await ws.send(json.dumps({"type": "subscribed", "id": sub["id"], "data": data}))

    fake = await gateway([finished])
    async with client_for(fake) as client:
        assert await seqs_of(client, since=TERMINAL) == []
    assert fake.sinces == [TERMINAL]


async def test_polling_since_the_end_of_a_finished_execution_ends_at_once(gateway) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return httpx.Response(200, json={"items": [], "nextSince": None})
        return httpx.Response(200, json={"id": EXEC, "status": "failed", "lastSeq": TERMINAL})

    fake = await gateway([replay])
    transport = httpx.MockTransport(handler)
    async with Client(fake.url + "/elsewhere", "k", transport=transport, reconnect=FAST, env={}) as client:
        assert await seqs_of(client, since=TERMINAL) == []


async def test_the_subscribed_snapshot_is_kept(gateway) -> None:
    fake = await gateway([replay])
    async with client_for(fake) as client:
        sub = client.watch(EXEC)
        async with asyncio.timeout(10):
            await sub.__anext__()
            assert sub.snapshot == {"status": "running", "lastSeq": TERMINAL}
            assert sub.state is State.SUBSCRIBED
            await sub.aclose()
        assert sub.state is State.CLOSED


async def test_a_handshake_refused_with_401_raises_auth_error(gateway) -> None:
    body = json.dumps({"error": {"code": "unauthorized", "message": "invalid or revoked API key"}}).encode()
    fake = await gateway([replay], reject=Response(401, "Unauthorized", Headers(), body))
    async with client_for(fake) as client:
        with pytest.raises(AuthError) as caught:
            await seqs_of(client)
    assert caught.value.status == 401
    assert caught.value.message == "invalid or revoked API key"


@pytest.mark.parametrize(("code", "status"), [(4401, 401), (4403, 403)])
async def test_an_auth_close_code_raises_auth_error(gateway, code: int, status: int) -> None:
    async def refuse(ws: ServerConnection, sub: dict[str, Any]) -> None:
        await ws.close(code, "token expired")

    fake = await gateway([refuse])
    async with client_for(fake) as client:
        with pytest.raises(AuthError) as caught:
            await seqs_of(client)
    assert (caught.value.status, caught.value.message) == (status, "token expired")
    assert len(fake.subscribes) == 1, "an auth failure must not be retried"


@pytest.mark.parametrize(("code", "error"), [("not_found", NotFoundError), ("forbidden", AuthError),
                                             ("bad_request", BadRequestError)])  # fmt: skip
async def test_an_error_reply_to_the_subscription_raises(gateway, code: str, error: type[Exception]) -> None:
    async def refuse(ws: ServerConnection, sub: dict[str, Any]) -> None:
        await ws.send(
            json.dumps({"type": "error", "id": sub["id"], "data": {"code": code, "message": f"no: {code}"}})
        )

    fake = await gateway([refuse])
    async with client_for(fake) as client:
        with pytest.raises(error, match=f"no: {code}"):
            await seqs_of(client)


@pytest.mark.parametrize("code", ["rate_limited", "unavailable"])
async def test_a_passing_refusal_of_the_subscription_is_retried(gateway, code: str) -> None:
    async def not_now(ws: ServerConnection, sub: dict[str, Any]) -> None:
        await ws.send(
            json.dumps({"type": "error", "id": sub["id"], "data": {"code": code, "message": "later"}})
        )

    fake = await gateway([not_now, replay])
    async with client_for(fake) as client:
        assert await seqs_of(client) == [1, 2, 3, 4, 5, 6]
    assert fake.sinces == [0, 0]


async def test_an_unrelated_error_or_garbage_frame_does_not_end_the_watch(gateway) -> None:
    async def noisy(ws: ServerConnection, sub: dict[str, Any]) -> None:
        await subscribed(ws, sub)
        await ws.send("not json")
        await ws.send(
            json.dumps({"type": "error", "id": "other", "data": {"code": "bad_request", "message": "x"}})
        )
        await ws.send(json.dumps({"type": "pong", "data": {}}))
        for seq in range(1, TERMINAL + 1):
            await send_event(ws, event(seq))

    fake = await gateway([noisy])
    async with client_for(fake) as client:
        assert await seqs_of(client) == [1, 2, 3, 4, 5, 6]


async def test_without_a_gateway_watch_follows_the_events_endpoint(gateway) -> None:
    fake = await gateway([replay])
    # Under a path prefix the fake answers the handshake with 404: a server without /ws.
    async with Client(
        fake.url + "/elsewhere", "tsk_test", transport=rest(), reconnect=FAST, env={}
    ) as client:
        sub = client.watch(EXEC)
        async with asyncio.timeout(10):
            seqs = [e["seq"] async for e in sub]
    assert seqs == [1, 2, 3, 4, 5, 6]
    assert fake.subscribes == []


async def test_a_bare_403_handshake_with_a_good_key_means_no_gateway(gateway) -> None:
    fake = await gateway([replay], reject=Response(403, "Forbidden", Headers(), b""))
    async with client_for(fake) as client:
        assert await seqs_of(client) == [1, 2, 3, 4, 5, 6]
    assert fake.subscribes == []


async def test_a_bare_403_handshake_with_a_bad_key_raises_auth_error(gateway) -> None:
    fake = await gateway([replay], reject=Response(403, "Forbidden", Headers(), b""))
    async with client_for(fake, transport=rest(me_status=401)) as client:
        with pytest.raises(AuthError, match="invalid or revoked"):
            await seqs_of(client)


async def test_polling_waits_for_events_that_are_not_there_yet() -> None:
    stored: list[dict[str, Any]] = [event(1), event(2)]
    polls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal polls
        polls += 1
        if polls == 3:
            stored.extend(event(s) for s in range(3, TERMINAL + 1))
        since = int(request.url.params.get("since", "0"))
        return httpx.Response(200, json={"items": [e for e in stored if e["seq"] > since], "nextSince": None})

    fake = FakeGateway([replay])
    await fake.start()
    try:
        transport = httpx.MockTransport(handler)
        async with Client(
            fake.url + "/elsewhere", "k", transport=transport, reconnect=FAST, env={}
        ) as client:
            assert await seqs_of(client) == [1, 2, 3, 4, 5, 6]
    finally:
        await fake.stop()
    assert polls >= 3


async def test_subscribe_on_an_org_channel_resumes_from_the_last_id_and_dedupes(gateway) -> None:
    bodies = [event(1, "exec_a"), event(1, "exec_b"), event(2, "exec_a"), event(2, "exec_b")]

    async def first(ws: ServerConnection, sub: dict[str, Any]) -> None:
        await ws.send(json.dumps({"type": "subscribed", "id": sub["id"], "data": {"channel": "executions"}}))
        for body in bodies[:2]:
            await send_event(ws, body, "executions")
        ws.transport.abort()

    async def again(ws: ServerConnection, sub: dict[str, Any]) -> None:
        await ws.send(json.dumps({"type": "subscribed", "id": sub["id"], "data": {"channel": "executions"}}))
        for body in bodies[1:]:  # replays exec_b:1 again (at least once)
            await send_event(ws, body, "executions")

    fake = await gateway([first, again])
    seen: list[str] = []
    async with client_for(fake) as client:
        sub = client.subscribe(
            "executions", filters={"types": ["execution."]}, since="2025-08-07T00:00:00.000Z"
        )
        async with asyncio.timeout(10):
            async for e in sub:
                seen.append(e["id"])
                if len(seen) == 4:
                    break
        await sub.aclose()
    assert seen == ["exec_a:1", "exec_b:1", "exec_a:2", "exec_b:2"]
    assert fake.sinces == ["2025-08-07T00:00:00.000Z", "exec_b:1"]
    assert fake.subscribes[0]["data"]["filters"] == {"types": ["execution."]}


def test_backoff_grows_exponentially_to_its_maximum_with_jitter() -> None:
    backoff = Backoff(initial=0.1, maximum=2.0, multiplier=2.0, jitter=0.5)
    rng = random.Random(7)
    for failures, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (5, 1.6), (6, 2.0), (50, 2.0)]:
        delays = [backoff.delay(failures, rng) for _ in range(200)]
        assert all(ceiling * 0.5 <= d <= ceiling for d in delays), (failures, min(delays), max(delays))
        assert max(delays) - min(delays) > ceiling * 0.3, "jitter spreads reconnects out"
    assert Backoff(jitter=0).delay(3) == pytest.approx(0.4)


def test_channel_names_and_urls() -> None:
    assert execution_of("executions:exec_1") == "exec_1"
    assert execution_of("flows.org_1.exec_1") == "exec_1"
    assert execution_of("executions") is None
    assert execution_of("workflows:flow_1") is None
    assert ws_url("http://127.0.0.1:8000") == "ws://127.0.0.1:8000/ws"
    assert ws_url("https://tolstoy.example.com/base/") == "wss://tolstoy.example.com/base/ws"
