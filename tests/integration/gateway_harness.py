"""Helpers for the gateway tests: a real uvicorn server in-process, a WebSocket client, an event producer."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import uvicorn
from websockets.asyncio.client import ClientConnection, connect

from tests.backends import IN_CI
from tolstoy.api.app import create_app
from tolstoy.events.bus import Bus, Handler, ResyncHandler, Subscription
from tolstoy.events.types import Event
from tolstoy.gateway.fastws import GatewayWebSocketProtocol
from tolstoy.store import executions as exec_store
from tolstoy.store import flows as flow_store
from tolstoy.store import identity
from tolstoy.store.journal import Write
from tolstoy.timeutil import now_ms

FLOW = {
    "name": "watched",
    "steps": [
        {"id": "a", "type": "data_transform", "config": {"expression": "1"}},
        {"id": "b", "type": "data_transform", "config": {"expression": "2"}},
    ],
}


@asynccontextmanager
async def serve(services: Any) -> AsyncIterator[str]:
    """Serve the app with uvicorn and the gateway's protocol on a free port; yields ``host:port``."""

    async def existing() -> Any:
        return services

    app = create_app(existing)
    app.state.services = services
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, ws=GatewayWebSocketProtocol, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    server.capture_signals = _no_signals  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


@contextmanager
def _no_signals() -> Iterator[None]:
    yield


@dataclass
class Client:
    """A WebSocket client speaking PROTOCOL.md §3, with a short timeout on every receive."""

    ws: ClientConnection
    timeout: float = 10.0
    _ids: int = 0
    stash: list[dict[str, Any]] = field(default_factory=list)

    async def send(self, type_: str, data: dict[str, Any] | None = None, id_: Any = "auto") -> Any:
        if id_ == "auto":
            self._ids += 1
            id_ = f"r{self._ids}"
        message: dict[str, Any] = {"type": type_, "data": data or {}}
        if id_ is not None:
            message["id"] = id_
        await self.ws.send(orjson.dumps(message).decode())
        return id_

    async def recv(self) -> dict[str, Any]:
        if self.stash:
            return self.stash.pop(0)
        raw = await asyncio.wait_for(self.ws.recv(), self.timeout)
        value: dict[str, Any] = orjson.loads(raw)
        return value

    async def reply(self, request_id: Any) -> dict[str, Any]:
        """The next control message answering ``request_id`` (events received meanwhile are kept)."""
        kept: list[dict[str, Any]] = []
        while True:
            message = await self.recv()
            if message.get("id") == request_id and message["type"] in (
                "subscribed",
                "unsubscribed",
                "pong",
                "error",
            ):
                self.stash = kept + self.stash
                return message
            kept.append(message)

    async def subscribe(self, channel: str, **data: Any) -> dict[str, Any]:
        request_id = await self.send("subscribe", {"channel": channel, **data})
        return await self.reply(request_id)

    async def events(self, n: int) -> list[dict[str, Any]]:
        """The next ``n`` event deliveries (control messages in between are an error)."""
        out = []
        while len(out) < n:
            message = await self.recv()
            assert "channel" in message, f"expected an event delivery, got {message}"
            out.append(message)
        return out

    async def events_until(self, predicate: Any) -> list[dict[str, Any]]:
        out = []
        while True:
            message = await self.recv()
            if "channel" in message:
                out.append(message)
                if predicate(message):
                    return out


@asynccontextmanager
async def client(
    address: str, credential: str | None, *, via: str = "bearer", **kwargs: Any
) -> AsyncIterator[Client]:
    url, headers = f"ws://{address}/ws", {}
    if via == "bearer" and credential:
        headers["Authorization"] = f"Bearer {credential}"
    elif via == "x-api-key" and credential:
        headers["X-API-Key"] = credential
    elif via == "query" and credential:
        url += f"?token={credential}"
    async with connect(url, additional_headers=headers, max_size=None, **kwargs) as ws:
        yield Client(ws)


async def new_org(services: Any) -> dict[str, str]:
    row, key = await identity.create_organization(services.db, f"org-{secrets.token_hex(3)}")
    return {"id": row["id"], "key": key}


@dataclass
class Producer:
    """Commits events of one execution straight through the journal (the worker never claims it)."""

    services: Any
    org_id: str
    flow_id: str
    execution_id: str
    seq: int = 1

    async def emit(self, n: int = 1, type_: str = "log", per_write: int = 1, **fields: Any) -> None:
        for _ in range(0, n, per_write):
            write = Write(self.execution_id, self.org_id, self.flow_id)
            for _ in range(min(per_write, n)):
                self.seq += 1
                body = {"level": "info", "message": f"m{self.seq}", "stepId": "a"} if type_ == "log" else {}
                write.event(type_, **{**body, **fields})
            await self.services.journal.commit(write)

    async def finish(self) -> None:
        write = Write(self.execution_id, self.org_id, self.flow_id, execution={"status": "completed"})
        self.seq += 1
        write.event(
            "execution.completed",
            status="completed",
            duration=1,
            output={},
            totalSteps=2,
            completedSteps=2,
            failedSteps=0,
            skippedSteps=0,
        )
        await self.services.journal.commit(write)


async def producer(services: Any, org_id: str, flow_id: str | None = None) -> Producer:
    """A running execution (seq 1: ``execution.started``) of a flow of ``org_id``."""
    if flow_id is None:
        flow_id = (
            await flow_store.create(services.db, org_id, {**FLOW, "name": f"f-{secrets.token_hex(3)}"})
        )["id"]
    now = now_ms()
    row = exec_store.new_row(
        org_id, flow_id, 1, 2, now, status="running", run_after=now + 86_400_000, started_at=now
    )
    write = Write(row["id"], org_id, flow_id, create=row)
    write.event("execution.started", status="running", totalSteps=2)
    await services.journal.commit(write)
    return Producer(services, org_id, flow_id, row["id"])


def seqs(events: list[dict[str, Any]]) -> list[int]:
    return [e["data"]["seq"] for e in events]


def assert_in_order(events: list[dict[str, Any]], first: int, last: int) -> None:
    got = seqs(events)
    assert got == list(range(first, last + 1)), f"expected seq {first}..{last} once each, in order; got {got}"


class DroppingBus(Bus):
    """Wraps a bus and drops the published batches ``drop`` picks (at-most-once, on purpose)."""

    def __init__(self, inner: Bus, drop: Callable[[Sequence[Event]], bool]) -> None:
        self.inner, self.drop = inner, drop
        self.dropped: list[int] = []

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def publish(self, org_id: str, events: Sequence[Event]) -> None:
        if self.drop(events):
            self.dropped.extend(e.seq for e in events)
            return
        await self.inner.publish(org_id, events)

    async def subscribe(
        self, org_id: str, handler: Handler, on_resync: ResyncHandler | None = None
    ) -> Subscription:
        return await self.inner.subscribe(org_id, handler, on_resync)


@asynccontextmanager
async def open_services(settings: Any, bus: Bus | None = None, workers: int = 0) -> AsyncIterator[Any]:
    from tolstoy.services import Services

    services = await Services.open(settings, workers=workers, bus=bus)
    try:
        yield services
    finally:
        await services.close(grace_s=1.0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisProcess:
    """A private ``redis-server`` on a spare port, started and stopped by PID (never the shared one)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            if IN_CI:
                pytest.fail("redis-server is not installed (CI=true: a missing service fails the run)")
            pytest.skip("redis-server is not installed")
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self._answers():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.02)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)
