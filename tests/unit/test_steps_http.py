"""``http_request`` and ``webhook`` against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import ValidationError

from tests.httpserver import HANG, LocalServer, Reply
from tolstoy import net
from tolstoy.engine.steps.base import StepContext
from tolstoy.engine.steps.http_request import HttpRequestConfig, HttpRequestStep
from tolstoy.engine.steps.webhook import WebhookConfig, WebhookStep
from tolstoy.errors import StepError
from tolstoy.webhooks import signing

WAIT = 5.0


@pytest.fixture
async def server() -> AsyncIterator[LocalServer]:
    srv = LocalServer()
    await srv.start()
    yield srv
    await srv.stop()
    await net.aclose_http_client()


def make_ctx(**overrides: Any) -> StepContext:
    values: dict[str, Any] = {
        "execution_id": "exec_1_abc",
        "org_id": "org_1",
        "flow_id": "flow_1",
        "step_id": "call",
        "step_name": "Call",
        "step_type": "http_request",
        "attempt": 1,
        "allow_private_networks": True,
    }
    return StepContext(**(values | overrides))


async def http(config: dict[str, Any], **ctx: Any) -> Any:
    return await HttpRequestStep().run(HttpRequestConfig.model_validate(config), make_ctx(**ctx))


async def http_error(config: dict[str, Any], **ctx: Any) -> StepError:
    with pytest.raises(StepError) as info:
        await http(config, **ctx)
    return info.value


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- http_request -------------------------------------------------------------------


async def test_sends_method_headers_query_and_json_and_shapes_the_output(server: LocalServer) -> None:
    server.routes["/items"] = lambda _: Reply(
        201, {"content-type": "application/json", "X-Id": "7"}, b'{"id": 7}'
    )
    out = await http(
        {
            "method": "post",
            "url": server.url("/items?fixed=1"),
            "headers": {"X-Trace": "t-1", "X-Num": 5},
            "query": {"q": "a b", "tags": ["x", "y"], "flag": True},
            "json": {"title": "Zoë"},
        }
    )
    seen = server.seen[0]
    assert (seen.method, seen.path) == ("POST", "/items")
    assert seen.query == {"fixed": ["1"], "q": ["a b"], "tags": ["x", "y"], "flag": ["true"]}
    assert seen.headers["x-trace"] == "t-1" and seen.headers["x-num"] == "5"
    assert seen.headers["content-type"] == "application/json"
    assert json.loads(seen.body) == {"title": "Zoë"}
    assert seen.headers["idempotency-key"] == "exec_1_abc:call"
    assert out == {"status": 201, "headers": out["headers"], "json": {"id": 7}, "text": '{"id": 7}'}
    assert out["headers"]["x-id"] == "7" and all(k == k.lower() for k in out["headers"])


async def test_a_string_body_is_sent_as_is_and_the_users_idempotency_key_wins(server: LocalServer) -> None:
    server.routes["/raw"] = lambda _: Reply(200, {"content-type": "text/plain"}, b"not json")
    out = await http(
        {"method": "PUT", "url": server.url("/raw"), "body": "a=1", "headers": {"idempotency-KEY": "mine"}}
    )
    seen = server.seen[0]
    assert seen.body == b"a=1" and seen.headers["idempotency-key"] == "mine"
    assert out["json"] is None and out["text"] == "not json"


async def test_a_parseable_body_is_json_whatever_its_content_type(server: LocalServer) -> None:
    server.routes["/j"] = lambda _: Reply(200, {"content-type": "text/plain"}, b"[1, 2]")
    assert (await http({"url": server.url("/j")}))["json"] == [1, 2]


async def test_connection_refused_is_a_retryable_network_error() -> None:
    error = await http_error({"url": f"http://127.0.0.1:{free_port()}/x"})
    assert (error.category, error.error_code, error.retryable) == ("network", "connection_error", True)
    await net.aclose_http_client()


@pytest.mark.parametrize(
    ("status", "category", "code", "retryable"),
    [
        (500, "network", "http_5xx", True),
        (502, "network", "http_5xx", True),
        (429, "network", "http_429", True),
        (408, "network", "http_408", True),
        (401, "permission", "http_401", False),
        (403, "permission", "http_403", False),
        (404, "validation", "http_404", False),
    ],
)
async def test_failure_statuses_map_to_categories(
    server: LocalServer, status: int, category: str, code: str, retryable: bool
) -> None:
    server.routes["/s"] = lambda _: Reply(status, body=b"Authorization: Bearer tok-123 echoed")
    error = await http_error(
        {"method": "DELETE", "url": server.url("/s"), "headers": {"Authorization": "Bearer tok-123"}}
    )
    assert (error.category, error.error_code, error.retryable) == (category, code, retryable)
    assert f"DELETE {server.url('/s')}" in error.message and str(status) in error.message
    assert "tok-123" not in error.message


async def test_accept_status_overrides_the_default(server: LocalServer) -> None:
    server.routes["/missing"] = lambda _: Reply(404, body=b"{}")
    server.routes["/created"] = lambda _: Reply(201)
    assert (await http({"url": server.url("/missing"), "acceptStatus": [404]}))["status"] == 404
    error = await http_error({"url": server.url("/created"), "acceptStatus": [200]})
    assert (error.category, error.error_code) == ("validation", "http_201")


async def test_a_slow_server_is_a_retryable_timeout(server: LocalServer) -> None:
    server.routes["/slow"] = lambda _: HANG
    error = await http_error({"url": server.url("/slow"), "timeoutMs": 200})
    assert (error.category, error.retryable) == ("timeout", True)
    assert "200 ms" in error.message


async def test_the_step_timeout_caps_the_request_timeout(server: LocalServer) -> None:
    server.routes["/slow"] = lambda _: HANG
    error = await http_error({"url": server.url("/slow"), "timeoutMs": 60_000}, timeout_ms=150)
    assert error.category == "timeout" and "150 ms" in error.message


async def test_cancellation_aborts_the_request(server: LocalServer) -> None:
    server.routes["/slow"] = lambda _: HANG
    task = asyncio.create_task(http({"url": server.url("/slow")}))
    async with asyncio.timeout(WAIT):
        while not server.seen:
            await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(server.client_gone.wait(), WAIT)


async def test_a_body_over_the_output_limit_is_a_data_error(server: LocalServer) -> None:
    server.routes["/big"] = lambda _: Reply(200, body=b"x" * 5000)
    server.routes["/small"] = lambda _: Reply(200, body=b"x" * 900)
    error = await http_error({"url": server.url("/big")}, max_output_bytes=1000)
    assert (error.category, error.error_code) == ("data", "output_too_large")
    assert (await http({"url": server.url("/small")}, max_output_bytes=1000))["text"] == "x" * 900


async def test_private_targets_are_blocked_before_any_request(server: LocalServer) -> None:
    server.routes["/x"] = lambda _: Reply(200)
    for host in ("127.0.0.1", "localhost", "[::ffff:127.0.0.1]"):
        error = await http_error({"url": server.url("/x", host)}, allow_private_networks=False)
        assert (error.category, error.error_code) == ("permission", "ssrf_blocked")
    assert server.seen == []
    assert (await http({"url": server.url("/x")}, allow_private_networks=True))["status"] == 200


async def test_redirects_are_followed_with_credentials_kept_on_the_same_origin(server: LocalServer) -> None:
    server.routes["/start"] = lambda _: Reply(303, {"location": "/same"})
    server.routes["/same"] = lambda _: Reply(307, {"location": server.url("/final", "localhost")})
    server.routes["/final"] = lambda _: Reply(200, body=b'"done"')
    out = await http(
        {"method": "POST", "url": server.url("/start"), "json": {"a": 1}, "headers": {"Authorization": "x"}}
    )
    assert out["json"] == "done"
    assert [(s.method, s.path) for s in server.seen] == [
        ("POST", "/start"),
        ("GET", "/same"),
        ("GET", "/final"),
    ]
    assert server.seen[1].body == b"" and "authorization" in server.seen[1].headers
    assert "authorization" not in server.seen[2].headers


async def test_too_many_redirects_fail(server: LocalServer) -> None:
    server.routes["/loop"] = lambda _: Reply(302, {"location": "/loop"})
    error = await http_error({"url": server.url("/loop")})
    assert error.error_code == "too_many_redirects"
    assert len(server.seen) == net.MAX_REDIRECTS + 1


async def test_a_redirect_to_a_private_address_is_blocked(
    server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``localhost`` plays a public host: the guard is told it is 93.184.216.34, httpx still connects."""
    original = net._resolve

    async def resolve(host: str, port: int) -> list[net.IPAddress]:
        if host == "localhost":
            return [ipaddress.ip_address("93.184.216.34")]
        return await original(host, port)

    monkeypatch.setattr(net, "_resolve", resolve)
    server.routes["/hop"] = lambda _: Reply(302, {"location": server.url("/admin", "127.0.0.1")})
    server.routes["/admin"] = lambda _: Reply(200, body=b"secret")
    error = await http_error({"url": server.url("/hop", "localhost")}, allow_private_networks=False)
    assert (error.category, error.error_code) == ("permission", "ssrf_blocked")
    assert [s.path for s in server.seen] == ["/hop"]


@pytest.mark.parametrize(
    "config",
    [
        {"url": "http://x.example/", "json": {}, "body": "both"},
        {"url": "ftp://x.example/"},
        {"url": "not a url"},
        {"url": "http://x.example/", "method": "BREW"},
        {"url": "http://x.example/", "timeoutMs": 0},
        {"url": "http://x.example/", "unknown": 1},
    ],
)
def test_invalid_configs_are_refused(config: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        HttpRequestConfig.model_validate(config)


# --- webhook ------------------------------------------------------------------------


async def webhook(config: dict[str, Any], **ctx: Any) -> Any:
    return await WebhookStep().run(WebhookConfig.model_validate(config), make_ctx(step_type="webhook", **ctx))


async def test_webhook_posts_the_payload_signed(server: LocalServer) -> None:
    server.routes["/hook"] = lambda _: Reply(202)
    secret = "whsec_" + base64.b64encode(b"k" * 24).decode()
    payload = {"text": "Zoë", "n": 1.0}
    out = await webhook(
        {"url": server.url("/hook"), "payload": payload, "secret": secret, "headers": {"X-A": "b"}}
    )
    assert out == {"status": 202}
    seen = server.seen[0]
    assert seen.method == "POST" and json.loads(seen.body) == payload
    h = seen.headers
    assert h["x-webhook-event"] == "step.webhook" and h["x-a"] == "b"
    assert h["x-webhook-delivery"].startswith(f"whd_{h['x-webhook-timestamp']}_")
    assert h["idempotency-key"] == "exec_1_abc:call"
    signed = f"{h['webhook-id']}.{h['webhook-timestamp']}.".encode() + seen.body
    digest = hmac.new(base64.b64decode(secret[6:]), signed, hashlib.sha256).digest()
    assert h["webhook-signature"] == "v1," + base64.b64encode(digest).decode()
    seed = json.dumps(
        {"timestamp": int(h["x-webhook-timestamp"]), "text": "Zoë", "n": 1},
        separators=(",", ":"),
        ensure_ascii=False,
    )
    seed_digest = hmac.new(secret.encode(), seed.encode(), hashlib.sha256).hexdigest()
    assert h["x-webhook-signature"] == f"sha256={seed_digest}"


async def test_webhook_without_secret_is_unsigned(server: LocalServer) -> None:
    server.routes["/hook"] = lambda _: Reply(200)
    await webhook({"url": server.url("/hook"), "payload": [1, 2]})
    headers = server.seen[0].headers
    assert "x-webhook-signature" not in headers and "webhook-signature" not in headers
    assert server.seen[0].body == b"[1,2]"


async def test_webhook_failures_map_like_http_requests(server: LocalServer) -> None:
    server.routes["/down"] = lambda _: Reply(503)
    server.routes["/gone"] = lambda _: Reply(410)
    with pytest.raises(StepError) as info:
        await webhook({"url": server.url("/down"), "payload": {}})
    assert (info.value.category, info.value.retryable) == ("network", True)
    with pytest.raises(StepError) as info:
        await webhook({"url": server.url("/gone"), "payload": {}})
    assert (info.value.category, info.value.error_code) == ("validation", "http_410")
    with pytest.raises(StepError) as info:
        await webhook({"url": server.url("/down"), "payload": {}}, allow_private_networks=False)
    assert info.value.error_code == "ssrf_blocked"


def test_webhook_config_refuses_a_bad_whsec_secret() -> None:
    with pytest.raises(ValidationError):
        WebhookConfig.model_validate({"url": "https://x.example/", "payload": {}, "secret": "whsec_***"})
    assert signing.standard_key("plain") == b"plain"
