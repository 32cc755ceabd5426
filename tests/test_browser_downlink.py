"""A venue behind a 1 Mbit/s downlink (issue 12): real Chromium, simulcast publishers.

Four venues on the host publish a noisy 960x540 camera in three simulcast layers (240, 480 and
960 wide; together about 4 x 1.5 Mbit/s). A fifth venue, its Chromium inside the network namespace
of ../shared/netimpair, receives them in a ``grid-2x2`` program through a downlink capped at
1 Mbit/s (``tc tbf`` on the host's side of the link). The server sees the subscriber's losses
(and its transport-cc feedback where the leg has it) and steps the slots down to layers that fit:
all four keep moving. Then the cap goes, the program turns ``single``, and the same subscriber's
full-screen slot climbs back to the top layer.

    python tests/test_browser_downlink.py     # the same run, printing its figures (docs/performance.md)

Skipped, saying why, only where the namespace cannot be made (not root, no iproute2).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from browser_util import ensure_chromium, rest, server_process, write_y4m
from netimpair_media import (
    HOST_ADDRESS,
    browser_on_link,
    joined,
    namespace_chromium,
    namespace_problem,
    noisy_camera,
    set_link,
)

pytestmark = [pytest.mark.browser, pytest.mark.realtime]

TBF_QUEUE = ("burst", "32kbit", "latency", "100ms")  # a home router's shallow queue
HOST_LINK = "vh0"  # the host's end of the namespace's veth: its egress is the subscriber's downlink
CAP_KBIT = 1000
CAMERA = (640, 360)
PUBLISHERS = ("hall-1", "hall-2", "hall-3", "hall-4")
# Every program slot of the receiving page: the width it decodes, frames, freezes, bytes.
SLOTS_JS = """async () => {
  const c = window.conference.client;
  const out = [];
  const stats = [...(await c.pc.getStats()).values()];
  for (const mid of c.videoMids) {
    const s = stats.find(x => x.type === 'inbound-rtp' && x.mid === mid);
    out.push(s ? {w: s.frameWidth || 0, frames: s.framesDecoded || 0, freezes: s.freezeCount || 0,
                  frozen: s.totalFreezesDuration || 0, bytes: s.bytesReceived || 0}
               : {w: 0, frames: 0, freezes: 0, frozen: 0, bytes: 0});
  }
  return out;
}"""
LAYERS_JS = """async () => {
  const out = {};
  for (const s of (await window.conference.client.pc.getStats()).values())
    if (s.type === 'outbound-rtp' && s.kind === 'video' && s.rid && s.frameWidth) out[s.rid] = s.frameWidth;
  return out;
}"""
KEEP_RESOLUTION_JS = """async () => {
  for (const sender of window.conference.client.pc.getSenders()) {
    if (!sender.track || sender.track.kind !== 'video') continue;
    const params = sender.getParameters();
    params.degradationPreference = 'maintain-resolution';
    await sender.setParameters(params);
  }
}"""
# Why a publisher's encoder sends less than its camera gives (cpu, bandwidth or none), per layer.
LIMITS_JS = """async () => {
  const out = {};
  for (const s of (await window.conference.client.pc.getStats()).values())
    if (s.type === 'outbound-rtp' && s.kind === 'video' && s.rid)
      out[s.rid] = [s.frameWidth || 0, Math.round(s.framesPerSecond || 0), s.qualityLimitationReason];
  return out;
}"""


def cap_downlink(kbit: int | None) -> None:
    """The subscriber's downlink: a token bucket on the host's end of the link (None: clear)."""
    subprocess.run(["tc", "qdisc", "del", "dev", HOST_LINK, "root"], capture_output=True, timeout=10)
    if kbit is not None:
        subprocess.run(
            ["tc", "qdisc", "add", "dev", HOST_LINK, "root", "tbf", "rate", f"{kbit}kbit", *TBF_QUEUE],
            check=True,
            capture_output=True,
            timeout=10,
        )


@contextlib.asynccontextmanager
async def meeting(tmp: Path, simulcast: bool = True) -> AsyncIterator[tuple[Any, Any, list[Any]]]:
    """(the server, the subscriber's page in the namespace, the publishers' pages on the host)."""
    from playwright.async_api import async_playwright

    config = tmp / "conference.toml"
    config.write_text(f"simulcast = {'true' if simulcast else 'false'}\n")
    camera = noisy_camera(tmp / "noisy.y4m", *CAMERA, frames=8)
    small = write_y4m(tmp / "subscriber.y4m", (30, 60, 220), 320, 180)
    async with contextlib.AsyncExitStack() as stack:
        server = await stack.enter_async_context(
            server_process(
                tmp / "data",
                media=True,
                host="0.0.0.0",
                extra_args=["--rtc-interface", HOST_ADDRESS, "--config", str(config)],
            )
        )
        port = server.url.rsplit(":", 1)[1]
        pw = await stack.enter_async_context(async_playwright())
        # One browser for the four publishers (one camera), one in the namespace for the subscriber.
        host_browser = await browser_on_link(pw, ensure_chromium(), camera, port)  # type: ignore[arg-type]
        stack.push_async_callback(host_browser.close)
        linked_browser = await browser_on_link(pw, namespace_chromium(tmp), small, port)
        stack.push_async_callback(linked_browser.close)
        await rest(server, "POST", "/api/rooms", {"room": "link", "title": "downlink test"})
        publishers = []
        for identity in PUBLISHERS:
            context = await host_browser.new_context(viewport={"width": 320, "height": 180})
            page = await context.new_page()
            await page.goto(f"http://127.0.0.1:{port}/venue?token=" + server.token("link", identity, "venue"))
            publishers.append(page)
        context = await linked_browser.new_context(viewport={"width": 800, "height": 450})
        subscriber = await context.new_page()
        await subscriber.goto(
            f"http://{HOST_ADDRESS}:{port}/venue?token=" + server.token("link", "branch", "venue")
        )
        for page in (*publishers, subscriber):
            await joined(page, 60)
        # A busy machine makes Chromium's encoder scale its camera down (quality limitation
        # "cpu"), which would change what the top layer is mid-test: frames are dropped instead.
        for page in publishers:
            await page.evaluate(KEEP_RESOLUTION_JS)
        yield server, subscriber, publishers


async def program(server: Any, layout: str, slots: list[str]) -> None:
    await rest(server, "PUT", "/api/rooms/link/program", {"layout": layout, "slots": slots})


async def window(page: Any, seconds: float) -> list[dict[str, Any]]:
    """Each slot over ``seconds``: its width at the end, frames per second, freezes, kbit/s."""
    before = await page.evaluate(SLOTS_JS)
    started = time.monotonic()
    await asyncio.sleep(seconds)
    after = await page.evaluate(SLOTS_JS)
    elapsed = time.monotonic() - started
    return [
        {
            "width": b["w"],
            "fps": round((b["frames"] - a["frames"]) / elapsed, 1),
            "freezes": b["freezes"] - a["freezes"],
            "frozen_s": round(b["frozen"] - a["frozen"], 2),
            "kbit_s": round(8 * (b["bytes"] - a["bytes"]) / elapsed / 1000),
        }
        for a, b in zip(before, after, strict=True)
    ]


async def session_stats(server: Any) -> dict[str, Any]:
    stats = (await rest(server, "GET", "/api/stats"))["media"]["per_session"]["link/branch"]
    return {
        "budget": stats.get("downlink_budget"),
        "send_side_estimate": stats.get("send_side_estimate"),
        "layers": [s["layer"] for s in stats["slots"].values() if s["layer"] is not None],
    }


async def sent_layers(publishers: list[Any], timeout: float) -> dict[str, int]:
    """The publishers' layer widths once every one of them sends as many as its camera allows:
    Chromium sends two layers of a 640x360 camera (320, 640), three of larger ones."""
    wanted = 3 if CAMERA[0] > 640 else 2
    deadline = time.monotonic() + timeout
    while True:
        layers = [await p.evaluate(LAYERS_JS) for p in publishers]
        if all(len(x) == wanted for x in layers):
            return layers[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"the publishers did not all send {wanted} layers: {layers}")
        await asyncio.sleep(1.0)


async def run(settle: float = 15.0, seconds: float = 20.0, simulcast: bool = True) -> dict[str, Any]:
    """The whole case; returns its figures. ``simulcast=False``: the same meeting with one layer
    per publisher (nothing to step down to), for comparison."""
    problem = namespace_problem()
    if problem is not None:
        raise RuntimeError(problem)
    figures: dict[str, Any] = {}
    set_link(["0", "0", "0"])
    cap_downlink(None)
    try:
        with tempfile.TemporaryDirectory(prefix="downlink-") as tmp:
            async with (
                asyncio.timeout(240),
                meeting(Path(tmp), simulcast) as (server, subscriber, publishers),
            ):
                layers = await sent_layers(publishers, 40) if simulcast else {}
                figures["publisher_layers"] = layers
                await program(server, "grid-2x2", list(PUBLISHERS))
                await asyncio.sleep(6)
                figures["clear_grid"] = await window(subscriber, 6)
                figures["clear_grid_server"] = await session_stats(server)
                cap_downlink(CAP_KBIT)
                await asyncio.sleep(settle)
                figures["capped_grid"] = await window(subscriber, seconds)
                figures["capped_grid_server"] = await session_stats(server)
                cap_downlink(None)
                if not simulcast:
                    return figures
                await program(server, "single", [PUBLISHERS[0]])
                started = time.monotonic()
                deadline = started + 60
                while time.monotonic() < deadline:
                    slot = (await subscriber.evaluate(SLOTS_JS))[0]
                    if slot["w"] == max(layers.values()):
                        break
                    await asyncio.sleep(1.0)
                figures["clear_single_top_after_s"] = round(time.monotonic() - started, 1)
                figures["clear_single"] = await window(subscriber, 5)
                figures["clear_single_server"] = await session_stats(server)
                figures["publishers_at_end"] = [await p.evaluate(LIMITS_JS) for p in publishers]
    finally:
        cap_downlink(None)
    return figures


async def test_behind_1_mbit_every_grid_slot_moves_and_on_a_clear_link_full_screen_is_top() -> None:
    problem = namespace_problem()  # makes the namespace if it is not there yet
    if problem is not None:
        pytest.skip(f"impaired link unavailable: {problem}")
    figures = await run()
    print(json.dumps(figures))
    top = max(figures["publisher_layers"].values())
    capped = figures["capped_grid"][: len(PUBLISHERS)]  # the page has a slot for every tile of grid-3x3
    # Under the cap every slot moves on a layer below the top one, and the four fit the link.
    # "Moving": frames at a third of the camera's rate or more and frozen at most 3 s of the 20;
    # with one layer per publisher the same link freezes all four (0 frames decoded: README of
    # this case in docs/performance.md). The layer choice probes upwards after a hold (8 s, then
    # doubling) and a failed probe freezes the four together for about a second: seen on a loaded
    # machine, 2 freezes per slot (0.8-2.7 s), on a quiet one none.
    for slot in capped:
        assert slot["fps"] >= 5 and slot["frozen_s"] <= 3.0, capped
        assert 0 < slot["width"] < top, capped
    assert sum(s["kbit_s"] for s in capped) < CAP_KBIT, capped
    assert figures["capped_grid_server"]["budget"] is not None, figures
    # On the clear link the full-screen slot reaches the top layer and keeps moving.
    single = figures["clear_single"][0]
    assert single["width"] == top and single["fps"] >= 5, figures


if __name__ == "__main__":
    # Arguments: a camera size (e.g. 960x540) and/or "single-layer" (simulcast off, to compare).
    for arg in sys.argv[1:]:
        if "x" in arg and arg != "single-layer":
            CAMERA = tuple(int(x) for x in arg.split("x"))  # type: ignore[assignment]
    print(json.dumps(asyncio.run(run(simulcast="single-layer" not in sys.argv)), indent=1))
