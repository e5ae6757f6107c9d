"""Dashboard sessions: one-time login tokens, the session cookie, and cookie authentication.

A login token is a short-lived JWT (``aud`` ``tolstoy:login``) naming a user in an
organization, with a random ``jti``. Redeeming it inserts a ``web_sessions`` row whose
``login_jti`` is unique: a second redemption, on this process or any other on the same
store, hits the constraint and is refused. The session cookie is another JWT
(``aud`` ``tolstoy:session``) carrying the row's id; every request checks the row, so
logging out revokes the session at once.

Cookie-authenticated requests that change state must come from the dashboard's own
origin: their ``Origin`` (or, without one, ``Referer``) must name the request's host.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal
from urllib.parse import urlsplit

import jwt
from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from starlette.requests import Request

from tolstoy import crypto, ids
from tolstoy.config import Settings
from tolstoy.errors import Forbidden, Unauthorized
from tolstoy.services import Services
from tolstoy.store.db import Database
from tolstoy.store.identity import Principal
from tolstoy.store.tables import organizations, users, web_sessions
from tolstoy.timeutil import iso, now_ms

LOGIN_AUDIENCE = "tolstoy:login"
SESSION_AUDIENCE = "tolstoy:session"
ISSUER = "tolstoy"
ALGORITHM = "HS256"
COOKIE_NAME = "tolstoy_session"
LOGIN_TTL = timedelta(minutes=15)
SESSION_TTL = timedelta(hours=12)
SESSION_ID_PREFIX = "ses"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

RefusalReason = Literal["invalid", "expired", "used"]


class LoginRefused(Unauthorized):
    """A login token that cannot open a session; ``reason`` says why."""

    def __init__(self, reason: RefusalReason, message: str) -> None:
        super().__init__(message)
        self.reason: RefusalReason = reason


@dataclass(frozen=True, slots=True)
class Session:
    """A session opened by a login token: the cookie value and when it stops working."""

    id: str
    cookie: str
    expires_at_ms: int


def _key(settings: Settings) -> bytes:
    return crypto.signing_key(settings.secret_key)


def _encode(settings: Settings, claims: dict[str, Any]) -> str:
    return jwt.encode({"iss": ISSUER, **claims}, _key(settings), algorithm=ALGORITHM)


def _decode(settings: Settings, token: str, audience: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(
        token,
        _key(settings),
        algorithms=[ALGORITHM],
        audience=audience,
        issuer=ISSUER,
        options={"require": ["exp", "iat", "jti", "aud", "iss"]},
    )
    return claims


def mint_login_token(
    settings: Settings, org_id: str, user_id: str, ttl: timedelta = LOGIN_TTL
) -> tuple[str, int]:
    """A one-time login token for ``user_id`` of ``org_id``; returns (token, expiry in epoch ms)."""
    if not timedelta(0) < ttl <= SESSION_TTL:
        raise ValueError(f"a login token lives between 0 and {SESSION_TTL}, got {ttl}")
    now_s = now_ms() // 1000
    exp_s = now_s + int(ttl.total_seconds())
    claims = {
        "aud": LOGIN_AUDIENCE,
        "jti": secrets.token_urlsafe(24),
        "org_id": org_id,
        "user_id": user_id,
        "iat": now_s,
        "exp": exp_s,
    }
    return _encode(settings, claims), exp_s * 1000


def _login_claims(settings: Settings, token: str) -> dict[str, Any]:
    try:
        claims = _decode(settings, token, LOGIN_AUDIENCE)
    except jwt.ExpiredSignatureError:
        raise LoginRefused("expired", "this login link has expired") from None
    except jwt.InvalidTokenError:
        raise LoginRefused("invalid", "this login link is not valid") from None
    if not all(isinstance(claims.get(k), str) for k in ("jti", "org_id", "user_id")):
        raise LoginRefused("invalid", "this login link is not valid")
    return claims


async def redeem_login_token(
    db: Database, settings: Settings, token: str, ttl: timedelta = SESSION_TTL
) -> Session:
    """Open a session with a login token; the token can never open another one."""
    claims = _login_claims(settings, token)
    now = now_ms()
    session_id = ids.new_id(SESSION_ID_PREFIX, 24)
    row = {
        "id": session_id,
        "login_jti": claims["jti"],
        "org_id": claims["org_id"],
        "user_id": claims["user_id"],
        "created_at": now,
        "expires_at": now + int(ttl.total_seconds() * 1000),
    }
    try:
        async with db.write() as conn:
            # Expired sessions go; their login tokens expired long before (LOGIN_TTL <= SESSION_TTL).
            await conn.execute(delete(web_sessions).where(web_sessions.c.expires_at < now))
            if await _used(conn, claims["jti"]):
                raise LoginRefused("used", "this login link has already been used")
            if not await _user_exists(conn, claims["org_id"], claims["user_id"]):
                raise LoginRefused("invalid", "this login link names a user that does not exist")
            await conn.execute(insert(web_sessions).values(**row))
    except IntegrityError:  # a concurrent redemption of the same token won the race
        raise LoginRefused("used", "this login link has already been used") from None
    cookie = _encode(
        settings,
        {
            "aud": SESSION_AUDIENCE,
            "jti": session_id,
            "sid": session_id,
            "org_id": claims["org_id"],
            "user_id": claims["user_id"],
            "iat": now // 1000,
            "exp": row["expires_at"] // 1000,
        },
    )
    return Session(session_id, cookie, row["expires_at"])


async def _used(conn: Any, jti: str) -> bool:
    stmt = select(web_sessions.c.id).where(web_sessions.c.login_jti == jti)
    return (await conn.execute(stmt)).first() is not None


async def _user_exists(conn: Any, org_id: str, user_id: str) -> bool:
    stmt = select(users.c.id).where(users.c.org_id == org_id, users.c.id == user_id)
    return (await conn.execute(stmt)).first() is not None


def session_claims(settings: Settings, cookie: str) -> dict[str, Any] | None:
    """The claims of a well-signed, unexpired session cookie, else None."""
    try:
        claims = _decode(settings, cookie, SESSION_AUDIENCE)
    except jwt.InvalidTokenError:
        return None
    if not all(isinstance(claims.get(k), str) for k in ("sid", "org_id", "user_id")):
        return None
    return claims


async def session_principal(db: Database, settings: Settings, cookie: str) -> Principal | None:
    """Who a session cookie belongs to, if the session is open (not expired, not logged out)."""
    claims = session_claims(settings, cookie)
    if claims is None:
        return None
    stmt = (
        select(users.c.role, users.c.is_bootstrap)
        .join(web_sessions, web_sessions.c.user_id == users.c.id)
        .where(
            web_sessions.c.id == claims["sid"],
            web_sessions.c.org_id == claims["org_id"],
            web_sessions.c.user_id == claims["user_id"],
            web_sessions.c.revoked_at.is_(None),
            web_sessions.c.expires_at > now_ms(),
        )
    )
    async with db.read() as conn:
        row = (await conn.execute(stmt)).first()
    if row is None:
        return None
    return Principal(claims["org_id"], claims["user_id"], claims["sid"], row.role, bool(row.is_bootstrap))


async def session_active(db: Database, org_id: str, session_id: str) -> bool:
    """Whether session ``session_id`` of ``org_id`` is still open (for credentials derived from it)."""
    stmt = select(web_sessions.c.id).where(
        web_sessions.c.id == session_id,
        web_sessions.c.org_id == org_id,
        web_sessions.c.revoked_at.is_(None),
        web_sessions.c.expires_at > now_ms(),
    )
    async with db.read() as conn:
        return (await conn.execute(stmt)).first() is not None


def is_session(principal: Principal) -> bool:
    """Whether the caller authenticated with the dashboard's cookie rather than an API key."""
    return principal.key_id.startswith(SESSION_ID_PREFIX + "_")


async def revoke(db: Database, settings: Settings, cookie: str) -> None:
    """Log out: the session stops working on every process at once."""
    claims = session_claims(settings, cookie)
    if claims is None:
        return
    async with db.write() as conn:
        stmt = (
            update(web_sessions)
            .where(web_sessions.c.id == claims["sid"], web_sessions.c.revoked_at.is_(None))
            .values(revoked_at=now_ms())
        )
        await conn.execute(stmt)


def check_same_origin(request: Request) -> None:
    """Refuse a state-changing cookie request that does not come from this host (CSRF)."""
    if request.method.upper() not in UNSAFE_METHODS:
        return
    source = request.headers.get("origin") or request.headers.get("referer")
    host = request.headers.get("host", "").lower()
    if not source or source == "null":
        raise Forbidden("cross-site request refused: a cookie-authenticated change needs an Origin header")
    origin = urlsplit(source).netloc.lower()
    if not host or origin != host:
        raise Forbidden(f"cross-site request refused: origin {origin!r} is not this server ({host!r})")


async def cookie_principal(request: Request, services: Services) -> Principal | None:
    """The principal of the request's session cookie; None without one. Raises Forbidden on CSRF."""
    cookie = request.cookies.get(COOKIE_NAME)
    if not cookie:
        return None
    check_same_origin(request)
    return await session_principal(services.db, services.settings, cookie)


async def bootstrap_admin(db: Database) -> tuple[str, str] | None:
    """(org id, user id) of the bootstrap admin, else the first admin of the oldest organization."""
    stmt = (
        select(users.c.org_id, users.c.id)
        .join(organizations, organizations.c.id == users.c.org_id)
        .where(users.c.role == "admin")
        .order_by(users.c.is_bootstrap.desc(), organizations.c.created_at, users.c.created_at)
        .limit(1)
    )
    async with db.read() as conn:
        row = (await conn.execute(stmt)).first()
    return (row.org_id, row.id) if row is not None else None


async def login_url(db: Database, settings: Settings, base_url: str) -> str | None:
    """``{base_url}/login?token=…`` for the bootstrap admin; None when the store has no admin yet."""
    admin = await bootstrap_admin(db)
    if admin is None:
        return None
    token, _ = mint_login_token(settings, *admin)
    return f"{base_url.rstrip('/')}/login?token={token}"


def login_link(base_url: str, token: str, expires_at_ms: int) -> dict[str, Any]:
    """The API's shape of a login link."""
    return {
        "token": token,
        "url": f"{base_url.rstrip('/')}/login?token={token}",
        "expiresAt": iso(expires_at_ms),
    }
