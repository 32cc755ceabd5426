"""Benchmark of the live-stream compositor (not collected by pytest).

    python tests/bench_live.py [--slots 4 9] [--seconds 30] [--size 1280x720] [--fps 25]

A room in the SFU with N venues publishing pre-encoded 640x360 25 fps VP8 clips (the load
generator's test media: a solid colour with a band of moving noise) and Opus, fed in-process
(direct transports, so the venues cost this process almost nothing); the program is a grid of N
slots, the broadcast runs, and the compositor process (``conference live``) is measured by its own
CPU time over ``--seconds`` after a warm-up: decoding the N feeds, composing, one H.264 + AAC
encode, HLS writing. Prints one line per program size; docs/performance.md has the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_sfu_support import Meeting, wait_for

from conference.config import Settings
from conference.loadtest.endpoint import RawPublisher, RawStream
from conference.loadtest.testmedia import MediaParams, load_clip
from conference.roles import Role
from conference.room import Participant, join, set_program, start_broadcast
from conference.sfu.packet import CodecInfo
from signaling.broadcast import Broadcasts

VP8 = CodecInfo("vp8", 96, 90_000)
OPUS = CodecInfo("opus", 111, 48_000)
LAYOUT_FOR = {4: "grid-2x2", 9: "grid-3x3", 6: "speaker-1+5", 2: "side-by-side", 1: "single"}


async def publish(meeting: Meeting, count: int) -> list[RawPublisher]:
    """``count`` venues publishing the load generator's 640x360 25 fps clips, fed in-process."""
    publishers: list[RawPublisher] = []
    for i, identity in enumerate(f"hall-{n}" for n in range(count)):
        participant = Participant(identity, identity, Role.VENUE, publish_audio=True, publish_video=True)
        state, _ = await meeting.store.update(meeting.room, lambda s, p=participant: join(s, p))
        clip = load_clip(i + 1, MediaParams(width=640, height=360, fps=25))
        publisher: list[RawPublisher] = []
        transport = await meeting.backend.open_direct(
            meeting.room,
            identity,
            state,
            publish={"video": [VP8], "audio": [OPUS]},
            on_keyframe_request=lambda kind, pub=publisher: pub and pub[0].request_keyframe(),
        )
        video = RawStream(ssrc=random.getrandbits(32), payload_type=96, mid_ext=0, mid=b"")
        audio = RawStream(ssrc=random.getrandbits(32), payload_type=111, mid_ext=0, mid=b"")
        publisher.append(RawPublisher(clip, transport, video, audio, speaking=i == 0))
        transport.start()
        publisher[0].start()
        publishers.append(publisher[0])
    return publishers


async def measure(slots: int, seconds: float, size: str, fps: int, data_dir: Path) -> dict[str, float]:
    meeting = Meeting(max_endpoints=slots + 2)
    await meeting.start()
    settings = Settings(data_dir=data_dir, room_store="memory", live_size=size, live_fps=fps)
    broadcasts = Broadcasts(settings, meeting.store, meeting.backend)
    publishers = await publish(meeting, slots)
    try:
        identities = [f"hall-{i}" for i in range(slots)]
        await meeting.command(set_program, LAYOUT_FOR[slots], identities)
        await meeting.command(start_broadcast)
        stream = broadcasts.streams[meeting.room]
        await wait_for(lambda: stream.stats.get("wall_s", 0) > 8, 40, "the compositor warms up")
        first = dict(stream.stats)
        await asyncio.sleep(seconds)
        last = dict(stream.stats)
        wall = last["wall_s"] - first["wall_s"]
        cpu = last["cpu_s"] - first["cpu_s"]
        frames = last["frames"] - first["frames"]
        decoded = sum(last["decoded"]) - sum(first["decoded"])
        return {
            "slots": slots,
            "cores": cpu / wall,
            "ms_per_frame": 1000 * cpu / frames if frames else 0.0,
            "fps_out": frames / wall,
            "decoded_fps": decoded / wall,
            "late_frames": last["late_frames"] - first["late_frames"],
            "wall_s": wall,
        }
    finally:
        for publisher in publishers:
            publisher.pause()
        await broadcasts.close()
        await meeting.close()


# --- viewers: a bounded crowd against the server while the meeting and the compositor run ---------


async def viewer_crowd(base: str, room: str, count: int, seconds: float) -> dict[str, float]:
    """``count`` hls.js-like players (playlist every ~2 s, each new segment once) for ``seconds``;
    runs in a process of its own (``--crowd``), so the clients do not share the server's loop."""
    import aiohttp

    stats = {"requests": 0, "errors": 0, "bytes": 0, "slowest_s": 0.0}
    until = time.monotonic() + seconds

    async def one(http: aiohttp.ClientSession) -> None:
        had: set[str] = set()
        await asyncio.sleep(random.uniform(0, 2))
        while time.monotonic() < until:
            started = time.monotonic()
            try:
                async with http.get(f"{base}/live/{room}/index.m3u8") as resp:
                    text = await resp.text()
                    stats["errors"] += resp.status != 200
                names = [line for line in text.splitlines() if line.endswith(".ts")]
                for name in [n for n in names[-2:] if n not in had]:
                    async with http.get(f"{base}/live/{room}/{name}") as resp:
                        stats["bytes"] += len(await resp.read())
                        stats["errors"] += resp.status != 200
                        stats["requests"] += 1
                    had.add(name)
            except aiohttp.ClientError:
                stats["errors"] += 1
            stats["requests"] += 1
            stats["slowest_s"] = max(stats["slowest_s"], time.monotonic() - started)
            await asyncio.sleep(random.uniform(1.8, 2.2))

    connector = aiohttp.TCPConnector(limit=count)
    async with aiohttp.ClientSession(connector=connector) as http:
        await asyncio.gather(*(one(http) for _ in range(count)))
    return stats


async def loop_lag(samples: list[float], stop: asyncio.Event) -> None:
    """How late the server's loop runs a 5 ms timer: what a packet waiting in a socket waits too."""
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(0.005)
        samples.append(time.perf_counter() - started - 0.005)


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[int(0.99 * (len(ordered) - 1))] if ordered else 0.0


async def measure_viewers(viewers: int, seconds: float, size: str, fps: int, data_dir: Path) -> None:
    import json
    import subprocess

    from aiohttp import web
    from browser_util import free_port

    from signaling.app import BROADCASTS_KEY, create_app

    meeting = Meeting(max_endpoints=8)
    await meeting.start()
    settings = Settings(
        data_dir=data_dir,
        room_store="memory",
        live_size=size,
        live_fps=fps,
        secret="b" * 40,
        admin_key="a" * 40,
    )
    app = create_app(settings, media=meeting.backend, store=meeting.store)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    publishers = await publish(meeting, 4)
    try:
        await meeting.command(set_program, "grid-2x2", [f"hall-{i}" for i in range(4)])
        await meeting.command(start_broadcast)
        stream = app[BROADCASTS_KEY].streams[meeting.room]
        await wait_for(lambda: stream.stats.get("wall_s", 0) > 8, 40, "the compositor warms up")
        for phase, crowd in (("no viewers", 0), (f"{viewers} viewers", viewers)):
            samples: list[float] = []
            stop = asyncio.Event()
            sampler = asyncio.create_task(loop_lag(samples, stop))
            delay0 = meeting.backend.counters.delay.total
            first = dict(stream.stats)
            result: dict[str, float] = {}
            if crowd:
                child = await asyncio.create_subprocess_exec(
                    sys.executable,
                    __file__,
                    "--crowd",
                    f"http://127.0.0.1:{port}",
                    meeting.room,
                    str(crowd),
                    str(seconds),
                    stdout=subprocess.PIPE,
                )
                out, _ = await child.communicate()
                result = json.loads(out.decode().strip().splitlines()[-1])
            else:
                await asyncio.sleep(seconds)
            stop.set()
            await sampler
            last = dict(stream.stats)
            stats = meeting.backend.stats()
            line = (
                f"{phase}: loop lag p99 {p99(samples) * 1000:.1f} ms, forwarding p99 "
                f"{stats['forward_delay_us']['p99']} us "
                f"({stats['forward_delay_us']['count'] - delay0} packets), "
                f"compositor late frames {last['late_frames'] - first['late_frames']}"
            )
            if crowd:
                line += (
                    f"; viewers made {result['requests'] / seconds:.0f} requests/s "
                    f"({result['bytes'] * 8 / seconds / 1e6:.0f} Mbit/s), {result['errors']:.0f} errors, "
                    f"slowest playlist+segments {result['slowest_s']:.2f} s"
                )
            print(line, flush=True)
    finally:
        for publisher in publishers:
            publisher.pause()
        await runner.cleanup()
        await meeting.close()


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slots", type=int, nargs="+", default=[4, 9])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--viewers", type=int, default=0, help="instead: N simulated viewers, 4 slots")
    parser.add_argument("--crowd", nargs=4, metavar=("URL", "ROOM", "N", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.crowd:
        import json

        url, room, count, seconds = args.crowd
        print(json.dumps(await viewer_crowd(url, room, int(count), float(seconds))))
        return 0
    if args.viewers:
        with tempfile.TemporaryDirectory() as tmp:
            load = os.getloadavg()[0]
            print(f"live stream {args.size} {args.fps} fps, 4 slots, load average {load:.1f}")
            await measure_viewers(args.viewers, args.seconds, args.size, args.fps, Path(tmp))
        return 0
    load = os.getloadavg()[0]
    print(f"live compositor {args.size} {args.fps} fps, load average {load:.1f}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        for slots in args.slots:
            started = time.monotonic()
            r = await measure(slots, args.seconds, args.size, args.fps, Path(tmp) / str(slots))
            print(
                f"{slots} slots ({LAYOUT_FOR[slots]}): {r['cores']:.2f} core, {r['fps_out']:.1f} fps out "
                f"({r['ms_per_frame']:.1f} ms CPU a frame), "
                f"{r['decoded_fps']:.0f} frames/s decoded, {r['late_frames']} late frames "
                f"over {r['wall_s']:.0f} s ({time.monotonic() - started:.0f} s in all)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
