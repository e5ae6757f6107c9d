"""``code``: the user's Python ``main(context)`` in a separate, limited process.

The child (``sandbox_child.py``, run as ``python -I -S``: no site-packages, no
environment variables but ``LANG``, a fresh temporary cwd, its own session) limits
its own address space, CPU time, files and processes, reads one JSON object from
stdin and answers with newline-delimited JSON on stdout::

    {"t": "log", "level", "message", "metadata"}        forwarded at once to ctx.log
    {"t": "progress", "current", "total", "message"}    forwarded at once to ctx.progress
    {"t": "result", "value"}                            the output
    {"t": "error", "kind": "exception|memory|serialize|too_large", "message", "traceback"?}

The parent enforces the wall clock, the output size and the log cap whatever the
child does, and kills the child's whole process group on every way out (timeout,
cancellation, success). This isolates the worker from the code's crashes and
resource use; it is not a security boundary against hostile code (the filesystem
is the worker's), for that run workers in a container.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from tolstoy import jsonutil
from tolstoy.engine.steps.base import StepConfig, StepContext, StepType
from tolstoy.engine.steps.http_request import effective_timeout_ms
from tolstoy.errors import StepError

CHILD_PROGRAM = Path(__file__).with_name("sandbox_child.py")
LOG_LIMIT = 1000
"""Log messages forwarded per attempt (the child sends one more: the warning that it stopped)."""
PROGRESS_LIMIT = 1000
LOG_BUDGET_BYTES = 32 * 1024 * 1024
"""Stdout a child may spend on logs and progress on top of ``max_output_bytes``."""
_LEVELS = frozenset({"debug", "info", "warn", "error", "fatal"})
_MEMORY_SIGNALS = frozenset({signal.SIGKILL, signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT})


class CodeConfig(StepConfig):
    source: str = Field(min_length=1)
    timeout_ms: int = Field(default=30_000, alias="timeoutMs", ge=10, le=600_000)
    memory_mb: int = Field(default=256, alias="memoryMb", ge=64, le=4096)


@dataclass(slots=True)
class _Outcome:
    """What the child said: its result, or its error message."""

    has_result: bool = False
    value: Any = None
    error: dict[str, Any] | None = None
    logs: int = 0
    progress: int = 0
    bytes_read: int = 0


class CodeStep(StepType):
    name = "code"
    config_model = CodeConfig
    raw_keys = frozenset({"source"})

    async def run(self, config: CodeConfig, ctx: StepContext) -> Any:
        timeout_ms = effective_timeout_ms(config.timeout_ms, ctx)
        stdin = _child_input(config, ctx)
        workdir = tempfile.mkdtemp(prefix="tolstoy-code-")
        try:
            proc = await _spawn(config, ctx, timeout_ms, workdir)
            try:
                async with asyncio.timeout(timeout_ms / 1000):
                    outcome = await _converse(proc, stdin, ctx)
                    if not outcome.has_result and outcome.error is None:
                        await proc.wait()  # stdout ended without an answer: learn why
            except TimeoutError:
                raise _timeout(timeout_ms) from None
            finally:
                await _kill(proc)
        finally:
            await asyncio.to_thread(shutil.rmtree, workdir, ignore_errors=True)
        return _conclude(outcome, proc.returncode, config, ctx.max_output_bytes)


def _child_input(config: CodeConfig, ctx: StepContext) -> bytes:
    data = {"source": config.source, "variables": ctx.variables, "steps": ctx.steps, "meta": ctx.meta}
    try:
        return jsonutil.dumpb(data)
    except TypeError as exc:
        raise StepError(
            f"the code's inputs are not JSON: {exc}", category="data", code="input_not_serializable"
        ) from None


async def _spawn(
    config: CodeConfig, ctx: StepContext, timeout_ms: int, workdir: str
) -> asyncio.subprocess.Process:
    cpu_seconds = max(1, -(-timeout_ms // 1000)) + 1
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-I",
        "-S",
        str(CHILD_PROGRAM),
        str(config.memory_mb),
        str(cpu_seconds),
        str(ctx.max_output_bytes),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={"LANG": "C.UTF-8"},
        cwd=workdir,
        start_new_session=True,
        limit=ctx.max_output_bytes + 64 * 1024,
    )


async def _kill(proc: asyncio.subprocess.Process) -> None:
    """Kill the child's process group (grandchildren included) and reap the child."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await asyncio.shield(proc.wait())


async def _converse(proc: asyncio.subprocess.Process, stdin: bytes, ctx: StepContext) -> _Outcome:
    if proc.stdin is None or proc.stdout is None:
        raise RuntimeError("the code's process has no stdin or stdout pipe")
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        proc.stdin.write(stdin)
        await proc.stdin.drain()
        proc.stdin.close()
    outcome = _Outcome()
    budget = ctx.max_output_bytes + LOG_BUDGET_BYTES
    while outcome.error is None and not outcome.has_result:
        try:
            line = await proc.stdout.readline()
        except ValueError:  # one line longer than the stream's limit
            raise _too_large(ctx.max_output_bytes) from None
        if not line:
            break
        outcome.bytes_read += len(line)
        if outcome.bytes_read > budget:
            raise _too_large(ctx.max_output_bytes)
        await _handle(line, outcome, ctx)
    return outcome


async def _handle(line: bytes, outcome: _Outcome, ctx: StepContext) -> None:
    try:
        message = json.loads(line)
    except ValueError:
        return  # not the protocol; the child writes nothing else, so ignore it
    if not isinstance(message, dict):
        return
    kind = message.get("t")
    if kind == "log":
        outcome.logs += 1
        if outcome.logs <= LOG_LIMIT + 1:
            await _forward_log(message, ctx)
    elif kind == "progress":
        outcome.progress += 1
        if outcome.progress <= PROGRESS_LIMIT:
            await _forward_progress(message, ctx)
    elif kind == "result":
        outcome.has_result, outcome.value = True, message.get("value")
    elif kind == "error":
        outcome.error = message
        trace = message.get("traceback")
        if isinstance(trace, str) and trace:
            await ctx.log("error", trace, {"traceback": True})


async def _forward_log(message: dict[str, Any], ctx: StepContext) -> None:
    level = message.get("level")
    metadata = message.get("metadata")
    await ctx.log(
        level if level in _LEVELS else "info",
        str(message.get("message", "")),
        metadata if isinstance(metadata, dict) else None,
    )


async def _forward_progress(message: dict[str, Any], ctx: StepContext) -> None:
    current, total, text = message.get("current"), message.get("total"), message.get("message")
    if isinstance(current, int) and isinstance(total, int):
        await ctx.progress(current, total, text if isinstance(text, str) else None)


def _conclude(outcome: _Outcome, returncode: int | None, config: CodeConfig, max_output_bytes: int) -> Any:
    if outcome.has_result:
        return outcome.value
    if outcome.error is not None:
        raise _child_error(outcome.error, config, max_output_bytes)
    if returncode is not None and returncode < 0:
        raise _signal_error(-returncode, config)
    raise StepError(
        f"the code exited with status {returncode} without a result", category="system", code="code_crashed"
    )


def _child_error(error: dict[str, Any], config: CodeConfig, max_output_bytes: int) -> StepError:
    kind, message = error.get("kind"), str(error.get("message", "the code failed"))
    if kind == "memory":
        return _memory_error(f"{message}: the code went over its memory limit", config)
    if kind == "serialize":
        return StepError(
            f"the code's return value is not JSON-serializable: {message}",
            category="data",
            code="output_not_serializable",
        )
    if kind == "too_large":
        return _too_large(max_output_bytes)
    return StepError(message, category="system", code="code_error")


def _signal_error(signum: int, config: CodeConfig) -> StepError:
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    if signum == signal.SIGXCPU:
        return _timeout(config.timeout_ms)
    if signum in _MEMORY_SIGNALS:
        return _memory_error(f"the code was killed by {name}, most likely over its memory limit", config)
    return StepError(f"the code was killed by {name}", category="system", code="code_crashed")


def _memory_error(message: str, config: CodeConfig) -> StepError:
    return StepError(f"{message} of {config.memory_mb} MB", category="system", code="memory_limit")


def _timeout(timeout_ms: int) -> StepError:
    return StepError(
        f"the code ran longer than {timeout_ms} ms", category="timeout", code="code_timeout", retryable=True
    )


def _too_large(limit: int) -> StepError:
    return StepError(
        f"the code's output is over the {limit}-byte limit", category="data", code="output_too_large"
    )
