"""The per-connection outbox: one write per tick, conflation under backpressure, 4008 on overflow."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from tolstoy.events.types import Event, encode_event
from tolstoy.gateway.connection import Outbox
from tolstoy.gateway.frames import Frame, event_frame
from tolstoy.gateway.protocol import json_string
from tolstoy.gateway.sse import SseSink

CHANNEL = json_string("executions:exec_1")


class FakeSink:
    def __init__(self) -> None:
        self.paused = False
        self.writes: list[list[Frame]] = []
        self.closed: tuple[int, str] | None = None

    def send(self, frames: list[Frame]) -> None:
        self.writes.append(list(frames))

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def delivered(self) -> list[dict[str, object]]:
        return [orjson.loads(f.payload) for write in self.writes for f in write]


def ev(seq: int, type_: str = "log", step: str | None = "a", level: str = "info", size: int = 10) -> Event:
    fields: dict[str, object] = {"stepId": step, "pad": "x" * size}
    if type_ == "log":
        fields["level"] = level
    return encode_event(
        execution_id="exec_1", org_id="o", flow_id="f", seq=seq, type=type_, ts=0, fields=fields
    )


def make(sink: FakeSink, **limits: int) -> tuple[Outbox, list[Outbox]]:
    scheduled: list[Outbox] = []
    return Outbox(sink, scheduled.append, **limits), scheduled


def test_every_frame_of_a_tick_goes_out_in_one_write() -> None:
    sink = FakeSink()
    outbox, scheduled = make(sink)
    for seq in range(1, 6):
        outbox.push(event_frame(ev(seq), CHANNEL))
    assert scheduled == [outbox]  # scheduled once, however many frames
    outbox.flush()
    assert len(sink.writes) == 1 and [f["data"]["seq"] for f in sink.delivered()] == [1, 2, 3, 4, 5]
    assert outbox.sent == 5


def test_while_paused_logs_and_progress_are_conflated_and_lifecycle_events_kept() -> None:
    sink = FakeSink()
    outbox, _ = make(sink)
    sink.paused = True
    kinds = [
        (1, "step.started"),
        (2, "log"),
        (3, "execution.progress"),
        (4, "log"),
        (5, "step.completed"),
        (6, "execution.progress"),
        (7, "log"),
    ]
    for seq, type_ in kinds:
        outbox.push(event_frame(ev(seq, type_), CHANNEL))
    outbox.flush()
    assert sink.writes == []  # nothing goes to a paused sink
    sink.paused = False
    outbox.flush()
    delivered = sink.delivered()
    assert [d["data"]["seq"] for d in delivered] == [1, 5, 6, 7]
    assert {d["data"]["seq"]: d.get("conflated") for d in delivered} == {1: None, 5: None, 6: [3], 7: [2, 4]}
    assert outbox.conflated == 3


def test_error_logs_and_other_steps_are_never_conflated() -> None:
    sink = FakeSink()
    outbox, _ = make(sink)
    sink.paused = True
    outbox.push(event_frame(ev(1, level="error"), CHANNEL))
    outbox.push(event_frame(ev(2, step="b"), CHANNEL))
    outbox.push(event_frame(ev(3, level="error"), CHANNEL))
    outbox.push(event_frame(ev(4, step="a"), CHANNEL))
    sink.paused = False
    outbox.flush()
    assert [d["data"]["seq"] for d in sink.delivered()] == [1, 2, 3, 4]


async def test_overflow_closes_the_outbox_and_reports_the_slow_consumer() -> None:
    sink = FakeSink()
    outbox, _ = make(sink, max_messages=3)
    overflowed: list[bool] = []
    outbox.on_overflow = lambda: overflowed.append(True)
    sink.paused = True
    for seq in range(1, 5):
        outbox.push(event_frame(ev(seq, "step.completed"), CHANNEL))
    assert outbox.closed and outbox.frames == []
    await asyncio.sleep(0)  # reported on the next tick, never inside a fan-out loop
    assert overflowed == [True]
    outbox.push(event_frame(ev(9, "step.completed"), CHANNEL))
    assert outbox.frames == []


def test_a_single_frame_larger_than_the_bound_still_goes() -> None:
    sink = FakeSink()
    outbox, _ = make(sink, max_bytes=1000)
    outbox.push(event_frame(ev(1, "step.completed", size=5000), CHANNEL))
    assert not outbox.closed
    outbox.flush()
    assert len(sink.delivered()) == 1


def test_control_frames_are_not_counted_as_deliveries() -> None:
    sink = FakeSink()
    outbox, _ = make(sink)
    outbox.push(Frame(b'{"type":"pong"}'))
    outbox.push(event_frame(ev(1), CHANNEL))
    outbox.flush()
    assert outbox.sent == 1 and len(sink.writes[0]) == 2


@pytest.mark.timeout(5)
async def test_room_waits_for_the_sink_to_drain() -> None:
    sink = FakeSink()
    outbox, _ = make(sink)
    sink.paused = True
    outbox.push(event_frame(ev(1, size=300_000), CHANNEL))
    waiter = asyncio.create_task(outbox.room())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    sink.paused = False
    outbox.resumed()  # schedules the flush
    outbox.flush()
    await asyncio.wait_for(waiter, 1)


async def test_an_sse_delivery_that_replaced_others_carries_their_seqs_in_data() -> None:
    sink = SseSink(ids="seq")
    outbox, _ = make(sink)  # type: ignore[arg-type]
    sink.attach(outbox)
    body = sink.stream(heartbeat_s=5)
    assert await anext(body) == b"retry: 2000\n\n"
    outbox.push(event_frame(ev(1, "step.started"), CHANNEL))
    outbox.flush()
    assert sink.paused  # the response has not taken the first chunk: what follows waits and conflates
    for seq in (2, 3, 4):
        outbox.push(event_frame(ev(seq), CHANNEL))
    assert await anext(body) == b"".join(
        [b"id: 1\nevent: step.started\ndata: ", ev(1, "step.started").body.encode(), b"\n\n"]
    )
    outbox.flush()
    chunk = await anext(body)
    fields = dict(line.split(": ", 1) for line in chunk.decode().strip().split("\n"))
    assert fields["id"] == "4" and fields["event"] == "log"
    data = orjson.loads(fields["data"])
    assert data["seq"] == 4 and data["conflated"] == [2, 3]
    assert {k: v for k, v in data.items() if k != "conflated"} == orjson.loads(ev(4).body)
    sink.finish()
    with pytest.raises(StopAsyncIteration):
        await anext(body)
