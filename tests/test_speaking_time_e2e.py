"""Speaking-time figures end to end: a real ``conference serve`` with its media core, real aiortc
endpoints sending a tone (with the RFC 6464 audio level, as browsers do) or silence, the chair
granting and revoking the floor at known times and a speaker leaving while holding it. After the
recording stops, the report, the CSV and the Excel workbook give the same figures, within a second
of the grants the test made, and the clerk's page in Chromium draws them as proportional bars."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import openpyxl
import pytest
from browser_util import (
    ADMIN_KEY,
    CLERK_SCREEN,
    SECRET,
    chromium_args,
    ensure_chromium,
    eventually,
    screenshot_path,
    server_process,
)

from conference.loadtest.endpoint import Endpoint, EndpointConfig
from signaling.tokens import mint_token

pytestmark = [pytest.mark.media, pytest.mark.browser]

ROOM = "assembly"


async def join(url: str, identity: str, index: int, role: str, **kw: Any) -> Endpoint:
    token = mint_token(SECRET, ROOM, identity, identity.replace("-", " ").title(), role, 600)
    config = EndpointConfig(url=url, token=token, identity=identity, index=index, decode="none", **kw)
    endpoint = Endpoint(config)
    await endpoint.join()
    return endpoint


async def put(url: str, path: str, **kw: Any) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}", **kw.pop("headers", {})}
    async with aiohttp.ClientSession() as http, http.put(url + path, headers=headers, **kw) as res:
        assert res.status == 200, f"{path}: {res.status} {await res.text()}"


ROSTER = (
    "identity,name,role,kind,sector,organisation\n"
    "hall-a,第一分会场,venue,venue,教育界,市一中\n"
    "expert-b,卫生专家,venue,expert,医卫界,疾控中心\n"
)


async def get(url: str, path: str) -> tuple[str, bytes]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(url + path, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as res,
    ):
        assert res.status == 200, f"{path}: {res.status} {await res.text()}"
        return res.headers["Content-Type"], await res.read()


async def test_figures_match_the_grants_in_the_report_the_sheets_and_the_chart(tmp_path: Path) -> None:
    chromium = ensure_chromium()
    assert chromium is not None, "chromium is not installed"
    from playwright.async_api import async_playwright

    async with server_process(tmp_path / "data", media=True) as server, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(chromium), args=chromium_args())
        errors: list[str] = []
        # The running order: who is in which sector, and a two-item agenda.
        await put(
            server.url,
            f"/api/rooms/{ROOM}/roster",
            data=ROSTER.encode(),
            headers={"Content-Type": "text/csv"},
        )
        items = [
            {"title": "试点区情况", "kind": "speech"},
            {"title": "专家答复", "kind": "department_answers"},
        ]
        await put(server.url, f"/api/rooms/{ROOM}/agenda", json={"items": items})
        chair = await join(server.url, "chair", 0, "chair", publish_audio=False, publish_video=False)
        hall = await join(server.url, "hall-a", 1, "venue", speaking=True, video_slots=1)
        expert = await join(server.url, "expert-b", 2, "venue", speaking=False, video_slots=1)
        leaving = False
        console_page = None
        try:
            # The chair's console in Chromium, with its running figures.
            console_page = await (await browser.new_context(viewport=CLERK_SCREEN, locale="zh-CN")).new_page()
            console_page.on("pageerror", lambda exc: errors.append(f"console: {exc}"))
            console_token = mint_token(SECRET, ROOM, "console", "主持台", "chair", 600)
            await console_page.goto(f"{server.url}/chair?token={console_token}")
            # Closed at first (the side column is full); the chair opens it.
            await console_page.wait_for_function("() => window.conference && window.conference.speaking")
            assert not await console_page.eval_on_selector("#speaking-panel", "d => d.open")
            await console_page.click("#speaking-panel summary")
            await console_page.locator("#speaking-panel .hint").wait_for()
            assert (await console_page.text_content("#speaking-panel .hint")) == "开始录制后统计发言时间"
            live = json.loads((await get(server.url, f"/api/rooms/{ROOM}/speaking-time"))[1])
            assert live["recording_id"] is None and live["speaking_time"] is None
            recording_id = (await chair.request("start_recording"))["recording_id"]
            start = time.time()
            await asyncio.sleep(1.0)
            await chair.request("next_item")
            t1 = time.time()
            await chair.request("grant_floor", identity="hall-a")
            await asyncio.sleep(3.0)
            # Live: the REST figures and the console's panel count hall-a's floor as it runs.
            live = json.loads((await get(server.url, f"/api/rooms/{ROOM}/speaking-time"))[1])
            assert live["recording_id"] == recording_id and live["floor"] == "hall-a"
            running = {p["identity"]: p for p in live["speaking_time"]["by_person"]}
            assert running["hall-a"]["floor_s"] == pytest.approx(live["at"] - t1, abs=1.0)
            assert running["expert-b"]["floor_s"] == 0.0
            bar = console_page.locator('#speaking-panel [data-identity="hall-a"] [data-measure="floor"]')
            # It redraws every second and asks the server every few; a loaded machine may lag a draw.
            await eventually(
                lambda: bar.get_attribute("data-seconds"),
                lambda v: v is not None and abs(float(v) - (time.time() - t1)) < 1.5,
                5,
                "the console's panel counting the floor holder's time",
            )
            await console_page.locator("#speaking-panel").screenshot(
                path=screenshot_path("chair-speaking-time")
            )
            await asyncio.sleep(1.0)
            t2 = time.time()
            await chair.request("revoke_floor")
            await asyncio.sleep(0.5)
            await chair.request("next_item")
            t3 = time.time()
            await chair.request("grant_floor", identity="expert-b")
            assert expert.audio_track is not None
            expert.audio_track.speaking = True
            await asyncio.sleep(2.5)
            t4 = time.time()
            leaving = True
            await expert.close()  # leaves holding the floor
            await asyncio.sleep(1.0)
            await chair.request("stop_recording")
            stop = time.time()
        finally:
            for e in (chair, hall) if leaving else (chair, hall, expert):
                await e.close()
            if console_page is not None:
                await console_page.close()

        # The server counts a recording it wrote as soon as it stops, before anyone asks.
        cache = tmp_path / "data" / "recordings" / recording_id / "speaking_time.json"

        async def cached() -> bool:
            return cache.is_file()

        await eventually(cached, bool, 15, "the figures counted after the stop")

        # A first view may still come before a count is done: ask again, as a client does.
        async def report() -> Any:
            return json.loads((await get(server.url, f"/api/recordings/{recording_id}"))[1])["speaking_time"]

        figures = await eventually(report, lambda f: f is not None, 30, "the speaking-time figures")
        people = {p["identity"]: p for p in figures["by_person"]}
        assert people["hall-a"]["floor_s"] == pytest.approx(t2 - t1, abs=1.0)
        assert people["expert-b"]["floor_s"] == pytest.approx(t4 - t3, abs=1.0)
        assert people["hall-a"]["turns"] == people["expert-b"]["turns"] == 1
        assert set(people) == {"hall-a", "expert-b"}  # not the consoles, which send no audio
        # Voiced time, from the recorded audio levels: hall-a's tone ran the whole recording,
        # expert-b's from their grant until they left.
        assert figures["voiced_from"] == "audio"
        # On this shared machine an endpoint's audio may stall for a moment under load; the voice
        # detector bridges short stalls only, hence the wider margins below.
        assert stop - start - 2.5 <= people["hall-a"]["voiced_s"] <= stop - start
        assert t4 - t3 - 1.5 <= people["expert-b"]["voiced_s"] <= t4 - t3 + 0.5  # silent before its grant
        # By sector, from the roster, and by agenda item.
        sectors = {g["sector"]: g for g in figures["by_sector"]}
        assert sectors["教育界"]["floor_s"] == people["hall-a"]["floor_s"]
        assert sectors["医卫界"]["floor_s"] == people["expert-b"]["floor_s"]
        assert people["expert-b"]["organisation"] == "疾控中心" and people["expert-b"]["kind"] == "expert"
        assert set(sectors) == {"教育界", "医卫界"}
        by_item = {i["index"]: i for i in figures["by_item"]}
        assert by_item[0]["title"] == "试点区情况" and by_item[1]["title"] == "专家答复"
        assert by_item[0]["by_person"][0]["identity"] == "hall-a"
        assert by_item[0]["floor_s"] == people["hall-a"]["floor_s"]
        assert by_item[1]["floor_s"] == people["expert-b"]["floor_s"]

        # The CSV and the workbook carry the same numbers.
        ctype, body = await get(server.url, f"/api/recordings/{recording_id}/speaking-time.csv")
        assert ctype.startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(body.decode("utf-8-sig"))))
        in_csv = {r["identity"]: r for r in rows if r["table"] == "person"}
        ctype, body = await get(server.url, f"/api/recordings/{recording_id}/speaking-time.xlsx?lang=en")
        assert ctype.startswith("application/vnd.openxmlformats")
        sheet = openpyxl.load_workbook(io.BytesIO(body))["By person"]
        header = [c.value for c in sheet[1]]
        in_xlsx = {
            r[0]: dict(zip(header, r, strict=True)) for r in sheet.iter_rows(min_row=2, values_only=True)
        }
        for identity, p in people.items():
            assert float(in_csv[identity]["floor_s"]) == p["floor_s"] == in_xlsx[identity]["Floor time (s)"]
            assert (
                float(in_csv[identity]["voiced_s"]) == p["voiced_s"] == in_xlsx[identity]["Voiced time (s)"]
            )

        # The clerk's page draws the figures: one floor and one voiced bar per person, as long as
        # their share of the longest.
        try:
            context = await browser.new_context(viewport=CLERK_SCREEN, locale="zh-CN")
            context.set_default_timeout(8000)
            page = await context.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            token = mint_token(SECRET, ROOM, "clerk-1", "书记员", "clerk", 600)
            await page.goto(f"{server.url}/clerk?token={token}")
            await page.locator(f'#recordings tr[data-recording="{recording_id}"] button').first.click()
            bars = page.locator('#speaking-time [data-chart="person"] .speaking-bar')
            await bars.first.wait_for()
            drawn = await bars.evaluate_all(
                """bs => bs.map(b => ({identity: b.closest('[data-identity]').dataset.identity,
                    measure: b.dataset.measure, seconds: Number(b.dataset.seconds),
                    width: b.getBoundingClientRect().width,
                    track: b.parentElement.getBoundingClientRect().width}))"""
            )
            groups = await page.locator(
                '#speaking-time [data-chart="person"] .speaking-group h5'
            ).all_text_contents()
            assert groups == ["教育界", "医卫界"], groups
            sector_rows = page.locator('#speaking-time [data-chart="sector"] .speaking-row')
            assert await sector_rows.count() == 2
            organisations = page.locator('#speaking-time [data-chart="organisation"] .speaking-label')
            assert sorted(await organisations.all_text_contents()) == ["市一中", "疾控中心"]
            # The items, and the time before the first (hall-a was heard then).
            await page.locator("#speaking-time").screenshot(path=screenshot_path("clerk-speaking-time"))
            item_labels = page.locator('#speaking-time [data-chart="item"] .speaking-label')
            assert await item_labels.all_text_contents() == ["1. 试点区情况", "2. 专家答复", "议程外"]
        finally:
            await browser.close()
        assert errors == []
        longest = max(max(p["floor_s"], p["voiced_s"]) for p in people.values())
        assert {(d["identity"], d["measure"]) for d in drawn} == {
            (i, m) for i in people for m in ("floor", "voiced")
        }
        for d in drawn:
            expected = people[d["identity"]][f"{d['measure']}_s"]
            assert d["seconds"] == expected
            assert d["width"] / d["track"] == pytest.approx(expected / longest, abs=0.02), d
