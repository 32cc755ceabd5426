"""The soak's interval delivery (conference/loadtest/soak.py): which sessions count in an interval."""

from __future__ import annotations

from conference.loadtest.soak import Sample, endpoint_counts, interval_delivery, server_sent


def _sample(
    at: float, received: dict[str, tuple[int, dict[str, int]]], sent: dict[str, dict[str, int]]
) -> Sample:
    return Sample(at_s=at, received=received, sent=sent)


def test_delivery_of_an_interval_is_the_difference_of_both_sides() -> None:
    before = _sample(0, {"a": (0, {"1": 100, "2": 50})}, {"a": {"1": 100, "2": 50}})
    after = _sample(60, {"a": (0, {"1": 1090, "2": 550})}, {"a": {"1": 1100, "2": 550}})
    figures = interval_delivery(before, after)
    assert figures["packets_sent"] == 1500 and figures["packets_received"] == 1490
    assert figures["delivery_ratio"] == round(1490 / 1500, 5)
    assert figures["left_out"] == []


def test_an_endpoint_that_rejoined_is_left_out_of_that_interval_only() -> None:
    first = _sample(0, {"a": (0, {"1": 10}), "b": (0, {"1": 10})}, {"a": {"1": 10}, "b": {"1": 10}})
    # b left and joined again: its counters restarted on both sides (generation 1).
    second = _sample(60, {"a": (0, {"1": 110}), "b": (1, {"1": 5})}, {"a": {"1": 110}, "b": {"1": 5}})
    third = _sample(120, {"a": (0, {"1": 210}), "b": (1, {"1": 95})}, {"a": {"1": 210}, "b": {"1": 105}})
    one = interval_delivery(first, second)
    assert one["left_out"] == ["b"] and one["packets_sent"] == 100 and one["delivery_ratio"] == 1.0
    two = interval_delivery(second, third)
    assert two["left_out"] == [] and two["packets_sent"] == 200 and two["packets_received"] == 190


def test_a_server_session_replaced_behind_the_endpoint_is_not_counted_as_loss() -> None:
    before = _sample(0, {"a": (0, {"1": 500})}, {"a": {"1": 500}})
    after = _sample(60, {"a": (0, {"1": 900})}, {"a": {"1": 30}})  # the server's counter restarted
    figures = interval_delivery(before, after)
    assert figures["packets_sent"] == 0 and figures["delivery_ratio"] is None


def test_counts_are_read_from_the_workers_and_the_servers_stats() -> None:
    received = endpoint_counts([{"endpoints": [{"identity": "v1", "generation": 2, "slots": {"0": 7}}]}])
    assert received == {"v1": (2, {"0": 7})}
    sent = server_sent({"per_session": {"council/v1": {"slots": {"0": {"packets": 9}, "1": {}}}}})
    assert sent == {"v1": {"0": 9, "1": 0}}
