"""The downlink estimate (conference/downlink_estimate.py) against a simulated link: a sender paced
at the estimate, a bottleneck queue at the link's rate with a 100 ms drop-tail (as `tc tbf latency
100ms`), random loss, and transport feedback every 50 ms of what arrived; the feedback goes through
twcc.encode_feedback / parse_feedback and SentPackets as a subscriber's would."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

from conference.downlink_estimate import DownlinkEstimate, SentPackets
from conference.sfu.twcc import encode_feedback, parse_feedback

PACKET = 1200


def simulate(
    rate_bps: int,
    seconds: float,
    loss: float = 0.0,
    start_bps: int = 300_000,
    seed: int = 1,
    app_bps: Callable[[float], int] | None = None,
) -> list[tuple[float, int]]:
    """The estimate each second: (time s, bit/s). ``app_bps``: the sender is application-limited
    (an SFU's leg: what the layer choice picked, t s -> bit/s) and tells the estimate (``follow``)."""
    rng = random.Random(seed)
    estimate = DownlinkEstimate(start_bps=start_bps)
    sent = SentPackets()
    now = 0  # us
    link_free = 0
    seq = 0
    in_flight: list[tuple[int, int | None]] = []  # (seq, arrival us or None)
    next_feedback = 50_000
    feedback_count = 0
    out: list[tuple[float, int]] = []
    end = int(seconds * 1e6)
    while now < end:
        sent.add(seq, now, PACKET)
        serialise = PACKET * 8 * 1_000_000 // rate_bps
        start = max(now, link_free)
        if start - now > 100_000 or rng.random() < loss:
            in_flight.append((seq, None))
        else:
            link_free = start + serialise
            in_flight.append((seq, link_free + 20_000))
        seq = (seq + 1) & 0xFFFF
        pace = estimate.bitrate if app_bps is None else app_bps(now / 1e6)
        now += max(PACKET * 8 * 1_000_000 // pace, 500)
        while now >= next_feedback:
            reported = [p for p in in_flight if p[1] is None or p[1] <= next_feedback]
            # what has arrived, and the losses before the last arrival
            arrived = [i for i, p in enumerate(in_flight) if p[1] is not None and p[1] <= next_feedback]
            if arrived:
                cut = arrived[-1] + 1
                reported, in_flight = in_flight[:cut], in_flight[cut:]
                first = next(i for i, p in enumerate(reported) if p[1] is not None)
                reported = reported[first:]
                packet, covered = encode_feedback(
                    1, 2, reported[0][0], feedback_count, [a for _, a in reported]
                )
                feedback_count += 1
                assert covered == len(reported)
                _, entries = parse_feedback(packet)
                packets = []
                for s, arrival in entries:
                    send_size = sent.get(s)
                    assert send_size is not None
                    packets.append((send_size[0], arrival, send_size[1]))
                if app_bps is not None:
                    estimate.follow(app_bps(next_feedback / 1e6), next_feedback)
                estimate.feedback(next_feedback, packets)
            if next_feedback % 1_000_000 == 0:
                out.append((next_feedback / 1e6, estimate.bitrate))
            next_feedback += 50_000
    return out


def test_a_link_capped_at_1_mbit_converges_near_it() -> None:
    series = simulate(1_000_000, 40)
    late = [bps for t, bps in series if t >= 20]
    assert all(600_000 <= bps <= 1_250_000 for bps in late), series
    assert sum(late) / len(late) >= 750_000, series


def test_a_clean_link_rises() -> None:
    series = simulate(20_000_000, 20)
    assert series[-1][1] > 1_000_000, series
    assert all(b >= a for (_, a), (_, b) in itertools.pairwise(series)), series


def test_loss_over_10_percent_lowers() -> None:
    series = simulate(20_000_000, 10, loss=0.2, start_bps=2_000_000)
    assert series[-1][1] < 1_000_000, series


def test_sent_packets_forget_what_the_ring_overwrote() -> None:
    sent = SentPackets()
    sent.add(5, 100, 1200)
    assert sent.get(5) == (100, 1200)
    sent.add(5 + 4096, 200, 900)
    assert sent.get(5) is None and sent.get(5 + 4096) == (200, 900)
    assert sent.get(6) is None


def ramp(t: float) -> int:
    """A publisher's browser ramping up as its own estimate grows: 300 kbit/s to 1.5 Mbit/s in 5 s."""
    return int(300_000 + min(t, 5.0) / 5.0 * 1_200_000)


def test_an_application_limited_leg_on_a_clear_link_is_never_estimated_under_what_it_sends() -> None:
    series = simulate(20_000_000, 12, app_bps=ramp)
    assert all(bps >= ramp(t - 0.05) for t, bps in series), series
    assert series[-1][1] >= 1_500_000, series


def stepped_down(t: float) -> int:
    """1.5 Mbit/s, until the layer choice steps the leg down to 600 kbit/s at 6 s."""
    return 1_500_000 if t < 6 else 600_000


def test_an_application_limited_leg_over_its_link_is_cut_and_followed_back_after_a_hold() -> None:
    series = simulate(1_000_000, 16, app_bps=stepped_down)
    over = [bps for t, bps in series if 2 <= t < 6]
    # Over the link: cut under its rate (what the layer choice acts on), never followed back up.
    assert over and max(over) < 1_000_000, series
    # Stepped down under it: the loss ends and, FOLLOW_HOLD_US after the last cut, the estimate
    # follows the leg back up to what it is sent.
    assert all(bps >= 600_000 for t, bps in series if t >= 10), series
