"""The gateway's WebSocket hot path, one level below Starlette.

Why: ASGI's ``websocket.send`` takes one message at a time, as text, per
connection, through several awaits; fan-out to thousands of clients then costs
far more in Python than the kernel's ``send()``. Here each event's WebSocket
frame is built once (``frames.Frame.ws``) and the same bytes are written
straight to every client's transport, all frames of a loop tick in one write.

How: ``GatewayWebSocketProtocol`` is uvicorn's sans-I/O WebSocket protocol
(``websockets-sansio``), selected with ``uvicorn.Config(ws=...)`` in ``tolstoy
serve``. It publishes itself in the ASGI scope (``scope["extensions"]``), and the
``/ws`` endpoint then writes through a ``FastSink`` instead of ASGI sends, and
*detaches*: it hands the session to the protocol and returns, so an idle
connection keeps no ASGI task, call stack or queue alive (about 11 KB of RSS per
idle connection instead of 36). Client messages then go from the protocol to the
session directly. The handshake, the parsing of client frames, ping/pong replies
and the close handshake stay uvicorn's and the ``websockets`` state machine's. Writing raw
frames is safe next to them because every write is a whole frame (no
fragmentation is ever in progress), permessage-deflate is not negotiated (so
frames are plain), and close frames go through the state machine, after which no
data frame is written. Keepalive is the gateway's (one sweeper for all
connections, not one timer each). Under another server or protocol the endpoint
falls back to plain ASGI sends (``AsgiSink``), with the same semantics.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from starlette.websockets import WebSocket
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.server import ServerProtocol

from tolstoy.gateway.connection import Outbox
from tolstoy.gateway.frames import PING_FRAME, Frame

SCOPE_EXTENSION = "tolstoy.fastws"
MAX_WIRE_MESSAGE = 1 << 20
"""Client messages up to this size are read (past 64 KiB: ``too_large``); larger ones close 1009."""
CLOSE_TIMEOUT_S = 5.0


class GatewayWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol plus direct frame writes, liveness and a 1001 on shutdown."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ping_interval = None  # the gateway's sweeper pings every connection
        self.conn = ServerProtocol(
            extensions=[], max_size=MAX_WIRE_MESSAGE, logger=logging.getLogger("uvicorn.error")
        )
        self.last_seen = self.last_ping = self.loop.time()
        self.write_paused = False
        self.outbox: Outbox | None = None
        self.on_message: Callable[[str | None], None] | None = None
        """Set by ``detach``: client messages go straight to the session (text, or None for binary)."""
        self.on_lost: Callable[[], None] | None = None

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][SCOPE_EXTENSION] = self

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body", False):
            self.handshake_complete = True  # a denial (401) was sent: not an app that forgot to answer

    def data_received(self, data: bytes) -> None:
        self.last_seen = self.loop.time()
        super().data_received(data)

    def detach(self, on_message: Callable[[str | None], None], on_lost: Callable[[], None]) -> None:
        """From now on this protocol drives the connection alone: the ASGI endpoint may return.

        An endpoint coroutine parked on ``receive()`` keeps the whole ASGI call stack
        (FastAPI, Starlette, uvicorn's task) alive for every idle client; detached,
        a connection is this protocol, its websockets state and the session.
        """
        self.on_message, self.on_lost = on_message, on_lost

    def send_receive_event_to_app(self) -> None:
        if self.on_message is None:
            return super().send_receive_event_to_app()
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.close_sent:
            return
        if self.curr_msg_data_type != "text":
            return self.on_message(None)
        try:
            text = data.decode()
        except UnicodeDecodeError:
            self.conn.send_close(1007, "invalid UTF-8")
            self.handle_parser_exception()
            return
        self.on_message(text)

    async def run_asgi(self) -> None:
        """uvicorn's, except that a detached connection stays open when the endpoint returns."""
        try:
            result = await self.app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            self.logger.debug("the client left during the ASGI call")
        except BaseException:
            self.logger.exception("Exception in ASGI application\n")
            self.send_500_response()
        else:
            if not self.handshake_complete:
                self.logger.error("ASGI callable returned without completing handshake.")
                self.send_500_response()
            elif result is not None:
                self.logger.error("ASGI callable should return None, but returned '%s'.", result)
            elif self.on_message is not None:
                self._shed_asgi_state()
                return  # detached: the connection goes on without the endpoint
        if self.close_timer is None:
            self.transport.close()

    def _shed_asgi_state(self) -> None:
        """Detached, nobody reads the ASGI queue, awaits ``writable`` or looks at the handshake
        again: drop them (a few KB per idle connection; the no-op stand-ins take the calls
        uvicorn's own code still makes)."""
        self.queue = _INERT  # type: ignore[assignment]
        self.writable = _INERT  # type: ignore[assignment]
        self.scope = self.request = self.response = None  # type: ignore[assignment]

    def pause_writing(self) -> None:
        super().pause_writing()
        self.write_paused = True

    def resume_writing(self) -> None:
        super().resume_writing()
        self.write_paused = False
        if self.outbox is not None:
            self.outbox.resumed()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.write_paused = False
        if self.outbox is not None:
            self.outbox.close()
        on_lost, self.on_lost, self.on_message = self.on_lost, None, None
        if on_lost is not None:
            on_lost()

    def close_with(self, code: int, reason: str) -> None:
        """Start the close handshake (as ASGI ``websocket.close`` would); abort if the peer never answers."""
        if self.close_sent or self.transport.is_closing() or not self.handshake_complete:
            return
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        try:
            self.conn.send_close(code, reason)
        except InvalidState:
            pass
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self.close_timer = self.loop.call_later(CLOSE_TIMEOUT_S, self.transport.abort)

    def shutdown(self) -> None:
        """Server stop: 1001 (going away) rather than uvicorn's 1012: clients reconnect elsewhere."""
        if self.handshake_complete and not self.close_sent and not self.disconnected:
            self.close_with(1001, "server shutdown")
            return
        super().shutdown()


class _Inert:
    """Takes what uvicorn still hands a detached connection's ASGI queue and ``writable`` event."""

    __slots__ = ()

    def put_nowait(self, item: object) -> None:
        """Nobody reads the queue of a detached connection."""

    def set(self) -> None:
        """Nobody waits on ``writable`` once detached (FastSink checks ``write_paused``)."""

    def clear(self) -> None:
        """As ``set``."""


_INERT = _Inert()


class FastSink:
    """Writes frames straight to a ``GatewayWebSocketProtocol``'s transport."""

    __slots__ = ("proto",)

    def __init__(self, proto: GatewayWebSocketProtocol) -> None:
        self.proto = proto

    def attach(self, outbox: Outbox) -> None:
        self.proto.outbox = outbox

    @property
    def paused(self) -> bool:
        return self.proto.write_paused

    def send(self, frames: list[Frame]) -> None:
        proto = self.proto
        if proto.close_sent or proto.transport.is_closing():
            return
        if len(frames) == 1:
            proto.transport.write(frames[0].ws)
        else:
            proto.transport.write(b"".join([f.ws for f in frames]))

    def close(self, code: int, reason: str) -> None:
        self.proto.close_with(code, reason)

    def keepalive(self, now: float, ping_interval: float, idle_timeout: float) -> bool:
        """Ping when due; False when the client has been silent longer than ``idle_timeout``."""
        proto = self.proto
        if now - proto.last_seen > idle_timeout:
            return False
        if (
            now - proto.last_ping >= ping_interval
            and not proto.close_sent
            and not proto.transport.is_closing()
        ):
            proto.last_ping = now
            proto.transport.write(PING_FRAME)
        return True


class AsgiSink:
    """The portable path: one ASGI ``websocket.send`` per frame, from a writer task."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.outbox: Outbox | None = None
        self._backlog: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self._close: tuple[int, str] | None = None
        self.task = asyncio.get_running_loop().create_task(self._write())

    def attach(self, outbox: Outbox) -> None:
        self.outbox = outbox

    @property
    def paused(self) -> bool:
        return bool(self._backlog)

    def send(self, frames: list[Frame]) -> None:
        self._backlog.extend(f.payload for f in frames)
        self._wake.set()

    def close(self, code: int, reason: str) -> None:
        if self._close is None:
            self._close = (code, reason)
            self._wake.set()

    async def _write(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._backlog:
                    await self.websocket.send_text(self._backlog.popleft().decode())
                if self.outbox is not None:
                    self.outbox.resumed()
                if self._close is not None:
                    await self.websocket.close(*self._close)
                    return
        except Exception:  # the client is gone; the endpoint's receive loop ends the session
            return
