"""Process commands: ``serve``, ``worker`` and ``db upgrade``."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from typing import Annotated

import typer

from tolstoy import logs
from tolstoy.config import Settings


def _settings() -> Settings:
    settings = Settings.from_env()
    logs.configure(settings.log_level, settings.log_format)
    return settings


def _fast_loop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        if sys.version_info < (3, 12):
            uvloop.install()


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="In-process workers (0: API and gateway only).")] = 1,
    grace: Annotated[float, typer.Option(help="Seconds running steps get to finish on shutdown.")] = 10.0,
) -> None:
    """Run the API, the live gateway, the dashboard and WORKERS in-process workers."""
    import uvicorn

    from tolstoy.api.app import create_app
    from tolstoy.api.sessions import login_url
    from tolstoy.bootstrap import ensure_bootstrap
    from tolstoy.services import Services

    settings = _settings()
    url = f"http://{host}:{port}"

    async def open_services() -> Services:
        services = await Services.open(settings, workers=workers)
        services.grace_s = grace
        creds = await ensure_bootstrap(services.db, settings, url)
        _announce(url, settings, creds, await login_url(services.db, settings, url))
        return services

    _fast_loop()
    app = create_app(open_services, max_body_bytes=settings.max_definition_bytes)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=int(grace) + 5,
        ws="tolstoy.gateway.fastws:GatewayWebSocketProtocol",  # the gateway's write path (fastws.py)
    )
    uvicorn.Server(config).run()


def _announce(url: str, settings: Settings, creds: dict[str, str] | None, login: str | None = None) -> None:
    from tolstoy.bootstrap import credentials_path

    typer.echo(f"Tolstoy is running at {url}", err=True)
    typer.echo(f"Dashboard: {login or url + '/'}", err=True)
    if creds:
        typer.echo(f"API key (shown once): {creds['apiKey']}", err=True)
        typer.echo(f"Organization: {creds['orgId']}", err=True)
    typer.echo(f"Credentials for the CLI: {credentials_path(settings)}", err=True)


def worker(
    concurrency: Annotated[int, typer.Option(help="Executions run at once.")] = 50,
    grace: Annotated[float, typer.Option(help="Seconds running steps get to finish on SIGTERM.")] = 10.0,
) -> None:
    """Run a worker alone (scale-out): claims executions from the shared store."""
    from tolstoy.services import Services

    settings = _settings()

    async def run() -> None:
        services = await Services.open(settings, workers=0)
        services.add_worker(concurrency)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        typer.echo(f"worker {services.workers[0].id} running (concurrency {concurrency})", err=True)
        await stop.wait()
        typer.echo("shutting down: finishing running steps, releasing the rest", err=True)
        await services.close(grace)

    _fast_loop()
    asyncio.run(run())


def db_upgrade() -> None:
    """Apply the store's migrations (serve does it on start)."""
    from tolstoy.store import migrate

    settings = _settings()
    asyncio.run(migrate.upgrade(settings.database_url))
    typer.echo("database is up to date", err=True)


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(worker)
    db = typer.Typer(help="The store.", no_args_is_help=True)
    db.command("upgrade")(db_upgrade)
    app.add_typer(db, name="db")
