"""The venue screen as an audience sees it for a whole meeting (issue 13), at 1280x720 in headless
Chromium against the real server (media off: Chromium's fake camera still opens): the self-view
never covers a program slot, empty slots and an empty program show the meeting's title, the top
bar names the meeting and the venue, the floor holder is a lower third on a solid background,
one microphone control tells the truth, and an outage says so over the frozen picture."""

# ruff: noqa: F811  (the fixtures imported from test_browser_pages are arguments here)
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from browser_util import VENUE_SCREEN, eventually, free_port, rest, running_server, screenshot_path
from playwright.async_api import Browser, Page
from test_browser_pages import browser, chromium, open_page, server, wake  # noqa: F401 (fixtures)

TITLE = "第十二届委员会第三次全体会议"

# Page rectangles of what the audience must see, and of the venue's own things.
GEOMETRY_JS = """() => {
  const box = (n) => { const b = n.getBoundingClientRect(); return [b.left, b.top, b.right, b.bottom]; };
  const shown = (n) => n && !n.hidden && n.getBoundingClientRect().width > 0;
  const slots = [...document.querySelectorAll('#program .slot:not([hidden])')].map(box);
  const self = document.getElementById('selfview-box');
  return {slots, selfview: shown(self) ? box(self) : null, placement: self.dataset.placement,
          cam: box(document.getElementById('cam-select')), floor: shown(document.getElementById('floor'))
          ? box(document.getElementById('floor')) : null,
          caption: self.querySelector('figcaption').textContent,
          names: [...document.querySelectorAll('#program .slot:not([hidden]) .slot-caption:not([hidden])')]
                 .map(box),
          bar: box(document.querySelector('.overlay-bar.bottom'))};
}"""


def overlap(a: list[float], b: list[float]) -> bool:
    return a[0] < b[2] - 0.5 and b[0] < a[2] - 0.5 and a[1] < b[3] - 0.5 and b[1] < a[3] - 0.5


async def visible_texts(tab: Page) -> str:
    return await tab.evaluate("document.body.innerText")


@pytest.mark.browser
async def test_venue_screen_at_1280x720(server, browser: Browser) -> None:
    errors: list[str] = []
    await rest(server, "POST", "/api/rooms", {"room": "council", "title": TITLE})
    chair = await open_page(browser, server, "chair", "chair", "chair", "主持人", errors=errors)
    hall = await open_page(browser, server, "venue", "hall-a", "venue", "第一分会场", VENUE_SCREEN, errors)
    await open_page(browser, server, "venue", "hall-b", "venue", "第二分会场", VENUE_SCREEN, errors)
    member = await open_page(browser, server, "phone", "m1", "member", "王委员", errors=errors)

    # Nothing on the program: a waiting screen with the meeting's title, the time and this venue.
    await eventually(lambda: hall.is_visible("#waiting"), bool, 3, "waiting screen")
    waiting = await hall.text_content("#waiting")
    assert TITLE in waiting and "第一分会场" in waiting, waiting
    # The topic and scheduled start the chair sets for the public show on the waiting card too.
    await rest(server, "PATCH", "/api/rooms/council", {"topic": "城市交通专题", "starts_at": 1_893_456_000})
    waiting = await eventually(
        lambda: hall.text_content("#waiting"), lambda w: "城市交通专题" in w, 3, "topic on the card"
    )
    assert "计划开始" in waiting and "2030" in waiting, waiting
    text = await visible_texts(hall)
    assert "空位" not in text, text
    # The top bar names the meeting and this venue, not the room id.
    assert await hall.text_content("#meeting-title") == TITLE
    assert await hall.text_content("#venue-name") == "第一分会场"
    assert "council" not in await hall.text_content("header")
    # The waiting screen is not the program: the self-view has its corner there.
    assert (await hall.evaluate(GEOMETRY_JS))["placement"] == "free"
    await hall.screenshot(path=screenshot_path("venue-1280x720-waiting"))

    # Every layout: the self-view is labelled and covers no slot (nor the camera picker); where
    # the layout leaves no room it is not shown. Empty slots show the title card, not "empty".
    placements = {}
    for layout, slots in [
        ("single", ["hall-b"]),
        ("pip", ["hall-b", "m1"]),
        ("side-by-side", ["hall-b", "m1"]),
        ("grid-2x2", ["hall-b", "m1", "hall-a"]),
        ("grid-3x3", ["hall-b"]),
        ("speaker-1+5", ["hall-b", "m1"]),
    ]:
        await rest(server, "PUT", "/api/rooms/council/program", {"layout": layout, "slots": slots})
        await eventually(
            lambda: hall.evaluate("document.querySelector('#program').dataset.layout"),
            lambda v, lay=layout: v == lay,
            3,
            f"{layout} shown",
        )
        await wake(hall)
        await asyncio.sleep(0.2)
        geometry = await hall.evaluate(GEOMETRY_JS)
        placements[layout] = geometry["placement"]
        assert not await hall.is_visible("#waiting")
        assert geometry["caption"] == "本会场"
        # The controls show (just woken): no slot's name is under them.
        assert geometry["names"], (layout, geometry)
        for rect in geometry["names"]:
            assert not overlap(rect, geometry["bar"]), (layout, rect, geometry["bar"])
        if geometry["selfview"]:
            for rect in geometry["slots"]:
                assert not overlap(geometry["selfview"], rect), (layout, geometry)
            assert not overlap(geometry["selfview"], geometry["cam"]), (layout, geometry)
        else:
            assert geometry["placement"] == "no-room", (layout, geometry)
        cards = await hall.eval_on_selector_all(
            "#program .slot.empty:not([hidden]) .slot-card", "ns => ns.map(n => n.textContent)"
        )
        assert cards == [TITLE] * (len(geometry["slots"]) - len(slots)), (layout, cards)
        assert "空位" not in await visible_texts(hall)
        await hall.screenshot(path=screenshot_path(f"venue-1280x720-{layout}"))
    # Side by side leaves bands above and below the two slots: the self-view is shown there.
    assert placements["side-by-side"] == "free", placements
    assert placements["single"] == "no-room", placements

    # The floor holder: a lower third on a solid background, large enough to read across a room.
    await member.click("#hand")
    await eventually(lambda: chair.is_visible("#floor-queue li[data-identity='m1']"), bool, 3, "queued")
    await chair.keyboard.press("n")
    await eventually(lambda: hall.is_visible("#floor"), bool, 3, "floor banner")
    assert "王委员" in await hall.text_content("#floor")
    style = await hall.evaluate(
        "(() => { const s = getComputedStyle(document.querySelector('.lower-third-name'));"
        " return [s.backgroundColor, parseFloat(s.fontSize)]; })()"
    )
    assert style[0].startswith("rgb(") and style[1] >= 24, style  # rgb(): opaque, no alpha
    await wake(hall)
    geometry = await hall.evaluate(GEOMETRY_JS)
    if geometry["selfview"]:
        assert not overlap(geometry["selfview"], geometry["floor"]), geometry
    assert not overlap(geometry["floor"], geometry["bar"]), geometry
    await hall.screenshot(path=screenshot_path("venue-1280x720-floor"))

    # One microphone control that says the true state: muted by the chair, and a press asks for the floor.
    await rest(
        server, "POST", "/api/rooms/council/commands", {"type": "mute", "identity": "hall-a", "muted": True}
    )
    await eventually(
        lambda: hall.get_attribute("#mic-state", "data-chair-muted"), lambda v: v == "true", 3, "muted"
    )
    control = await hall.text_content("#mic")
    assert "已被主持人静音" in control and "申请发言" in control, control
    assert "关闭麦克风" not in await visible_texts(hall)
    await hall.click("#mic")
    await eventually(
        lambda: chair.evaluate("window.conference.client.mirror.floorQueue"),
        lambda q: q == ["hall-a"],
        3,
        "the press asked for the floor",
    )
    await eventually(lambda: hall.text_content("#mic"), lambda t: "第 1 位" in (t or ""), 3, "place shown")
    await hall.screenshot(path=screenshot_path("venue-1280x720-muted"))
    assert errors == []


@pytest.mark.browser
async def test_venue_outage_is_shown_over_the_frozen_picture(tmp_path: Path, browser: Browser) -> None:
    port = free_port()
    async with running_server(tmp_path / "data", media=False, port=port) as srv:
        await rest(srv, "POST", "/api/rooms", {"room": "council", "title": TITLE})
        hall = await open_page(browser, srv, "venue", "hall-a", "venue", "第一分会场", VENUE_SCREEN)
        await rest(srv, "PUT", "/api/rooms/council/program", {"layout": "side-by-side", "slots": ["hall-a"]})
        await eventually(
            lambda: hall.evaluate("document.querySelector('#program').dataset.layout"),
            lambda v: v == "side-by-side",
            3,
            "program shown",
        )
        assert not await hall.is_visible("#outage")
    # The server is gone: after a few seconds a calm notice over the picture, the microphone unknown.
    await eventually(lambda: hall.is_visible("#outage"), bool, 8, "outage notice")
    assert "连接中断" in await hall.text_content("#outage")
    assert await hall.get_attribute("#mic-state", "data-unknown") == "true"
    assert "未知" in await hall.text_content("#mic")
    # The picture stays as it was: the program's slots are not torn down.
    assert await hall.evaluate("document.querySelector('#program').dataset.layout") == "side-by-side"
    await hall.screenshot(path=screenshot_path("venue-1280x720-outage"))
    async with running_server(tmp_path / "data", media=False, port=port):
        await eventually(lambda: hall.is_visible("#outage"), lambda v: not v, 20, "notice gone once back")
        assert await hall.get_attribute("#mic-state", "data-unknown") == "false"


# Counts getUserMedia calls (with the client's state at the time) and keeps every track it gave.
DEVICE_PROBE_JS = """(() => {
  window.__gum = {calls: [], tracks: []};
  const devices = navigator.mediaDevices;
  if (!devices) return;
  const original = devices.getUserMedia.bind(devices);
  devices.getUserMedia = async (constraints) => {
    window.__gum.calls.push(window.conference?.client?.state ?? 'none');
    const stream = await original(constraints);
    window.__gum.tracks.push(...stream.getTracks());
    return stream;
  };
})()"""


async def probed_tab(browser: Browser, viewport: dict[str, int] = VENUE_SCREEN) -> tuple[Page, list[str]]:
    context = await browser.new_context(viewport=viewport, locale="zh-CN")
    context.set_default_timeout(5000)
    await context.add_init_script(DEVICE_PROBE_JS)
    tab = await context.new_page()
    sockets: list[str] = []
    tab.on("websocket", lambda ws: sockets.append(ws.url))
    return tab, sockets


@pytest.mark.browser
async def test_devices_open_only_after_the_join_and_stop_when_removed(server, browser: Browser) -> None:
    """Issue 9, item 10: an expired or tampered link never lights the camera; a joined venue opens
    its devices after the join, and every track stops when the chair removes it."""
    import time

    from browser_util import SECRET

    from signaling.tokens import mint_token

    expired = mint_token(SECRET, "council", "hall-x", "X", "venue", 60, now=int(time.time()) - 3600)
    tab, sockets = await probed_tab(browser)
    await tab.goto(server.page_url("venue", expired))
    await eventually(lambda: tab.is_visible("#join-form"), bool, 5, "the form asks for a new link")
    assert "过期" in await tab.text_content("[data-form-error]")
    await asyncio.sleep(1.0)
    assert await tab.evaluate("window.__gum.calls") == [] and sockets == []

    tampered = server.token("council", "hall-y", "venue", "Y")[:-4] + "AAAA"
    tab, sockets = await probed_tab(browser)
    await tab.goto(server.page_url("venue", tampered))
    await eventually(lambda: tab.is_visible("#fatal"), bool, 5, "refused by the server")
    # A refused link can be replaced where it failed: the form to paste a new one is there.
    assert await tab.is_visible("#join-form textarea")
    await asyncio.sleep(0.5)
    assert await tab.evaluate("window.__gum.calls") == []

    chair = await open_page(browser, server, "chair", "chair", "chair", "主持人")
    tab, _ = await probed_tab(browser)
    await tab.goto(server.page_url("venue", server.token("council", "hall-a", "venue", "第一分会场")))
    await eventually(
        lambda: tab.evaluate("window.__gum.tracks.filter(t => t.readyState === 'live').length"),
        lambda n: n == 2,
        10,
        "camera and microphone open",
    )
    calls = await tab.evaluate("window.__gum.calls")
    assert calls and set(calls) == {"joined"}, calls
    await chair.click("#tiles .tile[data-identity='hall-a'] .tile-remove")
    await chair.click("#tiles .tile[data-identity='hall-a'] .tile-remove")  # confirm
    await eventually(lambda: tab.is_visible("#fatal"), bool, 3, "removed notice")
    states = await tab.evaluate("window.__gum.tracks.map(t => t.readyState)")
    assert states and set(states) == {"ended"}, states


@pytest.mark.browser
@pytest.mark.parametrize(
    ("page", "role", "right", "says"),
    [
        ("venue", "clerk", "clerk", "会议录像页面"),
        ("chair", "member", "phone", "委员手机端"),
        ("phone", "venue", "venue", "会场屏幕"),
        ("clerk", "chair", "chair", "主持人控制台"),
    ],
)
async def test_a_page_refuses_a_role_it_does_not_serve(
    server,
    browser: Browser,
    page: str,
    role: str,
    right: str,
    says: str,
) -> None:
    """Issue 9, item 11: a link opened on the wrong page does not join (no socket, no camera) and
    says which page its role uses, with the link to it."""
    tab, sockets = await probed_tab(browser)
    token = server.token("council", "someone", role, "某人")
    await tab.goto(server.page_url(page, token))
    await eventually(lambda: tab.is_visible("#fatal"), bool, 5, "refusal shown")
    assert says in await tab.text_content("#fatal")
    await asyncio.sleep(0.5)
    assert sockets == [] and await tab.evaluate("window.__gum.calls") == []
    await tab.click(f"#fatal a[data-right-page='{right}']")
    await eventually(lambda: tab.evaluate("location.pathname"), lambda p: p == f"/{right}", 5, "right page")
    await eventually(
        lambda: tab.evaluate(f"!document.getElementById('{right}').hidden"), bool, 5, "the right page opens"
    )
    assert not await tab.is_visible("#fatal")
