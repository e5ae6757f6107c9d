"""Connections to the store: one ``Database`` per process, SQLite or PostgreSQL by URL.

On SQLite, writes go through a single connection that opens ``BEGIN IMMEDIATE``
transactions (so a transaction that reads then writes never deadlocks on lock
upgrade) and reads use a pool of WAL readers; other processes wait on the busy
timeout. On PostgreSQL both sides share one asyncpg pool; reads run in autocommit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from tolstoy import jsonutil

SQLITE_BUSY_TIMEOUT_MS = 10_000


def _json_loads(value: Any) -> Any:
    # SQLite gives a JSON column NUMERIC affinity: a top-level number comes back as a number.
    if isinstance(value, int | float):
        return value
    return jsonutil.loads(value)


def _sqlite_engine(url: str, *, writer: bool) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(
        url,
        json_serializer=jsonutil.dumps,
        json_deserializer=_json_loads,
        pool_size=1 if writer else 4,
        max_overflow=0,
        pool_timeout=60,
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        # The busy timeout first: switching to WAL takes a lock, and another connection (the
        # migration at startup, another process) may hold one for a moment.
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")

    return engine


def _postgres_engine(url: str) -> AsyncEngine:
    return create_async_engine(
        url,
        json_serializer=jsonutil.dumps,
        json_deserializer=_json_loads,
        pool_size=25,
        max_overflow=10,
        pool_pre_ping=False,
    )


def normalize_url(url: str) -> str:
    """Accept ``postgres://`` and ``postgresql://`` and pick the async drivers."""
    for plain in ("postgres://", "postgresql://"):
        if url.startswith(plain):
            return "postgresql+asyncpg://" + url[len(plain) :]
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
    return url


class Database:
    """The store's connections: ``read()`` for queries, ``write()`` for one transaction."""

    def __init__(self, url: str) -> None:
        self.url = normalize_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        if self.is_sqlite:
            self._writer = _sqlite_engine(self.url, writer=True)
            self._reader = _sqlite_engine(self.url, writer=False)
        elif self.url.startswith("postgresql"):
            self._writer = _postgres_engine(self.url)
            # Reads share the pool in autocommit: no BEGIN/ROLLBACK round trips around a query.
            # (At READ COMMITTED each statement sees its own snapshot anyway.)
            self._reader = self._writer.execution_options(isolation_level="AUTOCOMMIT")
        else:
            from tolstoy.errors import BadRequest

            raise BadRequest(
                f"unsupported database URL {self.url.split(':', 1)[0]!r}: "
                "expected sqlite+aiosqlite:///PATH or postgresql+asyncpg://…"
            )

    @property
    def engine(self) -> AsyncEngine:
        return self._writer

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        async with self._writer.begin() as conn:
            yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self._reader.connect() as conn:
            yield conn
            if conn.in_transaction():
                await conn.rollback()

    async def dispose(self) -> None:
        await self._writer.dispose()
        if self.is_sqlite:  # on PostgreSQL the reader is a view of the writer's pool
            await self._reader.dispose()


def null_pool_engine(url: str) -> AsyncEngine:
    """A one-shot engine (migrations, test setup) that keeps no connection open."""
    return create_async_engine(normalize_url(url), poolclass=NullPool)
