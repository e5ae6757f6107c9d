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
