"""Bus backends chosen by URL: ``memory://`` (default) or ``redis://``."""

from __future__ import annotations

import importlib

from tolstoy.errors import BadRequest
from tolstoy.events.bus.base import Bus, Handler, ResyncHandler, Subscription

_BACKENDS = {
    "memory": "tolstoy.events.bus.memory:MemoryBus",
    "redis": "tolstoy.events.bus.redis:RedisBus",
    "rediss": "tolstoy.events.bus.redis:RedisBus",
}


def create_bus(url: str) -> Bus:
    """Build the bus for ``url``; an unknown scheme names the known ones."""
    scheme = url.split("://", 1)[0].lower()
    target = _BACKENDS.get(scheme)
    if target is None:
        raise BadRequest(f"unknown bus URL scheme {scheme!r}; known: {', '.join(sorted(_BACKENDS))}")
    module_name, cls_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    bus: Bus = cls() if scheme == "memory" else cls(url)
    return bus


__all__ = ["Bus", "Handler", "ResyncHandler", "Subscription", "create_bus"]
