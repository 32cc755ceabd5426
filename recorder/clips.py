"""A chair's uploaded film made ready to play into a meeting: checked, then transcoded once (PyAV)
to what the room forwards, VP8 with a keyframe every second and Opus, 48 kHz stereo in 20 ms frames,
and written as prepared RTP payloads (``conference.clip_file``), with a thumbnail and a WebM of the
same encoded frames for the console's preview (muxed, not encoded twice).

Run in its own process (``python -m recorder.clips SOURCE DIR``) so the server's loop never waits on
an encoder: it prints one JSON line per progress step and a last line with the result.
"""

from __future__ import annotations

import argparse
import contextlib
import fractions
import json
import math
import os
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import av.error
import numpy as np

from conference.clip_file import AUDIO_CLOCK, VIDEO_CLOCK, ClipWriter

MAX_WIDTH, MAX_HEIGHT = 1280, 720
MAX_FPS = 30
AUDIO_FRAME = 960  # 20 ms at 48 kHz
THUMB_WIDTH = 320
PACKETS, THUMBNAIL, PREVIEW = "packets.bin", "thumb.jpg", "preview.webm"


class ClipError(ValueError):
    """The upload is not a film this server can play: the message says why, for the chair."""


@dataclass(slots=True)
class Probe:
    width: int
    height: int
    fps: float
    duration_s: float
    has_audio: bool


def probe(path: Path) -> Probe:
    """Check that ``path`` is a video whose first picture decodes (quick: one frame)."""
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            if not container.streams.video:
                raise ClipError("the file has no video stream")
            stream = container.streams.video[0]
            picture = None
            for frame in container.decode(stream):
                picture = frame
                break
            if picture is None:
                raise ClipError("the file's video has no picture that decodes")
            duration = _duration(container, stream)
            rate = float(stream.average_rate or stream.guessed_rate or 25)
            return Probe(picture.width, picture.height, rate, duration, bool(container.streams.audio))
    except av.error.FFmpegError as exc:
        raise ClipError(f"the file cannot be read as a video: {exc.strerror or exc}") from None


def _duration(container: Any, stream: Any) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return 0.0


def output_size(width: int, height: int) -> tuple[int, int]:
    """Within 1280x720, the aspect kept, even sides (4:2:0)."""
    scale = min(1.0, MAX_WIDTH / width, MAX_HEIGHT / height)
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


def transcode(
    source: Path, out_dir: Path, progress: Callable[[float], None] = lambda p: None
) -> dict[str, Any]:
    """Transcode ``source`` into ``out_dir`` (packets, thumbnail, preview); returns the clip's
    facts. Raises ClipError when the file cannot be decoded (nothing is left in ``out_dir``)."""
    info = probe(source)
    width, height = output_size(info.width, info.height)
    fps = max(1, min(MAX_FPS, round(info.fps)))
    try:
        return _transcode(source, out_dir, info, width, height, fps, progress)
    except av.error.FFmpegError as exc:
        for name in (PACKETS, THUMBNAIL, PREVIEW):
            (out_dir / name).unlink(missing_ok=True)
        raise ClipError(f"the file cannot be decoded: {exc.strerror or exc}") from None


def _transcode(
    source: Path,
    out_dir: Path,
    info: Probe,
    width: int,
    height: int,
    fps: int,
    progress: Callable[[float], None],
) -> dict[str, Any]:
    header = {
        "video": {"codec": "vp8", "clock": VIDEO_CLOCK, "width": width, "height": height, "fps": fps},
        "audio": {"codec": "opus", "clock": AUDIO_CLOCK, "channels": 2} if info.has_audio else None,
    }
    writer = ClipWriter(out_dir / PACKETS, header)
    preview = av.open(str(out_dir / PREVIEW), "w", format="webm")
    video_out = preview.add_stream("libvpx", rate=fps)
    video_out.width, video_out.height, video_out.pix_fmt = width, height, "yuv420p"
    video_out.bit_rate = int(1_200_000 * width * height / (MAX_WIDTH * MAX_HEIGHT)) + 200_000
    video_out.gop_size = fps  # a keyframe every second: a switch or a seek waits at most that
    video_out.codec_context.time_base = fractions.Fraction(1, fps)
    rate = str(video_out.bit_rate)
    # Capped like a venue's camera (the room's REMB cap is 1.5 Mbit/s): a busy film stays in budget.
    video_out.options = {
        "deadline": "realtime",
        "cpu-used": "8",
        "lag-in-frames": "0",
        "threads": "1",
        "maxrate": rate,
        "bufsize": str(2 * video_out.bit_rate),
        "undershoot-pct": "95",
        "overshoot-pct": "15",
    }
    audio_out = None
    if info.has_audio:
        audio_out = preview.add_stream("libopus", rate=AUDIO_CLOCK)
        audio_out.layout, audio_out.format, audio_out.bit_rate = "stereo", "s16", 96_000
        audio_out.codec_context.time_base = fractions.Fraction(1, AUDIO_CLOCK)
    resampler = av.AudioResampler(format="s16", layout="stereo", rate=AUDIO_CLOCK) if audio_out else None
    fifo = av.AudioFifo() if audio_out else None
    thumb_written = False
    frames = 0
    audio_pts = 0
    last_video_s = 0.0
    next_pts = 0
    levels: deque[int] = deque()  # levels of the frames in the encoder (one packet per frame, in order)
    try:
        with av.open(str(source), metadata_errors="ignore") as container:
            streams = [container.streams.video[0]]
            if audio_out:
                streams.append(container.streams.audio[0])
            for packet in container.demux(*streams):
                for frame in packet.decode():
                    if isinstance(frame, av.VideoFrame):
                        if frame.pts is None or frame.time is None:
                            continue
                        at = float(frame.time) - float(streams[0].start_time or 0) * float(
                            streams[0].time_base
                        )
                        # At most ``fps`` frames a second out, each at its own time (a gap stays a gap).
                        out_pts = round(at * fps)
                        if out_pts < next_pts:
                            continue
                        picture = frame.reformat(width=width, height=height, format="yuv420p")
                        if not thumb_written and at >= min(1.0, info.duration_s / 10):
                            _thumbnail(picture, out_dir / THUMBNAIL)
                            thumb_written = True
                        picture.pts = out_pts
                        next_pts = out_pts + 1
                        picture.time_base = video_out.codec_context.time_base
                        for out in video_out.encode(picture):
                            _video_packet(writer, preview, out, fps)
                        frames += 1
                        last_video_s = at
                        if info.duration_s:
                            progress(min(0.99, at / info.duration_s))
                    elif resampler is not None and fifo is not None and audio_out is not None:
                        frame.pts = None
                        for pcm in resampler.resample(frame):
                            fifo.write(pcm)
                        audio_pts = _drain_audio(
                            fifo, audio_out, writer, preview, audio_pts, AUDIO_FRAME, levels
                        )
        for out in video_out.encode(None):
            _video_packet(writer, preview, out, fps)
        if audio_out is not None and fifo is not None and resampler is not None:
            for pcm in resampler.resample(None):
                fifo.write(pcm)
            audio_pts = _drain_audio(fifo, audio_out, writer, preview, audio_pts, AUDIO_FRAME, levels)
            for out in audio_out.encode(None):
                _audio_packet(writer, preview, out, levels)
        if frames == 0:
            raise ClipError("the file's video has no picture that decodes")
        if not thumb_written:
            raise ClipError("the file's video has no picture that decodes")
        preview.close()
        header["duration_s"] = round(next_pts / fps, 3)
        writer.header = header
        writer.finish()
    except BaseException:
        writer.abort()
        preview.close()
        raise
    progress(1.0)
    return {
        "duration_s": round(next_pts / fps, 3),
        "width": width,
        "height": height,
        "fps": fps,
        "has_audio": info.has_audio,
        "source_duration_s": round(max(info.duration_s, last_video_s), 3),
    }


def _video_packet(writer: ClipWriter, preview: Any, packet: av.Packet, fps: int) -> None:
    if packet.pts is None:
        return
    writer.video_frame(int(packet.pts) * VIDEO_CLOCK // fps, bool(packet.is_keyframe), bytes(packet))
    preview.mux(packet)


def _audio_packet(writer: ClipWriter, preview: Any, packet: av.Packet, levels: deque[int]) -> None:
    if packet.pts is None:
        return
    writer.audio_frame(max(0, int(packet.pts)), bytes(packet), levels.popleft() if levels else 127)
    preview.mux(packet)


def _drain_audio(
    fifo: Any, audio_out: Any, writer: ClipWriter, preview: Any, pts: int, size: int, levels: deque[int]
) -> int:
    while fifo.samples >= size:
        pcm = fifo.read(size)
        levels.append(rfc6464_level(pcm.to_ndarray()))
        pcm.pts = pts
        pcm.time_base = fractions.Fraction(1, AUDIO_CLOCK)
        pts += size
        for out in audio_out.encode(pcm):
            _audio_packet(writer, preview, out, levels)
    return pts


def rfc6464_level(samples: np.ndarray) -> int:
    """The RFC 6464 level of s16 samples: -dBov of their RMS, 0 (loudest) to 127 (silence), the
    level a browser sends with each frame; the media core's speaker detection reads it."""
    rms = float(np.sqrt(np.mean(np.square(samples.astype(np.float64))))) if samples.size else 0.0
    if rms < 1.0:
        return 127
    return int(min(127, max(0, round(-20 * math.log10(rms / 32768)))))


def _thumbnail(picture: av.VideoFrame, path: Path) -> None:
    height = max(2, round(picture.height * THUMB_WIDTH / picture.width) // 2 * 2)
    small = picture.reformat(width=THUMB_WIDTH, height=height, format="yuvj420p")
    encoder = av.CodecContext.create("mjpeg", "w")
    encoder.width, encoder.height, encoder.pix_fmt = THUMB_WIDTH, height, "yuvj420p"
    encoder.time_base = fractions.Fraction(1, 25)
    small.pts = 0
    data = b"".join(bytes(p) for p in [*encoder.encode(small), *encoder.encode(None)])
    path.write_bytes(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recorder.clips", description=__doc__)
    parser.add_argument("source", type=Path)
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    # The transcoder yields to the meeting's media (set here: a preexec_fn is unsafe in the
    # server, which has threads).
    with contextlib.suppress(OSError):
        os.nice(10)
    last = [-1.0]

    def report(fraction: float) -> None:
        if fraction - last[0] >= 0.01 or fraction >= 1.0:
            last[0] = fraction
            print(json.dumps({"progress": round(fraction, 3)}), flush=True)

    try:
        result = transcode(args.source, args.out_dir, report)
    except ClipError as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        return 2
    print(json.dumps({"result": result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
