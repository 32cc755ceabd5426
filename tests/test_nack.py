"""The NACK scheduler (conference/sfu/nack.py) on a fake clock: reordering allowance, retries
spaced by the measured round trip, giving up (and only then a keyframe), keyframes and wrap."""

from __future__ import annotations

import pytest

from conference.sfu import nack as nk
from conference.sfu.nack import REORDERED, REPAIRED, UNKNOWN, NackScheduler
from conference.sfu.reception import ReceptionStats


def test_a_gap_is_asked_for_only_after_the_reordering_allowance() -> None:
    s = NackScheduler()
    s.lost(100, 2, 10.0)
    assert s.next_due == pytest.approx(10.0 + nk.REORDER_MIN_S)
    assert s.poll(10.005) == ([], 0)  # a reordered packet may still come
    assert s.arrived(101, 10.006) == REORDERED  # it did: never asked for
    due, given_up = s.poll(10.0 + nk.REORDER_MIN_S)
    assert (due, given_up) == ([100], 0)
    assert s.requests == 1


def test_observed_reordering_widens_the_allowance_and_is_forgotten() -> None:
    s = NackScheduler()
    s.set_round_trip(0.3)
    s.lost(1, 1, 0.0)
    assert s.arrived(1, 0.04) == REORDERED  # 40 ms late, before anyone asked
    allowance = s.reorder_allowance(0.04)
    assert allowance == pytest.approx(0.05)  # 1.25 x the longest recent reordering
    s.lost(5, 1, 0.05)
    assert s.poll(0.09) == ([], 0)  # 40 ms later: still inside the allowance
    assert s.poll(0.05 + allowance) == ([5], 0)
    # Bounded by half the round trip and REORDER_MAX_S, and decays back towards the minimum.
    s.lost(9, 1, 1.0)
    s.arrived(9, 1.5)
    assert s.reorder_allowance(1.5) == nk.REORDER_MAX_S
    assert s.reorder_allowance(1.5 + 10 * nk.REORDER_HALF_LIFE_S) == nk.REORDER_MIN_S


def test_retries_are_spaced_by_the_measured_round_trip() -> None:
    s = NackScheduler()
    s.set_round_trip(0.2)  # the transport's RTCP figure seeds it
    assert s.retry_interval == pytest.approx(0.2 + 2 * 0.1)
    # A repair of a packet asked for once is a round-trip sample (it overrides the seed).
    s.lost(10, 1, 0.0)
    assert s.poll(0.01) == ([10], 0)
    assert s.arrived(10, 0.13) == REPAIRED
    assert s.rtt_measured and s.rtt == pytest.approx(0.12)
    s.set_round_trip(0.05)  # RTCP does not override measured repairs (it is only a floor)
    assert s.rtt == pytest.approx(0.12)
    for i in range(30):  # a steady 120 ms: the variation shrinks, the retry tightens
        t = 1.0 + i
        s.lost(20 + i, 1, t)
        s.poll(t + 0.01)
        s.arrived(20 + i, t + 0.13)
    assert s.rtt == pytest.approx(0.12, abs=1e-6)
    assert 0.12 < s.retry_interval < 0.13
    # A second request waits one retry interval after the first, not a room tick, and a third one
    # more; then the interval doubles per unanswered request, up to BACKOFF_MAX times.
    s.lost(100, 1, 50.0)
    assert s.poll(50.01) == ([100], 0)
    retry = s.retry_interval
    assert s.poll(50.01 + retry - 0.001) == ([], 0)
    assert s.next_due == pytest.approx(50.01 + retry)
    assert s.poll(50.01 + retry) == ([100], 0)
    assert s.next_due == pytest.approx(50.01 + 2 * retry)
    # Karn: a repair after two requests that either could have caused leaves the estimate alone...
    rtt = s.rtt
    assert s.arrived(100, 50.01 + retry + rtt / 2) == REPAIRED and s.rtt == rtt
    # ... but one later than the last request by more than the estimate raises it.
    s.lost(200, 1, 60.0)
    s.poll(60.01)
    s.poll(60.01 + retry)
    s.arrived(200, 60.01 + retry + 0.3)
    assert s.rtt > rtt
    # The third request one interval after the second, the fourth two after the third.
    s.lost(300, 1, 70.0)
    retry = s.retry_interval
    for gap in (retry, retry, 2 * retry):
        asked = s.next_due if s.missing[300][2] else 70.01
        assert s.poll(asked) == ([300], 0)
        assert s.next_due == pytest.approx(asked + gap)


def test_a_late_original_is_reordering_not_a_repair_without_rtx() -> None:
    """A packet that comes 30 ms after its request on a 300 ms path was only reordered by more than
    the allowance: it must neither teach a 20 ms round trip nor keep the allowance at its minimum
    (measured at 150 +- 30 ms each way: ~90 % of the "repairs" were such originals, the estimate
    fell to tens of ms, its variation rose to 0.2 s and a second request waited 0.6 s)."""
    s = NackScheduler()
    s.set_round_trip(0.3)
    s.lost(1, 1, 0.0)
    assert s.poll(nk.REORDER_MIN_S) == ([1], 0)
    assert s.arrived(1, 0.04) == REORDERED
    assert not s.rtt_measured and s.rtt == pytest.approx(0.3)
    assert s.reorder_allowance(0.04) == pytest.approx(0.05)  # it learnt the 40 ms
    # An answer in a plausible time is a repair, and times the round trip.
    s.lost(2, 1, 1.0)
    asked = 1.0 + s.reorder_allowance(1.0)
    assert s.poll(asked) == ([2], 0)
    assert s.arrived(2, asked + 0.29) == REPAIRED
    assert s.rtt_measured and s.rtt == pytest.approx(0.29)


def test_with_rtx_only_the_rtx_stream_repairs() -> None:
    s = NackScheduler()
    s.set_round_trip(0.3)
    s.repairs_on_rtx = True
    s.lost(1, 2, 0.0)
    assert s.poll(nk.REORDER_MIN_S) == ([1, 2], 0)
    # Even 200 ms late (past half the round trip), an original on the main stream was reordered.
    assert s.arrived(1, 0.2) == REORDERED and not s.rtt_measured
    assert s.reorder_allowance(0.2) == nk.REORDER_MAX_S  # 1.25 x 200 ms, capped
    assert s.repaired(2, 0.31)  # the retransmission: a round-trip sample
    assert s.rtt_measured and s.rtt == pytest.approx(0.3)
    assert not s.repaired(2, 0.32)  # a second answer is no news
    assert s.arrived(2, 0.33) == UNKNOWN
    # A probe that resends a packet nobody asked for yet fills the gap but times nothing.
    s.lost(10, 1, 1.0)
    assert s.repaired(10, 1.001) and s.repairs == 1 and not s.missing


def test_reception_counts_an_rtx_repair_as_lost_on_the_wire() -> None:
    stats = ReceptionStats(90_000, track_missing=True)
    nack = stats.nack
    assert nack is not None
    nack.repairs_on_rtx = True
    stats.add(1000, 0, 0.0)
    stats.add(1003, 3000, 0.001)  # 1001, 1002 missing
    assert nack.poll(0.02) == ([1001, 1002], 0)
    assert not stats.add(1002, 3000, 0.05)  # late original: on the wire
    assert nack.repaired(1001, 0.3)  # the session takes it off the list, then hands it on
    assert not stats.add(1001, 3000, 0.3)
    assert (stats.expected, stats.received, stats.repaired) == (4, 3, 1)


def test_a_round_trip_estimate_that_is_too_small_recovers() -> None:
    """Seeded with 1 ms (RTCP measured before the path got longer, 100 ms now): the backoff lets
    every answer come back (nothing is given up), their lower bounds pull the estimate up, and the
    RTCP figure, once it follows the path, is a floor."""
    s = NackScheduler()
    s.set_round_trip(0.001)
    for n in range(30):
        t0 = n * 2.0
        s.lost(n, 1, t0)
        first_ask = None
        while True:  # events in time order: the polls, then the answer to the first request
            t = s.next_due
            if first_ask is not None and first_ask + 0.1 <= t:
                break
            due, given_up = s.poll(t)
            assert not given_up, n
            if due and first_ask is None:
                first_ask = t
        assert s.arrived(n, first_ask + 0.1) == REPAIRED
    assert 0.03 < s.rtt <= 0.1 and s.given_up == 0
    s.set_round_trip(0.1)
    assert s.rtt == pytest.approx(0.1) and s.retry_interval > 0.1
    s.set_round_trip(0.05)  # a floor only: repairs measured more
    assert s.rtt == pytest.approx(0.1)


def test_gives_up_after_max_tries_and_only_then_reports_it() -> None:
    s = NackScheduler()
    s.set_round_trip(0.05)
    s.lost(7, 1, 0.0)
    t, asked = 0.0, 0
    while True:
        t = s.next_due
        due, given_up = s.poll(t)
        if given_up:
            break
        assert due == [7]
        asked += 1
    assert asked == nk.MAX_TRIES and given_up == 1
    assert not s.missing and s.next_due == float("inf")
    assert s.arrived(7, t + 0.01) == UNKNOWN  # too late now: not a repair


def test_gives_up_on_a_packet_older_than_max_age() -> None:
    s = NackScheduler()
    s.set_round_trip(0.9)
    s.lost(7, 1, 0.0)
    assert s.poll(0.02) == ([7], 0)
    assert s.poll(nk.MAX_AGE_S + 0.01) == ([], 1)


def test_a_keyframe_makes_older_gaps_moot_and_a_burst_beyond_the_window_is_given_up() -> None:
    s = NackScheduler()
    s.lost(65530, 10, 0.0)  # across the wrap: 65530 .. 3
    s.keyframe(1)
    assert sorted(s.missing) == [1, 2, 3]
    s.reset()
    s.lost(0, nk.WINDOW - 10, 1.0)
    s.lost(nk.WINDOW, 20, 1.001)
    assert len(s.missing) == nk.WINDOW
    assert s.next_due == 1.001  # poll at once: the oldest were pushed out
    due, given_up = s.poll(1.001)
    assert given_up == 10 and due == []


def test_reception_stats_report_repaired_packets_as_lost_on_the_wire() -> None:
    stats = ReceptionStats(90_000, track_missing=True)
    nack = stats.nack
    assert nack is not None
    assert not stats.add(1000, 0, 0.0)
    assert stats.add(1003, 3000, 0.001)  # 1001, 1002 missing
    assert sorted(nack.missing) == [1001, 1002]
    assert not stats.add(1002, 3000, 0.002)  # reordered: it was on the wire, counts as received
    assert nack.poll(0.02) == ([1001], 0)
    assert not stats.add(1001, 3000, 0.1)  # the retransmission: lost on the wire all the same
    assert not stats.add(1001, 3000, 0.11)  # a duplicate counts for nothing
    assert (stats.expected, stats.received, stats.repaired) == (4, 3, 2)
    from aiortc.rtp import RtcpPacket

    from conference.sfu.rtcp import rtcp_receiver_report

    report = RtcpPacket.parse(rtcp_receiver_report(1, [stats.report_block(0xBB)]))[0].reports[0]
    assert report.packets_lost == 1 and report.fraction_lost == 256 // 4
    # Audio keeps no missing list: a late packet simply counts (RFC 3550).
    audio = ReceptionStats(48_000, track_missing=False)
    audio.add(10, 0, 0.0)
    audio.add(12, 1920, 0.04)
    audio.add(11, 960, 0.05)
    assert (audio.expected, audio.received) == (3, 3)
