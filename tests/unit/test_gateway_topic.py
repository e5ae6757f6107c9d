"""Topics: gap-free, duplicate-free fan-out per execution, and the join of a replaying subscriber."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from tests.conftest import wait_until
from tolstoy.events.types import Event, encode_event
from tolstoy.gateway import topic as topic_module
from tolstoy.gateway.auth import Viewer
from tolstoy.gateway.channels import NO_FILTERS, Filters, parse_channel
from tolstoy.gateway.connection import Outbox
from tolstoy.gateway.frames import Frame, event_frame
from tolstoy.gateway.protocol import CloseCode, json_string
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


def ev(seq: int, execution: str = "exec_1", type_: str = "log", **fields: Any) -> Event:
    return encode_event(
        execution_id=execution, org_id="o", flow_id="f", seq=seq, type=type_, ts=0, fields=fields
    )


class Store:
    """A fake event log: every event 1..n of each execution; records backfill calls.

    ``types`` gives the type of some seqs (``log`` otherwise); the first ``failures``
    reads raise, as a store that cannot be reached does.
    """

    def __init__(self, n: int = 100, types: dict[int, str] | None = None, failures: int = 0) -> None:
        self.calls: list[tuple[str, int, int]] = []
        self.n, self.types, self.failures = n, types or {}, failures

    async def backfill(self, execution_id: str, after: int, before: int) -> list[Event]:
        self.calls.append((execution_id, after, before))
        if self.failures:
            self.failures -= 1
            raise ConnectionError("the store is down")
        upto = min(before, self.n + 1)
        return [self.event(s, execution_id) for s in range(after + 1, upto)]

    def event(self, seq: int, execution_id: str = "exec_1") -> Event:
        type_ = self.types.get(seq, "log")
        status = {"status": "completed"} if type_.startswith(("step.", "execution.")) else {}
        return ev(seq, execution_id, type_, **status)


def member(topic: Topic, **limits: int) -> tuple[Subscription, Sink, Outbox]:
    sink = Sink()
    outbox = Outbox(sink, lambda o: None, **limits)
    session = SimpleNamespace(outbox=outbox, closed=[])
    session.close = lambda code, reason: session.closed.append(code)
    sub = Subscription(session, topic.channel, topic.filters, topic)  # type: ignore[arg-type]
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


def types_of(sink: Sink) -> list[tuple[int, str]]:
    return [(f.event.seq, f.event.type) for f in sink.frames if f.event is not None]


async def test_an_approvals_topic_delivers_approval_events_only_and_never_backfills_their_seq_skips() -> None:
    store = Store(types={3: "approval.required", 6: "approval.granted"})
    t = topic(store, "approvals")
    sub, sink, outbox = member(t)
    t.finish_join(sub)
    for seq in (2, 3, 4, 5, 6, 3):  # logs between the approvals; 3 again is a duplicate
        t.receive(store.event(seq))
    outbox.flush()
    assert types_of(sink) == [(3, "approval.required"), (6, "approval.granted")]
    assert store.calls == [] and t.holding is None


async def test_backfilled_events_pass_the_channel_and_the_filters() -> None:
    store = Store(types={3: "step.completed", 5: "approval.required", 6: "step.completed"})
    by_type = topic(store, "executions", Filters(type_prefixes=("step.",)))
    by_status = topic(store, "executions", Filters(statuses=frozenset({"completed"})))
    approvals = topic(store, "approvals")
    sinks = []
    for t in (by_type, by_status, approvals):
        sub, sink, outbox = member(t)
        t.finish_join(sub)
        t.seqs["exec_1"] = 1
        t.receive(store.event(2))
        t.receive(store.event(7))  # 3..6 were lost on the bus
        sinks.append((t, sink, outbox))
    await wait_until(lambda: _released(by_type, by_status), 2, "both backfills")
    for _, _, outbox in sinks:
        outbox.flush()
    assert types_of(sinks[0][1]) == [(3, "step.completed"), (6, "step.completed")]
    assert types_of(sinks[1][1]) == [(3, "step.completed"), (6, "step.completed")]
    assert types_of(sinks[2][1]) == []  # 5 never came live; approvals does not backfill
    assert store.calls == [("exec_1", 2, 7), ("exec_1", 2, 7)]


async def _released(*topics: Topic) -> bool:
    return all(t.holding is None for t in topics)


async def test_a_join_buffer_is_bounded_by_its_outbox_so_it_always_fits() -> None:
    t = topic(Store())
    first, _, _ = member(t)
    live(t, first, 0)
    joiner, _, outbox = member(t, max_messages=10, max_bytes=1 << 20)
    assert joiner.max_buffer_frames == 5 and joiner.max_buffer_bytes == 1 << 19
    for seq in range(1, 6):
        t.receive(ev(seq))
    assert len(joiner.buffer) == 5 and not joiner.overflowed and joiner.buffer_fits()
    t.receive(ev(6))
    assert joiner.overflowed and joiner.buffer == [] and joiner.buffer_bytes == 0
    big = member(t, max_messages=10_000, max_bytes=4096)[0]
    t.receive(ev(7, message="x" * 3000))
    assert big.overflowed, "bounded by bytes as well"
    for _ in range(8):  # another subscription of the connection filled the outbox meanwhile
        outbox.push(event_frame(ev(99, "exec_other"), json_string("executions")))
    joiner.restart_buffer()
    t.receive(ev(8))
    t.receive(ev(9))
    t.receive(ev(10))
    assert not joiner.buffer_fits(), "the join then replays from the store again"


async def test_a_failed_backfill_is_retried_with_backoff(monkeypatch) -> None:
    monkeypatch.setattr(topic_module, "BACKFILL_RETRY_DELAYS_S", (0.0, 0.0), raising=False)
    store = Store(failures=2)
    t = topic(store)
    sub, sink, outbox = member(t)
    live(t, sub, 2)
    t.receive(ev(5))
    await wait_until(lambda: _released(t), 2, "the backfill")
    outbox.flush()
    assert sink.seqs() == [3, 4, 5] and len(store.calls) == 3
    assert sub.session.closed == []


async def test_a_backfill_that_keeps_failing_closes_the_connections_instead_of_skipping(monkeypatch) -> None:
    monkeypatch.setattr(topic_module, "BACKFILL_RETRY_DELAYS_S", (0.0, 0.0), raising=False)
    store = Store(failures=99)
    t = topic(store)
    sub, sink, outbox = member(t)
    live(t, sub, 2)
    joiner, _, _ = member(t)
    t.receive(ev(5))
    t.receive(ev(6))
    await wait_until(lambda: _released(t), 2, "the backfill to give up")
    outbox.flush()
    assert sink.seqs() == [], "nothing after the hole was delivered"
    assert sub.session.closed == [CloseCode.TRY_AGAIN_LATER] == [1013]
    assert joiner.session.closed == [1013]
    assert len(store.calls) == 3 and t.seqs["exec_1"] == 2, "the position did not move past the hole"


async def test_an_org_wide_topic_tail_checks_recent_quiet_executions_and_fills_several_at_once(
    monkeypatch,
) -> None:
    store = Store()
    t = topic(store, "workflows:f")
    sub, sink, outbox = member(t)
    t.finish_join(sub)
    for execution_id in ("exec_a", "exec_b", "exec_c"):
        t.receive(ev(1, execution_id))
    t.receive(ev(2, "exec_c", "execution.completed"))
    later = time.monotonic() + 5
    assert t.quiet_executions(later, 2.0) == ["exec_a", "exec_b"], "ended ones are not checked"
    assert t.quiet_executions(time.monotonic(), 2.0) == [], "nor those seen just now"
    t.catch_up({"exec_a": 3, "exec_b": 2})  # the store has more of both: their last events were lost
    await wait_until(lambda: _released(t), 2, "the tail fill")
    outbox.flush()
    got = [(f.event.execution_id, f.event.seq) for f in sink.frames if f.event is not None]
    assert got[4:] == [("exec_a", 2), ("exec_a", 3), ("exec_b", 2)]
    assert store.calls[-2:] == [("exec_a", 1, 4), ("exec_b", 1, 3)]
    assert t.quiet_executions(time.monotonic() + topic_module.TAIL_WINDOW_S + 1, 2.0) == []
    assert t.recent == {}, "forgotten after the window"
    monkeypatch.setattr(topic_module, "MAX_TAIL_WATCH", 2)
    for n in range(5):
        t.receive(ev(1, f"exec_{n}"))
    assert list(t.recent or {}) == ["exec_3", "exec_4"], "bounded: the most recent ones"
    assert topic(store, "approvals").quiet_executions(later, 2.0) == []


@pytest.mark.parametrize("filters", [NO_FILTERS, Filters(exact_types=frozenset({"log"}))])
async def test_a_per_execution_subscription_is_told_when_its_execution_ended(filters: Filters) -> None:
    t = topic(Store(), filters=filters)
    sub, _, _ = member(t)
    ended: list[bool] = []
    sub.on_end = lambda: ended.append(True)
    live(t, sub, 0)
    t.receive(ev(1))
    assert ended == []
    t.receive(ev(2, type_="execution.completed"))  # told even when the filters hide the event
    assert ended == [True]
    late, _, _ = member(t)
    late_ended: list[bool] = []
    late.on_end = lambda: late_ended.append(True)
    live(t, late, 2)
    assert late_ended == [True], "a subscription going live after the end is told at once"
