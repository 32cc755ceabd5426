"""Benchmark of a prepared clip playing into a meeting (not collected by pytest).

    python tests/bench_clip.py [--seconds 20] [--viewers 4] [--size 1280x720]

A real server process (``conference serve`` with the SFU); a film made here (a colour changing every
second over a band of moving noise, and a tone; H.264/AAC in MP4) is uploaded through the API and
transcoded (the transcode's time is printed too). ``--viewers`` venue screens (the load generator's
aiortc endpoints, receiving one video and one audio slot, not decoding) stay connected while the
server's own CPU time (/proc/<pid>/stat) is measured over ``--seconds`` in three phases: nothing
on the program; the clip in slot 0; a venue camera (the load generator's 640x360 VP8, sent as raw
RTP) in slot 0 instead, for comparison. Figures in docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp
from browser_util import ADMIN_KEY, server_process
from clip_util import make_film

from conference.loadtest.endpoint import Endpoint, EndpointConfig

HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


async def api(http: aiohttp.ClientSession, url: str, method: str = "GET", **kw: Any) -> Any:
    async with http.request(method, url, headers=HEADERS, **kw) as r:
        assert r.status < 300, f"{method} {url}: {r.status} {await r.text()}"
        return await r.json()


async def phase(http: aiohttp.ClientSession, base: str, pid: int, seconds: float) -> dict[str, float]:
    before_stats = (await api(http, f"{base}/api/stats"))["media"]
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    cpu1, t1 = cpu_seconds(pid), time.monotonic()
    after_stats = (await api(http, f"{base}/api/stats"))["media"]
    wall = t1 - t0
    return {
        "cpu_pct": 100 * (cpu1 - cpu0) / wall,
        "packets_in_per_s": (after_stats["packets_in"] - before_stats["packets_in"]) / wall,
        "packets_out_per_s": (after_stats["packets_out"] - before_stats["packets_out"]) / wall,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--viewers", type=int, default=4)
    parser.add_argument("--size", default="1280x720")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        film = tmp / "film.mp4"
        film_s = int(args.seconds * 2 + 15)  # long enough for the clip phase and its warm-up
        make_film(film, seconds=film_s, width=width, height=height, noise=True)
        async with server_process(tmp / "data", media=True) as server, aiohttp.ClientSession() as http:
            pid = server.process.pid
            base = server.url
            form = aiohttp.FormData()
            form.add_field("file", film.read_bytes(), filename="film.mp4")
            started = time.monotonic()
            clip = await api(http, f"{base}/api/rooms/council/clips", "POST", data=form)
            while clip["state"] == "processing":
                await asyncio.sleep(0.5)
                clip = await api(http, f"{base}/api/rooms/council/clips/{clip['id']}")
            transcode_s = time.monotonic() - started
            assert clip["state"] == "ready", clip
            print(
                f"transcode: {film_s} s of {width}x{height} H.264 -> VP8 {clip['width']}x{clip['height']}"
                f" in {transcode_s:.1f} s ({film_s / transcode_s:.2f}x real time, niced worker process)"
            )
            viewers = []
            for i in range(args.viewers):
                token = server.token("council", f"screen-{i}", "venue")
                config = EndpointConfig(
                    url=base,
                    token=token,
                    identity=f"screen-{i}",
                    index=i + 1,
                    publish_audio=False,
                    publish_video=False,
                    video_slots=1,
                    audio_slots=1,
                    decode="none",
                )
                viewers.append(Endpoint(config))
                await viewers[-1].join()
            venue = Endpoint(
                EndpointConfig(
                    url=base,
                    token=server.token("council", "hall-a", "venue"),
                    identity="hall-a",
                    index=9,
                    speaking=True,
                    video_slots=1,
                    audio_slots=1,
                    decode="none",
                    raw_media=True,
                )
            )
            await venue.join()
            command = f"{base}/api/rooms/council/commands"
            try:
                await asyncio.sleep(3)
                idle = await phase(http, base, pid, args.seconds)
                await api(http, command, "POST", json={"type": "play_clip", "clip": clip["id"], "slot": 0})
                await asyncio.sleep(3)
                playing = await phase(http, base, pid, args.seconds)
                await api(http, command, "POST", json={"type": "stop_clip"})
                await api(
                    http,
                    command,
                    "POST",
                    json={"type": "set_program", "layout": "single", "slots": ["hall-a"]},
                )
                await asyncio.sleep(3)
                camera = await phase(http, base, pid, args.seconds)
            finally:
                for endpoint in [*viewers, venue]:
                    await endpoint.close()
    print(f"{args.viewers} screens, one video and one audio slot each; server CPU over {args.seconds:.0f} s:")
    for name, figures in (
        ("nothing on the program (a venue publishing)", idle),
        ("the clip in slot 0", playing),
        ("the venue camera in slot 0", camera),
    ):
        print(
            f"  {name:44s} {figures['cpu_pct']:5.1f} % of a core,"
            f" {figures['packets_in_per_s']:6.0f} packets/s in, {figures['packets_out_per_s']:6.0f} out"
        )


if __name__ == "__main__":
    asyncio.run(main())
