"""Apply Alembic migrations (``tolstoy db upgrade``; ``serve`` does it on start)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import text

from tolstoy.store.db import null_pool_engine

MIGRATIONS = Path(__file__).parent / "migrations"
_PG_LOCK_KEY = 7_466_510_001  # serialises concurrent upgrades of several processes


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def _upgrade(sync_conn: Any, revision: str) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = sync_conn
    command.upgrade(cfg, revision)


async def upgrade(url: str, revision: str = "head") -> None:
    """Bring the store at ``url`` up to ``revision``; safe to run from several processes at once."""
    engine = null_pool_engine(url)
    try:
        async with engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                # WAL is a property of the file: set it here, while this is the only connection.
                # Switching later takes an exclusive lock that several connections opening at once
                # (the writer and the readers at startup) can deadlock on ("database is locked").
                await conn.exec_driver_sql("PRAGMA journal_mode=WAL")
            if conn.dialect.name == "postgresql":
                await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
                await conn.commit()
            try:
                await conn.run_sync(_upgrade, revision)
                await conn.commit()
            finally:
                if conn.dialect.name == "postgresql":
                    await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
                    await conn.commit()
    finally:
        await engine.dispose()
