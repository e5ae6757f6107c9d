"""The live half of the Python client: subscriptions over the WebSocket gateway that survive disconnects.

A ``Subscription`` is an async iterator of events (PROTOCOL.md §1 bodies). It
connects to ``/ws``, subscribes, and on any disconnect reconnects with
exponential backoff and jitter and subscribes again from where it stopped:

- on ``executions:{id}`` (and its alias ``flows.{org}.{id}``) it resumes with
  ``since`` = the last ``seq`` it yielded, drops anything at or below it, and
  fills a hole in ``seq`` from ``GET /api/v1/executions/{id}/events`` before
  going on, so the caller sees every event once, in order;
- on other channels it resumes from the last event ``id`` and drops ids it has
  already yielded (the server replays those at least once).

It raises only when waiting cannot help: a refused credential (HTTP 401/403 on
the handshake, close 4401/4403, or an ``unauthorized``/``forbidden`` reply) as
``AuthError``; an unknown execution or a malformed subscription as
``NotFoundError`` / ``BadRequestError``. A server without a gateway (``/ws``
answers 404) is followed by polling the events endpoint instead, for
per-execution channels.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import random
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from tolstoy.client import errors

if TYPE_CHECKING:
    from tolstoy.client.rest import Client

log = logging.getLogger("tolstoy.client")

TERMINAL_TYPES = frozenset({"execution.completed", "execution.failed", "execution.cancelled"})
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
CONTROL_TYPES = frozenset({"subscribed", "unsubscribed", "pong", "error"})
AUTH_CLOSE_CODES = {4401: ("unauthorized", 401), 4403: ("forbidden", 403)}
FATAL_REPLY_CODES = frozenset({"unauthorized", "forbidden", "not_found", "bad_request", "too_large"})
SEEN_IDS = 10_000
"""Event ids remembered per org-wide subscription for de-duplication."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays between reconnects: exponential from ``initial`` up to ``maximum``, with jitter."""

    initial: float = 0.1
    maximum: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.5
    """The share of each delay that is random (0: none, 1: anywhere from 0 to the full delay)."""

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after ``failures`` consecutive failed attempts (from 1)."""
        ceiling = min(self.maximum, self.initial * self.multiplier ** min(max(failures, 1) - 1, 32))
        return ceiling * (1 - self.jitter * (rng or random).random())


class State(enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    SUBSCRIBED = "subscribed"
    POLLING = "polling"
    WAITING = "waiting"
    """Disconnected, waiting to reconnect."""
    CLOSED = "closed"


class _Reconnect(Exception):
    """This connection is over; connect again (after a backoff unless ``at_once``)."""

    def __init__(self, reason: str, *, at_once: bool = False) -> None:
        super().__init__(reason)
        self.at_once = at_once


class _NoGateway(Exception):
    """The server answered the WebSocket handshake with 404."""


def execution_of(channel: str) -> str | None:
    """The execution id of a per-execution channel (``executions:{id}`` or ``flows.{org}.{id}``)."""
    if channel.startswith("executions:"):
        return channel.split(":", 1)[1] or None
    parts = channel.split(".")
    if len(parts) == 3 and parts[0] == "flows" and parts[2]:
        return parts[2]
    return None


def ws_url(http_url: str) -> str:
    scheme, sep, rest = http_url.partition("://")
    ws_scheme = {"http": "ws", "https": "wss"}.get(scheme.lower(), scheme)
    return f"{ws_scheme}{sep}{rest.rstrip('/')}/ws"


class Subscription:
    """Events of one channel, resumed across reconnects; ``async for event in subscription``."""

    _request_ids = itertools.count(1)

    def __init__(
        self,
        client: Client,
        channel: str,
        *,
        since: int | str | None = None,
        filters: Mapping[str, Sequence[str]] | None = None,
        stop_at_terminal: bool = False,
        poll_interval: float = 0.5,
    ) -> None:
        self.client = client
        self.channel = channel
        self.filters = {k: list(v) for k, v in (filters or {}).items()}
        self.execution_id = execution_of(channel)
        self.stop_at_terminal = stop_at_terminal
        self.poll_interval = poll_interval
        self.state = State.IDLE
        self.snapshot: dict[str, Any] | None = None
        """The execution as of subscribing (``subscribed`` reply of a per-execution channel)."""
        self.connects = 0
        self.last_seq: int = 0
        self.last_id: str | None = None
        self._since = since
        if self.execution_id is not None:
            self.last_seq = int(since or 0)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._failures = 0
        self._done = False
        self._gen = self._run()

    def __repr__(self) -> str:
        return f"Subscription(channel={self.channel!r}, state={self.state.value}, last_seq={self.last_seq})"

    @property
    def failures(self) -> int:
        """Connection attempts that failed in a row (0 once subscribed)."""
        return self._failures

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self

    async def __anext__(self) -> dict[str, Any]:
        return await self._gen.__anext__()

    async def aclose(self) -> None:
        await self._gen.aclose()
        self.state = State.CLOSED

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _run(self) -> AsyncGenerator[dict[str, Any], None]:
        try:
            while True:
                try:
                    async for event in self._session():
                        yield event
                    return  # the session ends by itself only after the terminal event
                except _NoGateway:
                    break
                except _Reconnect as why:
                    await self._pause_before_reconnect(why)
            async for event in self._poll():
                yield event
        finally:
            self.state = State.CLOSED

    async def _pause_before_reconnect(self, why: _Reconnect) -> None:
        self.state = State.WAITING
        if why.at_once:
            log.info("reconnecting to %s at once: %s", self.channel, why)
            return
        self._failures += 1
        delay = self.client.reconnect.delay(self._failures)
        log.info("reconnecting to %s in %.2fs (attempt %d): %s", self.channel, delay, self._failures, why)
        await asyncio.sleep(delay)

    async def _session(self) -> AsyncGenerator[dict[str, Any], None]:
        """One connection: subscribe, then yield accepted events until the watch ends or the link drops."""
        self.state = State.CONNECTING
        try:
            async with self._connect() as ws:
                self.connects += 1
                request_id = f"sub-{next(self._request_ids)}"
                subscribe = {"type": "subscribe", "id": request_id, "data": self._subscribe_data()}
                await ws.send(orjson.dumps(subscribe).decode())
                async for event in self._receive(ws, request_id):
                    yield event
                if self._done:
                    return
        except ConnectionClosed as exc:
            raise self._closed(exc) from None
        except InvalidStatus as exc:
            raise await self._rejected(exc) from None
        except (OSError, InvalidHandshake, TimeoutError, errors.ConnectionFailed, errors.ServerError) as exc:
            raise _Reconnect(f"{type(exc).__name__}: {exc}") from None
        raise _Reconnect("the server closed the connection")

    def _connect(self) -> Any:
        headers = {"Authorization": f"Bearer {self.client.api_key}"} if self.client.api_key else {}
        return connect(ws_url(self.client.url), additional_headers=headers, open_timeout=10, max_size=None,
                       ping_interval=20, ping_timeout=20)  # fmt: skip

    def _subscribe_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"channel": self.channel}
        since = self._resume_point()
        if since is not None:
            data["since"] = since
        if self.filters:
            data["filters"] = self.filters
        return data

    def _resume_point(self) -> int | str | None:
        if self.execution_id is not None:
            return self.last_seq
        return self.last_id if self.last_id is not None else self._since

    async def _receive(self, ws: ClientConnection, request_id: str) -> AsyncGenerator[dict[str, Any], None]:
        async for raw in ws:
            try:
                message = orjson.loads(raw)
            except ValueError:
                continue  # not ours to judge: skip what we cannot read
            if not isinstance(message, dict):
                continue
            kind = message.get("type")
            if kind == "subscribed":
                self._on_subscribed(message.get("data"))
            elif kind == "error":
                self._on_error(message, request_id)
            elif kind not in CONTROL_TYPES and isinstance(message.get("data"), dict):
                async for event in self._accept(message["data"]):
                    yield event
            if self._done:
                return

    def _on_subscribed(self, data: Any) -> None:
        self.state = State.SUBSCRIBED
        self._failures = 0
        if not isinstance(data, dict):
            return
        if isinstance(data.get("snapshot"), dict):
            self.snapshot = data["snapshot"]
        last_seq = data.get("lastSeq")
        if self.stop_at_terminal and isinstance(last_seq, int) and last_seq <= self.last_seq:
            # Nothing after `since` exists; if the execution is over, nothing ever will.
            self._done = str((self.snapshot or {}).get("status")) in TERMINAL_STATUSES

    def _on_error(self, message: dict[str, Any], request_id: str) -> None:
        error = errors.from_ws_error(message.get("data"))
        if message.get("id") != request_id:
            log.warning("gateway error on %s: %s", self.channel, error)
        elif error.code in FATAL_REPLY_CODES:
            raise error
        else:  # rate_limited, unavailable…: the subscription did not take; try again later
            raise _Reconnect(f"subscription refused for now: {error.message} ({error.code})")

    async def _accept(self, event: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
        """Yield ``event`` unless already seen; on a per-execution channel fill a hole in ``seq`` first."""
        seq = event.get("seq")
        if self.execution_id is not None and isinstance(seq, int):
            if seq <= self.last_seq:
                return
            if seq > self.last_seq + 1 and not self.filters:
                async for missing in self._backfill(self.execution_id, seq):
                    yield missing
            self.last_seq = seq
            self._done = self.stop_at_terminal and event.get("type") in TERMINAL_TYPES
            yield event
            return
        event_id = event.get("id")
        if isinstance(event_id, str):
            if event_id in self._seen:
                return
            self._seen[event_id] = None
            if len(self._seen) > SEEN_IDS:
                self._seen.popitem(last=False)
            self.last_id = event_id
        yield event

    async def _backfill(self, execution_id: str, before: int) -> AsyncGenerator[dict[str, Any], None]:
        """Events ``last_seq < seq < before`` from the store."""
        while self.last_seq + 1 < before:
            wanted = min(1000, before - self.last_seq - 1)
            page = await self.client.executions.events(execution_id, since=self.last_seq, limit=wanted)
            fresh = [
                e for e in page.items if isinstance(e.get("seq"), int) and self.last_seq < e["seq"] < before
            ]
            if not fresh:
                return
            for event in fresh:
                self.last_seq = event["seq"]
                yield event

    async def _poll(self) -> AsyncGenerator[dict[str, Any], None]:
        """Follow ``GET .../events?since=`` (a server without ``/ws``); per-execution channels only."""
        if self.execution_id is None:
            raise errors.NotFoundError(404, "not_found", f"{self.client.url} has no WebSocket gateway at /ws")
        self.state = State.POLLING
        idle, checked = 0, False
        while not self._done:
            try:
                page = await self._poll_once(self.execution_id, check_end=not checked)
                checked = True
            except (errors.ConnectionFailed, errors.ServerError) as exc:
                await self._pause_before_reconnect(_Reconnect(f"polling failed: {exc}"))
                self.state = State.POLLING
                continue
            self._failures = 0
            for event in page.items:
                async for accepted in self._accept(event):
                    yield accepted
                if self._done:
                    return
            idle = idle + 1 if page.next_since is None else 0
            if idle:
                await asyncio.sleep(min(self.poll_interval, 0.05 * 2**idle))

    async def _poll_once(self, execution_id: str, *, check_end: bool) -> Any:
        page = await self.client.executions.events(
            execution_id, since=self.last_seq, types=self.filters.get("types")
        )
        if check_end and not page.items and self.stop_at_terminal:  # `since` past the end of a finished one
            detail = await self.client.executions.get(execution_id)
            self._done = (
                detail.get("status") in TERMINAL_STATUSES and detail.get("lastSeq", 0) <= self.last_seq
            )
        return page

    def _closed(self, exc: ConnectionClosed) -> Exception:
        code = exc.rcvd.code if exc.rcvd is not None else None
        reason = exc.rcvd.reason if exc.rcvd is not None else ""
        if code in AUTH_CLOSE_CODES:
            name, status = AUTH_CLOSE_CODES[code]
            return errors.AuthError(status, name, reason or f"the gateway closed the connection with {code}")
        if code == 4008:  # slow_consumer: we are behind; resume from the last seq at once
            return _Reconnect("closed as a slow consumer (4008)", at_once=True)
        return _Reconnect(f"connection closed ({code}{': ' + reason if reason else ''})")

    async def _rejected(self, exc: InvalidStatus) -> Exception:
        status = exc.response.status_code
        if status == 404:
            return _NoGateway()
        if status == 401:
            return errors.from_response(
                status, _json_or_none(exc.response.body), "the gateway refused the credential"
            )
        if status == 403:
            # A server without a /ws route refuses every handshake with a bare 403 too: ask the REST API
            # whether the key is good (raises AuthError if not); if it is, there is no gateway for us.
            body = _json_or_none(exc.response.body)
            if body is not None:
                return errors.from_response(status, body, "the gateway refused the credential")
            await self.client.me()
            return _NoGateway()
        return _Reconnect(f"handshake answered {status}")


def _json_or_none(raw: bytes | bytearray | None) -> Any:
    try:
        return orjson.loads(raw or b"")
    except ValueError:
        return None
