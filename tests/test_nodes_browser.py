"""A Chromium venue page among several nodes (issue 17): its page is served by one node, the room
lives on the other, so its join is answered ``moved`` and web/client.js joins there without anyone
noticing; it sees the aiortc venue and is seen by it. The room's node is killed (SIGKILL): the page
reconnects by itself (the dead node, then the node that served it, which places the room anew once
the lease ran out) and shows the program again with frames decoded, as the aiortc venue does."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from browser_util import (
    COLOURS,
    SMALL_SCREEN,
    chromium_args,
    ensure_chromium,
    eventually,
    log,
    write_tone,
    write_y4m,
)
from playwright.async_api import Page, async_playwright
from test_browser_restart import live, page_state, reconnected
from test_nodes import FAILOVER_BUDGET_S, call, cluster, rejoin, venue, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.media, pytest.mark.realtime, pytest.mark.asyncio]

PROGRAM = {"layout": "side-by-side", "slots": ["hall-b", "hall-a"]}


def decoded_from(endpoint: object, identity: str) -> int:
    return sum(s.frames_decoded for s in endpoint.video_slots if s.identity == identity)  # type: ignore[attr-defined]


async def client_node(tab: Page) -> str | None:
    return await tab.evaluate("window.conference?.client?._nodeUrl ?? null")


async def test_a_chromium_venue_follows_its_room_to_its_node_and_after_the_node_dies(tmp_path: Path) -> None:
    if ensure_chromium() is None:
        pytest.fail("chromium is not installed and could not be installed with apt-get")
    errors: list[str] = []
    async with cluster(tmp_path, count=2) as nodes, async_playwright() as pw:
        urls = [n.url for n in nodes]
        other = venue(urls[0], "hall-b")  # first join: the room is placed on node-0
        endpoints = [other]
        video = write_y4m(tmp_path / "hall-a.y4m", COLOURS["red"])
        audio = write_tone(tmp_path / "hall-a.wav", 440.0)
        browser = await pw.chromium.launch(
            executable_path=str(ensure_chromium()), args=chromium_args(video, audio)
        )
        try:
            await other.join()
            host_url = other.node_url
            page_server = next(n for n in nodes if n.url != host_url)
            context = await browser.new_context(viewport=SMALL_SCREEN)
            context.set_default_timeout(30000)
            tab = await context.new_page()
            tab.on("pageerror", lambda exc: errors.append(str(exc)))
            await tab.goto(page_server.page_url("venue", page_server.token("council", "hall-a", "venue")))
            await eventually(lambda: page_state(tab), lambda s: s == "joined", 30, "the page joined")
            assert await client_node(tab) == host_url  # sent on to the room's node
            status, body = await call(page_server.url, "PUT", "/api/rooms/council/program", PROGRAM)
            assert status == 200, body
            await reconnected(tab, "hall-a", 45, "shows the program")
            await wait_until(lambda: decoded_from(other, "hall-a") > 5, 30, "the aiortc venue sees Chromium")

            dead = nodes[urls.index(host_url)]
            dead.process.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            await dead.process.wait()
            await other.close(leave=False)
            live_urls = [u for u in urls if u != host_url]
            other = await rejoin("hall-b", live_urls, killed_at + FAILOVER_BUDGET_S)
            endpoints = [other]
            # Nobody touches the page: it finds the room's new node by itself.
            before = (await live(tab))[2]
            log(f"frames before the kill: {before}")
            await eventually(lambda: page_state(tab), lambda s: s == "joined", 30, "the page joined again")
            await eventually(lambda: client_node(tab), lambda n: n in (None, *live_urls), 5, "on a live node")
            await reconnected(tab, "hall-a", 45, "shows the program again")
            log(f"Chromium back with frames {time.monotonic() - killed_at:.1f} s after the kill")
            await wait_until(
                lambda: decoded_from(other, "hall-a") > 5, 30, "the aiortc venue sees Chromium again"
            )
            status, room = await call(live_urls[0], "GET", "/api/rooms/council")
            assert room["program"]["slots"] == PROGRAM["slots"]
            assert room["node"] == "node-" + str(urls.index(live_urls[0]))
            history = await tab.evaluate("window.conference.client.history.join('\\n')")
            log(history)
            assert "moved to node" in history, history
        finally:
            for e in endpoints:
                await e.close()
            await browser.close()
    assert errors == []
