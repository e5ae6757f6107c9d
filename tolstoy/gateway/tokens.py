"""Subscribe tokens: short-lived HS256 JWTs scoped to one organization and to channel patterns.

A browser gets one of these from its own backend (which holds the API key) and
connects with ``/ws?token=…``; the token can only subscribe, only within its
organization, and only to channels matching its patterns (fnmatch-style, e.g.
``executions:*``). The audience claim keeps other tokens signed with the same
key (login tokens) from passing as subscribe tokens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

from tolstoy.crypto import signing_key

AUDIENCE = "tolstoy:subscribe"
ALGORITHM = "HS256"
MAX_TTL_S = 24 * 3600
DEFAULT_TTL_S = 3600


@dataclass(frozen=True, slots=True)
class TokenClaims:
    org_id: str
    channels: tuple[str, ...]
    expires_at: float
    """Epoch seconds."""
    key_id: str | None


def looks_like_jwt(credential: str) -> bool:
    return credential.count(".") == 2 and credential.startswith("eyJ")


def mint(
    secret_key: str, org_id: str, channels: list[str], ttl_s: int, key_id: str | None = None
) -> tuple[str, float]:
    """A token for ``channels`` of ``org_id`` valid for ``ttl_s`` seconds; returns (token, expires_at)."""
    now = int(time.time())
    expires_at = now + ttl_s
    claims = {"aud": AUDIENCE, "org": org_id, "ch": channels, "iat": now, "exp": expires_at}
    if key_id is not None:
        claims["kid"] = key_id
    return jwt.encode(claims, signing_key(secret_key), algorithm=ALGORITHM), float(expires_at)


def verify(secret_key: str, token: str) -> TokenClaims | None:
    """The claims of a valid, unexpired subscribe token; None for anything else."""
    try:
        claims = jwt.decode(
            token,
            signing_key(secret_key),
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            options={"require": ["exp", "aud", "org", "ch"]},
        )
    except jwt.PyJWTError:
        return None
    org, channels, kid = claims.get("org"), claims.get("ch"), claims.get("kid")
    if (
        not isinstance(org, str)
        or not isinstance(channels, list)
        or not all(isinstance(c, str) for c in channels)
    ):
        return None
    return TokenClaims(org, tuple(channels), float(claims["exp"]), kid if isinstance(kid, str) else None)
