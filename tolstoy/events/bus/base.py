"""The bus: publish/subscribe of already-committed events between processes.

A bus may drop messages (Redis pub/sub is at-most-once); correctness never
depends on it: subscribers detect gaps by ``seq`` and backfill from the store,
and ``on_resync`` tells them when the bus itself may have lost messages.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

from tolstoy.events.types import Event

Handler = Callable[[Sequence[Event]], None]
"""Called with each published batch, in publish order; must not block."""

ResyncHandler = Callable[[], None]
"""Called when messages may have been lost (e.g. after a broker reconnect)."""


class Subscription(ABC):
    """A live registration; ``close()`` stops delivery."""

    @abstractmethod
    async def close(self) -> None:
        """Stop delivering to this subscription."""


class Bus(ABC):
    """Per-organization channels of committed events."""

    @abstractmethod
    async def start(self) -> None:
        """Connect; called once before use."""

    @abstractmethod
    async def close(self) -> None:
        """Disconnect and stop every subscription."""

    @abstractmethod
    async def publish(self, org_id: str, events: Sequence[Event]) -> None:
        """Send committed events of one organization, in order."""

    @abstractmethod
    async def subscribe(
        self, org_id: str, handler: Handler, on_resync: ResyncHandler | None = None
    ) -> Subscription:
        """Deliver every later publish of ``org_id`` to ``handler``."""
