"""``conference live``: the program compositor of a room's public stream, in a process of its own.

The server starts one per broadcasting room (``signaling.broadcast``); it receives the room over a
plain-RTP transport (``conference.sfu.plain``) on the loopback, so the meeting's forwarding core
only sends it one more copy of what the venues get. It decodes what is on screen, composes the
program with the recorder's compositor (``recorder.compose``, the same layouts and captions),
mixes the current speakers, encodes once (H.264 + AAC) and writes HLS into ``--out``.

Protocol, JSON lines: on stdout first ``{"type": "offer", ...}`` (a ``PlainOffer``: where this
process listens, how many slots it wants); on stdin the server's plain-RTP answer, then a
``{"type": "program", "layout", "slots", "names", "live", "title", "topic", "starts_at"}`` line on
every change of the room, and ``{"type": "end"}``: show the closing slate for ``--end-slate``
seconds, end the playlist and exit. EOF on stdin (the server went away) ends at once. Stats go to
stdout every few seconds (``{"type": "stats", ...}``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import random
import select
import socket
import sys
import threading
import time
from pathlib import Path
from queue import Empty, SimpleQueue
from typing import Any

import av
import numpy as np

from conference.layouts import LAYOUTS, MAX_SLOTS, get_layout
from conference.sfu.packet import parse_header

from ..compose import AUDIO_RATE, CARD, Compositor
from ..render import RenderError, parse_size
from ..titles import line_mask
from .hls import HlsOutput
from .receive import AudioSlot, VideoSlot

log = logging.getLogger(__name__)

STATS_INTERVAL_S = 5.0
RECEIVE = {
    "video": [
        {"name": "vp8", "payload_type": 96, "clock_rate": 90000},
        {"name": "h264", "payload_type": 102, "clock_rate": 90000},
    ],
    "audio": [{"name": "opus", "payload_type": 111, "clock_rate": 48000}],
}


def say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


class Program:
    """What the stream shows: the room's layout and slots, names, and the slate's text."""

    def __init__(self) -> None:
        self.layout = "single"
        self.slots: list[str | None] = [None]
        self.names: dict[str, str] = {}
        self.live = True
        self.room = ""
        self.title = ""
        self.topic = ""
        self.starts_at: float | None = None
        self.ended = False
        self.on_screen: dict[str, Any] | None = None

    def name(self, identity: str) -> str:
        return self.names.get(identity) or identity

    def update(self, message: dict[str, Any]) -> None:
        layout = str(message.get("layout", self.layout))
        if layout in LAYOUTS:
            self.layout = layout
            slots = message.get("slots", self.slots)
            self.slots = [None if s is None else str(s) for s in slots][: get_layout(layout).size]
        self.names = {str(k): str(v) for k, v in (message.get("names") or self.names).items()}
        self.live = bool(message.get("live", self.live))
        for key in ("room", "title", "topic"):
            if key in message:
                setattr(self, key, str(message[key] or ""))
        if "on_screen" in message:
            value = message["on_screen"]
            self.on_screen = value if isinstance(value, dict) else None
        if "starts_at" in message:
            value = message["starts_at"]
            self.starts_at = float(value) if isinstance(value, int | float) else None


class Slate:
    """The card before and after the broadcast: the meeting's title, time and topic."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height

    def draw(self, compositor: Compositor, program: Program, now: float) -> av.VideoFrame:
        c = compositor.canvas
        c.fill((0, 0, c.width, c.height), CARD)
        words = SLATE_WORDS["ended" if program.ended else "soon"]
        when = program.starts_at if program.starts_at and not program.ended else now
        # In the meeting's own words and script (the CJK font of the captions; the bitmap font,
        # which writes only ASCII, where none is installed).
        lines = [
            (program.title or program.room, 0.075),
            (time.strftime("%Y-%m-%d %H:%M", time.localtime(when)), 0.045),
            (program.topic, 0.045),
            (words, 0.04),
        ]
        y = self.height // 4
        for text, share in lines:
            if not text:
                continue
            mask, _ = line_mask(text, max(12, round(self.height * share)), self.width - 32)
            c.text((self.width - mask.shape[1]) // 2, y, mask)
            y += mask.shape[0] + self.height // 20
        return c.frame()


# What the slate says under the title (zh-CN, then English: the audience is mostly Chinese-reading).
SLATE_WORDS = {
    "soon": "直播即将开始 · The broadcast starts soon",
    "ended": "直播已结束 · The broadcast has ended",
}


class LiveWorker:
    def __init__(self, args: argparse.Namespace, sock: socket.socket, answer: dict[str, Any]) -> None:
        self.args = args
        self.width, self.height = parse_size(args.size)
        self.fps = args.fps
        self.sock = sock
        self.server = (str(answer["address"][0]), int(answer["address"][1]))
        self.our_ssrc = random.getrandbits(32)
        slots = answer.get("slots") or {}
        self.video: dict[int, VideoSlot] = {}
        self.video_order: list[VideoSlot] = []
        for i, entry in enumerate(slots.get("video", [])):
            codecs = {int(c["payload_type"]): str(c["name"]).lower() for c in entry.get("codecs", [])}
            slot = VideoSlot(i, int(entry["ssrc"]), codecs, self._send, self.our_ssrc)
            self.video[slot.ssrc] = slot
            self.video_order.append(slot)
        self.audio: dict[int, AudioSlot] = {}
        for i, entry in enumerate(slots.get("audio", [])):
            audio = AudioSlot(i, int(entry["ssrc"]))
            self.audio[audio.ssrc] = audio
        self.program = Program()
        self.compositor = Compositor(self.width, self.height, captions=not args.no_captions)
        self.slate = Slate(self.width, self.height)
        self.output = HlsOutput(
            Path(args.out),
            self.width,
            self.height,
            self.fps,
            segment_s=args.segment,
            list_size=args.list_size,
            preset=args.preset,
            threads=args.threads,
            video_bitrate=args.video_bitrate,
        )
        self.control: SimpleQueue[dict[str, Any] | None] = SimpleQueue()
        self.end_at: float | None = None
        self.stopping = False
        self.late_frames = 0

    def _send(self, data: bytes) -> None:
        with contextlib.suppress(OSError):  # a full socket buffer: feedback is best effort
            self.sock.sendto(data, self.server)

    def read_control(self) -> None:
        """Stdin in a thread of its own: the server's program updates, one JSON object a line."""
        for line in sys.stdin:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict):
                self.control.put(message)
        self.control.put(None)

    def _apply_control(self, now: float) -> None:
        while True:
            try:
                message = self.control.get_nowait()
            except Empty:
                return
            if message is None:
                self.stopping = True
                return
            kind = message.get("type")
            if kind == "program":
                previous = list(self.program.slots)
                self.program.update(message)
                for i, slot in enumerate(self.video_order):
                    wanted = self.program.slots[i] if i < len(self.program.slots) else None
                    if wanted is not None and (i >= len(previous) or previous[i] != wanted):
                        slot.request_keyframe(now, force=True)
            elif kind == "end":
                self.program.ended = True
                self.program.live = False
                self.end_at = now + self.args.end_slate

    def _receive(self) -> None:
        sock = self.sock
        now = time.monotonic()
        for _ in range(2000):  # bounded: the frame clock must keep running whatever arrives
            try:
                data, addr = sock.recvfrom(65536)
            except BlockingIOError:
                return
            if addr[:2] != self.server or len(data) < 12 or 192 <= data[1] <= 223:
                continue  # not the server, or RTCP (its sender reports)
            header = parse_header(data)
            if header is None:
                continue
            video = self.video.get(header.ssrc)
            if video is not None:
                video.packet(data, header, now)
                continue
            audio = self.audio.get(header.ssrc)
            if audio is not None:
                audio.packet(data, header)

    def _compose(self, now: float) -> av.VideoFrame:
        program = self.program
        if not program.live:
            return self.slate.draw(self.compositor, program, time.time())
        layout = get_layout(program.layout)
        slots = program.slots + [None] * (layout.size - len(program.slots))
        pictures: dict[str, tuple[int, av.VideoFrame] | None] = {}
        for i, identity in enumerate(slots):
            if identity is None or identity in pictures or i >= len(self.video_order):
                continue
            slot = self.video_order[i]
            picture = slot.current(now)
            pictures[identity] = None if picture is None else (slot.picture_serial, picture)
        return self.compositor.draw((layout.slots, slots), program, pictures, program.on_screen)

    def run(self) -> int:
        threading.Thread(target=self.read_control, daemon=True).start()
        self.sock.setblocking(False)
        now = time.monotonic()
        for slot in self.video_order:
            slot.request_keyframe(now, force=True)
        say({"type": "started", "resumed": self.output.resumed})
        t0 = now
        index = 0
        samples_done = 0
        next_stats = now + STATS_INTERVAL_S
        cpu0 = time.process_time()
        try:
            while not self.stopping:
                due = t0 + index / self.fps
                timeout = max(0.0, due - time.monotonic())
                ready, _, _ = select.select([self.sock], [], [], timeout)
                if ready:
                    self._receive()
                now = time.monotonic()
                self._apply_control(now)
                if now < due:
                    continue
                behind = int((now - t0) * self.fps)
                if behind > index + 1:  # too slow for a while: drop frames rather than lag behind
                    self.late_frames += behind - index
                    index = behind
                self.output.write_video(self._compose(now), index)
                target = round((index + 1) * AUDIO_RATE / self.fps)
                count = target - samples_done
                samples_done = target
                self.output.write_audio(self._mix(count))
                index += 1
                if self.end_at is not None and now >= self.end_at:
                    break
                if now >= next_stats:
                    next_stats = now + STATS_INTERVAL_S
                    say(
                        {
                            "type": "stats",
                            "frames": self.output.frames,
                            "late_frames": self.late_frames,
                            "cpu_s": round(time.process_time() - cpu0, 3),
                            "wall_s": round(now - t0, 3),
                            "decoded": [s.frames_decoded for s in self.video_order],
                            "audio_packets": [a.packets for a in self.audio.values()],
                        }
                    )
        finally:
            self.output.close()
        say({"type": "ended", "frames": self.output.frames})
        return 0

    def _mix(self, count: int) -> np.ndarray:
        mix = np.zeros(count, dtype=np.float32)
        for audio in self.audio.values():
            samples = audio.read(count)
            if samples is not None:
                mix += samples
        return np.clip(mix, -1.0, 1.0)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="directory of the HLS playlist and segments")
    parser.add_argument("--size", default="1280x720", help="picture size WIDTHxHEIGHT (default 1280x720)")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--segment", type=int, default=2, help="segment length and keyframe interval, s")
    parser.add_argument("--list-size", type=int, default=6, help="segments in the sliding playlist")
    parser.add_argument("--video-slots", type=int, default=MAX_SLOTS)
    parser.add_argument("--audio-slots", type=int, default=3)
    parser.add_argument("--preset", default="ultrafast", help="x264 preset")
    parser.add_argument("--threads", type=int, default=1, help="encoder threads (0: the codec chooses)")
    parser.add_argument("--video-bitrate", type=int, default=2_500_000, help="bit/s, the encoder's cap")
    parser.add_argument("--end-slate", type=float, default=6.0, help="seconds of closing slate")
    parser.add_argument("--no-captions", action="store_true")
    parser.add_argument("--host", default="127.0.0.1", help="address to receive RTP on")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="live %(levelname)s %(message)s", stream=sys.stderr)
    if not 1 <= args.fps <= 60 or not 1 <= args.segment <= 10 or not 2 <= args.list_size <= 100:
        print("conference live: --fps 1-60, --segment 1-10, --list-size 2-100", file=sys.stderr)
        return 2
    try:
        parse_size(args.size)
    except RenderError as exc:
        print(f"conference live: {exc}", file=sys.stderr)
        return 2
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
    sock.bind((args.host, 0))
    say(
        {
            "type": "offer",
            "address": list(sock.getsockname()[:2]),
            "video_slots": max(0, min(MAX_SLOTS, args.video_slots)),
            "audio_slots": max(0, min(8, args.audio_slots)),
            "receive": RECEIVE,
        }
    )
    line = sys.stdin.readline()
    if not line:
        return 1
    answer = json.loads(line)
    return LiveWorker(args, sock, answer).run()
