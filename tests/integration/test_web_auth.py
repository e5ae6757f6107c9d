"""Dashboard sign-in: one-time login tokens, the session cookie, CSRF, tenant isolation, assets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest

from tests.helpers import create_flow
from tolstoy import crypto
from tolstoy.api import sessions
from tolstoy.bootstrap import ensure_bootstrap
from tolstoy.store import identity
from tolstoy.timeutil import now_ms

BASE = "http://tolstoy.test"
SAME_ORIGIN = {"Origin": BASE}
FLOW = {"name": "web-flow", "steps": [{"id": "a", "type": "data_transform", "config": {"expression": "1"}}]}


@pytest.fixture
def transport(services: Any) -> httpx.ASGITransport:
    from tolstoy.api.app import create_app

    async def existing() -> Any:
        return services

    app = create_app(existing)
    app.state.services = services
    return httpx.ASGITransport(app=app)


@pytest.fixture
async def browser(transport: httpx.ASGITransport) -> AsyncIterator[httpx.AsyncClient]:
    """A client with no API key: what the dashboard's browser is (it keeps cookies)."""
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        yield client


async def _admin_of(api: httpx.AsyncClient) -> tuple[str, str]:
    me = (await api.get("/api/v1/me")).json()
    return me["organization"]["id"], me["user"]["id"]


async def _sign_in(browser: httpx.AsyncClient, services: Any, org_id: str, user_id: str) -> None:
    token, _ = sessions.mint_login_token(services.settings, org_id, user_id)
    resp = await browser.get("/login", params={"token": token})
    assert resp.status_code == 303, resp.text
    assert browser.cookies.get(sessions.COOKIE_NAME)


def _forged_login_token(services: Any, **claims: Any) -> str:
    now = now_ms() // 1000
    body = {
        "iss": "tolstoy",
        "aud": sessions.LOGIN_AUDIENCE,
        "jti": "j1",
        "iat": now,
        "exp": now + 60,
        **claims,
    }
    return jwt.encode(body, crypto.signing_key(services.settings.secret_key), algorithm="HS256")


async def test_a_login_token_opens_one_session_and_only_once(api, browser, services, transport) -> None:
    org_id, user_id = await _admin_of(api)
    token, _ = sessions.mint_login_token(services.settings, org_id, user_id)

    first = await browser.get("/login", params={"token": token})
    assert first.status_code == 303 and first.headers["location"] == "/"
    cookie = first.headers["set-cookie"].lower()
    for attribute in ("httponly", "samesite=strict", "path=/", "max-age=43200"):
        assert attribute in cookie, cookie
    me = await browser.get("/api/v1/me")
    assert me.status_code == 200, me.text
    assert me.json()["organization"]["id"] == org_id and me.json()["user"]["id"] == user_id

    again = await httpx.AsyncClient(transport=transport, base_url=BASE).get("/login", params={"token": token})
    assert again.status_code == 401
    assert "already been used" in again.text and "text/html" in again.headers["content-type"]
    assert "set-cookie" not in again.headers


async def test_concurrent_redemptions_of_one_token_open_one_session(api, services) -> None:
    org_id, user_id = await _admin_of(api)
    token, _ = sessions.mint_login_token(services.settings, org_id, user_id)

    async def redeem() -> str:
        try:
            await sessions.redeem_login_token(services.db, services.settings, token)
        except sessions.LoginRefused as refusal:
            return refusal.reason
        return "opened"

    outcomes = await asyncio.gather(*(redeem() for _ in range(5)))
    assert sorted(outcomes) == ["opened", "used", "used", "used", "used"]


async def test_expired_forged_and_foreign_tokens_are_refused(api, browser, services) -> None:
    org_id, user_id = await _admin_of(api)
    now = now_ms() // 1000
    expired = _forged_login_token(services, org_id=org_id, user_id=user_id, iat=now - 3600, exp=now - 60)
    resp = await browser.get("/login", params={"token": expired})
    assert resp.status_code == 401 and "expired" in resp.text

    forged = jwt.encode(
        {"iss": "tolstoy", "aud": sessions.LOGIN_AUDIENCE, "jti": "x", "iat": now, "exp": now + 60,
         "org_id": org_id, "user_id": user_id},
        b"not-the-server-key-but-32-bytes-long!",
        algorithm="HS256",
    )  # fmt: skip
    resp = await browser.get("/login", params={"token": forged})
    assert resp.status_code == 401 and "not valid" in resp.text

    ghost = _forged_login_token(services, org_id=org_id, user_id="usr_nobody")
    assert (await browser.get("/login", params={"token": ghost})).status_code == 401
    assert (await browser.get("/login")).status_code == 401
    assert sessions.COOKIE_NAME not in browser.cookies


async def test_login_and_session_tokens_are_not_api_credentials(api, browser, services, transport) -> None:
    org_id, user_id = await _admin_of(api)
    token, _ = sessions.mint_login_token(services.settings, org_id, user_id)
    resp = await browser.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 401
    await _sign_in(browser, services, org_id, user_id)
    cookie = browser.cookies[sessions.COOKIE_NAME]
    bearer = httpx.AsyncClient(transport=transport, base_url=BASE)
    assert (await bearer.get("/api/v1/me", headers={"Authorization": f"Bearer {cookie}"})).status_code == 401


async def test_the_cookie_authenticates_reads(api, browser, services) -> None:
    org_id, user_id = await _admin_of(api)
    flow_id = await create_flow(api, FLOW)
    assert (await browser.get("/api/v1/flows")).status_code == 401
    await _sign_in(browser, services, org_id, user_id)
    flows = await browser.get("/api/v1/flows")
    assert flows.status_code == 200
    assert [f["id"] for f in flows.json()["items"]] == [flow_id]
    assert (await browser.get("/api/v1/executions")).status_code == 200


async def test_cookie_changes_need_this_origin(api, browser, services) -> None:
    org_id, user_id = await _admin_of(api)
    flow_id = await create_flow(api, FLOW)
    await _sign_in(browser, services, org_id, user_id)
    url = f"/api/v1/flows/{flow_id}/execute"

    cross = await browser.post(url, json={}, headers={"Origin": "http://evil.example"})
    assert cross.status_code == 403 and cross.json()["error"]["code"] == "forbidden"
    assert "cross-site" in cross.json()["error"]["message"]
    assert (await browser.post(url, json={})).status_code == 403  # neither Origin nor Referer
    lookalike = await browser.post(url, json={}, headers={"Origin": "http://tolstoy.test.evil.example"})
    assert lookalike.status_code == 403
    assert (await api.get(f"/api/v1/flows/{flow_id}/executions")).json()["items"] == []

    same = await browser.post(url, json={}, headers=SAME_ORIGIN)
    assert same.status_code == 202, same.text
    by_referer = await browser.post(url, json={}, headers={"Referer": f"{BASE}/#/flows"})
    assert by_referer.status_code == 202, by_referer.text


async def test_an_api_key_still_works_and_is_not_held_to_the_origin_check(api) -> None:
    flow_id = await create_flow(api, FLOW)
    resp = await api.post(f"/api/v1/flows/{flow_id}/execute", json={}, headers={"Origin": "http://elsewhere"})
    assert resp.status_code == 202, resp.text
    assert (await api.get("/api/v1/me")).status_code == 200


async def test_a_cookie_of_org_a_cannot_read_org_b(api, browser, services, transport) -> None:
    org_id, user_id = await _admin_of(api)
    _, key_b = await identity.create_organization(services.db, "org-b")
    api_b = httpx.AsyncClient(
        transport=transport, base_url=BASE, headers={"Authorization": f"Bearer {key_b}"}
    )
    flow_b = await create_flow(api_b, {**FLOW, "name": "b-only"})
    exec_b = (await api_b.post(f"/api/v1/flows/{flow_b}/execute", json={})).json()["executionId"]
    await _sign_in(browser, services, org_id, user_id)

    for path in (
        f"/api/v1/flows/{flow_b}",
        f"/api/v1/executions/{exec_b}",
        f"/api/v1/executions/{exec_b}/events",
    ):
        resp = await browser.get(path)
        assert resp.status_code == 404, path
    assert (await browser.get("/api/v1/flows")).json()["items"] == []
    cancel = await browser.post(f"/api/v1/executions/{exec_b}/cancel", headers=SAME_ORIGIN)
    assert cancel.status_code == 404
    assert (await api_b.get(f"/api/v1/executions/{exec_b}")).json()["status"] != "cancelled"


async def test_logout_ends_the_session_everywhere(api, browser, services, transport) -> None:
    org_id, user_id = await _admin_of(api)
    await _sign_in(browser, services, org_id, user_id)
    cookie = browser.cookies[sessions.COOKIE_NAME]
    assert (await browser.post("/logout", headers={"Origin": "http://evil.example"})).status_code == 403
    assert (await browser.get("/api/v1/me")).status_code == 200

    out = await browser.post("/logout", headers=SAME_ORIGIN)
    assert out.status_code == 204
    assert sessions.COOKIE_NAME not in browser.cookies
    replay = httpx.AsyncClient(transport=transport, base_url=BASE, cookies={sessions.COOKIE_NAME: cookie})
    assert (await replay.get("/api/v1/me")).status_code == 401


async def test_an_api_key_mints_login_links_and_a_session_cannot(api, browser, services) -> None:
    _, user_id = await _admin_of(api)
    resp = await api.post("/api/v1/login-tokens")
    assert resp.status_code == 201, resp.text
    link = resp.json()
    assert link["url"] == f"{BASE}/login?token={link['token']}" and link["expiresAt"].endswith("Z")
    await browser.get("/login", params={"token": link["token"]})
    assert (await browser.get("/api/v1/me")).json()["user"]["id"] == user_id

    refused = await browser.post("/api/v1/login-tokens", headers=SAME_ORIGIN)
    assert refused.status_code == 403


async def test_serve_links_the_bootstrap_admin(services, settings) -> None:
    assert await sessions.login_url(services.db, settings, BASE) is None  # an empty store: no one to sign in
    creds = await ensure_bootstrap(services.db, settings, BASE)
    assert creds is not None
    await identity.create_organization(services.db, "created-later")
    url = await sessions.login_url(services.db, settings, BASE)
    assert url is not None and url.startswith(f"{BASE}/login?token=")
    session = await sessions.redeem_login_token(services.db, settings, url.split("token=", 1)[1])
    principal = await sessions.session_principal(services.db, settings, session.cookie)
    assert principal is not None
    assert principal.org_id == creds["orgId"] and principal.is_bootstrap and principal.role == "admin"


async def test_the_dashboard_and_its_assets_are_served(browser) -> None:
    page = await browser.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert '<script type="module" src="/static/app.js">' in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    script = await browser.get("/static/app.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert "tsk_" not in script.text  # no API key in anything the browser loads
    assert (await browser.get("/static/views/execution.js")).status_code == 200
    assert (await browser.get("/static/nope.js")).status_code == 404
    assert (await browser.get("/static/../api/sessions.py")).status_code == 404
    assert (await browser.get("/static/%2e%2e/api/sessions.py")).status_code == 404
