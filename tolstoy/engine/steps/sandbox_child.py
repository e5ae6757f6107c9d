"""The program a ``code`` step runs in a process of its own (a script; stdlib only).

``python -I -S sandbox_child.py MEMORY_MB CPU_SECONDS MAX_OUTPUT_BYTES`` limits itself,
reads one JSON object ``{"source", "variables", "steps", "meta"}`` from stdin, runs
``main(context)`` and writes newline-delimited JSON messages to stdout (the protocol
``code.py`` reads). The user's ``print`` and ``sys.stderr`` become log messages; fd 1
itself is pointed at /dev/null so stray writes cannot corrupt the protocol.
"""

from __future__ import annotations

import io
import json
import linecache
import os
import resource
import sys
import traceback
import types
from typing import Any, BinaryIO

FILENAME = "<code>"
LOG_LIMIT = 1000
PROGRESS_LIMIT = 1000
MAX_MESSAGE_CHARS = 8192
MAX_METADATA_CHARS = 8192
MAX_ERROR_CHARS = 2000
TRACEBACK_FRAMES = 20
MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_OPEN_FILES = 64
MAX_PROCESSES = 64
_LEVELS = {"debug": "debug", "info": "info", "warn": "warn", "warning": "warn", "error": "error"}
_LEVELS |= {"fatal": "fatal", "critical": "fatal"}


def _set_limit(which: int, soft: int, hard: int | None = None) -> None:
    _, current_hard = resource.getrlimit(which)
    cap = current_hard if current_hard != resource.RLIM_INFINITY else None
    hard = soft if hard is None else hard
    if cap is not None:
        soft, hard = min(soft, cap), min(hard, cap)
    try:
        resource.setrlimit(which, (soft, hard))
    except (ValueError, OSError):  # e.g. not allowed here; the parent's wall clock still holds
        pass


def apply_limits(memory_mb: int, cpu_seconds: int) -> None:
    """Address space, CPU time, open files, file size, processes and core dumps."""
    _set_limit(resource.RLIMIT_AS, memory_mb * 1024 * 1024)
    _set_limit(resource.RLIMIT_CPU, cpu_seconds, cpu_seconds + 1)
    _set_limit(resource.RLIMIT_NOFILE, MAX_OPEN_FILES)
    _set_limit(resource.RLIMIT_FSIZE, MAX_FILE_BYTES)
    _set_limit(resource.RLIMIT_NPROC, MAX_PROCESSES)  # not enforced for root
    _set_limit(resource.RLIMIT_CORE, 0)


class Channel:
    """The protocol stream to the parent: one JSON object per line, ASCII only."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out

    def send(self, message: dict[str, Any]) -> None:
        self.write(json.dumps(message, separators=(",", ":"), default=repr))

    def write(self, line: str) -> None:
        try:
            self._out.write(line.encode() + b"\n")
            self._out.flush()
        except (BrokenPipeError, OSError):  # the parent is gone: nobody to report to
            os._exit(1)


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _metadata(metadata: dict[str, Any]) -> dict[str, Any] | None:
    if not metadata:
        return None
    encoded = json.dumps(metadata, default=repr)
    if len(encoded) > MAX_METADATA_CHARS:
        return {"truncated": True}
    loaded: dict[str, Any] = json.loads(encoded)
    return loaded


class Context:
    """What ``main(context)`` receives."""

    def __init__(self, channel: Channel, data: dict[str, Any]) -> None:
        self.variables: dict[str, Any] = data.get("variables") or {}
        self.steps: dict[str, Any] = data.get("steps") or {}
        self.meta: dict[str, Any] = data.get("meta") or {}
        self._channel = channel
        self._logs = 0
        self._progress = 0

    def log(self, message: object, level: str = "info", **metadata: Any) -> None:
        """Record a ``log`` event; after LOG_LIMIT messages, one warning and then silence."""
        self._logs += 1
        if self._logs > LOG_LIMIT + 1:
            return
        if self._logs == LOG_LIMIT + 1:
            level, message, metadata = (
                "warn",
                f"log limit of {LOG_LIMIT} messages reached; later ones dropped",
                {},
            )
        self._channel.send(
            {
                "t": "log",
                "level": _LEVELS.get(str(level).lower(), "info"),
                "message": _truncate(str(message), MAX_MESSAGE_CHARS),
                "metadata": _metadata(metadata),
            }
        )

    def progress(self, current: int, total: int, message: str | None = None) -> None:
        """Record an ``execution.progress`` event."""
        current, total = int(current), int(total)
        self._progress += 1
        if self._progress <= PROGRESS_LIMIT:
            text = None if message is None else _truncate(str(message), MAX_MESSAGE_CHARS)
            self._channel.send({"t": "progress", "current": current, "total": total, "message": text})


class LogStream(io.TextIOBase):
    """A text stream whose lines become log messages (for ``print`` and ``sys.stderr``)."""

    def __init__(self, context: Context, level: str, stream: str) -> None:
        self._context, self._level, self._stream = context, level, stream
        self._buffer = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._buffer += text
        while "\n" in self._buffer or len(self._buffer) > MAX_MESSAGE_CHARS:
            line, sep, rest = self._buffer.partition("\n")
            if not sep:
                line, rest = self._buffer[:MAX_MESSAGE_CHARS], self._buffer[MAX_MESSAGE_CHARS:]
            self._buffer = rest
            self._context.log(line, self._level, stream=self._stream)
        return len(text)

    def flush(self) -> None:
        if self._buffer:
            line, self._buffer = self._buffer, ""
            self._context.log(line, self._level, stream=self._stream)


def run_user_code(source: str, context: Context) -> Any:
    """Execute the source, then ``main(context)`` (awaited when it is a coroutine)."""
    code = compile(source, FILENAME, "exec")
    linecache.cache[FILENAME] = (len(source), None, source.splitlines(True), FILENAME)
    namespace: dict[str, Any] = {"__name__": "tolstoy_code", "__builtins__": __builtins__}
    exec(code, namespace)
    main = namespace.get("main")
    if not callable(main):
        raise NameError("the code must define a function main(context)")
    value = main(context)
    if isinstance(value, types.CoroutineType):
        import asyncio

        value = asyncio.run(value)
    return value


def describe(exc: BaseException) -> tuple[str, str]:
    """``("ValueError: boom", traceback)`` with only the user's own frames."""
    text = str(exc)
    message = _truncate(f"{type(exc).__name__}: {text}" if text else type(exc).__name__, MAX_ERROR_CHARS)
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == FILENAME]
    lines = traceback.format_list(frames[-TRACEBACK_FRAMES:]) + traceback.format_exception_only(
        type(exc), exc
    )
    return message, "Traceback (most recent call last):\n" + "".join(lines)


def encode_result(value: Any, max_output_bytes: int) -> str | dict[str, Any]:
    """The result line, or the error message to send instead."""
    try:
        line = json.dumps({"t": "result", "value": value}, separators=(",", ":"), allow_nan=False)
    except MemoryError:
        return {"t": "error", "kind": "memory", "message": "MemoryError while encoding the result"}
    except (TypeError, ValueError, RecursionError) as exc:
        return {"t": "error", "kind": "serialize", "message": describe(exc)[0]}
    if len(line) > max_output_bytes + 64:
        message = f"the result is about {len(line)} bytes, over the {max_output_bytes}-byte limit"
        return {"t": "error", "kind": "too_large", "message": message}
    return line


def execute(channel: Channel, data: dict[str, Any], max_output_bytes: int) -> None:
    """Run the user's code with print/stderr captured and send the outcome."""
    context = Context(channel, data)
    sys.stdout = LogStream(context, "info", "stdout")
    sys.stderr = LogStream(context, "warn", "stderr")
    outcome: str | dict[str, Any]
    try:
        outcome = encode_result(run_user_code(str(data.get("source", "")), context), max_output_bytes)
    except MemoryError:
        outcome = {
            "t": "error",
            "kind": "memory",
            "message": "MemoryError",
        }
    except BaseException as exc:
        message, trace = describe(exc)
        outcome = {"t": "error", "kind": "exception", "message": message, "traceback": trace}
    sys.stdout.flush()
    sys.stderr.flush()
    if isinstance(outcome, str):
        channel.write(outcome)
    else:
        channel.send(outcome)


def main() -> None:
    memory_mb, cpu_seconds, max_output_bytes = (int(arg) for arg in sys.argv[1:4])
    channel = Channel(os.fdopen(os.dup(1), "wb"))
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)
    apply_limits(memory_mb, cpu_seconds)
    try:
        data = json.loads(sys.stdin.buffer.read())
    except MemoryError:
        channel.send({"t": "error", "kind": "memory", "message": "MemoryError while reading the inputs"})
        os._exit(0)
    execute(channel, data, max_output_bytes)
    os._exit(0)


if __name__ == "__main__":
    main()
