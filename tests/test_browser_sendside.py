"""The server's send-side estimate of a real Chromium subscriber's downlink (issue 12): the venue's
Chromium answers transport-cc on the m-sections it receives, the server stamps every packet of its
leg with one transport-wide sequence, Chromium sends transport feedback, and the leg's estimate in
/api/stats (``send_side_estimate``) becomes a figure at least what the server sends it on the clear
loopback, so the full-screen slot stays on the publisher's top layer."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from browser_util import (
    COLOURS,
    SMALL_SCREEN,
    chromium_args,
    ensure_chromium,
    eventually,
    log,
    rest,
    server_process,
    set_program,
    write_y4m,
)
from netimpair_media import noisy_camera
from playwright.async_api import Browser, Page, async_playwright

from conference.sfu.packet import URI_TRANSPORT_CC

pytestmark = [pytest.mark.browser, pytest.mark.media, pytest.mark.realtime]

STATE_JS = "(c => c ? [c.state, c.mediaState] : null)(window.conference?.client)"
LAYERS_JS = """async () => {
  const out = {};
  for (const s of (await window.conference.client.pc.getStats()).values())
    if (s.type === 'outbound-rtp' && s.kind === 'video' && s.rid && s.frameWidth) out[s.rid] = s.frameWidth;
  return out;
}"""
SLOT0_JS = """async () => {
  const c = window.conference.client;
  const mid = c.videoMids[0];
  for (const s of (await c.pc.getStats()).values())
    if (s.type === 'inbound-rtp' && s.mid === mid)
      return {w: s.frameWidth || 0, frames: s.framesDecoded || 0, freezes: s.freezeCount || 0};
  return {w: 0, frames: 0, freezes: 0};
}"""
# The answer the venue's Chromium gave: which of its receive m-sections kept transport-cc.
ANSWER_JS = f"""() => {{
  const c = window.conference.client;
  const out = {{}};
  for (const section of c.pc.localDescription.sdp.split('\\r\\nm=').slice(1)) {{
    const mid = (section.match(/a=mid:(\\S+)/) || [])[1];
    out[mid] = section.includes('{URI_TRANSPORT_CC}') && section.includes(' transport-cc');
  }}
  return {{mids: c.videoMids, kept: out}};
}}"""


async def venue_stats(server: Any) -> dict[str, Any]:
    return (await rest(server, "GET", "/api/stats"))["media"]["per_session"]["council/hall-b"]


async def test_a_chromium_subscriber_feeds_the_send_side_estimate(tmp_path: Any) -> None:
    chromium = ensure_chromium()
    if chromium is None:
        pytest.fail("chromium is not installed and could not be installed with apt-get")
    config = tmp_path / "conference.toml"
    config.write_text("simulcast = true\nsend_side_bwe = true\n")  # the layer choice acts on it
    browsers: list[Browser] = []
    async with (
        server_process(tmp_path / "data", media=True, extra_args=["--config", str(config)]) as server,
        async_playwright() as pw,
    ):

        async def open_endpoint(identity: str, video: Any) -> Page:
            browser = await pw.chromium.launch(executable_path=str(chromium), args=chromium_args(video))
            browsers.append(browser)
            context = await browser.new_context(viewport=SMALL_SCREEN)
            context.set_default_timeout(20000)
            tab = await context.new_page()
            await tab.goto(
                server.page_url("venue", server.token("council", identity, "venue")), wait_until="commit"
            )
            return tab

        try:
            # A camera that loads the encoder (~1.4 Mbit/s on its top layer): a solid colour would
            # send a few kbit/s and prove nothing about the rate.
            camera = noisy_camera(tmp_path / "hall-a.y4m", frames=8)
            small = write_y4m(tmp_path / "hall-b.y4m", COLOURS["green"])
            publisher = await open_endpoint("hall-a", camera)
            venue = await open_endpoint("hall-b", small)
            for tab in (publisher, venue):
                await eventually(
                    lambda tab=tab: tab.evaluate(STATE_JS),
                    lambda s: s == ["joined", "connected"],
                    45,
                    "connected",
                )
            # Chromium kept transport-cc on the m-sections it receives (the program slots).
            answer = await venue.evaluate(ANSWER_JS)
            assert answer["mids"] and all(answer["kept"].values()), answer
            await set_program(server, "single", ["hall-a"])
            # 640x360: Chromium sends two layers (q 320 and h 640 wide).
            layers = await eventually(
                lambda: publisher.evaluate(LAYERS_JS), lambda x: len(x) == 2, 30, "two layers sent"
            )
            top = max(layers.values())
            await eventually(
                lambda: venue.evaluate(SLOT0_JS),
                lambda s: s["w"] == top,
                30,
                "the venue on the top layer",
            )
            # Chromium's feedback reaches the leg's estimate.
            stats = await eventually(
                lambda: venue_stats(server),
                lambda s: s["send_side_estimate"] is not None and s["transport_cc_out"]["feedback"] > 20,
                20,
                "a send-side estimate from Chromium's feedback",
            )
            log(f"venue's transport-cc: {stats['transport_cc_out']}, estimate {stats['send_side_estimate']}")
            # Over 10 s on the clear loopback: what the server sends the venue, and the estimate.
            first, started = stats, time.monotonic()
            estimates, rates, budgets = (
                [],
                [],
                [],
            )  # each second: the estimate, what was sent (bit/s), the budget
            before, at = stats, started
            for _ in range(10):
                await asyncio.sleep(1.0)
                now = await venue_stats(server)
                estimates.append(now["send_side_estimate"])
                budgets.append(now["downlink_budget"])
                rates.append((now["bytes_out"] - before["bytes_out"]) * 8 / (time.monotonic() - at))
                before, at = now, time.monotonic()
                log(f"  {now['transport_cc_out']}, estimate {now['send_side_estimate']}")
            elapsed = time.monotonic() - started
            sending = (now["bytes_out"] - first["bytes_out"]) * 8 / elapsed
            slot0 = await venue.evaluate(SLOT0_JS)
            log(
                f"sent {sending / 1e3:.0f} kbit/s to the venue;"
                f" estimates {[e // 1000 for e in estimates if e]} kbit/s"
                f" against {[int(r) // 1000 for r in rates]} sent each second;"
                f" acked {now['transport_cc_out']['acked_bitrate']}, loss {now['transport_cc_out']['loss']};"
                f" budget {now['downlink_budget']}; slot 0 {slot0}"
            )
            assert all(e is not None for e in estimates)
            # Every packet the leg sent carried the transport-wide sequence (all its slots kept it).
            stamped = now["transport_cc_out"]["stamped"] - first["transport_cc_out"]["stamped"]
            assert stamped >= 0.99 * (now["packets_out"] - first["packets_out"]) > 100
            assert now["transport_cc_out"]["refused"] == 0
            assert sending > 100_000  # the top layer (and audio) flowed (less on a loaded machine)
            # The publisher ramps and sends keyframes in bursts (each second's rate varies 2-3x): the
            # layer choice never took the estimate for a drop (it compares it with its sources' rates,
            # ``layer_choice.congestion_estimate``), and by the end of the window it is at least what
            # the leg was sent over it.
            assert all(e is not None for e in estimates), estimates
            assert all(b is None for b in budgets), budgets
            assert estimates[-1] is not None and estimates[-1] >= sending, (estimates, sending)
            # ... so the layer choice kept the top layer in the full-screen slot.
            assert now["downlink_budget"] is None
            assert slot0["w"] == top
            hall_a = [
                s["layer"]
                for s in now["slots"].values()
                if s["identity"] == "hall-a" and s["layer"] is not None
            ]
            assert hall_a == [len(layers) - 1]
        finally:
            for browser in browsers:
                await browser.close()
