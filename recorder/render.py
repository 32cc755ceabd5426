"""Render a recording to MP4 in any layout: ``conference render RECORDING [--layout ...]``.

The archive holds every published track undecoded plus the meeting's timeline, so the composite
is built here, afterwards, in whatever layout the clerk asks for:

- ``program``: the chair's program as it was, slot for slot, using the shared layout catalogue;
- ``grid``: everyone publishing at that moment in an automatic grid;
- ``speaker``: the active speaker large, the others small (``speaker-1+5``);
- ``single:ID``: one participant;
- ``LAYOUT`` or ``LAYOUT:ID,ID,...``: a catalogue layout with a fixed assignment (by default the
  publishers in order of arrival).

Video is decoded lazily: a feed that is not on screen is only depacketised, and decoding starts
from its last keyframe when it appears. Audio is mixed from everyone who was present and not muted.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from conference.config import ConfigError, add_settings_arguments, settings_from_args
from conference.layouts import LAYOUTS, Layout, Rect, UnknownLayout, get_layout

from . import titles
from .archive import (
    FILE_MODE,
    ArchiveError,
    Recording,
    TrackInfo,
    check_recording_id,
    make_private_dir,
    recording_dir,
    write_private_text,
)
from .compose import AAC_FRAME, AUDIO_RATE, Arrangement, Compositor
from .compose import mono as mono_samples
from .depacketize import EncodedFrame, opus_packets, video_frames
from .mixing import Limiter
from .replay import Chapter, MeetingState, TimelineCursor, chapters_of

log = logging.getLogger(__name__)

DEFAULT_FPS = 25
DEFAULT_SIZE = (1280, 720)
# A feed that sent no frame for this long is shown as a name card (camera off or connection lost).
STALE_VIDEO_S = 5.0
# Decode a hidden feed anyway once this many frames wait, so memory stays bounded without keyframes.
MAX_PENDING_FRAMES = 300

Progress = Callable[[float], None]


class RenderError(Exception):
    """A render that cannot be done: unknown recording or layout, bad size or time range."""


# --- options ---------------------------------------------------------------------------------


@dataclass(slots=True)
class RenderOptions:
    layout: str = "program"
    width: int = DEFAULT_SIZE[0]
    height: int = DEFAULT_SIZE[1]
    start: float | None = None  # seconds from the start of the recording
    end: float | None = None
    fps: int = DEFAULT_FPS
    captions: bool = True
    # x264 "ultrafast": the render has to run at twice real time on one core (docs/performance.md);
    # "superfast" compresses ~30 % better at half the speed.
    preset: str = "ultrafast"
    # Encoder and decoder threads; 0 lets the codecs choose. 1 keeps a render to one core.
    threads: int = 0
    crf: int = 23
    vtt: bool = True
    # The chapters' and the comment caption's language (zh-CN, en); None: the recording's own.
    language: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "layout": self.layout,
            "size": f"{self.width}x{self.height}",
            "from": self.start,
            "to": self.end,
            "captions": self.captions,
            "language": self.language,
        }


def parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d{2,4})x(\d{2,4})", text.strip())
    if not match:
        raise RenderError(f"bad size {text!r}: expected WIDTHxHEIGHT, e.g. 1280x720")
    width, height = int(match[1]), int(match[2])
    if not (64 <= width <= 3840 and 64 <= height <= 2160) or width % 2 or height % 2:
        raise RenderError(f"bad size {text!r}: even width 64-3840 and height 64-2160")
    return width, height


def parse_time(text: str | float | int | None) -> float | None:
    """Seconds, ``MM:SS`` or ``HH:MM:SS`` (fractions allowed) from the start of the recording."""
    if text is None or text == "":
        return None
    if isinstance(text, int | float):
        value = float(text)
    else:
        parts = text.strip().split(":")
        try:
            if len(parts) > 3 or not all(parts):
                raise ValueError
            value = 0.0
            for part in parts:
                value = value * 60 + float(part)
        except ValueError:
            raise RenderError(f"bad time {text!r}: expected seconds, MM:SS or HH:MM:SS") from None
    if not math.isfinite(value) or value < 0:
        raise RenderError(f"bad time {text!r}")
    return value


def check_layout_spec(spec: str) -> None:
    """Raise RenderError for a layout the renderer does not know (before any work starts)."""
    name, _, arg = spec.partition(":")
    if name in ("program", "grid", "speaker") and not arg:
        return
    if name == "single" and arg:
        return
    try:
        layout = get_layout(name)
    except UnknownLayout:
        known = ", ".join(["program", "grid", "speaker", "single:IDENTITY", *LAYOUTS])
        raise RenderError(f"unknown layout {spec!r}; known: {known}") from None
    if arg and len(arg.split(",")) > layout.size:
        raise RenderError(f"layout {name!r} has {layout.size} slots, got {len(arg.split(','))}")


# --- the meeting as it happened ------------------------------------------------------------------


# --- layouts over time ---------------------------------------------------------------------------


def auto_grid(count: int) -> tuple[Rect, ...]:
    if count <= 0:
        return ()
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    w, h = 1 / cols, 1 / rows
    rects = []
    for i in range(count):
        r, c = divmod(i, cols)
        # Centre a short last row.
        in_row = min(cols, count - r * cols)
        x0 = (cols - in_row) * w / 2
        rects.append(Rect(x0 + c * w, r * h, w, h))
    return tuple(rects)


class LayoutChooser:
    """Which participant fills which rectangle at a moment, for one layout selection."""

    def __init__(self, spec: str, recording: Recording) -> None:
        check_layout_spec(spec)
        self.spec = spec
        name, _, arg = spec.partition(":")
        self.mode = name
        known = {p["identity"] for p in recording.participants()}
        self.fixed: list[str | None] = []
        self.layout: Layout | None = None
        if name == "single":
            if arg not in known:
                raise RenderError(f"no participant {arg!r} in recording {recording.id!r}")
            self.layout = get_layout("single")
            self.fixed = [arg]
        elif name not in ("program", "grid", "speaker"):
            self.layout = get_layout(name)
            if arg:
                ids = [a.strip() or None for a in arg.split(",")]
                for ident in ids:
                    if ident is not None and ident not in known:
                        raise RenderError(f"no participant {ident!r} in recording {recording.id!r}")
                self.fixed = ids
            else:
                self.fixed = []  # filled with publishers in order of arrival

    def arrange(self, state: MeetingState) -> Arrangement:
        if self.mode == "program":
            layout = get_layout(state.layout)
            slots = [s if s in state.present else None for s in state.slots]
            return layout.slots, slots[: layout.size]
        if self.mode == "grid":
            people = state.publishers()
            return auto_grid(len(people)), list(people)
        if self.mode == "speaker":
            people = state.publishers()
            main = next((s for s in state.speakers if s in people), None)
            if main is None and state.floor in people:
                main = state.floor
            if main is None:
                main = next((s for s in state.slots if s in people), None)
            if main is None and people:
                main = people[0]
            if main is None:
                return (), []
            layout = get_layout("speaker-1+5")
            others = [p for p in people if p != main][: layout.size - 1]
            return layout.slots[: 1 + len(others)], [main, *others]
        assert self.layout is not None
        slots = self.fixed or list(state.publishers())[: self.layout.size]
        slots = [s if s in state.present else None for s in slots]
        return self.layout.slots[: len(slots)], slots


# --- media feeds ---------------------------------------------------------------------------------


class VideoFeed:
    """One video track, decoded only as far and as often as the render needs it."""

    def __init__(self, recording: Recording, track: TrackInfo, threads: int = 0) -> None:
        self.track = track
        self._frames = video_frames(recording, track)
        self._next: EncodedFrame | None = None
        self._exhausted = False
        self._pending: list[EncodedFrame] = []
        self._have_keyframe = False
        self.last_at: float | None = None
        self.picture: av.VideoFrame | None = None
        self.picture_serial = 0
        name = "vp8" if track.codec.lower() == "vp8" else "h264"
        self._decoder = av.CodecContext.create(name, "r")
        self._decoder.thread_count = threads

    def advance(self, t: float) -> None:
        while True:
            if self._next is None:
                if self._exhausted:
                    return
                self._next = next(self._frames, None)
                if self._next is None:
                    self._exhausted = True
                    return
            if self._next.at > t:
                return
            frame, self._next = self._next, None
            if frame.keyframe:
                self._pending = [frame]  # nothing before a keyframe is needed any more
                self._have_keyframe = True
            elif frame.gap:
                # Show the last good picture until the next keyframe rather than a smeared one.
                self._have_keyframe = False
            elif self._have_keyframe:
                self._pending.append(frame)
            self.last_at = frame.at
            if len(self._pending) > MAX_PENDING_FRAMES:
                self._decode()

    def _decode(self) -> None:
        for frame in self._pending:
            try:
                decoded = self._decoder.decode(av.Packet(frame.data))
            except av.FFmpegError as exc:
                log.warning("track %d: undecodable frame skipped (%s)", self.track.number, exc)
                self._have_keyframe = False
                break
            if decoded:
                self.picture = decoded[-1]
                self.picture_serial += 1
        self._pending = []

    def current(self, t: float) -> av.VideoFrame | None:
        """The picture showing at ``t``, or None when the feed has nothing (recent) to show."""
        self.advance(t)
        if self._pending:
            self._decode()
        if self.last_at is None or t - self.last_at > STALE_VIDEO_S:
            return None
        return self.picture


class AudioFeed:
    """One audio track decoded to 48 kHz mono, read in consecutive blocks of samples."""

    def __init__(self, recording: Recording, track: TrackInfo, origin: float) -> None:
        self.track = track
        self._origin = origin  # wall time of sample 0 of the render
        self._packets = opus_packets(recording, track)
        self._next: tuple[float, bytes] | None = None
        self._exhausted = False
        self._decoder = av.CodecContext.create("libopus", "r")
        self._decoder.sample_rate = AUDIO_RATE
        self._decoder.layout = "mono"  # libopus downmixes: cheaper than decoding stereo and averaging
        self._chunks: deque[tuple[int, np.ndarray]] = deque()
        self._write_pos: int | None = None

    def _pull(self) -> tuple[float, bytes] | None:
        if self._next is None and not self._exhausted:
            self._next = next(self._packets, None)
            self._exhausted = self._next is None
        return self._next

    def read(self, start: int, count: int) -> np.ndarray | None:
        """Samples ``start``..``start+count`` of the render (float32), or None if silent there."""
        horizon = start + count + AUDIO_RATE // 10  # decode a little ahead for reordering slack
        while (item := self._pull()) is not None and (item[0] - self._origin) * AUDIO_RATE < horizon:
            self._next = None
            at, payload = item
            try:
                frames = self._decoder.decode(av.Packet(payload))
            except av.FFmpegError:
                continue
            pos = round((at - self._origin) * AUDIO_RATE)
            # Consecutive packets butt up against each other: small clock jitter must not leave
            # clicks of silence or double samples.
            if self._write_pos is not None and abs(pos - self._write_pos) < AUDIO_RATE // 50:
                pos = self._write_pos
            for frame in frames:
                mono = mono_samples(frame)
                self._chunks.append((pos, mono))
                pos += mono.shape[0]
            self._write_pos = pos
        while self._chunks and self._chunks[0][0] + self._chunks[0][1].shape[0] <= start:
            self._chunks.popleft()
        out: np.ndarray | None = None
        end = start + count
        for pos, samples in self._chunks:
            if pos >= end:
                break
            lo, hi = max(pos, start), min(pos + samples.shape[0], end)
            if lo >= hi:
                continue
            if out is None:
                out = np.zeros(count, dtype=np.float32)
            out[lo - start : hi - start] += samples[lo - pos : hi - pos]
        return out


# --- the render ----------------------------------------------------------------------------------


@dataclass(slots=True)
class RenderResult:
    output: Path
    vtt: Path | None
    duration: float
    frames: int
    chapters: list[Chapter] = field(default_factory=list)
    wall_s: float = 0.0
    cpu_s: float = 0.0

    @property
    def speed(self) -> float:
        """Times faster than real time, on CPU time (one core)."""
        return self.duration / self.cpu_s if self.cpu_s else 0.0


def _vtt_time(t: float) -> str:
    ms = round(t * 1000)
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


def write_vtt(path: Path, chapters: list[Chapter], duration: float) -> None:
    lines = ["WEBVTT", ""]
    for i, chapter in enumerate(chapters):
        end = chapters[i + 1].at if i + 1 < len(chapters) else duration
        if end <= chapter.at:
            continue
        lines += [str(i + 1), f"{_vtt_time(chapter.at)} --> {_vtt_time(end)}", chapter.title, ""]
    write_private_text(path, "\n".join(lines))


def render(
    recording: Recording,
    output: str | os.PathLike[str],
    options: RenderOptions | None = None,
    progress: Progress | None = None,
) -> RenderResult:
    """Render ``recording`` to an MP4 at ``output`` (written to a ``.part`` file, then renamed)."""
    options = options or RenderOptions()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    output = Path(output)
    chooser = LayoutChooser(options.layout, recording)
    total = recording.duration
    start = options.start or 0.0
    end = total if options.end is None else min(options.end, total)
    if start >= end:
        raise RenderError(f"empty time range {start:.1f}s-{end:.1f}s (recording is {total:.1f}s long)")
    t0 = recording.started_at + start
    duration = end - start
    fps = options.fps
    frame_count = max(1, round(duration * fps))
    language = options.language or titles.recording_language(recording.meta)
    chapters = chapters_of(recording, t0, t0 + duration, language)

    cursor = TimelineCursor(recording.timeline)
    tracks = recording.tracks
    videos: dict[str, list[VideoFeed]] = {}
    audios: list[tuple[str, AudioFeed]] = []
    for track in tracks:
        if track.media == "video" and track.codec.lower() in ("vp8", "h264"):
            videos.setdefault(track.identity, []).append(VideoFeed(recording, track, options.threads))
        elif track.media == "audio" and track.codec.lower() == "opus":
            audios.append((track.identity, AudioFeed(recording, track, t0)))
        else:
            log.warning("track %d: codec %s %s is not rendered", track.number, track.media, track.codec)

    make_private_dir(output.parent)
    part = output.with_name(output.name + ".part")
    container = av.open(str(part), "w", format="mp4", options={"movflags": "+faststart"})
    try:
        vstream = container.add_stream("libx264", rate=fps)
        vstream.width, vstream.height = options.width, options.height
        vstream.pix_fmt = "yuv420p"
        vstream.codec_context.gop_size = 2 * fps
        vstream.codec_context.options = {
            "preset": options.preset,
            "crf": str(options.crf),
            "threads": str(options.threads) if options.threads else "auto",
        }
        astream = container.add_stream("aac", rate=AUDIO_RATE, layout="mono")
        astream.codec_context.bit_rate = 96000
        astream.codec_context.options = {"aac_coder": "fast"}
        container.metadata["title"] = f"{recording.room} {time.strftime('%Y-%m-%d %H:%M', time.gmtime(t0))}"
        # Chapters must be known before the header is written (the muxer reserves a track for them).
        container.set_chapters(
            [
                {
                    "id": i + 1,
                    "start": round(ch.at * 1000),
                    "end": round((chapters[i + 1].at if i + 1 < len(chapters) else duration) * 1000),
                    "time_base": Fraction(1, 1000),
                    "metadata": {"title": ch.title},
                }
                for i, ch in enumerate(chapters)
            ]
        )
        compositor = Compositor(options.width, options.height, options.captions)
        audio_pending = np.zeros(0, dtype=np.float32)
        limiter = Limiter(AUDIO_RATE)  # headroom and no clipping when speakers add up (mixing.py)
        audio_pts = 0
        samples_done = 0
        last_report = -1.0
        # Between two parts (a failover: recording_gap): a slate and silence for the seconds lost.
        gaps = [(a, b, titles.gap_title(b - a, language)) for a, b in recording.gaps if b > a]
        for k in range(frame_count):
            t = t0 + k / fps
            cursor.advance(t)
            state = cursor.state
            lost = next((text for a, b, text in gaps if a <= t < b), None)
            if lost is not None:
                frame = compositor.slate(lost)
            else:
                arrangement = chooser.arrange(state)
                pictures: dict[str, tuple[int, av.VideoFrame] | None] = {}
                for identity in arrangement[1]:
                    if identity is None or identity in pictures:
                        continue
                    pictures[identity] = _picture_for(videos.get(identity, []), state, identity, t)
                frame = compositor.draw(arrangement, state, pictures, state.room.on_screen, language)
            frame.pts = k
            frame.time_base = Fraction(1, fps)
            for packet in vstream.encode(frame):
                container.mux(packet)

            # Audio for the same span of time.
            target = round((k + 1) * AUDIO_RATE / fps)
            count = target - samples_done
            mix = np.zeros(count, dtype=np.float32)
            for identity, feed in audios:
                samples = feed.read(samples_done, count)
                if samples is not None and state.audible(identity) and lost is None:
                    mix += samples
            samples_done = target
            audio_pending = np.concatenate([audio_pending, limiter.process(mix)])
            while audio_pending.shape[0] >= AAC_FRAME:
                audio_pts = _encode_audio(container, astream, audio_pending[:AAC_FRAME], audio_pts)
                audio_pending = audio_pending[AAC_FRAME:]

            if progress is not None:
                done = (k + 1) / frame_count
                if done - last_report >= 0.01 or k + 1 == frame_count:
                    last_report = done
                    progress(done)
        if audio_pending.shape[0]:
            _encode_audio(container, astream, audio_pending, audio_pts)
        for packet in vstream.encode(None):
            container.mux(packet)
        for packet in astream.encode(None):
            container.mux(packet)
    except BaseException:
        container.close()
        part.unlink(missing_ok=True)
        raise
    container.close()
    os.chmod(part, FILE_MODE)  # PyAV creates it under the umask: an assembly record is 0640
    os.replace(part, output)
    vtt = None
    if options.vtt:
        vtt = output.with_suffix(".vtt")
        write_vtt(vtt, chapters, duration)
    return RenderResult(
        output=output,
        vtt=vtt,
        duration=frame_count / fps,
        frames=frame_count,
        chapters=chapters,
        wall_s=time.perf_counter() - wall0,
        cpu_s=time.process_time() - cpu0,
    )


def _picture_for(
    feeds: list[VideoFeed], state: MeetingState, identity: str, t: float
) -> tuple[int, av.VideoFrame] | None:
    person = state.people.get(identity)
    if person is not None and not person.publish_video:
        return None
    # After a reconnect the newest track that had started by ``t`` is the one on screen.
    live = [f for f in feeds if f.track.opened_at <= t + 1.0]
    for feed in reversed(live):
        picture = feed.current(t)
        if picture is not None:
            return feed.picture_serial, picture
    return None


def _encode_audio(container: Any, stream: Any, samples: np.ndarray, pts: int) -> int:
    frame = av.AudioFrame.from_ndarray(
        samples.reshape(1, -1).astype(np.float32), format="fltp", layout="mono"
    )
    frame.sample_rate = AUDIO_RATE
    frame.pts = pts
    frame.time_base = Fraction(1, AUDIO_RATE)
    for packet in stream.encode(frame):
        container.mux(packet)
    return pts + samples.shape[0]


# --- the command ---------------------------------------------------------------------------------


def open_recording(data_dir: str, recording: str) -> Recording:
    """A recording by id in ``data_dir``, or by the path of its directory."""
    path = Path(recording)
    if (path / "meta.json").is_file():
        return Recording(path)
    try:
        check_recording_id(recording)
        directory = recording_dir(data_dir, recording)
    except ValueError as exc:
        raise RenderError(str(exc)) from None
    if not directory.is_dir():
        raise RenderError(f"no recording {recording!r} in {data_dir}")
    try:
        return Recording(directory)
    except ArchiveError as exc:
        raise RenderError(str(exc)) from None


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recording", metavar="RECORDING", help="recording id (or its directory)")
    parser.add_argument(
        "--layout",
        default="program",
        help="program (default), grid, speaker, single:IDENTITY, or a catalogue layout "
        f"({', '.join(LAYOUTS)}) optionally with IDENTITY,... for its slots",
    )
    parser.add_argument("--size", default="1280x720", help="output size WIDTHxHEIGHT (default 1280x720)")
    parser.add_argument("--from", dest="start", default=None, help="start at T (seconds, MM:SS or HH:MM:SS)")
    parser.add_argument("--to", dest="end", default=None, help="stop at T")
    parser.add_argument("--fps", type=int, default=DEFAULT_FPS)
    parser.add_argument("--no-captions", action="store_true", help="no name captions on the tiles")
    parser.add_argument("--preset", default="ultrafast", help="x264 preset (default ultrafast)")
    parser.add_argument("-o", "--output", default=None, help="output MP4 (default RECORDING-LAYOUT.mp4)")
    add_settings_arguments(parser, server=False)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


class ProgressBar:
    def __init__(self, duration: float, stream: Any = None) -> None:
        self.duration = duration
        self.stream = stream or sys.stderr
        self.started = time.perf_counter()

    def __call__(self, done: float) -> None:
        width = 30
        filled = round(done * width)
        elapsed = time.perf_counter() - self.started
        speed = done * self.duration / elapsed if elapsed > 0 else 0.0
        self.stream.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {done * 100:5.1f}%  "
            f"{done * self.duration:7.1f}/{self.duration:.1f}s  {speed:4.1f}x"
        )
        if done >= 1.0:
            self.stream.write("\n")
        self.stream.flush()


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        width, height = parse_size(args.size)
        options = RenderOptions(
            layout=args.layout,
            width=width,
            height=height,
            start=parse_time(args.start),
            end=parse_time(args.end),
            fps=args.fps,
            captions=not args.no_captions,
            preset=args.preset,
        )
        if not 1 <= options.fps <= 60:
            raise RenderError("--fps must be 1-60")
        check_layout_spec(options.layout)
        recording = open_recording(str(settings_from_args(args).data_dir), args.recording)
        safe_layout = re.sub(r"[^A-Za-z0-9_.+-]+", "_", options.layout)
        output = Path(args.output or f"{recording.id}-{safe_layout}.mp4")
        span = (options.end if options.end is not None else recording.duration) - (options.start or 0.0)
        bar = None if args.quiet else ProgressBar(max(0.0, min(span, recording.duration)))
        result = render(recording, output, options, bar)
    except (RenderError, ConfigError) as exc:
        print(f"conference render: {exc}", file=sys.stderr)
        return 2
    print(
        f"{result.output}: {result.duration:.1f}s, {len(result.chapters)} chapters, "
        f"rendered at {result.speed:.1f}x real time"
        + (f"; chapters also in {result.vtt}" if result.vtt else "")
    )
    return 0
