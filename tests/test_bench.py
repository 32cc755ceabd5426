"""``conference bench``: a short real run (server, worker processes, endpoints) whose report must be
complete and sane; its speed is measured in docs/performance.md, not here."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conference.loadtest.bench import _process_cpu_seconds
from conference.loadtest.report import percentile

REQUIRED = [
    "endpoints",
    "duration_s",
    "server_cpu_cores",
    "server_rss_mb",
    "pps_in",
    "pps_out",
    "us_per_forwarded_packet",
    "forward_delay_ms",
    "delivery_ratio",
    "join_ms",
    "switch_ms",
    "server_decoded_frames",
]


def test_percentile_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([5.0], 99) == 5.0
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile(list(reversed(values)), 99) == 99.0


def test_process_cpu_of_this_process() -> None:
    first = _process_cpu_seconds(os.getpid())
    assert first is not None and first > 0
    sum(i * i for i in range(300_000))  # burn a little CPU
    second = _process_cpu_seconds(os.getpid())
    assert second is not None and second >= first
    assert _process_cpu_seconds(2**22 + 12345) is None  # no such process


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--endpoints", "1"], "at least 2"),
        (["--duration", "0"], "--duration"),
        (["--url", "http://127.0.0.1:9"], "--admin-key"),
        (["--switch-every", "-1"], "--switch-every"),
        (["--server-pid", "1"], "only for a server given with --url"),
        (["--url", "http://127.0.0.1:9", "--admin-key", "k", "--server-pid", "4194000"], "no such process"),
        # This test's own process is not a server.
        (["--url", "http://127.0.0.1:9", "--admin-key", "k", "--server-pid", str(os.getpid())], "is not"),
    ],
)
def test_bad_arguments_are_refused(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "signaling", "bench", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert message in result.stderr


@pytest.mark.media
def test_short_benchmark_report_is_complete_and_sane(tmp_path: Path) -> None:
    report_file = tmp_path / "bench.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "signaling",
            "bench",
            "--endpoints",
            "3",
            "--duration",
            "4",
            "--switch-every",
            "1.8",
            "--settle",
            "1.5",
            "--json",
            str(report_file),
            "--cache-dir",
            str(tmp_path / "media"),
            # The soak's parts: a venue leaves and joins again, delivery per interval, the render.
            "--churn",
            "1",
            "--churn-every",
            "2.5",
            "--interval",
            "2",
            "--render",
            "--memory",
            # Recorded into a directory that does not exist yet.
            "--record",
            "--data-dir",
            str(tmp_path / "rec" / "meeting"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "server CPU" in result.stdout  # the table
    report = json.loads(report_file.read_text())
    for key in REQUIRED:
        assert key in report, key
    assert report["endpoints"] == 3 and report["joined"] == 3 and not report["join_failed"]
    assert 3.5 < report["duration_s"] < 20  # stretched only by a busy machine
    for key in ("server_cpu_cores", "server_rss_mb", "pps_in", "pps_out", "us_per_forwarded_packet"):
        value = report[key]
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, value)
    assert report["server_cpu_cores"] < 2.5  # a fraction of this machine's cores, not a wrong unit
    assert report["server_rss_mb"] > 20
    # Three endpoints publish at most ~110 packets/s each (fewer when the machine is busy: their
    # pacing drops frames rather than bursting); each packet goes to at most 3 program slots and
    # the chair's preview.
    assert 0 < report["pps_in"] < 600
    assert 0 < report["pps_out"] <= 4 * report["pps_in"] + 50
    assert 0 < report["forward_delay_ms"]["p50"] <= report["forward_delay_ms"]["p99"]
    assert 0 < report["delivery_ratio"] <= 1
    assert report["delivery"]["slots"] >= 6
    assert report["server_decoded_frames"] == 0
    # The load endpoints publish simulcast by default (three layers each; --no-simulcast: one).
    assert report["load_endpoints"]["simulcast_layers"] == [3]
    join = report["join_ms"]
    assert join["count"] == 3 and 0 < join["p50"] <= join["p95"] < 20_000
    switch = report["switch_ms"]
    assert switch["program_changes"] >= 2
    assert switch["count"] > 0 and 0 < switch["p50"] <= switch["p95"] < 20_000
    decoded = report["subscriber_decode"]
    assert decoded["endpoints"] == 2 and decoded["video_frames_decoded"] > 50
    assert decoded["decode_errors"] == 0
    # The server's own part of the switches, and the feedback it sent publishers.
    wait = report["server_switch_wait_ms"]
    assert wait["p50"] is not None and 0 < wait["p50"] <= wait["p95"] <= switch["p95"] + 100
    assert report["server_rtcp"]["reports_sent"] > 0
    # Recording on: its archive threads' CPU is measured, a part of the server's.
    assert 0 < report["archive_thread_cpu_cores"] < report["server_cpu_cores"]
    # Delivery per interval by sequence number: never above 1, and every subscriber counted in every
    # interval, the churned venue too (its old session up to its leaving, the new one from its first packet).
    intervals = report["intervals"]
    assert len(intervals) >= 2 and intervals[0]["from_s"] == 0
    assert all(i["packets_expected"] > 0 and 0.9 < i["delivery_ratio"] <= 1.0 for i in intervals), intervals
    assert all(i["subscribers"] == 3 for i in intervals), intervals
    churn = report["churn"]
    assert (
        churn["churns"] >= 1 and churn["endpoints_rejoined"] == churn["churns"] and not churn["rejoin_failed"]
    )
    # The server's memory (--memory): at the window's start, its end and after everyone left, and
    # what a collection and malloc_trim gave back then.
    points = report["memory"]["points"]
    assert set(points) == {"start", "end", "left"}, points
    assert all(p["rss_mb"] > 20 and p["anonymous_mb"] > 0 and p["gc_tracked"] > 1000 for p in points.values())
    assert points["left"]["trim"]["rss_after_mb"] > 20 and "unreachable" in points["left"]["collect"]
    assert report["memory"]["grown"]["start->left"]["objects"] is not None
    assert report["rejoin_ms"]["count"] + report["rejoin_ms"]["pending"] >= 1
    # The server's resources: the sessions' tasks and descriptors go when everyone has left.
    process = report["server_process"]
    assert process["window_start"]["tasks"] > process["after_leaving"]["tasks"]
    assert process["window_start"]["fds"] > process["after_leaving"]["fds"]
    # The recording stopped when the room emptied and its default render finished.
    render = report["render"]
    assert render["render_state"] == "done" and render["recording_s"] > 4, render
    # The meeting was recorded into --data-dir.
    listed = subprocess.run(
        [
            sys.executable,
            "-m",
            "signaling",
            "recordings",
            "list",
            "--json",
            "--data-dir",
            str(tmp_path / "rec" / "meeting"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    recordings = json.loads(listed.stdout)
    assert len(recordings) == 1 and recordings[0]["room"] == "bench"
    assert recordings[0]["duration_s"] > 4


def test_forwarding_delay_percentiles_of_a_window() -> None:
    """Two histogram snapshots give the percentiles of what happened between them only: the slow
    packets before the window (joins) do not count."""
    from conference.sfu.stats import DelayHistogram, window_percentile

    histogram = DelayHistogram()
    for _ in range(100):
        histogram.add(0.050)  # 50 ms during the joins
    before = histogram.snapshot()
    for _ in range(980):
        histogram.add(0.000019)  # 19 us
    for _ in range(20):
        histogram.add(0.002544)  # 2.544 ms
    after = histogram.snapshot()
    assert before == {"50000": 100}
    assert after["19"] == 980 and after["2500"] == 20
    assert window_percentile(before, after, 50) == 20.0  # bucket 19 us, upper bound
    assert window_percentile(before, after, 99) == 2600.0  # bucket 2,500-2,599 us
    assert histogram.percentile(99) == 50000.0  # since the start: the joins dominate
    assert window_percentile(after, after, 99) is None
