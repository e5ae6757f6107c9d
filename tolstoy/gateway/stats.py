"""``GET /api/v1/gateway/stats``: what this gateway process serves, for the caller's organization only.

Counts of other organizations are never shown (tenant isolation): clients,
subscriptions per channel, deliveries and drops are all per organization.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tolstoy.gateway.session import Session


@dataclass(slots=True)
class _Totals:
    messages_out: int = 0
    conflated: int = 0
    slow_consumer: int = 0


class GatewayStats:
    """Per-organization totals of sessions that have ended (open ones are read live)."""

    def __init__(self) -> None:
        self._closed: dict[str, _Totals] = {}

    def _totals(self, org_id: str) -> _Totals:
        totals = self._closed.get(org_id)
        if totals is None:
            totals = self._closed[org_id] = _Totals()
        return totals

    def count_slow_consumer(self, org_id: str) -> None:
        self._totals(org_id).slow_consumer += 1

    def session_ended(self, session: Session) -> None:
        totals = self._totals(session.org_id)
        totals.messages_out += session.outbox.sent
        totals.conflated += session.outbox.conflated

    def report(self, org_id: str, sessions: Iterable[Session]) -> dict[str, Any]:
        mine = [s for s in sessions if s.org_id == org_id and not s.closed]
        channels: Counter[str] = Counter(name for s in mine for name in s.subs)
        transports: Counter[str] = Counter(s.transport for s in mine)
        closed = self._closed.get(org_id, _Totals())
        return {
            "totalClients": len(mine),
            "totalSubscriptions": sum(channels.values()),
            "clients": {"ws": transports.get("ws", 0), "sse": transports.get("sse", 0)},
            "channels": dict(sorted(channels.items())),
            "messagesOut": closed.messages_out + sum(s.outbox.sent for s in mine),
            "drops": {
                "conflated": closed.conflated + sum(s.outbox.conflated for s in mine),
                "slowConsumer": closed.slow_consumer,
            },
        }
