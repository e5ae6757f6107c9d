"""Fixtures shared by every test layer: backends, settings, services, an organization, an API client."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.backends import REDIS_URL, Backend, PgTemplate, require_postgres, require_redis
from tolstoy.config import Settings

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(scope="session")
def pg_template() -> Iterator[PgTemplate]:
    template = PgTemplate()
    yield template
    template.drop_template_sync()


def _redis_bus_url() -> str:
    """A Redis URL whose channel prefix is private to this test (pub/sub ignores the db index)."""
    sep = "&" if "?" in REDIS_URL else "?"
    return f"{REDIS_URL}{sep}prefix=t{secrets.token_hex(4)}"


@pytest.fixture(params=BACKENDS)
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path, pg_template: PgTemplate
) -> AsyncIterator[Backend]:
    """sqlite + memory bus, or postgres + redis bus: every integration test runs on both."""
    if request.param == "sqlite":
        yield Backend("sqlite", f"sqlite+aiosqlite:///{tmp_path / 'tolstoy.db'}", "memory://")
        return
    require_postgres()
    require_redis()
    name = await pg_template.clone()
    from tests.backends import pg_url

    try:
        yield Backend("postgres", pg_url(name), _redis_bus_url() if _redis_bus_available() else "memory://")
    finally:
        await pg_template.drop(name)


def _redis_bus_available() -> bool:
    try:
        import tolstoy.events.bus.redis  # noqa: F401
    except ModuleNotFoundError:
        return False
    return True


def make_settings(backend: Backend, home: Path, **overrides: Any) -> Settings:
    env = {
        "TOLSTOY_HOME": str(home),
        "TOLSTOY_DATABASE_URL": backend.database_url,
        "TOLSTOY_BUS_URL": backend.bus_url,
        "TOLSTOY_SECRET_KEY": "test-secret-key-not-for-production",
        "TOLSTOY_LEASE_TTL_MS": "1500",
        "TOLSTOY_LEASE_RENEW_MS": "250",
        "TOLSTOY_POLL_INTERVAL_MS": "100",
        "TOLSTOY_ALLOW_PRIVATE_NETWORKS": "true",
    }
    return Settings.from_env(env).with_(**overrides)


@pytest.fixture
def settings(backend: Backend, tmp_path: Path) -> Settings:
    return make_settings(backend, tmp_path / "home")


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[Any]:
    from tolstoy.services import Services

    svc = await Services.open(settings, workers=1)
    try:
        yield svc
    finally:
        await svc.close(grace_s=2.0)


@pytest.fixture
async def org(services: Any) -> dict[str, str]:
    """A fresh organization with an admin key: ``{"id", "key"}``."""
    from tolstoy.store import identity

    row, key = await identity.create_organization(services.db, f"org-{secrets.token_hex(3)}")
    return {"id": row["id"], "key": key}


@pytest.fixture
async def api(services: Any, org: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the app (in-process ASGI) authenticated as ``org``'s admin."""
    from tolstoy.api.app import create_app

    async def existing() -> Any:
        return services

    app = create_app(existing, max_body_bytes=services.settings.max_definition_bytes)
    app.state.services = services
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {org['key']}"}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://tolstoy.test", headers=headers
    ) as client:
        yield client


async def wait_until(
    predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0, what: str = "condition"
) -> None:
    """Re-check ``predicate`` until it holds; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        if loop.time() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)
