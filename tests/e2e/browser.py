"""Headless Chromium (Debian's, driven by Playwright) signed in to a real ``tolstoy serve``.

Playwright's own browser download is never used: ``make browser`` installs
``/usr/bin/chromium``. Without it the dashboard tests skip, or fail under ``CI=true``.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright

from tests.backends import IN_CI
from tests.e2e.conftest import ServerProcess

CHROMIUM = os.environ.get("TOLSTOY_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
LOGIN_LINE = re.compile(r"^Dashboard: (http://\S+/login\?token=\S+)$", re.MULTILINE)
SCREENSHOT_DIR = os.environ.get("TOLSTOY_SCREENSHOT_DIR")
"""When set, tests save screenshots there (for a person to look at; never committed)."""


def require_chromium() -> None:
    if Path(CHROMIUM).exists() or shutil.which(CHROMIUM):
        return
    message = f"Chromium is not installed at {CHROMIUM} (run `make browser`)"
    if IN_CI:
        pytest.fail(f"{message}; CI=true: a missing browser fails the run")
    pytest.skip(message)


def login_link(server: ServerProcess) -> str:
    """The one-time ``Dashboard: …/login?token=…`` link the server printed on its last start."""
    logs = sorted(server.home.glob("server-*.log"))
    assert logs, "the server wrote no log"
    found = LOGIN_LINE.findall(logs[-1].read_text(errors="replace"))
    assert found, f"no 'Dashboard: …/login?token=…' line in the server output:\n{server.log_tail()}"
    link: str = found[-1]
    return link


@dataclass
class PageProblems:
    """Uncaught exceptions and console errors of a page: a healthy dashboard has none."""

    errors: list[str] = field(default_factory=list)
    allowed: list[str] = field(default_factory=list)
    """Substrings of console errors a test expects (e.g. the 401s of a signed-out page)."""

    def allow(self, substring: str) -> None:
        self.allowed.append(substring)

    def unexpected(self) -> list[str]:
        return [e for e in self.errors if not any(a in e for a in self.allowed)]

    def attach(self, page: Page) -> None:
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        page.on("console", self._console)

    def _console(self, msg: ConsoleMessage) -> None:
        if msg.type == "error":
            self.errors.append(f"console: {msg.text} at {msg.location.get('url')}")


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """A headless Chromium, closed at the end."""
    require_chromium()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def screenshot(page: Page, name: str) -> None:
    if SCREENSHOT_DIR:
        Path(SCREENSHOT_DIR).mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(Path(SCREENSHOT_DIR) / f"{name}.png"), full_page=True)
