"""The speaking-time count's cost (figures printed, not a test; docs/performance.md): a person's
hour of recorded Opus packets (50 a second), with and without the RFC 6464 audio-level extension,
written through the archive writer, then counted as the server's counting process does.

    python tests/bench_speaking_time.py [SECONDS]     (default 3600)
"""

from __future__ import annotations

import struct
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from conference.sfu.packet import URI_AUDIO_LEVEL
from recorder.archive import Recording, RecordingWriter
from recorder.speaking_levels import count

T0 = 1_800_000_000.0
LEVEL_ID = 1


def packet(seq: int, payload: bytes, level: int | None) -> bytes:
    """An Opus RTP packet, with a one-byte-header audio-level extension when ``level`` is given."""
    header = struct.pack("!BBHII", 0x90 if level is not None else 0x80, 111, seq & 0xFFFF, seq * 960, 1234)
    if level is not None:
        header += struct.pack("!HH", 0xBEDE, 1) + bytes([LEVEL_ID << 4, level, 0, 0])
    return header + payload


def opus_frames() -> list[bytes]:
    """A second of real Opus: half a tone, half silence (a voice with pauses)."""
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate, encoder.layout, encoder.format, encoder.bit_rate = 48000, "mono", "s16", 32000
    out: list[bytes] = []
    for i in range(50):
        t = np.arange(960) + 960 * i
        tone = (0.3 * 32767 * np.sin(2 * np.pi * 440 * t / 48000)).astype(np.int16)
        samples = tone if i < 25 else np.zeros(960, np.int16)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 48000, 960 * i, Fraction(1, 48000)
        out += [bytes(p) for p in encoder.encode(frame)]
    return out


def write(seconds: float, with_level: bool) -> Recording:
    directory = Path(tempfile.mkdtemp()) / "bench-1"
    writer = RecordingWriter(directory, "bench-1", "bench", started_at=T0, flush_interval=60.0)
    person = {"identity": "a", "name": "A", "role": "venue", "publish_audio": True}
    state = {"room": "bench", "participants": [person], "program": {"layout": "single", "slots": [None]}}
    writer.add_entry({"kind": "snapshot", "at": T0, "state": {**state, "floor": None}})
    track = writer.open_track(
        "a", "audio", "opus", 48000, 111, 1234, {URI_AUDIO_LEVEL: LEVEL_ID} if with_level else {}
    )
    frames = opus_frames()
    for i in range(int(seconds * 50)):
        level = (30 if i % 50 < 25 else 127) if with_level else None
        track.write(T0 + i * 0.02, packet(i, frames[i % len(frames)], level))
        if i % 5000 == 0:
            writer.flush()
    writer.close(stopped_at=T0 + seconds)
    return Recording(directory)


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3600.0
    for with_level in (True, False):
        recording = write(seconds, with_level)
        cpu, wall = time.process_time(), time.perf_counter()
        figures = count(recording)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        what = "audio-level extension" if with_level else "decoded Opus"
        print(
            f"{what}: {seconds / 3600:.2f} person-hours ({int(seconds * 50)} packets): {cpu:.2f} s CPU, "
            f"{wall:.2f} s wall; voiced {figures['by_person'][0]['voiced_s']} s"
        )


if __name__ == "__main__":
    main()
