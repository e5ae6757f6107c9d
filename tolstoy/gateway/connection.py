"""One client connection's outbound side: a bounded queue that knows event classes.

Frames pushed during a loop tick are written together at its end (one write per
connection per tick, whatever the number of events). While the transport cannot
take more (the client reads slowly), frames wait here; a pending ``log`` or
``execution.progress`` of the same execution, step and type is then replaced by
the newer one (conflation), lifecycle events are never dropped, and when the
queue still grows past its byte or message bound the connection is closed with
4008 ``slow_consumer``; the client resumes with ``since``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from tolstoy import metrics
from tolstoy.events.types import CONFLATABLE_EVENTS, Event
from tolstoy.gateway.frames import Frame
from tolstoy.gateway.protocol import conflated_delivery

MAX_QUEUE_BYTES = 1 << 20
MAX_QUEUE_MESSAGES = 10_000
ROOM_BYTES = 256 * 1024
"""Replay pushes more only while less than this is pending (flow control), and at most a quarter of
the outbox's bounds (bytes and messages), so that flow-controlled pushes never overflow it."""
_NEVER_CONFLATED_LEVELS = frozenset({"error", "fatal"})


class Sink(Protocol):
    """Where an outbox's frames go: a WebSocket transport, an ASGI writer or an SSE response."""

    @property
    def paused(self) -> bool:
        """True while the transport cannot take more (frames then wait in the outbox)."""

    def send(self, frames: list[Frame]) -> None:
        """Write ``frames`` now, in order (one write where the transport allows)."""

    def close(self, code: int, reason: str) -> None:
        """Close the connection with a WebSocket close code (SSE: end the response)."""


def conflation_key(event: Event) -> tuple[str, str | None, str] | None:
    """Events sharing a key may replace each other while pending; None for events never dropped."""
    if event.type not in CONFLATABLE_EVENTS or event.level in _NEVER_CONFLATED_LEVELS:
        return None
    return (event.execution_id, event.step_id, event.type)


class Outbox:
    """The bounded, conflating queue of frames not yet handed to the sink."""

    __slots__ = (
        "_index",
        "_schedule",
        "_tombstones",
        "_waiters",
        "bytes",
        "closed",
        "conflated",
        "controls",
        "dirty",
        "frames",
        "max_bytes",
        "max_messages",
        "on_overflow",
        "sent",
        "sink",
        "transport",
    )

    def __init__(
        self,
        sink: Sink,
        schedule: Callable[[Outbox], None],
        *,
        max_bytes: int = MAX_QUEUE_BYTES,
        max_messages: int = MAX_QUEUE_MESSAGES,
        transport: str = "ws",
    ) -> None:
        self.sink, self._schedule, self.transport = sink, schedule, transport
        self.max_bytes, self.max_messages = max_bytes, max_messages
        self.frames: list[Frame | None] = []
        self.bytes = self.controls = self._tombstones = 0
        self.sent = self.conflated = 0
        """Event deliveries handed to the sink, and pending events replaced by newer ones."""
        self.dirty = self.closed = False
        self.on_overflow: Callable[[], None] | None = None
        self._index: dict[tuple[str, str | None, str], int] | None = None
        self._waiters: list[asyncio.Future[None]] = []

    def push(self, frame: Frame) -> None:
        """Queue ``frame``; it is written at the end of this loop tick unless the sink is paused."""
        if self.closed:
            return
        event = frame.event
        if event is None:
            self.controls += 1
        elif self.sink.paused:
            frame = self._conflate(frame, event)
        self.frames.append(frame)
        self.bytes += frame.size
        if self.bytes > self.max_bytes or len(self.frames) - self._tombstones > self.max_messages:
            if len(self.frames) > 1:  # a single frame always goes, however large
                self._overflow()
                return
        if not self.dirty:
            self.dirty = True
            self._schedule(self)

    @property
    def pending(self) -> bool:
        """Whether frames wait to be handed to the sink."""
        return bool(self.frames)

    def can_take(self, messages: int, size: int) -> bool:
        """Whether ``messages`` more frames of ``size`` bytes in all fit now, within both bounds."""
        queued = len(self.frames) - self._tombstones
        return queued + messages <= self.max_messages and self.bytes + size <= self.max_bytes

    def flush(self) -> None:
        """Hand every pending frame to the sink in one call (called once per tick by the hub)."""
        self.dirty = False
        if self.closed or not self.frames or self.sink.paused:
            return
        frames = self.frames
        if self._tombstones:
            frames = [f for f in frames if f is not None]
        self.sent += len(frames) - self.controls
        self.frames, self.bytes, self.controls, self._tombstones, self._index = [], 0, 0, 0, None
        self.sink.send(frames)  # type: ignore[arg-type]
        if self._waiters:
            self._wake()

    def resumed(self) -> None:
        """The sink can take more again: flush what waited (next tick) and wake replay."""
        if self.frames and not self.dirty and not self.closed:
            self.dirty = True
            self._schedule(self)
        elif self._waiters:
            self._wake()

    def crowded(self, size: int = 0) -> bool:
        """Whether ``size`` more bytes (one more frame) would pass the flow-control mark (``ROOM_BYTES``)."""
        if not self.frames:
            return False  # one frame always goes, however large
        queued = len(self.frames) - self._tombstones
        mark = min(ROOM_BYTES, self.max_bytes // 4)
        return self.bytes + size >= mark or queued >= self.max_messages // 4

    async def room(self) -> None:
        """Wait until the sink takes writes and the queue is under the flow-control mark (or closed)."""
        while not self.closed and (self.sink.paused or self.crowded()):
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter

    def close(self) -> None:
        self.closed = True
        self.frames, self.bytes, self._index = [], 0, None
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _conflate(self, frame: Frame, event: Event) -> Frame:
        key = conflation_key(event)
        if key is None:
            return frame
        if self._index is None:
            self._index = self._build_index()
        position = self._index.get(key)
        self._index[key] = len(self.frames)
        if position is None:
            return frame
        old = self.frames[position]
        if old is None or old.event is None:
            return frame
        self.frames[position] = None
        self._tombstones += 1
        self.bytes -= old.size
        self.conflated += 1
        metrics.CONFLATED.inc()
        skipped = [*(old.skipped or ()), old.event.seq]
        return Frame(conflated_delivery(frame.payload, skipped), event, skipped)

    def _build_index(self) -> dict[tuple[str, str | None, str], int]:
        index: dict[tuple[str, str | None, str], int] = {}
        for position, frame in enumerate(self.frames):
            if frame is not None and frame.event is not None:
                key = conflation_key(frame.event)
                if key is not None:
                    index[key] = position
        return index

    def _overflow(self) -> None:
        self.close()
        metrics.SLOW_CONSUMER_CLOSES.inc()
        if self.on_overflow is not None:  # not now: we may be inside a topic's fan-out loop
            asyncio.get_running_loop().call_soon(self.on_overflow)
