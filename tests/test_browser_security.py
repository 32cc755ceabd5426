"""Issue 9, finding 9 (headers) in a real browser: every page works under its Content-Security-Policy
(no violation reported while it loads and joins) and refuses to be framed by another page."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from browser_util import RunningServer, chromium_args, ensure_chromium, eventually, running_server
from playwright.async_api import Browser, async_playwright

pytestmark = pytest.mark.browser

# Reported to the page's own script by the browser on every blocked load, inline script or style.
COLLECT_VIOLATIONS = """
window.__csp = [];
document.addEventListener('securitypolicyviolation', e =>
  window.__csp.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`));
"""


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with running_server(tmp_path / "data", media=False) as srv:
        yield srv


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    chromium = ensure_chromium()
    if chromium is None:
        pytest.fail("chromium is not installed and could not be installed with apt-get")
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=str(chromium), args=chromium_args())
        try:
            yield b
        finally:
            await b.close()


async def test_pages_run_under_their_csp_and_cannot_be_framed(
    server: RunningServer, browser: Browser
) -> None:
    context = await browser.new_context(locale="zh-CN")
    context.set_default_timeout(5000)
    await context.add_init_script(COLLECT_VIOLATIONS)
    titles: dict[str, str] = {}
    pages = [("", None), ("venue", "venue"), ("phone", "member"), ("chair", "chair"), ("clerk", "clerk")]
    for page, role in pages:
        tab = await context.new_page()
        url = (
            f"{server.url}/"
            if role is None
            else server.page_url(page, server.token("council", f"p-{page}", role))
        )
        await tab.goto(url)
        if role is not None and role != "clerk":
            await eventually(
                lambda tab=tab: tab.evaluate("window.conference?.client?.state ?? null"),
                lambda s: s == "joined",
                10,
                f"{page} joins",
            )
        else:
            await tab.wait_for_load_state("networkidle")
        assert await tab.evaluate("window.__csp") == [], page
        titles[page] = await tab.title()
        await tab.close()
    # Another origin framing the chair's console gets nothing (frame-ancestors 'none', X-Frame-Options).
    framer = await context.new_page()
    chair_url = server.page_url("chair", server.token("council", "framed", "chair"))
    await framer.set_content(f'<iframe id="f" src="{chair_url}"></iframe>')
    await framer.wait_for_timeout(1000)
    frame = next(f for f in framer.frames if f != framer.main_frame)
    assert titles["chair"] and await frame.evaluate("document.title") != titles["chair"]
    await context.close()
