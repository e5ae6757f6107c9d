"""What the remote commands print (tables for people, JSON for machines, one-line errors); the async edge."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine, Iterable, Sequence
from datetime import datetime
from typing import Any, NoReturn

import orjson
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tolstoy.client import errors
from tolstoy.client.rest import credentials_file

STATUS_STYLES = {
    "completed": "green",
    "granted": "green",
    "failed": "red",
    "denied": "red",
    "expired": "red",
    "cancelled": "magenta",
    "running": "yellow",
    "retrying": "yellow",
    "waiting": "cyan",
    "paused": "cyan",
    "pending": "dim",
    "queued": "dim",
    "skipped": "dim",
}
WHOLE_COLUMNS = frozenset({"id", "execution"})
"""Columns whose values people copy: never cut short."""
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def stdout() -> Console:
    return Console(highlight=False, soft_wrap=False)


def stderr() -> Console:
    return Console(stderr=True, highlight=False)


def print_json(value: Any) -> None:
    """One compact JSON document on one line (``--json``)."""
    sys.stdout.write(orjson.dumps(value).decode() + "\n")
    sys.stdout.flush()


def table(
    title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]], wrap: str | None = None
) -> Table:
    """Cells never wrap except in the column named ``wrap``; long ones end in …, but ids stay whole."""
    cells = [[cell if isinstance(cell, Text) else Text(_cell(cell)) for cell in row] for row in rows]
    out = Table(title=title, title_justify="left", header_style="bold")
    for i, name in enumerate(columns):
        whole = max((row[i].cell_len for row in cells), default=0) if name in WHOLE_COLUMNS else None
        out.add_column(
            name, no_wrap=name != wrap, overflow="fold" if name == wrap else "ellipsis", min_width=whole
        )
    for row in cells:
        out.add_row(*row)
    return out


def details(pairs: Iterable[tuple[str, Any]]) -> Table:
    """A two-column key/value table for ``show`` commands."""
    out = Table.grid(padding=(0, 2))
    out.add_column(style="bold")
    out.add_column(overflow="fold")
    for key, value in pairs:
        out.add_row(key, value if isinstance(value, Text) else Text(_cell(value)))
    return out


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def status(value: str | None) -> Text:
    value = value or "-"
    return Text(value, style=STATUS_STYLES.get(value, ""))


def duration(ms: int | float | None) -> str:
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{int(ms)} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def when(iso: str | None) -> str:
    """An API timestamp as ``YYYY-MM-DD HH:MM:SS`` (UTC)."""
    if not iso:
        return "-"
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return iso


def truncate(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def describe_error(exc: errors.TolstoyClientError) -> str:
    """One line that says what went wrong and, where it helps, what to do."""
    if isinstance(exc, errors.ConnectionFailed):
        return f"cannot reach Tolstoy at {exc.url}: is `tolstoy serve` running?"
    if isinstance(exc, errors.AuthError):
        hint = f"set TOLSTOY_API_KEY, or check {credentials_file()} (written by `tolstoy serve`)"
        return f"{exc.message}: {hint}"
    if isinstance(exc, errors.TolstoyAPIError) and exc.details:
        fields = "; ".join(f"{d.get('field', '?')}: {d.get('message', '')}" for d in exc.details[:10])
        return f"{exc.message}: {fields}"
    if isinstance(exc, errors.TolstoyAPIError):
        return exc.message
    return str(exc)


def run(work: Coroutine[Any, Any, int | None]) -> None:
    """The CLI's one async edge: run ``work``, turn client errors into a line on stderr and an exit code."""
    try:
        code = asyncio.run(work)
    except errors.TolstoyClientError as exc:
        fail(describe_error(exc))
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if code:
        raise typer.Exit(code)
