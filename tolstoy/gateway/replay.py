"""Joining a channel: snapshot, replay from the store, then live — without a gap or a duplicate.

The race between the replay query and live events is closed by ordering:

1. the subscription is attached to its topic first, so it buffers every event
   the topic delivers from now on (the organization's bus channel is already
   subscribed: ``route.ready``);
2. then the store is read: the snapshot and its ``lastSeq`` M (one read
   transaction), then the events after ``since`` up to M, in pages of
   ``history.PAGE_SIZE``, each read only once the client's outbox has room;
3. then the buffer is drained, skipping every ``seq`` at or below what was
   replayed, and the subscription becomes a live member of the topic as soon as
   the topic's stream has reached M (the topic itself fills gaps from the store).

Anything committed after step 2's read is published after it, hence buffered in
step 1 or delivered live; anything before is in the replay. The buffer is
pushed to the outbox in one go, so it is bounded by the outbox's own bounds: if
it overflows during a long replay, or would not fit the outbox when the replay
ends, it is dropped and the replay simply continues from the store (under flow
control) up to its new end.

Every replayed event also passes ``channels.selects``, the test live events pass.
When the execution of an ``executions:{id}`` join has already ended, the
subscription is told so once its replay is pushed (``Subscription.end``: an SSE
stream then ends).

Org-wide channels resume from an event id (its ``gid``) or a timestamp and are
at-least-once: on PostgreSQL, transactions can commit out of ``gid`` order, so
a resume from an event id starts a little earlier (``ORG_SINCE_SLACK_MS``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tolstoy.events.types import Event
from tolstoy.gateway import history, snapshot
from tolstoy.gateway.channels import Channel, ChannelKind, selects
from tolstoy.gateway.connection import Outbox
from tolstoy.gateway.frames import Frame, event_frame
from tolstoy.gateway.protocol import ErrorCode, ProtocolError, RequestId
from tolstoy.gateway.topic import ORG_WIDE_CATCH_UP_S, Subscription
from tolstoy.timeutil import parse_iso

if TYPE_CHECKING:
    from tolstoy.gateway.hub import Hub

ORG_SINCE_SLACK_MS = 2_000


@dataclass(frozen=True, slots=True)
class OrgSince:
    """Where an org-wide replay starts: after an event (``executionId:seq``) or at a time (epoch ms)."""

    event_id: tuple[str, int] | None = None
    ts: int | None = None


Since = int | OrgSince | None


def parse_since(channel: Channel, value: Any) -> Since:
    """``since`` for ``channel``: a ``seq`` on ``executions:{id}``, an event id or a time elsewhere."""
    if value is None:
        return None
    if channel.is_execution:
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, f"'since' on {channel.name!r} must be a seq (an integer >= 0)"
            )
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return OrgSince(ts=value)
    if isinstance(value, str) and value:
        return _org_since_text(value)
    raise ProtocolError(
        ErrorCode.BAD_REQUEST,
        "'since' must be an event id ('{executionId}:{seq}'), an ISO timestamp or epoch milliseconds",
    )


def _org_since_text(value: str) -> OrgSince:
    if value[0].isdigit():
        try:
            return OrgSince(ts=int(value) if value.isdigit() else parse_iso(value))
        except ValueError:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, f"'since' {value!r} is not an ISO-8601 timestamp"
            ) from None
    execution_id, sep, seq = value.rpartition(":")
    if not sep or not execution_id or not seq.isdigit():
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f"'since' {value!r} is not an event id ('{{executionId}}:{{seq}}')"
        )
    return OrgSince(event_id=(execution_id, int(seq)))


async def join(hub: Hub, sub: Subscription, since: Since, request_id: RequestId) -> None:
    """Run the join of an attached subscription (see the module docstring)."""
    await hub.routes[sub.session.org_id].ready
    if sub.channel.is_execution:
        await _join_execution(hub, sub, since if isinstance(since, int) else None, request_id)
    else:
        await _join_org(hub, sub, since if isinstance(since, OrgSince) else None, request_id)


async def _join_execution(hub: Hub, sub: Subscription, since: int | None, request_id: RequestId) -> None:
    org_id, execution_id = sub.session.org_id, sub.channel.key or ""
    snap = await snapshot.read(hub.db, org_id, execution_id)
    if snap is None:
        raise ProtocolError(ErrorCode.NOT_FOUND, f"execution {execution_id!r} not found")
    upto: int = snap["lastSeq"]
    sub.topic.seqs.setdefault(execution_id, upto)  # the topic's stream goes on from here (or earlier)
    after = upto if since is None else since  # a since beyond lastSeq: nothing to replay, skip up to it live
    if sub.session.announces:
        count = await history.count_execution(
            hub.db, org_id, execution_id, after=after, upto=upto, filters=sub.filters
        )
        data = {"channel": sub.channel.name, "replayed": count, "lastSeq": upto, "snapshot": snap}
        sub.session.reply("subscribed", data, request_id)
    await _replay_execution(hub, sub, after, upto)
    sent, status = max(upto, after), snap["status"]
    while await _replay_again(sub):
        status, newest = await history.execution_state(hub.db, org_id, execution_id) or (status, upto)
        await _replay_execution(hub, sub, sent, newest)
        sent = max(sent, newest)
    sub.ahead = {execution_id: sent}
    sub.topic.finish_join(sub)
    if history.is_finished(status):  # the replay went up to its end: nothing more will come
        sub.end()


async def _replay_again(sub: Subscription) -> bool:
    """Whether the live buffer must be dropped and the store read once more before going live.

    It must when it overflowed during the replay, or when the outbox cannot take
    all of it at once now: a join never overflows its own connection.
    """
    await sub.outbox.room()
    if sub.outbox.closed or (not sub.overflowed and sub.buffer_fits()):
        return False
    sub.restart_buffer()
    return True


async def _replay_execution(hub: Hub, sub: Subscription, after: int, upto: int) -> None:
    org_id, execution_id = sub.session.org_id, sub.channel.key or ""
    while after < upto and not sub.outbox.closed:
        page = await history.execution_page(
            hub.db, org_id, execution_id, after=after, before=upto + 1, filters=sub.filters
        )
        await _send(sub.outbox, _frames(sub, page))
        if len(page) < history.PAGE_SIZE:
            return
        after = page[-1].seq


def _frames(sub: Subscription, page: list[Event]) -> list[Frame]:
    """The deliveries of a replayed page (the query selects already; this is the same test as live)."""
    channel, filters, channel_json = sub.channel, sub.filters, sub.topic.channel_json
    return [event_frame(e, channel_json) for e in page if selects(channel, filters, e)]


async def _send(outbox: Outbox, frames: list[Frame]) -> None:
    """Push frames, waiting for room whenever the next one would pass the flow-control mark."""
    for frame in frames:
        if outbox.crowded(frame.size):
            await outbox.room()
        outbox.push(frame)
    await outbox.room()


async def _join_org(hub: Hub, sub: Subscription, since: OrgSince | None, request_id: RequestId) -> None:
    org_id, channel = sub.session.org_id, sub.channel
    if channel.kind is ChannelKind.WORKFLOW and not await history.flow_exists(
        hub.db, org_id, channel.key or ""
    ):
        raise ProtocolError(ErrorCode.NOT_FOUND, f"flow {channel.key!r} not found")
    upto = await history.max_gid(hub.db, org_id)
    after = await _start_gid(hub, org_id, since, upto)
    if sub.session.announces:
        count = await history.count_org(hub.db, org_id, channel, sub.filters, after_gid=after, upto_gid=upto)
        sub.session.reply("subscribed", {"channel": channel.name, "replayed": count}, request_id)
    ahead: dict[str, int] = {}
    await _replay_org(hub, sub, after, upto, ahead)
    while await _replay_again(sub):
        newest = await history.max_gid(hub.db, org_id)
        await _replay_org(hub, sub, upto, newest, ahead)
        upto = newest
    sub.ahead, sub.deadline = ahead, time.monotonic() + ORG_WIDE_CATCH_UP_S
    sub.topic.finish_join(sub)


async def _start_gid(hub: Hub, org_id: str, since: OrgSince | None, newest: int) -> int:
    if since is None:
        return newest
    if since.ts is not None:
        return 0 if since.ts == 0 else await history.first_gid_at(hub.db, org_id, since.ts)
    assert since.event_id is not None
    found = await history.locate(hub.db, org_id, *since.event_id)
    if found is None:
        raise ProtocolError(ErrorCode.NOT_FOUND, f"event {since.event_id[0]}:{since.event_id[1]} not found")
    gid, ts = found
    if hub.db.is_sqlite:  # one writer at a time: gid order is commit order
        return gid
    return min(gid, await history.first_gid_at(hub.db, org_id, ts - ORG_SINCE_SLACK_MS))


async def _replay_org(hub: Hub, sub: Subscription, after: int, upto: int, ahead: dict[str, int]) -> None:
    org_id = sub.session.org_id
    while after < upto and not sub.outbox.closed:
        page = await history.org_page(
            hub.db, org_id, sub.channel, sub.filters, after_gid=after, upto_gid=upto
        )
        events = [event for _, event in page]
        for event in events:
            if event.seq > ahead.get(event.execution_id, 0):
                ahead[event.execution_id] = event.seq
        await _send(sub.outbox, _frames(sub, events))
        if len(page) < history.PAGE_SIZE:
            return
        after = page[-1][0]
