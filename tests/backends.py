"""Real PostgreSQL and Redis for tests: per-test databases cloned from a migrated template.

Under ``CI=true`` an unreachable service fails the run; elsewhere the tests that need it skip.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from dataclasses import dataclass

import pytest

PG_HOST = os.environ.get("TOLSTOY_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("TOLSTOY_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("TOLSTOY_TEST_PG_USER", "postgres")
REDIS_URL = os.environ.get("TOLSTOY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pg_url(database: str, driver: str = "postgresql+asyncpg") -> str:
    return f"{driver}://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}"


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require(service: str, host: str, port: int) -> None:
    if _reachable(host, port):
        return
    message = f"{service} is not reachable at {host}:{port}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: a missing service fails the run)")
    pytest.skip(message)


def require_postgres() -> None:
    require("PostgreSQL", PG_HOST, PG_PORT)


def require_redis() -> None:
    host_port = REDIS_URL.split("://", 1)[1].split("/", 1)[0]
    host, _, port = host_port.partition(":")
    require("Redis", host, int(port or 6379))


async def _admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


class PgTemplate:
    """A migrated template database, created once per test session."""

    def __init__(self) -> None:
        self.name = f"tolstoy_tpl_{os.getpid()}_{secrets.token_hex(3)}"
        self.ready = False

    async def ensure(self) -> None:
        if self.ready:
            return
        from tolstoy.store import migrate

        await _admin(f'CREATE DATABASE "{self.name}"')
        await migrate.upgrade(pg_url(self.name))
        self.ready = True

    async def clone(self) -> str:
        await self.ensure()
        name = f"tolstoy_t_{secrets.token_hex(5)}"
        await _admin(f'CREATE DATABASE "{name}" TEMPLATE "{self.name}"')
        return name

    async def drop(self, name: str) -> None:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def drop_template_sync(self) -> None:
        if self.ready:
            asyncio.run(self.drop(self.name))


@dataclass(frozen=True)
class Backend:
    """One store + bus pair the integration tests run on."""

    name: str
    database_url: str
    bus_url: str

    @property
    def is_postgres(self) -> bool:
        return self.database_url.startswith("postgresql")
