"""The CLI built on the client: variables, event lines, the live view and its plain-line fallback, errors."""

from __future__ import annotations

import io
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from tolstoy.cli import app, output, watch
from tolstoy.cli.remote import parse_vars
from tolstoy.client import AuthError, ConnectionFailed, ValidationError

EXEC = "exec_1_abc"


def test_vars_parse_as_json_when_they_are_json_else_as_text() -> None:
    parsed = parse_vars(["n=3", "ok=true", "ratio=0.5", "who=world", "tags=[\"a\", 1]", "obj={\"k\": null}",
                         "quoted=\"7\"", "empty=", "eq=a=b", "zip=007"])  # fmt: skip
    assert parsed == {"n": 3, "ok": True, "ratio": 0.5, "who": "world", "tags": ["a", 1], "obj": {"k": None},
                      "quoted": "7", "empty": "", "eq": "a=b", "zip": "007"}  # fmt: skip


@pytest.mark.parametrize("bad", ["novalue", "=x", " =x"])
def test_a_var_without_a_key_is_a_usage_error(bad: str) -> None:
    with pytest.raises(typer.BadParameter, match="KEY=VALUE"):
        parse_vars([bad])


def ev(seq: int, kind: str, **fields: Any) -> dict[str, Any]:
    return {"id": f"{EXEC}:{seq}", "type": kind, "executionId": EXEC, "seq": seq,
            "timestamp": f"2025-08-07T14:05:{seq:02d}.250Z", **fields}  # fmt: skip


ERROR = {
    "message": "the code ran longer than 1500 ms",
    "code": "code_timeout",
    "category": "timeout",
    "retryable": True,
}
RUN = [
    ev(1, "execution.queued", flowVersion=2, totalSteps=3, variables={"days": 3}),
    ev(2, "execution.started", totalSteps=3),
    ev(3, "step.started", stepId="sync", stepName="Sync", stepType="code", attempt=1, status="running"),
    ev(4, "execution.progress", stepId="sync", current=1, total=3, percent=33.3,
       message="processing day 1 of 3"),
    ev(5, "log", stepId="sync", level="warn", message="slow upstream"),
    ev(6, "step.failed", stepId="sync", stepName="Sync", attempt=1, error=ERROR, willRetry=True,
       nextRetryAt="2025-08-07T14:05:09.000Z", duration=1500),
    ev(7, "step.retrying", stepId="sync", attempt=2, delayMs=500),
    ev(8, "step.started", stepId="sync", stepName="Sync", stepType="code", attempt=2, status="running"),
    ev(9, "step.completed", stepId="sync", stepName="Sync", attempt=2, duration=1250, output={"rows": 3}),
    ev(10, "step.failed", stepId="notify", stepName="notify", attempt=1, willRetry=False, duration=3,
       error={"message": "connection refused", "code": "connection_error", "category": "network"}),
    ev(11, "step.skipped", stepId="escalate", reason="dependency 'notify' failed"),
    ev(12, "execution.completed", duration=2890, output={"sync": {"rows": 3}}, totalSteps=3, completedSteps=1,
       failedSteps=1, skippedSteps=1),
]  # fmt: skip
STEPS = [
    {"stepId": step, "name": name, "type": kind, "status": "pending", "attempt": 0}
    for step, name, kind in [("sync", "Sync", "code"), ("notify", "notify", "http_request"),
                             ("escalate", "escalate", "data_transform")]
]  # fmt: skip


def test_each_event_is_one_line_with_seq_time_type_and_what_happened() -> None:
    lines = [watch.line(e) for e in RUN]
    assert lines[0] == '   1  14:05:01.250  execution.queued     v2 · 3 steps · variables {"days":3}'
    assert lines[3].endswith("execution.progress   sync 1/3 (33.3%) processing day 1 of 3")
    assert lines[4].endswith("log                  [warn] sync: slow upstream")
    assert lines[5].endswith(
        "step.failed          sync attempt 1: the code ran longer than 1500 ms [timeout/code_timeout]"
        " · retry at 14:05:09.000"
    )
    assert lines[6].endswith("step.retrying        sync attempt 2 in 500 ms")
    assert lines[8].endswith('step.completed       sync in 1.25 s → {"rows":3}')
    assert lines[10].endswith("step.skipped         escalate: dependency 'notify' failed")
    assert lines[11].endswith(
        'execution.completed  in 2.89 s · 1 completed, 1 failed, 1 skipped · output {"sync":{"rows":3}}'
    )
    assert len({line.split()[0] for line in lines}) == len(RUN), "one line per event"


def test_approval_events_tell_how_to_decide() -> None:
    line = watch.line(ev(4, "approval.required", stepId="ship", approvalId="apr_9", prompt="Ship it?"))
    assert line.endswith("ship 'Ship it?': tolstoy approvals grant apr_9")


def render(view: watch.ExecutionView, width: int = 120) -> str:
    console = Console(file=io.StringIO(), width=width, force_terminal=True, color_system=None)
    console.print(view)
    text: str = console.file.getvalue()  # type: ignore[attr-defined]
    return text


def test_the_live_view_rows_change_state_as_events_arrive() -> None:
    view = watch.ExecutionView(EXEC, flow="pipeline")
    view.seed(STEPS)
    assert "· pending" in render(view)
    states = {}
    for event in RUN:
        view.apply(event)
        states[event["seq"]] = render(view)
    assert "▶ running" in states[3] and "0/3 steps" in states[3]
    assert "1/3 processing day 1 of 3" in states[4]
    assert "0/3 steps · 11%" in states[4], "the bar counts the running step's reported progress"
    assert "↻ retrying 14:05:09" in states[6]
    assert "the code ran longer than 1500 ms" in states[6]
    assert "✓ completed" in states[9] and "1.25 s" in states[9]
    assert "✗ failed" in states[10] and "connection refused" in states[10]
    assert "⤼ skipped" in states[11] and "dependency 'notify' failed" in states[11]
    assert "pipeline · exec_1_abc · completed · 2.89 s" in states[12]
    assert "3/3 steps · 100%" in states[12]
    assert view.status == "completed" and view.last_seq == 12


def test_the_step_table_fits_the_terminal() -> None:
    view = watch.ExecutionView(EXEC, flow="pipeline")
    view.seed(STEPS)
    for event in RUN:
        view.apply(event)
    for width in (80, 100, 160):
        lines = render(view, width).splitlines()
        assert max(len(line) for line in lines) <= width, width


class StubClient:
    """What ``follow`` needs from a client: the steps, and a watch that yields ``RUN``."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = events
        self.executions = self
        self.since: int | None = None

    async def steps(self, execution_id: str) -> list[dict[str, Any]]:
        return STEPS

    async def get(self, execution_id: str) -> dict[str, Any]:
        return {"status": "completed"}

    async def _stream(self) -> AsyncIterator[dict[str, Any]]:
        for event in self.events:
            if event["seq"] > (self.since or 0):
                yield event

    def watch(self, execution_id: str, since: int = 0) -> AsyncIterator[dict[str, Any]]:
        self.since = since
        return self._stream()


@pytest.fixture
def screen(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """What the watch prints, on a terminal 120 columns wide when ``screen.tty`` is set."""
    buffer = io.StringIO()
    buffer.tty = False  # type: ignore[attr-defined]

    def console() -> Console:
        return Console(file=buffer, width=120, force_terminal=buffer.tty, color_system=None,  # type: ignore[attr-defined]
                       highlight=False)  # fmt: skip

    monkeypatch.setattr(output, "stdout", console)
    return buffer


async def test_off_a_terminal_the_watch_prints_a_line_per_event_then_the_summary(screen: io.StringIO) -> None:
    status = await watch.follow(StubClient(RUN), EXEC, mode=watch.Mode.LIVE, flow="pipeline")  # type: ignore[arg-type]
    text = screen.getvalue()
    lines = text.splitlines()
    assert status == "completed"
    assert [watch.line(e) for e in RUN] == lines[: len(RUN)]
    assert "pipeline · exec_1_abc · completed in 2.89 s" in lines[len(RUN)]
    assert any("sync Sync" in line and "✓ completed" in line for line in lines[len(RUN) :])
    assert "\x1b[" not in text, "no cursor movement or colour off a terminal"


async def test_on_a_terminal_the_live_view_prints_logs_and_errors_above_it(screen: io.StringIO) -> None:
    screen.tty = True  # type: ignore[attr-defined]
    status = await watch.follow(StubClient(RUN), EXEC, mode=watch.Mode.LIVE, flow="pipeline")  # type: ignore[arg-type]
    text = screen.getvalue()
    assert status == "completed"
    assert watch.line(RUN[4]) in text  # the log line
    assert watch.line(RUN[5]) in text  # the failed attempt
    assert watch.line(RUN[0]) not in text, "lifecycle events update the table instead of scrolling"
    assert "↻ retrying" in text and "3/3 steps · 100%" in text
    assert "pipeline · exec_1_abc · completed in 2.89 s" in text


async def test_json_mode_prints_the_raw_events(
    screen: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    client = StubClient(RUN)
    status = await watch.follow(client, EXEC, mode=watch.Mode.JSON, since=9)  # type: ignore[arg-type]
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert printed == RUN[9:]
    assert client.since == 9
    assert status == "completed"
    assert screen.getvalue() == "", "no summary table in JSON mode"


def test_exit_codes_follow_the_final_status() -> None:
    assert watch.exit_code("completed") == 0
    assert watch.exit_code("failed") == 1
    assert watch.exit_code("cancelled") == 1


def test_errors_become_one_clear_line() -> None:
    assert output.describe_error(ConnectionFailed("http://127.0.0.1:9", "refused")) == (
        "cannot reach Tolstoy at http://127.0.0.1:9: is `tolstoy serve` running?"
    )
    details = [{"field": "steps[0].type", "message": "unknown step type 'nope'"}]
    invalid = ValidationError(422, "validation_failed", "flow definition is invalid", details)
    assert (
        output.describe_error(invalid)
        == "flow definition is invalid: steps[0].type: unknown step type 'nope'"
    )
    denied = output.describe_error(AuthError(401, "unauthorized", "invalid or revoked API key"))
    assert denied.startswith("invalid or revoked API key: set TOLSTOY_API_KEY")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize("args", [["executions", "show", "exec_1"], ["flows", "list"], ["tail", "exec_1"]])
def test_an_unreachable_server_is_one_line_on_stderr_and_exit_1(args: list[str], tmp_path: Any) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    env = {"TOLSTOY_URL": url, "TOLSTOY_API_KEY": "k", "TOLSTOY_HOME": str(tmp_path)}
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 1
    assert result.stderr == f"error: cannot reach Tolstoy at {url}: is `tolstoy serve` running?\n"
    assert result.stdout == ""


def test_run_of_a_missing_file_says_so(tmp_path: Any) -> None:
    result = CliRunner().invoke(
        app, ["run", str(tmp_path / "nope.yaml")], env={"TOLSTOY_HOME": str(tmp_path)}
    )
    assert result.exit_code == 1
    assert result.stderr == f"error: no such file: {tmp_path / 'nope.yaml'}\n"


def test_a_bad_var_is_a_usage_error(tmp_path: Any) -> None:
    flow = tmp_path / "f.yaml"
    flow.write_text("name: f\nsteps: []\n")
    result = CliRunner().invoke(app, ["run", str(flow), "--var", "oops"], env={"TOLSTOY_HOME": str(tmp_path)})
    assert result.exit_code == 2
    assert "expected KEY=VALUE, got 'oops'" in result.stderr
