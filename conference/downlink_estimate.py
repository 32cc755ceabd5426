"""A subscriber's downlink estimate from its transport-cc feedback (pure code; the send side of
Google congestion control, much reduced): what the server sent on the leg (``SentPackets``, a
preallocated ring by transport-wide sequence number) matched with when the subscriber says each
packet arrived gives

- a delay-based rate: send groups of 5 ms, the one-way delay variation between groups smoothed
  and fitted by a least-squares trendline over the last 20 groups; a rising trend over an adaptive
  threshold is overuse (the rate drops to 0.85 x what was acked), a level one lets the rate grow
  8 %/s (never past 1.5 x acked + 10 kbit/s, so it follows what the link delivered);
- a loss-based bound (loss judged over at least 40 packets): over 10 % lost lowers it by half
  the loss (once per 300 ms), under 2 % lets it grow 5 %/s, in between it holds;
- the acked bitrate: bytes the subscriber received over the last 500 ms of arrivals.

The estimate is the lower of the two (as libwebrtc's GoogCcNetworkController, LiveKit pkg/sfu/bwe,
mediasoup's libwebrtc copy do, without probing or ALR).
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Iterable

_RING = 1 << 12
GROUP_US = 5_000  # packets sent within 5 ms form one group (libwebrtc's kBurstDeltaThresholdMs)
TREND_WINDOW = 20
SMOOTHING = 0.9
TREND_GAIN = 4.0
OVERUSE_TIME_US = 10_000
THRESHOLD_START_MS, THRESHOLD_MIN_MS, THRESHOLD_MAX_MS = 12.5, 6.0, 600.0
K_UP, K_DOWN = 0.0087, 0.039
DECREASE_FACTOR = 0.85
INCREASE_PER_S = 0.08
ACKED_WINDOW_US = 500_000
LOSS_HIGH, LOSS_LOW = 0.10, 0.02
LOSS_INCREASE_PER_S = 0.05
LOSS_HOLD_US = 300_000
LOSS_PACKETS = 40
LOSS_FLOOR = 0.5  # a loss cut never goes under this share of the acked rate
# An SFU's leg is application-limited: it sends what the layer choice picked, not what the estimate
# allows, and it does not probe. An estimate that grew 8 %/s from where it started would fall behind
# a publisher's own ramp (Chromium starts at ~300 kbit/s) and hold the subscriber on low layers, so
# with no cut (overuse, loss) for FOLLOW_HOLD_US the delay-based rate follows what the leg is sent
# up (``follow``): only what the feedback shows lowers it (as libwebrtc's AimdRateControl takes the
# measured throughput before its first overuse; LiveKit uses its estimate only once congested).
FOLLOW_HOLD_US = 2_000_000


class SentPackets:
    """Send time (us) and size of each transport-wide sequence number sent on one leg, and the
    leg's next sequence number (``next_seq``: every slot of the leg stamps from it, so the numbers
    run on across them; ``conference.sfu.rewriter`` in Python, ``_fastpath.c`` natively, alike)."""

    __slots__ = ("_sent", "_seqs", "_sizes", "next_seq", "stamped")

    def __init__(self, first_seq: int = 0) -> None:
        self._sent = array("q", bytes(8 * _RING))
        self._sizes = array("i", bytes(4 * _RING))
        self._seqs = array("i", [-1]) * _RING
        self.next_seq = first_seq & 0xFFFF
        self.stamped = 0  # packets stamped so far

    def stamp(self, now: float, size: int) -> int:
        """The next sequence number for a packet of ``size`` bytes sent at ``now`` (seconds),
        noted as sent; the caller wrote ``next_seq`` into the packet before."""
        seq = self.next_seq
        self.next_seq = (seq + 1) & 0xFFFF
        self.stamped += 1
        i = seq & (_RING - 1)
        self._sent[i], self._sizes[i], self._seqs[i] = int(now * 1e6), size, seq
        return seq

    def add(self, seq: int, send_us: int, size: int) -> None:
        i = seq & (_RING - 1)
        self._sent[i], self._sizes[i], self._seqs[i] = send_us, size, seq & 0xFFFF

    def get(self, seq: int) -> tuple[int, int] | None:
        i = seq & (_RING - 1)
        if self._seqs[i] != seq & 0xFFFF:
            return None
        return self._sent[i], self._sizes[i]


class DownlinkEstimate:
    """One subscriber leg's estimate in bit/s (``bitrate``), updated per feedback packet."""

    def __init__(self, start_bps: int = 1_000_000, min_bps: int = 50_000, max_bps: int = 10_000_000) -> None:
        self.min_bps, self.max_bps = min_bps, max_bps
        self.delay_bps = float(start_bps)
        self.loss_bps = float(max_bps)
        self.bitrate = start_bps
        self.acked_bps: float | None = None
        self.loss = 0.0
        self.overusing = False
        self._acked: deque[tuple[int, int]] = deque()  # (arrival us, bytes)
        self._acked_bytes = 0
        self._group: list[int] | None = None  # [first send, last send, last arrival]
        self._prev_group: list[int] | None = None
        self._accumulated = 0.0
        self._smoothed = 0.0
        self._points: deque[tuple[float, float]] = deque(maxlen=TREND_WINDOW)
        self._first_arrival: int | None = None
        self._deltas = 0
        self._threshold = THRESHOLD_START_MS
        self._overuse_since: int | None = None
        self._last_trend = 0.0
        self._last_update_us: int | None = None
        self._last_threshold_us: int | None = None
        self._loss_decreased_us = -(1 << 62)
        self._delay_decreased_us = -(1 << 62)
        self.overuse_cuts = 0  # how often the delay-based rate and the loss bound were cut
        self.loss_cuts = 0
        self._loss_counts = [0, 0]  # received, lost since the loss was last judged
        self._loss_updated_us: int | None = None

    def feedback(self, now_us: int, packets: Iterable[tuple[int, int | None, int]]) -> int:
        """``packets``: (send us, arrival us or None: lost, bytes) of what one feedback reported,
        in sequence order. Returns the new estimate."""
        received = lost = 0
        for send_us, arrival_us, size in packets:
            if arrival_us is None:
                lost += 1
                continue
            received += 1
            self._on_arrival(send_us, arrival_us, size)
        elapsed = 0.0 if self._last_update_us is None else (now_us - self._last_update_us) / 1e6
        self._last_update_us = now_us
        elapsed = min(elapsed, 1.0)
        # Loss over at least LOSS_PACKETS packets: one feedback of a slow leg covers two or three.
        self._loss_counts[0] += received
        self._loss_counts[1] += lost
        total = self._loss_counts[0] + self._loss_counts[1]
        if total >= LOSS_PACKETS:
            self.loss = self._loss_counts[1] / total
            self._loss_counts = [0, 0]
            self._update_loss(now_us - self._loss_updated_us if self._loss_updated_us is not None else 0)
            self._loss_updated_us = now_us
        self._update_delay(elapsed)
        self.bitrate = int(max(self.min_bps, min(self.max_bps, self.delay_bps, self.loss_bps)))
        return self.bitrate

    def follow(self, sending_bps: int, now_us: int) -> int:
        """The leg is being sent ``sending_bps``: the estimate rises to it unless the link showed
        congestion (a cut for overuse or loss within FOLLOW_HOLD_US, overuse building, or loss over
        LOSS_LOW). Returns the estimate."""
        cut = max(self._delay_decreased_us, self._loss_decreased_us)
        if (
            sending_bps > self.bitrate
            and not self.overusing
            and self._overuse_since is None
            and self.loss < LOSS_LOW
            and now_us - cut >= FOLLOW_HOLD_US
        ):
            wanted = float(min(sending_bps, self.max_bps))
            self.delay_bps = max(self.delay_bps, wanted)
            self.loss_bps = max(self.loss_bps, wanted)
            self.bitrate = int(max(self.min_bps, min(self.max_bps, self.delay_bps, self.loss_bps)))
        return self.bitrate

    # --- acked bitrate and delay groups ---

    def _on_arrival(self, send_us: int, arrival_us: int, size: int) -> None:
        acked = self._acked
        acked.append((arrival_us, size))
        self._acked_bytes += size
        while acked and acked[0][0] < arrival_us - ACKED_WINDOW_US:
            self._acked_bytes -= acked.popleft()[1]
        span = arrival_us - acked[0][0]
        if span >= ACKED_WINDOW_US // 2:
            self.acked_bps = self._acked_bytes * 8 / (span / 1e6)
        group = self._group
        if group is None or send_us - group[0] > GROUP_US:
            if group is not None:
                self._close_group(group)
            self._group = [send_us, send_us, arrival_us]
        else:
            group[1] = max(group[1], send_us)
            group[2] = max(group[2], arrival_us)

    def _close_group(self, group: list[int]) -> None:
        prev, self._prev_group = self._prev_group, group
        if prev is None:
            return
        variation_ms = ((group[2] - prev[2]) - (group[1] - prev[1])) / 1000
        if self._first_arrival is None:
            self._first_arrival = group[2]
        self._deltas += 1
        self._accumulated += variation_ms
        self._smoothed = SMOOTHING * self._smoothed + (1 - SMOOTHING) * self._accumulated
        self._points.append(((group[2] - self._first_arrival) / 1000, self._smoothed))
        self._detect(group[2], variation_ms)

    def _detect(self, now_us: int, variation_ms: float) -> None:
        points = self._points
        if len(points) < TREND_WINDOW:
            return
        mean_x = sum(x for x, _ in points) / len(points)
        mean_y = sum(y for _, y in points) / len(points)
        den = sum((x - mean_x) ** 2 for x, _ in points)
        slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / den if den else 0.0
        trend = slope * min(self._deltas, 60) * TREND_GAIN
        if trend > self._threshold:
            if self._overuse_since is None:
                self._overuse_since = now_us
            if now_us - self._overuse_since >= OVERUSE_TIME_US and trend >= self._last_trend:
                self.overusing = True
        else:
            self._overuse_since = None
            self.overusing = False
        self._last_trend = trend
        # The adaptive threshold (libwebrtc's OveruseDetector::UpdateThreshold).
        if abs(trend) < self._threshold + 15 and self._last_threshold_us is not None:
            k = K_DOWN if abs(trend) < self._threshold else K_UP
            dt_ms = min((now_us - self._last_threshold_us) / 1000, 100.0)
            self._threshold += k * (abs(trend) - self._threshold) * dt_ms
            self._threshold = max(THRESHOLD_MIN_MS, min(THRESHOLD_MAX_MS, self._threshold))
        self._last_threshold_us = now_us

    # --- rates ---

    def _update_delay(self, elapsed: float) -> None:
        acked = self.acked_bps
        if self.overusing and acked is not None:
            # Once per overuse episode's feedback: the rate drops under what got through.
            self.delay_bps = min(self.delay_bps, DECREASE_FACTOR * acked)
            self._delay_decreased_us = self._last_update_us or 0
            self.overuse_cuts += 1
            self._overuse_since = None
            self.overusing = False
            return
        grown = self.delay_bps * (1 + INCREASE_PER_S) ** elapsed
        if acked is not None:
            grown = min(grown, max(self.delay_bps, 1.5 * acked + 10_000))
        self.delay_bps = grown

    def _update_loss(self, elapsed_us: int) -> None:
        elapsed = min(elapsed_us / 1e6, 1.0)
        base = self.acked_bps if self.acked_bps is not None else self.delay_bps
        if self.loss > LOSS_HIGH:
            if (
                self._last_update_us is not None
                and self._last_update_us - self._loss_decreased_us < LOSS_HOLD_US
            ):
                return  # once per 300 ms, as libwebrtc: the feedback after a cut still shows its loss
            self._loss_decreased_us = self._last_update_us or 0
            self.loss_cuts += 1
            self.loss_bps = min(self.loss_bps, base) * (1 - 0.5 * self.loss)
            if self.acked_bps is not None:
                # An SFU's leg steps down at the next keyframes, a few hundred ms after a cut, so
                # the loss goes on over several cuts; what got through is still the link's rate.
                self.loss_bps = max(self.loss_bps, LOSS_FLOOR * self.acked_bps)
        elif self.loss < LOSS_LOW:
            self.loss_bps = self.loss_bps * (1 + LOSS_INCREASE_PER_S) ** elapsed
            if self.acked_bps is not None:
                self.loss_bps = min(
                    self.loss_bps,
                    max(self.loss_bps / (1 + LOSS_INCREASE_PER_S), 1.5 * self.acked_bps + 10_000),
                )
