"""A minimal RESP2 connection for the bus's pub/sub subscriber.

redis-py's pub/sub object reconnects and resubscribes on its own, which would
hide exactly the moment the bus must report (events published meanwhile are
lost and subscribers have to resync from the store). This connection does no
retrying and no health checks of its own: it sends commands and reads replies,
and any failure surfaces to the caller. Publishing still goes through redis-py.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import Union
from urllib.parse import unquote, urlsplit

Reply = Union[bytes, int, None, list["Reply"], "RespError"]


class RespError(Exception):
    """An error reply (``-ERR …``) from the server."""


class RespProtocolError(ConnectionError):
    """The server sent something that is not RESP2: the connection is unusable."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to connect, parsed from a ``redis://`` or ``rediss://`` URL."""

    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=parts.scheme == "rediss",
        )


def encode_command(*args: str | bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class RespConnection:
    """One TCP (or TLS) connection: ``send`` commands, ``read`` replies in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer

    @classmethod
    async def open(cls, endpoint: Endpoint, within_s: float) -> RespConnection:
        """Connect and authenticate within ``within_s`` seconds."""
        context = ssl.create_default_context() if endpoint.tls else None
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(endpoint.host, endpoint.port, ssl=context, limit=1 << 20), within_s
        )
        conn = cls(reader, writer)
        if endpoint.password is not None:
            auth = (endpoint.username, endpoint.password) if endpoint.username else (endpoint.password,)
            conn.send("AUTH", *auth)
            reply = await asyncio.wait_for(conn.read(), within_s)
            if isinstance(reply, RespError):
                conn.close()
                raise ConnectionError("Redis refused the bus's credentials")
        return conn

    def send(self, *args: str | bytes) -> None:
        self._writer.write(encode_command(*args))

    async def read(self) -> Reply:
        """The next reply; raises ConnectionError when the connection ends."""
        line = await self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = await self._exactly(size + 2)
            return data[:-2]
        if kind == b"*":
            count = int(rest)
            if count < 0:
                return None
            return [await self.read() for _ in range(count)]
        if kind == b":":
            return int(rest)
        if kind == b"+":
            return bytes(rest)
        if kind == b"-":
            return RespError(rest.decode(errors="replace"))
        raise RespProtocolError(f"unexpected reply type {kind!r} from Redis")

    async def _line(self) -> bytes:
        try:
            line = await self._reader.readuntil(b"\r\n")
        except asyncio.IncompleteReadError as exc:
            raise ConnectionError("Redis closed the connection") from exc
        except asyncio.LimitOverrunError as exc:
            raise RespProtocolError("reply line too long") from exc
        return line[:-2]

    async def _exactly(self, n: int) -> bytes:
        try:
            return await self._reader.readexactly(n)
        except asyncio.IncompleteReadError as exc:
            raise ConnectionError("Redis closed the connection") from exc

    def close(self) -> None:
        if not self._writer.is_closing():
            self._writer.close()
