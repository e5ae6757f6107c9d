"""The real CLI against a real ``tolstoy serve``, and the SDK watching across a server restart."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from tests.e2e.conftest import REPO, Result, ServerProcess
from tests.helpers import assert_log_is_whole
from tolstoy.client import Backoff, Client, State

EVENT_LINE = re.compile(r"^\s*(\d+)  (\d\d:\d\d:\d\d\.\d{3})  (\S+)\s+(.*)$")
TERMINAL = {"completed", "failed", "cancelled"}

FAILING = """
name: always-fails
steps:
  - id: prepare
    type: data_transform
    config: {expression: "1"}
  - id: explode
    type: code
    config:
      source: |
        def main(context):
            raise ValueError("the input is bad")
"""

NAP = """
name: long-nap
steps:
  - id: nap
    type: delay
    config: {durationMs: 600000}
"""

APPROVAL = """
name: needs-approval
steps:
  - id: ask
    type: approval
    config: {prompt: "Ship it?", timeoutMs: 600000}
  - id: ship
    type: data_transform
    config: {expression: "steps['ask'].output.decision"}
"""


def events_in(result: Result) -> list[tuple[int, str, str]]:
    """(seq, type, text) of every event line the CLI printed."""
    found = [EVENT_LINE.match(line) for line in result.lines()]
    return [(int(m[1]), m[3], m[4]) for m in found if m]


def started_id(result: Result) -> str:
    match = re.search(r"started (exec_\w+)", result.stderr)
    assert match, result.stderr
    return match[1]


async def stored_events(server: ServerProcess, execution_id: str) -> list[dict[str, Any]]:
    async with server.api() as api:
        resp = await api.get(f"/api/v1/executions/{execution_id}/events", params={"limit": 5000})
    items: list[dict[str, Any]] = resp.json()["items"]
    return items


async def wait_status(server: ServerProcess, execution_id: str, wanted: set[str], timeout: float = 30) -> str:
    async with server.api() as api, asyncio.timeout(timeout):
        while (
            status := (await api.get(f"/api/v1/executions/{execution_id}")).json()["status"]
        ) not in wanted:
            await asyncio.sleep(0.05)
    return str(status)


async def test_run_hello_prints_every_event_and_a_summary(shared_server: ServerProcess) -> None:
    result = await shared_server.cli("run", "examples/hello.yaml", "--var", "who=e2e")
    assert result.code == 0, result
    execution_id = started_id(result)
    printed = events_in(result)
    stored = await stored_events(shared_server, execution_id)
    assert [(seq, kind) for seq, kind, _ in printed] == [(e["seq"], e["type"]) for e in stored]
    assert_log_is_whole(stored)
    assert printed[-1][1] == "execution.completed" and "3 completed, 0 failed, 0 skipped" in printed[-1][2]
    assert any(kind == "step.completed" and '"hello, e2e!"' in text for _, kind, text in printed)
    summary = result.stdout[result.stdout.index(f"hello · {execution_id} · completed") :]
    for step in ("greet", "shout", "card"):
        assert re.search(rf"{step} .*✓ completed", summary), summary
    assert "\x1b[" not in result.stdout, "no terminal control codes when stdout is a pipe"


async def test_run_of_a_failing_flow_exits_1(shared_server: ServerProcess, tmp_path: Path) -> None:
    flow = tmp_path / "fails.yaml"
    flow.write_text(FAILING)
    result = await shared_server.cli("run", str(flow))
    assert result.code == 1, result
    kinds = [kind for _, kind, _ in events_in(result)]
    assert kinds[-1] == "execution.failed"
    assert any("the input is bad" in text for _, kind, text in events_in(result) if kind == "step.failed")
    assert re.search(r"explode .*✗ failed .*the input is bad", result.stdout), result.stdout
    assert "error: " in result.stdout and "Traceback" not in result.stderr


async def test_watch_output_of_the_data_pipeline(shared_server: ServerProcess) -> None:
    result = await shared_server.cli(
        "run", "examples/data-pipeline.yaml", "--var", "days=5", "--var", "delayMs=0"
    )
    assert result.code == 0, result
    texts = [(kind, text) for _, kind, text in events_in(result)]
    progress = [text for kind, text in texts if kind == "execution.progress"]
    assert progress == [f"sync {d}/5 ({d * 20}%) processing day {d} of 5" for d in range(1, 6)]
    logs = [text for kind, text in texts if kind == "log"]
    assert len(logs) == 5 and logs[2].startswith("[info] sync: 2025-08-03: ") and logs[2].endswith(" records")
    assert re.search(
        r'summary .*✓ completed .*\{"days":5,"first":"2025-08-01","last":"2025-08-05"', result.stdout
    )


async def test_the_resilient_example_retries_and_survives_a_failing_step(
    shared_server: ServerProcess,
) -> None:
    result = await shared_server.cli("run", "examples/resilient.yaml")
    assert result.code == 0, result
    texts = [(kind, text) for _, kind, text in events_in(result)]
    warm = [(kind, text) for kind, text in texts if text.startswith("warm-cache")]
    assert [kind for kind, _ in warm] == ["step.started", "step.failed", "step.retrying", "step.started",
                                          "step.completed"]  # fmt: skip
    assert "attempt 1: the code ran longer than 1500 ms [timeout/code_timeout] · retry at" in warm[1][1]
    assert ("step.skipped", "escalate: dependency 'notify' failed") in texts
    assert any(kind == "step.failed" and text.startswith("notify attempt 1:") for kind, text in texts)
    assert texts[-1][0] == "execution.completed" and "2 completed, 1 failed, 1 skipped" in texts[-1][1]


async def test_tail_json_prints_contiguous_seqs_ending_with_the_terminal_event(
    shared_server: ServerProcess,
) -> None:
    started = await shared_server.cli(
        "run", "examples/data-pipeline.yaml", "--var", "days=10", "--no-watch", "--json"
    )
    assert started.code == 0, started
    execution_id = started.json_lines()[0]["executionId"]
    tail = await shared_server.cli("tail", execution_id, "--json")
    assert tail.code == 0, tail
    events = tail.json_lines()
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "execution.completed"
    assert all(e["executionId"] == execution_id for e in events)
    rest = await shared_server.cli("tail", execution_id, "--json", "--since", "5")
    assert [e["seq"] for e in rest.json_lines()] == list(range(6, len(events) + 1))
    plain = await shared_server.cli("tail", execution_id)
    assert [seq for seq, _, _ in events_in(plain)] == list(range(1, len(events) + 1))
    past_the_end = await shared_server.cli("tail", execution_id, "--since", str(len(events)), timeout=15)
    assert past_the_end.code == 0 and events_in(past_the_end) == [], past_the_end


async def test_flows_apply_list_show(shared_server: ServerProcess, tmp_path: Path) -> None:
    mine = tmp_path / "mine.yaml"
    mine.write_text(
        (REPO / "examples/hello.yaml").read_text().replace("name: hello", f"name: {tmp_path.name}")
    )
    applied = await shared_server.cli("flows", "apply", str(mine), "examples/resilient.yaml")
    assert applied.code == 0, applied
    assert re.search(rf"{tmp_path.name} .*flow_\w+ .*1 .*created", applied.stdout), applied.stdout
    assert re.search(r"examples/resilient\.yaml .*resilient .*flow_\w+", applied.stdout), applied.stdout
    again = await shared_server.cli("flows", "apply", str(mine), "--json")
    (flow,) = again.json_lines()[0]
    assert flow["name"] == tmp_path.name and flow["version"] == 2
    listed = await shared_server.cli("flows", "list", "--json")
    assert {tmp_path.name, "resilient"} <= {f["name"] for f in listed.json_lines()[0]}
    shown = await shared_server.cli("flows", "show", flow["id"])
    assert shown.code == 0 and flow["id"] in shown.stdout
    assert re.search(r"greet .*data_transform", shown.stdout) and re.search(
        r"card .*data_transform", shown.stdout
    )
    by_name = await shared_server.cli("flows", "show", "resilient", "--json")
    assert [s["id"] for s in by_name.json_lines()[0]["definition"]["steps"]] == [
        "warm-cache", "notify", "escalate", "report"]  # fmt: skip
    missing = await shared_server.cli("flows", "show", "flow_missing")
    assert (
        missing.code == 1 and missing.stderr.startswith("error: ") and len(missing.stderr.splitlines()) == 1
    )


async def test_executions_list_show_cancel(shared_server: ServerProcess, tmp_path: Path) -> None:
    flow = tmp_path / "nap.yaml"
    flow.write_text(NAP)
    started = await shared_server.cli("run", str(flow), "--no-watch")
    execution_id = started.stdout.strip()
    assert started.code == 0 and execution_id.startswith("exec_"), started
    await wait_status(shared_server, execution_id, {"waiting", "running"})
    cancelled = await shared_server.cli("executions", "cancel", execution_id)
    assert cancelled.code == 0 and cancelled.stdout.startswith(f"cancel {execution_id}: "), cancelled
    assert await wait_status(shared_server, execution_id, TERMINAL) == "cancelled"
    shown = await shared_server.cli("executions", "show", execution_id)
    assert re.search(r"status\s+cancelled", shown.stdout) and re.search(r"nap .*delay", shown.stdout), shown
    listed = await shared_server.cli("executions", "list", "--status", "cancelled", "--json")
    assert execution_id in [e["id"] for e in listed.json_lines()[0]]
    assert {e["status"] for e in listed.json_lines()[0]} == {"cancelled"}
    table = await shared_server.cli("executions", "list")
    assert execution_id in table.stdout and "cancelled" in table.stdout
    again = await shared_server.cli("executions", "cancel", "exec_0_missing")
    assert again.code == 1 and again.stderr.startswith("error: ") and "Traceback" not in again.stderr


async def test_approvals_grant_and_a_new_key(shared_server: ServerProcess, tmp_path: Path) -> None:
    flow = tmp_path / "approve.yaml"
    flow.write_text(APPROVAL)
    execution_id = (await shared_server.cli("run", str(flow), "--no-watch")).stdout.strip()
    await wait_status(shared_server, execution_id, {"waiting"})
    pending = (await shared_server.cli("approvals", "list", "--json")).json_lines()[0]
    (approval,) = [a for a in pending if a["executionId"] == execution_id]
    listed = await shared_server.cli("approvals", "list")
    assert approval["id"] in listed.stdout and "Ship it?" in listed.stdout
    granted = await shared_server.cli("approvals", "grant", approval["id"], "--comment", "ship it")
    assert granted.code == 0 and granted.stdout == f"{approval['id']}: granted\n", granted
    assert await wait_status(shared_server, execution_id, TERMINAL) == "completed"
    created = await shared_server.cli("keys", "create", "ci")
    key = created.stdout.strip()
    assert created.code == 0 and key and "shown only now" in created.stderr
    as_ci = await shared_server.cli("executions", "show", execution_id, "--json", TOLSTOY_API_KEY=key)
    assert as_ci.json_lines()[0]["status"] == "completed"


async def test_the_cli_without_a_server_or_a_key_says_what_to_do(shared_server: ServerProcess) -> None:
    down = await shared_server.cli("flows", "list", TOLSTOY_URL="http://127.0.0.1:9")
    assert (down.code, down.stderr) == (
        1,
        "error: cannot reach Tolstoy at http://127.0.0.1:9: is `tolstoy serve` running?\n",
    )
    denied = await shared_server.cli("flows", "list", TOLSTOY_API_KEY="tsk_wrong")
    assert (
        denied.code == 1 and "set TOLSTOY_API_KEY" in denied.stderr and len(denied.stderr.splitlines()) == 1
    )


SLOW = """
name: slow-for-restart
steps:
  - id: walk
    type: code
    config:
      timeoutMs: 60000
      source: |
        import time
        def main(context):
            for i in range(1, 31):
                time.sleep(0.1)
                context.progress(i, 30, f"step {i} of 30")
            return 30
  - id: done
    type: data_transform
    config: {expression: "steps['walk'].output + 1"}
"""


async def test_the_sdk_watch_resumes_across_a_server_restart(tolstoy_server: ServerProcess) -> None:
    creds = tolstoy_server.credentials
    async with Client(
        creds["url"], creds["apiKey"], reconnect=Backoff(initial=0.05, maximum=0.5), env={}
    ) as client:
        flow = await client.flows.apply(SLOW)
        execution_id = (await client.executions.start(flow["id"]))["executionId"]
        sub = client.watch(execution_id)
        seen: list[dict[str, Any]] = []
        progressed = asyncio.Event()

        async def watch() -> None:
            async for event in sub:
                seen.append(event)
                if event["type"] == "execution.progress" and event["current"] >= 5:
                    progressed.set()

        watcher = asyncio.create_task(watch())
        try:
            async with asyncio.timeout(30):
                await progressed.wait()
            tolstoy_server.kill()  # mid-step: the worker and the gateway die together
            async with asyncio.timeout(30):
                while sub.state is not State.WAITING:  # the watcher noticed and is reconnecting
                    await asyncio.sleep(0.01)
            before = len(seen)
            tolstoy_server.start()
            async with asyncio.timeout(60):
                await watcher
        finally:
            watcher.cancel()
    assert len(seen) > before, "events after the restart reached the watcher"
    assert sub.connects >= 2, "the watcher reconnected to the new server's gateway"
    assert_log_is_whole(seen)
    assert seen[-1]["type"] == "execution.completed" and seen[-1]["output"] == {"done": 31}
    assert any(e["type"] == "execution.started" and e.get("resumed") for e in seen), (
        "resumed by the new server"
    )
    stored = await stored_events(tolstoy_server, execution_id)
    assert [e["id"] for e in seen] == [e["id"] for e in stored]
