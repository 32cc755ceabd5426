"""A venue on the LAN: ``conference serve`` over HTTPS (a self-signed certificate made here, as the
README's trial recipe does) bound to this machine's own non-loopback address, and two venue screens
in headless Chromium opened at ``https://<that address>:<port>/venue?token=…``. They join over WSS
by themselves, get the camera and microphone (a secure origin), and play the program's video.

Traffic only goes to this machine's own address; the test skips when it has no LAN address."""

from __future__ import annotations

import time
from pathlib import Path

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
    lan_address,
    log,
    screenshot_path,
    self_signed_certificate,
    server_process,
    set_program,
    write_tone,
    write_y4m,
)
from playwright.async_api import Page, async_playwright

# `realtime`: the suite waits for a calm machine before each test (tests/suite_policy.py).
pytestmark = [pytest.mark.browser, pytest.mark.media, pytest.mark.realtime]

ADDRESS = lan_address()
if ADDRESS is None:
    pytest.skip("this machine has no non-loopback IPv4 address to serve the LAN on", allow_module_level=True)

VENUES = {"hall-a": ("第一分会场", "red", 440.0), "hall-b": ("第二分会场", "green", 660.0)}

# What the page itself reports about its origin, its signaling socket and the media path taken.
CONNECTION_JS = """async () => {
  const c = window.conference?.client;
  if (!c) return null;
  let remote = null;
  if (c.pc) {
    const stats = await c.pc.getStats();
    for (const s of stats.values()) {
      if (s.type === 'candidate-pair' && s.state === 'succeeded' && s.nominated) {
        const r = stats.get(s.remoteCandidateId);
        remote = r ? (r.address || r.ip) + ':' + r.port : null;
      }
    }
  }
  return {protocol: location.protocol, secure: window.isSecureContext, ws: c._ws ? c._ws.url : null,
          state: [c.state, c.mediaState], camera: !!window.conference.media.video,
          microphone: !!window.conference.media.audio, remote};
}"""


async def test_venue_over_https_on_the_lan_address(tmp_path: Path) -> None:
    chromium = ensure_chromium()
    if chromium is None:
        pytest.fail("chromium is not installed and could not be installed with apt-get")
    assert ADDRESS is not None
    cert = self_signed_certificate(tmp_path / "tls", ADDRESS)
    errors: list[str] = []
    # Media candidates on the LAN address only, as a venue deployment names its interface.
    async with (
        server_process(
            tmp_path / "data", media=True, host=ADDRESS, tls=cert, extra_args=["--rtc-interface", ADDRESS]
        ) as server,
        async_playwright() as pw,
    ):
        assert server.url.startswith(f"https://{ADDRESS}:")
        tabs: dict[str, Page] = {}
        started: dict[str, float] = {}
        browsers = []
        try:
            for identity, (name, colour, tone) in VENUES.items():
                video = write_y4m(tmp_path / f"{identity}.y4m", COLOURS[colour])
                audio = write_tone(tmp_path / f"{identity}.wav", tone)
                # The self-signed certificate is accepted the way a person accepts it once in the browser.
                browser = await pw.chromium.launch(
                    executable_path=str(chromium),
                    args=[*chromium_args(video, audio), "--ignore-certificate-errors"],
                )
                browsers.append(browser)
                context = await browser.new_context(viewport=SMALL_SCREEN, locale="zh-CN")
                context.set_default_timeout(20000)
                tab = await context.new_page()
                tab.on("pageerror", lambda exc, i=identity: errors.append(f"{i}: {exc}"))
                started[identity] = time.monotonic()
                await tab.goto(server.page_url("venue", server.token("council", identity, "venue", name)))
                tabs[identity] = tab
            joined: dict[str, float] = {}
            for identity, tab in tabs.items():
                await eventually(
                    lambda t=tab: t.evaluate(CONNECTION_JS),
                    lambda s: s is not None and s["state"] == ["joined", "connected"],
                    45,
                    f"{identity} joined with media over https",
                )
                joined[identity] = round(time.monotonic() - started[identity], 2)
            log(f"https LAN join (page requested to media connected): {joined} s")

            # The program is set as an integration would: the REST API over the same HTTPS address.
            await set_program(server, "side-by-side", ["hall-b", "hall-a"])
            shown_at = time.monotonic()
            for identity, tab in tabs.items():
                try:
                    await eventually(
                        lambda t=tab: t.evaluate(SLOT_PIXELS_JS),
                        lambda px: {int(k): colour_name(v) for k, v in px.items()} == {0: "green", 1: "red"},
                        30,
                        f"{identity} plays the program over the LAN",
                    )
                except AssertionError as exc:
                    raise AssertionError(f"{exc}; {await tab.evaluate(VIDEO_DIAGNOSIS_JS)}") from None
            log(f"https LAN program shown in every venue {time.monotonic() - shown_at:.2f} s after the PUT")

            for identity, tab in tabs.items():
                info = await tab.evaluate(CONNECTION_JS)
                log(f"{identity}: {dict(info, ws=(info['ws'] or '').split('?')[0])}")  # no token in logs
                assert info["protocol"] == "https:" and info["secure"] is True
                # Signaling over WSS to the LAN address, media from the server's LAN address.
                assert info["ws"].startswith(f"wss://{ADDRESS}:"), info
                assert info["camera"] and info["microphone"], info
                assert info["remote"] and info["remote"].startswith(f"{ADDRESS}:"), info
            await tabs["hall-a"].screenshot(path=screenshot_path("https-lan-venue"))
            assert errors == []
        finally:
            for browser in browsers:
                await browser.close()
