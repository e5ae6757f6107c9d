"""The dashboard in a real browser against a real ``tolstoy serve``: sign in, run, watch live, act.

Every assertion on the page waits for the DOM (Playwright's auto-waiting ``expect``); a marker
set on ``window`` proves that what changed arrived live, without a reload.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Dialog, Locator, Page, Route, expect

from tests.e2e.browser import PageProblems, chromium, login_link, screenshot
from tests.e2e.conftest import ServerProcess
from tests.helpers import wait_status

pytestmark = pytest.mark.browser
LIVE_TIMEOUT_MS = 20_000

GATED = """
name: gated-report
description: Ask first, then crunch three days of data
variables: {days: 3}
steps:
  - id: gate
    type: approval
    name: Go ahead?
    config: {prompt: "Crunch the numbers?", timeoutMs: 600000}
  - id: crunch
    type: code
    name: Crunch
    config:
      source: |
        def main(context):
            n = context.variables["days"]
            for day in range(1, n + 1):
                context.log(f"day {day} done")
                context.progress(day, n, f"processing day {day} of {n}")
            return {"days": n}
  - id: publish
    type: data_transform
    config: {expression: "steps['crunch'].output.days * 10"}
"""

NAP = """
name: long-nap
steps:
  - id: nap
    type: delay
    config: {durationMs: 600000}
"""

FAILING = """
name: breaks
steps:
  - id: prepare
    type: data_transform
    config: {expression: "1"}
  - id: explode
    type: code
    config:
      source: |
        def main(context):
            raise ValueError("the input is bad")
"""


@dataclass
class Dashboard:
    server: ServerProcess
    page: Page
    link: str
    api: httpx.AsyncClient
    problems: PageProblems

    async def flow(self, definition: str) -> str:
        resp = await self.api.post(
            "/api/v1/flows", content=definition, headers={"content-type": "application/yaml"}
        )
        assert resp.status_code == 201, resp.text
        flow_id: str = resp.json()["id"]
        return flow_id

    async def start(self, flow_id: str, **variables: Any) -> str:
        resp = await self.api.post(f"/api/v1/flows/{flow_id}/execute", json={"variables": variables})
        assert resp.status_code == 202, resp.text
        execution_id: str = resp.json()["executionId"]
        return execution_id

    async def open_execution(self, execution_id: str) -> None:
        await self.page.goto(f"{self.server.url}/#/executions/{execution_id}")
        await expect(self.page.locator("ol.timeline li").first).to_be_visible()

    def step(self, step_id: str) -> Locator:
        return self.page.locator(f'ol.timeline li[data-step-id="{step_id}"]')

    async def mark(self) -> None:
        """Set a marker a reload would erase."""
        await self.page.evaluate("window.__sameDocument = true")

    async def still_same_document(self) -> bool:
        return bool(await self.page.evaluate("window.__sameDocument === true"))


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as launched:
        yield launched


@pytest.fixture
async def dashboard(browser: Browser, tolstoy_server: ServerProcess) -> AsyncIterator[Dashboard]:
    """A page signed in through the server's printed one-time link, with the live connection up."""
    link = login_link(tolstoy_server)
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    problems = PageProblems()
    problems.attach(page)
    await page.goto(link)
    await expect(page.locator(".who .user")).to_contain_text("admin@localhost")
    await expect(page.locator(".conn")).to_have_text("Live", timeout=LIVE_TIMEOUT_MS)
    async with tolstoy_server.api() as api:
        yield Dashboard(tolstoy_server, page, link, api, problems)
    await context.close()
    assert problems.unexpected() == [], problems.errors


async def test_run_a_flow_and_watch_it_complete_live(dashboard: Dashboard) -> None:
    page = dashboard.page
    flow_id = await dashboard.flow(GATED)
    await page.locator('nav a[data-nav="flows"]').click()
    await page.locator(f'tr[data-flow-id="{flow_id}"]').get_by_role("button", name="Run gated-report").click()
    await expect(page.locator("#run-variables")).to_have_value(re.compile(r'"days": 3'))
    await page.fill("#run-variables", '{"days": 3}')
    await page.get_by_role("dialog").get_by_role("button", name="Run", exact=True).click()
    await expect(page).to_have_url(re.compile(r"#/executions/exec_\w+$"))
    execution_id = page.url.rsplit("/", 1)[1]

    await expect(dashboard.step("gate")).to_have_attribute("data-status", "waiting", timeout=LIVE_TIMEOUT_MS)
    await expect(dashboard.step("crunch")).to_have_attribute("data-status", "pending")
    await expect(dashboard.step("publish")).to_have_attribute("data-status", "pending")
    await dashboard.mark()

    request = page.locator(".approval-requests article.approval")
    await expect(request).to_contain_text("Crunch the numbers?")
    await request.get_by_label("Comment (optional)").fill("numbers look fine")
    await request.get_by_role("button", name="Grant").click()

    await expect(dashboard.step("gate")).to_have_attribute(
        "data-status", "completed", timeout=LIVE_TIMEOUT_MS
    )
    await expect(dashboard.step("crunch")).to_have_attribute(
        "data-status", "completed", timeout=LIVE_TIMEOUT_MS
    )
    await expect(dashboard.step("publish")).to_have_attribute(
        "data-status", "completed", timeout=LIVE_TIMEOUT_MS
    )
    await expect(dashboard.step("crunch").locator(".step-detail")).to_have_text(re.compile(r"^completed in "))
    await expect(page.locator(".exec-status .badge")).to_have_text("Completed")
    await expect(page.locator(".progress-message")).to_have_text("processing day 3 of 3")
    await expect(page.get_by_role("progressbar", name="Execution progress")).to_have_attribute(
        "aria-valuenow", "100"
    )
    for day in (1, 2, 3):
        await expect(page.locator(".log-line", has_text=f"day {day} done")).to_have_count(1)
    await expect(request).to_have_attribute("data-status", "granted")
    assert await dashboard.still_same_document(), "the page reloaded: the updates did not arrive live"
    await screenshot(page, "execution-completed")

    detail = (await dashboard.api.get(f"/api/v1/executions/{execution_id}")).json()
    assert detail["status"] == "completed" and detail["completedSteps"] == 3
    granted = (await dashboard.api.get("/api/v1/approvals", params={"status": "granted"})).json()["items"]
    assert [(a["executionId"], a["comment"]) for a in granted] == [(execution_id, "numbers look fine")]


async def test_the_executions_list_follows_new_executions_live(dashboard: Dashboard) -> None:
    page = dashboard.page
    frames = []
    page.on(
        "websocket",
        lambda ws: (
            ws.on("framereceived", lambda f: frames.append(("in", f))),
            ws.on("framesent", lambda f: frames.append(("out", f))),
        ),
    )
    page.on("console", lambda m: frames.append(("console", m.text)))
    await page.evaluate("window.tolstoyLive.drop()")
    await expect(page.locator(".conn")).to_have_text("Live")
    flow_id = await dashboard.flow(GATED)
    await expect(page.get_by_role("heading", name="Executions")).to_be_visible()
    await expect(page.locator(".empty")).to_be_visible()
    await dashboard.mark()

    execution_id = await dashboard.start(flow_id, days=2)
    row = page.locator(f'tr[data-execution-id="{execution_id}"]')
    try:
        await expect(row).to_have_attribute("data-status", "waiting", timeout=8000)
    except AssertionError:
        for d, f in frames:
            print(d, str(f)[:400])
        raise
    await expect(row).to_contain_text("gated-report")
    await expect(page.get_by_role("link", name=re.compile("Approvals")).locator(".count")).to_have_text("1")

    approval = (await dashboard.api.get("/api/v1/approvals", params={"status": "pending"})).json()["items"][0]
    await dashboard.api.post(f"/api/v1/approvals/{approval['id']}/grant", json={})
    await expect(row).to_have_attribute("data-status", "completed", timeout=LIVE_TIMEOUT_MS)
    await expect(row.locator(".steps")).to_have_text("3/3")
    await expect(page.get_by_role("link", name=re.compile("Approvals")).locator(".count")).to_be_hidden()
    assert await dashboard.still_same_document()

    await page.select_option("#status-filter", "failed")
    await expect(row).to_have_count(0)
    await page.select_option("#status-filter", "completed")
    await expect(row).to_have_attribute("data-status", "completed")


async def test_cancel_from_the_dashboard(dashboard: Dashboard) -> None:
    page = dashboard.page
    execution_id = await dashboard.start(await dashboard.flow(NAP))
    await dashboard.open_execution(execution_id)
    await expect(dashboard.step("nap")).to_have_attribute("data-status", "waiting", timeout=LIVE_TIMEOUT_MS)
    await dashboard.mark()

    async def confirm(dialog: Dialog) -> None:
        assert dialog.type == "confirm"
        await dialog.accept()

    page.once("dialog", confirm)
    await page.get_by_role("toolbar", name="Execution controls").get_by_role("button", name="Cancel").click()
    await expect(page.locator(".exec-status .badge")).to_have_text("Cancelled", timeout=LIVE_TIMEOUT_MS)
    await expect(dashboard.step("nap")).to_have_attribute("data-status", "cancelled")
    await expect(page.get_by_role("button", name="Cancel")).to_be_disabled()
    await expect(page.get_by_role("button", name="Retry", exact=True)).to_be_enabled()
    assert await dashboard.still_same_document()
    detail = (await dashboard.api.get(f"/api/v1/executions/{execution_id}")).json()
    assert detail["status"] == "cancelled"


async def test_retry_from_the_failed_step(dashboard: Dashboard) -> None:
    page = dashboard.page
    failed_id = await dashboard.start(await dashboard.flow(FAILING))
    await dashboard.open_execution(failed_id)
    await expect(page.locator(".exec-status .badge")).to_have_text("Failed", timeout=LIVE_TIMEOUT_MS)
    await expect(dashboard.step("explode").locator(".step-detail")).to_contain_text("the input is bad")

    await page.get_by_role("button", name="Retry from failed step").click()
    await expect(page).not_to_have_url(re.compile(failed_id))
    retry_id = page.url.rsplit("/", 1)[1]
    await expect(page.get_by_role("link", name=failed_id)).to_be_visible()
    await expect(page.locator(".exec-status .badge")).to_have_text("Failed", timeout=LIVE_TIMEOUT_MS)
    retried = (await dashboard.api.get(f"/api/v1/executions/{retry_id}")).json()
    assert retried["retryOf"] == failed_id


async def test_live_updates_resume_without_a_gap_after_a_disconnect(dashboard: Dashboard) -> None:
    page = dashboard.page
    execution_id = await dashboard.start(await dashboard.flow(GATED), days=3)
    await dashboard.open_execution(execution_id)
    await expect(dashboard.step("gate")).to_have_attribute("data-status", "waiting", timeout=LIVE_TIMEOUT_MS)
    await dashboard.mark()

    # Hold the reconnection at its token request while the execution runs to the end.
    release = asyncio.Event()

    async def hold(route: Route) -> None:
        await release.wait()
        await route.continue_()

    await page.route("**/api/v1/tokens/subscribe", hold)
    await page.evaluate("window.tolstoyLive.drop()")
    await expect(page.locator(".conn")).to_have_text("Reconnecting…")
    approval = (await dashboard.api.get("/api/v1/approvals", params={"status": "pending"})).json()["items"][0]
    await dashboard.api.post(f"/api/v1/approvals/{approval['id']}/grant", json={})
    await wait_status(dashboard.api, execution_id, "completed")
    await expect(dashboard.step("crunch")).to_have_attribute("data-status", "pending")  # nothing arrived

    release.set()
    await expect(page.locator(".conn")).to_have_text("Live", timeout=LIVE_TIMEOUT_MS)
    await expect(page.locator(".exec-status .badge")).to_have_text("Completed", timeout=LIVE_TIMEOUT_MS)
    for step_id in ("gate", "crunch", "publish"):
        await expect(dashboard.step(step_id)).to_have_attribute("data-status", "completed")
    for day in (1, 2, 3):
        await expect(page.locator(".log-line", has_text=f"day {day} done")).to_have_count(1)
    await expect(page.locator(".progress-message")).to_have_text("processing day 3 of 3")
    assert await dashboard.still_same_document()


async def test_the_login_link_works_once_and_the_browser_never_holds_a_key(
    dashboard: Dashboard, browser: Browser
) -> None:
    cookies = {c["name"]: c for c in await dashboard.page.context.cookies()}
    session = cookies["tolstoy_session"]
    assert session["httpOnly"] and session["sameSite"] == "Strict" and session["path"] == "/"
    assert await dashboard.page.evaluate("document.cookie") == ""
    api_key = dashboard.server.credentials["apiKey"]
    stored = await dashboard.page.evaluate("JSON.stringify([localStorage, sessionStorage])")
    assert api_key not in await dashboard.page.content() and api_key not in stored

    other = await browser.new_context()
    try:
        page = await other.new_page()
        response = await page.goto(dashboard.link)
        assert response is not None and response.status == 401
        await expect(page.get_by_role("heading", name="Cannot sign in")).to_be_visible()
        await expect(page.locator("main")).to_contain_text("already been used")
        assert await other.cookies() == []
        await page.goto(dashboard.server.url + "/")
        await expect(page.get_by_role("heading", name="You are not signed in")).to_be_visible()
    finally:
        await other.close()

    dashboard.problems.allow("status of 401")  # signed out, the page's API calls are refused
    await dashboard.page.get_by_role("button", name="Sign out").click()
    await expect(dashboard.page.get_by_role("heading", name="You have signed out.")).to_be_visible()
    await dashboard.page.reload()
    await expect(dashboard.page.get_by_role("heading", name="You are not signed in")).to_be_visible()
