"""Run Tolstoy's benchmarks: ``python -m bench [NAME ...] [--quick] [--backend B] [-- ARGS]``.

The convention every benchmark follows
--------------------------------------
A benchmark is a module ``bench/<name>.py`` (a name not starting with ``_``) that exposes::

    TITLE: str                      # optional; the table's title (default: the docstring's first line)

    async def main(argv: list[str]) -> list[dict[str, Any]]:
        ...

``main`` parses ``argv`` with argparse and must accept the common flags
``--quick`` (a short run, seconds rather than minutes) and
``--backend {sqlite,postgres,both}`` (default ``both``); anything after ``--``
on this command line is appended to ``argv`` for the module(s) selected.
It returns *rows*: flat dicts of str/int/float/bool/None, every row with the
same keys in the order the columns should appear (a key missing from a row
shows as blank). ``main`` starts and stops everything it needs (stores,
servers, processes) itself, stops every process it starts by PID, and bounds
every loop in count and time. It may write extra artifacts (profiles, raw
samples) under ``bench/results/`` (gitignored).

This runner discovers the modules, runs each under ``asyncio.run`` (with uvloop,
as ``tolstoy serve`` and ``tolstoy worker`` do, unless ``--asyncio``), prints one
rich table per benchmark and writes ``bench/results/<name>.json`` with the rows,
the date, the machine and the arguments. A benchmark that raises is reported and
the others still run; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import pkgutil
import signal
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from rich.console import Console
from rich.table import Table

import bench

console = Console(width=max(Console().width, 120))


def discover() -> list[str]:
    """Benchmark module names, in alphabetical order."""
    here = Path(bench.__file__).parent
    return sorted(
        m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_") and not m.ispkg
    )


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(prog="python -m bench", description="Run Tolstoy's benchmarks.")
    parser.add_argument(
        "names", nargs="*", help=f"benchmarks to run (default: all of {', '.join(discover())})"
    )
    parser.add_argument("--quick", action="store_true", help="a short run of each benchmark")
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--asyncio", action="store_true", help="the stdlib event loop instead of uvloop")
    return parser.parse_args(argv), extra


def _title(name: str, module: ModuleType) -> str:
    title = getattr(module, "TITLE", None)
    if title:
        return str(title)
    doc = (module.__doc__ or name).strip().splitlines()
    return doc[0] if doc else name


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.0f}" if value.is_integer() or abs(value) >= 100 else f"{value:,.2f}"
    return str(value)


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    """One table; with many columns it is printed turned (a row per figure) to stay readable."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    if len(columns) > 8:
        return _print_turned(title, rows, columns)
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, justify="left" if column in _LABELS else "right")
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    console.print(table)


_LABELS = ("backend", "scenario", "check")


def _print_turned(title: str, rows: list[dict[str, Any]], columns: list[str]) -> None:
    labels = [c for c in columns if c in ("backend", "scenario")]
    table = Table(title=title, title_justify="left")
    table.add_column("")
    for row in rows:
        table.add_column("\n".join(str(row.get(c, "")) for c in labels) or "", justify="right")
    for column in columns:
        if column not in labels:
            table.add_row(column, *(_cell(row.get(column)) for row in rows))
    console.print(table)


def code_version() -> dict[str, Any]:
    """The commit measured, and the engine files that differed from it (read-only git calls)."""
    import tolstoy

    root = Path(tolstoy.__file__).resolve().parent.parent

    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    dirty = git("status", "--porcelain", "--", "tolstoy").splitlines()
    return {"tolstoy": str(root), "commit": git("rev-parse", "--short", "HEAD"), "uncommitted": dirty}


def write_results(name: str, title: str, argv: list[str], rows: list[dict[str, Any]], seconds: float) -> Path:
    bench.RESULTS.mkdir(parents=True, exist_ok=True)
    path = bench.RESULTS / f"{name}.json"
    document = {
        "benchmark": name,
        "title": title,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": bench.machine(),
        "code": code_version(),
        "argv": argv,
        "seconds": round(seconds, 1),
        "rows": rows,
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def _install_loop(use_asyncio: bool) -> str:
    if use_asyncio:
        return "asyncio"
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
        return "uvloop"
    return "asyncio"


def run_one(name: str, argv: list[str]) -> bool:
    module = importlib.import_module(f"bench.{name}")
    title = _title(name, module)
    console.rule(f"[bold]{name}[/]: {title}")
    started = time.monotonic()
    try:
        rows: list[dict[str, Any]] = asyncio.run(module.main(argv))
    except (Exception, SystemExit) as exc:
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            return True  # --help
        console.print(f"[red]benchmark {name} failed:[/]")
        traceback.print_exc()
        return False
    seconds = time.monotonic() - started
    print_table(title, rows)
    path = write_results(name, title, argv, rows, seconds)
    console.print(f"{len(rows)} rows in {seconds:.1f}s → {path}")
    return True


def main(argv: list[str]) -> int:
    args, extra = _parse(argv)
    known = discover()
    unknown = [n for n in args.names if n not in known]
    if unknown:
        console.print(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(known)}")
        return 2
    loop = _install_loop(args.asyncio)
    # SIGTERM unwinds like Ctrl-C: each benchmark's cleanup (databases, processes) still runs.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    common = [*(["--quick"] if args.quick else []), "--backend", args.backend, *extra]
    console.print(f"machine: {bench.machine()}  loop: {loop}")
    ok = []
    try:
        for name in args.names or known:
            ok.append(run_one(name, common))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
