"""A venue that can only be reached through TURN: a real coturn (Debian's package) started here with
time-limited credentials (use-auth-secret), ``conference serve`` handing each join its own
credential and ``ice_transport_policy = relay``, two venue screens in headless Chromium: each uses
only a relay candidate, sees the other venue's colour and is seen. Traffic stays on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from browser_util import (
    COLOURS,
    SLOT_PIXELS_JS,
    SMALL_SCREEN,
    chromium_args,
    colour_name,
    ensure_chromium,
    eventually,
    log,
    server_process,
    set_program,
    system_tool,
    write_tone,
    write_y4m,
)
from playwright.async_api import Page, async_playwright

pytestmark = [pytest.mark.browser, pytest.mark.media, pytest.mark.realtime]

VENUES = {"hall-a": ("第一分会场", "red", 440.0), "hall-b": ("第二分会场", "green", 660.0)}
TURN_SECRET = "turn-shared-secret-for-the-test-0123456789"

# The local candidate of the pair in use, and the ICE servers the page was given (no password kept).
PATH_JS = """async () => {
  const c = window.conference?.client;
  if (!c || !c.pc) return null;
  const stats = await c.pc.getStats();
  for (const s of stats.values()) {
    if (s.type === 'candidate-pair' && s.state === 'succeeded' && s.nominated) {
      const local = stats.get(s.localCandidateId);
      return {type: local && local.candidateType, relayProtocol: local && local.relayProtocol,
              policy: c.pc.getConfiguration().iceTransportPolicy,
              users: (c.iceServers || []).map((x) => x.username || null)};
    }
  }
  return {type: null};
}"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _turnserver() -> str:
    return system_tool("turnserver", "coturn")


@contextlib.asynccontextmanager
async def coturn(tmp: Path, port: int) -> AsyncIterator[Path]:
    log_file = tmp / "coturn.log"
    out = log_file.open("wb")
    proc = await asyncio.create_subprocess_exec(
        _turnserver(),
        "-n",  # no configuration file: everything is here
        "--listening-ip=127.0.0.1",
        f"--listening-port={port}",
        "--relay-ip=127.0.0.1",
        "--min-port=49400",
        "--max-port=49600",
        "--use-auth-secret",
        f"--static-auth-secret={TURN_SECRET}",
        "--realm=conference.test",
        "--allow-loopback-peers",  # the server's candidates are on this machine
        "--no-tls",
        "--no-dtls",
        "--no-cli",
        "--fingerprint",
        "--log-file=stdout",
        "--simple-log",
        "--verbose",
        f"--pidfile={tmp / 'turnserver.pid'}",
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    try:
        await asyncio.sleep(0.5)
        if proc.returncode is not None:
            raise RuntimeError(f"coturn exited: {log_file.read_text()[-2000:]}")
        yield log_file
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        out.close()


async def test_venues_see_each_other_through_a_turn_relay_only(tmp_path: Path) -> None:
    chromium = ensure_chromium()
    if chromium is None:
        pytest.fail("chromium is not installed and could not be installed with apt-get")
    port = _free_port()
    extra = ["--turn-url", f"turn:127.0.0.1:{port}?transport=udp", "--turn-secret", TURN_SECRET]
    extra += ["--ice-transport-policy", "relay"]
    async with (
        coturn(tmp_path, port) as coturn_log,
        server_process(tmp_path / "data", media=True, extra_args=extra) as server,
        async_playwright() as pw,
    ):
        tabs: dict[str, Page] = {}
        browsers = []
        try:
            for identity, (name, colour, tone) in VENUES.items():
                video = write_y4m(tmp_path / f"{identity}.y4m", COLOURS[colour])
                audio = write_tone(tmp_path / f"{identity}.wav", tone)
                browser = await pw.chromium.launch(
                    executable_path=str(chromium), args=chromium_args(video, audio)
                )
                browsers.append(browser)
                context = await browser.new_context(viewport=SMALL_SCREEN, locale="zh-CN")
                tab = await context.new_page()
                await tab.goto(server.page_url("venue", server.token("council", identity, "venue", name)))
                tabs[identity] = tab
            for identity, tab in tabs.items():
                await eventually(
                    lambda t=tab: t.evaluate("window.conference?.client?.state ?? null"),
                    lambda state: state == "joined",
                    20,
                    f"{identity} joins",
                )
            await set_program(server, "side-by-side", ["hall-b", "hall-a"])
            for identity, tab in tabs.items():
                await eventually(
                    lambda t=tab: t.evaluate(SLOT_PIXELS_JS),
                    lambda px: {int(k): colour_name(v) for k, v in px.items()} == {0: "green", 1: "red"},
                    40,
                    f"{identity} plays the program through the relay",
                )
                path = await tab.evaluate(PATH_JS)
                log(f"{identity}: {path}")
                assert path["policy"] == "relay" and path["type"] == "relay", path
                # Its own time-limited username ("expiry:identity"), not a shared one.
                assert any(u and u.endswith(f":{identity}") for u in path["users"]), path
        finally:
            for browser in browsers:
                await browser.close()
    text = coturn_log.read_text(errors="replace")
    # coturn saw the allocations of both venues under their own usernames.
    for identity in VENUES:
        assert f":{identity}" in text, text[-3000:]
