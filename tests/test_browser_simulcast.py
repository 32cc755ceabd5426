"""Simulcast through the server with real Chromium: a venue publishes a 1280x720 camera in three
layers (the server's offer asks for them), and each subscriber's slot gets the layer its tile
needs: the venue screen's full-screen slot the top layer, the phone the lowest; a layout that
makes the tile small switches the venue to the low layer within a second, without a freeze. Once
with VP8 and once with H.264 preferred (the setting ``video_codecs``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import pytest
import pytest_asyncio
from browser_util import (
    COLOURS,
    PHONE,
    SMALL_SCREEN,
    RunningServer,
    chromium_args,
    ensure_chromium,
    eventually,
    log,
    rest,
    server_process,
    set_program,
    write_y4m,
)
from playwright.async_api import Browser, Page, async_playwright

from recorder.archive import Recording, recordings_root
from recorder.depacketize import video_frames

pytestmark = [
    pytest.mark.browser,
    pytest.mark.media,
    pytest.mark.realtime,
    pytest.mark.asyncio(loop_scope="module"),
]

SWITCH_BOUND_S = 3.0
STATE_JS = "(c => c ? [c.state, c.mediaState] : null)(window.conference?.client)"
# The publisher's layers as its browser sends them: rid -> frame width.
LAYERS_JS = """async () => {
  const out = {};
  for (const s of (await window.conference.client.pc.getStats()).values())
    if (s.type === 'outbound-rtp' && s.kind === 'video' && s.rid && s.frameWidth) out[s.rid] = s.frameWidth;
  return out;
}"""
# The codec of the publisher's video as its browser sends it.
CODEC_JS = """async () => {
  const stats = await window.conference.client.pc.getStats();
  for (const s of stats.values())
    if (s.type === 'outbound-rtp' && s.kind === 'video' && s.codecId) return stats.get(s.codecId).mimeType;
  return null;
}"""
# What a receiving page decodes in program slot 0.
SLOT0_JS = """async () => {
  const c = window.conference.client;
  const mid = c.videoMids[0];
  for (const s of (await c.pc.getStats()).values())
    if (s.type === 'inbound-rtp' && s.mid === mid)
      return {w: s.frameWidth || 0, frames: s.framesDecoded || 0, freezes: s.freezeCount || 0,
              frozen: s.totalFreezesDuration || 0};
  return {w: 0, frames: 0, freezes: 0};
}"""


@dataclass
class Meeting:
    server: RunningServer
    publisher: Page
    venue: Page
    phone: Page
    data: Path
    codec: str


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["vp8", "h264"])
async def meeting(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Meeting]:
    chromium = ensure_chromium()
    if chromium is None:
        pytest.fail("chromium is not installed and could not be installed with apt-get")
    tmp = tmp_path_factory.mktemp("simulcast")
    config = tmp / "conference.toml"
    # The publisher's browser encodes what the server's offer prefers: VP8, or H.264 first.
    codec = request.param
    config.write_text(
        f"simulcast = true\nvideo_codecs = [{codec!r}, {'vp8' if codec == 'h264' else 'h264'!r}]\n"
    )
    browsers: list[Browser] = []
    async with (
        server_process(tmp / "data", media=True, extra_args=["--config", str(config)]) as server,
        async_playwright() as pw,
    ):

        async def open_endpoint(identity: str, role: str, page: str, video: Any) -> Page:
            browser = await pw.chromium.launch(executable_path=str(chromium), args=chromium_args(video))
            browsers.append(browser)
            context = await browser.new_context(viewport=PHONE if page == "phone" else SMALL_SCREEN)
            context.set_default_timeout(20000)
            tab = await context.new_page()
            await tab.goto(
                server.page_url(page, server.token("council", identity, role)), wait_until="commit"
            )
            return tab

        try:
            camera = write_y4m(tmp / "hall-a.y4m", COLOURS["red"], width=1280, height=720, frames=3)
            small = write_y4m(tmp / "hall-b.y4m", COLOURS["green"])
            publisher = await open_endpoint("hall-a", "venue", "venue", camera)
            venue = await open_endpoint("hall-b", "venue", "venue", small)
            phone = await open_endpoint("m1", "member", "phone", small)
            for tab in (publisher, venue, phone):
                await eventually(
                    lambda tab=tab: tab.evaluate(STATE_JS),
                    lambda s: s == ["joined", "connected"],
                    45,
                    "connected",
                )
            yield Meeting(server, publisher, venue, phone, tmp / "data", codec)
        finally:
            for browser in browsers:
                await browser.close()


async def test_each_subscriber_gets_the_layer_its_tile_needs(meeting: Meeting) -> None:
    await set_program(meeting.server, "single", ["hall-a"])
    # Chromium adds its layers as its bandwidth estimate grows: all three within seconds here.
    layers = await eventually(
        lambda: meeting.publisher.evaluate(LAYERS_JS), lambda x: len(x) == 3, 30, "three layers sent"
    )
    sent = await meeting.publisher.evaluate(CODEC_JS)
    log(f"publisher's layers: {layers} ({sent})")
    assert layers["q"] < layers["h"] < layers["f"]
    assert sent.lower() == f"video/{meeting.codec}"

    async def widths() -> tuple[int, int, dict[str, int]]:
        venue, phone = await meeting.venue.evaluate(SLOT0_JS), await meeting.phone.evaluate(SLOT0_JS)
        return venue["w"], phone["w"], await meeting.publisher.evaluate(LAYERS_JS)

    # The full-screen slot on the venue's screen: the top layer; on the phone: the lowest.
    venue_w, phone_w, layers = await eventually(
        widths, lambda x: x[0] == x[2].get("f") and x[1] == x[2].get("q"), 20, "venue on f, phone on q"
    )
    log(f"single: venue decodes {venue_w} wide, the phone {phone_w} (layers {layers})")
    stats = (await rest(meeting.server, "GET", "/api/stats"))["media"]["per_session"]
    venue_stats = stats["council/hall-b"]
    log(
        f"venue's downlink estimate {venue_stats['downlink_estimate']},"
        f" budget {venue_stats['downlink_budget']}"
    )

    def layers_of(session: dict[str, Any]) -> list[int]:  # hall-a's video slots (audio has no layer)
        return [
            s["layer"]
            for s in session["slots"].values()
            if s["identity"] == "hall-a" and s["layer"] is not None
        ]

    assert layers_of(venue_stats) == [2]
    assert layers_of(stats["council/m1"]) == [0]

    # A grid-3x3 tile is 427 pixels wide on the venue's screen: the low layer, within a second.
    # From a settled stream: Chromium adds its top layer as its estimate grows and may pause it
    # again at first; 30 frames on it (2 s) before the layout changes.
    settled = await meeting.venue.evaluate(SLOT0_JS)
    before = await eventually(
        lambda: meeting.venue.evaluate(SLOT0_JS),
        lambda s: s["frames"] >= settled["frames"] + 30,
        20,
        "30 frames",
    )
    log(f"before the switch: {before}")
    started = time.monotonic()
    await set_program(meeting.server, "grid-3x3", ["hall-a"])
    low = layers["q"]
    after = await eventually(
        lambda: meeting.venue.evaluate(SLOT0_JS), lambda s: s["w"] == low, 10, "venue on q"
    )
    switched = time.monotonic() - started
    log(f"grid-3x3: venue on {after['w']} after {switched:.2f} s")
    # Measured 0.25-0.34 s on this machine at a 1-minute load of 6-9, 1.31 s at 15. As in
    # test_browser_media, the bound fails a clearly broken switch only; the figure is printed.
    assert switched < SWITCH_BOUND_S, f"the switch took {switched:.2f} s"
    # Frames kept coming through the switch (the old layer flows until the new one's keyframe).
    moving = await eventually(
        lambda: meeting.venue.evaluate(SLOT0_JS),
        lambda s: s["frames"] > after["frames"] + 5,
        5,
        "frames after",
    )
    assert moving["freezes"] == before["freezes"], f"froze at the switch: {before} -> {moving}"

    # And back to full screen: the top layer again.
    await set_program(meeting.server, "single", ["hall-a"])
    back = await eventually(
        lambda: meeting.venue.evaluate(SLOT0_JS), lambda s: s["w"] > low, 10, "venue back on a higher layer"
    )
    assert back["freezes"] == before["freezes"]


def decoded_width(codec: str, frame: bytes) -> int:
    """The width of an encoded keyframe (VP8, or H.264 in Annex B), decoded by FFmpeg."""
    context = av.CodecContext.create(codec.lower(), "r")
    decoded = [*context.decode(av.Packet(frame)), *context.decode(None)]
    return decoded[0].width if decoded else 0


async def command(meeting: Meeting, kind: str) -> None:
    await rest(meeting.server, "POST", "/api/rooms/council/commands", {"type": kind})


async def test_the_recording_keeps_the_best_layer(meeting: Meeting) -> None:
    layers = await eventually(
        lambda: meeting.publisher.evaluate(LAYERS_JS), lambda x: len(x) == 3, 30, "three layers sent"
    )
    await command(meeting, "start_recording")
    await asyncio.sleep(4)
    await command(meeting, "stop_recording")
    (directory,) = [d for d in recordings_root(meeting.data).iterdir() if d.is_dir()]
    recording = await eventually(
        lambda: asyncio.sleep(0.2, Recording(directory)), lambda r: r.complete, 10, "recording complete"
    )
    widths = []
    for track in recording.tracks:
        if track.identity == "hall-a" and track.media == "video":
            frames = [f for f in video_frames(recording, track) if f.keyframe]
            widths += [decoded_width(track.codec, f.data) for f in frames[:1]]
    tracks = [
        (t.identity, t.media, t.ssrc, sum(1 for _ in recording.read_track(t.number)))
        for t in recording.tracks
    ]
    log(
        f"recorded tracks (identity, media, ssrc, packets): {tracks};"
        f" hall-a's first keyframe widths: {widths}"
    )
    assert widths == [layers["f"]]
