"""``GET /ws``: the WebSocket endpoint (PROTOCOL.md §3).

Authentication happens before the handshake is accepted (a bad or missing
credential gets HTTP 401). After that, every client frame is answered: a
malformed or refused one with ``error`` (and the connection stays open),
``subscribe`` with ``subscribed`` then replayed and live events, ``unsubscribe``
with ``unsubscribed``, ``ping`` with ``pong``.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response
from starlette.websockets import WebSocket

from tolstoy import jsonutil
from tolstoy.api.deps import credential_from
from tolstoy.gateway import auth
from tolstoy.gateway.connection import Sink
from tolstoy.gateway.fastws import SCOPE_EXTENSION, AsgiSink, FastSink
from tolstoy.gateway.hub import Hub
from tolstoy.gateway.protocol import ClientType, ErrorCode, ProtocolError, parse_client_frame
from tolstoy.gateway.session import Session


def _denial(status: int, code: str, message: str) -> Response:
    body = jsonutil.dumpb({"error": {"code": code, "message": message}})
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return Response(body, status_code=status, media_type="application/json", headers=headers)


async def websocket_endpoint(websocket: WebSocket) -> None:
    services: Any = websocket.app.state.services
    hub: Hub = services.gateway
    credential = credential_from(websocket.headers, websocket.query_params.get("token"))
    viewer = await auth.authenticate(services.db, services.settings.secret_key, credential)
    if viewer is None:
        message = "missing credential" if not credential else "invalid, expired or revoked credential"
        await websocket.send_denial_response(_denial(401, "unauthorized", message))
        return
    if hub.closing:
        await websocket.send_denial_response(_denial(503, "unavailable", "the server is shutting down"))
        return
    await websocket.accept()
    proto = websocket.scope.get("extensions", {}).get(SCOPE_EXTENSION)
    if proto is not None:  # the gateway's own protocol: it drives the session from here on
        fast = FastSink(proto)
        session = Session(hub, viewer, fast, "ws")
        fast.attach(session.outbox)
        hub.register(session)
        proto.detach(lambda text: receive(session, text), lambda: session.close(1000))
        return
    sink = AsgiSink(websocket)
    session = Session(hub, viewer, sink, "ws")
    sink.attach(session.outbox)
    hub.register(session)
    try:
        await _serve(session, websocket)
    finally:
        session.close(1000)
        sink.task.cancel()


async def _serve(session: Session, websocket: WebSocket) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        receive(session, message.get("text"))


def receive(session: Session, text: str | None) -> None:
    """One client message (``None``: a binary frame), rate-limited, answered (nothing raised)."""
    if session.closed:
        return
    if not session.allow_message():
        session.error(ErrorCode.RATE_LIMITED, "too many messages; slow down")
        return
    if text is None:
        session.error(
            ErrorCode.BAD_REQUEST, "expected a text frame holding one JSON object, got a binary frame"
        )
        return
    handle(session, text)


def handle(session: Session, text: str) -> None:
    """Answer one client frame (errors included; nothing raised)."""
    request_id = None
    try:
        message = parse_client_frame(text)
        request_id = message.id
        if message.type is ClientType.SUBSCRIBE:
            session.subscribe(message.data, request_id)
        elif message.type is ClientType.UNSUBSCRIBE:
            session.unsubscribe(message.data, request_id)
        else:
            session.reply("pong", {}, request_id)
    except ProtocolError as exc:
        session.error(exc.code, exc.message, exc.request_id if exc.request_id is not None else request_id)


__all__ = ["Sink", "handle", "websocket_endpoint"]
