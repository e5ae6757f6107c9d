"""What every runner in a process shares: settings, store, journal, caches."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tolstoy.config import Settings
from tolstoy.engine.definition import FlowDefinition
from tolstoy.store.db import Database
from tolstoy.store.journal import Journal

SecretsLoader = Callable[[str], Awaitable[dict[str, str]]]


async def _no_secrets(org_id: str) -> dict[str, str]:
    return {}


@dataclass
class Runtime:
    """Per-process engine context; definitions are parsed once per flow version."""

    settings: Settings
    db: Database
    journal: Journal
    load_secrets: SecretsLoader = _no_secrets
    _definitions: dict[tuple[str, int], FlowDefinition] = field(default_factory=dict)

    def definition(self, flow_id: str, version: int, raw: dict[str, Any]) -> FlowDefinition:
        key = (flow_id, version)
        cached = self._definitions.get(key)
        if cached is None:
            cached = FlowDefinition.model_validate(raw)
            if len(self._definitions) > 2048:
                self._definitions.clear()
            self._definitions[key] = cached
        return cached
