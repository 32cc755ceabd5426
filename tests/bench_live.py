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


async def measure(slots: int, seconds: float, size: str, fps: int, data_dir: Path) -> dict[str, float]:
    meeting = Meeting(max_endpoints=slots + 2)
    await meeting.start()
    settings = Settings(data_dir=data_dir, room_store="memory", live_size=size, live_fps=fps)
    broadcasts = Broadcasts(settings, meeting.store, meeting.backend)
    publishers: list[RawPublisher] = []
    try:
        identities = [f"hall-{i}" for i in range(slots)]
        for i, identity in enumerate(identities):
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


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slots", type=int, nargs="+", default=[4, 9])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--fps", type=int, default=25)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(f"live compositor {args.size} {args.fps} fps, load average {load:.1f}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        for slots in args.slots:
            started = time.monotonic()
            r = await measure(slots, args.seconds, args.size, args.fps, Path(tmp) / str(slots))
            print(
                f"{slots} slots ({LAYOUT_FOR[slots]}): {r['cores']:.2f} core, {r['fps_out']:.1f} fps out, "
                f"{r['decoded_fps']:.0f} frames/s decoded, {r['late_frames']} late frames "
                f"over {r['wall_s']:.0f} s ({time.monotonic() - started:.0f} s in all)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
