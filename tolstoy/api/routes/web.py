"""The dashboard: its page and static assets, login with a one-time token, logout, login links."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from tolstoy.api import sessions
from tolstoy.api.deps import PrincipalDep, ServicesDep
from tolstoy.errors import Forbidden, NotFound

router = APIRouter(tags=["dashboard"])
WEB_DIR = Path(__file__).resolve().parents[2] / "web"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def _assets() -> dict[str, Path]:
    """Every file the dashboard may serve, by URL path; nothing outside this map is reachable."""
    if not WEB_DIR.is_dir():
        return {}
    return {
        p.relative_to(WEB_DIR).as_posix(): p
        for p in WEB_DIR.rglob("*")
        if p.is_file() and p.suffix in CONTENT_TYPES
    }


ASSETS = _assets()


def _file(path: Path) -> FileResponse:
    headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache"}
    return FileResponse(path, media_type=CONTENT_TYPES[path.suffix], headers=headers)


@router.get("/", include_in_schema=False)
async def dashboard() -> Response:
    page = ASSETS.get("index.html")
    if page is None:
        raise NotFound("the dashboard is not installed (tolstoy/web/index.html is missing)")
    return _file(page)


@router.get("/static/{path:path}", include_in_schema=False)
async def static(path: str) -> Response:
    asset = ASSETS.get(path)
    if asset is None:
        raise NotFound(f"no dashboard asset {path!r}")
    return _file(asset)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} · Tolstoy</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/static/app.css"></head>
<body class="notice-page"><main class="notice" role="main">
<h1>{title}</h1><p>{message}</p><p>{hint}</p>
</main></body></html>
"""

_HINTS = {
    "used": "Each login link works once. Restart <code>tolstoy serve</code> for a new one, or ask for one "
    "with your API key: <code>POST /api/v1/login-tokens</code>.",
    "expired": "Login links are valid for 15 minutes. Restart <code>tolstoy serve</code> for a new one, "
    "or ask for one with your API key: <code>POST /api/v1/login-tokens</code>.",
    "invalid": "Check that you copied the whole link printed by <code>tolstoy serve</code>.",
}


def _refusal_page(refusal: sessions.LoginRefused) -> HTMLResponse:
    body = _PAGE.format(
        title="Cannot sign in",
        message=html.escape(refusal.message[0].upper() + refusal.message[1:] + "."),
        hint=_HINTS[refusal.reason],
    )
    headers = {**SECURITY_HEADERS, "Cache-Control": "no-store"}
    return HTMLResponse(body, status_code=401, headers=headers)


@router.get("/login", include_in_schema=False)
async def login(request: Request, services: ServicesDep, token: str = "") -> Response:
    """Exchange a one-time login token for a session cookie, then open the dashboard."""
    try:
        if not token:
            raise sessions.LoginRefused("invalid", "this login link has no token")
        session = await sessions.redeem_login_token(services.db, services.settings, token)
    except sessions.LoginRefused as refusal:
        return _refusal_page(refusal)
    response = RedirectResponse("/", status_code=303, headers={"Cache-Control": "no-store"})
    response.headers.update(SECURITY_HEADERS)
    response.set_cookie(
        sessions.COOKIE_NAME,
        session.cookie,
        max_age=int(sessions.SESSION_TTL.total_seconds()),
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout", status_code=204, include_in_schema=False)
async def logout(request: Request, services: ServicesDep) -> Response:
    """End the dashboard session (on every process: the session row is revoked)."""
    cookie = request.cookies.get(sessions.COOKIE_NAME)
    if cookie:
        sessions.check_same_origin(request)
        await sessions.revoke(services.db, services.settings, cookie)
    response = Response(status_code=204)
    response.delete_cookie(sessions.COOKIE_NAME, path="/", httponly=True, samesite="strict")
    return response


@router.post("/api/v1/login-tokens", status_code=201, tags=["identity"])
async def create_login_token(
    request: Request, principal: PrincipalDep, services: ServicesDep
) -> dict[str, Any]:
    """A one-time dashboard login link for the caller's user (API keys only, not the dashboard itself)."""
    if sessions.is_session(principal):
        raise Forbidden("a dashboard session cannot mint login links; use an API key")
    token, expires = sessions.mint_login_token(services.settings, principal.org_id, principal.user_id)
    return sessions.login_link(str(request.base_url), token, expires)
