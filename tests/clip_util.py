"""Films made in the tests: a colour bar that changes colour every second over a steady tone, in a
real container (H.264/AAC in MP4), as a chair would upload one."""

from __future__ import annotations

import fractions
from pathlib import Path

import av
import numpy as np

# Far apart in RGB so two encodings (the upload's and the server's) cannot confuse them.
CLIP_COLOURS: list[tuple[int, int, int]] = [
    (220, 30, 30),
    (30, 200, 30),
    (30, 30, 220),
    (230, 230, 30),
    (220, 30, 220),
    (30, 220, 220),
]
TONE_HZ = 660.0


def make_film(
    path: Path,
    seconds: int = 6,
    width: int = 320,
    height: int = 180,
    fps: int = 25,
    tone_hz: float = TONE_HZ,
    noise: bool = False,
) -> list[tuple[int, int, int]]:
    """Write the film; returns the colour of each second. ``noise``: a band of moving noise in the
    lower third, so the picture costs a film's bitrate (for benchmarks)."""
    colours = [CLIP_COLOURS[i % len(CLIP_COLOURS)] for i in range(seconds)]
    rng = np.random.default_rng(7)
    band = rng.integers(60, 200, (height * 2, width, 3), dtype=np.uint8) if noise else None
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"preset": "ultrafast", "g": str(fps * 4)}
        audio = out.add_stream("aac", rate=44_100)
        audio.layout = "mono"
        image = np.zeros((height, width, 3), np.uint8)
        for n in range(seconds * fps):
            image[:, :] = colours[n // fps]
            if band is not None:
                rows = height // 3
                offset = (n * 5) % (band.shape[0] - rows)
                image[height - rows :] = band[offset : offset + rows]
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
            frame.pts = n
            frame.time_base = fractions.Fraction(1, fps)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        samples = 1024
        total = int(seconds * 44_100)
        for start in range(0, total, samples):
            t = (np.arange(start, min(total, start + samples)) / 44_100).astype(np.float32)
            pcm = (0.3 * np.sin(2 * np.pi * tone_hz * t)).astype(np.float32).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(pcm, format="fltp", layout="mono")
            frame.sample_rate = 44_100
            frame.pts = start
            frame.time_base = fractions.Fraction(1, 44_100)
            out.mux(audio.encode(frame))
        out.mux(audio.encode(None))
    return colours
