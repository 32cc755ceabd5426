"""The pages in Firefox: Debian's firefox-esr, headless, driven over Marionette (Firefox's own
remote protocol, through Mozilla's ``marionette_driver``; Playwright only drives its own patched
Firefox, which we may not download).

A venue opened as ``/venue?token=…`` joins by itself, publishes Firefox's fake camera and
microphone, and plays the program: a Python test endpoint with a known colour is in slot 0 and the
Firefox venue itself in slot 1. The Python endpoint decodes the Firefox venue's camera and hears
its microphone, so media flows both ways through the forwarding core with Firefox's own WebRTC
stack (its SDP, BUNDLE, DTLS/SRTP and VP8), not only Chromium's. Then a member's phone page and the
chair's console (~60 m-lines) join in further tabs and show the program's main slot and the
Python venue's preview.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import av
import pytest
from browser_util import CENTRE_PIXEL_JS, eventually, log, rest, server_process, set_program

from conference.loadtest.endpoint import Endpoint, EndpointConfig
from conference.loadtest.testmedia import MediaParams, colour_for, load_clip

pytestmark = [pytest.mark.browser, pytest.mark.media]

FIREFOX = shutil.which("firefox-esr") or shutil.which("firefox")
PARAMS = MediaParams(width=320, height=180, loop_frames=25, audio_frames=10)
PYTHON_INDEX = 9

# A profile for an unattended test browser on a closed network: fake devices without a prompt,
# autoplay allowed, real host addresses in ICE (no mDNS names), and nothing that phones home.
PREFS = {
    "media.navigator.streams.fake": True,
    "media.navigator.permission.disabled": True,
    "media.autoplay.default": 0,
    "media.autoplay.blocking_policy": 0,
    "media.peerconnection.ice.obfuscate_host_addresses": False,
    "browser.shell.checkDefaultBrowser": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "app.update.enabled": False,
    "app.normandy.enabled": False,
    "messaging-system.rsexperimentloader.enabled": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "extensions.update.enabled": False,
    "services.settings.server": "http://127.0.0.1:9/",
    "browser.startup.homepage": "about:blank",
    "startup.homepage_welcome_url": "about:blank",
}

# Marionette runs scripts in a sandbox that sees the page's DOM but not its own globals:
# ``window.wrappedJSObject`` is the page's window.
# Program slot 0's centre pixel, or null before its first frame.
SLOT0_PIXEL_JS = f"""
  const n = document.querySelector('#program [data-slot="0"]:not([hidden])');
  return n ? ({CENTRE_PIXEL_JS})(n) : null;
"""
TILE_PIXEL_JS = f"""
  const n = document.querySelector(`#tiles .tile[data-identity="${{arguments[0]}}"]`);
  return n ? ({CENTRE_PIXEL_JS})(n) : null;
"""
STATE_JS = """
  const page = window.wrappedJSObject.conference;
  const c = page && page.client;
  return c ? {state: [c.state, c.mediaState], ice: c.pc ? c.pc.iceConnectionState : null,
              camera: !!page.media.video, microphone: !!page.media.audio} : null;
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _expected_rgb(index: int) -> tuple[int, int, int]:
    """The RGB a browser shows for test endpoint ``index``'s video (its colour is set in YUV)."""
    y, u, v = colour_for(index)
    frame = av.VideoFrame(16, 16, "yuv420p")
    for plane, value in zip(frame.planes, (y, u, v), strict=True):
        plane.update(bytes([value]) * plane.buffer_size)
    rgb = frame.to_ndarray(format="rgb24").reshape(-1, 3).mean(axis=0)
    return tuple(int(c) for c in rgb)  # type: ignore[return-value]


@contextlib.asynccontextmanager
async def firefox(profile: Path) -> AsyncIterator[Any]:
    """A headless Firefox with a fresh profile; yields a connected Marionette client."""
    from marionette_driver.marionette import Marionette

    assert FIREFOX is not None
    port = _free_port()
    profile.mkdir(parents=True, exist_ok=True)
    prefs = {**PREFS, "marionette.port": port}
    lines = [
        f"user_pref({key!r}, {str(value).lower() if isinstance(value, bool) else repr(value)});"
        for key, value in prefs.items()
    ]
    (profile / "user.js").write_text("\n".join(lines).replace("'", '"') + "\n")
    log_file = profile.parent / "firefox.log"
    with log_file.open("wb") as out:
        proc = subprocess.Popen(
            [FIREFOX, "--headless", "--marionette", "--no-remote", "-profile", str(profile), "about:blank"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    client = None
    try:
        deadline = time.monotonic() + 60
        while client is None:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                client = Marionette(host="127.0.0.1", port=port)
            if client is None:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"firefox did not start: {log_file.read_text()[-2000:]}")
                await asyncio.sleep(0.3)
        await asyncio.to_thread(client.start_session)
        yield client
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(client.delete_session)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.skipif(FIREFOX is None, reason="firefox-esr is not installed (tests/run.sh installs it)")
async def test_venue_page_in_firefox_joins_publishes_and_plays_the_program(tmp_path: Path) -> None:
    pytest.importorskip("marionette_driver", reason="marionette_driver is a test extra")
    cache = tmp_path / "media"
    load_clip(PYTHON_INDEX, PARAMS, cache)
    expected = _expected_rgb(PYTHON_INDEX)
    async with server_process(tmp_path / "data", media=True) as server:
        python_venue = Endpoint(
            EndpointConfig(
                url=server.url,
                token=server.token("council", "hall-py", "venue", "Python hall"),
                identity="hall-py",
                index=PYTHON_INDEX,
                video_slots=2,
                media=PARAMS,
                cache_dir=cache,
                decode="all",
                raw_media=True,
            )
        )
        await python_venue.join()
        try:
            async with firefox(tmp_path / "profile") as browser:
                started = time.monotonic()
                url = server.page_url("venue", server.token("council", "hall-ff", "venue", "Firefox hall"))
                await asyncio.to_thread(browser.navigate, url)
                version = browser.session_capabilities.get("browserVersion")
                await eventually(
                    lambda: asyncio.to_thread(browser.execute_script, STATE_JS),
                    lambda s: (
                        bool(s) and s["state"] == ["joined", "connected"] and s["camera"] and s["microphone"]
                    ),
                    45,
                    "the Firefox venue joined by itself and its media connected",
                )
                joined = time.monotonic() - started
                await set_program(server, "side-by-side", ["hall-py", "hall-ff"])
                put_at = time.monotonic()

                def close_to_expected(px: list[int] | None) -> bool:
                    return px is not None and max(abs(a - b) for a, b in zip(px, expected, strict=True)) < 40

                pixel = await eventually(
                    lambda: asyncio.to_thread(browser.execute_script, SLOT0_PIXEL_JS),
                    close_to_expected,
                    30,
                    f"Firefox shows the Python venue's colour {expected} in program slot 0",
                )
                shown = time.monotonic() - put_at
                # The other way: the Python venue decodes Firefox's camera from program slot 1.
                slot = python_venue.video_slots[1]
                before = slot.frames_decoded
                await eventually(
                    lambda: asyncio.sleep(0, slot.frames_decoded - before),
                    lambda n: n >= 10,
                    30,
                    "the Python venue decodes the Firefox venue's camera",
                )
                assert slot.decode_errors == 0

                # Firefox's microphone: its fake device plays a tone, which the server's speaker
                # detection (the audio-level extension Firefox writes) finds and forwards.
                def heard() -> int:
                    return sum(s.packets for s in python_venue.audio_slots if s.identity == "hall-ff")

                await eventually(
                    lambda: asyncio.sleep(0, (heard(), list(python_venue.speakers))),
                    lambda v: v[0] >= 25 and "hall-ff" in v[1],
                    30,
                    "the Python venue hears the Firefox venue's microphone",
                )
                stats = await rest(server, "GET", "/api/stats")
                packets_in = stats["media"]["per_session"]["council/hall-ff"]["packets_in"]
                assert stats["media"]["decoded_frames"] == 0
                log(
                    f"firefox {version}: joined with media in {joined:.2f} s, program slot shown "
                    f"{shown:.2f} s after the PUT (pixel {pixel}), Firefox's camera decoded by the "
                    f"Python venue ({slot.frames_decoded} frames) and heard ({heard()} audio packets), "
                    f"{packets_in} packets from Firefox"
                )

                # A member's phone page in a second tab: joins with its microphone (camera off by
                # default) and shows the program's main slot.
                tab = await asyncio.to_thread(browser.open, "tab", True)
                await asyncio.to_thread(browser.switch_to_window, tab["handle"])
                started = time.monotonic()
                url = server.page_url(
                    "phone", server.token("council", "member-ff", "member", "Firefox member")
                )
                await asyncio.to_thread(browser.navigate, url)
                state = await eventually(
                    lambda: asyncio.to_thread(browser.execute_script, STATE_JS),
                    lambda s: bool(s) and s["state"] == ["joined", "connected"] and s["microphone"],
                    45,
                    "the Firefox phone joined with its microphone",
                )
                assert not state["camera"], "the phone's camera is off by default"
                await eventually(
                    lambda: asyncio.to_thread(browser.execute_script, SLOT0_PIXEL_JS),
                    close_to_expected,
                    30,
                    "the Firefox phone shows the program's main slot",
                )
                log(f"firefox phone: joined and showing the main slot in {time.monotonic() - started:.2f} s")

                # The chair's console in a third tab: every endpoint's preview in its tile (the
                # chair's offer carries ~60 m-lines) and the program as it is on the screens.
                tab = await asyncio.to_thread(browser.open, "tab", True)
                await asyncio.to_thread(browser.switch_to_window, tab["handle"])
                started = time.monotonic()
                await asyncio.to_thread(
                    browser.navigate,
                    server.page_url("chair", server.token("council", "chair", "chair", "Chair")),
                )
                await eventually(
                    lambda: asyncio.to_thread(browser.execute_script, TILE_PIXEL_JS, ["hall-py"]),
                    close_to_expected,
                    45,
                    "the Firefox chair console previews the Python venue in its tile",
                )
                log(f"firefox chair: joined and previewing in {time.monotonic() - started:.2f} s")
        finally:
            await python_venue.close()
