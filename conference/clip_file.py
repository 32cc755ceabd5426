"""A prepared clip on disk: the RTP payloads of a transcoded film with their timestamps, so playing
it into a meeting costs no encoding (``conference.clip_player``). Written once at upload by the
transcoder (``recorder.clips``), read here and nowhere else.

Layout of ``packets.bin``: ``PCL1``, a u32 length and a JSON header (codecs, clocks, picture size,
duration), then records in play order (by time): kind (0 video, 1 audio; for audio the upper 7 bits
are the frame's RFC 6464 level, -dBov, measured before encoding), flags (``FRAME_START``,
``FRAME_END``, ``KEYFRAME``), the timestamp in the kind's clock from the clip's start (u32), the
payload length (u16) and the payload (a VP8 partition chunk without its RTP descriptor, or one
Opus frame).
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import tempfile
from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

MAGIC = b"PCL1"
VIDEO, AUDIO = 0, 1
FRAME_START, FRAME_END, KEYFRAME = 1, 2, 4
VIDEO_CLOCK, AUDIO_CLOCK = 90_000, 48_000
MAX_PAYLOAD = 1200  # bytes of VP8 per packet: with headers and SRTP well under a 1280-byte MTU
_RECORD = struct.Struct("!BBIH")


class ClipFileError(ValueError):
    """Not a prepared clip, or a damaged one."""


def vp8_chunks(frame: bytes, size: int = MAX_PAYLOAD) -> list[bytes]:
    """A VP8 frame cut into equal-ish packet payloads of at most ``size`` bytes (RFC 7741 §4)."""
    count = max(1, -(-len(frame) // size))
    step = max(1, -(-len(frame) // count))
    return [frame[i : i + step] for i in range(0, len(frame), step)] or [b""]


class ClipWriter:
    """Collects video frames and audio frames (each in its own time order) and writes them merged
    in play order. Each kind is spooled to a temporary file, so a long film never sits in memory."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.header = dict(header)
        # Closed by finish() or abort(), which the transcoder always reaches.
        self._spools: list[BinaryIO] = [
            tempfile.TemporaryFile(dir=path.parent)  # noqa: SIM115
            for _ in (VIDEO, AUDIO)
        ]
        self._last = [-1, -1]

    def video_frame(self, timestamp: int, keyframe: bool, frame: bytes) -> None:
        chunks = vp8_chunks(frame)
        last = len(chunks) - 1
        for n, chunk in enumerate(chunks):
            flags = (FRAME_START if n == 0 else 0) | (FRAME_END if n == last else 0)
            self._write(VIDEO, flags | (KEYFRAME if keyframe else 0), timestamp, chunk)

    def audio_frame(self, timestamp: int, frame: bytes, level: int = 127) -> None:
        self._write(AUDIO, FRAME_START | FRAME_END, timestamp, frame, level)

    def _write(self, kind: int, flags: int, timestamp: int, payload: bytes, level: int = 127) -> None:
        if timestamp < self._last[kind]:
            raise ValueError("frames of one kind must come in time order")
        self._last[kind] = timestamp
        kind_byte = kind | (min(127, max(0, level)) << 1) if kind == AUDIO else kind
        self._spools[kind].write(_RECORD.pack(kind_byte, flags, timestamp, len(payload)) + payload)

    def finish(self) -> None:
        """Merge both kinds by time into ``path`` (written aside, then renamed)."""
        head = json.dumps(self.header).encode()
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".packets-")
        with os.fdopen(fd, "wb") as out:
            out.write(MAGIC + struct.pack("!I", len(head)) + head)
            readers = [_records(spool) for spool in self._spools]
            current = [next(r, None) for r in readers]
            clocks = (VIDEO_CLOCK, AUDIO_CLOCK)
            while True:
                live = [k for k in (VIDEO, AUDIO) if current[k] is not None]
                if not live:
                    break
                kind = min(live, key=lambda k: current[k][0] / clocks[k])  # type: ignore[index]
                out.write(current[kind][1])  # type: ignore[index]
                current[kind] = next(readers[kind], None)
        for spool in self._spools:
            spool.close()
        os.replace(tmp, self.path)

    def abort(self) -> None:
        for spool in self._spools:
            spool.close()


def _records(spool: BinaryIO) -> Any:
    spool.seek(0)
    while True:
        head = spool.read(_RECORD.size)
        if len(head) < _RECORD.size:
            return
        _, _, timestamp, length = _RECORD.unpack(head)
        yield timestamp, head + spool.read(length)


@dataclass(slots=True)
class PreparedClip:
    """A prepared clip mapped into memory, with an index for pacing and seeking: per record its
    time (seconds from the start), kind, flags and where its payload lies."""

    header: dict[str, Any]
    data: mmap.mmap | bytes
    times: array  # float seconds
    kinds: bytes
    levels: bytes  # audio: RFC 6464 level; video: 127
    flags: bytes
    timestamps: array  # in the kind's clock
    offsets: array
    lengths: array
    keyframe_times: list[float]
    keyframe_records: list[int]

    @property
    def duration_s(self) -> float:
        return float(self.header.get("duration_s", self.times[-1] if self.times else 0.0))

    @property
    def has_audio(self) -> bool:
        return AUDIO in self.kinds

    def payload(self, i: int) -> bytes:
        start = self.offsets[i]
        return self.data[start : start + self.lengths[i]]

    def keyframe_at_or_before(self, at_s: float) -> int:
        """The record that starts the last keyframe at or before ``at_s`` (the first one if none)."""
        n = bisect_right(self.keyframe_times, at_s + 1e-6) - 1
        return self.keyframe_records[max(0, n)]

    def next_keyframe_after(self, record: int) -> int | None:
        n = bisect_left(self.keyframe_records, record + 1)
        return self.keyframe_records[n] if n < len(self.keyframe_records) else None

    @classmethod
    def load(cls, path: Path) -> PreparedClip:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                raise ClipFileError(f"{path} is not a prepared clip")
            data: mmap.mmap | bytes = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if data[:4] != MAGIC:
            raise ClipFileError(f"{path} is not a prepared clip")
        (head_len,) = struct.unpack_from("!I", data, 4)
        try:
            header = json.loads(data[8 : 8 + head_len])
        except ValueError:
            raise ClipFileError(f"{path} has a damaged header") from None
        times, timestamps, offsets, lengths = array("d"), array("I"), array("Q"), array("I")
        kinds, levels, flags = bytearray(), bytearray(), bytearray()
        key_times: list[float] = []
        key_records: list[int] = []
        pos = 8 + head_len
        clocks = (VIDEO_CLOCK, AUDIO_CLOCK)
        while pos < size:
            if pos + _RECORD.size > size:
                raise ClipFileError(f"{path} is truncated")
            kind_byte, flag, timestamp, length = _RECORD.unpack_from(data, pos)
            kind, level = kind_byte & 1, (kind_byte >> 1 if kind_byte & 1 else 127)
            pos += _RECORD.size
            if (kind == VIDEO and kind_byte) or pos + length > size:
                raise ClipFileError(f"{path} is damaged at byte {pos}")
            t = timestamp / clocks[kind]
            if kind == VIDEO and flag & KEYFRAME and flag & FRAME_START:
                key_times.append(t)
                key_records.append(len(times))
            times.append(t)
            timestamps.append(timestamp)
            offsets.append(pos)
            lengths.append(length)
            kinds.append(kind)
            levels.append(level)
            flags.append(flag)
            pos += length
        if not key_records:
            raise ClipFileError(f"{path} has no keyframe")
        return cls(
            header,
            data,
            times,
            bytes(kinds),
            bytes(levels),
            bytes(flags),
            timestamps,
            offsets,
            lengths,
            key_times,
            key_records,
        )

    def close(self) -> None:
        if isinstance(self.data, mmap.mmap):
            self.data.close()
