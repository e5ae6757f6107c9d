"""Server-Sent Events (PROTOCOL.md §4): the same subscriptions as WebSocket, one channel per stream.

Each event is ``id: <id>`` / ``event: <type>`` / ``data: <event JSON>``. The id is
the ``seq`` on a per-execution stream and the event id (``executionId:seq``)
elsewhere, so a browser's automatic ``Last-Event-ID`` resumes exactly where it
stopped. A per-execution stream ends after the terminal event; once a client has
it, a reconnect is answered 204, which tells ``EventSource`` to stop. Comments
(``: ping``) keep proxies from timing the stream out.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

from tolstoy.gateway.connection import Outbox
from tolstoy.gateway.frames import Frame

RETRY_MS = 2000


class SseSink:
    """Turns frames into SSE text for a streaming response (pull: the response reads ``stream()``)."""

    def __init__(self, *, ids: str, end_on_terminal: bool) -> None:
        self._ids, self._end_on_terminal = ids, end_on_terminal
        self._chunks: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self.outbox: Outbox | None = None
        self.ended = self.closed = False

    def attach(self, outbox: Outbox) -> None:
        self.outbox = outbox

    @property
    def paused(self) -> bool:
        return bool(self._chunks)

    def send(self, frames: list[Frame]) -> None:
        for frame in frames:
            event = frame.event
            if event is None or self.ended:
                continue
            event_id = str(event.seq) if self._ids == "seq" else event.id
            self._chunks.append(f"id: {event_id}\nevent: {event.type}\ndata: {event.body}\n\n".encode())
            if self._end_on_terminal and event.is_terminal:
                self.ended = True
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
            if self.ended or self.closed:
                return
            try:
                await asyncio.wait_for(self._wake.wait(), heartbeat_s)
            except TimeoutError:
                yield b": ping\n\n"
            self._wake.clear()
