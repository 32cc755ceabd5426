"""The chair's console on the laptops chairs use (issue 13), in headless Chromium against the real
server (media off): every panel inside the window from 1280x720 up, captions that fit the small
monitors, tiles that keep their height and order, Esc that closes the dialog, a raised hand that is
announced, a recording that is not stopped by one stray click, and a log in the current language
that names people by their display names, also after they left."""

# ruff: noqa: F811  (the fixtures imported from test_browser_pages are arguments here)
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from browser_util import CHAIR_LAPTOPS, VENUE_SCREEN, eventually, rest, screenshot_path
from playwright.async_api import Browser, Page
from test_browser_pages import browser, chromium, open_page, server  # noqa: F401 (fixtures)

PANELS = ["header.chair-header", ".endpoints", ".monitors", ".editor", ".floor", ".log"]

# Page rectangles [left, top, right, bottom] of the console's panels and of what must be reachable.
RECTS_JS = """(selectors) => Object.fromEntries(selectors.map((s) => {
  const n = document.querySelector(s);
  const b = n.getBoundingClientRect();
  return [s, [b.left, b.top, b.right, b.bottom]];
}))"""

TILES_JS = """() => [...document.querySelectorAll('#tiles .tile')].map((n) => {
  const b = n.getBoundingClientRect();
  return [n.dataset.identity, Math.round(b.left), Math.round(b.top), Math.round(b.height)];
})"""


def inside(inner: list[float], outer: list[float]) -> bool:
    return (
        inner[0] >= outer[0] - 0.5
        and inner[1] >= outer[1] - 0.5
        and inner[2] <= outer[2] + 0.5
        and inner[3] <= outer[3] + 0.5
    )


def overlap(a: list[float], b: list[float]) -> bool:
    return a[0] < b[2] - 0.5 and b[0] < a[2] - 0.5 and a[1] < b[3] - 0.5 and b[1] < a[3] - 0.5


async def tiles(chair: Page) -> list[list]:
    return await chair.evaluate(TILES_JS)


@pytest.mark.browser
async def test_console_fits_laptops_and_keeps_its_tiles_still(server, browser: Browser) -> None:
    errors: list[str] = []
    chair = await open_page(browser, server, "chair", "chair", "chair", "主持人", errors=errors)
    venues = {}
    for identity, name in [("hall-a", "第一分会场"), ("hall-b", "第二分会场"), ("hall-c", "第三分会场")]:
        venues[identity] = await open_page(
            browser, server, "venue", identity, "venue", name, VENUE_SCREEN, errors
        )
    phone = await open_page(browser, server, "phone", "m1", "member", "王委员", errors=errors)
    await eventually(lambda: tiles(chair), lambda t: len(t) == 4, 5, "four tiles")
    await rest(
        server,
        "PUT",
        "/api/rooms/council/program",
        {"layout": "grid-2x2", "slots": ["hall-a", "m1", "hall-b"]},
    )
    await rest(
        server, "POST", "/api/rooms/council/commands", {"type": "mute", "identity": "m1", "muted": True}
    )
    await eventually(
        lambda: chair.text_content("#program-live"), lambda t: "静音" in (t or ""), 3, "muted caption"
    )

    for size in CHAIR_LAPTOPS:
        await chair.set_viewport_size(size)
        await asyncio.sleep(0.3)
        window = [0, 0, size["width"], size["height"]]
        rects = await chair.evaluate(
            RECTS_JS, [*PANELS, "#program-live", "#program-draft", "#take", "#grant-next"]
        )
        for panel in PANELS:
            assert inside(rects[panel], window), (size, panel, rects[panel])
        for i, a in enumerate(PANELS):
            for b in PANELS[i + 1 :]:
                assert not overlap(rects[a], rects[b]), (size, a, b, rects[a], rects[b])
        assert inside(rects["#program-live"], rects[".monitors"]), (size, rects)
        assert inside(rects["#program-draft"], rects[".editor"]), (size, rects)
        assert inside(rects["#take"], rects[".editor"]) and inside(rects["#take"], window), (size, rects)
        assert inside(rects["#grant-next"], rects[".floor"]), (size, rects)
        # The live monitor's captions are scaled with their slots: none is clipped.
        clipped = await chair.eval_on_selector_all(
            "#program-live .slot:not([hidden]) .slot-caption:not([hidden])",
            "ns => ns.filter(n => n.scrollWidth > n.clientWidth + 1).map(n => n.textContent)",
        )
        assert clipped == [], (size, clipped)
        await chair.screenshot(path=screenshot_path(f"chair-{size['width']}x{size['height']}"))

    # Muting a venue changes its badges, not the tiles' height or place.
    await chair.set_viewport_size({"width": 1366, "height": 768})
    await asyncio.sleep(0.3)
    before = await tiles(chair)
    assert [t[0] for t in before] == ["hall-a", "hall-b", "hall-c", "m1"]
    await chair.click("#tiles .tile[data-identity='hall-a'] .tile-mute")
    await eventually(
        lambda: chair.get_attribute(".tile[data-identity='hall-a']", "data-muted"),
        lambda v: v == "true",
        3,
        "muted",
    )
    assert await chair.is_visible(".tile[data-identity='hall-a'] .tile-ask")
    assert await tiles(chair) == before
    # A venue that reconnects keeps its place; so does every tile after the console reloads.
    await venues["hall-a"].evaluate("window.conference.client.reconnectNow()")
    await eventually(
        lambda: venues["hall-a"].evaluate("window.conference.client.state"),
        lambda s: s == "joined",
        10,
        "back",
    )
    await venues["hall-b"].reload()
    await eventually(
        lambda: venues["hall-b"].evaluate("window.conference?.client?.state ?? null"),
        lambda s: s == "joined",
        10,
        "hall-b back",
    )
    await asyncio.sleep(0.3)
    assert [t[0] for t in await tiles(chair)] == ["hall-a", "hall-b", "hall-c", "m1"]
    await chair.reload()
    await eventually(lambda: tiles(chair), lambda t: len(t) == 4, 10, "tiles after reload")
    assert [t[0] for t in await tiles(chair)] == ["hall-a", "hall-b", "hall-c", "m1"]
    del phone
    assert errors == []


@pytest.mark.browser
async def test_console_announces_hands_confirms_stop_and_logs_in_the_current_language(
    server, browser: Browser
) -> None:
    errors: list[str] = []
    chair = await open_page(
        browser, server, "chair", "chair", "chair", "主持人", {"width": 1366, "height": 768}, errors
    )
    # An empty room says how to invite venues, with the first steps at hand: import the roster,
    # download everyone's invitation (links and QR codes).
    await eventually(lambda: chair.is_visible("#tiles-empty"), bool, 3, "the empty room's hint")
    assert "名单" in await chair.text_content("#tiles-empty")
    async with chair.expect_file_chooser() as chooser:
        await chair.click("#invite-import")
    assert (await chooser.value).element is not None
    async with chair.expect_download() as download:
        await chair.click("#invite-qr")
    assert "<html" in Path(await (await download.value).path()).read_text(encoding="utf-8").lower()
    hall = await open_page(browser, server, "venue", "hall-a", "venue", "第一分会场", VENUE_SCREEN, errors)
    phone = await open_page(browser, server, "phone", "m1", "member", "王委员", errors=errors)

    # Esc closes the shortcuts dialog.
    await chair.keyboard.press("?")
    assert await chair.evaluate("document.getElementById('help').open")
    await chair.keyboard.press("Escape")
    await eventually(
        lambda: chair.evaluate("document.getElementById('help').open"), lambda v: not v, 2, "closed"
    )

    # A raised hand: a sound and a highlight on the tile and the queue row; the sound can be turned off.
    chimes = await chair.evaluate("window.conference.console.chimes")
    await phone.click("#hand")
    await eventually(
        lambda: chair.is_visible("#floor-queue li.announced[data-identity='m1']"), bool, 3, "row"
    )
    assert "announced" in (await chair.get_attribute(".tile[data-identity='m1']", "class") or "")
    assert await chair.evaluate("window.conference.console.chimes") == chimes + 1
    await chair.click("#chime-toggle")
    assert "关" in await chair.text_content("#chime-toggle")
    await hall.mouse.move(10, 10)
    await hall.click("#hand")
    await eventually(
        lambda: chair.is_visible(".tile.announced[data-identity='hall-a']"), bool, 3, "highlight"
    )
    assert await chair.evaluate("window.conference.console.chimes") == chimes + 1  # no sound now

    # Starting a recording moves nothing in the header; stopping asks first.
    header = ["#help-toggle", "#chime-toggle", "#count", ".language-switch"]
    before = await chair.evaluate(RECTS_JS, header)
    await chair.click("#rec-toggle")
    await eventually(lambda: chair.text_content("#rec-elapsed"), lambda t: "0:0" in (t or ""), 3, "recording")
    assert await chair.evaluate(RECTS_JS, header) == before
    await chair.click("#rec-toggle")
    assert await chair.evaluate("document.getElementById('confirm-stop').open")
    await chair.click("#confirm-stop button[value=keep]")
    await asyncio.sleep(0.5)
    assert await chair.evaluate("window.conference.client.mirror.recording.active")
    await chair.click("#rec-toggle")
    await chair.click("#confirm-stop-yes")
    await eventually(
        lambda: chair.evaluate("window.conference.client.mirror.recording.active"),
        lambda v: not v,
        3,
        "stopped",
    )

    # The meeting's title, set here, reaches the venue's top bar.
    await chair.fill("#meeting-title-input", "第三次全体会议")
    await chair.press("#meeting-title-input", "Enter")
    await eventually(lambda: hall.text_content("#meeting-title"), lambda t: t == "第三次全体会议", 3, "title")

    # The member leaves; the log names them by their display name, and follows the language.
    await phone.close()
    await rest(server, "POST", "/api/rooms/council/commands", {"type": "remove", "identity": "m1"})
    await eventually(
        lambda: chair.text_content("#event-log"), lambda t: "王委员 离开会议" in t, 5, "left, named"
    )
    log = await chair.text_content("#event-log")
    assert "m1" not in log and "开始录制" in log and "第一分会场 举手" in log, log
    await chair.select_option("header .language-switch", "en")
    await eventually(
        lambda: chair.text_content("#event-log"), lambda t: "Recording started" in t, 3, "English"
    )
    log = await chair.text_content("#event-log")
    assert "王委员 left" in log and "第一分会场 raised a hand" in log, log
    assert "开始录制" not in log and "加入会议" not in log, log
    assert "m1" not in log
    await chair.screenshot(path=screenshot_path("chair-1366x768-en"))
    assert errors == []
