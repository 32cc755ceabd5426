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
from browser_util import ADMIN_KEY, CLERK_SCREEN, SECRET, chromium_args, ensure_chromium, server_process

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
            await console_page.locator("#speaking-panel .hint").wait_for()
            assert (await console_page.text_content("#speaking-panel .hint")) == "开始录制后统计发言时间"
            live = json.loads((await get(server.url, f"/api/rooms/{ROOM}/speaking-time"))[1])
            assert live["recording_id"] is None and live["speaking_time"] is None
            recording_id = (await chair.request("start_recording"))["recording_id"]
            start = time.time()
            await asyncio.sleep(1.0)
            t1 = time.time()
            await chair.request("grant_floor", identity="hall-a")
            await asyncio.sleep(3.0)
            # Live: the REST figures and the console's panel count hall-a's floor as it runs.
            live = json.loads((await get(server.url, f"/api/rooms/{ROOM}/speaking-time"))[1])
            assert live["recording_id"] == recording_id and live["floor"] == "hall-a"
            running = {p["identity"]: p for p in live["speaking_time"]["by_person"]}
            assert running["hall-a"]["floor_s"] == pytest.approx(time.time() - t1, abs=1.0)
            assert running["expert-b"]["floor_s"] == 0.0
            bar = console_page.locator('#speaking-panel [data-identity="hall-a"] [data-measure="floor"]')
            shown = float(await bar.get_attribute("data-seconds") or 0)
            assert shown == pytest.approx(time.time() - t1, abs=1.5)
            await asyncio.sleep(1.0)
            t2 = time.time()
            await chair.request("revoke_floor")
            await asyncio.sleep(0.5)
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

        _, body = await get(server.url, f"/api/recordings/{recording_id}")
        figures = json.loads(body)["speaking_time"]
        people = {p["identity"]: p for p in figures["by_person"]}
        print("grants", round(t2 - t1, 2), round(t4 - t3, 2), "recording", round(stop - start, 2), people)
        assert people["hall-a"]["floor_s"] == pytest.approx(t2 - t1, abs=1.0)
        assert people["expert-b"]["floor_s"] == pytest.approx(t4 - t3, abs=1.0)
        assert people["hall-a"]["turns"] == people["expert-b"]["turns"] == 1
        assert people["chair"]["floor_s"] == 0.0
        # Voiced time, from the recorded audio levels: hall-a's tone ran the whole recording,
        # expert-b's from their grant until they left.
        assert figures["voiced_from"] == "audio"
        assert people["hall-a"]["voiced_s"] == pytest.approx(stop - start, abs=1.5)
        assert people["expert-b"]["voiced_s"] == pytest.approx(t4 - t3, abs=1.0)
        assert people["chair"]["voiced_s"] == 0.0
        sectors = figures["by_sector"]
        assert [s["sector"] for s in sectors] == [None]  # no roster: the unknown sector
        assert sectors[0]["floor_s"] == pytest.approx(
            people["hall-a"]["floor_s"] + people["expert-b"]["floor_s"]
        )

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
            assert "未知界别" in (await page.text_content("#speaking-time") or "")
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
