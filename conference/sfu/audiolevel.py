"""The audio level of a publisher that does not send it: decoded from its Opus, as RFC 6464 levels.

Browsers put an RFC 6464 audio level (-dBov, 0 loudest .. 127 silence) in a header extension of
every audio packet, and the forwarder chooses the speakers from it without decoding anything. A
client that is not a browser may not send it (GStreamer's webrtcbin does only when asked, a
SIP gateway rarely does): without a level it would never be chosen as a speaker. For such a
publisher alone, the forwarder keeps the packets that came without a level and, once per speaker
tick, decodes them here and computes the level RFC 6464 would have carried. The per-packet cost is
one list append; decoding (~40 us per 20 ms packet, mono) happens in the tick, off the forwarding
path, and never for a publisher that sends the extension.
"""

from __future__ import annotations

import math

import av
import numpy as np

from .packet import RtpHeader

SILENCE = 127
# At most 1 s of 20 ms packets waits for a tick: a late tick measures what it holds, no more.
MAX_PENDING = 50


def dbov_level(samples: np.ndarray) -> int:
    """RFC 6464 level of float samples (full scale 1.0): the RMS in -dBov, rounded, 0..127."""
    count = samples.size
    if not count:
        return SILENCE
    mean_square = float(np.dot(samples, samples)) / count
    if mean_square <= 1e-13:  # below -127 dBov: digital silence
        return SILENCE
    return min(SILENCE, max(0, round(-10.0 * math.log10(mean_square))))


class OpusLevelMeter:
    """Measures one publisher's Opus stream: ``add`` per packet, ``measure`` per tick."""

    __slots__ = ("_decoder", "_pending", "decode_errors", "level", "packets_decoded")

    def __init__(self) -> None:
        self._decoder: av.AudioCodecContext | None = None
        self._pending: list[tuple[bytes, int, int]] = []
        self.level = SILENCE  # the last level measured (what forwarded packets carry meanwhile)
        self.packets_decoded = 0
        self.decode_errors = 0

    def add(self, data: bytes, header: RtpHeader) -> int:
        """Keep one packet for the next ``measure``; returns the level measured last."""
        pending = self._pending
        if len(pending) < MAX_PENDING:
            pending.append((data, header.payload_offset, header.payload_end))
        return self.level

    def discard(self) -> None:
        """Forget what is waiting (the publisher is muted: its level does not matter)."""
        self._pending.clear()

    def measure(self) -> list[int]:
        """Decode the packets kept since the last call; their levels, oldest first."""
        pending, self._pending = self._pending, []
        if not pending:
            return []
        decoder = self._decoder
        if decoder is None:
            decoder = self._decoder = av.CodecContext.create("opus", "r")  # type: ignore[assignment]
            decoder.layout = "mono"  # a level needs one channel: decoding to mono costs less
        levels: list[int] = []
        for data, start, end in pending:
            try:
                frames = decoder.decode(av.Packet(data[start:end]))
            except (av.FFmpegError, ValueError):
                self.decode_errors += 1
                continue
            self.packets_decoded += 1
            for frame in frames:
                levels.append(dbov_level(frame.to_ndarray().ravel()))
        if levels:
            self.level = levels[-1]
        return levels
