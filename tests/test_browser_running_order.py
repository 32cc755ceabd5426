"""The running order in real Chromium: three venues (solid-colour cameras) and the chair's console.
The chair goes through a three-item agenda with PgDn (what a presentation remote sends) and Enter:
each item's preset is staged as the next program and taken; every venue screen shows the item's
title and the right colours in the right layout. The third preset names someone who is not there:
that slot stays empty and the take goes through."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import pytest
from browser_util import (
    ADMIN_KEY,
    COLOURS,
    SLOT_PIXELS_JS,
    SMALL_SCREEN,
    VIDEO_DIAGNOSIS_JS,
    RunningServer,
    chromium_args,
    colour_name,
    ensure_chromium,
    eventually,
    log,
    rest,
    screenshot_path,
    server_process,
    write_y4m,
)
from playwright.async_api import Page, async_playwright

pytestmark = [pytest.mark.browser, pytest.mark.media, pytest.mark.realtime]

# hall-c is not on the roster: a guest, with the kind and sector its invitation carries.
ROSTER = "identity,name,kind,sector\nhall-a,第一分会场,venue,\nhall-b,第二分会场,department,教育界\n".encode()
TOKEN_CLAIMS = {"hall-c": {"kind": "expert", "sector": "新闻界"}}
VENUES = {
    "hall-a": ("第一分会场", "red"),
    "hall-b": ("第二分会场", "green"),
    "hall-c": ("第三分会场", "blue"),
}
AGENDA = [
    {
        "title": "开幕致辞",
        "kind": "speech",
        "planned_s": 300,
        "preset": {"layout": "single", "slots": ["hall-a"]},
    },
    {
        "title": "连线第三分会场",
        "kind": "remote_link",
        "planned_s": 600,
        "preset": {"layout": "side-by-side", "slots": ["hall-c", "hall-b"]},
    },
    {
        "title": "教育、卫生、体育部门答复",
        "kind": "department_answers",
        "planned_s": 1200,
        "preset": {"layout": "grid-2x2", "slots": ["hall-b", "yang", "hall-a", "hall-c"]},  # yang is absent
    },
]


async def put_roster(server: RunningServer, data: bytes) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "text/csv"}
    async with (
        aiohttp.ClientSession() as http,
        http.put(f"{server.url}/api/rooms/council/roster", data=data, headers=headers) as res,
    ):
        assert res.status == 200, await res.text()


async def slot_colours(tab: Page) -> dict[int, str | None]:
    return {int(slot): colour_name(rgb) for slot, rgb in (await tab.evaluate(SLOT_PIXELS_JS)).items()}


async def test_the_chair_goes_through_the_agenda_and_every_venue_follows(tmp_path: Path) -> None:
    if ensure_chromium() is None:
        pytest.fail("chromium is not installed and could not be installed with apt-get")
    errors: list[str] = []
    async with server_process(tmp_path / "data", media=True) as server, async_playwright() as pw:
        await rest(server, "PUT", "/api/rooms/council/agenda", {"items": AGENDA})
        await put_roster(server, ROSTER)
        browsers = []
        try:
            tabs: dict[str, Page] = {}
            for identity, role, name, colour in [
                ("chair", "chair", "主持人", None),
                *((i, "venue", n, c) for i, (n, c) in VENUES.items()),
            ]:
                video = write_y4m(tmp_path / f"{identity}.y4m", COLOURS[colour]) if colour else None
                browser = await pw.chromium.launch(
                    executable_path=str(ensure_chromium()), args=chromium_args(video)
                )
                browsers.append(browser)
                viewport = {"width": 1280, "height": 800} if role == "chair" else SMALL_SCREEN
                context = await browser.new_context(viewport=viewport, locale="zh-CN")
                context.set_default_timeout(30000)
                tab = await context.new_page()
                tab.on("pageerror", lambda exc, who=identity: errors.append(f"{who}: {exc}"))
                page = "chair" if role == "chair" else "venue"
                token = server.token("council", identity, role, name, **TOKEN_CLAIMS.get(identity, {}))
                await tab.goto(server.page_url(page, token), wait_until="commit")
                tabs[identity] = tab
            for identity, tab in tabs.items():
                await eventually(
                    lambda t=tab: t.evaluate(
                        "(c => c ? [c.state, c.mediaState] : null)(window.conference?.client)"
                    ),
                    lambda s: s == ["joined", "connected"],
                    45,
                    f"{identity} media connected",
                )
            chair = tabs["chair"]
            # Every venue's preview on the console first: the staged program then shows who is in it.
            await eventually(
                lambda: chair.eval_on_selector_all("#tiles .tile", "ns => ns.length"),
                lambda n: n == 3,
                20,
                "tiles",
            )
            # What the roster and the invitations say shows on the tiles; hall-c is marked a guest.
            devices = await chair.eval_on_selector_all(
                "#tiles .tile",
                "ns => ns.map(n => [n.dataset.identity, n.querySelector('.tile-device').textContent,"
                " !!n.querySelector('.badge-guest')])",
            )
            people = await chair.evaluate(
                "[...window.conference.client.mirror.participants.values()]"
                ".map(p => [p.identity, p.kind, p.sector])"
            )
            assert sorted(devices) == [
                ["hall-a", "会场", False],
                ["hall-b", "会场 · 教育界 · 部门", False],
                ["hall-c", "会场 · 新闻界 · 专家", True],
            ], people
            agenda_rows = await chair.eval_on_selector_all(
                "#agenda-list li .agenda-goto", "ns => ns.map(n => n.textContent)"
            )
            assert agenda_rows == [item["title"] for item in AGENDA]

            for index, item in enumerate(AGENDA):
                preset = item["preset"]
                want_slots = [s if s in VENUES else None for s in preset["slots"]]
                await chair.keyboard.press("PageDown")
                # The console stages the item's preset as the next program, ready to take.
                await eventually(
                    lambda: chair.evaluate(
                        "(() => { const c = window.conference.console; return c.dirty ? c.draft : null; })()"
                    ),
                    lambda d, p=preset, w=want_slots: d == {"layout": p["layout"], "slots": w},
                    10,
                    f"item {index + 1} staged",
                )
                assert await chair.get_attribute("#agenda-list li.current", "data-index") == str(index)
                started = time.monotonic()
                await chair.keyboard.press("Enter")
                want = {i: (VENUES[s][1] if s else None) for i, s in enumerate(want_slots)}
                for identity in VENUES:
                    tab = tabs[identity]
                    await eventually(
                        lambda t=tab: t.text_content("#agenda-item"),
                        lambda text, n=index + 1, title=item["title"]: text == f"议程{n}：{title}",  # noqa: RUF001
                        10,
                        f"{identity} shows item {index + 1}",
                    )
                    try:
                        await eventually(
                            lambda t=tab: slot_colours(t), lambda c, w=want: c == w, 30, f"{identity} colours"
                        )
                    except AssertionError as exc:
                        raise AssertionError(f"{exc}; {await tab.evaluate(VIDEO_DIAGNOSIS_JS)}") from None
                    assert await tab.get_attribute("#program", "data-layout") == preset["layout"]
                    shown = await tab.eval_on_selector_all(
                        "#program [data-slot]:not([hidden])", "ns => ns.map(n => n.dataset.identity || null)"
                    )
                    assert shown == want_slots
                log(
                    f"item {index + 1} ({preset['layout']}): every venue right"
                    f" {time.monotonic() - started:.1f}s after the take"
                )
                await tabs["hall-a"].screenshot(path=screenshot_path(f"running-order-venue-item{index + 1}"))
            await chair.screenshot(path=screenshot_path("running-order-chair"))
            # A preset saved by name, recalled with Shift+1 and taken.
            await rest(
                server,
                "POST",
                "/api/rooms/council/commands",
                {"type": "save_preset", "name": "画中画", "layout": "pip", "slots": ["hall-c", "hall-a"]},
            )
            await eventually(
                lambda: chair.text_content("#preset-list"), lambda t: "画中画" in (t or ""), 10, "preset"
            )
            await chair.keyboard.press("Shift+Digit1")
            await chair.keyboard.press("Enter")
            await eventually(
                lambda: slot_colours(tabs["hall-b"]),
                lambda c: c == {0: "blue", 1: "red"},
                30,
                "the recalled preset",
            )
            # "The speaker full screen": whoever has the floor when it is taken.
            await rest(
                server, "POST", "/api/rooms/council/commands", {"type": "grant_floor", "identity": "hall-b"}
            )
            await eventually(
                lambda: chair.evaluate("window.conference.client.mirror.floor"),
                lambda f: f == "hall-b",
                10,
                "floor",
            )
            await chair.click("#preset-list li[data-preset='@floor'] .preset-recall", force=True)
            await chair.keyboard.press("Enter")
            await eventually(
                lambda: slot_colours(tabs["hall-a"]), lambda c: c == {0: "green"}, 30, "the speaker"
            )
            # The console edits the running order: a roster imported from a file (a bad one is refused
            # naming its line, nothing changes), an agenda item added during the meeting.
            bad = "identity,name\nhall-a,第一分会场\nhall-a,重复\n".encode()
            await chair.set_input_files(
                "#roster-file", {"name": "bad.csv", "mimeType": "text/csv", "buffer": bad}
            )
            await eventually(
                lambda: chair.text_content("#notices"),
                lambda t: "line 3: identity 'hall-a' again" in (t or ""),
                10,
                "refusal",
            )
            full = ROSTER + "hall-c,第三分会场,expert,新闻界\n".encode()
            await chair.set_input_files(
                "#roster-file", {"name": "名单.csv", "mimeType": "text/csv", "buffer": full}
            )
            await eventually(
                lambda: chair.evaluate("window.conference.client.mirror.roster.length"),
                lambda n: n == 3,
                10,
                "import",
            )
            await eventually(
                lambda: chair.get_attribute("#tiles .tile[data-identity='hall-c']", "data-guest"),
                lambda v: v == "false",
                10,
                "hall-c on the roster now",
            )
            assert await chair.text_content("#roster-count") == "（已到 3 / 3 人）"  # noqa: RUF001
            # The invitations as a printable sheet: a QR code per person, their sector on the card.
            await chair.click("#roster-box summary", force=True)  # the roster's tools fold away
            async with chair.expect_download() as download:
                await chair.click("#links-html", force=True)
            sheet = Path(await (await download.value).path()).read_text(encoding="utf-8")
            assert sheet.count("<svg") == 3 and "第二分会场" in sheet and "department · 教育界" in sheet
            await chair.fill("#agenda-new-title", "自由讨论")
            await chair.select_option("#agenda-new-kind", "open_discussion")
            await chair.fill("#agenda-new-minutes", "15")
            await chair.click("#agenda-add button[type=submit]", force=True)
            await eventually(
                lambda: chair.eval_on_selector_all(
                    "#agenda-list .agenda-goto", "ns => ns.map(n => n.textContent)"
                ),
                lambda titles: titles == [*(i["title"] for i in AGENDA), "自由讨论"],
                10,
                "the added item",
            )
            # Edited in place: the title and time change, the item keeps its place.
            await chair.click("#agenda-list li[data-index='3'] .agenda-edit", force=True)
            assert await chair.input_value("#agenda-new-title") == "自由讨论"
            await chair.fill("#agenda-new-title", "自由讨论（延长）")  # noqa: RUF001
            await chair.fill("#agenda-new-minutes", "20")
            await chair.click("#agenda-add-submit", force=True)
            await eventually(
                lambda: chair.eval_on_selector_all(
                    "#agenda-list .agenda-goto", "ns => ns.map(n => n.textContent)"
                ),
                lambda titles: titles == [*(i["title"] for i in AGENDA), "自由讨论（延长）"],  # noqa: RUF001
                10,
                "the edited item",
            )
            # The public page shows the current item under the title, marked in the agenda.
            public = await rest(server, "GET", "/api/rooms/council/public")
            watch = await chair.context.new_page()
            await watch.goto(public["url"])
            await eventually(
                lambda: watch.text_content("#now-item"),
                lambda text: text == f"正在进行：{AGENDA[2]['title']}",  # noqa: RUF001
                15,
                "the public page's current item",
            )
            assert await watch.text_content("#agenda li.current") == AGENDA[2]["title"]
            await watch.close()
            state = await rest(server, "GET", "/api/rooms/council")
            assert state["agenda_index"] == 2 and state["agenda"][3]["planned_s"] == 1200
            assert state["program"] == {"layout": "single", "slots": ["hall-b"]}
            assert errors == []
        finally:
            for browser in browsers:
                await browser.close()
