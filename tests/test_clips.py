"""Prepared clips ("VCR"): a film made here (a colour bar changing colour every second over a tone)
is uploaded through the API, transcoded once, and played into program slot 0 through the in-process
transport; a real aiortc viewer decodes the colours in order and hears the tone. Pause holds the
picture, seek jumps, stop empties the slot. Bad uploads are refused and change nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import pytest
from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from clip_util import CLIP_COLOURS, TONE_HZ, make_film
from conftest import TEST_ADMIN_KEY

from conference.clip_file import AUDIO, PreparedClip
from conference.sfu import aiortc_glue as glue
from signaling.app import STORE_KEY, build_media

ADMIN = {"Authorization": f"Bearer {TEST_ADMIN_KEY}"}


def nearest(rgb: np.ndarray) -> int:
    return int(np.argmin([float(((rgb - np.array(c)) ** 2).sum()) for c in CLIP_COLOURS]))


async def upload(server: Any, room: str, data: bytes, filename: str, headers: dict[str, str] = ADMIN) -> Any:
    form = aiohttp.FormData()
    form.add_field("file", data, filename=filename, content_type="application/octet-stream")
    url = server.make_url(f"/api/rooms/{room}/clips")
    async with aiohttp.ClientSession() as http, http.post(url, data=form, headers=headers) as r:
        return r.status, await r.json()


async def get(server: Any, path: str, headers: dict[str, str] = ADMIN) -> tuple[int, Any, bytes]:
    async with aiohttp.ClientSession() as http, http.get(server.make_url(path), headers=headers) as r:
        body = await r.read()
        return r.status, r.headers.get("Content-Type", ""), body


async def command(server: Any, room: str, body: dict[str, Any]) -> tuple[int, Any]:
    url = server.make_url(f"/api/rooms/{room}/commands")
    async with aiohttp.ClientSession() as http, http.post(url, json=body, headers=ADMIN) as r:
        return r.status, await r.json()


async def until_ready(server: Any, room: str, clip_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    progress: list[float] = []
    while time.monotonic() < deadline:
        status, _, body = await get(server, f"/api/rooms/{room}/clips/{clip_id}")
        assert status == 200
        import json

        clip = json.loads(body)
        progress.append(clip["progress"])
        if clip["state"] != "processing":
            clip["seen_progress"] = progress
            return clip
        await asyncio.sleep(0.1)
    raise AssertionError("the clip was not transcoded in time")


@pytest.fixture
def film(tmp_path: Path) -> tuple[Path, list[tuple[int, int, int]]]:
    path = tmp_path / "myopia pilot.mp4"
    return path, make_film(path, seconds=6)


async def test_bad_uploads_are_refused_and_change_nothing(signaling_server, settings, film, tmp_path) -> None:
    path, _ = film
    data = path.read_bytes()
    server = await signaling_server(replace(settings, clip_max_bytes=len(data) - 1))
    sound = tmp_path / "speech.m4a"  # sound without a picture is not a film
    with av.open(str(sound), "w") as out:
        stream = out.add_stream("aac", rate=48_000)
        pcm = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        pcm.sample_rate, pcm.pts = 48_000, 0
        out.mux(stream.encode(pcm))
        out.mux(stream.encode(None))
    refused = [
        (b"Minutes of the 3rd session\n" * 100, "minutes.mp4", 400, "bad_clip"),
        (sound.read_bytes(), "speech.m4a", 400, "bad_clip"),
        (data[: len(data) // 2], "truncated.mp4", 400, "bad_clip"),
        (b"", "empty.mov", 400, "bad_clip"),
        (data, "too big.mp4", 413, "too_large"),
    ]
    for body, name, status, code in refused:
        got, answer = await upload(server, "council", body, name)
        assert (got, answer["error"]) == (status, code), (name, answer)
        assert answer["message"]
    status, _, listing = await get(server, "/api/rooms/council/clips")
    assert status == 200 and b'"clips": []' in listing
    clips_dir = settings.data_dir / "clips"
    assert not clips_dir.exists() or not any(p.is_file() for p in clips_dir.rglob("*"))
    # The same film within the limit is accepted: the refusals were about the files.
    ok = await signaling_server(replace(settings, clip_max_bytes=len(data), data_dir=tmp_path / "other"))
    got, answer = await upload(ok, "council", data, "fine.mp4")
    assert got == 202 and answer["state"] == "processing"


async def test_an_upload_is_transcoded_once_and_listed_with_duration_and_thumbnail(
    signaling_server, settings, film, mint
) -> None:
    path, _ = film
    server = await signaling_server()
    status, answer = await upload(server, "council", path.read_bytes(), path.name)
    assert status == 202 and answer["id"] and answer["name"] == "myopia pilot.mp4"
    clip = await until_ready(server, "council", answer["id"])
    assert clip["state"] == "ready", clip
    assert clip["duration_s"] == pytest.approx(6.0, abs=0.1)
    assert (clip["width"], clip["height"], clip["has_audio"]) == (320, 180, True)
    assert clip["seen_progress"][-1] == 1.0
    status, kind, jpeg = await get(server, clip["thumbnail_url"], headers={})
    assert status == 200 and kind == "image/jpeg" and jpeg[:2] == b"\xff\xd8"
    status, kind, webm = await get(server, clip["preview_url"], headers={})
    assert status == 200 and kind == "video/webm" and webm[:4] == b"\x1a\x45\xdf\xa3"
    forged = clip["thumbnail_url"].replace("sig=", "sig=A")
    assert (await get(server, forged, headers={}))[0] == 403
    status, _, listing = await get(server, "/api/rooms/council/clips")
    assert status == 200 and answer["id"].encode() in listing
    venue = {"Authorization": f"Bearer {mint('council', 'hall-a', 'venue')}"}
    assert (await get(server, "/api/rooms/council/clips", headers=venue))[0] == 403
    assert (await upload(server, "council", path.read_bytes(), "x.mp4", headers=venue))[0] == 403
    # The source is gone once transcoded; the prepared packets stay.
    directory = settings.data_dir / "clips" / "council" / answer["id"]
    assert not (directory / "source").exists() and (directory / "packets.bin").stat().st_size > 10_000
    # Every second starts with a keyframe; the audio frames carry the tone's level (0.3 of full
    # scale: -13.5 dBov, -16.5 once the mono film is spread over two channels), measured before
    # encoding, for the media core's speaker detection.
    prepared = PreparedClip.load(directory / "packets.bin")
    try:
        assert prepared.keyframe_times == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
        audio = [prepared.levels[i] for i in range(len(prepared.kinds)) if prepared.kinds[i] == AUDIO]
        assert len(audio) == pytest.approx(6.0 / 0.02, abs=5)
        assert 14 <= float(np.median(audio)) <= 18, sorted(set(audio))
    finally:
        prepared.close()


class Viewer:
    """A venue screen stand-in: an aiortc peer that decodes its first program slot and its audio."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
        self.colours: list[tuple[float, int]] = []  # (arrival, colour index)
        self.samples: list[np.ndarray] = []
        self.audio_frames = 0
        self.tasks: list[asyncio.Task[None]] = []

    async def connect(self, client: Any) -> None:
        offer = await client.wait_for(lambda m: m["type"] == "offer", timeout=20)
        first_video, audio_mids = offer["slots"]["video"][0], set(offer["slots"]["audio"])
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
        for transceiver in self.pc.getTransceivers():
            track = transceiver.receiver.track
            if track is None:
                continue
            if transceiver.mid == first_video:
                self.tasks.append(asyncio.create_task(self._video(track)))
            elif transceiver.mid in audio_mids:
                self.tasks.append(asyncio.create_task(self._audio(track)))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        glue.drain_udp_reads(self.pc)
        await client.ok("answer", sdp=self.pc.localDescription.sdp)

    async def _video(self, track: Any) -> None:
        try:
            while True:
                frame = await track.recv()
                rgb = frame.to_ndarray(format="rgb24")
                h, w = rgb.shape[:2]
                centre = rgb[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].reshape(-1, 3).mean(axis=0)
                self.colours.append((time.monotonic(), nearest(centre)))
        except (MediaStreamError, asyncio.CancelledError):
            pass

    async def _audio(self, track: Any) -> None:
        try:
            while True:
                frame = await track.recv()
                channels = len(frame.layout.channels)
                samples = frame.to_ndarray().reshape(-1)[::channels]
                if np.abs(samples).max() > 500:
                    self.samples.append(samples)
                    self.samples = self.samples[-25:]
                    self.audio_frames += 1
        except (MediaStreamError, asyncio.CancelledError):
            pass

    def pitch(self) -> float | None:
        if len(self.samples) < 10:
            return None
        signal = np.concatenate(self.samples[-15:]).astype(np.float64)
        spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal))))
        return float(np.argmax(spectrum) * 48_000 / len(signal))

    def sequence(self, since: float = 0.0) -> list[int]:
        """The colours shown since ``since``, each run of one colour once."""
        runs: list[int] = []
        for at, colour in self.colours:
            if at >= since and (not runs or runs[-1] != colour):
                runs.append(colour)
        return runs

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.pc.close()


async def eventually_async(
    probe: Callable[[], Any], accept: Callable[[Any], bool], timeout: float, what: str
) -> None:
    deadline = time.monotonic() + timeout
    while not accept(await probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {what}")
        await asyncio.sleep(0.05)


async def eventually(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {what}")
        await asyncio.sleep(0.05)


@pytest.mark.media
async def test_a_clip_plays_into_program_slot_0_and_pauses_seeks_and_stops(
    signaling_server, settings, connect, mint, tmp_path
) -> None:
    path = tmp_path / "film.mp4"
    colours = make_film(path, seconds=8)
    expected = [CLIP_COLOURS.index(c) for c in colours]
    media_settings = replace(settings, media=True)
    server = await signaling_server(media_settings, media=build_media(media_settings))
    status, answer = await upload(server, "council", path.read_bytes(), "film.mp4")
    assert status == 202
    clip = await until_ready(server, "council", answer["id"])
    assert clip["state"] == "ready"

    chair = await connect(server, mint("council", "chair", "chair"))
    await chair.ok("join", publish={"audio": False, "video": False})
    screen = await connect(server, mint("council", "hall-a", "venue"))
    await screen.ok("join", publish={"audio": False, "video": False}, video_slots=1, audio_slots=2)
    viewer = Viewer()
    try:
        await viewer.connect(screen)
        await eventually(lambda: viewer.pc.connectionState == "connected", 20, "the screen connects")
        started = time.monotonic()
        status, result = await command(
            server, "council", {"type": "play_clip", "clip": clip["id"], "slot": 0}
        )
        assert status == 200, result
        assert result["clip"]["playing"] and result["clip"]["slot"] == 0
        program = await screen.wait_for(
            lambda m: (
                m["type"] == "event"
                and m["event"]["kind"] == "program"
                and "clip" in m["event"]["program"]["slots"]
            )
        )
        assert program["event"]["program"]["slots"][0] == "clip"

        # The colours in the film's order, one a second, and the tone.
        await eventually(lambda: len(viewer.sequence(started)) >= 4, 15, "four colours of the clip")
        seen = viewer.sequence(started)
        assert seen[:4] == expected[:4], (seen, expected)
        await eventually(lambda: viewer.pitch() is not None, 10, "the clip's sound")
        assert abs(viewer.pitch() - TONE_HZ) < 25, viewer.pitch()

        # Pause: no new pictures; the screen holds the last one.
        status, result = await command(server, "council", {"type": "pause_clip"})
        assert status == 200 and result["clip"]["playing"] is False
        held_at = result["clip"]["position_s"]
        await asyncio.sleep(0.5)  # what was in flight arrives
        frames = len(viewer.colours)
        last = viewer.colours[-1][1]
        await asyncio.sleep(1.5)
        assert len(viewer.colours) - frames <= 2, "the picture holds while paused"
        assert viewer.colours[-1][1] == last == expected[int(held_at)]

        # Seek while paused, then play on: it goes on from second 6.
        status, result = await command(server, "council", {"type": "seek_clip", "at_s": 6.2})
        assert status == 200 and result["clip"]["position_s"] == pytest.approx(6.2)
        resumed = time.monotonic()
        status, result = await command(
            server, "council", {"type": "play_clip", "clip": clip["id"], "slot": 0}
        )
        assert status == 200 and result["clip"]["playing"]
        await eventually(lambda: expected[6] in viewer.sequence(resumed), 8, "the picture of second 6")
        # (aiortc's receiver hands out a frame when the next one starts: the held picture comes first.)
        after = [c for c in viewer.sequence(resumed) if c != last]
        assert after[0] == expected[6], viewer.sequence(resumed)

        # Seek while playing jumps back.
        jumped = time.monotonic()
        status, result = await command(server, "council", {"type": "seek_clip", "at_s": 1.0})
        assert status == 200
        await eventually(lambda: expected[1] in viewer.sequence(jumped), 8, "the picture of second 1")

        status, result = await command(server, "council", {"type": "stop_clip"})
        assert status == 200 and result["clip"] is None
        state = await chair.ok("sync", since=0)
        room = state.get("room")
        if room is not None:
            assert "clip" not in [p["identity"] for p in room["participants"]]
            assert room["program"]["slots"][0] is None
        left = await screen.wait_for(
            lambda m: (
                m["type"] == "event"
                and m["event"]["kind"] == "participant_left"
                and m["event"]["identity"] == "clip"
            )
        )
        assert left["event"]["reason"] == "clip_stopped"
    finally:
        await viewer.close()


async def test_clip_commands_are_refused_clearly(signaling_server, settings, connect, mint) -> None:
    server = await signaling_server()
    chair = await connect(server, mint("council", "chair", "chair"))
    await chair.ok("join", publish={"audio": False, "video": False})
    missing = await chair.request("play_clip", clip="0123456789abcdef", slot=0)
    assert (missing["type"], missing["code"]) == ("error", "not_found")
    assert (await chair.request("play_clip", clip="../../etc", slot=0))["code"] == "bad_request"
    assert (await chair.request("pause_clip"))["code"] == "conflict"
    # A clip removed by the chair takes the player's state with it (no player runs here: media off).
    from conference import clip_cue

    film = {"id": "0123456789abcdef", "name": "film.mp4", "duration_s": 8.0, "has_audio": True}
    store = server.app[STORE_KEY]
    await store.update("council", lambda s: clip_cue.play_clip(s, film, 0))
    await chair.ok("remove", identity="clip")
    await eventually_async(lambda: store.get("council"), lambda s: s.clip is None, 5, "the clip state goes")
    venue = await connect(server, mint("council", "hall-a", "venue"))
    await venue.ok("join")
    assert (await venue.request("stop_clip"))["code"] == "forbidden"
