"""Counters of the forwarding core and the delay histogram the stats API and the benchmark read."""

from __future__ import annotations

from dataclasses import dataclass, field


class DelayHistogram:
    """Forwarding delay per incoming packet: 1 us buckets up to 10 ms, then 1 ms buckets to 1 s.

    One list increment per packet, percentiles computed only when asked."""

    FINE = 10_000
    COARSE = 1_000

    def __init__(self) -> None:
        self.counts = [0] * (self.FINE + self.COARSE)
        self.total = 0
        self.max_us = 0.0

    def add(self, seconds: float) -> None:
        us = seconds * 1e6
        i = int(us)
        if i >= self.FINE:
            i = self.FINE + min(int(us / 1000) - 10, self.COARSE - 1)
        self.counts[i] += 1
        self.total += 1
        if us > self.max_us:
            self.max_us = us

    def snapshot(self) -> dict[str, int]:
        """Counts per bucket rounded down to two significant digits of microseconds (e.g. 2,544 us
        counts under "2500"), non-empty buckets only: small enough for the stats API, and two
        snapshots give the percentiles of the time between them (``window_percentile``)."""
        out: dict[str, int] = {}
        counts = self.counts
        for i in range(len(counts)):
            n = counts[i]
            if n:
                us = i if i < self.FINE else (i - self.FINE + 10) * 1000
                key = str(_two_digits(us))
                out[key] = out.get(key, 0) + n
        return out

    def percentile(self, p: float) -> float | None:
        if not self.total:
            return None
        rank = p / 100 * self.total
        seen = 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank and n:
                return float(i) if i < self.FINE else (i - self.FINE + 10) * 1000.0
        return self.max_us


def _two_digits(us: int) -> int:
    if us < 100:
        return us
    scale = 10 ** (len(str(us)) - 2)
    return us // scale * scale


def window_percentile(before: dict[str, int], after: dict[str, int], p: float) -> float | None:
    """The p-th percentile (us, a bucket's upper bound) of what two ``DelayHistogram.snapshot()``
    calls counted in between; None if nothing was counted."""
    counts = sorted((int(k), n - before.get(k, 0)) for k, n in after.items())
    counts = [(k, n) for k, n in counts if n > 0]
    total = sum(n for _, n in counts)
    if not total:
        return None
    rank = p / 100 * total
    seen = 0
    for key, n in counts:
        seen += n
        if seen >= rank:
            return float(_bucket_top(key))
    return float(_bucket_top(counts[-1][0]))


def _bucket_top(key: int) -> int:
    if key < 100:
        return key + 1
    return key + 10 ** (len(str(key)) - 2)


@dataclass(slots=True)
class Counters:
    """One backend's totals (``/api/stats``); each field is bumped on the per-packet path."""

    packets_in: int = 0
    bytes_in: int = 0
    packets_forwarded: int = 0  # incoming packets sent to at least one subscriber
    packets_dropped_muted: int = 0
    keyframe_requests_relayed: int = 0  # subscriber PLI/FIR received
    keyframe_requests_sent: int = 0  # PLI sent to publishers
    nacks_received: int = 0
    nacks_answered: int = 0
    nacks_answered_rtx: int = 0  # of them, retransmitted on the slot's RTX stream
    nacks_sent: int = 0  # sequence numbers asked for again from publishers (retries included)
    nacks_given_up: int = 0  # missing packets no longer asked for (each costs a keyframe request)
    reports_sent: int = 0  # RTCP RR (+REMB) sent to publishers
    transport_cc_feedback: int = 0  # transport-cc feedback packets sent to publishers
    # Subscribers' downlink budgets lowered (congestion: their losses, or a send-side estimate).
    downlink_limits: int = 0
    levels_decoded: int = 0  # audio packets without a level extension, decoded to measure one
    # Packets of a new stream (SSRC or payload type) refused: too many streams or changes too fast.
    stream_changes_refused: int = 0
    delay: DelayHistogram = field(default_factory=DelayHistogram)
    # A video slot's wait from being given a new source to switching on its keyframe.
    switch_wait: DelayHistogram = field(default_factory=DelayHistogram)
    # A publisher's answer to a keyframe request: from the first request after its last keyframe to
    # the next keyframe's first packet (round trip + the publisher's own delay; no coalescing here).
    keyframe_answer: DelayHistogram = field(default_factory=DelayHistogram)
