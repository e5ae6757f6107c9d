"""The live gateway's HTTP surface: ``/ws``, SSE streams, subscribe tokens and gateway stats."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response, StreamingResponse

from tolstoy.api.deps import PrincipalDep, ServicesDep, credential_from
from tolstoy.errors import (
    BadRequest,
    FieldError,
    Forbidden,
    NotFound,
    RateLimited,
    TolstoyError,
    Unauthorized,
)
from tolstoy.errors import ValidationFailed as Invalid
from tolstoy.gateway import auth, history, replay, tokens
from tolstoy.gateway.auth import Viewer
from tolstoy.gateway.channels import Channel, Filters, parse_channel, parse_filters, validate_pattern
from tolstoy.gateway.hub import Hub
from tolstoy.gateway.protocol import ErrorCode, ProtocolError
from tolstoy.gateway.session import Session
from tolstoy.gateway.sse import SseSink
from tolstoy.gateway.websocket import websocket_endpoint
from tolstoy.timeutil import iso

router = APIRouter(tags=["gateway"])
router.add_api_websocket_route("/ws", websocket_endpoint)
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class SubscribeTokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channels: list[str] = Field(min_length=1, max_length=32)
    ttlSeconds: int = Field(default=tokens.DEFAULT_TTL_S, ge=1, le=tokens.MAX_TTL_S)


@router.post("/api/v1/tokens/subscribe", status_code=201)
async def mint_subscribe_token(
    body: SubscribeTokenIn, principal: PrincipalDep, services: ServicesDep
) -> dict[str, Any]:
    """A short-lived token (for a browser) that may only subscribe to ``channels`` of this organization."""
    problems: list[FieldError] = []
    for i, pattern in enumerate(body.channels):
        try:
            validate_pattern(pattern, principal.org_id)
        except ProtocolError as exc:
            if exc.code is ErrorCode.FORBIDDEN:
                raise Forbidden(exc.message) from None
            problems.append(FieldError(f"channels[{i}]", exc.message))
    if problems:
        raise Invalid("channels are invalid", details=problems)
    secret, org_id = services.settings.secret_key, principal.org_id
    token, expires_at = tokens.mint(secret, org_id, body.channels, body.ttlSeconds, key_id=principal.key_id)
    return {"token": token, "expiresAt": iso(int(expires_at * 1000)), "channels": body.channels}


@router.get("/api/v1/gateway/stats")
async def gateway_stats(principal: PrincipalDep, services: ServicesDep) -> dict[str, Any]:
    """This process's gateway, as far as the caller's organization is concerned."""
    hub = _hub(services)
    return hub.stats.report(principal.org_id, hub.sessions)


def _hub(services: Any) -> Hub:
    hub: Hub | None = services.gateway
    if hub is None:
        raise TolstoyError("the live gateway is not running in this process")
    return hub


@router.get("/api/v1/executions/{execution_id}/stream", response_model=None)
async def execution_stream(
    execution_id: str,
    request: Request,
    services: ServicesDep,
    since: Annotated[int | None, Query(ge=0)] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> Response:
    """SSE of one execution after ``since`` (or ``Last-Event-ID``; default: its whole history), then live.

    Ends after the execution's end; 204 when nothing is left to send.
    """
    if last_event_id is not None and last_event_id.strip().isdigit():
        since = int(last_event_id.strip())
    since = 0 if since is None else since
    return await _open(request, services, f"executions:{execution_id}", None, since)


@router.get("/api/v1/stream", response_model=None)
async def channel_stream(
    request: Request,
    services: ServicesDep,
    channel: str,
    flowIds: Annotated[list[str] | None, Query()] = None,
    executionIds: Annotated[list[str] | None, Query()] = None,
    statuses: Annotated[list[str] | None, Query()] = None,
    types: Annotated[list[str] | None, Query()] = None,
    since: str | None = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> Response:
    """SSE of any channel, with the WebSocket filters; resumes from ``Last-Event-ID`` or ``since``.

    Without either: live only, except that a finished execution's channel sends its terminal event.
    """
    raw = {"flowIds": flowIds, "executionIds": executionIds, "statuses": statuses, "types": types}
    filters = {k: _split(v) for k, v in raw.items() if v}
    return await _open(request, services, channel, filters or None, last_event_id or since)


def _split(values: list[str]) -> list[str]:
    return [v.strip() for raw in values for v in raw.split(",") if v.strip()]


async def _open(request: Request, services: Any, name: str, filters: Any, since: Any) -> Response:
    viewer = await _viewer(request, services)
    try:
        channel = parse_channel(name, viewer)
        parsed_filters = parse_filters(filters)
        parsed_since = replay.parse_since(channel, since)
    except ProtocolError as exc:
        raise _http_error(exc) from None
    if channel.is_execution:
        seq = parsed_since if isinstance(parsed_since, int) else None
        since, nothing_left = await _execution_start(services, viewer, channel, parsed_filters, seq)
        if nothing_left:
            return Response(status_code=204)
    elif channel.key is not None and not await history.flow_exists(services.db, viewer.org_id, channel.key):
        raise NotFound(f"flow {channel.key!r} not found")
    sink = SseSink(ids="seq" if channel.is_execution else "event")
    hub = _hub(services)
    session = Session(hub, viewer, sink, "sse")
    session.on_execution_end = sink.finish
    sink.attach(session.outbox)
    hub.register(session)
    session.subscribe({"channel": name, "filters": filters, "since": since})
    return StreamingResponse(
        _body(session, sink, services.settings.sse_heartbeat_s),
        media_type="text/event-stream",
        headers=_SSE_HEADERS,
    )


async def _body(session: Session, sink: SseSink, heartbeat_s: float) -> AsyncIterator[bytes]:
    try:
        async for chunk in sink.stream(heartbeat_s):
            yield chunk
    finally:
        session.close()


async def _viewer(request: Request, services: Any) -> Viewer:
    credential = credential_from(request.headers, request.query_params.get("token"))
    viewer = await auth.authenticate(services.db, services.settings.secret_key, credential)
    if viewer is None:
        raise Unauthorized("missing or invalid credential: send an API key or a subscribe token")
    return viewer


async def _execution_start(
    services: Any, viewer: Viewer, channel: Channel, filters: Filters, since: int | None
) -> tuple[int | None, bool]:
    """Where a per-execution stream starts, and whether nothing is left to send; 404 if not the caller's.

    Without ``since`` a running execution is streamed live; a finished one sends
    its terminal event, so a client always learns how it ended. A finished
    execution with no event left to send (after ``since``, matching the filters)
    gets 204, which stops ``EventSource`` reconnecting.
    """
    db, org_id, execution_id = services.db, viewer.org_id, channel.key or ""
    state = await history.execution_state(db, org_id, execution_id)
    if state is None:
        raise NotFound(f"execution {execution_id!r} not found")
    status, last_seq = state
    if not history.is_finished(status):
        return since, False
    if since is None:
        since = max(last_seq - 1, 0)
    left = await history.count_execution(
        db, org_id, execution_id, after=since, upto=last_seq, filters=filters
    )
    return since, left == 0


def _http_error(exc: ProtocolError) -> TolstoyError:
    mapping: dict[ErrorCode, type[TolstoyError]] = {
        ErrorCode.FORBIDDEN: Forbidden,
        ErrorCode.NOT_FOUND: NotFound,
        ErrorCode.RATE_LIMITED: RateLimited,
    }
    return mapping.get(exc.code, BadRequest)(exc.message)
