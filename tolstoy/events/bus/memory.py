"""The in-process bus (``memory://``): the embedded default."""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from tolstoy.events.bus.base import Bus, Handler, ResyncHandler, Subscription
from tolstoy.events.types import Event

log = structlog.get_logger(__name__)


class _MemorySubscription(Subscription):
    def __init__(self, bus: MemoryBus, org_id: str, handler: Handler) -> None:
        self._bus, self._org_id, self.handler = bus, org_id, handler

    async def close(self) -> None:
        self._bus._remove(self._org_id, self)


class MemoryBus(Bus):
    """Delivers synchronously to every subscriber of the organization in this process."""

    def __init__(self) -> None:
        self._subs: dict[str, list[_MemorySubscription]] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._subs.clear()

    async def publish(self, org_id: str, events: Sequence[Event]) -> None:
        for sub in tuple(self._subs.get(org_id, ())):
            try:
                sub.handler(events)
            except Exception:  # a broken subscriber must not break publishers
                log.exception("bus subscriber failed", org_id=org_id)

    async def subscribe(
        self, org_id: str, handler: Handler, on_resync: ResyncHandler | None = None
    ) -> Subscription:
        sub = _MemorySubscription(self, org_id, handler)
        self._subs.setdefault(org_id, []).append(sub)
        return sub

    def _remove(self, org_id: str, sub: _MemorySubscription) -> None:
        subs = self._subs.get(org_id)
        if subs and sub in subs:
            subs.remove(sub)
            if not subs:
                del self._subs[org_id]
