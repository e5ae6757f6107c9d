"""One organization's share of a gateway process: its bus subscription, its topics, its resync.

A route exists while some client of this process watches the organization; it
subscribes to that organization's bus channel (and only that one) and routes
each committed event to the topics it belongs to. When the bus says it may have
lost messages (``on_resync``, e.g. after a Redis reconnect), the route replays
the organization's events from the store since shortly before the last event
it saw, while holding live events back, and checks every watched execution's
stored ``last_seq``: topics drop what they already delivered and fill what they
missed, so nothing is lost or repeated.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import structlog

from tolstoy.events.bus.base import Subscription as BusSubscription
from tolstoy.events.types import Event
from tolstoy.gateway import history
from tolstoy.gateway.channels import NO_FILTERS, Channel, ChannelKind, Filters
from tolstoy.gateway.topic import Topic
from tolstoy.timeutil import now_ms

if TYPE_CHECKING:
    from tolstoy.gateway.hub import Hub

log = structlog.get_logger(__name__)

LINGER_S = 5.0
"""How long an unwatched organization stays subscribed on the bus (reconnecting clients are common)."""
RESYNC_SLACK_MS = 5_000
"""Resync replays from this long before the last event seen (event times precede their commit)."""
TAIL_IDLE_S = 2.0
TAIL_QUERY_IDS = 500
"""Executions per ``last_seq`` query of the tail check."""
ALL_EXECUTIONS = Channel("executions", ChannelKind.EXECUTIONS)


class OrgRoute:
    """Routes one organization's events to its topics in this process."""

    def __init__(self, hub: Hub, org_id: str) -> None:
        self.hub, self.org_id = hub, org_id
        self.topics: dict[tuple[str, Filters], Topic] = {}
        self.by_execution: dict[str, list[Topic]] = {}
        self.by_flow: dict[str, list[Topic]] = {}
        self.org_wide: list[Topic] = []
        self.holding: list[Sequence[Event]] | None = None
        self.last_event_ts = now_ms()
        self._bus: BusSubscription | None = None
        self._loads: dict[tuple[str, int, int], asyncio.Future[list[Event]]] = {}
        self._linger: asyncio.TimerHandle | None = None
        self._resyncing = self._resync_again = False
        self.ready = asyncio.get_running_loop().create_task(self._open(), name=f"route-{org_id}")

    async def _open(self) -> None:
        self._bus = await self.hub.bus.subscribe(self.org_id, self.on_bus, self.on_resync)

    async def close(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
        await asyncio.gather(self.ready, return_exceptions=True)
        if self._bus is not None:
            await self._bus.close()
            self._bus = None

    # -- topics ----------------------------------------------------------------------------

    def topic(self, channel: Channel, filters: Filters) -> Topic:
        """The topic for ``channel`` with ``filters`` (created and indexed on first use)."""
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        key = (channel.name, filters)
        topic = self.topics.get(key)
        if topic is None:
            topic = self.topics[key] = Topic(channel, filters, self.backfill)
            self._index(topic).append(topic)
        return topic

    def release(self, topic: Topic) -> None:
        """Forget ``topic`` once it has no subscriber; linger, then leave the bus when nothing is left."""
        if not topic.empty or self.topics.get((topic.channel.name, topic.filters)) is not topic:
            return
        del self.topics[(topic.channel.name, topic.filters)]
        index = self._index(topic)
        index.remove(topic)
        if not index and topic.channel.key is not None:
            (self.by_execution if topic.channel.is_execution else self.by_flow).pop(topic.channel.key, None)
        if not self.topics and self._linger is None:
            self._linger = asyncio.get_running_loop().call_later(LINGER_S, self.hub.drop_route, self)

    def _index(self, topic: Topic) -> list[Topic]:
        channel = topic.channel
        if channel.kind is ChannelKind.EXECUTION:
            return self.by_execution.setdefault(channel.key or "", [])
        if channel.kind is ChannelKind.WORKFLOW:
            return self.by_flow.setdefault(channel.key or "", [])
        return self.org_wide

    # -- events ----------------------------------------------------------------------------

    def on_bus(self, events: Sequence[Event]) -> None:
        """The bus handler: every published batch of this organization, in publish order."""
        if self.holding is not None:
            self.holding.append(events)
        else:
            self.dispatch(events)

    def dispatch(self, events: Sequence[Event]) -> None:
        """Hand each event to the topics indexed under it; each topic selects what its channel carries."""
        by_execution, by_flow, org_wide = self.by_execution, self.by_flow, self.org_wide
        for event in events:
            if event.ts > self.last_event_ts:
                self.last_event_ts = event.ts
            topics = by_execution.get(event.execution_id)
            if topics is not None:
                for topic in topics:
                    topic.receive(event)
            if by_flow:
                topics = by_flow.get(event.flow_id)
                if topics is not None:
                    for topic in topics:
                        topic.receive(event)
            for topic in org_wide:
                topic.receive(event)

    async def backfill(self, execution_id: str, after: int, before: int) -> list[Event]:
        """Stored events of one execution strictly between two seqs (equal concurrent reads share a query)."""
        key = (execution_id, after, before)
        load = self._loads.get(key)
        if load is None:
            load = asyncio.ensure_future(self._load(execution_id, after, before))
            self._loads[key] = load
            load.add_done_callback(lambda _: self._loads.pop(key, None))
        return await asyncio.shield(load)

    async def _load(self, execution_id: str, after: int, before: int) -> list[Event]:
        out: list[Event] = []
        while after < before - 1:
            page = await history.execution_page(
                self.hub.db,
                self.org_id,
                execution_id,
                after=after,
                before=before,
                filters=NO_FILTERS,
                with_status=True,
            )
            out.extend(page)
            if len(page) < history.PAGE_SIZE:
                break
            after = page[-1].seq
        return out

    # -- resync ----------------------------------------------------------------------------

    def on_resync(self) -> None:
        self.hub.spawn(self.resync())

    async def resync(self) -> None:
        """Recover what the bus may have lost, from the store (repeats while new resyncs arrive)."""
        if self._resyncing:
            self._resync_again = True
            return
        self._resyncing = True
        try:
            while True:
                self._resync_again = False
                if self.org_wide or self.by_flow:
                    await self._replay_since(self.last_event_ts - RESYNC_SLACK_MS)
                await self.check_tails(idle_s=0.0)
                if not self._resync_again:
                    break
        except Exception as exc:
            log.warning("resync from the store failed", error=str(exc))
        finally:
            self._resyncing = False

    async def _replay_since(self, ts: int) -> None:
        self.holding = []
        try:
            after = await history.first_gid_at(self.hub.db, self.org_id, ts)
            upto = await history.max_gid(self.hub.db, self.org_id)
            while after < upto:
                page = await history.org_page(
                    self.hub.db, self.org_id, ALL_EXECUTIONS, NO_FILTERS, after_gid=after, upto_gid=upto
                )
                if not page:
                    break
                self.dispatch([event for _, event in page])
                after = page[-1][0]
        finally:
            held, self.holding = self.holding or [], None
            for batch in held:
                self.dispatch(batch)

    async def check_tails(self, idle_s: float = TAIL_IDLE_S) -> None:
        """Compare watched executions with the store and fetch any events the bus did not bring.

        Catches a lost last event (no later event would reveal the gap). Checked
        are the executions of per-execution topics and those org-wide topics saw
        lately (``Topic.quiet_executions``, bounded), once quiet for ``idle_s``;
        one query per ``TAIL_QUERY_IDS`` of them.
        """
        due = self._quiet_tails(time.monotonic(), idle_s)
        ids = list(due)
        behind: dict[Topic, dict[str, int]] = {}
        for start in range(0, len(ids), TAIL_QUERY_IDS):
            stored = await history.last_seqs(self.hub.db, self.org_id, ids[start : start + TAIL_QUERY_IDS])
            for execution_id, last_seq in stored.items():
                for topic in due[execution_id]:
                    behind.setdefault(topic, {})[execution_id] = last_seq
        for topic, last_seqs in behind.items():
            topic.catch_up(last_seqs)

    def _quiet_tails(self, now: float, idle_s: float) -> dict[str, list[Topic]]:
        """Executions to tail-check, each with the topics to top up."""
        due: dict[str, list[Topic]] = {}
        for execution_id, topics in self.by_execution.items():
            if any(execution_id not in t.terminal and now - t.last_event_at >= idle_s for t in topics):
                due[execution_id] = list(topics)
        for topic in self._org_wide_topics():
            for execution_id in topic.quiet_executions(now, idle_s):
                due.setdefault(execution_id, []).append(topic)
        return due

    def _org_wide_topics(self) -> list[Topic]:
        return [*self.org_wide, *(topic for topics in self.by_flow.values() for topic in topics)]
