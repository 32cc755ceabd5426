"""From a recorded track's packets back to media: encoded video frames and Opus packets, on the
wall clock. RTP and the VP8/H.264 payloads are read with the forwarding core's own parsers
(``conference.sfu.packet``, ``conference.sfu.payload``): one parser of each format in the project.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from conference.sfu.packet import parse_header
from conference.sfu.payload import annexb_is_keyframe, h264_annexb, vp8_payload

from .archive import Recording, TrackInfo


class Packet(NamedTuple):
    sequence: int
    timestamp: int
    ssrc: int
    marker: bool
    payload: bytes


def packets(
    records: Iterator[tuple[float, bytes]], payload_type: int, keep_padding: bool = False
) -> Iterator[tuple[float, Packet]]:
    """The recorded packets of one payload type (padding-only packets only with ``keep_padding``)."""
    for arrival, raw in records:
        header = parse_header(raw)
        if header is None or header.payload_type != payload_type:
            continue
        payload = raw[header.payload_offset : header.payload_end]
        if payload or keep_padding:
            yield (
                arrival,
                Packet(header.sequence, header.timestamp, header.ssrc, bool(header.marker), payload),
            )


class MediaClock:
    """Maps RTP timestamps of one stream to wall time (seconds since the epoch).

    The offset is the smallest (arrival - timestamp) seen, which removes network jitter; a jump of
    more than two seconds (the sender restarted its clock) re-anchors it."""

    def __init__(self, clock_rate: int) -> None:
        self.rate = clock_rate
        self._last: int | None = None
        self._unwrapped = 0
        self._offset: float | None = None

    def time_of(self, arrival: float, timestamp: int) -> float:
        if self._last is None:
            self._unwrapped = timestamp
        else:
            delta = (timestamp - self._last) & 0xFFFFFFFF
            if delta >= 0x80000000:
                delta -= 0x100000000
            self._unwrapped += delta
        self._last = timestamp
        media = self._unwrapped / self.rate
        offset = arrival - media
        if self._offset is None or offset < self._offset or offset - self._offset > 2.0:
            self._offset = offset
        return self._offset + media


@dataclass(slots=True)
class EncodedFrame:
    at: float
    data: bytes
    keyframe: bool
    # Packets or frames were lost just before this one: a delta frame here would decode to garbage.
    gap: bool = False


def video_frames(recording: Recording, track: TrackInfo) -> Iterator[EncodedFrame]:
    """Reassemble a video track's packets into encoded frames; incomplete frames are dropped."""
    codec = track.codec.lower()
    clock = MediaClock(track.clock_rate or 90000)
    pending: list[Packet] = []
    first_arrival = 0.0
    current_ts: int | None = None
    last_seq: int | None = None  # of the previous frame (or padding) packet
    lost = False

    def finish() -> EncodedFrame | None:
        nonlocal last_seq, lost
        seqs = sorted({p.sequence: p for p in pending}.items())
        ordered = [p for _, p in seqs]
        gap = lost or (last_seq is not None and (ordered[0].sequence - last_seq) & 0xFFFF != 1)
        last_seq = ordered[-1].sequence
        lost = True  # until this frame turns out whole
        for a, b in itertools.pairwise(ordered):
            if (b.sequence - a.sequence) & 0xFFFF != 1:
                return None  # a packet is missing
        parts = []
        try:
            for i, p in enumerate(ordered):
                if codec == "vp8":
                    descr, data = vp8_payload(p.payload)
                    if i == 0 and not (descr.start and descr.partition_id == 0):
                        return None
                else:
                    first, data = h264_annexb(p.payload)
                    if i == 0 and not first:
                        return None
                parts.append(data)
        except ValueError:
            return None
        frame = b"".join(parts)
        if not frame:
            return None
        key = (frame[0] & 0x01) == 0 if codec == "vp8" else annexb_is_keyframe(frame)
        lost = False
        return EncodedFrame(clock.time_of(first_arrival, ordered[0].timestamp), frame, key, gap)

    ssrc: int | None = None
    for arrival, packet in packets(recording.read_track(track.number), track.payload_type, True):
        if packet.ssrc != ssrc:
            # The publisher restarted its stream: new sequence numbers and a new timestamp base.
            if ssrc is not None:
                if pending and (done := finish()):
                    yield done
                pending, current_ts, last_seq, lost = [], None, None, True
            ssrc = packet.ssrc
            clock = MediaClock(track.clock_rate or 90000)
        if not packet.payload:
            # Padding (bandwidth probes) between frames uses up sequence numbers: not a loss.
            if not pending and last_seq is not None and (packet.sequence - last_seq) & 0xFFFF == 1:
                last_seq = packet.sequence
            continue
        if current_ts is not None and packet.timestamp != current_ts:
            done = finish()
            pending = []
            if done:
                yield done
        if not pending:
            first_arrival = arrival
        current_ts = packet.timestamp
        pending.append(packet)
        if packet.marker:
            done = finish()
            pending, current_ts = [], None
            if done:
                yield done
    if pending and (done := finish()):
        yield done


def opus_packets(recording: Recording, track: TrackInfo) -> Iterator[tuple[float, bytes]]:
    clock = MediaClock(48000)
    recent: deque[int] = deque(maxlen=64)
    ssrc: int | None = None
    for arrival, packet in packets(recording.read_track(track.number), track.payload_type):
        if packet.ssrc != ssrc:
            # The publisher restarted its stream: new sequence numbers and a new timestamp base.
            ssrc = packet.ssrc
            clock = MediaClock(48000)
            recent.clear()
        if packet.sequence in recent:
            continue  # a duplicate
        recent.append(packet.sequence)
        yield clock.time_of(arrival, packet.timestamp), packet.payload
