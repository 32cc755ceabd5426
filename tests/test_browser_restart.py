"""Venue screens nobody touches, across server restarts: two venue pages (headless Chromium, each
camera a solid colour) watch a program; the server is stopped (SIGTERM), then killed (SIGKILL),
and each time started again on the same data directory and port. The pages reconnect by
themselves and show the program they had, slot for slot, without anyone setting it again."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
from browser_util import (
    COLOURS,
    SLOT_PIXELS_JS,
    SMALL_SCREEN,
    VIDEO_DIAGNOSIS_JS,
    chromium_args,
    colour_name,
    ensure_chromium,
    eventually,
    log,
    rest,
    server_process,
    set_program,
    write_tone,
    write_y4m,
)
from playwright.async_api import Browser, Page, async_playwright

pytestmark = [pytest.mark.browser, pytest.mark.media, pytest.mark.realtime, pytest.mark.asyncio]

VENUES = {"hall-a": ("red", 440.0), "hall-b": ("green", 660.0)}
PROGRAM = ["hall-b", "hall-a"]  # side-by-side: green left, red right
WANT = {0: "green", 1: "red"}


async def slot_colours(tab: Page) -> dict[int, str | None]:
    pixels = await tab.evaluate(SLOT_PIXELS_JS)
    return {int(slot): colour_name(rgb) for slot, rgb in pixels.items()}


async def shows_program(tab: Page, identity: str, timeout: float, what: str) -> None:
    try:
        await eventually(lambda: slot_colours(tab), lambda c: c == WANT, timeout, f"{identity} {what}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; slots: {await tab.evaluate(VIDEO_DIAGNOSIS_JS)}") from None


async def page_state(tab: Page) -> str | None:
    return await tab.evaluate("window.conference?.client?.state ?? null")


async def live(tab: Page) -> list[object]:
    """[signaling state, media state, frames decoded per program slot on the current peer
    connection]: a video element keeps its last frame, so colours alone could be from before."""
    state = await tab.evaluate("(c => c ? [c.state, c.mediaState] : [null, null])(window.conference?.client)")
    diagnosis = await tab.evaluate(VIDEO_DIAGNOSIS_JS)
    return [*state, [slot.get("frames") or 0 for slot in diagnosis["slots"]]]


async def reconnected(tab: Page, identity: str, timeout: float, what: str) -> None:
    def accept(value: list[object]) -> bool:
        frames = value[2]
        return value[:2] == ["joined", "connected"] and isinstance(frames, list) and min(frames) > 5

    await eventually(lambda: live(tab), accept, timeout, f"{identity} {what}")


@pytest.fixture
async def browsers() -> AsyncIterator[list[Browser]]:
    opened: list[Browser] = []
    yield opened
    for b in opened:
        await b.close()


async def test_venue_pages_reconnect_by_themselves_and_show_their_program_after_restarts(
    tmp_path: Path, browsers: list[Browser]
) -> None:
    if ensure_chromium() is None:
        pytest.fail("chromium is not installed and could not be installed with apt-get")
    data = tmp_path / "data"
    errors: list[str] = []
    async with async_playwright() as pw:
        async with server_process(data, media=True) as server:
            port = urlparse(server.url).port
            tabs: dict[str, Page] = {}
            for identity, (colour, tone) in VENUES.items():
                video = write_y4m(tmp_path / f"{identity}.y4m", COLOURS[colour])
                audio = write_tone(tmp_path / f"{identity}.wav", tone)
                browser = await pw.chromium.launch(
                    executable_path=str(ensure_chromium()), args=chromium_args(video, audio)
                )
                browsers.append(browser)
                context = await browser.new_context(viewport=SMALL_SCREEN)
                context.set_default_timeout(30000)
                tab = await context.new_page()
                tab.on("pageerror", lambda exc, who=identity: errors.append(f"{who}: {exc}"))
                await tab.goto(server.page_url("venue", server.token("council", identity, "venue")))
                tabs[identity] = tab
            for identity, tab in tabs.items():
                await eventually(
                    lambda t=tab: page_state(t), lambda s: s == "joined", 30, f"{identity} joined"
                )
            await set_program(server, "side-by-side", PROGRAM)
            for identity, tab in tabs.items():
                await shows_program(tab, identity, 45, "shows the program")
            stops = [signal.SIGTERM, signal.SIGKILL]
            server.process.send_signal(stops[0])
            await asyncio.wait_for(server.process.wait(), 15)

        for n, how in enumerate(stops):
            # Nobody touches the pages or the program: the restarted server and the pages do it all.
            started = time.monotonic()
            async with server_process(data, media=True, port=port) as server:
                log(f"after {how.name}: serving again in {time.monotonic() - started:.1f}s")
                room = await rest(server, "GET", "/api/rooms/council")
                assert room["program"]["slots"] == PROGRAM
                for identity, tab in tabs.items():
                    await reconnected(tab, identity, 60, f"reconnected by itself after {how.name}")
                    await shows_program(tab, identity, 30, f"shows its program again after {how.name}")
                log(f"after {how.name}: both venues show their program {time.monotonic() - started:.1f}s on")
                room = await rest(server, "GET", "/api/rooms/council")
                assert all(p["connected"] for p in room["participants"]), room["participants"]
                if n + 1 < len(stops):
                    server.process.send_signal(stops[n + 1])
                    await asyncio.wait_for(server.process.wait(), 15)
    assert errors == []
