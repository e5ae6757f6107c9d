"""The REST half of the Python client: ``Client`` and its resources (flows, executions, approvals, keys).

``Client(url=None, api_key=None)`` finds the server and the key in this order:
the arguments, then ``TOLSTOY_URL`` / ``TOLSTOY_API_KEY``, then the credentials
file ``tolstoy serve`` writes on first start (``$TOLSTOY_HOME/credentials``,
default ``~/.tolstoy``), then ``http://127.0.0.1:8000`` for the URL.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import orjson
import yaml

from tolstoy.client import errors
from tolstoy.client.live import Backoff, Subscription

DEFAULT_URL = "http://127.0.0.1:8000"
JSONDict = dict[str, Any]
Items = list[dict[str, Any]]
Definition = Mapping[str, Any] | str | bytes | Path
"""A flow definition: a mapping, YAML or JSON text, or a ``Path`` to a file holding one."""


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list endpoint; pass ``next_cursor`` back as ``cursor`` for the next."""

    items: Items
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class EventPage:
    """Events of one execution in ``seq`` order; ``next_since`` is set when more follow."""

    items: Items
    next_since: int | None


def credentials_file(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("TOLSTOY_HOME") or "~/.tolstoy").expanduser() / "credentials"


def _read_credentials(path: Path) -> JSONDict:
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def resolve(
    url: str | None, api_key: str | None, env: Mapping[str, str] | None = None
) -> tuple[str, str | None]:
    """The server URL and API key: arguments, then environment, then the credentials file."""
    env = os.environ if env is None else env
    url = url or env.get("TOLSTOY_URL") or None
    api_key = api_key or env.get("TOLSTOY_API_KEY") or None
    if url is None or api_key is None:
        creds = _read_credentials(credentials_file(env))
        url = url or _str_or_none(creds.get("url"))
        api_key = api_key or _str_or_none(creds.get("apiKey"))
    return (url or DEFAULT_URL).rstrip("/"), api_key


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _params(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None and v != []}


class Client:
    """An async client for one Tolstoy server; use as ``async with Client() as client:``."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        reconnect: Backoff | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.url, self.api_key = resolve(url, api_key, env)
        self.reconnect = reconnect or Backoff()
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )
        self.flows = Flows(self)
        self.executions = Executions(self)
        self.approvals = Approvals(self)
        self.api_keys = ApiKeys(self)

    def __repr__(self) -> str:
        return f"Client(url={self.url!r})"

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """Send one request; returns the decoded JSON body (None when empty) or raises a client error."""
        try:
            resp = await self._http.request(
                method, path, params=params, json=json, content=content, headers=headers
            )
        except httpx.TransportError as exc:
            raise errors.ConnectionFailed(self.url, str(exc) or type(exc).__name__) from exc
        body = _decode(resp)
        if resp.status_code >= 400:
            raise errors.from_response(
                resp.status_code, body, resp.reason_phrase or f"HTTP {resp.status_code}"
            )
        if body is _NOT_JSON:
            raise errors.ProtocolError(
                f"{method} {path} answered {resp.status_code} with a body that is not JSON"
            )
        return body

    async def health(self) -> JSONDict:
        result: JSONDict = await self.request("GET", "/health")
        return result

    async def me(self) -> JSONDict:
        """The caller: ``{"user", "organization", "apiKeyId", "role"}``."""
        result: JSONDict = await self.request("GET", "/api/v1/me")
        return result

    async def subscribe_token(self, channels: Sequence[str], ttl_seconds: int | None = None) -> JSONDict:
        """A short-lived token for browsers, scoped to ``channels``: ``{"token", "expiresAt"}``."""
        body = _params(channels=list(channels), ttlSeconds=ttl_seconds)
        result: JSONDict = await self.request("POST", "/api/v1/tokens/subscribe", json=body)
        return result

    def watch(self, execution_id: str, since: int = 0) -> Subscription:
        """Events of one execution with ``seq > since``, in order, once each, up to the terminal one."""
        return Subscription(self, f"executions:{execution_id}", since=since, stop_at_terminal=True)

    def subscribe(
        self,
        channel: str,
        *,
        filters: Mapping[str, Sequence[str]] | None = None,
        since: int | str | None = None,
    ) -> Subscription:
        """Events of any channel (PROTOCOL.md §2), resumed across reconnects; runs until closed."""
        return Subscription(self, channel, since=since, filters=filters)


_NOT_JSON: Any = object()


def _decode(resp: httpx.Response) -> Any:
    if resp.status_code == 204 or not resp.content:
        return None
    try:
        return orjson.loads(resp.content)
    except ValueError:
        return _NOT_JSON


class _Resource:
    def __init__(self, client: Client) -> None:
        self._client = client

    async def _get(self, path: str, **params: Any) -> Any:
        return await self._client.request("GET", path, params=_params(**params))

    async def _post(self, path: str, body: Any = None) -> Any:
        return await self._client.request("POST", path, json=body)

    async def _page(self, path: str, **params: Any) -> Page:
        body = await self._get(path, **params)
        return Page(list(body.get("items") or []), body.get("nextCursor"))

    async def _all(self, path: str, **params: Any) -> AsyncIterator[JSONDict]:
        cursor: str | None = None
        while True:
            page = await self._page(path, cursor=cursor, **params)
            for item in page.items:
                yield item
            if not page.next_cursor:
                return
            cursor = page.next_cursor


class Flows(_Resource):
    """Flows and their immutable versions."""

    async def list(self, *, limit: int | None = None, cursor: str | None = None) -> Page:
        return await self._page("/api/v1/flows", limit=limit, cursor=cursor)

    def iterate(self) -> AsyncIterator[JSONDict]:
        """Every flow of the organization, following the cursor."""
        return self._all("/api/v1/flows", limit=500)

    async def get(self, flow_id: str) -> JSONDict:
        result: JSONDict = await self._get(f"/api/v1/flows/{flow_id}")
        return result

    async def find(self, name: str) -> JSONDict | None:
        """The flow named ``name``, or None."""
        async for flow in self.iterate():
            if flow.get("name") == name:
                return flow
        return None

    async def create(self, definition: Definition) -> JSONDict:
        content, headers = _definition_body(definition)
        result: JSONDict = await self._client.request(
            "POST", "/api/v1/flows", content=content, headers=headers
        )
        return result

    async def update(self, flow_id: str, definition: Definition) -> JSONDict:
        """A new version of the flow."""
        content, headers = _definition_body(definition)
        path = f"/api/v1/flows/{flow_id}"
        result: JSONDict = await self._client.request("PUT", path, content=content, headers=headers)
        return result

    async def apply(self, definition: Definition) -> JSONDict:
        """Create the flow, or add a version to the flow of the same name; ``version == 1`` means created."""
        name = definition_name(definition)
        existing = await self.find(name) if name else None
        if existing is None:
            try:
                return await self.create(definition)
            except errors.ConflictError:  # created meanwhile by someone else: update it instead
                existing = await self.find(name) if name else None
                if existing is None:
                    raise
        return await self.update(existing["id"], definition)

    async def delete(self, flow_id: str) -> None:
        await self._client.request("DELETE", f"/api/v1/flows/{flow_id}")

    async def versions(self, flow_id: str) -> Items:
        items: Items = (await self._get(f"/api/v1/flows/{flow_id}/versions"))["items"]
        return items

    async def metrics(self, flow_id: str) -> JSONDict:
        result: JSONDict = await self._get(f"/api/v1/flows/{flow_id}/metrics")
        return result


class Executions(_Resource):
    """Executions: start, inspect, control."""

    async def start(
        self, flow_id: str, variables: Mapping[str, Any] | None = None, *, idempotency_key: str | None = None
    ) -> JSONDict:
        """Queue an execution: ``{"executionId", "status"}``."""
        body = _params(variables=dict(variables or {}), idempotencyKey=idempotency_key)
        result: JSONDict = await self._post(f"/api/v1/flows/{flow_id}/execute", body)
        return result

    async def list(
        self,
        *,
        status: str | Sequence[str] | None = None,
        flow_id: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page:
        return await self._page("/api/v1/executions", **_filters(status, flow_id), limit=limit, cursor=cursor)

    def iterate(
        self, *, status: str | Sequence[str] | None = None, flow_id: str | None = None
    ) -> AsyncIterator[JSONDict]:
        """Every matching execution, newest first, following the cursor."""
        return self._all("/api/v1/executions", **_filters(status, flow_id), limit=500)

    async def get(self, execution_id: str) -> JSONDict:
        """The execution with its live status (``status``, ``progressPercentage``, ``currentStep``…)."""
        result: JSONDict = await self._get(f"/api/v1/executions/{execution_id}")
        return result

    async def steps(self, execution_id: str) -> Items:
        """Every step of the execution's flow version, ``pending`` ones included."""
        items: Items = (await self._get(f"/api/v1/executions/{execution_id}/steps"))["items"]
        return items

    async def events(
        self,
        execution_id: str,
        *,
        since: int = 0,
        limit: int | None = None,
        types: Sequence[str] | None = None,
    ) -> EventPage:
        body = await self._get(f"/api/v1/executions/{execution_id}/events", since=since, limit=limit,
                               types=",".join(types) if types else None)  # fmt: skip
        return EventPage(list(body.get("items") or []), body.get("nextSince"))

    async def logs(
        self,
        execution_id: str,
        *,
        levels: Sequence[str] | None = None,
        since: int = 0,
        limit: int | None = None,
    ) -> Items:
        body = await self._get(f"/api/v1/executions/{execution_id}/logs", since=since, limit=limit,
                               levels=",".join(levels) if levels else None)  # fmt: skip
        items: Items = body["items"]
        return items

    async def cancel(self, execution_id: str) -> JSONDict:
        result: JSONDict = await self._post(f"/api/v1/executions/{execution_id}/cancel")
        return result

    async def pause(self, execution_id: str) -> JSONDict:
        result: JSONDict = await self._post(f"/api/v1/executions/{execution_id}/pause")
        return result

    async def resume(self, execution_id: str) -> JSONDict:
        result: JSONDict = await self._post(f"/api/v1/executions/{execution_id}/resume")
        return result

    async def retry(self, execution_id: str, *, from_failed_step: bool = False) -> JSONDict:
        """A new execution with ``retryOf``; ``from_failed_step`` reuses the completed steps' outputs."""
        body = {"fromFailedStep": True} if from_failed_step else {}
        result: JSONDict = await self._post(f"/api/v1/executions/{execution_id}/retry", body)
        return result


def _filters(status: str | Sequence[str] | None, flow_id: str | None) -> dict[str, Any]:
    statuses = [status] if isinstance(status, str) else list(status or [])
    return _params(status=",".join(statuses) or None, flowId=flow_id)


class Approvals(_Resource):
    """Decisions for ``approval`` steps."""

    async def list(
        self, *, status: str | None = "pending", limit: int | None = None, cursor: str | None = None
    ) -> Page:
        return await self._page("/api/v1/approvals", status=status, limit=limit, cursor=cursor)

    async def grant(self, approval_id: str, *, comment: str | None = None) -> JSONDict:
        result: JSONDict = await self._post(
            f"/api/v1/approvals/{approval_id}/grant", _params(comment=comment)
        )
        return result

    async def deny(self, approval_id: str, *, comment: str | None = None) -> JSONDict:
        result: JSONDict = await self._post(f"/api/v1/approvals/{approval_id}/deny", _params(comment=comment))
        return result


class ApiKeys(_Resource):
    """The organization's API keys (a new key's secret is shown once)."""

    async def list(self) -> Items:
        items: Items = (await self._get("/api/v1/api-keys"))["items"]
        return items

    async def create(self, name: str) -> JSONDict:
        """A new key for the caller: the response's ``key`` is the secret, shown only now."""
        result: JSONDict = await self._post("/api/v1/api-keys", {"name": name})
        return result

    async def revoke(self, key_id: str) -> None:
        await self._client.request("DELETE", f"/api/v1/api-keys/{key_id}")


def _definition_body(definition: Definition) -> tuple[bytes, dict[str, str]]:
    if isinstance(definition, Path):
        definition = definition.read_bytes()
    if isinstance(definition, Mapping):
        return orjson.dumps(dict(definition)), {"content-type": "application/json"}
    raw = definition.encode() if isinstance(definition, str) else definition
    kind = "application/json" if raw.lstrip().startswith(b"{") else "application/yaml"
    return raw, {"content-type": kind}


def definition_name(definition: Definition) -> str | None:
    """The ``name`` a definition declares, or None when it is unreadable (the server then says why)."""
    if isinstance(definition, Path):
        definition = definition.read_bytes()
    if isinstance(definition, Mapping):
        data: Any = definition
    else:
        try:
            data = yaml.safe_load(definition)
        except yaml.YAMLError:
            return None
    name = data.get("name") if isinstance(data, Mapping) else None
    return name if isinstance(name, str) and name else None
