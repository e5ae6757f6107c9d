"""Server-Sent Events (PROTOCOL.md §4): the same subscriptions as WebSocket, one channel per stream.

Each event is ``id: <id>`` / ``event: <type>`` / ``data: <event JSON>``. The id is
the ``seq`` on a per-execution stream and the event id (``executionId:seq``)
elsewhere, so a browser's automatic ``Last-Event-ID`` resumes exactly where it
stopped. A delivery that stands in for conflated events carries their ``seq``s
as ``"conflated": [...]`` inside ``data`` (SSE has no envelope to put it beside
``data``, as the WebSocket delivery does). A per-execution stream ends once its
execution has ended and everything of it was sent (``finish``); once a client has
it, a reconnect is answered 204, which tells ``EventSource`` to stop. Comments
(``: ping``) keep proxies from timing the stream out.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

from tolstoy.events.types import Event
from tolstoy.gateway.connection import Outbox
from tolstoy.gateway.frames import Frame
from tolstoy.gateway.protocol import conflated_delivery

RETRY_MS = 2000


class SseSink:
    """Turns frames into SSE text for a streaming response (pull: the response reads ``stream()``)."""

    def __init__(self, *, ids: str) -> None:
        self._ids = ids
        self._chunks: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self.outbox: Outbox | None = None
        self.finishing = self.closed = False

    def attach(self, outbox: Outbox) -> None:
        self.outbox = outbox

    @property
    def paused(self) -> bool:
        return bool(self._chunks)

    def send(self, frames: list[Frame]) -> None:
        for frame in frames:
            if frame.event is not None:
                self._chunks.append(self._chunk(frame.event, frame.skipped))
        self._wake.set()

    def _chunk(self, event: Event, skipped: list[int] | None) -> bytes:
        event_id = str(event.seq) if self._ids == "seq" else event.id
        data = event.body.encode()
        if skipped:
            data = conflated_delivery(data, skipped)
        return b"id: %s\nevent: %s\ndata: %s\n\n" % (event_id.encode(), event.type.encode(), data)

    def finish(self) -> None:
        """End the stream once everything pushed so far has been written."""
        self.finishing = True
        self._wake.set()

    def close(self, code: int, reason: str) -> None:
        self.closed = True
        self._wake.set()

    async def stream(self, heartbeat_s: float) -> AsyncIterator[bytes]:
        """The response body: pending events as they come, heartbeats when idle, until the end."""
        yield f"retry: {RETRY_MS}\n\n".encode()
        while True:
            if self._chunks:
                data = b"".join(self._chunks)
                self._chunks.clear()
                yield data
                if self.outbox is not None:
                    self.outbox.resumed()
                continue
            if self.closed or (self.finishing and not self._pending()):
                return
            try:
                await asyncio.wait_for(self._wake.wait(), heartbeat_s)
            except TimeoutError:
                yield b": ping\n\n"
            self._wake.clear()

    def _pending(self) -> bool:
        return self.outbox is not None and self.outbox.pending
