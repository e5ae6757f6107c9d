"""Health and status (no auth)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from sqlalchemy import func, select, text

from tolstoy import __version__
from tolstoy.api.deps import ServicesDep
from tolstoy.store.tables import events, executions, flows
from tolstoy.timeutil import iso, now_ms

router = APIRouter(tags=["health"])


@router.get("/health")
async def health(services: ServicesDep) -> dict[str, Any]:
    return {
        "status": "ok",
        "timestamp": iso(now_ms()),
        "uptime": round(time.monotonic() - services.started, 3),
        "version": __version__,
    }


async def _database_ok(services: ServicesDep) -> bool:
    try:
        async with services.db.read() as conn:
            await conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


@router.get("/status")
async def status(services: ServicesDep) -> dict[str, Any]:
    db_ok = await _database_ok(services)
    return {
        "status": "ok" if db_ok else "degraded",
        "database": "ok" if db_ok else "down",
        "timestamp": iso(now_ms()),
        "version": __version__,
    }


@router.get("/status/detailed")
async def status_detailed(services: ServicesDep) -> dict[str, Any]:
    db_ok = await _database_ok(services)
    counts: dict[str, int] = {}
    if db_ok:
        async with services.db.read() as conn:
            for name, table in (("flows", flows), ("executions", executions), ("events", events)):
                counts[name] = int(
                    (await conn.execute(select(func.count()).select_from(table))).scalar() or 0
                )
    gateway = getattr(services, "gateway", None)
    return {
        "status": "ok" if db_ok else "degraded",
        "database": {
            "status": "ok" if db_ok else "down",
            "backend": "sqlite" if services.db.is_sqlite else "postgresql",
        },
        "bus": {"status": "ok", "backend": services.settings.bus_url.split("://")[0]},
        "workers": [
            {"id": w.id, "concurrency": w.concurrency, "running": len(w.runners)} for w in services.workers
        ],
        "gateway": {"connections": gateway.connection_count() if gateway else 0},
        "records": counts,
        "uptime": round(time.monotonic() - services.started, 3),
        "version": __version__,
    }
