"""Headless Chromium for the browser tests (Debian's `chromium`, driven by Playwright's Python package), in
one place, so every page under test runs in the same browser with the same flags.

A pytest plugin (tests/conftest.py loads it): `browser` is one Chromium for the module, `page` a fresh
context per test (its own sessionStorage) that fails the test if the page threw. Without Chromium or
Playwright the tests skip, saying why; under CI (`CI=true`) that is a failure instead.
"""

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import skip_or_fail

try:
    from playwright.async_api import Browser, Page, async_playwright
except ImportError:  # pragma: no cover - the dev extras install it
    async_playwright = None  # type: ignore[assignment]

# Debian's package; KEEL_CHROMIUM points elsewhere (another distribution's chromium-browser).
CHROMIUM = os.environ.get("KEEL_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def browser_unavailable() -> str | None:
    if async_playwright is None:
        return "Playwright is not installed (pip install -e '.[dev]')"
    if not Path(CHROMIUM).exists():
        return f"Chromium is not installed at {CHROMIUM} (apt-get install chromium; .ci/run does it)"
    return None


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator["Browser"]:
    """One headless Chromium for the module, or a skip (a failure under CI) saying what is missing."""
    if reason := browser_unavailable():
        skip_or_fail(reason)
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def page(browser: "Browser") -> AsyncIterator["Page"]:
    """A page in a new context (its own sessionStorage and cookies); the test fails if the page threw."""
    context = await browser.new_context(viewport={"width": 1000, "height": 860})
    context.set_default_timeout(20_000)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    try:
        yield page
    finally:
        await context.close()
    assert not errors, f"the page threw: {errors}"
