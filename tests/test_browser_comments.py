"""The public's comments in real Chromium: a comment posted on one public page goes through the
moderator's page and appears on a second public page and in the chair console, then on a venue
screen when put on screen; a like on one page moves the total on the other; a visitor's <script>
shows as text everywhere."""

from __future__ import annotations

from typing import Any

import pytest
from browser_util import DESKTOP, PHONE, eventually, rest, screenshot_path
from playwright.async_api import Browser, Page
from test_browser_pages import browser, chromium, open_page, server  # noqa: F401 (fixtures)

NICK = "<script>window.owned=1</script>"
TEXT = '<img src=x onerror="window.owned=2">公交12路何时恢复'


async def public_page(browser: Browser, url: str, errors: list[str], sse: bool = True) -> Page:  # noqa: F811
    context = await browser.new_context(viewport=PHONE, locale="zh-CN")
    context.set_default_timeout(5000)
    if not sse:  # a browser (or a proxy) where Server-Sent Events do not get through: the page polls
        await context.add_init_script("delete window.EventSource")
    tab = await context.new_page()
    tab.on("pageerror", lambda exc: errors.append(f"public: {exc}"))
    await tab.goto(url)
    await eventually(lambda: tab.is_visible("#comment-form"), bool, 5, "the comment form")
    return tab


async def texts(tab: Page, selector: str) -> list[str]:
    return await tab.evaluate(f"[...document.querySelectorAll({selector!r})].map(n => n.textContent)")


async def no_markup(tab: Page, within: str) -> dict[str, Any]:
    """Whether the visitor's markup became elements (it must not) or ran."""
    return await tab.evaluate(
        f"({{elements: document.querySelectorAll('{within} script, {within} img').length,"
        " owned: window.owned ?? null})"
    )


@pytest.mark.browser
async def test_a_comment_through_moderation_to_the_public_the_console_and_a_venue_screen(
    server,  # noqa: F811
    browser: Browser,  # noqa: F811
) -> None:
    errors: list[str] = []
    chair = await open_page(browser, server, "chair", "chair", "chair", "主持人", errors=errors)
    venue = await open_page(browser, server, "venue", "hall-a", "venue", "第一分会场", errors=errors)
    moderator = await open_page(browser, server, "moderate", "mod", "moderator", "审核员", DESKTOP, errors)
    info = await rest(server, "GET", "/api/rooms/council/public")
    # The moderator's page is no endpoint: the console shows the venue's tile only.
    tiles = "[...document.querySelectorAll('#tiles .tile')].map(n => n.dataset.identity)"
    await eventually(lambda: chair.evaluate(tiles), lambda ids: ids == ["hall-a"], 3, "the console's tiles")
    # Between sessions (nothing on the program) the venue screen shows the public page's QR code.
    assert await venue.get_attribute("#waiting-qr-img", "src") == f"/w/{info['code']}/qr.svg"
    await eventually(
        lambda: venue.evaluate("document.getElementById('waiting-qr-img').naturalWidth"), bool, 3, "the QR"
    )
    page_a = await public_page(browser, info["url"], errors)
    page_b = await public_page(browser, info["url"], errors)
    page_c = await public_page(browser, info["url"], errors, sse=False)

    # Posted on page A: it waits for the moderator, page B does not show it yet.
    await page_a.fill("#nickname", NICK)
    await page_a.fill("#comment-text", TEXT)
    await page_a.click("#comment-send")
    await eventually(
        lambda: page_a.get_attribute("#comment-note", "data-status"), lambda s: s == "201", 3, "posted"
    )
    await eventually(
        lambda: texts(moderator, ".comments-list .comment-body"), lambda t: t == [TEXT], 3, "pending"
    )
    assert await texts(page_b, "#comment-list .comment-body") == []

    await moderator.click(".comments-list .act-approve_comment")
    await eventually(
        lambda: texts(page_b, "#comment-list .comment-body"), lambda t: t == [TEXT], 3, "on page B"
    )
    assert (await texts(page_b, "#comment-list .comment-meta strong")) == [NICK]
    # Without EventSource the page polls GET /w/{code}/comments every 5 s.
    await eventually(lambda: texts(page_c, "#comment-list .comment-body"), lambda t: t == [TEXT], 7, "polled")
    await eventually(
        lambda: texts(chair, "#chair-comments .comment-body"), lambda t: t == [TEXT], 3, "console"
    )
    assert (await texts(chair, "#chair-comments .comment-name")) == [NICK]

    # Put on screen from the moderator's page: the venue shows it over the program, as text.
    await moderator.select_option(".comments-filter", "approved")
    await moderator.click(".comments-list .act-show_comment")
    await eventually(lambda: venue.is_visible("#public-comment"), bool, 3, "the venue's caption")
    assert await venue.text_content("#public-comment .comment-who") == NICK
    assert await venue.text_content("#public-comment .comment-text") == TEXT
    await moderator.fill(".comments-list .answer-by", "市交通局")
    await moderator.click(".comments-list .act-answer_comment")
    await eventually(
        lambda: venue.text_content("#public-comment .comment-answered"),
        lambda t: "市交通局" in (t or ""),
        3,
        "answered",
    )
    await venue.screenshot(path=screenshot_path("venue-comment-on-screen"))
    await page_b.screenshot(path=screenshot_path("public-comments-360"), full_page=True)
    await moderator.screenshot(path=screenshot_path("moderate-desktop"))
    for tab, within in (
        (page_b, "#comment-list"),
        (chair, "#chair-comments"),
        (venue, "#public-comment"),
        (moderator, ".comments-list"),
    ):
        assert await no_markup(tab, within) == {"elements": 0, "owned": None}

    # Likes tapped on page A move the total on page B (batched, pushed once a second).
    for _ in range(3):
        await page_a.click("#like")
    await eventually(lambda: page_b.text_content("#likes"), lambda t: t == "3", 4, "page B's likes")
    # A like of a comment counts for that comment (the panels' "by likes") and for the meeting.
    await page_a.click("#comment-list li[data-id='1'] .comment-like")
    await eventually(lambda: page_b.text_content("#likes"), lambda t: t == "4", 4, "page B's likes again")

    async def likes_of_first() -> int:
        listed = (await rest(server, "GET", "/api/rooms/council/comments"))["comments"]
        return next(c["likes"] for c in listed if c["id"] == 1)

    await eventually(likes_of_first, lambda n: n == 1, 3, "the comment's like")

    # The moderator replies under its own name: the reply shows on the public page, naming whom.
    await moderator.fill(".comments-list .reply-text", "下月起恢复")
    await moderator.click(".comments-list .act-reply")
    await eventually(
        lambda: texts(page_b, "#comment-list .comment-body"),
        lambda t: t == ["下月起恢复", TEXT],
        3,
        "the reply",
    )
    assert f"回复 {NICK}" in await texts(page_b, "#comment-list .tag")

    # A member writes from the phone: under the member's name, approved at once.
    phone = await open_page(browser, server, "phone", "m1", "member", "王委员", PHONE, errors)
    await phone.click(".member-comment summary")
    await phone.fill(".member-comment-text", "建议增加夜班车")
    await phone.click(".member-comment-send")
    await eventually(
        lambda: texts(page_b, "#comment-list .comment-body"), lambda t: "建议增加夜班车" in t, 3, "member's"
    )
    assert "王委员" in await texts(page_b, "#comment-list .comment-meta strong")

    await moderator.click(".comments-list .act-hide_comment")
    await eventually(lambda: venue.is_visible("#public-comment"), lambda v: not v, 3, "caption off")
    assert errors == []
