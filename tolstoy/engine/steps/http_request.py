"""``http_request``: one HTTP call through the SSRF guard (``tolstoy.net``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import httpx
from pydantic import AfterValidator, Field, field_validator, model_validator

from tolstoy import jsonutil, net
from tolstoy.engine.steps.base import StepConfig, StepContext, StepType

Scalar = str | int | float | bool
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
DEFAULT_TIMEOUT_MS = 30_000
MAX_TIMEOUT_MS = 600_000


def check_http_url(value: str) -> str:
    """A config validator: an absolute http(s) URL (the SSRF guard runs later, at send time)."""
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL as exc:
        raise ValueError(f"invalid URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"expected an absolute http or https URL, got {net.display_url(value)!r}")
    return value


HttpUrlText = Annotated[str, AfterValidator(check_http_url)]


def _text(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def request_headers(headers: Mapping[str, Scalar], idempotency_key: str) -> dict[str, str]:
    """The user's headers as strings, plus ``Idempotency-Key`` unless the user set one."""
    result = {name: _text(value) for name, value in headers.items()}
    if not any(name.lower() == "idempotency-key" for name in result):
        result["Idempotency-Key"] = idempotency_key
    return result


def effective_timeout_ms(configured: int, ctx: StepContext) -> int:
    """The step's own timeout when it is shorter than the configured one."""
    return min(configured, ctx.timeout_ms) if ctx.timeout_ms else configured


class HttpRequestConfig(StepConfig):
    method: str = "GET"
    url: HttpUrlText
    headers: dict[str, Scalar] = Field(default_factory=dict)
    query: dict[str, Scalar | list[Scalar]] = Field(default_factory=dict)
    json_body: Any = Field(default=None, alias="json")
    body: str | None = None
    timeout_ms: int = Field(default=DEFAULT_TIMEOUT_MS, alias="timeoutMs", gt=0, le=MAX_TIMEOUT_MS)
    accept_status: list[int] | None = Field(default=None, alias="acceptStatus")

    @field_validator("method")
    @classmethod
    def _method(cls, value: str) -> str:
        method = value.upper()
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(sorted(METHODS))}, got {value!r}")
        return method

    @model_validator(mode="after")
    def _one_body(self) -> HttpRequestConfig:
        if "json_body" in self.model_fields_set and self.body is not None:
            raise ValueError("give 'json' or 'body', not both")
        return self

    def content(self) -> tuple[bytes | None, str | None]:
        """The request body and the content type it implies."""
        if "json_body" in self.model_fields_set:
            return jsonutil.dumpb(self.json_body), "application/json"
        if self.body is not None:
            return self.body.encode(), None
        return None, None


class HttpRequestStep(StepType):
    name = "http_request"
    config_model = HttpRequestConfig

    async def run(self, config: HttpRequestConfig, ctx: StepContext) -> dict[str, Any]:
        headers = request_headers(config.headers, ctx.idempotency_key)
        content, content_type = config.content()
        if content_type and not any(name.lower() == "content-type" for name in headers):
            headers["Content-Type"] = content_type
        call = net.HttpCall(
            method=config.method,
            url=config.url,
            headers=headers,
            params=config.query,
            content=content,
            timeout_ms=effective_timeout_ms(config.timeout_ms, ctx),
            allow_private=ctx.allow_private_networks,
            max_body_bytes=ctx.max_output_bytes,
        )
        result = await net.send(call)
        net.raise_for_status(config.method, config.url, result.status, config.accept_status)
        return {
            "status": result.status,
            "headers": result.headers,
            "json": result.json(),
            "text": result.text(),
        }
