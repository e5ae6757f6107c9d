"""One client of the gateway (a WebSocket connection or an SSE stream) and its subscriptions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from tolstoy.gateway import replay
from tolstoy.gateway.auth import Viewer
from tolstoy.gateway.channels import parse_channel, parse_filters
from tolstoy.gateway.connection import Outbox, Sink
from tolstoy.gateway.frames import Frame
from tolstoy.gateway.protocol import (
    CloseCode,
    ErrorCode,
    ProtocolError,
    RequestId,
    error_message,
    server_message,
)
from tolstoy.gateway.topic import Subscription

if TYPE_CHECKING:
    from tolstoy.gateway.hub import Hub

log = structlog.get_logger(__name__)

MAX_SUBSCRIPTIONS = 128
RATE_BURST, RATE_PER_S = 100.0, 50.0
"""Client messages: a burst of 100, then 50 per second (beyond: ``rate_limited``)."""


class Session:
    """A client: who it is (``viewer``), what it watches (``subs`` by channel name) and its ``outbox``."""

    def __init__(self, hub: Hub, viewer: Viewer, sink: Sink, transport: str) -> None:
        self.hub, self.viewer, self.sink, self.transport = hub, viewer, sink, transport
        self.announces = transport == "ws"
        """Whether control messages (``subscribed`` …) are sent: WebSocket yes, SSE no."""
        self.outbox = Outbox(
            sink,
            hub.schedule,
            max_bytes=hub.queue_max_bytes,
            max_messages=hub.queue_max_messages,
            transport=transport,
        )
        self.outbox.on_overflow = self._slow_consumer
        self.on_execution_end: Callable[[], None] | None = None
        """Set by SSE: a per-execution subscription's execution ended and all of it was pushed."""
        self.subs: dict[str, Subscription] = {}
        self.closed = False
        self.close_code: int | None = None
        self._tokens, self._refilled = RATE_BURST, time.monotonic()

    @property
    def org_id(self) -> str:
        return self.viewer.org_id

    # -- control messages -----------------------------------------------------------------

    def reply(self, type_: str, data: dict[str, Any], request_id: RequestId = None) -> None:
        self.outbox.push(Frame(server_message(type_, data, request_id)))

    def error(self, code: ErrorCode, message: str, request_id: RequestId = None) -> None:
        """Answer ``error``; a stream without control messages (SSE) ends instead."""
        if not self.announces:
            self.close(1011, message)
            return
        self.outbox.push(Frame(error_message(code, message, request_id)))

    def allow_message(self) -> bool:
        """Token bucket over client messages."""
        now = time.monotonic()
        self._tokens = min(RATE_BURST, self._tokens + (now - self._refilled) * RATE_PER_S)
        self._refilled = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    # -- subscriptions --------------------------------------------------------------------

    def subscribe(self, data: dict[str, Any], request_id: RequestId = None) -> Subscription:
        """Validate and start a subscription; its join (snapshot, replay, then live) runs as a task.

        Raises ``ProtocolError`` for a request refused outright.
        """
        channel = parse_channel(data.get("channel"), self.viewer)
        filters = parse_filters(data.get("filters"))
        since = replay.parse_since(channel, data.get("since"))
        if channel.name in self.subs:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"already subscribed to {channel.name!r}", request_id)
        if len(self.subs) >= MAX_SUBSCRIPTIONS:
            raise ProtocolError(
                ErrorCode.RATE_LIMITED, f"at most {MAX_SUBSCRIPTIONS} subscriptions per connection"
            )
        sub = self.hub.open_subscription(self, channel, filters)
        sub.on_end = self.on_execution_end
        self.subs[channel.name] = sub
        sub.task = asyncio.get_running_loop().create_task(self._join(sub, since, request_id))
        return sub

    async def _join(self, sub: Subscription, since: replay.Since, request_id: RequestId) -> None:
        try:
            await replay.join(self.hub, sub, since, request_id)
        except ProtocolError as exc:
            self._drop(sub)
            self.error(exc.code, exc.message, request_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("subscription failed", error=str(exc), channel_kind=sub.channel.kind.value)
            self._drop(sub)
            self.error(ErrorCode.UNAVAILABLE, "the event store is unavailable; retry shortly", request_id)

    def unsubscribe(self, data: dict[str, Any], request_id: RequestId = None) -> None:
        name = data.get("channel")
        if not isinstance(name, str) or not name:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "'channel' must be a non-empty string", request_id)
        sub = self.subs.get(name)
        if sub is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"not subscribed to {name!r}", request_id)
        self._drop(sub)
        self.reply("unsubscribed", {"channel": name}, request_id)

    def _drop(self, sub: Subscription) -> None:
        if self.subs.get(sub.channel.name) is sub:
            del self.subs[sub.channel.name]
        if sub.task is not None and sub.task is not asyncio.current_task():
            sub.task.cancel()
        self.hub.close_subscription(sub)

    # -- lifecycle ------------------------------------------------------------------------

    def close(self, code: int = 1000, reason: str = "") -> None:
        """End the session: drop its subscriptions and close the transport (idempotent)."""
        if self.closed:
            return
        self.closed, self.close_code = True, code
        for sub in list(self.subs.values()):
            self._drop(sub)
        self.outbox.close()
        self.sink.close(code, reason)
        self.hub.unregister(self)

    def _slow_consumer(self) -> None:
        log.info("closing a slow consumer", transport=self.transport)
        self.hub.stats.count_slow_consumer(self.org_id)
        self.close(CloseCode.SLOW_CONSUMER, "slow_consumer")
