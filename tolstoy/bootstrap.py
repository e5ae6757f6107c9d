"""First start: an organization, an admin and a key, written where the CLI finds them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tolstoy import jsonutil
from tolstoy.config import Settings
from tolstoy.store import identity
from tolstoy.store.db import Database


def credentials_path(settings: Settings) -> Path:
    return settings.home / "credentials"


def write_credentials(path: Path, data: dict[str, Any]) -> None:
    """Write the credentials file readable by its owner only (0600), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(jsonutil.dumpb(data))
    os.replace(tmp, path)


def read_credentials(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = jsonutil.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data


async def ensure_bootstrap(db: Database, settings: Settings, url: str) -> dict[str, Any] | None:
    """Create the first organization when the store is empty; return the new credentials, else None."""
    if not await identity.is_empty(db):
        return None
    org, key = await identity.create_organization(db, "default", bootstrap=True)
    creds = {"url": url, "apiKey": key, "orgId": org["id"]}
    write_credentials(credentials_path(settings), creds)
    return creds
