"""A member's phone as people hold it (issue 13): 390x844 and 360 px upright, 844x390 sideways, in
headless Chromium against the real server (media off). The phone says the meeting is recorded,
its controls are reachable sideways, holding the floor is said once and can be ended, nothing
covers the buttons, the header names the meeting and the member without wrapping, and an expired
link leads to the form for a new one."""

# ruff: noqa: F811  (the fixtures imported from test_browser_pages are arguments here)
from __future__ import annotations

import time

import pytest
from browser_util import (
    PHONE,
    PHONE_390,
    PHONE_LANDSCAPE,
    SECRET,
    eventually,
    rest,
    screenshot_path,
)
from playwright.async_api import Browser, Page
from test_browser_pages import browser, chromium, open_page, server  # noqa: F401 (fixtures)

TITLE = "第十二届委员会第三次全体会议"
SPEAKING_GREEN = "rgb(61, 220, 132)"

RECT_JS = """(s) => { const b = document.querySelector(s).getBoundingClientRect();
  return [b.left, b.top, b.right, b.bottom]; }"""


def overlap(a: list[float], b: list[float]) -> bool:
    return a[0] < b[2] - 0.5 and b[0] < a[2] - 0.5 and a[1] < b[3] - 0.5 and b[1] < a[3] - 0.5


async def rect(tab: Page, selector: str) -> list[float]:
    return await tab.evaluate(RECT_JS, selector)


async def controls_reachable(tab: Page, size: dict[str, int]) -> None:
    """Every button of the phone inside the window as it opens, with no scrolling."""
    assert await tab.evaluate("window.scrollY") == 0
    for button in ["#hand", "#mic", "#camera", "#data-saving"]:
        box = await rect(tab, button)
        assert box[0] >= 0 and box[2] <= size["width"] and box[1] >= 0 and box[3] <= size["height"], (
            size,
            button,
            box,
        )
        assert box[3] - box[1] >= 40, (button, box)  # a thumb's target


@pytest.mark.browser
async def test_phone_upright_and_sideways(server, browser: Browser) -> None:
    errors: list[str] = []
    await rest(server, "POST", "/api/rooms", {"room": "council", "title": TITLE})
    chair = await open_page(browser, server, "chair", "chair", "chair", "主持人", errors=errors)
    phone = await open_page(browser, server, "phone", "m1", "member", "王委员", PHONE_390, errors)

    # The header names the meeting and the member; nobody speaking is not shown as something happening.
    assert await phone.text_content("#meeting-title") == TITLE
    assert await phone.text_content("#member-name") == "王委员"
    assert "council" not in await phone.text_content("header")
    assert await phone.text_content("#floor") == "目前无人发言"
    colour = await phone.evaluate("getComputedStyle(document.getElementById('floor')).color")
    assert colour != SPEAKING_GREEN, colour

    # Recorded: the phone says so, as the venues do.
    assert not await phone.is_visible("#recording")
    await chair.click("#rec-toggle")
    await eventually(lambda: phone.is_visible("#recording"), bool, 3, "recording shown on the phone")
    assert "录制中" in await phone.text_content("#recording")
    # Broadcast to the public: the phone says that too.
    assert not await phone.is_visible("#broadcasting")
    await rest(server, "POST", "/api/rooms/council/commands", {"type": "start_broadcast"})
    await eventually(lambda: phone.is_visible("#broadcasting"), bool, 3, "broadcast shown on the phone")
    for size, name in [(PHONE_390, "390x844"), (PHONE, "360"), (PHONE_LANDSCAPE, "844x390")]:
        await phone.set_viewport_size(size)
        await phone.evaluate("window.scrollTo(0, 0)")
        await controls_reachable(phone, size)
        assert await phone.is_visible("#recording")
        await phone.screenshot(path=screenshot_path(f"phone-{name}-recording"))

    # Holding the floor: said once, the hand button ends speaking, no toast over the buttons.
    await phone.set_viewport_size(PHONE_390)
    await phone.click("#hand")
    await eventually(lambda: chair.is_visible("#floor-queue li[data-identity='m1']"), bool, 3, "queued")
    await chair.keyboard.press("n")
    await eventually(lambda: phone.is_visible("#granted"), bool, 3, "granted banner")
    for notice in await phone.query_selector_all(".notice"):
        box = await notice.bounding_box()
        if box:
            edges = [box["x"], box["y"], box["x"] + box["width"], box["y"] + box["height"]]
            for button in ["#data-saving", "#hand", "#mic", "#speak-now"]:
                assert not overlap(edges, await rect(phone, button)), (button, edges)
    await phone.screenshot(path=screenshot_path("phone-390x844-granted"))
    await phone.click("#speak-now")
    await eventually(
        lambda: phone.get_attribute("#mic-state", "data-live"), lambda v: v == "true", 3, "mic on"
    )
    text = await phone.evaluate("document.body.innerText")
    assert text.count("您正在发言") == 1, text
    assert await phone.text_content("#hand") == "结束发言"
    assert await phone.is_enabled("#hand")
    await phone.screenshot(path=screenshot_path("phone-390x844-speaking"))
    await phone.set_viewport_size(PHONE_LANDSCAPE)
    await controls_reachable(phone, PHONE_LANDSCAPE)
    await phone.screenshot(path=screenshot_path("phone-844x390-speaking"))
    await phone.click("#hand")
    await eventually(
        lambda: chair.evaluate("window.conference.client.mirror.floor"), lambda v: v is None, 3, "ended"
    )
    await eventually(lambda: phone.text_content("#hand"), lambda t: t == "申请发言", 3, "can ask again")
    await eventually(lambda: chair.text_content("#event-log"), lambda t: "王委员 结束发言" in t, 3, "logged")

    # In English the header keeps one row (the title is cut with an ellipsis, not wrapped).
    await phone.set_viewport_size(PHONE)
    await phone.select_option("header .language-switch", "en")
    await eventually(lambda: phone.text_content("#hand"), lambda t: t == "Request to speak", 3, "English")
    header = await rect(phone, "header")
    heading = await rect(phone, ".phone-heading")
    switch = await rect(phone, "header .language-switch")
    assert switch[1] < heading[3] and heading[1] < switch[3], (heading, switch)  # side by side
    assert header[3] - header[1] < 64, header
    assert await phone.evaluate(
        "(() => { const n = document.getElementById('meeting-title');"
        " return n.scrollHeight <= n.clientHeight + 1; })()"
    )
    await phone.screenshot(path=screenshot_path("phone-360-en"))
    assert errors == []


@pytest.mark.browser
async def test_expired_phone_link_offers_the_form_for_a_new_one(server, browser: Browser) -> None:
    from signaling.tokens import mint_token

    expired = mint_token(SECRET, "council", "m2", "李委员", "member", 60, now=int(time.time()) - 7200)
    context = await browser.new_context(viewport=PHONE_390, locale="zh-CN")
    context.set_default_timeout(5000)
    tab = await context.new_page()
    await tab.goto(server.page_url("phone", expired))
    await eventually(lambda: tab.is_visible("#join-form"), bool, 5, "the form")
    assert "过期" in await tab.text_content("[data-form-error]")
    await tab.screenshot(path=screenshot_path("phone-390x844-expired"))
    fresh = server.page_url("phone", server.token("council", "m2", "member", "李委员"))
    await tab.fill("#join-form textarea", fresh)
    await tab.click("#join-form button[type=submit]")
    await eventually(
        lambda: tab.evaluate("window.conference?.client?.state ?? null"),
        lambda s: s == "joined",
        10,
        "joined",
    )
    assert await tab.text_content("#member-name") == "李委员"
