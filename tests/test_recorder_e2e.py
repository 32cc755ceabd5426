"""The recorder end to end: a real server process with the SFU, real aiortc endpoints each sending
its own colour and tone, the chair changing the program while the room records; the program render
that starts by itself is checked tile by tile and tone by tone. Then the same with the server
killed (SIGKILL) mid-recording."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import pytest

from conference.loadtest.endpoint import Endpoint, EndpointConfig
from conference.loadtest.testmedia import colour_for
from recorder.archive import Recording
from recorder.render import RenderOptions, render
from signaling.tokens import mint_token

pytestmark = pytest.mark.media

ROOT = Path(__file__).resolve().parent.parent
SECRET = "e2e-secret-0123456789-0123456789"
ADMIN = "e2e-admin-key-0123456789-0123456789abcdef"
ROOM = "assembly"
# Endpoint index -> identity; the test media's colour and tone (250 + 50 * index Hz) follow the index.
PEOPLE = {1: "hall-a", 2: "expert-b"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    data_dir: Path
    proc: subprocess.Popen[bytes]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    port = free_port()
    data_dir = tmp_path / "data"
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - the child writes it
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "signaling",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--secret",
            SECRET,
            "--admin-key",
            ADMIN,
            "--log-level",
            "WARNING",
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as session:
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(url + "/healthz") as resp:
                        if resp.status == 200:
                            break
                assert proc.poll() is None, (tmp_path / "server.log").read_text()
                assert time.monotonic() < deadline, "server did not start"
                await asyncio.sleep(0.2)
        yield Server(url, data_dir, proc)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        log.close()


async def join(server: Server, identity: str, index: int, role: str, **kw: Any) -> Endpoint:
    token = mint_token(SECRET, ROOM, identity, identity.replace("-", " ").title(), role, 600)
    endpoint = Endpoint(
        EndpointConfig(url=server.url, token=token, identity=identity, index=index, decode="none", **kw)
    )
    await endpoint.join()
    return endpoint


async def meeting(server: Server) -> tuple[Endpoint, list[Endpoint]]:
    chair = await join(server, "chair", 0, "chair", publish_audio=False, publish_video=False, video_slots=1)
    venues = [await join(server, n, i, "venue", speaking=True, video_slots=1) for i, n in PEOPLE.items()]
    return chair, venues


async def api(server: Server, path: str) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.get(server.url + path, headers={"Authorization": f"Bearer {ADMIN}"}) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return await resp.json() if resp.content_type == "application/json" else await resp.read()


def who_is_in(frame: av.VideoFrame, rect: tuple[float, float, float, float]) -> int | None:
    """The endpoint index whose test colour fills the upper part of a tile, or None."""
    codes = []
    x, y, tw, th = rect
    for plane in frame.planes:
        arr = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width]
        h, w = arr.shape
        rows = slice(int((y + th * 0.12) * h), int((y + th * 0.45) * h))
        cols = slice(int((x + tw * 0.2) * w), int((x + tw * 0.8) * w))
        codes.append(float(np.median(arr[rows, cols])))
    for index in range(8):
        if np.abs(np.array(codes) - np.array(colour_for(index))).max() < 10:
            return index
    return None


SIDE = [(0.0, 0.25, 0.5, 0.5), (0.5, 0.25, 0.5, 0.5)]
FULL = (0.0, 0.0, 1.0, 1.0)


def tones(samples: np.ndarray) -> dict[int, float]:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.shape[0])))
    freqs = np.fft.rfftfreq(samples.shape[0], 1 / 48000)
    peaks = {i: float(spectrum[np.abs(freqs - (250 + 50 * i)) < 6].max()) for i in PEOPLE}
    loudest = max(peaks.values()) or 1.0
    return {i: v / loudest for i, v in peaks.items()}


async def test_recorded_meeting_renders_as_the_chair_showed_it(server: Server) -> None:
    chair, venues = await meeting(server)
    try:
        started = await chair.request("start_recording")
        recording_id = started["recording_id"]
        await chair.set_program("side-by-side", ["hall-a", "expert-b"])
        await asyncio.sleep(5.0)
        await chair.set_program("single", ["expert-b"])
        await asyncio.sleep(4.0)
        await chair.request("mute", identity="expert-b", muted=True)
        await asyncio.sleep(3.0)
        await chair.request("stop_recording")
    finally:
        for e in (chair, *venues):
            await e.close()

    # The program render starts by itself when the recording stops.
    deadline = time.monotonic() + 180
    while True:
        detail = await api(server, f"/api/recordings/{recording_id}")
        job = next((r for r in detail["renders"] if r["id"] == "program-1280x720"), None)
        if job is not None and job["state"] in ("done", "failed"):
            break
        assert time.monotonic() < deadline, f"program render not done: {job}"
        await asyncio.sleep(1.0)
    assert job["state"] == "done", job
    assert detail["state"] == "finished"
    assert {p["identity"] for p in detail["participants"]} == {"chair", "hall-a", "expert-b"}
    assert {(t["identity"], t["kind"]) for t in detail["tracks"]} >= {
        ("hall-a", "video"),
        ("hall-a", "audio"),
        ("expert-b", "video"),
        ("expert-b", "audio"),
    }
    chapters = detail["timeline"]
    program_changes = [c for c in chapters if c["title"].startswith("画面：左右并列")]  # noqa: RUF001
    single = [c for c in chapters if c["title"].startswith("画面：单画面（Expert B）")]  # noqa: RUF001
    assert program_changes and single, chapters
    t_side, t_single = program_changes[-1]["t"], single[-1]["t"]
    assert 4.0 < t_single - t_side < 6.5

    mp4 = await api(server, f"/api/recordings/{recording_id}/download")
    with av.open(io.BytesIO(mp4)) as c:
        duration = c.duration / 1e6
        mp4_chapters = [ch["metadata"]["title"] for ch in c.chapters()]
        # Within one keyframe interval of the test media (2.4 s) after each change, and before the next.
        checks = {
            t_side + 2.5: "side",
            t_single - 0.3: "side",
            t_single + 2.5: "single",
            duration - 0.3: "single",
        }
        seen: dict[float, list[int | None]] = {}
        pending = sorted(checks)
        for frame in c.decode(video=0):
            while pending and frame.time >= pending[0]:
                t = pending.pop(0)
                rects = SIDE if checks[t] == "side" else [FULL]
                seen[t] = [who_is_in(frame, r) for r in rects]
            if not pending:
                break
    with av.open(io.BytesIO(mp4)) as c:
        audio = np.concatenate([f.to_ndarray().mean(axis=0) for f in c.decode(audio=0)])
    stopped_at = detail["stopped_at"] - detail["started_at"]
    assert abs(duration - stopped_at) < 0.3, (duration, stopped_at)
    assert mp4_chapters == [c["title"] for c in chapters]
    for t, kind in checks.items():
        expected = [1, 2] if kind == "side" else [2]
        assert seen[t] == expected, f"at {t:.1f}s: {seen[t]} (expected {expected})"

    # Both tones while nobody is muted; only hall-a's after expert-b was muted (3 s before the end).
    before = tones(audio[int((t_side + 1) * 48000) : int((t_single - 0.5) * 48000)])
    after = tones(audio[int((duration - 2.3) * 48000) : int((duration - 0.3) * 48000)])
    assert before[1] > 0.2 and before[2] > 0.2, before
    assert after[1] == 1.0 and after[2] < 0.01, after


async def test_server_killed_mid_recording_renders_up_to_the_kill(server: Server) -> None:
    chair, venues = await meeting(server)
    try:
        started = await chair.request("start_recording")
        recording_id = started["recording_id"]
        await chair.set_program("side-by-side", ["hall-a", "expert-b"])
        await asyncio.sleep(5.0)
        server.proc.send_signal(signal.SIGKILL)
        killed_at = time.time()
        server.proc.wait(10)
    finally:
        for e in (chair, *venues):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(e.close(leave=False), 10)
    rec = Recording.open(server.data_dir, recording_id)
    assert not rec.complete
    assert killed_at - 1.0 < rec.stopped_at <= killed_at + 0.1, (killed_at, rec.stopped_at)
    out = server.data_dir / "killed.mp4"
    result = render(rec, out, RenderOptions(width=640, height=360))
    assert abs(result.duration - rec.duration) < 0.1
    with av.open(str(out)) as c:
        frames = list(c.decode(video=0))
    # The last picture before the kill shows both venues where the chair put them.
    assert [who_is_in(frames[-3], r) for r in SIDE] == [1, 2]
