"""Everything the Python client raises.

    TolstoyClientError            root of every error the client raises
    ├── ConnectionFailed          the server could not be reached (``url``, ``reason``)
    ├── ProtocolError             the server sent something the client cannot understand
    └── TolstoyAPIError           the server answered with ``{"error": {"code", "message", "details"?}}``
        ├── BadRequestError       400 bad_request
        ├── AuthError             401 unauthorized, 403 forbidden (also WebSocket 4401 / 4403)
        ├── NotFoundError         404 not_found (also: another organization's object)
        ├── ConflictError         409 conflict, illegal_transition…
        ├── PayloadTooLargeError  413 too_large
        ├── ValidationError       422 validation_failed, with field-level ``details``
        ├── RateLimitedError      429 rate_limited
        └── ServerError           5xx

The tree is the client's own (not ``tolstoy.errors``): a server-side error has a
fixed status per class, while here ``status`` and ``code`` are what one response
carried.
"""

from __future__ import annotations

from typing import Any


class TolstoyClientError(Exception):
    """Root of every error the client raises."""


class ConnectionFailed(TolstoyClientError):
    """The server could not be reached at all (refused, DNS, TLS, timeout)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach Tolstoy at {url}: {reason}")
        self.url = url
        self.reason = reason


class ProtocolError(TolstoyClientError):
    """The server sent a response or frame the client cannot understand."""


class TolstoyAPIError(TolstoyClientError):
    """The server refused a request; ``details`` lists field-level problems when it gave any."""

    def __init__(
        self, status: int, code: str, message: str, details: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(f"{message} ({status} {code})")
        self.status = status
        self.code = code
        self.message = message
        self.details: list[dict[str, Any]] = details or []

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, code={self.code!r}, message={self.message!r})"


class BadRequestError(TolstoyAPIError):
    """400: the request was malformed."""


class AuthError(TolstoyAPIError):
    """401 or 403 (WebSocket close 4401 or 4403): a missing, bad or insufficient credential."""


class NotFoundError(TolstoyAPIError):
    """404: no such object in the caller's organization."""


class ConflictError(TolstoyAPIError):
    """409: the object's state does not allow the request."""


class PayloadTooLargeError(TolstoyAPIError):
    """413: the request body is over the server's limit."""


class ValidationError(TolstoyAPIError):
    """422: the request is well-formed but invalid; see ``details``."""


class RateLimitedError(TolstoyAPIError):
    """429: too many requests."""


class ServerError(TolstoyAPIError):
    """5xx: the server failed."""


_BY_STATUS: dict[int, type[TolstoyAPIError]] = {
    400: BadRequestError,
    401: AuthError,
    403: AuthError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: ValidationError,
    429: RateLimitedError,
}
_DEFAULT_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    413: "too_large",
    422: "validation_failed",
    429: "rate_limited",
}
_WS_CODES = {
    "bad_request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "too_large": 413,
    "rate_limited": 429,
    "unavailable": 503,
}


def error_class(status: int) -> type[TolstoyAPIError]:
    if status >= 500:
        return ServerError
    return _BY_STATUS.get(status, TolstoyAPIError)


def from_response(status: int, body: Any, fallback_message: str) -> TolstoyAPIError:
    """The exception for an error response; ``body`` is its decoded JSON, or None when it was not JSON."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {}
    code = error.get("code")
    message = error.get("message")
    details = error.get("details")
    return error_class(status)(
        status,
        code
        if isinstance(code, str)
        else _DEFAULT_CODES.get(status, "server_error" if status >= 500 else "error"),
        message if isinstance(message, str) else fallback_message,
        details if isinstance(details, list) else None,
    )


def from_ws_error(data: Any) -> TolstoyAPIError:
    """The exception for a WebSocket ``error`` message ``{"code", "message"}``."""
    data = data if isinstance(data, dict) else {}
    code = str(data.get("code") or "error")
    status = _WS_CODES.get(code, 400)
    return error_class(status)(status, code, str(data.get("message") or code))
