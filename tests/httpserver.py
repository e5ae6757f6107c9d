"""A tiny local HTTP/1.1 server for tests: routes by path, records every request."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


HANG = Reply(status=0)
"""A route answering HANG never responds; the server notes when the client goes away."""


class LocalServer:
    """A tiny HTTP/1.1 server: routes by path, records every request, closes after each reply."""

    def __init__(self) -> None:
        self.routes: dict[str, Callable[[Seen], Reply | Awaitable[Reply]]] = {}
        self.seen: list[Seen] = []
        self.client_gone = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            seen = await self._read(reader)
            self.seen.append(seen)
            route = self.routes.get(seen.path)
            reply = route(seen) if route else Reply(404)
            if inspect.isawaitable(reply):
                reply = await reply
            if reply is HANG:
                await reader.read()
                self.client_gone.set()
                return
            head = f"HTTP/1.1 {reply.status} X\r\ncontent-length: {len(reply.body)}\r\nconnection: close\r\n"
            head += "".join(f"{k}: {v}\r\n" for k, v in reply.headers.items())
            writer.write(head.encode() + b"\r\n" + reply.body)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _read(self, reader: asyncio.StreamReader) -> Seen:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        request_line, *lines = head.split("\r\n")
        method, target, _ = request_line.split(" ")
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)
        }
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        parts = urlsplit(target)
        return Seen(method, parts.path, parse_qs(parts.query), headers, body)
