"""The ``tolstoy`` command: one typer app assembled from the command modules."""

from __future__ import annotations

import typer

from tolstoy.cli import server

app = typer.Typer(
    name="tolstoy",
    help="Tolstoy: a durable workflow engine whose executions you can watch live.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
server.register(app)


def _register_optional() -> None:
    """Command groups that talk to a running server over the public API."""
    import importlib

    for name in ("tolstoy.cli.remote",):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(app)


_register_optional()


def main() -> None:
    app()
