"""The SSRF guard, status mapping and the shared client of ``tolstoy.net``."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from tolstoy import net
from tolstoy.errors import StepError

PRIVATE_URLS = [
    "http://127.0.0.1/",
    "http://127.1:8080/",
    "http://10.1.2.3/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://0.0.0.0/",
    "http://224.0.0.1/",
    "http://240.0.0.1/",
    "http://[::1]/",
    "http://[::]/",
    "http://[fe80::1]/",
    "http://[fd00::1]/",
    "http://[ff02::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:169.254.169.254]/",
    "http://[2002:7f00:1::]/",
    "http://[64:ff9b::a00:1]/",
    "https://localhost:8443/",
]


@pytest.mark.parametrize("url", PRIVATE_URLS)
async def test_private_and_special_addresses_are_blocked(url: str) -> None:
    with pytest.raises(StepError) as info:
        await net.check_url(url, allow_private=False)
    assert (info.value.category, info.value.error_code, info.value.retryable) == (
        "permission",
        "ssrf_blocked",
        False,
    )


@pytest.mark.parametrize("url", PRIVATE_URLS)
async def test_private_addresses_are_allowed_when_configured(url: str) -> None:
    await net.check_url(url, allow_private=True)


@pytest.mark.parametrize(
    "url",
    [
        "http://93.184.216.34/",
        "https://8.8.8.8:443/x",
        "http://[2606:4700:4700::1111]/",
        "http://[::ffff:8.8.8.8]/",
    ],
)
async def test_public_addresses_pass(url: str) -> None:
    await net.check_url(url, allow_private=False)


@pytest.mark.parametrize("url", ["ftp://8.8.8.8/", "file:///etc/passwd", "gopher://8.8.8.8/", "//8.8.8.8/"])
async def test_non_http_schemes_are_blocked_even_when_private_is_allowed(url: str) -> None:
    with pytest.raises(StepError) as info:
        await net.check_url(url, allow_private=True)
    assert info.value.error_code == "ssrf_blocked"


def _fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> None:
    loop = asyncio.get_running_loop()

    async def getaddrinfo(host: str, port: int, **kwargs: Any) -> list[Any]:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in answers[host]]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)


async def test_a_host_with_any_private_address_is_blocked(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_dns(
        monkeypatch, {"mixed.example": ["93.184.216.34", "10.0.0.5"], "public.example": ["93.184.216.34"]}
    )
    await net.check_url("https://public.example/", allow_private=False)
    with pytest.raises(StepError, match=r"10\.0\.0\.5") as info:
        await net.check_url("https://mixed.example/", allow_private=False)
    assert info.value.error_code == "ssrf_blocked"


async def test_an_unresolvable_host_is_a_retryable_network_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_dns(monkeypatch, {})
    with pytest.raises(StepError) as info:
        await net.check_url("https://nowhere.example/", allow_private=False)
    assert (info.value.category, info.value.error_code, info.value.retryable) == (
        "network",
        "dns_error",
        True,
    )


def test_display_url_drops_user_info() -> None:
    assert net.display_url("https://user:pa55@example.com/p?q=1") == "https://example.com/p?q=1"
    assert net.display_url("https://example.com/p") == "https://example.com/p"


@pytest.mark.parametrize(
    ("status", "category", "code", "retryable"),
    [
        (500, "network", "http_5xx", True),
        (503, "network", "http_5xx", True),
        (408, "network", "http_408", True),
        (429, "network", "http_429", True),
        (401, "permission", "http_401", False),
        (403, "permission", "http_403", False),
        (404, "validation", "http_404", False),
        (422, "validation", "http_422", False),
    ],
)
def test_status_mapping(status: int, category: str, code: str, retryable: bool) -> None:
    with pytest.raises(StepError) as info:
        net.raise_for_status("POST", "https://u:secret@example.com/x", status)
    error = info.value
    assert (error.category, error.error_code, error.retryable) == (category, code, retryable)
    assert error.message == f"POST https://example.com/x returned HTTP {status}"


def test_accepted_statuses() -> None:
    for status in (200, 204, 301, 399):
        net.raise_for_status("GET", "https://example.com/", status)
    net.raise_for_status("GET", "https://example.com/", 404, accept=[404])
    with pytest.raises(StepError) as info:
        net.raise_for_status("GET", "https://example.com/", 201, accept=[200])
    assert info.value.error_code == "http_201"


async def test_the_client_is_shared_until_closed() -> None:
    first = net.http_client()
    assert net.http_client() is first
    assert first.follow_redirects is False
    await net.aclose_http_client()
    assert first.is_closed
    second = net.http_client()
    assert second is not first
    await net.aclose_http_client()
