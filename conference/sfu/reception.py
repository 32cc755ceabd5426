"""What the server keeps of each incoming stream: RFC 3550 reception statistics (for receiver
reports; which packets are missing is ``nack.NackScheduler``) and the packet cache that answers
subscribers' NACKs."""

from __future__ import annotations

import struct

from .nack import REORDERED, NackScheduler

_REPORT_BLOCK = struct.Struct("!IIIIII")  # RFC 3550 6.4.1 report block


class PacketCache:
    """The last packets of one published stream by sequence number, to answer NACKs."""

    __slots__ = ("_mask", "_packets", "_sequences")

    def __init__(self, size: int = 1024) -> None:
        if size <= 0 or size & (size - 1) or size > 65536:
            raise ValueError("cache size must be a power of two up to 65536")
        self._mask = size - 1
        self._sequences = [-1] * size
        self._packets: list[bytes | None] = [None] * size

    def put(self, sequence: int, packet: bytes) -> None:
        i = sequence & self._mask
        self._sequences[i] = sequence
        self._packets[i] = packet

    def get(self, sequence: int) -> bytes | None:
        """The packet, or None if it never arrived or was overwritten."""
        i = sequence & self._mask
        if self._sequences[i] != sequence:
            return None
        return self._packets[i]


# --- reception statistics and feedback to a publisher -----------------------------------------------

MAX_DROPOUT = 3000  # RFC 3550 A.1: a jump further ahead than this is a restart, not loss


class ReceptionStats:
    """RFC 3550 reception statistics of one incoming stream (A.1 sequence tracking, A.3 loss, A.8
    jitter) for receiver reports, and, for video, the sequence numbers still missing (``nack``).

    Loss is reported as it happened on the wire: a packet that arrives only after it was asked for
    again (a retransmission: aiortc's peers and browsers here resend on the media SSRC) or twice
    does not count as received, so a publisher's loss-based estimate sees the loss its repairs hide.

    ``add`` runs per packet: a few integer operations, no allocation unless a packet is missing."""

    __slots__ = (
        "_expected_prior",
        "_jitter_q4",
        "_last_arrival",
        "_last_timestamp",
        "_received_prior",
        "base_seq",
        "clock_rate",
        "cycles",
        "fraction_lost",
        "max_seq",
        "nack",
        "received",
        "repaired",
    )

    def __init__(self, clock_rate: int, track_missing: bool) -> None:
        self.clock_rate = clock_rate
        self.nack = NackScheduler() if track_missing else None
        self.base_seq = -1
        self.max_seq = -1
        self.cycles = 0
        self.received = 0  # on the wire in time (RFC 3550's count minus repairs and duplicates)
        self.repaired = 0  # arrived only after a NACK, or duplicates
        self.fraction_lost = 0  # of the last report's interval, 0-255 (what the publisher's link lost)
        self._expected_prior = 0
        self._received_prior = 0
        self._jitter_q4 = 0
        self._last_arrival = 0
        self._last_timestamp = -1

    def add(self, seq: int, timestamp: int, now: float) -> bool:
        """Count one packet; True if it shows packets missing (the NACK timer is due sooner)."""
        self.received += 1
        max_seq = self.max_seq
        if max_seq < 0:
            self.base_seq = self.max_seq = seq
            self._last_timestamp = timestamp
            self._last_arrival = int(now * self.clock_rate)
            return False
        delta = (seq - max_seq) & 0xFFFF
        if delta == 0 or delta >= 0x8000:  # duplicate or late (maybe a retransmission)
            nack = self.nack
            if nack is not None and nack.arrived(seq, now) != REORDERED:
                self.received -= 1
                self.repaired += 1
            return False
        if seq < max_seq:
            self.cycles += 0x10000
        self.max_seq = seq
        if timestamp != self._last_timestamp:
            arrival = int(now * self.clock_rate)
            diff = abs((arrival - self._last_arrival) - ((timestamp - self._last_timestamp) & 0xFFFFFFFF))
            if diff < 0x80000000:
                self._jitter_q4 += diff - ((self._jitter_q4 + 8) >> 4)
            self._last_arrival = arrival
            self._last_timestamp = timestamp
        if delta == 1:
            return False
        nack = self.nack
        if nack is None:
            return False
        if delta > MAX_DROPOUT:
            nack.reset()
            return False
        nack.lost((max_seq + 1) & 0xFFFF, delta - 1, now)
        return True

    @property
    def extended_max(self) -> int:
        return self.cycles + max(self.max_seq, 0)

    @property
    def expected(self) -> int:
        return 0 if self.max_seq < 0 else self.extended_max - self.base_seq + 1

    @property
    def jitter(self) -> int:
        return self._jitter_q4 >> 4

    def report_block(self, ssrc: int, lsr: int = 0, dlsr: int = 0) -> bytes:
        """A 24-byte RTCP report block for ``ssrc``; ``lsr`` is the middle of the NTP time of the
        publisher's last sender report and ``dlsr`` the delay since it in 1/65536 s (0 and 0 when
        none was seen), from which the publisher computes the round-trip time."""
        expected = self.expected
        lost_total = max(-0x800000, min(expected - self.received, 0x7FFFFF))
        expected_interval = expected - self._expected_prior
        received_interval = self.received - self._received_prior
        self._expected_prior, self._received_prior = expected, self.received
        lost_interval = expected_interval - received_interval
        fraction = 0
        if expected_interval > 0 and lost_interval > 0:
            fraction = (lost_interval << 8) // expected_interval
        self.fraction_lost = min(fraction, 255)
        return _REPORT_BLOCK.pack(
            ssrc,
            (min(fraction, 255) << 24) | (lost_total & 0xFFFFFF),
            self.extended_max & 0xFFFFFFFF,
            self.jitter & 0xFFFFFFFF,
            lsr & 0xFFFFFFFF,
            dlsr & 0xFFFFFFFF,
        )
