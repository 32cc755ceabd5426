"""The venue page outlives its token: opened with a token that expires while it is connected, it
comes back by itself after the server restarts (with the session credential it was handed) and
after a reload of the page, and a screen link the chair revokes leaves the page on a final error
instead of reconnecting."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from urllib.parse import urlparse

import aiohttp
import pytest
from browser_util import (
    ADMIN_KEY,
    SECRET,
    SMALL_SCREEN,
    chromium_args,
    ensure_chromium,
    eventually,
    rest,
    server_process,
)
from playwright.async_api import Page, async_playwright

from signaling.tokens import mint_token

pytestmark = [pytest.mark.browser, pytest.mark.asyncio]


async def state(tab: Page) -> str | None:
    return await tab.evaluate("window.conference?.client?.state ?? null")


async def test_a_venue_page_reconnects_after_its_token_expired_and_a_revoked_link_is_final(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if ensure_chromium() is None:
        pytest.fail("chromium is not installed and could not be installed with apt-get")
    monkeypatch.setenv("CONFERENCE_SESSION_TTL_S", "15")  # a credential every 5 s
    data = tmp_path / "data"
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(ensure_chromium()), args=chromium_args())
        try:
            context = await browser.new_context(viewport=SMALL_SCREEN)
            context.set_default_timeout(20000)
            async with server_process(data, media=False) as server:
                port = urlparse(server.url).port
                minted_at = time.time()
                short = mint_token(SECRET, "council", "hall-a", "Hall A", "venue", 4)
                hall = await context.new_page()
                await hall.goto(server.page_url("venue", short))
                await eventually(lambda: state(hall), lambda s: s == "joined", 20, "hall-a joined")
                # A screen opened with a chair's screen link.
                created = await _post(server.url, "/api/rooms/council/screen-links", {"identity": "hall-b"})
                linked = await context.new_page()
                await linked.goto(f"{server.url}{created['page']}")
                await eventually(lambda: state(linked), lambda s: s == "joined", 20, "hall-b joined")
                await asyncio.sleep(max(0.0, minted_at + 5.5 - time.time()))  # hall-a's token has expired
                server.process.send_signal(signal.SIGTERM)
                await asyncio.wait_for(server.process.wait(), 15)
            async with server_process(data, media=False, port=port) as server:
                for tab, who in ((hall, "hall-a"), (linked, "hall-b")):
                    try:
                        await eventually(lambda t=tab: state(t), lambda s: s == "joined", 30, f"{who} back")
                    except AssertionError as exc:
                        history = await tab.evaluate("window.conference.client.history.slice(-12)")
                        raise AssertionError(f"{exc}; page history: {history}") from None
                history = await hall.evaluate("window.conference.client.history.join('\\n')")
                assert "token expired" not in history, history
                # A reload (a kiosk's watchdog) opens the page with its expired token in the
                # address: it comes back with the credential the tab kept.
                await hall.reload()
                await eventually(
                    lambda: state(hall), lambda s: s == "joined", 30, "hall-a back after a reload"
                )
                room = await rest(server, "GET", "/api/rooms/council")
                people = {p["identity"]: p["connected"] for p in room["participants"]}
                assert people == {"hall-a": True, "hall-b": True}, people

                await _delete(server.url, f"/api/rooms/council/screen-links/{created['link']['id']}")
                await eventually(lambda: state(linked), lambda s: s == "failed", 15, "hall-b refused")
                await asyncio.sleep(3)  # and it stays refused: no reconnect loop
                assert await state(linked) == "failed"
                assert await state(hall) == "joined"
        finally:
            await browser.close()


async def _post(url: str, path: str, body: dict[str, object]) -> dict[str, object]:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with aiohttp.ClientSession() as http, http.post(f"{url}{path}", json=body, headers=headers) as res:
        assert res.status == 201, await res.text()
        return dict(await res.json())


async def _delete(url: str, path: str) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with aiohttp.ClientSession() as http, http.delete(f"{url}{path}", headers=headers) as res:
        assert res.status == 200, await res.text()
