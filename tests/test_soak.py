"""The soak's interval delivery (conference/loadtest/soak.py): counted by sequence number, each packet in
exactly one interval whenever it arrived, sessions that churn counted where they were."""

from __future__ import annotations

import json

from conference.loadtest.soak import (
    SequenceTally,
    merge_intervals,
    sent_by_stream,
    sequence_delivery,
    server_streams,
    session_intervals,
)


def _stream(tally: SequenceTally, numbers: range | list[int]) -> None:
    for seq in numbers:
        tally.add(seq & 0xFFFF)


def test_an_interval_is_the_numbers_between_two_ticks() -> None:
    tally = SequenceTally()
    _stream(tally, range(100, 200))
    tally.mark(0)  # the window starts: what came before is not counted
    _stream(tally, [n for n in range(200, 300) if n not in (250, 251)])  # two lost
    tally.mark(1)
    _stream(tally, range(300, 400))
    tally.mark(2)
    assert tally.intervals() == {0: (100, 100), 1: (100, 98), 2: (100, 100)}


def test_a_late_packet_counts_in_its_own_interval_and_a_duplicate_once() -> None:
    tally = SequenceTally()
    _stream(tally, range(0, 10))
    tally.mark(0)
    _stream(tally, [n for n in range(10, 20) if n != 15])
    tally.mark(1)  # 15 has not come yet: with counters, interval 1 would read 9/10 and 2 read 11/10
    _stream(tally, [15, 15, 20, 21, 21, 22])  # 15 retransmitted (twice), 21 duplicated
    tally.mark(2)
    figures = tally.intervals()
    assert figures[1] == (10, 10) and figures[2] == (3, 3)


def test_numbers_that_wrap_around_and_arrive_out_of_order() -> None:
    tally = SequenceTally()
    _stream(tally, range(65530, 65536))
    tally.mark(0)
    _stream(tally, [0, 2, 1, 3, 65535 + 5, 6])  # 65535+5 is 4 after the wrap; 5 lost
    tally.mark(1)
    assert tally.intervals()[1] == (7, 6)
    assert tally.highest == 65536 + 6


def test_sessions_that_end_or_start_inside_an_interval_count_there() -> None:
    leaving, joining = SequenceTally(), SequenceTally()
    _stream(leaving, range(0, 50))
    leaving.mark(0)
    _stream(leaving, range(50, 80))
    leaving.mark(1)
    _stream(leaving, [n for n in range(80, 90) if n != 85])
    leaving.close(2)  # left (churn) between ticks 1 and 2
    _stream(joining, range(7000, 7020))  # its first packet: its numbering starts there
    joining.mark(2)
    _stream(joining, range(7020, 7040))
    joining.mark(3)
    assert leaving.intervals() == {0: (50, 50), 1: (30, 30), 2: (10, 9)}
    assert joining.intervals() == {2: (20, 20), 3: (20, 20)}
    never = SequenceTally()
    never.mark(0)
    never.close(1)
    assert never.intervals() == {}


def test_intervals_of_the_workers_are_merged_per_subscriber() -> None:
    # As the workers answer over JSON: interval numbers become strings.
    answers = [
        json.loads(json.dumps({"intervals": {1: {"venue-01": [100, 99], "chair": [50, 50]}, 2: {}}})),
        json.loads(json.dumps({"intervals": {1: {"venue-02": [100, 90]}, 2: {"venue-02": [10, 10]}}})),
    ]
    merged = merge_intervals(answers)
    figures = sequence_delivery([0.0, 60.0, 120.0], merged)
    assert [f["packets_expected"] for f in figures] == [250, 10]
    first = figures[0]
    assert first["packets_received"] == 239 and first["delivery_ratio"] == round(239 / 250, 5)
    assert first["worst_subscriber"] == {"identity": "venue-02", "ratio": 0.9}
    assert first["subscribers"] == 3 and (first["from_s"], first["to_s"]) == (0.0, 60.0)
    assert figures[1]["delivery_ratio"] == 1.0
    assert sequence_delivery([0.0, 5.0], {})[0]["delivery_ratio"] is None


def test_the_servers_numbers_bound_the_intervals_and_a_stalled_subscriber_counts() -> None:
    tally = SequenceTally()
    _stream(tally, range(1000, 1100))
    tally.mark(0)
    _stream(tally, range(1100, 1150))  # then nothing arrives any more: the subscriber's path died
    tally.mark(1)
    tally.mark(2)
    # The server sent on: 1099 by tick 0, 1199 by tick 1, 1299 by tick 2 (its own count since the start).
    sent = [(0, 1099, 100), (1, 1199, 200), (2, 1299, 300)]
    assert tally.intervals(sent) == {0: (100, 100), 1: (100, 50), 2: (100, 0)}
    # Without the server's numbers the stall would not show.
    assert 2 not in tally.intervals()


def test_the_servers_numbers_wrap_around_and_a_packet_after_its_tick_counts_in_its_interval() -> None:
    tally = SequenceTally()
    _stream(tally, range(65000, 65500))
    tally.mark(0)
    _stream(tally, [n for n in range(65500, 65536 + 100) if n != 65536 + 50])
    tally.mark(1)  # the server's reading follows the subscriber's mark: 30 more were sent meanwhile
    _stream(tally, [65536 + 50, *range(65536 + 100, 65536 + 200)])
    tally.mark(2)
    sent = [(0, 65499, 500), (1, (65536 + 129) & 0xFFFF, 665), (2, (65536 + 199) & 0xFFFF, 735)]
    figures = tally.intervals(sent)
    assert figures[1] == (36 + 130, 36 + 130) and figures[2] == (70, 70)


def test_a_stream_the_server_sent_that_never_arrived_and_a_session_that_left() -> None:
    leaving = SequenceTally()
    _stream(leaving, range(0, 40))
    leaving.mark(0)
    _stream(leaving, range(40, 60))
    leaving.close(1)  # left before tick 1: the server had no more readings of it
    joined = SequenceTally()
    _stream(joined, range(500, 530))
    joined.mark(1)
    sent = {
        "venue-01": {
            "11": [[0, 39, 40]],
            "22": [[1, 529, 30], [2, 600, 101]],  # the new session: 71 more by tick 2, none arrived
            "33": [[1, 99, 100], [2, 199, 200]],  # a stream no packet of reached the subscriber
        }
    }
    sums = session_intervals([("venue-01", {11: leaving}), ("venue-01", {22: joined})], sent)
    assert sums[1]["venue-01"] == [20 + 30 + 100, 20 + 30 + 0]
    assert sums[2]["venue-01"] == [71 + 100, 0]


def test_what_the_server_sent_is_read_from_its_stats() -> None:
    media = {
        "per_session": {
            "council/v1": {
                "slots": {"0": {"packets": 9, "ssrc": 11, "last_sequence": 8}, "1": {"ssrc": None}}
            },
            "council/v2": {"slots": {}},
        }
    }
    ticks = [server_streams(media), server_streams({"per_session": {}})]
    assert ticks[0] == {"v1": {11: (8, 9)}, "v2": {}}
    assert sent_by_stream(ticks) == {"v1": {"11": [[0, 8, 9]]}}
