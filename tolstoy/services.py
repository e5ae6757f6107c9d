"""One process's wiring: store, bus, journal, engine runtime, workers and API services."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import structlog

from tolstoy.config import Settings
from tolstoy.crypto import Cipher
from tolstoy.engine.runner import Stop
from tolstoy.engine.runtime import Runtime
from tolstoy.engine.service import ExecutionService
from tolstoy.engine.worker import Worker
from tolstoy.events.bus import Bus, create_bus
from tolstoy.gateway.hub import Hub
from tolstoy.store import migrate
from tolstoy.store.db import Database
from tolstoy.store.identity import SecretStore
from tolstoy.store.journal import Journal
from tolstoy.store.notify import QueueListener

log = structlog.get_logger(__name__)


@dataclass
class Services:
    """Everything a ``serve`` or ``worker`` process holds; open with ``Services.open``."""

    settings: Settings
    db: Database
    bus: Bus
    journal: Journal
    cipher: Cipher
    secrets: SecretStore
    runtime: Runtime
    executions: ExecutionService
    workers: list[Worker] = field(default_factory=list)
    gateway: Hub | None = None
    """The live gateway (WebSocket/SSE) of this process; set by ``open``."""
    started: float = field(default_factory=time.monotonic)
    grace_s: float = 10.0
    listener: QueueListener | None = None

    @classmethod
    async def open(
        cls, settings: Settings, *, workers: int = 1, migrate_db: bool = True, bus: Bus | None = None
    ) -> Services:
        if migrate_db:
            await migrate.upgrade(settings.database_url)
        db = Database(settings.database_url)
        bus = bus or create_bus(settings.bus_url)
        await bus.start()
        journal = Journal(db, bus)
        cipher = Cipher(settings.secret_key)
        secret_store = SecretStore(db, cipher)
        runtime = Runtime(settings, db, journal, load_secrets=secret_store.values)
        services = cls(
            settings, db, bus, journal, cipher, secret_store, runtime, ExecutionService(db, journal)
        )
        services.executions.signal = services.signal
        services.gateway = Hub(settings, db, bus)
        await services.gateway.start()
        for _ in range(workers):
            services.add_worker()
        return services

    def add_worker(self, concurrency: int | None = None) -> Worker:
        worker = Worker(self.runtime, concurrency=concurrency or self.settings.worker_concurrency)
        self.workers.append(worker)
        worker.start()
        if self.listener is None and not self.db.is_sqlite:
            self.listener = QueueListener(self.settings.database_url, self._wake_workers)
            self.listener.start()
        return worker

    def _wake_workers(self) -> None:
        for worker in self.workers:
            worker.wake()

    def signal(self, execution_id: str, stop: Stop, by: str | None) -> bool:
        return any(w.signal(execution_id, stop, by) for w in self.workers)

    async def close(self, grace_s: float | None = None) -> None:
        grace_s = self.grace_s if grace_s is None else grace_s
        if self.listener is not None:
            await self.listener.close()
        for worker in self.workers:
            await worker.stop(grace_s)
        await self.journal.close()
        if self.gateway is not None:
            await self.gateway.close()
        await self.bus.close()
        await self.db.dispose()
        from tolstoy.net import aclose_http_client

        await aclose_http_client()
