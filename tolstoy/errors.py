"""Every error Tolstoy raises on purpose.

    TolstoyError                  root; carries an API ``code`` and HTTP ``status``
    ├── BadRequest                400 bad_request      malformed input
    ├── Unauthorized              401 unauthorized
    ├── Forbidden                 403 forbidden
    ├── NotFound                  404 not_found        (also: another organization's object)
    ├── Conflict                  409 conflict
    ├── TooLarge                  413 too_large
    ├── ValidationFailed          422 validation_failed  field-level ``details``
    ├── RateLimited               429 rate_limited
    ├── IllegalTransition         409 illegal_transition  lifecycle enum misuse
    ├── LeaseLost                 409 lease_lost       a fenced write of a worker that lost its lease
    └── StepError                 a step attempt failed (category, retryable)

The API maps the tree to its error body in one place (``tolstoy.api.errors``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

ErrorCategory = Literal["network", "validation", "timeout", "permission", "data", "system", "unknown"]


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem with one field of a request or definition."""

    field: str
    message: str
    code: str = "invalid"

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message, "code": self.code}


class TolstoyError(Exception):
    """Root of every error Tolstoy raises on purpose."""

    code: ClassVar[str] = "error"
    status: ClassVar[int] = 500

    def __init__(self, message: str, *, details: list[FieldError] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []

    def as_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = [d.as_dict() for d in self.details]
        return {"error": body}


class BadRequest(TolstoyError):
    code = "bad_request"
    status = 400


class Unauthorized(TolstoyError):
    code = "unauthorized"
    status = 401


class Forbidden(TolstoyError):
    code = "forbidden"
    status = 403


class NotFound(TolstoyError):
    code = "not_found"
    status = 404


class Conflict(TolstoyError):
    code = "conflict"
    status = 409


class TooLarge(TolstoyError):
    code = "too_large"
    status = 413


class ValidationFailed(TolstoyError):
    code = "validation_failed"
    status = 422


class RateLimited(TolstoyError):
    code = "rate_limited"
    status = 429


class IllegalTransition(TolstoyError):
    code = "illegal_transition"
    status = 409


class LeaseLost(TolstoyError):
    code = "lease_lost"
    status = 409


class StepError(TolstoyError):
    """A step attempt failed; ``category`` and ``retryable`` decide what happens next."""

    code = "step_failed"
    status = 500

    def __init__(
        self,
        message: str,
        *,
        category: ErrorCategory = "unknown",
        code: str | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(message)
        self.category: ErrorCategory = category
        self.error_code = code or category
        self.retryable = retryable

    def as_event_error(self) -> dict[str, Any]:
        return {
            "message": self.message,
            "code": self.error_code,
            "category": self.category,
            "retryable": self.retryable,
        }
