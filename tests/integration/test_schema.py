"""The migrated schema equals the models (one schema source; nothing drifts)."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from tests.backends import Backend
from tolstoy.store import migrate
from tolstoy.store.db import null_pool_engine
from tolstoy.store.tables import metadata


def _diff(sync_conn: Any) -> list[Any]:
    context = MigrationContext.configure(sync_conn, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


async def test_migrations_produce_exactly_the_models(backend: Backend) -> None:
    await migrate.upgrade(backend.database_url)  # idempotent on an already-migrated store
    engine = null_pool_engine(backend.database_url)
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(_diff)
    finally:
        await engine.dispose()
    assert diff == [], f"migrations and tables.py disagree: {diff}"


async def test_a_new_sqlite_store_is_in_wal_mode_and_opens_many_connections_at_once(tmp_path: Any) -> None:
    import asyncio
    import sqlite3

    from sqlalchemy import text

    from tolstoy.store.db import Database

    url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    await migrate.upgrade(url)
    with sqlite3.connect(tmp_path / "fresh.db") as plain:
        assert plain.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    db = Database(url)  # what `serve` does next: a writer and a pool of readers, all opening at once

    async def read() -> int:
        async with db.read() as conn:
            return int((await conn.execute(text("SELECT 1"))).scalar_one())

    async def write() -> None:
        async with db.write() as conn:
            await conn.execute(text("SELECT 1"))

    try:
        results = await asyncio.gather(*(read() for _ in range(4)), write(), write())
        assert results[:4] == [1, 1, 1, 1]
    finally:
        await db.dispose()
