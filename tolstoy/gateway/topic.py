"""A topic: every subscription of one organization to one channel with the same filters.

The topic is the unit of fan-out. It receives the organization's events in bus
order, keeps only those its channel carries, and keeps its stream duplicate-free
per execution (it tracks the last ``seq`` it delivered of each). On a channel
that carries every event of an execution (``Channel.complete``) it is also
gap-free: a live event that skips ahead makes it hold further events, backfill
the hole from the store, then go on. It applies the filters once, builds the
delivery frame once and pushes that same frame to every live member's outbox.

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
from tolstoy.gateway.protocol import CloseCode, json_string

if TYPE_CHECKING:
    from tolstoy.gateway.session import Session

log = structlog.get_logger(__name__)

MAX_JOIN_BUFFER = 20_000
"""Frames a joining subscription buffers at most (also bounded by its outbox, see ``Subscription``)."""
MAX_TRACKED_EXECUTIONS = 50_000
MAX_TAIL_WATCH = 1_000
"""Executions an org-wide topic keeps for the tail check (the most recently active ones)."""
TAIL_WINDOW_S = 60.0
"""An org-wide topic tail-checks an execution for this long after its last event, then forgets it."""
ORG_WIDE_CATCH_UP_S = 30.0
"""An org-wide subscriber skips duplicates of its replay for at most this long (then at-least-once)."""
BACKFILL_RETRY_DELAYS_S = (0.05, 0.25, 1.0)
"""Waits between reads of a gap while the store fails; then the topic's connections are closed (1013)."""

Backfill = Callable[[str, int, int], Awaitable[list[Event]]]
"""``(execution_id, after_seq, before_seq)`` → the stored events strictly between, in order."""
Gap = tuple[str, int, int]
"""``(execution_id, after_seq, before_seq)``: the events a topic is missing."""
_background: set[asyncio.Task[None]] = set()


def _spawn(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` in the background, keeping a reference until it ends."""
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


def _seen(recent: dict[str, float], execution_id: str, now: float, ended: bool) -> None:
    """Move ``execution_id`` to the most recent end of ``recent`` (or drop it once it ended)."""
    recent.pop(execution_id, None)
    if ended:
        return
    recent[execution_id] = now
    if len(recent) > MAX_TAIL_WATCH:
        del recent[next(iter(recent))]


class SubState(Enum):
    JOINING = "joining"
    CATCHING = "catching"
    LIVE = "live"
    CLOSED = "closed"


class Subscription:
    """One client's subscription to one channel (``executions:{id}`` with ``since`` and filters …).

    Its join buffer is bounded by half its outbox's bounds (messages and bytes):
    whatever it holds can always be pushed at once without closing the client as
    a slow consumer. Beyond, the buffer is dropped and the join replays once more
    from the store (``overflowed``).
    """

    __slots__ = (
        "ahead",
        "buffer",
        "buffer_bytes",
        "channel",
        "deadline",
        "filters",
        "max_buffer_bytes",
        "max_buffer_frames",
        "on_end",
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
        self.buffer_bytes = 0
        self.max_buffer_frames = min(MAX_JOIN_BUFFER, self.outbox.max_messages // 2)
        self.max_buffer_bytes = self.outbox.max_bytes // 2
        self.overflowed = False
        self.ahead: dict[str, int] = {}
        """Per execution, the last ``seq`` this subscription sent that the topic has not delivered yet."""
        self.deadline = 0.0
        self.task: asyncio.Task[None] | None = None
        self.on_end: Callable[[], None] | None = None
        """Called once everything of its execution, terminal event included, has been pushed."""

    def offer(self, frame: Frame) -> None:
        """A frame the topic delivered while this subscription was not yet a live member."""
        if self.state is SubState.JOINING:
            if self.overflowed:
                return
            if len(self.buffer) >= self.max_buffer_frames or (
                self.buffer_bytes + frame.size > self.max_buffer_bytes
            ):
                self.restart_buffer()
                self.overflowed = True
                return
            self.buffer.append(frame)
            self.buffer_bytes += frame.size
            return
        if self.state is SubState.CATCHING:
            self.forward(frame)
            if self._caught_up():  # also when this very frame was the last one it had sent itself
                self.topic.promote(self)

    def restart_buffer(self) -> None:
        """Forget what was buffered (the join reads it from the store instead)."""
        self.buffer, self.buffer_bytes, self.overflowed = [], 0, False

    def buffer_fits(self) -> bool:
        """Whether the outbox can take the whole buffer now without overflowing."""
        return self.outbox.can_take(len(self.buffer), self.buffer_bytes)

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

    def end(self) -> None:
        """Its execution has ended and everything of it was pushed (an SSE stream then ends)."""
        if self.on_end is not None and self.state is not SubState.CLOSED:
            self.on_end()

    def _caught_up(self) -> bool:
        return not self.ahead or (self.deadline > 0 and time.monotonic() > self.deadline)


class Topic:
    """Fan-out of one channel (with one set of filters) to its subscribers in one process."""

    __slots__ = (
        "_backfill",
        "channel",
        "channel_json",
        "complete",
        "filters",
        "holding",
        "joiners",
        "last_event_at",
        "members",
        "recent",
        "seqs",
        "terminal",
    )

    def __init__(self, channel: Channel, filters: Filters, backfill: Backfill) -> None:
        self.channel, self.filters, self._backfill = channel, filters, backfill
        self.channel_json = json_string(channel.name)
        self.complete = channel.complete
        """Whether a ``seq`` skip is a lost event (backfilled), not just an event the channel skips."""
        self.members: dict[Outbox, Subscription] = {}
        self.joiners: list[Subscription] = []
        self.seqs: dict[str, int] = {}
        """Last ``seq`` delivered per execution (the topic's stream is gap-free from there)."""
        self.terminal: set[str] = set()
        self.recent: dict[str, float] | None = {} if self.complete and not channel.is_execution else None
        """Org-wide topics: executions not ended, by the time of their last event, oldest first."""
        self.holding: list[Event] | None = None
        self.last_event_at = time.monotonic()

    @property
    def empty(self) -> bool:
        return not self.members and not self.joiners

    def receive(self, event: Event) -> None:
        """An event of this topic's organization, in bus order (or from the store).

        Delivered when ``channels.selects`` would say so: the channel carries it
        (checked first) and it matches the filters (checked after its ``seq`` is
        tracked, since tracking covers every event the channel carries).
        """
        if not self.channel.carries(event):
            return
        if self.holding is not None:
            self.holding.append(event)
            return
        if not self._advance(event):
            return
        if self.filters.empty or self.filters.matches(event):
            self._deliver(event_frame(event, self.channel_json))
        if event.is_terminal and self.channel.is_execution:
            for sub in tuple(self.members.values()):
                sub.end()

    def _advance(self, event: Event) -> bool:
        """Track ``event``'s ``seq``; False for a duplicate, or when it must wait behind a gap."""
        execution_id, seq = event.execution_id, event.seq
        now = time.monotonic()
        if execution_id and seq > 0:
            last = self.seqs.get(execution_id)
            if last is not None:
                if seq <= last:
                    return False
                if seq > last + 1 and self.complete:
                    self._hold_and_fill([(execution_id, last, seq)], event)
                    return False
            elif len(self.seqs) >= MAX_TRACKED_EXECUTIONS:
                self._forget_finished()
            self.seqs[execution_id] = seq
            if event.is_terminal:
                self.terminal.add(execution_id)
            if self.recent is not None:
                _seen(self.recent, execution_id, now, event.is_terminal)
        self.last_event_at = now
        return True

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
        """After the replay: send what was buffered and not replayed, then go live (or catch up).

        The join calls it only when the buffer fits the outbox (``Subscription.buffer_fits``).
        """
        buffered = sub.buffer
        sub.restart_buffer()
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
        if self.channel.is_execution and self.channel.key in self.terminal:
            sub.end()

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

    def quiet_executions(self, now: float, idle_s: float) -> list[str]:
        """Org-wide topics: executions seen lately, not ended, and quiet for ``idle_s`` (tail check)."""
        if self.recent is None:
            return []
        quiet: list[str] = []
        for execution_id, seen in list(self.recent.items()):
            if now - seen < idle_s:
                break  # oldest first: every later one is more recent still
            if now - seen > TAIL_WINDOW_S:
                del self.recent[execution_id]
            else:
                quiet.append(execution_id)
        return quiet

    def catch_up(self, stored: dict[str, int]) -> None:
        """The store holds these executions up to these seqs: fetch what this topic has not delivered."""
        if self.holding is not None or not self.complete:
            return
        gaps: list[Gap] = []
        for execution_id, last_seq in stored.items():
            last = self.seqs.get(execution_id)
            if last is not None and last < last_seq:
                gaps.append((execution_id, last, last_seq + 1))
        if gaps:
            self.holding = []
            _spawn(self._fill(gaps))

    def _hold_and_fill(self, gaps: list[Gap], event: Event) -> None:
        self.holding = [event]
        _spawn(self._fill(gaps))

    async def _fill(self, gaps: list[Gap]) -> None:
        try:
            found = [await self._read_gap(gap) for gap in gaps]
        except Exception as exc:
            log.warning("gap backfill failed; closing the connections that would miss it", error=str(exc))
            self._abandon()
            return
        metrics.BACKFILLS.inc()
        self._release(gaps, found)

    async def _read_gap(self, gap: Gap) -> list[Event]:
        """The stored events of ``gap``, read again after a short wait while the store fails."""
        for delay in BACKFILL_RETRY_DELAYS_S:
            try:
                return await self._backfill(*gap)
            except Exception as exc:
                log.info("gap backfill failed; retrying", error=str(exc), retry_in_s=delay)
            await asyncio.sleep(delay)
        return await self._backfill(*gap)  # the last attempt: its failure is _fill's to handle

    def _release(self, gaps: list[Gap], found: list[list[Event]]) -> None:
        held, self.holding = self.holding or [], None
        for (execution_id, _, before), missing in zip(gaps, found, strict=True):
            for event in missing:
                self.receive(event)
            # What the store no longer has (retention) is skipped rather than waited for forever.
            if self.seqs.get(execution_id, 0) < before - 1:
                self.seqs[execution_id] = before - 1
        for event in held:
            self.receive(event)

    def _abandon(self) -> None:
        """The store cannot fill a gap: rather than show anyone a hole, close their connections.

        They reconnect and resume with ``since`` (close code 1013, try again later).
        Held events are dropped: every subscriber that would have got them is closed.
        """
        self.holding = None
        for sub in (*self.members.values(), *self.joiners):
            sub.session.close(CloseCode.TRY_AGAIN_LATER, "events could not be read; resume with since")

    def _forget_finished(self) -> None:
        for execution_id in self.terminal:
            self.seqs.pop(execution_id, None)
        self.terminal.clear()
        while len(self.seqs) >= MAX_TRACKED_EXECUTIONS:
            self.seqs.pop(next(iter(self.seqs)))
