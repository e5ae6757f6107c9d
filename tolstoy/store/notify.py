"""Wake-ups across processes: PostgreSQL LISTEN on the queue channel (SQLite: polling only).

The journal issues ``NOTIFY`` in the transaction that makes work due (a new execution, a
resume, an approval decision), so PostgreSQL delivers it on commit; idle workers of every
process claim at once instead of at their next poll. A lost notification only costs one
poll interval: the listener reconnects with backoff and wakes everyone when it does.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from typing import Any

import structlog
from sqlalchemy.engine import make_url

from tolstoy.store.journal import QUEUE_CHANNEL

log = structlog.get_logger(__name__)


class QueueListener:
    """Calls ``wake()`` on every queue notification, for as long as it runs."""

    def __init__(self, database_url: str, wake: Callable[[], None]) -> None:
        url = make_url(database_url).set(drivername="postgresql")
        self._dsn = url.render_as_string(hide_password=False)
        self._wake = wake
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="queue-listener")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        import asyncpg

        delay = 0.1
        while True:
            try:
                conn = await asyncpg.connect(self._dsn)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("queue listener cannot connect; retrying", error=str(exc))
                await asyncio.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.1
            try:
                await self._listen(conn)
            finally:
                with contextlib.suppress(Exception):
                    await conn.close()

    async def _listen(self, conn: Any) -> None:
        lost = asyncio.Event()

        def on_notify(*_: Any) -> None:
            self._wake()

        conn.add_termination_listener(lambda _c: lost.set())
        await conn.add_listener(QUEUE_CHANNEL, on_notify)
        self._wake()  # anything made due while we were not listening
        while not lost.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await lost.wait()
            if not lost.is_set():
                await conn.execute("SELECT 1")  # keep-alive; raises if the server went away
