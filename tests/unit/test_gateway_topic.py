"""Topics: gap-free, duplicate-free fan-out per execution, and the join of a replaying subscriber."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import orjson

from tolstoy.events.types import Event, encode_event
from tolstoy.gateway.auth import Viewer
from tolstoy.gateway.channels import NO_FILTERS, Filters, parse_channel
from tolstoy.gateway.connection import Outbox
from tolstoy.gateway.frames import Frame
from tolstoy.gateway.topic import Subscription, SubState, Topic

VIEWER = Viewer("o", None, None)


class Sink:
    paused = False

    def __init__(self) -> None:
        self.frames: list[Frame] = []

    def send(self, frames: list[Frame]) -> None:
        self.frames.extend(frames)

    def close(self, code: int, reason: str) -> None:
        pass

    def seqs(self) -> list[int]:
        return [orjson.loads(f.payload)["data"]["seq"] for f in self.frames]


def ev(seq: int, execution: str = "exec_1", type_: str = "log") -> Event:
    return encode_event(execution_id=execution, org_id="o", flow_id="f", seq=seq, type=type_, ts=0, fields={})


class Store:
    """A fake event log: every event 1..n of exec_1; records backfill calls."""

    def __init__(self, n: int = 100) -> None:
        self.calls: list[tuple[str, int, int]] = []
        self.n = n

    async def backfill(self, execution_id: str, after: int, before: int) -> list[Event]:
        self.calls.append((execution_id, after, before))
        return [ev(s, execution_id) for s in range(after + 1, min(before, self.n + 1))]


def member(topic: Topic) -> tuple[Subscription, Sink, Outbox]:
    sink = Sink()
    outbox = Outbox(sink, lambda o: None)
    sub = Subscription(SimpleNamespace(outbox=outbox), topic.channel, topic.filters, topic)  # type: ignore[arg-type]
    topic.add_joiner(sub)
    return sub, sink, outbox


def topic(store: Store, name: str = "executions:exec_1", filters: Filters = NO_FILTERS) -> Topic:
    return Topic(parse_channel(name, VIEWER), filters, store.backfill)


def live(t: Topic, sub: Subscription, upto: int) -> None:
    t.seqs.setdefault("exec_1", upto)
    sub.ahead = {"exec_1": upto}
    t.finish_join(sub)


async def test_duplicates_are_dropped_and_order_kept() -> None:
    t = topic(Store())
    sub, sink, outbox = member(t)
    live(t, sub, 0)
    for seq in (1, 2, 2, 1, 3):
        t.receive(ev(seq))
    outbox.flush()
    assert sink.seqs() == [1, 2, 3]


async def test_a_gap_is_filled_from_the_store_before_later_events() -> None:
    store = Store()
    t = topic(store)
    sub, sink, outbox = member(t)
    live(t, sub, 2)
    t.receive(ev(3))
    t.receive(ev(7))  # 4..6 were lost on the bus
    t.receive(ev(8))  # held until the gap is filled
    await asyncio.sleep(0.01)
    t.receive(ev(6))  # arrives late: a duplicate now
    outbox.flush()
    assert sink.seqs() == [3, 4, 5, 6, 7, 8]
    assert store.calls == [("exec_1", 3, 7)]


async def test_what_the_store_cannot_give_is_skipped_not_waited_for() -> None:
    store = Store(n=4)  # retention removed 5..6
    t = topic(store)
    sub, sink, outbox = member(t)
    live(t, sub, 3)
    t.receive(ev(7))
    await asyncio.sleep(0.01)
    t.receive(ev(8))
    outbox.flush()
    assert sink.seqs() == [4, 7, 8]


async def test_a_joiner_buffers_then_skips_what_it_replayed() -> None:
    t = topic(Store())
    first, first_sink, first_out = member(t)
    live(t, first, 0)
    t.receive(ev(1))
    joiner, sink, outbox = member(t)  # attaches, then "replays" 1..3 from the store
    t.receive(ev(2))
    t.receive(ev(3))
    t.receive(ev(4))
    assert joiner.state is SubState.JOINING and len(joiner.buffer) == 3
    joiner.ahead = {"exec_1": 3}
    t.finish_join(joiner)
    assert joiner.state is SubState.LIVE
    t.receive(ev(5))
    outbox.flush()
    first_out.flush()
    assert sink.seqs() == [4, 5]
    assert first_sink.seqs() == [1, 2, 3, 4, 5]


async def test_a_joiner_ahead_of_the_live_stream_waits_for_it_then_goes_live() -> None:
    t = topic(Store())
    first, _, _ = member(t)
    live(t, first, 0)
    t.receive(ev(1))
    joiner, sink, outbox = member(t)
    joiner.ahead = {"exec_1": 3}  # the store already had 1..3; live has only delivered 1
    t.finish_join(joiner)
    assert joiner.state is SubState.CATCHING
    for seq in (2, 3, 4):
        t.receive(ev(seq))
    assert joiner.state is SubState.LIVE
    outbox.flush()
    assert sink.seqs() == [4]


async def test_filters_apply_after_gap_tracking() -> None:
    t = topic(Store(), filters=Filters(exact_types=frozenset({"step.completed"})))
    sub, sink, outbox = member(t)
    live(t, sub, 0)
    t.receive(ev(1, type_="log"))
    t.receive(ev(2, type_="step.completed"))
    t.receive(ev(3, type_="log"))
    outbox.flush()
    assert sink.seqs() == [2] and t.seqs["exec_1"] == 3


async def test_org_wide_topics_track_each_execution() -> None:
    store = Store()
    t = topic(store, "executions")
    sub, sink, outbox = member(t)
    sub.ahead = {}
    t.finish_join(sub)
    t.receive(ev(5, "exec_a"))  # first sight: no gap can be known
    t.receive(ev(1, "exec_b"))
    t.receive(ev(5, "exec_a"))  # duplicate
    t.receive(ev(6, "exec_a"))
    outbox.flush()
    got: list[Any] = [
        (orjson.loads(f.payload)["data"]["executionId"], orjson.loads(f.payload)["data"]["seq"])
        for f in sink.frames
    ]
    assert got == [("exec_a", 5), ("exec_b", 1), ("exec_a", 6)]
    assert store.calls == []
