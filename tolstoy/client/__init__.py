"""Tolstoy's Python client: the REST API and live subscriptions that survive disconnects.

async with Client() as client:                      # URL and key from env or ~/.tolstoy
    flow = await client.flows.apply(Path("examples/hello.yaml"))
    started = await client.executions.start(flow["id"], {"who": "reader"})
    async for event in client.watch(started["executionId"]):
        print(event["seq"], event["type"])
"""

from __future__ import annotations

from tolstoy.client.errors import (
    AuthError,
    BadRequestError,
    ConflictError,
    ConnectionFailed,
    NotFoundError,
    PayloadTooLargeError,
    ProtocolError,
    RateLimitedError,
    ServerError,
    TolstoyAPIError,
    TolstoyClientError,
    ValidationError,
)
from tolstoy.client.live import TERMINAL_TYPES, Backoff, State, Subscription
from tolstoy.client.rest import Client, EventPage, Page

__all__ = [
    "TERMINAL_TYPES",
    "AuthError",
    "Backoff",
    "BadRequestError",
    "Client",
    "ConflictError",
    "ConnectionFailed",
    "EventPage",
    "NotFoundError",
    "Page",
    "PayloadTooLargeError",
    "ProtocolError",
    "RateLimitedError",
    "ServerError",
    "State",
    "Subscription",
    "TolstoyAPIError",
    "TolstoyClientError",
    "ValidationError",
]
