"""The REST client against a mock transport: where it finds the server, what it sends, how errors map."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

import tolstoy.client
from tolstoy.client import (
    AuthError,
    Client,
    ConflictError,
    ConnectionFailed,
    NotFoundError,
    ProtocolError,
    ServerError,
    TolstoyAPIError,
    TolstoyClientError,
    ValidationError,
    errors,
)
from tolstoy.client.rest import DEFAULT_URL, definition_name, resolve

Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """A mock server: answers with ``handler`` and keeps every request."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)

    def client(self) -> Client:
        return Client("http://tolstoy.test", "tsk_key", transport=httpx.MockTransport(self), env={})

    @property
    def calls(self) -> list[tuple[str, str]]:
        return [(r.method, r.url.path) for r in self.requests]


def error(status: int, code: str, message: str, **extra: Any) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message, **extra}})


# where the client finds the server


def test_arguments_win_over_environment_and_credentials(tmp_path: Path) -> None:
    (tmp_path / "credentials").write_text(
        json.dumps({"url": "http://file:1", "apiKey": "file-key", "orgId": "o"})
    )
    env = {"TOLSTOY_HOME": str(tmp_path), "TOLSTOY_URL": "http://env:2", "TOLSTOY_API_KEY": "env-key"}
    assert resolve("http://arg:3/", "arg-key", env) == ("http://arg:3", "arg-key")
    assert resolve(None, None, env) == ("http://env:2", "env-key")
    assert resolve(None, None, {"TOLSTOY_HOME": str(tmp_path)}) == ("http://file:1", "file-key")
    assert resolve(None, None, {"TOLSTOY_HOME": str(tmp_path), "TOLSTOY_URL": "http://env:2"}) == (
        "http://env:2",
        "file-key",
    )


def test_without_any_configuration_the_default_url_and_no_key(tmp_path: Path) -> None:
    assert resolve(None, None, {"TOLSTOY_HOME": str(tmp_path)}) == (DEFAULT_URL, None)
    (tmp_path / "credentials").write_text("not json")
    assert resolve(None, None, {"TOLSTOY_HOME": str(tmp_path)}) == (DEFAULT_URL, None)


async def test_the_key_is_sent_as_a_bearer_token() -> None:
    server = Recorder(lambda r: httpx.Response(200, json={"user": {}, "organization": {"id": "org_1"}}))
    async with server.client() as client:
        me = await client.me()
    assert me["organization"]["id"] == "org_1"
    assert server.requests[0].headers["authorization"] == "Bearer tsk_key"
    assert server.calls == [("GET", "/api/v1/me")]


# errors


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [(400, "bad_request", errors.BadRequestError), (401, "unauthorized", AuthError),
     (403, "forbidden", AuthError), (404, "not_found", NotFoundError),
     (409, "illegal_transition", ConflictError), (413, "too_large", errors.PayloadTooLargeError),
     (429, "rate_limited", errors.RateLimitedError),
     (503, "unavailable", ServerError), (418, "teapot", TolstoyAPIError)],
)  # fmt: skip
async def test_error_bodies_map_to_the_exception_tree(
    status: int, code: str, cls: type[TolstoyAPIError]
) -> None:
    server = Recorder(lambda r: error(status, code, "it went wrong"))
    async with server.client() as client:
        with pytest.raises(cls) as caught:
            await client.executions.get("exec_1")
    assert type(caught.value) is cls
    assert (caught.value.status, caught.value.code, caught.value.message) == (status, code, "it went wrong")
    assert isinstance(caught.value, TolstoyClientError)


async def test_validation_errors_carry_the_field_details() -> None:
    details = [{"field": "steps[0].type", "message": "unknown step type 'nope'", "code": "unknown_step_type"}]
    server = Recorder(
        lambda r: error(422, "validation_failed", "flow definition is invalid", details=details)
    )
    async with server.client() as client:
        with pytest.raises(ValidationError) as caught:
            await client.flows.create({"name": "x", "steps": [{"id": "a", "type": "nope"}]})
    assert caught.value.details == details


async def test_an_error_without_the_api_body_still_maps_by_status() -> None:
    server = Recorder(lambda r: httpx.Response(502, text="<html>bad gateway</html>"))
    async with server.client() as client:
        with pytest.raises(ServerError) as caught:
            await client.health()
    assert (caught.value.status, caught.value.code, caught.value.message) == (
        502,
        "server_error",
        "Bad Gateway",
    )


async def test_a_success_that_is_not_json_is_a_protocol_error() -> None:
    server = Recorder(lambda r: httpx.Response(200, text="<html>"))
    async with server.client() as client:
        with pytest.raises(ProtocolError, match="not JSON"):
            await client.health()


async def test_an_unreachable_server_is_a_connection_failure_naming_the_url() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    async with Client("http://127.0.0.1:1", "k", transport=httpx.MockTransport(refuse), env={}) as client:
        with pytest.raises(ConnectionFailed) as caught:
            await client.flows.list()
    assert caught.value.url == "http://127.0.0.1:1"
    assert str(caught.value) == "cannot reach Tolstoy at http://127.0.0.1:1: [Errno 111] Connection refused"


# flows


HELLO = "name: hello\nsteps:\n  - {id: a, type: data_transform, config: {expression: '1'}}\n"


def flows_server(existing: list[dict[str, Any]], post_conflicts: bool = False) -> Recorder:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path == "/api/v1/flows":
            cursor = request.url.params.get("cursor")
            page, rest = (
                (existing[1:], None) if cursor else (existing[:1], "c1" if len(existing) > 1 else None)
            )
            return httpx.Response(200, json={"items": page, "nextCursor": rest})
        if request.method == "POST":
            if post_conflicts:
                existing.append({"id": "flow_raced", "name": "hello", "version": 1})
                return error(409, "conflict", "a flow named 'hello' exists already")
            return httpx.Response(201, json={"id": "flow_new", "name": "hello", "version": 1})
        if request.method == "PUT":
            return httpx.Response(
                200, json={"id": request.url.path.rsplit("/", 1)[1], "name": "hello", "version": 2}
            )
        return error(404, "not_found", "no")

    return Recorder(handler)


async def test_apply_creates_a_flow_that_does_not_exist() -> None:
    server = flows_server([{"id": "flow_other", "name": "other", "version": 1}])
    async with server.client() as client:
        flow = await client.flows.apply(HELLO)
    assert flow == {"id": "flow_new", "name": "hello", "version": 1}
    post = server.requests[-1]
    assert (post.method, post.headers["content-type"], post.content) == (
        "POST",
        "application/yaml",
        HELLO.encode(),
    )


async def test_apply_adds_a_version_to_the_flow_of_the_same_name_on_any_page(tmp_path: Path) -> None:
    server = flows_server([{"id": "flow_other", "name": "other"}, {"id": "flow_hello", "name": "hello"}])
    path = tmp_path / "hello.yaml"
    path.write_text(HELLO)
    async with server.client() as client:
        flow = await client.flows.apply(path)
    assert flow["version"] == 2
    assert server.calls[-1] == ("PUT", "/api/v1/flows/flow_hello")
    assert [r.url.params.get("cursor") for r in server.requests[:-1]] == [None, "c1"]


async def test_apply_updates_when_someone_created_the_flow_meanwhile() -> None:
    server = flows_server([], post_conflicts=True)
    async with server.client() as client:
        flow = await client.flows.apply({"name": "hello", "steps": []})
    assert server.calls[-1] == ("PUT", "/api/v1/flows/flow_raced")
    assert flow["version"] == 2
    assert json.loads(server.requests[-1].content) == {"name": "hello", "steps": []}


def test_definition_names() -> None:
    assert definition_name(HELLO) == "hello"
    assert definition_name(b'{"name": "j", "steps": []}') == "j"
    assert definition_name({"name": "m"}) == "m"
    assert definition_name("name: [unclosed") is None
    assert definition_name("- a list") is None


# executions, approvals, keys


async def test_execution_calls_send_what_the_api_expects() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return httpx.Response(200, json={"items": [{"seq": 3}], "nextSince": 3})
        if request.url.path == "/api/v1/executions":
            return httpx.Response(200, json={"items": [{"id": "exec_1"}], "nextCursor": "next"})
        return httpx.Response(200, json={"executionId": "exec_2", "status": "queued"})

    server = Recorder(handler)
    async with server.client() as client:
        started = await client.executions.start("flow_1", {"n": 1}, idempotency_key="once")
        page = await client.executions.list(status=["failed", "cancelled"], flow_id="flow_1", limit=5)
        events = await client.executions.events("exec_1", since=2, limit=1, types=["step.", "log"])
        await client.executions.retry("exec_1", from_failed_step=True)
        await client.executions.pause("exec_1")
        await client.approvals.grant("apr_1", comment="ok")
        await client.approvals.list()
    assert started["executionId"] == "exec_2"
    assert (page.items, page.next_cursor) == ([{"id": "exec_1"}], "next")
    assert (events.items, events.next_since) == ([{"seq": 3}], 3)
    start, listing, evs, retry, pause, grant, approvals = server.requests
    assert json.loads(start.content) == {"variables": {"n": 1}, "idempotencyKey": "once"}
    assert start.url.path == "/api/v1/flows/flow_1/execute"
    assert dict(listing.url.params) == {"status": "failed,cancelled", "flowId": "flow_1", "limit": "5"}
    assert dict(evs.url.params) == {"since": "2", "limit": "1", "types": "step.,log"}
    assert (retry.url.path, json.loads(retry.content)) == (
        "/api/v1/executions/exec_1/retry",
        {"fromFailedStep": True},
    )
    assert (pause.method, pause.url.path) == ("POST", "/api/v1/executions/exec_1/pause")
    assert (grant.url.path, json.loads(grant.content)) == ("/api/v1/approvals/apr_1/grant", {"comment": "ok"})
    assert dict(approvals.url.params) == {"status": "pending"}


async def test_iterate_follows_the_cursor_to_the_end() -> None:
    pages = {None: (["a", "b"], "c1"), "c1": (["c"], "c2"), "c2": ([], None)}

    def handler(request: httpx.Request) -> httpx.Response:
        items, cursor = pages[request.url.params.get("cursor")]
        return httpx.Response(200, json={"items": [{"id": i} for i in items], "nextCursor": cursor})

    async with Recorder(handler).client() as client:
        assert [e["id"] async for e in client.executions.iterate(status="failed")] == ["a", "b", "c"]


# the public surface


def test_all_is_sorted_and_complete() -> None:
    names = tolstoy.client.__all__
    # isort-style, as ruff keeps it: CONSTANTS, then Classes, then functions
    assert names == sorted(names, key=lambda n: (not n.isupper(), not n[:1].isupper(), n))
    for name in names:
        assert hasattr(tolstoy.client, name), name
    raised = {n for n, v in vars(errors).items() if isinstance(v, type) and issubclass(v, TolstoyClientError)}
    assert raised <= set(names), f"exceptions missing from __all__: {raised - set(names)}"
    assert {"Client", "Subscription", "Backoff", "Page", "EventPage"} <= set(names)
