"""``GET /metrics``: Prometheus text; behind a bearer token when ``TOLSTOY_METRICS_TOKEN`` is set."""

from __future__ import annotations

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from tolstoy.api.deps import ServicesDep, credential_from
from tolstoy.crypto import constant_time_equal
from tolstoy.errors import Unauthorized
from tolstoy.metrics import REGISTRY

router = APIRouter(tags=["health"])


@router.get("/metrics")
async def metrics(request: Request, services: ServicesDep) -> Response:
    token = services.settings.metrics_token
    if token:
        given = credential_from(request.headers) or ""
        if not constant_time_equal(given, token):
            raise Unauthorized("metrics need 'Authorization: Bearer <TOLSTOY_METRICS_TOKEN>'")
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
