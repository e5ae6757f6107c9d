"""The gateway of one process: sessions, organization routes, per-tick writes and housekeeping.

Everything runs on the event loop without locks. Outboxes that received frames
during a tick register here; one callback at the end of the tick writes each of
them once (coalescing every event of the tick into one write per connection).
A sweeper pings WebSockets, closes silent ones, ends expired or revoked
credentials, and checks watched executions against the store.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog

from tolstoy import metrics
from tolstoy.config import Settings
from tolstoy.events.bus.base import Bus
from tolstoy.gateway import auth
from tolstoy.gateway.channels import Channel, Filters
from tolstoy.gateway.connection import MAX_QUEUE_BYTES, MAX_QUEUE_MESSAGES, Outbox
from tolstoy.gateway.protocol import CloseCode
from tolstoy.gateway.route import TAIL_IDLE_S, OrgRoute
from tolstoy.gateway.session import Session
from tolstoy.gateway.stats import GatewayStats
from tolstoy.gateway.topic import Subscription
from tolstoy.store.db import Database

log = structlog.get_logger(__name__)

TAIL_CHECK_S = 5.0
REVOCATION_CHECK_S = 1.0


class Hub:
    """One per process (``services.gateway``)."""

    def __init__(self, settings: Settings, db: Database, bus: Bus) -> None:
        self.settings, self.db, self.bus = settings, db, bus
        self.sessions: set[Session] = set()
        self.routes: dict[str, OrgRoute] = {}
        self.stats = GatewayStats()
        self._loop = asyncio.get_running_loop()
        self._dirty: list[Outbox] = []
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self.closing = False
        self.tail_check_s = TAIL_CHECK_S
        self.queue_max_bytes, self.queue_max_messages = MAX_QUEUE_BYTES, MAX_QUEUE_MESSAGES
        """Bounds of every new client's outbox."""

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep(), name="gateway-sweeper")

    async def close(self) -> None:
        """Graceful stop: every client gets 1001, then the bus subscriptions end."""
        self.closing = True
        for session in tuple(self.sessions):
            session.close(CloseCode.GOING_AWAY, "server shutdown")
        self._flush()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task in tuple(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, *(r.close() for r in self.routes.values()), return_exceptions=True)
        self.routes.clear()

    def connection_count(self) -> int:
        return len(self.sessions)

    # -- sessions and subscriptions ---------------------------------------------------------

    def register(self, session: Session) -> None:
        self.sessions.add(session)
        (metrics.WS_CONNECTIONS if session.transport == "ws" else metrics.SSE_CONNECTIONS).inc()

    def unregister(self, session: Session) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            self.stats.session_ended(session)
            (metrics.WS_CONNECTIONS if session.transport == "ws" else metrics.SSE_CONNECTIONS).dec()

    def route(self, org_id: str) -> OrgRoute:
        route = self.routes.get(org_id)
        if route is None:
            route = self.routes[org_id] = OrgRoute(self, org_id)
        return route

    def drop_route(self, route: OrgRoute) -> None:
        """Called after a route's linger: leave the bus if it is still unwatched."""
        if route.topics or self.routes.get(route.org_id) is not route:
            return
        del self.routes[route.org_id]
        self.spawn(route.close())

    def open_subscription(self, session: Session, channel: Channel, filters: Filters) -> Subscription:
        topic = self.route(session.org_id).topic(channel, filters)
        sub = Subscription(session, channel, filters, topic)
        topic.add_joiner(sub)
        return sub

    def close_subscription(self, sub: Subscription) -> None:
        sub.topic.remove(sub)
        route = self.routes.get(sub.session.org_id)
        if route is not None:
            route.release(sub.topic)

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- per-tick writes --------------------------------------------------------------------

    def schedule(self, outbox: Outbox) -> None:
        """``outbox`` has frames: write it at the end of this tick."""
        self._dirty.append(outbox)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, []
        sent: dict[str, int] = {}
        for outbox in dirty:
            before = outbox.sent
            outbox.flush()
            if outbox.sent > before:
                sent[outbox.transport] = sent.get(outbox.transport, 0) + outbox.sent - before
        for transport, count in sent.items():
            metrics.MESSAGES_OUT.labels(transport).inc(count)

    # -- housekeeping -----------------------------------------------------------------------

    async def _sweep(self) -> None:
        ping, idle = self.settings.ws_ping_interval_s, self.settings.ws_idle_timeout_s
        base = min(max(min(ping, idle) / 4, 0.05), 5.0)
        next_tails = next_revocations = 0.0
        while True:
            await asyncio.sleep(min(base, self.tail_check_s, REVOCATION_CHECK_S))
            now = self._loop.time()
            self._keepalive(now, ping, idle)
            if now >= next_tails:
                next_tails = now + self.tail_check_s
                for route in tuple(self.routes.values()):
                    self.spawn(self._safely(route.check_tails(min(TAIL_IDLE_S, self.tail_check_s))))
            if now >= next_revocations and self.sessions:
                next_revocations = now + REVOCATION_CHECK_S
                await self._safely(self._end_revoked())

    def _keepalive(self, now: float, ping: float, idle: float) -> None:
        wall = time.time()
        for session in tuple(self.sessions):
            if session.viewer.expired(wall):
                session.close(CloseCode.UNAUTHORIZED, "token expired")
                continue
            keepalive = getattr(session.sink, "keepalive", None)
            if keepalive is not None and not keepalive(now, ping, idle):
                session.close(CloseCode.GOING_AWAY, "idle timeout")

    async def _end_revoked(self) -> None:
        keys = {s.viewer.key_id for s in self.sessions if s.viewer.key_id is not None}
        revoked = await auth.revoked_keys(self.db, keys)
        for session in tuple(self.sessions):
            if session.viewer.key_id in revoked:
                session.close(CloseCode.UNAUTHORIZED, "credential revoked")

    @staticmethod
    async def _safely(coro: Any) -> None:
        try:
            await coro
        except Exception as exc:
            log.warning("gateway housekeeping failed", error=str(exc))
