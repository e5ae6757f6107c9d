"""The ASGI application: routers, error mapping, body limit, lifespan of the services."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from tolstoy import __version__
from tolstoy.api import errors
from tolstoy.api.limits import BodyLimit
from tolstoy.api.routes import approvals, executions, flows, gateway, health, identity, metrics
from tolstoy.api.routes import web as web_routes
from tolstoy.services import Services

ServicesFactory = Callable[[], Awaitable[Services]]
WEB_DIR = Path(__file__).resolve().parent.parent / "web"


def create_app(open_services: ServicesFactory, *, max_body_bytes: int = 1_048_576) -> FastAPI:
    """Build the app; ``open_services`` runs on startup, and the services close on shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await open_services()
        app.state.services = services
        try:
            yield
        finally:
            await services.close()

    app = FastAPI(
        title="Tolstoy",
        version=__version__,
        lifespan=lifespan,
        description="A durable workflow engine whose executions you can watch live.",
    )
    errors.install(app)
    for module in (health, metrics, identity, flows, executions, approvals, gateway):
        app.include_router(module.router)
    app.include_router(web_routes.router)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    return app
