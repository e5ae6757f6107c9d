"""A topic: every subscription of one organization to one channel with the same filters.

The topic is the unit of fan-out. It receives the organization's events in bus
order, keeps its stream gap-free and duplicate-free per execution (it tracks the
last ``seq`` it delivered of each; a live event that skips ahead makes it hold
further events, backfill the hole from the store, then go on), applies the
filters once, builds the delivery frame once and pushes that same frame to every
live member's outbox.

A new subscription first *joins*: it buffers what the topic delivers while it
replays from the store, then drops what it already sent (``seq`` at or below
what it replayed) and becomes a live member as soon as the topic's stream has
caught up with it. See ``replay.py`` for the join itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from enum import Enum
from typing import TYPE_CHECKING, Any

import structlog

from tolstoy import metrics
from tolstoy.events.types import Event
from tolstoy.gateway.channels import Channel, Filters
from tolstoy.gateway.connection import Outbox
from tolstoy.gateway.frames import Frame, event_frame
from tolstoy.gateway.protocol import json_string

if TYPE_CHECKING:
    from tolstoy.gateway.session import Session

log = structlog.get_logger(__name__)

MAX_JOIN_BUFFER = 20_000
"""Frames a joining subscription buffers; beyond, it replays once more from the store instead."""
MAX_TRACKED_EXECUTIONS = 50_000
ORG_WIDE_CATCH_UP_S = 30.0
"""An org-wide subscriber skips duplicates of its replay for at most this long (then at-least-once)."""

Backfill = Callable[[str, int, int], Awaitable[list[Event]]]
_background: set[asyncio.Task[None]] = set()


def _spawn(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` in the background, keeping a reference until it ends."""
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


"""``(execution_id, after_seq, before_seq)`` → the stored events strictly between, in order."""


class SubState(Enum):
    JOINING = "joining"
    CATCHING = "catching"
    LIVE = "live"
    CLOSED = "closed"


class Subscription:
    """One client's subscription to one channel (``executions:{id}`` with ``since`` and filters …)."""

    __slots__ = (
        "ahead",
        "buffer",
        "channel",
        "deadline",
        "filters",
        "outbox",
        "overflowed",
        "session",
        "state",
        "task",
        "topic",
    )

    def __init__(self, session: Session, channel: Channel, filters: Filters, topic: Topic) -> None:
        self.session, self.channel, self.filters, self.topic = session, channel, filters, topic
        self.outbox: Outbox = session.outbox
        self.state = SubState.JOINING
        self.buffer: list[Frame] = []
        self.overflowed = False
        self.ahead: dict[str, int] = {}
        """Per execution, the last ``seq`` this subscription sent that the topic has not delivered yet."""
        self.deadline = 0.0
        self.task: asyncio.Task[None] | None = None

    def offer(self, frame: Frame) -> None:
        """A frame the topic delivered while this subscription was not yet a live member."""
        if self.state is SubState.JOINING:
            if len(self.buffer) >= MAX_JOIN_BUFFER:
                self.buffer.clear()
                self.overflowed = True
            elif not self.overflowed:
                self.buffer.append(frame)
            return
        if self.state is SubState.CATCHING and self.forward(frame) and self._caught_up():
            self.topic.promote(self)

    def forward(self, frame: Frame) -> bool:
        """Push ``frame`` unless this subscription already sent its event; False when skipped."""
        event = frame.event
        if event is not None and event.execution_id in self.ahead:
            last = self.ahead[event.execution_id]
            if event.seq <= last:
                if event.seq == last:
                    del self.ahead[event.execution_id]
                return False
            del self.ahead[event.execution_id]
        self.outbox.push(frame)
        return True

    def _caught_up(self) -> bool:
        return not self.ahead or (self.deadline > 0 and time.monotonic() > self.deadline)


class Topic:
    """Fan-out of one channel (with one set of filters) to its subscribers in one process."""

    __slots__ = (
        "_backfill",
        "channel",
        "channel_json",
        "filters",
        "holding",
        "joiners",
        "last_event_at",
        "members",
        "seqs",
        "terminal",
    )

    def __init__(self, channel: Channel, filters: Filters, backfill: Backfill) -> None:
        self.channel, self.filters, self._backfill = channel, filters, backfill
        self.channel_json = json_string(channel.name)
        self.members: dict[Outbox, Subscription] = {}
        self.joiners: list[Subscription] = []
        self.seqs: dict[str, int] = {}
        """Last ``seq`` delivered per execution (the topic's stream is gap-free from there)."""
        self.terminal: set[str] = set()
        self.holding: list[Event] | None = None
        self.last_event_at = time.monotonic()

    @property
    def empty(self) -> bool:
        return not self.members and not self.joiners

    def receive(self, event: Event) -> None:
        """An event of this topic's channel, in bus order."""
        if self.holding is not None:
            self.holding.append(event)
            return
        execution_id, seq = event.execution_id, event.seq
        if execution_id and seq > 0:
            last = self.seqs.get(execution_id)
            if last is not None:
                if seq <= last:
                    return
                if seq > last + 1:
                    self._hold_and_backfill(execution_id, last, event)
                    return
            elif len(self.seqs) >= MAX_TRACKED_EXECUTIONS:
                self._forget_finished()
            self.seqs[execution_id] = seq
            if event.is_terminal:
                self.terminal.add(execution_id)
        self.last_event_at = time.monotonic()
        if self.filters.empty or self.filters.matches(event):
            self._deliver(event_frame(event, self.channel_json))

    def _deliver(self, frame: Frame) -> None:
        for outbox in self.members:
            outbox.push(frame)
        if self.joiners:
            for sub in tuple(self.joiners):
                sub.offer(frame)

    # -- membership ------------------------------------------------------------------------

    def add_joiner(self, sub: Subscription) -> None:
        self.joiners.append(sub)
        metrics.SUBSCRIPTIONS.inc()

    def finish_join(self, sub: Subscription) -> None:
        """After the replay: send what was buffered and not replayed, then go live (or catch up)."""
        buffered, sub.buffer = sub.buffer, []
        sub.state = SubState.CATCHING
        for frame in buffered:
            sub.forward(frame)
        for execution_id, last in list(sub.ahead.items()):
            if self.seqs.get(execution_id, 0) >= last:
                del sub.ahead[execution_id]
        if sub.ahead and self.empty_but(sub):
            # Nobody else depends on this topic's position: move it to what the replay sent.
            for execution_id, last in sub.ahead.items():
                self.seqs[execution_id] = max(self.seqs.get(execution_id, 0), last)
            sub.ahead.clear()
        if sub._caught_up():
            self.promote(sub)

    def empty_but(self, sub: Subscription) -> bool:
        return not self.members and all(j is sub for j in self.joiners)

    def promote(self, sub: Subscription) -> None:
        if sub in self.joiners:
            self.joiners.remove(sub)
        sub.state, sub.ahead = SubState.LIVE, {}
        self.members[sub.outbox] = sub

    def remove(self, sub: Subscription) -> None:
        if sub.state is SubState.CLOSED:
            return
        if self.members.get(sub.outbox) is sub:
            del self.members[sub.outbox]
        elif sub in self.joiners:
            self.joiners.remove(sub)
        sub.state = SubState.CLOSED
        metrics.SUBSCRIPTIONS.dec()

    # -- gaps ----------------------------------------------------------------------------

    def catch_up(self, execution_id: str, last_seq: int) -> None:
        """The store holds ``execution_id`` up to ``last_seq``: fetch what this topic has not delivered."""
        last = self.seqs.get(execution_id)
        if last is None or last >= last_seq or self.holding is not None:
            return
        self.holding = []
        _spawn(self._fill(execution_id, last, last_seq + 1))

    def _hold_and_backfill(self, execution_id: str, last: int, event: Event) -> None:
        self.holding = [event]
        _spawn(self._fill(execution_id, last, event.seq))

    async def _fill(self, execution_id: str, after: int, before: int) -> None:
        try:
            missing = await self._backfill(execution_id, after, before)
        except Exception as exc:  # the store is unreachable: deliver what we hold, the client resumes
            log.warning("gap backfill failed", error=str(exc))
            missing = []
        metrics.BACKFILLS.inc()
        self._release(execution_id, before, missing)

    def _release(self, execution_id: str, before: int, missing: list[Event]) -> None:
        held, self.holding = self.holding or [], None
        for event in missing:
            self.receive(event)
        # Whatever the store could not give (retention) is skipped rather than waited for forever.
        if self.seqs.get(execution_id, 0) < before - 1:
            self.seqs[execution_id] = before - 1
        for event in held:
            self.receive(event)

    def _forget_finished(self) -> None:
        for execution_id in self.terminal:
            self.seqs.pop(execution_id, None)
        self.terminal.clear()
        while len(self.seqs) >= MAX_TRACKED_EXECUTIONS:
            self.seqs.pop(next(iter(self.seqs)))
