"""The pages in a real headless Chromium against the real server, with media off (NullMedia):
everything the room's events drive (program slots, mute, floor, recording, reconnect, language)
works without a media backend. The translation table is checked statically too."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from browser_util import (
    DESKTOP,
    PHONE,
    RunningServer,
    chromium_args,
    ensure_chromium,
    eventually,
    running_server,
    screenshot_path,
)
from playwright.async_api import Browser, Page

WEB = Path(__file__).resolve().parent.parent / "web"


# --- static checks (no browser) -----------------------------------------------------------------


def _table_keys(language: str) -> set[str]:
    source = (WEB / "i18n.js").read_text(encoding="utf-8")
    opening = {"zh-CN": '\n  "zh-CN": {', "en": "\n  en: {"}[language]
    start = source.index(opening) + len(opening)
    end = source.index("\n  },", start)
    return set(re.findall(r'^\s+"([^"]+)":', source[start:end], flags=re.M))


def test_translation_table_covers_every_string() -> None:
    zh, en = _table_keys("zh-CN"), _table_keys("en")
    assert len(zh) > 150
    assert zh == en, f"only in zh-CN: {sorted(zh - en)}; only in en: {sorted(en - zh)}"
    used: set[str] = set()
    for html in WEB.glob("*.html"):
        if html.name == "head.html":  # its "{page}.title" is each page's, checked through the pages
            used |= {f"{page}.title" for page in ("index", "venue", "phone", "chair", "clerk")}
            continue
        used |= set(
            re.findall(r'data-i18n(?:-title|-placeholder)?="([^"]+)"', html.read_text(encoding="utf-8"))
        )
    for js in WEB.glob("*.js"):
        used |= set(re.findall(r"\bt\(\s*\"([a-z_]+\.[a-z0-9_.+-]+)\"", js.read_text(encoding="utf-8")))
    missing = sorted(used - zh)
    assert not missing, f"strings without a translation: {missing}"
    # Keys built at run time: every layout of the catalogue, every connection state, every reason.
    from conference.layouts import LAYOUTS

    for name in LAYOUTS:
        assert f"layouts.{name}" in zh
    for state in ("idle", "connecting", "joined", "reconnecting", "failed", "closed"):
        assert f"conn.{state}" in zh
    for reason in ("left", "removed", "timeout"):
        assert f"reasons.{reason}" in zh


def test_pages_reference_only_files_that_exist() -> None:
    from signaling.pages import compose_page

    for html in ("index.html", "venue.html", "phone.html", "chair.html", "clerk.html", "moderate.html"):
        text = compose_page(WEB, html)
        for ref in re.findall(r'(?:src|href)="/static/([^"]+)"', text):
            assert (WEB / ref).is_file(), f"{html} refers to missing /static/{ref}"
    for js in WEB.glob("*.js"):
        for ref in re.findall(r'from "\./([^"]+)"', js.read_text(encoding="utf-8")):
            assert (WEB / ref).is_file(), f"{js.name} imports missing ./{ref}"


# --- in the browser -----------------------------------------------------------------------------


@pytest.fixture
def chromium() -> Path:
    path = ensure_chromium()
    if path is None:
        pytest.fail("chromium is not installed and could not be installed with apt-get")
    return path


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with running_server(tmp_path / "data", media=False) as srv:
        yield srv


@pytest.fixture
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=str(chromium), args=chromium_args())
        try:
            yield b
        finally:
            await b.close()


async def open_page(
    browser: Browser,
    server: RunningServer,
    page: str,
    identity: str,
    role: str,
    name: str,
    viewport: dict[str, int] = DESKTOP,
    errors: list[str] | None = None,
) -> Page:
    """A page joined as ``identity``; uncaught script errors go to ``errors``."""
    context = await browser.new_context(viewport=viewport, locale="zh-CN")
    context.set_default_timeout(5000)
    tab = await context.new_page()
    if errors is not None:
        tab.on("pageerror", lambda exc: errors.append(f"{identity}: {exc}"))
        # The pages are served with a strict Content-Security-Policy: anything it blocks is an error.
        tab.on(
            "console",
            lambda msg: (
                errors.append(f"{identity}: {msg.text}")
                if msg.type == "error" and "Content Security Policy" in msg.text
                else None
            ),
        )
    await tab.goto(server.page_url(page, server.token("council", identity, role, name)))
    await eventually(
        lambda: tab.evaluate("window.conference?.client?.state ?? null"),
        lambda s: s == "joined",
        10,
        f"{identity} joins",
    )
    return tab


async def wake(tab: Page) -> None:
    """Move the mouse, as a person does: an idle venue screen hides its controls."""
    await tab.mouse.move(200, 200)
    await tab.mouse.move(220, 210)


async def slots_of(tab: Page) -> list[list[str]]:
    return await tab.evaluate(
        "[...document.querySelectorAll('#program [data-slot]')].filter(n => !n.hidden)"
        ".map(n => [n.dataset.slot, n.dataset.identity])"
    )


@pytest.mark.browser
async def test_chair_runs_the_meeting_and_every_page_follows(server: RunningServer, browser: Browser) -> None:
    errors: list[str] = []
    chair = await open_page(browser, server, "chair", "chair", "chair", "主持人", errors=errors)
    hall_a = await open_page(browser, server, "venue", "hall-a", "venue", "第一分会场", errors=errors)
    hall_b = await open_page(browser, server, "venue", "hall-b", "venue", "第二分会场", errors=errors)
    phone = await open_page(browser, server, "phone", "m1", "member", "王委员", PHONE, errors)

    # The chair sees every endpoint as a tile.
    await eventually(
        lambda: chair.evaluate("[...document.querySelectorAll('#tiles .tile')].map(n => n.dataset.identity)"),
        lambda ids: sorted(ids) == ["hall-a", "hall-b", "m1"],
        5,
        "tiles for every endpoint",
    )
    # Layout by key, slots by click (preview a feed, click a slot), then one take.
    await chair.keyboard.press("4")
    assert await chair.get_attribute(".layout-choice[data-layout='grid-2x2']", "aria-checked") == "true"
    for slot, identity in [(0, "hall-b"), (1, "hall-a"), (3, "m1")]:
        await chair.click(f"#tiles .tile[data-identity='{identity}'] .tile-picture")
        await chair.click(f"#program-draft [data-slot='{slot}']")
    # Nothing reaches the venues before the take.
    assert await slots_of(hall_a) == [["0", ""]]
    await chair.keyboard.press("Enter")
    expected = [["0", "hall-b"], ["1", "hall-a"], ["2", ""], ["3", "m1"]]
    for venue in (hall_a, hall_b):
        await eventually(lambda v=venue: slots_of(v), lambda s: s == expected, 1.0, "venue follows the take")
    caption = await hall_a.text_content("#program [data-slot='0'] .slot-name")
    assert caption == "第二分会场"
    # The phone shows the main slot only.
    await eventually(lambda: slots_of(phone), lambda s: s == [["0", "hall-b"]], 1.0, "phone main slot")

    # Drag a tile onto a slot, switch layout, take: side-by-side keeps the first two slots.
    await chair.drag_and_drop("#tiles .tile[data-identity='m1']", "#program-draft [data-slot='2']")
    await chair.click(".layout-choice[data-layout='side-by-side']")
    await chair.click("#take")
    await eventually(
        lambda: slots_of(hall_b), lambda s: s == [["0", "hall-b"], ["1", "hall-a"]], 1.0, "second take"
    )

    # The venue switches its microphone off; the chair mutes it too: its screen says so, the tile too.
    await wake(hall_b)
    await hall_b.click("#mic")
    await eventually(
        lambda: chair.get_attribute(".tile[data-identity='hall-b'] .badge-self-muted", "class"),
        lambda v: v is not None,
        2,
        "self-mute seen by the chair",
    )
    await chair.click("#tiles .tile[data-identity='hall-b'] .tile-mute")
    await eventually(
        lambda: hall_b.get_attribute("#mic-state", "data-chair-muted"),
        lambda v: v == "true",
        2,
        "venue muted",
    )
    assert await chair.get_attribute(".tile[data-identity='hall-b']", "data-muted") == "true"
    # Ask to unmute: the venue gets the request and accepts it.
    await chair.click("#tiles .tile[data-identity='hall-b'] .tile-ask")
    await eventually(lambda: hall_b.is_visible("#unmute-request"), bool, 2, "unmute request shown")
    assert await hall_b.get_attribute("#mic-state", "data-chair-muted") == "false"
    assert await hall_b.get_attribute("#mic-state", "data-live") == "false"  # no remote hot mic
    await wake(hall_b)
    await hall_b.click("#accept-unmute")
    await eventually(
        lambda: hall_b.get_attribute("#mic-state", "data-live"), lambda v: v == "true", 2, "mic on"
    )
    assert not await hall_b.is_visible("#unmute-request")

    # The member starts with the microphone off, raises a hand, sees the place in the queue.
    assert await phone.get_attribute("#mic-state", "data-live") == "false"
    await phone.click("#hand")
    await eventually(lambda: phone.text_content("#place"), lambda t: "1" in (t or ""), 2, "place in queue")
    await wake(hall_a)
    await hall_a.click("#hand")
    await eventually(
        lambda: chair.evaluate(
            "[...document.querySelectorAll('#floor-queue li')].map(n => n.dataset.identity)"
        ),
        lambda q: q == ["m1", "hall-a"],
        2,
        "queue in order",
    )
    await eventually(lambda: hall_a.text_content("#hand"), lambda t: "2" in (t or ""), 2, "second in line")
    # N gives the floor to the first hand; the phone asks for a tap, the tap opens the microphone.
    await chair.keyboard.press("n")
    await eventually(lambda: phone.is_visible("#granted"), bool, 2, "granted banner")
    await phone.screenshot(path=screenshot_path("phone-granted-360"))
    await phone.click("#speak-now")
    await eventually(
        lambda: phone.get_attribute("#mic-state", "data-live"), lambda v: v == "true", 2, "member's mic on"
    )
    await eventually(
        lambda: chair.evaluate("window.conference.client.mirror.participant('m1').self_muted"),
        lambda v: v is False,
        2,
        "the server knows the member unmuted",
    )
    for venue in (hall_a, hall_b):
        await eventually(
            lambda v=venue: v.text_content("#floor"), lambda t: "王委员" in (t or ""), 2, "floor"
        )

    # Recording: the chair starts it, venues show it, the elapsed time runs.
    await chair.click("#rec-toggle")
    await eventually(lambda: hall_a.is_visible("#recording"), bool, 2, "recording shown on the venue")
    await eventually(lambda: chair.text_content("#rec-elapsed"), lambda t: "0:0" in (t or ""), 3, "elapsed")

    await chair.screenshot(path=screenshot_path("chair-desktop"))
    await hall_a.screenshot(path=screenshot_path("venue-desktop"))
    await phone.screenshot(path=screenshot_path("phone-360"))
    await chair.set_viewport_size(PHONE)
    await chair.screenshot(path=screenshot_path("chair-360"), full_page=True)
    await hall_a.set_viewport_size(PHONE)
    await hall_a.screenshot(path=screenshot_path("venue-360"))
    await phone.set_viewport_size(DESKTOP)
    await phone.screenshot(path=screenshot_path("phone-desktop"))

    await chair.click("#rec-toggle")
    await chair.click("#confirm-stop-yes")  # stopping asks first
    await eventually(lambda: hall_a.is_visible("#recording"), lambda v: not v, 2, "recording stopped")
    log_text = await chair.text_content("#event-log")
    assert "开始录制" in log_text and "王委员 获得发言权" in log_text
    assert errors == []


@pytest.mark.browser
async def test_venue_rejoins_after_reload_and_after_a_drop(server: RunningServer, browser: Browser) -> None:
    errors: list[str] = []
    chair = await open_page(browser, server, "chair", "chair", "chair", "主持人", errors=errors)
    hall = await open_page(browser, server, "venue", "hall-a", "venue", "第一分会场", errors=errors)
    await chair.click("#tiles .tile[data-identity='hall-a'] .tile-picture")
    await chair.click("#program-draft [data-slot='0']")
    await chair.click("#take")
    await eventually(lambda: slots_of(hall), lambda s: s == [["0", "hall-a"]], 1.0, "on the program")

    await hall.reload()
    await eventually(
        lambda: hall.evaluate("window.conference?.client?.state ?? null"),
        lambda s: s == "joined",
        10,
        "rejoined",
    )
    assert await slots_of(hall) == [["0", "hall-a"]]
    await eventually(
        lambda: chair.text_content("#event-log"), lambda t: "第一分会场 重新连接" in t, 3, "logged"
    )

    # A drop: the server loses the socket without a goodbye; the page comes back by itself.
    await hall.evaluate("window.conference.client._ws.close(4000)")
    await eventually(
        lambda: hall.evaluate("window.conference.client.state"), lambda s: s == "reconnecting", 2, "notices"
    )
    await eventually(
        lambda: hall.evaluate("window.conference.client.state"), lambda s: s == "joined", 10, "back by itself"
    )
    assert await slots_of(hall) == [["0", "hall-a"]]
    assert errors == []


@pytest.mark.browser
async def test_join_form_language_switch_and_index(server: RunningServer, browser: Browser) -> None:
    context = await browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(5000)
    tab = await context.new_page()
    await tab.goto(f"{server.url}/venue")
    assert await tab.is_visible("#join-form")
    assert await tab.text_content("#join-form button[type=submit]") == "加入会议"
    await tab.fill("#join-form textarea", "not a token")
    await tab.click("#join-form button[type=submit]")
    assert "无法识别" in (await tab.text_content("[data-form-error]"))
    # An invitation link pasted whole works, and the token lands in the address for reloads.
    link = server.page_url("venue", server.token("council", "hall-c", "venue", "第三分会场"))
    await tab.fill("#join-form textarea", link)
    await tab.click("#join-form button[type=submit]")
    await eventually(
        lambda: tab.evaluate("window.conference?.client?.state ?? null"),
        lambda s: s == "joined",
        10,
        "joined",
    )
    assert "token=" in tab.url

    # English, remembered across a reload.
    await tab.select_option("footer .language-switch", "en")
    assert await tab.text_content("#fullscreen") == "Full screen"
    await tab.reload()
    await eventually(lambda: tab.text_content("#fullscreen"), lambda t: t == "Full screen", 5, "English kept")
    assert await tab.evaluate("document.documentElement.lang") == "en"

    index = await context.new_page()
    await index.goto(server.url + "/")
    assert await index.text_content("h1") == "Remote consultation"
    await index.screenshot(path=screenshot_path("index-desktop"))
    for page in ("phone", "chair", "clerk"):
        await index.goto(f"{server.url}/{page}")
        assert await index.is_visible("#join-form")
        await index.set_viewport_size(PHONE)
        await index.screenshot(path=screenshot_path(f"{page}-join-360"))
        await index.set_viewport_size(DESKTOP)


@pytest.mark.browser
async def test_removed_or_unauthorised_pages_say_so(server: RunningServer, browser: Browser) -> None:
    chair = await open_page(browser, server, "chair", "chair", "chair", "主持人")
    hall = await open_page(browser, server, "venue", "hall-a", "venue", "第一分会场")
    await chair.click("#tiles .tile[data-identity='hall-a'] .tile-remove")
    await chair.click("#tiles .tile[data-identity='hall-a'] .tile-remove")  # confirm
    await eventually(lambda: hall.is_visible("#fatal"), bool, 3, "removed notice")
    assert "移出" in await hall.text_content("#fatal")
    assert await hall.evaluate("window.conference.client.state") == "failed"

    context = await browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(5000)
    forged = await context.new_page()
    token = server.token("council", "hall-z", "venue", "Z")
    await forged.goto(f"{server.url}/venue?token={token[:-4]}AAAA")
    await eventually(lambda: forged.is_visible("#fatal"), bool, 5, "unauthorised notice")
    assert "无效" in await forged.text_content("#fatal")


@pytest.mark.browser
async def test_clerk_lists_renders_and_downloads_a_recording(server: RunningServer, browser: Browser) -> None:
    errors: list[str] = []
    chair = await open_page(browser, server, "chair", "chair", "chair", "主持人", errors=errors)
    await open_page(browser, server, "venue", "hall-a", "venue", "第一分会场", errors=errors)
    await chair.click("#rec-toggle")
    await eventually(
        lambda: chair.text_content("#rec-elapsed"), lambda t: "0:01" in (t or ""), 5, "recording"
    )
    await chair.click("#rec-toggle")
    await chair.click("#confirm-stop-yes")  # stopping asks first
    await eventually(lambda: chair.text_content("#rec-toggle"), lambda t: t == "开始录制", 3, "stopped")

    context = await browser.new_context(viewport=DESKTOP, accept_downloads=True)
    context.set_default_timeout(5000)
    clerk = await context.new_page()
    clerk.on("pageerror", lambda exc: errors.append(f"clerk: {exc}"))
    requests: list[tuple[str, str, str]] = []
    clerk.on("request", lambda r: requests.append((r.resource_type, r.method, r.url)))
    await clerk.goto(server.page_url("clerk", server.token("council", "clerk-1", "clerk", "书记员")))
    row = clerk.locator("#recordings tr[data-recording]")
    await eventually(row.count, lambda n: n == 1, 5, "one recording listed")
    cells = await row.locator("td").all_text_contents()
    assert "第一分会场" in cells[3] and cells[5] == "已结束", cells
    await row.get_by_role("button", name="详情").click()
    await eventually(lambda: clerk.is_visible("#detail"), bool, 10, "details shown")

    await clerk.select_option("#render-layout", "grid")
    await clerk.select_option("#render-form select[name=size]", "640x360")
    await clerk.click("#render-form button[type=submit]")
    # The program render started by itself when the recording stopped; ours is the grid one.
    render = clerk.locator("#renders tr[data-layout='grid']")
    await eventually(render.count, lambda n: n == 1, 5, "the render job is listed")
    assert "全体宫格" in await render.locator("td").first.text_content()
    state = await eventually(
        lambda: render.get_attribute("data-state"),
        lambda s: s in ("done", "failed"),
        90,
        "the render finishes",
    )
    assert state == "done", "the recorder failed to render (see its job)"
    assert await render.locator(".state").text_content() == "已完成"
    await clerk.screenshot(path=screenshot_path("clerk-desktop"))
    # A plain signed link: the browser saves the file itself; the page never fetches it.
    async with clerk.expect_download() as info:
        await render.get_by_role("link", name="下载").click()
    download = await info.value
    assert download.suggested_filename.endswith("-grid-640x360.mp4")
    assert download.url.startswith(f"{server.url}/api/recordings/") and "&sig=" in download.url
    path = await download.path()
    assert path is not None and path.stat().st_size > 1000
    assert not [r for r in requests if r[0] == "fetch" and "/download?" in r[2]], requests
    streams = [r for r in requests if r[0] == "eventsource"]
    paths = [url.split("?")[0].rsplit("/", 2)[-2] for *_, url in streams]
    print(f"progress followed through {len(streams)} EventSource stream(s): {paths}")
    assert all("&sig=" in url for *_, url in streams)

    # Twenty minutes later the link shown has expired: the click asks for a fresh one first.
    await clerk.evaluate("Date.now = ((now) => () => now() + 20 * 60 * 1000)(Date.now)")
    async with clerk.expect_download() as info:
        await render.get_by_role("link", name="章节字幕 (VTT)").click()
    vtt = await info.value
    assert vtt.suggested_filename.endswith("-grid-640x360.vtt") and "&sig=" in vtt.url
    assert [r for r in requests if r[1] == "POST" and r[2].endswith("/download-url")]

    # The list's download button saves the program render (made when the recording stopped).
    program = clerk.locator("#renders tr[data-layout='program']")
    await eventually(
        lambda: program.get_attribute("data-state"), lambda s: s in ("done", "failed"), 90, "program render"
    )
    async with clerk.expect_download() as info:
        await row.get_by_role("button", name="下载").click()
    whole = await info.value
    assert whole.suggested_filename.endswith("-program-1280x720.mp4") and "&sig=" in whole.url
    await clerk.set_viewport_size(PHONE)
    await clerk.screenshot(path=screenshot_path("clerk-360"), full_page=True)
    assert errors == []


@pytest.mark.browser
async def test_clerk_page_says_when_the_recordings_api_is_missing(
    server: RunningServer, browser: Browser
) -> None:
    context = await browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(5000)
    clerk = await context.new_page()
    # What a server without the recorder answers: aiohttp's plain-text 404.
    await clerk.route("**/api/recordings**", lambda route: route.fulfill(status=404, body="404: Not Found"))
    await clerk.goto(server.page_url("clerk", server.token("council", "clerk-1", "clerk", "书记员")))
    await eventually(lambda: clerk.is_visible("#api-state"), bool, 5, "the missing API is reported")
    assert "尚未提供录像接口" in await clerk.text_content("#api-state")
    assert await clerk.is_visible("#empty")
