"""GStreamer's webrtcbin as a venue: a second, independent WebRTC stack in the meeting.

The venue (tests/gst_venue.py, run with Debian's python3 and python3-gi) publishes a camera
(videotestsrc, one solid colour, VP8) and a microphone (audiotestsrc, a sine tone, Opus), and
decodes what it receives in its own pipeline. The test speaks the signaling protocol for it over
/ws (join, the server's offer, its answer, its trickled candidates), beside a real aiortc venue.
Checked by colour and tone both ways:
- the aiortc venue sees the GStreamer venue's colour in its program slot and hears its tone;
- the GStreamer venue shows the aiortc venue's colour and plays its tone (from the frames and the
  PCM its vp8dec and opusdec produced).

Run with and without the RFC 6464 audio-level extension: with it, webrtcbin answers
``a=extmap:2 …ssrc-audio-level vad=on`` (refused as bad_sdp before the glue accepted extension
attributes) and the server takes its levels; without it, the server measures the level from the
Opus (before, the venue was never heard). Without the extension the venue first sends a broken
answer: its candidates then get errors, and the real answer and the candidates sent again work.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from test_sfu_support import COLOURS, SAMPLE_RATE, TONES, Endpoint, nearest_colour

from signaling.app import MEDIA_KEY, build_media

pytestmark = pytest.mark.media

HELPER = Path(__file__).with_name("gst_venue.py")
SYSTEM_PYTHON = "/usr/bin/python3"
ROOM = "council"


def _gstreamer_missing() -> str | None:
    """Why the GStreamer venue cannot run here (tests/run.sh installs what it needs), or None."""
    if not Path(SYSTEM_PYTHON).exists() or not shutil.which("gst-inspect-1.0"):
        return "GStreamer or Debian's python3 is not installed (tests/run.sh installs them)"
    check = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstWebRTC', '1.0'); "
        "gi.require_version('GstSdp', '1.0'); gi.require_version('GstRtp', '1.0'); "
        "from gi.repository import Gst; Gst.init(None); "
        "missing = [e for e in ('webrtcbin', 'nicesrc', 'dtlssrtpenc', 'vp8enc', 'vp8dec', 'opusenc', "
        "'opusdec', 'rtpvp8pay', 'rtpopuspay', 'videotestsrc', 'audiotestsrc', 'appsink', 'level') "
        "if Gst.ElementFactory.find(e) is None]; print(' '.join(missing))"
    )
    try:
        result = subprocess.run([SYSTEM_PYTHON, "-c", check], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot start {SYSTEM_PYTHON}: {exc}"
    if result.returncode != 0:
        return f"python3-gi / GStreamer introspection missing: {result.stderr.strip()[-200:]}"
    if result.stdout.strip():
        return f"GStreamer elements missing: {result.stdout.strip()}"
    return None


MISSING = _gstreamer_missing()


class GstVenue:
    """The GStreamer helper process; JSON lines over its stdin/stdout."""

    def __init__(self, out: Path, *args: str) -> None:
        self.out = out
        self.args = args
        self.proc: asyncio.subprocess.Process | None = None
        self.messages: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.proc = await asyncio.create_subprocess_exec(
            SYSTEM_PYTHON,
            str(HELPER),
            "--out",
            str(self.out),
            *self.args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read())
        await self.wait_for(lambda m: "ready" in m, 30)

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for line in self.proc.stdout:
            self.messages.append(json.loads(line))
            self._changed.set()
        self._changed.set()

    async def wait_for(self, predicate: Any, timeout: float) -> dict[str, Any]:
        async def find() -> dict[str, Any]:
            while True:
                for message in self.messages:
                    if "error" in message:
                        raise AssertionError(f"the GStreamer venue failed: {message}")
                    if predicate(message):
                        return message
                if self._reader is not None and self._reader.done():
                    raise AssertionError(f"the GStreamer venue exited: {self.messages[-5:]}")
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(find(), timeout)

    def candidates(self) -> list[dict[str, Any]]:
        return [m["candidate"] for m in self.messages if "candidate" in m]

    @property
    def state(self) -> str | None:
        states = [m["state"] for m in self.messages if "state" in m]
        return states[-1] if states else None

    async def send(self, message: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(message) + "\n").encode())
        await self.proc.stdin.drain()

    def frame(self, mid: str) -> tuple[np.ndarray, int] | None:
        """The latest decoded frame of a video slot as RGB, and how many frames were decoded."""
        try:
            info = json.loads((self.out / f"{mid}.json").read_text())
            data = (self.out / f"{mid}.i420").read_bytes()
        except (FileNotFoundError, ValueError):
            return None
        width, height = info["width"], info["height"]
        if len(data) < width * height * 3 // 2:
            return None
        planes = np.frombuffer(data[: width * height * 3 // 2], np.uint8).reshape(height * 3 // 2, width)
        rgb = av.VideoFrame.from_ndarray(planes, format="yuv420p").to_ndarray(format="rgb24")
        return rgb, int(info["frames"])

    def colour(self, mid: str) -> int | None:
        """Index in COLOURS nearest to the centre of the slot's latest frame."""
        frame = self.frame(mid)
        if frame is None:
            return None
        rgb = frame[0]
        h, w = rgb.shape[:2]
        centre = rgb[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].reshape(-1, 3).mean(axis=0)
        return nearest_colour(tuple(centre))

    def pitch(self, mid: str, seconds: float = 0.3) -> float | None:
        """Dominant frequency of the last ``seconds`` an audio slot played; None if silent."""
        try:
            raw = (self.out / f"{mid}.s16").read_bytes()
        except FileNotFoundError:
            return None
        count = int(seconds * SAMPLE_RATE)
        samples = np.frombuffer(raw[len(raw) // 2 * 2 - 2 * count :], "<i2").astype(np.float64)
        if len(samples) < count or np.abs(samples).max() < 500:
            return None
        spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
        return float(np.argmax(spectrum) * SAMPLE_RATE / len(samples))

    def heard(self, mids: list[str]) -> set[int]:
        """Indices in TONES heard in any of these audio slots right now."""
        out = set()
        for mid in mids:
            pitch = self.pitch(mid)
            if pitch is not None:
                nearest = int(np.argmin([abs(pitch - t) for t in TONES]))
                if abs(TONES[nearest] - pitch) < 40:
                    out.add(nearest)
        return out

    async def close(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                await self.send({"stop": True})
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


class SignaledSession:
    """What test_sfu_support.Endpoint connects to, over the signaling protocol: the offer the
    server pushed, the answer sent as a command."""

    def __init__(self, client: Any) -> None:
        self.client = client

    async def create_offer(self) -> dict[str, Any]:
        return await self.client.wait_for(lambda m: m["type"] == "offer", timeout=20)

    async def set_answer(self, sdp: str) -> None:
        assert await self.client.ok("answer", sdp=sdp) == {}


async def until(predicate: Any, timeout: float, what: str) -> None:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.1)


def argb(colour: tuple[int, int, int]) -> str:
    r, g, b = colour
    return hex(0xFF000000 | r << 16 | g << 8 | b)


@pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
@pytest.mark.parametrize("level_extension", [True, False], ids=["audio-level", "no-audio-level"])
async def test_a_gstreamer_venue_publishes_and_receives_by_colour_and_tone(
    signaling_server, connect, mint, settings, tmp_path: Path, level_extension: bool
) -> None:
    media_settings = replace(settings, media=True)
    server = await signaling_server(media_settings, media=build_media(media_settings))
    backend = server.app[MEDIA_KEY]
    chair = await connect(server, mint(ROOM, "chair", "chair"))
    await chair.ok("join", publish={"audio": False, "video": False}, video_slots=0, audio_slots=0)

    # A venue on aiortc: red, 400 Hz.
    aiortc_client = await connect(server, mint(ROOM, "hall-a", "venue"))
    await aiortc_client.ok("join", video_slots=2, audio_slots=3)
    hall = Endpoint("hall-a", 0, speaking=True)
    # The GStreamer venue: blue, 700 Hz.
    gst_index = 2
    gst_client = await connect(server, mint(ROOM, "gst-venue", "venue"))
    await gst_client.ok("join", video_slots=1, audio_slots=3)
    offer = await gst_client.wait_for(lambda m: m["type"] == "offer", timeout=20)
    args = ["--colour", argb(COLOURS[gst_index]), "--frequency", str(TONES[gst_index])]
    venue = GstVenue(tmp_path / "gst", *args, *(["--level-extension"] if level_extension else []))
    relay: asyncio.Task[None] | None = None
    try:
        await hall.connect(SignaledSession(aiortc_client))
        await venue.start()
        await venue.send({"offer": offer["sdp"], "slots": offer["slots"]})
        answer = (await venue.wait_for(lambda m: "answer" in m, 30))["answer"]
        has_vad = "ssrc-audio-level vad=on" in answer
        assert has_vad == level_extension, answer

        if not level_extension:
            # A refused answer (cut after its first m-section): the candidates that follow are
            # refused with an error, not taken silently.
            broken = answer[: answer.index("m=video")]
            assert (await gst_client.request("answer", sdp=broken))["code"] == "bad_sdp"
            await venue.wait_for(lambda m: "candidate" in m, 20)
            refused = await gst_client.request("candidate", candidate=venue.candidates()[0])
            assert refused["type"] == "error" and refused["code"] == "conflict", refused
            assert "the answer was refused" in refused["message"]

        assert await gst_client.ok("answer", sdp=answer) == {}

        relayed: list[dict[str, Any]] = []  # the server's reply to each candidate

        async def relay_candidates() -> None:
            while True:
                for candidate in venue.candidates()[len(relayed) :]:
                    relayed.append(await gst_client.request("candidate", candidate=candidate))
                await asyncio.sleep(0.05)

        relay = asyncio.create_task(relay_candidates())
        await venue.wait_for(lambda m: m.get("state") == "connected", 30)
        await chair.ok("set_program", layout="side-by-side", slots=["hall-a", "gst-venue"])

        # aiortc sees and hears the GStreamer venue.
        await until(lambda: hall.video(1).colour == gst_index, 30, "hall-a sees the GStreamer venue's colour")
        await until(lambda: gst_index in hall.heard(), 20, "hall-a hears the GStreamer venue's tone")
        # The GStreamer venue sees and hears the aiortc venue.
        video_mid = offer["slots"]["video"][0]
        await until(lambda: venue.colour(video_mid) == 0, 30, "the GStreamer venue shows hall-a's colour")
        await until(lambda: 0 in venue.heard(offer["slots"]["audio"]), 20, "the GStreamer venue hears hall-a")
        first = venue.frame(video_mid)
        await asyncio.sleep(1.0)
        later = venue.frame(video_mid)
        assert first is not None and later is not None and later[1] > first[1] + 5, "video keeps flowing"
        assert venue.state == "connected"
        assert relayed and all(r["type"] == "reply" and r["result"] == {} for r in relayed), relayed

        room = backend.rooms[ROOM]
        assert "gst-venue" in room.speakers
        producer = room.transports["gst-venue"].producers["audio"]
        stats = backend.stats()
        if level_extension:
            # Chosen from the levels it sends: nothing decoded on the server.
            assert producer.level_ext and producer.meter is None and stats["levels_decoded"] == 0
        else:
            assert producer.level_ext == 0 and producer.meter is not None
            assert stats["levels_decoded"] > 0
            # The tone is at volume 0.25: an RMS of -15 dBov.
            assert 12 <= producer.meter.level <= 18, producer.meter.level
        assert stats["decoded_frames"] == 0  # the forwarder itself decodes no video
    finally:
        if relay is not None:
            relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay
        await venue.close()
        await hall.close()
