"""Liveness: server pings, silent connections closed, expired tokens ended with 4401."""

from __future__ import annotations

import asyncio
import base64
import os

import pytest

from tests.conftest import make_settings
from tests.integration.gateway_harness import client, new_org, open_services, serve
from tolstoy.gateway import tokens


@pytest.fixture
async def brisk(backend, tmp_path):
    """Services whose gateway pings every 0.2 s and closes connections silent for 1 s."""
    settings = make_settings(backend, tmp_path / "brisk", ws_ping_interval_s=0.2, ws_idle_timeout_s=1.0)
    async with open_services(settings) as services:
        yield services


async def raw_connect(address: str, key: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket handshake by hand: this client never answers pings."""
    host, port = address.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    nonce = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /ws HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {nonce}\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {key}\r\n\r\n".encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def test_the_server_pings_and_closes_a_connection_that_stays_silent(brisk) -> None:
    org = await new_org(brisk)
    async with serve(brisk) as address:
        reader, writer = await raw_connect(address, org["key"])
        try:
            first = await asyncio.wait_for(reader.readexactly(2), 2)
            assert first == b"\x89\x00", "expected an empty ping frame"
            loop = asyncio.get_running_loop()
            started = loop.time()
            seen = b""
            while b"\x88" not in seen:  # until the close frame
                chunk = await asyncio.wait_for(reader.read(64), 3)
                assert chunk, "closed without a close frame"
                seen += chunk
            assert 0.6 < loop.time() - started < 3.0
            close = seen[seen.index(b"\x88") :]
            assert int.from_bytes(close[2:4], "big") == 1001
        finally:
            writer.close()
        assert brisk.gateway.connection_count() == 0


async def test_a_client_answering_pings_stays_until_its_token_expires_then_gets_4401(brisk) -> None:
    org = await new_org(brisk)
    token, _ = tokens.mint(brisk.settings.secret_key, org["id"], ["executions"], 3)
    async with serve(brisk) as address, client(address, token) as c:
        assert (await c.subscribe("executions"))["type"] == "subscribed"
        await asyncio.sleep(1.3)  # past the 1 s idle timeout: the client's pongs keep it alive
        assert (await c.reply(await c.send("ping")))["type"] == "pong"
        await asyncio.wait_for(c.ws.wait_closed(), 5)
        assert c.ws.close_code == 4401 and c.ws.close_reason == "token expired"
