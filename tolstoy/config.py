"""Settings, read once from the environment (API.md, "Configuration")."""

from __future__ import annotations

import math
import os
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path

from tolstoy.errors import BadRequest


def _bool(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise BadRequest(f"expected a boolean (true/false), got {value!r}")


def _int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise BadRequest(f"{name} must be an integer, got {raw!r}") from exc


def _seconds(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise BadRequest(f"{name} must be a number of seconds, got {raw!r}") from exc
    if not math.isfinite(value) or value <= 0:
        raise BadRequest(f"{name} must be a positive number of seconds, got {raw!r}")
    return value


def _secret_key(home: Path, env: dict[str, str]) -> str:
    given = env.get("TOLSTOY_SECRET_KEY")
    if given:
        return given
    path = home / "secret_key"
    if path.exists():
        return path.read_text().strip()
    home.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key)
    return key


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything configurable; build with ``Settings.from_env()``."""

    home: Path
    database_url: str
    bus_url: str = "memory://"
    secret_key: str = field(default="", repr=False)
    url: str = "http://127.0.0.1:8000"
    log_level: str = "info"
    log_format: str = "console"
    allow_private_networks: bool = True
    lease_ttl_ms: int = 2000
    lease_renew_ms: int = 500
    poll_interval_ms: int = 200
    park_after_ms: int = 1000
    metrics_token: str | None = field(default=None, repr=False)
    max_definition_bytes: int = 1_048_576
    max_output_bytes: int = 1_048_576
    worker_concurrency: int = 50
    ws_ping_interval_s: float = 25.0
    ws_idle_timeout_s: float = 60.0
    sse_heartbeat_s: float = 15.0

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        home = Path(env.get("TOLSTOY_HOME") or Path.home() / ".tolstoy").expanduser()
        db_url = env.get("TOLSTOY_DATABASE_URL") or f"sqlite+aiosqlite:///{home / 'tolstoy.db'}"
        sqlite = db_url.startswith("sqlite")
        return cls(
            home=home,
            database_url=db_url,
            bus_url=env.get("TOLSTOY_BUS_URL") or "memory://",
            secret_key=_secret_key(home, env),
            url=(env.get("TOLSTOY_URL") or "http://127.0.0.1:8000").rstrip("/"),
            log_level=(env.get("TOLSTOY_LOG_LEVEL") or "info").lower(),
            log_format=(env.get("TOLSTOY_LOG_FORMAT") or "console").lower(),
            allow_private_networks=_bool(env.get("TOLSTOY_ALLOW_PRIVATE_NETWORKS"), sqlite),
            lease_ttl_ms=_int(env, "TOLSTOY_LEASE_TTL_MS", 2000),
            lease_renew_ms=_int(env, "TOLSTOY_LEASE_RENEW_MS", 500),
            poll_interval_ms=_int(env, "TOLSTOY_POLL_INTERVAL_MS", 200),
            park_after_ms=_int(env, "TOLSTOY_PARK_AFTER_MS", 1000),
            metrics_token=env.get("TOLSTOY_METRICS_TOKEN") or None,
            worker_concurrency=_int(env, "TOLSTOY_WORKER_CONCURRENCY", 50),
            ws_ping_interval_s=_seconds(env, "TOLSTOY_WS_PING_INTERVAL_S", 25.0),
            ws_idle_timeout_s=_seconds(env, "TOLSTOY_WS_IDLE_TIMEOUT_S", 60.0),
            sse_heartbeat_s=_seconds(env, "TOLSTOY_SSE_HEARTBEAT_S", 15.0),
        )

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]
