"""The Redis bus (``redis://`` / ``rediss://``): per-organization pub/sub channels across processes.

Publishing never blocks or fails the journal: ``publish`` queues the batch and a
publisher task sends it (several batches per round trip under load), retrying
with backoff while Redis is unreachable; the queue is bounded, and what falls
off is still in the store. A message whose publishing fails (however often it is
retried) or that falls off the queue counts once in
``tolstoy_bus_publish_errors_total``; published events are counted by the journal.

One subscriber connection per bus SUBSCRIBEs to exactly the organizations that
have handlers in this process. It pings Redis when idle and declares the
connection dead when nothing (not even the PONG) comes back in time; it then
reconnects with exponential backoff and jitter, logs, counts
``tolstoy_bus_reconnects_total`` and calls every ``on_resync`` handler, because
Redis pub/sub is at-most-once and anything published meanwhile is gone from the
bus (never from the store).

Message format (one pub/sub message per published batch, events in commit
order): a JSON header line ``[1, [[executionId, orgId, flowId, seq, type, ts,
stepId, status, level], …]]`` then one line per event with its wire body, exactly
as committed (compact JSON never contains a raw newline).

URL options: ``?prefix=`` (channel prefix), ``health_interval=`` and
``health_timeout=`` (seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from collections.abc import Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
import structlog
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tolstoy import metrics
from tolstoy.events.bus.base import Bus, Handler, ResyncHandler, Subscription
from tolstoy.events.bus.resp import Endpoint, RespConnection, RespError
from tolstoy.events.channels import org_channel, org_of_channel
from tolstoy.events.types import Event

log = structlog.get_logger(__name__)

FORMAT_VERSION = 1
CONNECT_TIMEOUT_S = 2.0
CONFIRM_TIMEOUT_S = 2.0
"""How long ``subscribe`` waits for Redis to confirm before returning (the handler stays registered)."""
MAX_QUEUED_BATCHES = 10_000
PIPELINE_BATCHES = 256
SUBSCRIBER_GRACE_S = 2.0
"""How long a publisher back from an outage waits for this process's subscriber connection."""
BACKOFF_BASE_S, BACKOFF_MAX_S = 0.05, 2.0


def encode_batch(events: Sequence[Event]) -> bytes:
    """One bus message: the routing header line, then each event's committed body on its own line."""
    header = [
        [e.execution_id, e.org_id, e.flow_id, e.seq, e.type, e.ts, e.step_id, e.status, e.level]
        for e in events
    ]
    return b"\n".join([orjson.dumps([FORMAT_VERSION, header]), *(e.body.encode() for e in events)])


def decode_batch(payload: bytes) -> list[Event]:
    """The events of one bus message; raises ValueError when it is not one."""
    lines = payload.split(b"\n")
    version, header = orjson.loads(lines[0])
    if version != FORMAT_VERSION or len(header) != len(lines) - 1:
        raise ValueError(
            f"bus message of version {version!r} with {len(header)} events in {len(lines) - 1} lines"
        )
    return [
        Event(
            execution_id=h[0],
            org_id=h[1],
            flow_id=h[2],
            seq=h[3],
            type=h[4],
            ts=h[5],
            step_id=h[6],
            status=h[7],
            level=h[8],
            body=body.decode(),
        )
        for h, body in zip(header, lines[1:], strict=True)
    ]


def backoff_delay(attempt: int) -> float:
    """Exponential backoff with jitter: somewhere in the upper half of ``base * 2**attempt`` (capped)."""
    ceiling = min(BACKOFF_MAX_S, BACKOFF_BASE_S * (2 ** min(attempt, 16)))
    return random.uniform(ceiling / 2, ceiling)


def _split_url(url: str) -> tuple[str, dict[str, str]]:
    """The URL without our own options, and those options."""
    parts = urlsplit(url)
    ours = {"prefix", "health_interval", "health_timeout"}
    query = parse_qsl(parts.query, keep_blank_values=True)
    options = {k: v for k, v in query if k in ours}
    rest = urlencode([(k, v) for k, v in query if k not in ours])
    return urlunsplit(parts._replace(query=rest)), options


class _Outgoing:
    """One queued bus message; ``failed`` once its publishing failed (it is retried, counted once)."""

    __slots__ = ("channel", "failed", "payload")

    def __init__(self, channel: str, payload: bytes) -> None:
        self.channel, self.payload, self.failed = channel, payload, False


def _count_failed(batch: Sequence[_Outgoing]) -> None:
    """Count in ``tolstoy_bus_publish_errors_total`` the messages of ``batch`` not counted yet."""
    fresh = [outgoing for outgoing in batch if not outgoing.failed]
    for outgoing in fresh:
        outgoing.failed = True
    if fresh:
        metrics.BUS_PUBLISH_ERRORS.inc(len(fresh))


class _RedisSubscription(Subscription):
    def __init__(self, bus: RedisBus, org_id: str, handler: Handler, on_resync: ResyncHandler | None) -> None:
        self.bus, self.org_id, self.handler, self.on_resync = bus, org_id, handler, on_resync

    async def close(self) -> None:
        await self.bus._remove(self)


class RedisBus(Bus):
    """Per-organization channels on Redis pub/sub, with dead-connection detection and resync."""

    def __init__(self, url: str) -> None:
        self.url, options = _split_url(url)
        self.prefix = options.get("prefix", "")
        self.health_interval_s = float(options.get("health_interval", 3.0))
        self.health_timeout_s = float(options.get("health_timeout", 3.0))
        self._endpoint = Endpoint.from_url(self.url)
        self._client: Redis | None = None
        self._subs: dict[str, list[_RedisSubscription]] = {}
        self._queue: deque[_Outgoing] = deque()
        self._queued = asyncio.Event()
        self._wanted = asyncio.Event()
        self._lock = asyncio.Lock()
        self._conn: RespConnection | None = None
        self._sent: set[str] = set()
        self._confirmed: set[str] = set()
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._last_rx = 0.0
        self.connected = asyncio.Event()

    async def start(self) -> None:
        timeout = CONNECT_TIMEOUT_S
        no_retry = Retry(NoBackoff(), 0)  # the publisher task retries with its own backoff
        self._client = Redis.from_url(
            self.url, socket_connect_timeout=timeout, socket_timeout=timeout, retry=no_retry
        )
        self._tasks = [
            asyncio.create_task(self._publisher(), name="bus-publisher"),
            asyncio.create_task(self._subscriber(), name="bus-subscriber"),
        ]

    async def close(self) -> None:
        self._closing = True
        self._queued.set()
        if self._tasks:  # the publisher ends once its queue is sent: give it a moment (the store has it all)
            await asyncio.wait({self._tasks[0]}, timeout=1.0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._drop_connection()
        self._subs.clear()
        if self._client is not None:
            await self._client.aclose()

    # -- publishing -----------------------------------------------------------------------

    async def publish(self, org_id: str, events: Sequence[Event]) -> None:
        if not events:
            return
        # tolstoy_bus_published_total is the journal's to count (once per event, whatever the bus).
        if len(self._queue) >= MAX_QUEUED_BATCHES:
            _count_failed([self._queue.popleft()])
            log.warning(
                "bus publish queue full: dropped the oldest batch (subscribers backfill from the store)"
            )
        self._queue.append(_Outgoing(org_channel(self.prefix, org_id), encode_batch(events)))
        self._queued.set()

    async def _publisher(self) -> None:
        failures = 0
        while not (self._closing and not self._queue):
            if not self._queue:
                self._queued.clear()
                await self._queued.wait()
                continue
            if failures:
                await self._subscriber_back()
            batch = [self._queue[i] for i in range(min(len(self._queue), PIPELINE_BATCHES))]
            try:
                await self._send(batch)
            except Exception as exc:
                _count_failed(batch)
                if failures == 0:
                    log.warning("bus publish failed; retrying with backoff", error=str(exc))
                if self._closing:
                    return
                await asyncio.sleep(backoff_delay(failures))
                failures += 1
                continue
            if failures:
                log.info("bus publishing again", after_failures=failures)
            failures = 0
            for _ in batch:
                self._queue.popleft()

    async def _subscriber_back(self) -> None:
        """After an outage, give this process's subscriber connection a moment to be back first:
        what was queued meanwhile then reaches local subscribers live, not only by their resync."""
        if self._subs and not self.connected.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.connected.wait(), SUBSCRIBER_GRACE_S)

    async def _send(self, batch: list[_Outgoing]) -> None:
        assert self._client is not None
        if len(batch) == 1:
            await self._client.publish(batch[0].channel, batch[0].payload)
            return
        async with self._client.pipeline(transaction=False) as pipe:
            for outgoing in batch:
                pipe.publish(outgoing.channel, outgoing.payload)
            await pipe.execute()

    # -- subscribing ----------------------------------------------------------------------

    async def subscribe(
        self, org_id: str, handler: Handler, on_resync: ResyncHandler | None = None
    ) -> Subscription:
        """Register, then wait (briefly) until Redis confirms the channel so no later publish is missed.

        If Redis does not confirm in time the handler stays registered and
        ``on_resync`` is called once the subscriber connection is back.
        """
        sub = _RedisSubscription(self, org_id, handler, on_resync)
        self._subs.setdefault(org_id, []).append(sub)
        channel = org_channel(self.prefix, org_id)
        if channel in self._confirmed:
            return sub
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(channel, []).append(waiter)
        self._wanted.set()
        await self._sync_channel(channel)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), CONFIRM_TIMEOUT_S)
        except TimeoutError:
            log.warning("bus subscription not confirmed yet; it will resync when Redis is back")
        return sub

    async def _remove(self, sub: _RedisSubscription) -> None:
        subs = self._subs.get(sub.org_id)
        if subs is None or sub not in subs:
            return
        subs.remove(sub)
        if not subs:
            del self._subs[sub.org_id]
            await self._sync_channel(org_channel(self.prefix, sub.org_id))

    async def _sync_channel(self, channel: str) -> None:
        """SUBSCRIBE or UNSUBSCRIBE ``channel`` on the live connection to match the handlers."""
        async with self._lock:
            conn = self._conn
            if conn is None:
                return
            org = org_of_channel(self.prefix, channel)
            wanted = org is not None and org in self._subs
            try:
                if wanted and channel not in self._sent:
                    self._sent.add(channel)
                    conn.send("SUBSCRIBE", channel)
                elif not wanted and channel in self._sent:
                    self._sent.discard(channel)
                    self._confirmed.discard(channel)
                    conn.send("UNSUBSCRIBE", channel)
            except (ConnectionError, OSError):
                pass  # the subscriber task notices and reconnects

    async def _subscriber(self) -> None:
        failures, ever_connected = 0, False
        while not self._closing:
            if not self._subs:
                self._wanted.clear()
                await self._wanted.wait()
                continue
            try:
                conn = await RespConnection.open(self._endpoint, CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError) as exc:
                failures = await self._backoff(failures, "bus connect failed", exc)
                continue
            lost = await self._serve(conn, resync=ever_connected or failures > 0)
            ever_connected = True
            if self._closing:
                return
            failures = await self._backoff(0, "bus connection lost; reconnecting", lost)

    async def _backoff(self, failures: int, message: str, exc: BaseException | None) -> int:
        if failures == 0 or failures % 20 == 0:
            log.warning(message, error=str(exc) if exc else None, attempt=failures + 1)
        await asyncio.sleep(backoff_delay(failures))
        return failures + 1

    async def _serve(self, conn: RespConnection, *, resync: bool) -> BaseException | None:
        """Subscribe everything wanted, then read until the connection dies; return why it did."""
        async with self._lock:
            self._conn, self._sent, self._confirmed = conn, set(), set()
            channels = [org_channel(self.prefix, org) for org in self._subs]
            self._sent.update(channels)
            if channels:
                conn.send("SUBSCRIBE", *channels)
        self.connected.set()
        reader = asyncio.create_task(self._read(conn, len(channels), resync), name="bus-reader")
        try:
            return await self._watch(conn, reader)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            self._drop_connection()

    async def _watch(self, conn: RespConnection, reader: asyncio.Task[None]) -> BaseException | None:
        """Ping when idle; the connection is dead when no reply arrives within the health timeout."""
        loop = asyncio.get_running_loop()
        self._last_rx = loop.time()
        while True:
            done, _ = await asyncio.wait({reader}, timeout=self.health_interval_s / 2)
            if done:
                return reader.exception() if not reader.cancelled() else None
            idle = loop.time() - self._last_rx
            if idle > self.health_interval_s + self.health_timeout_s:
                return TimeoutError(f"no reply from Redis for {idle:.1f}s")
            if idle >= self.health_interval_s:
                try:
                    conn.send("PING")
                except (ConnectionError, OSError) as exc:
                    return exc

    async def _read(self, conn: RespConnection, expected: int, resync: bool) -> None:
        loop = asyncio.get_running_loop()
        pending_resync = resync
        while True:
            reply = await conn.read()
            self._last_rx = loop.time()
            if not isinstance(reply, list) or len(reply) < 2:
                if isinstance(reply, RespError):
                    log.warning("Redis refused a bus command", error=str(reply))
                continue
            kind = reply[0]
            if kind == b"message" and len(reply) == 3:
                self._deliver(reply[1], reply[2])
            elif kind == b"subscribe":
                self._confirm(reply[1])
                expected -= 1
                if pending_resync and expected <= 0:
                    pending_resync = False
                    self._resync_all()

    def _confirm(self, raw: object) -> None:
        if not isinstance(raw, bytes):
            return
        channel = raw.decode()
        self._confirmed.add(channel)
        for waiter in self._waiters.pop(channel, []):
            if not waiter.done():
                waiter.set_result(None)

    def _deliver(self, raw_channel: object, payload: object) -> None:
        if not isinstance(raw_channel, bytes) or not isinstance(payload, bytes):
            return
        org_id = org_of_channel(self.prefix, raw_channel.decode())
        subs = self._subs.get(org_id or "")
        if not subs:
            return
        try:
            events = decode_batch(payload)
        except (ValueError, TypeError, IndexError) as exc:
            log.warning("dropped a malformed bus message", error=str(exc))
            return
        for sub in tuple(subs):
            try:
                sub.handler(events)
            except Exception:  # a broken subscriber must not break the others
                log.exception("bus subscriber failed")

    def _resync_all(self) -> None:
        metrics.BUS_RECONNECTS.inc()
        log.info("bus reconnected; subscribers resync from the store", organizations=len(self._subs))
        for subs in tuple(self._subs.values()):
            for sub in tuple(subs):
                if sub.on_resync is None:
                    continue
                try:
                    sub.on_resync()
                except Exception:
                    log.exception("bus resync handler failed")

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        self._sent, self._confirmed = set(), set()
        self.connected.clear()
        if conn is not None:
            conn.close()
