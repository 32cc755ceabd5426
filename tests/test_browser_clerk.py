"""The clerk's page as a records office uses it (issue 13), at 1366x800 in headless Chromium against
the real server (media off): the list follows new recordings by itself, the list's download waits
for the file, the details follow the language (the timeline in the page's language with display
names), and sizes say what they count."""

# ruff: noqa: F811  (the fixtures imported from test_browser_pages are arguments here)
from __future__ import annotations

import pytest
from browser_util import CLERK_SCREEN, eventually, rest, screenshot_path
from playwright.async_api import Browser, Page
from test_browser_pages import browser, chromium, open_page, server  # noqa: F401 (fixtures)


async def record(chair: Page, seconds: str = "0:01") -> None:
    await chair.click("#rec-toggle")
    await eventually(
        lambda: chair.text_content("#rec-elapsed"), lambda t: seconds in (t or ""), 5, "recording"
    )
    await chair.click("#rec-toggle")
    await chair.click("#confirm-stop-yes")
    await eventually(lambda: chair.text_content("#rec-toggle"), lambda t: t == "开始录制", 3, "stopped")


@pytest.mark.browser
async def test_clerk_list_follows_by_itself_and_details_follow_the_language(server, browser: Browser) -> None:
    errors: list[str] = []
    await rest(server, "POST", "/api/rooms", {"room": "council", "title": "全体会议"})
    chair = await open_page(browser, server, "chair", "chair", "chair", "主持人", errors=errors)
    await open_page(browser, server, "venue", "hall-a", "venue", "第一分会场", errors=errors)
    await rest(server, "PUT", "/api/rooms/council/program", {"layout": "single", "slots": ["hall-a"]})
    await record(chair)

    context = await browser.new_context(viewport=CLERK_SCREEN, locale="zh-CN")
    context.set_default_timeout(5000)
    clerk = await context.new_page()
    clerk.on("pageerror", lambda exc: errors.append(f"clerk: {exc}"))
    await clerk.goto(server.page_url("clerk", server.token("council", "clerk-1", "clerk", "书记员")))
    rows = clerk.locator("#recordings tr[data-recording]")
    await eventually(rows.count, lambda n: n == 1, 5, "one recording listed")
    # The size says what it counts.
    assert "录制与成片" in await clerk.text_content("table.recordings thead")
    # The list's download waits for the program render: disabled (with its progress) until it is done.
    button = rows.first.locator("button.download")
    state = await button.get_attribute("data-render-state")
    if state != "done":
        assert await button.is_disabled()
    await eventually(lambda: button.get_attribute("data-render-state"), lambda s: s == "done", 90, "rendered")
    await eventually(button.is_enabled, bool, 6, "download enabled by itself")

    # A second recording appears without "refresh".
    await record(chair)
    await eventually(rows.count, lambda n: n == 2, 8, "the new recording listed by itself")

    # Details: the timeline names the layout and the people in the page's language, and follows a switch.
    await rows.last.get_by_role("button", name="详情").click()
    await eventually(lambda: clerk.is_visible("#detail"), bool, 3, "details")
    timeline = await clerk.text_content("#detail-timeline")
    assert "画面：单画面（第一分会场）" in timeline, timeline  # noqa: RUF001
    options = await clerk.eval_on_selector_all("#render-layout option", "os => os.map(o => o.value)")
    assert "single:chair" not in options, options  # the chair's console sends no video
    await clerk.select_option("header .language-switch", "en")
    await eventually(
        lambda: clerk.text_content("#detail-timeline"),
        lambda t: "Program: Single (第一分会场)" in (t or ""),
        5,
        "timeline in English",
    )
    detail = await clerk.text_content("#detail")
    assert "画面" not in detail and "成片" not in detail, detail
    await clerk.screenshot(path=screenshot_path("clerk-1366x800-en"), full_page=True)
    assert errors == []
