"""Watching one execution in the terminal: a rich live view, plain lines, or JSON lines.

The live view (a terminal on stdout) shows a progress bar and a step table whose
rows change state as events arrive, with log lines and errors printed above it.
When stdout is not a terminal it degrades to one plain line per event, so the
output can be piped, logged and tested. Both end with a summary table.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from tolstoy.cli import output
from tolstoy.client import TERMINAL_TYPES, Client

ICONS = {"pending": "·", "running": "▶", "retrying": "↻", "waiting": "⏸", "completed": "✓", "failed": "✗",
         "skipped": "⤼", "cancelled": "■"}  # fmt: skip
COLUMNS = (("step", 26), ("type", 14), ("status", 22), ("#", 3), ("took", 8))
"""The fixed columns of the step table and their widest; the detail column takes the rest."""
TABLE_FRAME = 3 * (len(COLUMNS) + 1) + 1
"""Borders and padding of a six-column table."""
DETAIL_MIN = 16
STEP_MIN = 12
LOG_STYLES = {"debug": "dim", "info": "", "warn": "yellow", "error": "red", "fatal": "bold red"}


class Mode(enum.Enum):
    LIVE = "live"
    LINES = "lines"
    JSON = "json"


def _ms(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000
    except ValueError:
        return None


def _clock(iso: str | None) -> str:
    """``HH:MM:SS.mmm`` of an event timestamp (UTC, as on the wire)."""
    return iso[11:23] if iso and len(iso) >= 23 else (iso or "")


def _json(value: Any, limit: int = 60) -> str:
    return output.truncate(orjson.dumps(value).decode(), limit)


def _error_text(error: Any) -> str:
    if not isinstance(error, dict):
        return str(error) if error else "unknown error"
    where = "/".join(str(error[k]) for k in ("category", "code") if error.get(k))
    return f"{error.get('message', 'unknown error')}" + (f" [{where}]" if where else "")


def _counts(event: dict[str, Any]) -> str:
    return (f"{event.get('completedSteps', 0)} completed, {event.get('failedSteps', 0)} failed, "
            f"{event.get('skippedSteps', 0)} skipped")  # fmt: skip


def describe(event: dict[str, Any]) -> str:
    """What one event says, in a few words (no seq, no time)."""
    kind = str(event.get("type"))
    step = event.get("stepId") or ""
    match kind:
        case "execution.queued":
            variables = _json(event.get("variables") or {})
            return f"v{event.get('flowVersion')} · {event.get('totalSteps')} steps · variables {variables}"
        case "execution.started":
            return ("resumed · " if event.get("resumed") else "") + f"{event.get('totalSteps')} steps"
        case "execution.progress":
            text = f"{event.get('stepId')} {event.get('current')}/{event.get('total')}"
            percent = event.get("percent")
            text += f" ({percent:g}%)" if isinstance(percent, int | float) else ""
            return text + (f" {event['message']}" if event.get("message") else "")
        case "execution.waiting":
            return f"{event.get('reason')}" + (f" until {event['until']}" if event.get("until") else "")
        case "execution.paused" | "execution.resumed":
            return f"by {event.get('by') or '-'}"
        case "execution.completed":
            took = output.duration(event.get("duration"))
            return f"in {took} · {_counts(event)} · output {_json(event.get('output'))}"
        case "execution.failed":
            took = output.duration(event.get("duration"))
            return f"{_error_text(event.get('error'))} · in {took} · {_counts(event)}"
        case "execution.cancelled":
            return f"by {event.get('by') or '-'} · {_counts(event)}"
        case "step.started":
            return f"{step} ({event.get('stepType')}) attempt {event.get('attempt')}"
        case "step.completed":
            return f"{step} in {output.duration(event.get('duration'))} → {_json(event.get('output'))}"
        case "step.failed":
            retry = f" · retry at {_clock(event.get('nextRetryAt'))}" if event.get("willRetry") else ""
            return f"{step} attempt {event.get('attempt')}: {_error_text(event.get('error'))}{retry}"
        case "step.retrying":
            return f"{step} attempt {event.get('attempt')} in {output.duration(event.get('delayMs'))}"
        case "step.skipped":
            return f"{step}: {event.get('reason')}"
        case "log":
            where = f"{event['stepId']}: " if event.get("stepId") else ""
            return f"[{event.get('level', 'info')}] {where}{event.get('message', '')}"
        case "approval.required":
            prompt = f" {event['prompt']!r}" if event.get("prompt") else ""
            return f"{event.get('stepId')}{prompt}: tolstoy approvals grant {event.get('approvalId')}"
        case _ if kind.startswith("approval."):
            by = f" by {event['by']}" if event.get("by") else ""
            return f"{event.get('stepId')} {event.get('approvalId')}{by}"
    return _json({k: v for k, v in event.items() if k not in {"id", "orgId", "flowId", "executionId", "seq"}})


def line(event: dict[str, Any]) -> str:
    """One event as one line: ``seq  time  type  what``."""
    seq, kind = event.get("seq", "-"), event.get("type", "?")
    return f"{seq:>4}  {_clock(event.get('timestamp'))}  {kind:<20} {describe(event)}"


def line_text(event: dict[str, Any]) -> Text:
    text = Text(line(event))
    kind = str(event.get("type"))
    if kind == "log":
        text.stylize(LOG_STYLES.get(str(event.get("level")), ""))
    elif kind.endswith(("failed", "cancelled")):
        text.stylize("red")
    elif kind.endswith("completed"):
        text.stylize("green")
    return text


@dataclass
class StepRow:
    id: str
    name: str
    type: str = ""
    status: str = "pending"
    attempt: int = 0
    duration_ms: int | None = None
    detail: str = ""
    next_retry_at: str | None = None
    progress: tuple[int, int] | None = None


@dataclass
class ExecutionView:
    """An execution's state folded from its events; renders as the live view."""

    execution_id: str
    flow: str = ""
    status: str = "queued"
    total_steps: int = 0
    steps: dict[str, StepRow] = field(default_factory=dict)
    started_ms: float | None = None
    duration_ms: int | None = None
    error: str = ""
    last_seq: int = 0

    def seed(self, steps: list[dict[str, Any]]) -> None:
        """Rows for every step of the flow version (from ``GET .../steps``), in definition order."""
        for item in steps:
            row = self._row(str(item["stepId"]), item.get("name"))
            row.type = str(item.get("type") or "")
            row.status, row.attempt = str(item.get("status") or "pending"), int(item.get("attempt") or 0)
            row.duration_ms = item.get("duration")
        self.total_steps = self.total_steps or len(self.steps)

    def _row(self, step_id: str, name: str | None = None) -> StepRow:
        if step_id not in self.steps:
            self.steps[step_id] = StepRow(step_id, name or step_id)
        row = self.steps[step_id]
        row.name = name or row.name
        return row

    @property
    def done(self) -> int:
        return sum(1 for r in self.steps.values() if r.status in ("completed", "failed", "skipped"))

    @property
    def finished(self) -> bool:
        return self.status in ("completed", "failed", "cancelled")

    def apply(self, event: dict[str, Any]) -> None:
        self.last_seq = max(self.last_seq, int(event.get("seq") or 0))
        kind = str(event.get("type"))
        if kind.startswith("execution."):
            self._execution(kind, event)
        elif kind.startswith("step.") and event.get("stepId"):
            self._step(kind, event, self._row(str(event["stepId"]), event.get("stepName")))
        elif kind.startswith("approval.") and event.get("stepId"):
            row = self._row(str(event["stepId"]))
            row.detail = f"approval {event.get('approvalId')} {kind.split('.', 1)[1]}"

    def _execution(self, kind: str, event: dict[str, Any]) -> None:
        self.total_steps = int(event.get("totalSteps") or self.total_steps)
        if kind == "execution.started":
            self.status, self.started_ms = "running", self.started_ms or _ms(event.get("timestamp"))
        elif kind == "execution.progress" and event.get("stepId"):
            row = self._row(str(event["stepId"]))
            row.progress = (int(event.get("current") or 0), int(event.get("total") or 0))
            row.detail = str(event.get("message") or "")
        elif kind in ("execution.waiting", "execution.paused", "execution.resumed"):
            self.status = {"execution.waiting": "waiting", "execution.paused": "paused"}.get(kind, "running")
        elif kind in TERMINAL_TYPES:
            self.status = kind.split(".", 1)[1]
            self.duration_ms = event.get("duration")
            self.error = _error_text(event["error"]) if event.get("error") else ""

    def _step(self, kind: str, event: dict[str, Any], row: StepRow) -> None:
        row.attempt = int(event.get("attempt") or row.attempt)
        if kind == "step.started":
            row.type = str(event.get("stepType") or row.type)
            row.status, row.next_retry_at, row.progress = "running", None, None
        elif kind == "step.completed":
            row.status, row.duration_ms = "completed", event.get("duration")
            row.detail = _json(event.get("output"), 200)
        elif kind == "step.failed":
            row.status = "retrying" if event.get("willRetry") else "failed"
            row.duration_ms, row.detail = event.get("duration"), _error_text(event.get("error"))
            row.next_retry_at = event.get("nextRetryAt")
        elif kind == "step.retrying":
            row.status = "retrying"
            if row.next_retry_at is None and (at := _ms(event.get("timestamp"))) is not None:
                row.next_retry_at = datetime.fromtimestamp(
                    (at + int(event.get("delayMs") or 0)) / 1000, UTC
                ).isoformat()
        elif kind == "step.skipped":
            row.status, row.detail = "skipped", str(event.get("reason") or "")

    def _status_cell(self, row: StepRow) -> Text:
        label = f"{ICONS.get(row.status, ' ')} {row.status}"
        if row.status == "retrying" and row.next_retry_at:
            label += f" {row.next_retry_at[11:19]}"
        return Text(label, style=output.STATUS_STYLES.get(row.status, ""))

    def _detail_cell(self, row: StepRow) -> Text:
        if row.status == "running" and row.progress and row.progress[1]:
            current, total = row.progress
            return Text(f"{current}/{total} {row.detail}".rstrip())
        style = "red" if row.status in ("failed", "retrying") else ""
        return Text(output.truncate(row.detail, 200), style=style)

    def step_table(self, width: int, title: str | None = None) -> Table:
        """The steps, one row each, fitted to ``width`` columns (the detail cell is cut, never wrapped)."""
        rows = [self._cells(row) for row in self.steps.values()]
        out = Table(title=title, title_justify="left", header_style="bold")
        fits = [
            min(cap, max([len(name), *(r[i].cell_len for r in rows)]))
            for i, (name, cap) in enumerate(COLUMNS)
        ]
        over = TABLE_FRAME + sum(fits) + DETAIL_MIN - width
        fits[0] -= max(0, min(over, fits[0] - STEP_MIN))  # narrow terminal: the step names give way first
        for (name, _), fit in zip(COLUMNS, fits, strict=True):
            out.add_column(name, width=fit, no_wrap=True, overflow="ellipsis")
        out.add_column("detail", width=max(DETAIL_MIN, width - TABLE_FRAME - sum(fits)), no_wrap=True,
                       overflow="ellipsis")  # fmt: skip
        for row in rows:
            out.add_row(*row)
        return out

    def _cells(self, row: StepRow) -> tuple[Text, ...]:
        took = output.duration(row.duration_ms)
        attempt = str(row.attempt or "-")
        return (self._step_cell(row), Text(row.type), self._status_cell(row), Text(attempt), Text(took),
                self._detail_cell(row))  # fmt: skip

    def _step_cell(self, row: StepRow) -> Text:
        text = Text(row.id)
        if row.name != row.id:
            text.append(f" {output.truncate(row.name, 30)}", style="dim")
        return text

    def header(self) -> Text:
        elapsed = self.duration_ms
        if elapsed is None and self.started_ms is not None:
            elapsed = max(0, int(time.time() * 1000 - self.started_ms))  # clocks may disagree a little
        text = Text(f"{self.flow} · {self.execution_id} · ")
        text.append(self.status, style=output.STATUS_STYLES.get(self.status, ""))
        return text.append(f" · {output.duration(elapsed)}" if elapsed is not None else "")

    @property
    def progress(self) -> float:
        """Steps done, plus the reported share of the running ones."""
        running = [r.progress for r in self.steps.values() if r.status == "running" and r.progress]
        return self.done + sum(current / total for current, total in running if total)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        total = max(self.total_steps, len(self.steps), 1)
        bar = Table.grid(padding=(0, 1))
        label = f"{self.done}/{total} steps · {min(100.0, 100 * self.progress / total):.0f}%"
        bar.add_row(ProgressBar(total=total, completed=self.progress, width=40), Text(label))
        yield Group(self.header(), bar, self.step_table(options.max_width))

    def summary(self, width: int) -> Table:
        title = f"{self.flow} · {self.execution_id} · {self.status} in {output.duration(self.duration_ms)}"
        return self.step_table(width, title)


def exit_code(status: str) -> int:
    """0 when the execution completed, 1 when it failed or was cancelled."""
    return 0 if status == "completed" else output.EXIT_FAILED


async def follow(client: Client, execution_id: str, *, mode: Mode, since: int = 0, flow: str = "") -> str:
    """Watch ``execution_id`` until its terminal event; returns its final status."""
    view = ExecutionView(execution_id, flow=flow)
    if mode is not Mode.JSON:
        view.seed(await client.executions.steps(execution_id))
    console = output.stdout()
    if mode is Mode.LIVE and console.is_terminal:
        await _live(client, view, console, since)
    else:
        await _lines(client, view, console, since, as_json=mode is Mode.JSON)
    if not view.finished:  # started after the end with --since past the terminal event
        view.status = str((await client.executions.get(execution_id)).get("status"))
    if mode is not Mode.JSON:
        console.print(view.summary(console.width))
        if view.error:
            console.print(Text(f"error: {view.error}", style="red"))
    return view.status


async def _lines(client: Client, view: ExecutionView, console: Console, since: int, *, as_json: bool) -> None:
    async for event in client.watch(view.execution_id, since=since):
        view.apply(event)
        if as_json:
            output.print_json(event)
        else:
            console.print(line_text(event), soft_wrap=True)


async def _live(client: Client, view: ExecutionView, console: Console, since: int) -> None:
    with Live(view, console=console, refresh_per_second=8, transient=True) as live:
        async for event in client.watch(view.execution_id, since=since):
            view.apply(event)
            kind = str(event.get("type"))
            if kind == "log" or kind in ("step.failed", "execution.failed", "approval.required"):
                live.console.print(line_text(event), soft_wrap=True)
            live.refresh()
