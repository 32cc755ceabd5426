"""What a long ``conference bench`` run adds to the short one: delivery per interval (a minute by
default) rather than once at the end, the server process's resources at the window's start and end
and after everyone left, and the recording rendered end to end (``--render``).

Interval delivery compares, per subscriber and slot, what the endpoints received between two
samples with what the server says it sent on that slot meanwhile. An endpoint that left and joined
again in an interval (``--churn``) has new sessions with counters starting from zero on both sides:
it is left out of that interval and counted again from the next one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Sample:
    """Counters at one moment: endpoints' (identity -> (generation, mid -> packets)) and the
    server's (identity -> mid -> packets sent), plus the server process's resources."""

    at_s: float
    received: dict[str, tuple[int, dict[str, int]]]
    sent: dict[str, dict[str, int]]
    process: dict[str, Any] = field(default_factory=dict)


def server_sent(media_stats: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Packets the server sent per subscriber identity and slot (``GET /api/stats`` → media)."""
    out: dict[str, dict[str, int]] = {}
    for key, session in (media_stats.get("per_session") or {}).items():
        identity = key.split("/", 1)[-1]
        out[identity] = {
            mid: int(slot.get("packets") or 0) for mid, slot in (session.get("slots") or {}).items()
        }
    return out


def endpoint_counts(messages: list[dict[str, Any]]) -> dict[str, tuple[int, dict[str, int]]]:
    """The workers' ``counts`` answers merged: identity -> (generation, mid -> packets)."""
    return {
        e["identity"]: (int(e["generation"]), {str(k): int(v) for k, v in e["slots"].items()})
        for m in messages
        for e in m["endpoints"]
    }


def interval_delivery(before: Sample, after: Sample) -> dict[str, Any]:
    """Received over sent between two samples, for the sessions that lasted the whole interval."""
    received = sent = 0
    skipped: list[str] = []
    for identity, (generation, slots) in after.received.items():
        earlier = before.received.get(identity)
        if earlier is None or earlier[0] != generation:
            skipped.append(identity)
            continue
        server_after = after.sent.get(identity, {})
        server_before = before.sent.get(identity, {})
        for mid, packets in slots.items():
            sent_now = server_after.get(mid)
            if sent_now is None:
                continue
            sent_delta = sent_now - server_before.get(mid, 0)
            got = packets - earlier[1].get(mid, 0)
            if sent_delta < 0 or got < 0:  # a server session replaced without the endpoint knowing
                continue
            sent += sent_delta
            received += got
    return {
        "from_s": round(before.at_s, 1),
        "to_s": round(after.at_s, 1),
        "packets_sent": sent,
        "packets_received": received,
        # Packets in flight at a sample's moment count in the next interval: a ratio a hair above
        # 1 is possible, and the sum over all intervals is exact.
        "delivery_ratio": None if not sent else round(received / sent, 5),
        "left_out": sorted(skipped),
    }


def resources(process: dict[str, Any]) -> dict[str, Any]:
    """The figures of ``GET /api/stats`` → process that the soak reports."""
    return {
        k: process.get(k) for k in ("rss_mb", "fds", "tasks", "threads", "python_threads", "pool_threads")
    }


def render_figures(recording: dict[str, Any], started: float, finished: float | None) -> dict[str, Any]:
    """The recording and its default render as ``GET /api/recordings/{id}`` shows them."""
    renders = recording.get("renders") or []
    job = renders[0] if renders else {}
    return {
        "recording_id": recording.get("id"),
        "recording_s": recording.get("duration_s"),
        "size_bytes": recording.get("size_bytes"),
        "tracks": len(recording.get("tracks") or []),
        "render_state": job.get("state"),
        "render_s": None if finished is None else round(finished - started, 1),
        "render_bytes": job.get("size_bytes") or job.get("bytes"),
        "render_error": job.get("error"),
    }
