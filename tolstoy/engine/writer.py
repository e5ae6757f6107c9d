"""A runner's writes to the journal: fenced by its lease epoch, and deferred when redoable.

Work that a crash may simply redo — pure steps, skips, the start — need not be
durable before the next step; its write waits (merged, in order) and goes out
with the next one, at the latest ``FLUSH_AFTER_S`` later or when the runner is
about to wait. So a chain of pure steps, and often the start and the end of an
execution with them, commits as one transaction.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from tolstoy.store.journal import Journal, Write

FLUSH_AFTER_S = 0.02
"""A deferred write waits at most this long, so a watcher still sees a long chain progress."""

Events = list[tuple[str, dict[str, Any]]]


class Writer:
    """The fenced writes of one execution's runner; raises LeaseLost or Conflict from the journal."""

    def __init__(self, journal: Journal, execution_id: str, org_id: str, flow_id: str, epoch: int) -> None:
        self.journal = journal
        self.execution_id, self.org_id, self.flow_id, self.epoch = execution_id, org_id, flow_id, epoch
        self._pending: Write | None = None
        self._since = 0.0

    async def commit(
        self,
        events: Events,
        *,
        execution: dict[str, Any] | None,
        steps: Iterable[dict[str, Any]],
        statements: Iterable[Any],
        statuses: tuple[str, ...],
        defer: bool = False,
    ) -> None:
        """Commit (with whatever is pending before it), or with ``defer`` keep it pending."""
        write = self._pending
        if write is not None and write.only_if_status != statuses:
            await self.flush()
            write = None
        if write is None:
            write = Write(
                self.execution_id, self.org_id, self.flow_id, epoch=self.epoch, only_if_status=statuses
            )
            self._since = time.monotonic()
        write.events.extend(events)
        write.execution.update(execution or {})
        write.steps.extend(steps)
        write.statements.extend(statements)
        if defer and time.monotonic() - self._since < FLUSH_AFTER_S:
            self._pending = write
            return
        self._pending = None
        await self.journal.commit(write)

    async def flush(self) -> None:
        """Commit what is pending, if anything."""
        write, self._pending = self._pending, None
        if write is not None:
            await self.journal.commit(write)
