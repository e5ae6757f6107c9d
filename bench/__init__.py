"""Tolstoy's benchmarks (``python -m bench``; see bench/__main__.py and bench/README.md).

Shared helpers: statistics, the stores a benchmark runs on (a throw-away SQLite
file or a throw-away PostgreSQL database), and a description of the machine.
"""

from __future__ import annotations

import os
import platform
import secrets
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PG_HOST = os.environ.get("TOLSTOY_BENCH_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("TOLSTOY_BENCH_PG_PORT", "5432"))
PG_USER = os.environ.get("TOLSTOY_BENCH_PG_USER", "postgres")
BACKENDS = ("sqlite", "postgres")
RESULTS = Path(__file__).parent / "results"


# -- statistics -------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no samples."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.4999)))
    return ordered[rank - 1]


def ms(ns: float | None) -> float | None:
    """Nanoseconds to milliseconds, rounded for a table."""
    return None if ns is None else round(ns / 1e6, 2)


# -- the machine ------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "host": socket.gethostname(),
        "cpus": os.cpu_count(),
        "cpu": model or platform.processor(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }


# -- stores -----------------------------------------------------------------------------


def pg_reachable() -> bool:
    try:
        with socket.create_connection((PG_HOST, PG_PORT), timeout=1):
            return True
    except OSError:
        return False


def pg_url(database: str, driver: str = "postgresql+asyncpg") -> str:
    return f"{driver}://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}"


async def _pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@dataclass(frozen=True, slots=True)
class Store:
    """A throw-away store for one benchmark run."""

    backend: str
    url: str
    home: Path


@asynccontextmanager
async def temp_store(backend: str, workdir: Path, *, migrate: bool = True) -> AsyncIterator[Store]:
    """A fresh, migrated store: a SQLite file under ``workdir`` or a ``tolstoy_bench_*`` database
    (dropped afterwards)."""
    from tolstoy.store import migrate as migrations

    home = workdir / f"home-{backend}"
    home.mkdir(parents=True, exist_ok=True)
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{workdir / f'bench-{secrets.token_hex(3)}.db'}"
        if migrate:
            await migrations.upgrade(url)
        yield Store(backend, url, home)
        return
    if backend != "postgres":
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    name = f"tolstoy_bench_{secrets.token_hex(5)}"
    await _pg_admin(f'CREATE DATABASE "{name}"')
    try:
        if migrate:
            await migrations.upgrade(pg_url(name))
        yield Store(backend, pg_url(name), home)
    finally:
        await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def bench_env(store: Store, **extra: str) -> dict[str, str]:
    """``TOLSTOY_*`` environment for a process of the benchmark (defaults unless overridden)."""
    env = {
        "TOLSTOY_HOME": str(store.home),
        "TOLSTOY_DATABASE_URL": store.url,
        "TOLSTOY_BUS_URL": "memory://",
        "TOLSTOY_SECRET_KEY": "bench-secret-key-not-for-production",
        "TOLSTOY_ALLOW_PRIVATE_NETWORKS": "true",
        "TOLSTOY_LOG_LEVEL": "warning",
    }
    env.update(extra)
    return env


def selected_backends(choice: str) -> list[str]:
    """``sqlite``, ``postgres`` or ``both``; PostgreSQL is left out (with a note) when unreachable."""
    wanted = list(BACKENDS) if choice == "both" else [choice]
    if "postgres" in wanted and not pg_reachable():
        print(f"note: PostgreSQL is not reachable at {PG_HOST}:{PG_PORT}; skipping it")
        wanted.remove("postgres")
    return wanted
