"""``webhook``: POST a JSON payload, signed as PROTOCOL.md §5 when a secret is given."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from tolstoy import jsonutil, net
from tolstoy.engine.steps.base import StepConfig, StepContext, StepType
from tolstoy.engine.steps.http_request import (
    DEFAULT_TIMEOUT_MS,
    MAX_TIMEOUT_MS,
    HttpUrlText,
    Scalar,
    effective_timeout_ms,
    request_headers,
)
from tolstoy.timeutil import now_ms
from tolstoy.webhooks import signing

EVENT_TYPE = "step.webhook"


class WebhookConfig(StepConfig):
    url: HttpUrlText
    payload: Any
    headers: dict[str, Scalar] = Field(default_factory=dict)
    secret: str | None = None
    timeout_ms: int = Field(default=DEFAULT_TIMEOUT_MS, alias="timeoutMs", gt=0, le=MAX_TIMEOUT_MS)

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: str | None) -> str | None:
        if value:
            signing.standard_key(value)  # a whsec_ secret must decode
        return value


class WebhookStep(StepType):
    name = "webhook"
    config_model = WebhookConfig

    async def run(self, config: WebhookConfig, ctx: StepContext) -> dict[str, Any]:
        timestamp = now_ms()
        body = jsonutil.dumpb(config.payload)
        headers = signing.signed_headers(
            secret=config.secret,
            event_type=EVENT_TYPE,
            delivery_id=signing.new_delivery_id(timestamp),
            timestamp_ms=timestamp,
            body=body,
            extra=request_headers(config.headers, ctx.idempotency_key),
        )
        call = net.HttpCall(
            method="POST",
            url=config.url,
            headers=headers,
            content=body,
            timeout_ms=effective_timeout_ms(config.timeout_ms, ctx),
            allow_private=ctx.allow_private_networks,
            max_body_bytes=ctx.max_output_bytes,
        )
        result = await net.send(call)
        net.raise_for_status("POST", config.url, result.status)
        return {"status": result.status}
