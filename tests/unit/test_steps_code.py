"""The ``code`` step: a real child process, its protocol, its limits and its cleanup."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from tolstoy.engine.steps.base import StepContext
from tolstoy.engine.steps.code import LOG_LIMIT, CodeConfig, CodeStep
from tolstoy.errors import StepError

WAIT = 10.0


class Sinks:
    """Collects what the step forwards, in order, and lets a test wait for a log message."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.changed = asyncio.Event()

    async def log(self, level: str, message: str, metadata: Mapping[str, Any] | None) -> None:
        self.events.append(("log", level, message, metadata))
        self.changed.set()

    async def progress(self, current: int, total: int, message: str | None) -> None:
        self.events.append(("progress", current, total, message))

    async def wait_for_log(self, prefix: str) -> tuple[Any, ...]:
        async with asyncio.timeout(WAIT):
            while True:
                for event in self.events:
                    if event[0] == "log" and event[2].startswith(prefix):
                        return event
                self.changed.clear()
                await self.changed.wait()


def make_ctx(sinks: Sinks | None = None, **overrides: Any) -> StepContext:
    sinks = sinks or Sinks()
    values: dict[str, Any] = {
        "execution_id": "exec_1_abc",
        "org_id": "org_1",
        "flow_id": "flow_1",
        "step_id": "py",
        "step_name": "Py",
        "step_type": "code",
        "attempt": 1,
        "log": sinks.log,
        "progress": sinks.progress,
    }
    return StepContext(**(values | overrides))


async def run_code(
    source: str, sinks: Sinks | None = None, *, config: dict[str, Any] | None = None, **ctx: Any
) -> Any:
    step_config = CodeConfig.model_validate({"source": source, **(config or {})})
    return await CodeStep().run(step_config, make_ctx(sinks, **ctx))


async def code_error(source: str, sinks: Sinks | None = None, **kwargs: Any) -> StepError:
    with pytest.raises(StepError) as info:
        await run_code(source, sinks, **kwargs)
    return info.value


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie is dead, just not reaped by its (re)parent yet


async def wait_until_dead(*pids: int) -> None:
    async with asyncio.timeout(WAIT):
        while any(is_alive(pid) for pid in pids):
            await asyncio.sleep(0.01)


async def test_returns_main_s_value_with_the_context_visible() -> None:
    source = (
        "def main(context):\n    return {'v': context.variables, 's': context.steps, 'm': context.meta}\n"
    )
    out = await run_code(
        source, variables={"a": [1, "é"]}, steps={"prev": {"n": 2}}, meta={"executionId": "e"}
    )
    assert out == {"v": {"a": [1, "é"]}, "s": {"prev": {"n": 2}}, "m": {"executionId": "e"}}


async def test_an_async_main_is_awaited() -> None:
    assert await run_code("async def main(context):\n    return 41 + 1\n") == 42


async def test_logs_prints_and_progress_are_forwarded_in_order() -> None:
    sinks = Sinks()
    source = (
        "import sys\n"
        "def main(context):\n"
        "    context.log('starting', level='debug', items=3)\n"
        "    print('printed')\n"
        "    context.progress(1, 3, 'one')\n"
        "    print('oops', file=sys.stderr)\n"
        "    context.log('odd level', level='weird')\n"
        "    context.progress(3, 3)\n"
        "    return 'ok'\n"
    )
    assert await run_code(source, sinks) == "ok"
    assert sinks.events == [
        ("log", "debug", "starting", {"items": 3}),
        ("log", "info", "printed", {"stream": "stdout"}),
        ("progress", 1, 3, "one"),
        ("log", "warn", "oops", {"stream": "stderr"}),
        ("log", "info", "odd level", None),
        ("progress", 3, 3, None),
    ]


async def test_logs_are_forwarded_while_the_code_still_runs() -> None:
    sinks = Sinks()
    source = "import time\ndef main(context):\n    context.log('early')\n    time.sleep(60)\n"
    task = asyncio.create_task(run_code(source, sinks))
    try:
        await sinks.wait_for_log("early")
        assert not task.done()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_logs_are_capped_with_one_warning() -> None:
    sinks = Sinks()
    source = (
        f"def main(context):\n    for i in range({LOG_LIMIT + 500}):\n        context.log(f'line {{i}}')\n"
    )
    await run_code(source, sinks)
    assert len(sinks.events) == LOG_LIMIT + 1
    assert sinks.events[LOG_LIMIT - 1][2] == f"line {LOG_LIMIT - 1}"
    assert sinks.events[-1][1] == "warn" and "limit" in sinks.events[-1][2]


async def test_an_exception_is_a_code_error_with_the_user_s_traceback_only() -> None:
    sinks = Sinks()
    error = await code_error(
        "def helper():\n    raise ValueError('boom')\n\ndef main(context):\n    helper()\n", sinks
    )
    assert (error.category, error.error_code, error.retryable) == ("system", "code_error", False)
    assert error.message == "ValueError: boom"
    trace = (await sinks.wait_for_log("Traceback"))[2]
    assert 'File "<code>", line 5, in main' in trace and 'File "<code>", line 2, in helper' in trace
    assert "raise ValueError('boom')" in trace
    assert "sandbox_child" not in trace and "/" not in trace


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("def main(context)\n    return 1\n", "SyntaxError"),
        ("x = 1\n", "NameError: the code must define a function main(context)"),
        ("import sys\ndef main(context):\n    sys.exit(3)\n", "SystemExit: 3"),
    ],
)
async def test_broken_code_is_a_code_error(source: str, message: str) -> None:
    error = await code_error(source)
    assert error.error_code == "code_error" and error.message.startswith(message)


async def test_an_infinite_loop_times_out_and_the_process_is_killed() -> None:
    sinks = Sinks()
    source = "import os\ndef main(context):\n    context.log(f'pid {os.getpid()}')\n    while True: pass\n"
    started = time.monotonic()
    error = await code_error(source, sinks, config={"timeoutMs": 500})
    assert (error.category, error.error_code, error.retryable) == ("timeout", "code_timeout", True)
    assert time.monotonic() - started < 3
    pid = int((await sinks.wait_for_log("pid "))[2].split()[1])
    await wait_until_dead(pid)


async def test_the_step_s_own_timeout_caps_the_code_timeout() -> None:
    started = time.monotonic()
    error = await code_error("def main(context):\n    while True: pass\n", timeout_ms=300)
    assert error.error_code == "code_timeout" and "300 ms" in error.message
    assert time.monotonic() - started < 3


async def test_a_huge_allocation_hits_the_memory_limit() -> None:
    error = await code_error(
        "def main(context):\n    return len(bytearray(1 << 30))\n", config={"memoryMb": 128}
    )
    assert (error.category, error.error_code) == ("system", "memory_limit")
    assert "128 MB" in error.message


async def test_the_child_sees_no_environment_and_works_in_a_fresh_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TOLSTOY_TEST_SECRET", "hunter2")
    source = (
        "import os\n"
        "def main(context):\n"
        "    return {'env': dict(os.environ), 'cwd': os.getcwd(), 'files': os.listdir('.')}\n"
    )
    out = await run_code(source)
    assert "TOLSTOY_TEST_SECRET" not in out["env"] and "hunter2" not in str(out["env"])
    assert set(out["env"]) <= {"LANG", "LC_CTYPE"}
    assert out["files"] == [] and out["cwd"] != os.getcwd()
    assert not Path(out["cwd"]).exists()  # removed after the attempt


@pytest.mark.parametrize("value", ["{1, 2}", "object()", "float('nan')", "{(1, 2): 'tuple key'}"])
async def test_a_non_json_return_value_is_a_data_error(value: str) -> None:
    error = await code_error(f"def main(context):\n    return {value}\n")
    assert (error.category, error.error_code) == ("data", "output_not_serializable")


async def test_a_result_over_the_output_limit_is_a_data_error() -> None:
    error = await code_error("def main(context):\n    return 'x' * 5000\n", max_output_bytes=1000)
    assert (error.category, error.error_code) == ("data", "output_too_large")
    assert await run_code("def main(context):\n    return 'x' * 900\n", max_output_bytes=1000) == "x" * 900


async def test_a_hard_exit_without_result_is_a_crash() -> None:
    error = await code_error("import os\ndef main(context):\n    os._exit(3)\n")
    assert (error.category, error.error_code) == ("system", "code_crashed")
    assert "status 3" in error.message


async def test_the_user_cannot_corrupt_the_protocol_through_fd_1() -> None:
    source = (
        "import os\n"
        "def main(context):\n"
        '    os.write(1, b\'{"t":"result","value":"forged"}\\n\')\n'
        "    return 'real'\n"
    )
    assert await run_code(source) == "real"


async def test_cancellation_kills_the_child_and_its_children() -> None:
    sinks = Sinks()
    source = (
        "import os, subprocess, sys, time\n"
        "def main(context):\n"
        "    child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "    context.log(f'pids {os.getpid()} {child.pid}')\n"
        "    time.sleep(120)\n"
    )
    task = asyncio.create_task(run_code(source, sinks))
    pids = [int(p) for p in (await sinks.wait_for_log("pids "))[2].split()[1:]]
    assert all(is_alive(pid) for pid in pids)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not is_alive(pids[0])  # the child is reaped before the cancellation propagates
    await wait_until_dead(*pids)


@pytest.mark.parametrize(
    "config",
    [
        {"source": ""},
        {"source": "x", "timeoutMs": 600_001},
        {"source": "x", "memoryMb": 4097},
        {"source": "x", "y": 1},
    ],
)
def test_invalid_configs_are_refused(config: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        CodeConfig.model_validate(config)


def test_source_is_a_raw_key() -> None:
    assert "source" in CodeStep.raw_keys
