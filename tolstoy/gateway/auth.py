"""Who is watching: an API key or a subscribe token, resolved to a ``Viewer``."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from sqlalchemy import select

from tolstoy.gateway import tokens
from tolstoy.store import identity
from tolstoy.store.db import Database
from tolstoy.store.tables import api_keys, web_sessions
from tolstoy.timeutil import now_ms

SESSION_PREFIX = "ses_"


@dataclass(frozen=True, slots=True)
class Viewer:
    """An authenticated gateway client: its organization and what it may subscribe to."""

    org_id: str
    patterns: tuple[str, ...] | None
    """Channel patterns a token allows; None for an API key (every channel of the organization)."""
    key_id: str | None
    """The API key used, or the one that minted the token (revoking it ends both)."""
    expires_at: float | None = None
    """Epoch seconds after which a token-authenticated connection is closed (4401)."""

    def may_subscribe(self, names: Iterable[str]) -> bool:
        """Whether any of ``names`` (a channel and its canonical alias) matches an allowed pattern."""
        if self.patterns is None:
            return True
        return any(fnmatchcase(name, pattern) for name in names for pattern in self.patterns)

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (now or time.time()) >= self.expires_at


async def authenticate(db: Database, secret_key: str, credential: str | None) -> Viewer | None:
    """The viewer behind ``credential`` (API key or subscribe token); None when it is missing or bad."""
    if not credential:
        return None
    if tokens.looks_like_jwt(credential):
        claims = tokens.verify(secret_key, credential)
        if claims is None:
            return None
        if claims.key_id is not None and not await _key_active(db, claims.org_id, claims.key_id):
            return None
        return Viewer(claims.org_id, claims.channels, claims.key_id, claims.expires_at)
    principal = await identity.authenticate(db, credential)
    if principal is None:
        return None
    return Viewer(principal.org_id, None, principal.key_id)


async def _key_active(db: Database, org_id: str, key_id: str) -> bool:
    return key_id in await _active(db, {key_id}, org_id)


async def revoked_keys(db: Database, key_ids: Iterable[str]) -> set[str]:
    """Those of ``key_ids`` that are revoked or gone (their connections must end)."""
    wanted = set(key_ids)
    return wanted - await _active(db, wanted) if wanted else set()


async def _active(db: Database, ids: set[str], org_id: str | None = None) -> set[str]:
    """The credentials among ``ids`` still valid: API keys (``key_…``) or dashboard sessions (``ses_…``).

    A token minted from the dashboard names the session that minted it; logging out ends it.
    """
    sessions = {i for i in ids if i.startswith(SESSION_PREFIX)}
    keys = ids - sessions
    active: set[str] = set()
    async with db.read() as conn:
        if keys:
            stmt = select(api_keys.c.id).where(api_keys.c.id.in_(keys), api_keys.c.revoked_at.is_(None))
            if org_id is not None:
                stmt = stmt.where(api_keys.c.org_id == org_id)
            active.update(row.id for row in await conn.execute(stmt))
        if sessions:
            stmt = select(web_sessions.c.id).where(
                web_sessions.c.id.in_(sessions),
                web_sessions.c.revoked_at.is_(None),
                web_sessions.c.expires_at > now_ms(),
            )
            if org_id is not None:
                stmt = stmt.where(web_sessions.c.org_id == org_id)
            active.update(row.id for row in await conn.execute(stmt))
    return active
