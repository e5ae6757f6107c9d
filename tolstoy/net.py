"""Outgoing HTTP: the SSRF guard, the one shared client, and failures mapped to StepError.

Every request goes through ``send``: the URL of each hop (redirects are followed by
hand, at most ``MAX_REDIRECTS``) is checked by ``check_url`` before it is requested,
the response body is read up to a cap, and transport failures become ``StepError``
with the categories of API.md. ``raise_for_status`` maps an unaccepted status the
same way. The ``http_request`` and ``webhook`` steps and the webhook dispatcher share
all of this.

Known gap: the guard resolves a host, then httpx resolves it again to connect, so a
DNS answer that changes in between (rebinding) is not caught.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from tolstoy import __version__, jsonutil
from tolstoy.errors import StepError

__all__ = [
    "DEFAULT_ACCEPT",
    "MAX_REDIRECTS",
    "HttpCall",
    "HttpResult",
    "aclose_http_client",
    "check_url",
    "display_url",
    "http_client",
    "is_public_address",
    "raise_for_status",
    "send",
]

MAX_REDIRECTS = 5
DEFAULT_ACCEPT = range(200, 400)
_ALLOWED_SCHEMES = frozenset({"http", "https"})
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# --- the SSRF guard ---------------------------------------------------------------


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, Teredo client, NAT64), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public_address(ip: IPAddress) -> bool:
    """True for a globally routable unicast address; embedded IPv4 addresses are judged too."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # ::ffff:a.b.c.d is a.b.c.d, whatever the Python version says
            return is_public_address(ip.ipv4_mapped)
        embedded = _embedded_ipv4(ip)
        if embedded is not None and not is_public_address(embedded):
            return False
    return ip.is_global and not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


def display_url(url: str | httpx.URL) -> str:
    """The URL without user info (``user:password@``), for messages."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "<invalid url>"
    return str(parsed.copy_with(username=None, password=None)) if parsed.userinfo else str(parsed)


def _blocked(url: str, why: str) -> StepError:
    return StepError(
        f"request to {display_url(url)} blocked: {why}", category="permission", code="ssrf_blocked"
    )


async def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise StepError(
            f"cannot resolve host {host!r}: {exc}", category="network", code="dns_error", retryable=True
        ) from None
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


async def check_url(url: str, *, allow_private: bool) -> None:
    """Refuse a non-http(s) URL, and unless ``allow_private`` a host with any non-public address."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise StepError(f"invalid URL: {exc}", category="validation", code="invalid_url") from None
    if parsed.scheme not in _ALLOWED_SCHEMES:
        raise _blocked(url, f"scheme {parsed.scheme or '(none)'!r} is not http or https")
    if not parsed.host:
        raise StepError(f"invalid URL {display_url(url)}: no host", category="validation", code="invalid_url")
    if allow_private:
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    for address in await _resolve(parsed.host, port):
        if not is_public_address(address):
            raise _blocked(url, f"{parsed.host} resolves to non-public address {address}")


# --- the shared client -------------------------------------------------------------


@dataclass(slots=True)
class _Shared:
    client: httpx.AsyncClient | None = None
    loop: asyncio.AbstractEventLoop | None = None


_shared = _Shared()


def http_client() -> httpx.AsyncClient:
    """The process's client (one per event loop): no redirects, no proxies or netrc from env."""
    loop = asyncio.get_running_loop()
    if _shared.client is None or _shared.client.is_closed or _shared.loop is not loop:
        _shared.client = httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(30.0),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=40, keepalive_expiry=30.0),
            headers={"user-agent": f"tolstoy/{__version__}"},
        )
        _shared.loop = loop
    return _shared.client


async def aclose_http_client() -> None:
    """Close the shared client (a later ``http_client()`` makes a new one)."""
    client, loop = _shared.client, _shared.loop
    _shared.client = _shared.loop = None
    if client is not None and loop is asyncio.get_running_loop():
        await client.aclose()


# --- sending -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpCall:
    """One logical request; ``timeout_ms`` bounds the whole exchange, redirects included."""

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, Any] | None = None
    content: bytes | None = None
    timeout_ms: int = 30_000
    allow_private: bool = False
    max_body_bytes: int = 1_048_576


@dataclass(frozen=True, slots=True)
class HttpResult:
    """The final response: status, lowercase headers (repeated ones joined by ``, ``), body."""

    status: int
    headers: dict[str, str]
    body: bytes
    url: str
    encoding: str | None = None

    def text(self) -> str:
        try:
            return self.body.decode(self.encoding or "utf-8", errors="replace")
        except LookupError:  # a charset Python does not know
            return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The parsed body, or None when it is empty or not JSON."""
        if not self.body.strip():
            return None
        try:
            return jsonutil.loads(self.body)
        except ValueError:
            return None


async def send(call: HttpCall) -> HttpResult:
    """Send ``call`` through the SSRF guard; transport failures and timeouts raise StepError."""
    where = f"{call.method} {display_url(call.url)}"
    try:
        async with asyncio.timeout(call.timeout_ms / 1000):
            return await _follow(call)
    except (TimeoutError, httpx.TimeoutException):
        raise StepError(
            f"{where} timed out after {call.timeout_ms} ms",
            category="timeout",
            code="http_timeout",
            retryable=True,
        ) from None
    except httpx.HTTPError as exc:
        raise _transport_error(where, exc) from None


def _transport_error(where: str, exc: httpx.HTTPError) -> StepError:
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL | httpx.LocalProtocolError):
        return StepError(f"{where} is invalid: {detail}", category="validation", code="invalid_request")
    return StepError(f"{where} failed: {detail}", category="network", code="connection_error", retryable=True)


@dataclass(slots=True)
class _Hop:
    method: str
    url: httpx.URL
    headers: dict[str, str]
    content: bytes | None


async def _follow(call: HttpCall) -> HttpResult:
    url = httpx.URL(call.url)
    if call.params:
        url = url.copy_merge_params(dict(call.params))
    hop = _Hop(call.method, url, {k.lower(): v for k, v in call.headers.items()}, call.content)
    client = http_client()
    for _ in range(MAX_REDIRECTS + 1):
        await check_url(str(hop.url), allow_private=call.allow_private)
        request = client.build_request(hop.method, hop.url, headers=hop.headers, content=hop.content)
        response = await client.send(request, stream=True)
        try:
            location = response.headers.get("location")
            if response.status_code not in _REDIRECT_STATUSES or not location:
                return await _result(response, call.max_body_bytes)
        finally:
            await response.aclose()
        hop = _next_hop(hop, response.status_code, location)
    raise StepError(
        f"{call.method} {display_url(call.url)}: more than {MAX_REDIRECTS} redirects",
        category="validation",
        code="too_many_redirects",
    )


def _next_hop(hop: _Hop, status: int, location: str) -> _Hop:
    """Like a browser: 303 (and 301/302 after a POST) become a body-less GET; credentials stay home."""
    target = hop.url.join(location)
    headers = dict(hop.headers)
    method, content = hop.method, hop.content
    if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
        method, content = "GET", None
        headers.pop("content-type", None)
    if (target.scheme, target.host, target.port) != (hop.url.scheme, hop.url.host, hop.url.port):
        for name in _CREDENTIAL_HEADERS:
            headers.pop(name, None)
    return _Hop(method, target, headers, content)


async def _result(response: httpx.Response, limit: int) -> HttpResult:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise StepError(
                f"{response.request.method} {display_url(response.request.url)}: response body is over "
                f"the {limit}-byte limit",
                category="data",
                code="output_too_large",
            )
        chunks.append(chunk)
    return HttpResult(
        status=response.status_code,
        headers={k.lower(): v for k, v in response.headers.items()},
        body=b"".join(chunks),
        url=str(response.request.url),
        encoding=response.charset_encoding,
    )


def raise_for_status(method: str, url: str, status: int, accept: Container[int] | None = None) -> None:
    """Raise the StepError API.md maps ``status`` to, unless ``accept`` (default 200-399) holds it."""
    if status in (DEFAULT_ACCEPT if accept is None else accept):
        return
    message = f"{method} {display_url(url)} returned HTTP {status}"
    if status in (401, 403):
        raise StepError(message, category="permission", code=f"http_{status}")
    if status in (408, 429):
        raise StepError(message, category="network", code=f"http_{status}", retryable=True)
    if status >= 500:
        raise StepError(message, category="network", code="http_5xx", retryable=True)
    raise StepError(message, category="validation", code=f"http_{status}")
