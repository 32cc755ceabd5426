"""The benchmark's report: figures from the server's counters and the endpoints' observations,
checked against the targets, as JSON and as a table."""

from __future__ import annotations

import math
import os
from typing import Any

from conference.layouts import get_layout
from conference.loadtest import memory
from conference.sfu.stats import window_percentile

# Targets of the issue at 50 endpoints (see docs/performance.md).
TARGETS = {
    "server_cpu_cores": ("<=", 0.7),
    "us_per_forwarded_packet": ("<=", 30.0),
    "forward_delay_ms.p99": ("<=", 5.0),
    "delivery_ratio": (">=", 0.995),
    "join_ms.p95": ("<=", 1500.0),
    "switch_ms.p95": ("<=", 500.0),
    "server_decoded_frames": ("==", 0),
}


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def layout_size(name: str) -> int:
    return get_layout(name).size


# --- the report ------------------------------------------------------------------------------


def _archive_cores(before: dict[str, Any], after: dict[str, Any], window: float) -> float | None:
    key = "archive_thread_cpu_s"
    first, last = (before.get("recorder") or {}).get(key), (after.get("recorder") or {}).get(key)
    if first is None or last is None or window <= 0:
        return None
    return round((last - first) / window, 4)


def _window_percentiles(
    before: dict[str, Any], after: dict[str, Any], key: str, ps: tuple[int, ...]
) -> dict[str, float | None] | None:
    """{"p50": us, ...} of what the backend's ``key`` histogram counted between two stats calls;
    None when the backend publishes no histogram."""
    first = (before.get(key) or {}).get("histogram")
    last = (after.get(key) or {}).get("histogram")
    if first is None or last is None:
        return None
    return {f"p{p}": window_percentile(first, last, p) for p in ps}


def _delta(after: dict[str, Any], before: dict[str, Any], key: str) -> float:
    return float(after.get(key) or 0) - float(before.get(key) or 0)


def _ms(value: Any) -> float | None:
    return None if value is None else round(float(value) * 1000, 1)


def build_report(
    *,
    args: dict[str, Any],
    endpoints: int,
    window: float,
    stats0: dict[str, Any],
    stats1: dict[str, Any],
    stats_final: dict[str, Any],
    cpu: tuple[float | None, float | None],
    rss_mb: float | None,
    results: list[dict[str, Any]],
    failed: dict[str, str],
    worker_cpu: tuple[float, float],
    program_changes: int,
) -> dict[str, Any]:
    packets_in = _delta(stats1, stats0, "packets_in")
    packets_out = _delta(stats1, stats0, "packets_out")
    cpu_s = None if None in cpu else cpu[1] - cpu[0]  # type: ignore[operator]
    delay = dict(stats1.get("forward_delay_us") or {})
    # Percentiles of the measured window only (joins and the settling time left out), when the
    # backend publishes its histogram; else what it reports since it started.
    windowed = _window_percentiles(stats0, stats1, "forward_delay_us", (50, 99))
    if windowed is not None:
        delay.update(windowed)
        delay["measured_from"] = f"{delay.get('measured_from')}, in the measured window"
    waits = _window_percentiles(stats0, stats1, "switch_wait_us", (50, 95)) or {"p50": None, "p95": None}
    switch_wait = {k: None if v is None else round(v / 1000, 1) for k, v in waits.items()}

    # Delivery: per subscriber and slot, received / what the server sent on that slot.
    sent_by_slot: dict[tuple[str, str], int] = {}
    for key, session in (stats_final.get("per_session") or {}).items():
        identity = key.split("/", 1)[-1]
        for mid, slot in (session.get("slots") or {}).items():
            sent_by_slot[(identity, mid)] = int(slot.get("packets") or 0)
    received = sent = 0
    ratios: list[float] = []
    worst: list[tuple[float, str, str, str, int, int]] = []
    for result in results:
        for slot in result["slots"]:
            server_sent = sent_by_slot.get((result["identity"], slot["mid"]))
            if not server_sent:
                continue
            sent += server_sent
            received += min(slot["packets"], server_sent)
            ratio = slot["packets"] / server_sent
            ratios.append(ratio)
            worst.append((ratio, result["identity"], slot["mid"], slot["role"], slot["packets"], server_sent))
    worst.sort()
    join = [r["join_s"] for r in results if r["join_s"] is not None]
    rejoin = [r["rejoin_s"] for r in results if r.get("rejoin_s") is not None]
    switches = [s for r in results for s in r["switch_s"]]
    sampled = [r for r in results if r.get("decode") == "all"]
    video_slots = [s for r in sampled for s in r["slots"] if s["kind"] == "video"]
    return {
        "endpoints": endpoints,
        "joined": len(results) - len([r for r in results if r["join_s"] is None]),
        "join_failed": failed,
        "duration_s": round(window, 2),
        "backend": stats1.get("backend"),
        "server_cpu_cores": None if cpu_s is None else round(cpu_s / window, 3),
        "server_rss_mb": None if rss_mb is None else round(rss_mb, 1),
        "pps_in": round(packets_in / window, 1),
        "pps_out": round(packets_out / window, 1),
        "mbps_in": round(_delta(stats1, stats0, "bytes_in") * 8 / window / 1e6, 2),
        "mbps_out": round(_delta(stats1, stats0, "bytes_out") * 8 / window / 1e6, 2),
        "us_per_forwarded_packet": (
            None if cpu_s is None or packets_out <= 0 else round(cpu_s * 1e6 / packets_out, 1)
        ),
        "forward_delay_ms": {
            "p50": None if delay.get("p50") is None else round(delay["p50"] / 1000, 3),
            "p99": None if delay.get("p99") is None else round(delay["p99"] / 1000, 3),
            "measured_from": delay.get("measured_from"),
        },
        "delivery_ratio": None if not sent else round(received / sent, 5),
        "delivery": {
            "packets_sent": sent,
            "packets_received": received,
            "slots": len(ratios),
            "worst_slot": None if not ratios else round(min(ratios), 4),
            "slots_below_99_5": sum(1 for r in ratios if r < 0.995),
            "worst_slots": [
                dict(zip(("ratio", "identity", "mid", "role", "received", "sent"), w, strict=True))
                for w in worst[:5]
            ],
        },
        "subscriber_decode": {
            "endpoints": len(sampled),
            "video_frames_decoded": sum(s["frames_decoded"] for s in video_slots),
            "video_frames_lost": sum(s["frames_lost"] for s in video_slots),
            "decode_errors": sum(s["decode_errors"] for r in results for s in r["slots"]),
            "audio_frames_decoded": sum(r["audio_frames_decoded"] for r in sampled),
        },
        "join_ms": {"p50": _ms(percentile(join, 50)), "p95": _ms(percentile(join, 95)), "count": len(join)},
        # --churn: the last rejoin of each endpoint that left and joined again.
        "rejoin_ms": {
            "p50": _ms(percentile(rejoin, 50)),
            "p95": _ms(percentile(rejoin, 95)),
            "count": len(rejoin),
            "pending": sum(1 for r in results if "rejoin_s" in r and r["rejoin_s"] is None),
        },
        "switch_ms": {
            "p50": _ms(percentile(switches, 50)),
            "p95": _ms(percentile(switches, 95)),
            "count": len(switches),
            "pending": sum(r["pending_switches"] for r in results),
            "program_changes": program_changes,
        },
        # CPU of the recorder's archive threads (part of server_cpu_cores) over the window: the cost
        # of recording beside forwarding, except the per-packet hand-over on the media path.
        "archive_thread_cpu_cores": _archive_cores(stats0, stats1, window),
        # RTCP the server handled in the window (keyframe requests, NACKs, reports to publishers).
        "server_rtcp": {
            key: int(_delta(stats1, stats0, key))
            for key in (
                "keyframe_requests_relayed",
                "keyframe_requests_sent",
                "nacks_received",
                "nacks_answered",
                "nacks_sent",
                "reports_sent",
            )
            if key in stats1
        },
        # Of the switch time, the part spent in the server waiting for the new source's keyframe.
        "server_switch_wait_ms": switch_wait,
        "server_decoded_frames": stats_final.get("decoded_frames"),
        "load_generator_cpu_cores": round((worker_cpu[1] - worker_cpu[0]) / window, 3),
        "machine": {"cpus": os.cpu_count(), "loadavg": list(os.getloadavg())},
        # What the load endpoints did beside forwarding: simulcast layers each publisher sent, and
        # the transport-cc feedback subscribers sent (0 while the server does not offer it).
        "load_endpoints": {
            "simulcast_layers": sorted({int(r.get("simulcast_layers") or 0) for r in results}),
            "transport_cc_feedback_sent": sum(int(r.get("transport_cc_feedback_sent") or 0) for r in results),
        },
        "command": "conference bench " + " ".join(_command_args(args)),
        **({"endpoint_reports": results} if args.get("details") else {}),
    }


def _command_args(args: dict[str, Any]) -> list[str]:
    shown = []
    for key in ("endpoints", "duration", "backend", "layout", "switch_every", "decode_sample", "speakers"):
        if args.get(key) is not None:
            shown.append(f"--{key.replace('_', '-')} {args[key]}")
    if args.get("no_simulcast"):
        shown.append("--no-simulcast")
    if args.get("record"):
        shown.append("--record")
    if args.get("live"):
        shown.append("--live")
    return shown


def _check(report: dict[str, Any], key: str) -> tuple[Any, str]:
    value: Any = report
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    op, target = TARGETS[key]
    if value is None:
        return value, "n/a"
    ok = {"<=": value <= target, ">=": value >= target, "==": value == target}[op]
    return value, "ok" if ok else "MISSED"


def format_table(report: dict[str, Any]) -> str:
    rows = [
        ("endpoints (joined)", f"{report['endpoints']} ({report['joined']})", ""),
        ("measured window", f"{report['duration_s']} s", ""),
        ("packets/s in / out", f"{report['pps_in']} / {report['pps_out']}", ""),
        ("Mbit/s in / out", f"{report['mbps_in']} / {report['mbps_out']}", ""),
        ("server peak RSS", f"{report['server_rss_mb']} MB", ""),
        ("load generator CPU", f"{report['load_generator_cpu_cores']} cores", ""),
    ]
    load = report.get("load_endpoints") or {}
    if load:
        rows.append(
            (
                "publishers' video layers / subscribers' transport-cc feedback",
                f"{load.get('simulcast_layers')} / {load.get('transport_cc_feedback_sent')} packets",
                "",
            )
        )
    for key, label, unit in (
        ("server_cpu_cores", "server CPU", " cores"),
        ("us_per_forwarded_packet", "server CPU per forwarded packet", " us"),
        ("forward_delay_ms.p99", "forwarding delay p99", " ms"),
        ("delivery_ratio", "delivery", ""),
        ("join_ms.p95", "join time p95", " ms"),
        ("switch_ms.p95", "switch time p95", " ms"),
        ("server_decoded_frames", "frames decoded by the server", ""),
    ):
        value, verdict = _check(report, key)
        op, target = TARGETS[key]
        rows.append((label, f"{value}{unit}", f"{verdict} (target {op} {target})"))
    rows.append(("forwarding delay p50", f"{report['forward_delay_ms']['p50']} ms", ""))
    rows.append(("join time p50", f"{report['join_ms']['p50']} ms", ""))
    rows.append(("switch time p50", f"{report['switch_ms']['p50']} ms ({report['switch_ms']['count']})", ""))
    if report.get("archive_thread_cpu_cores") is not None and "--record" in report["command"]:
        rows.append(("server CPU of the archive threads", f"{report['archive_thread_cpu_cores']} cores", ""))
    live = report.get("live")
    if live and live.get("measured"):
        rows.append(
            (
                "live-stream compositor (own process)",
                f"{live['cores']} cores, {live['fps_out']} fps out, {live['late_frames']} late frames",
                "",
            )
        )
    elif live is not None:
        rows.append(("live-stream compositor", "not measured (no figures from the server)", ""))
    wait = report.get("server_switch_wait_ms") or {}
    if wait.get("p50") is not None:
        rows.append(("  keyframe wait in server p50/p95", f"{wait['p50']} / {wait['p95']} ms", ""))
    decode = report["subscriber_decode"]
    rows.append(
        (
            "decoded at sampled subscribers",
            f"{decode['video_frames_decoded']} video frames, {decode['video_frames_lost']} lost, "
            f"{decode['decode_errors']} errors",
            "",
        )
    )
    rows += _soak_rows(report)
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    lines = [f"{report['command']}  (backend {report['backend']})"]
    lines += [f"  {a.ljust(width)}  {b.ljust(value_width)}  {c}".rstrip() for a, b, c in rows]
    return "\n".join(lines)


def _soak_rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Interval delivery, churn, the server's resources and the render (conference/loadtest/soak.py)."""
    rows: list[tuple[str, str, str]] = []
    intervals = report.get("intervals") or []
    if len(intervals) > 1:
        ratios = [i["delivery_ratio"] for i in intervals if i["delivery_ratio"] is not None]
        worst = min(ratios) if ratios else None
        verdict = "" if worst is None else ("ok" if worst >= 0.995 else "MISSED") + " (target >= 0.995)"
        rows.append((f"delivery per interval ({len(intervals)})", f"worst {worst}", verdict))
        for i in intervals:
            worst_one = i.get("worst_subscriber") or {}
            rows.append(
                (
                    f"  {i['from_s']:.0f}-{i['to_s']:.0f} s",
                    f"{i['delivery_ratio']} of {i.get('packets_expected')} "
                    f"(worst {worst_one.get('identity')} {worst_one.get('ratio')})",
                    "",
                )
            )
    churn = report.get("churn") or {}
    if churn.get("churns"):
        rows.append(
            (
                "churn (left and joined again)",
                f"{churn['endpoints_rejoined']} endpoints in {churn['churns']} churns, "
                f"{len(churn['rejoin_failed'])} failed; rejoin to first frame p95 "
                f"{(report.get('rejoin_ms') or {}).get('p95')} ms",
                "",
            )
        )
    failed = report.get("program_changes_failed") or {}
    if failed.get("count"):
        rows.append(("program changes failed", f"{failed['count']}: {failed['first'][0]}", "MISSED"))
    process = report.get("server_process") or {}
    for key in ("window_start", "window_end", "after_leaving"):
        figures = process.get(key)
        if figures:
            rows.append(
                (
                    f"server {key.replace('_', ' ')}",
                    f"RSS {figures.get('rss_mb')} MB, {figures.get('fds')} fds, "
                    f"{figures.get('tasks')} tasks, {figures.get('threads')} threads",
                    "",
                )
            )
    rows += memory.table_rows(report.get("memory") or {})
    render = report.get("render")
    if render:
        rows.append(
            (
                "recording render",
                f"{render['render_state']} in {render['render_s']} s "
                f"({render['recording_s']} s recorded, {render['tracks']} tracks)",
                "",
            )
        )
    return rows
