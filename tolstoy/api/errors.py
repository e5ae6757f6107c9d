"""The one place errors become the API's body: ``{"error": {"code", "message", "details"?}}``."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from tolstoy.api.responses import JSON
from tolstoy.errors import FieldError, TolstoyError

log = structlog.get_logger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "validation_failed",
    429: "rate_limited",
}


def error_body(code: str, message: str, details: list[dict[str, str]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = details
    return {"error": body}


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "body"


async def _tolstoy_error(request: Request, exc: Exception) -> JSON:
    assert isinstance(exc, TolstoyError)
    if exc.status >= 500:
        log.error("request failed", path=request.url.path, error=exc.message)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSON(exc.as_body(), status_code=exc.status, headers=headers)


async def _validation_error(request: Request, exc: Exception) -> JSON:
    assert isinstance(exc, RequestValidationError)
    details = [FieldError(_field(tuple(e["loc"])), e["msg"], e["type"]).as_dict() for e in exc.errors()]
    malformed = any(d["code"] == "json_invalid" for d in details)
    if malformed:
        return JSON(error_body("bad_request", "request body is not valid JSON", details), status_code=400)
    return JSON(error_body("validation_failed", "request is invalid", details), status_code=422)


async def _http_error(request: Request, exc: Exception) -> JSON:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "error")
    return JSON(error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers)


async def _unexpected(request: Request, exc: Exception) -> JSON:
    log.error("unhandled error", path=request.url.path, exc_info=exc)
    return JSON(error_body("internal", "internal server error"), status_code=500)


def install(app: FastAPI) -> None:
    app.add_exception_handler(TolstoyError, _tolstoy_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
