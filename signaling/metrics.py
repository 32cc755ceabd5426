"""``/metrics``: the server's figures in the Prometheus text format (``prometheus-client``).

Nothing is counted on the media path for this: at each scrape the figures the server keeps anyway
(the media core's counters and forwarding-delay histogram, the rooms in the store, the recorder's,
the public page's viewers) are read once and written out as metric families of a registry made for
that scrape. Authorised by the admin key (``Authorization: Bearer``), or served without it on a
separate address only (``metrics_listen``: e.g. an address the Prometheus host alone reaches).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

# Forwarding delay buckets, seconds: the target is p99 <= 5 ms (docs/performance.md).
DELAY_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)

_COUNTERS = (
    ("packets_in", "conference_packets_in", "RTP packets received from publishers"),
    ("bytes_in", "conference_bytes_in", "RTP bytes received from publishers"),
    ("packets_out", "conference_packets_out", "RTP packets sent to subscribers"),
    ("bytes_out", "conference_bytes_out", "RTP bytes sent to subscribers"),
    ("nacks_received", "conference_nacks_received", "NACKed packets asked for by subscribers"),
    ("nacks_answered", "conference_nacks_answered", "NACKed packets resent from the packet cache"),
    ("nacks_sent", "conference_nacks_sent", "packets the server NACKed towards publishers"),
    ("keyframe_requests_relayed", "conference_keyframe_requests_relayed", "PLI/FIR from subscribers"),
    ("keyframe_requests_sent", "conference_keyframe_requests_sent", "keyframe requests of the server"),
    ("reports_sent", "conference_receiver_reports_sent", "receiver reports sent to publishers"),
)


def delay_histogram(snapshot: dict[str, int]) -> tuple[list[tuple[str, float]], float]:
    """Cumulative Prometheus buckets (and the sum, seconds) from the core's delay histogram, whose
    keys are microseconds rounded down to two significant digits."""
    counts = [0] * (len(DELAY_BUCKETS_S) + 1)
    total_s = 0.0
    for key, n in snapshot.items():
        seconds = int(key) / 1e6
        total_s += seconds * n
        index = next((i for i, le in enumerate(DELAY_BUCKETS_S) if seconds < le), len(DELAY_BUCKETS_S))
        counts[index] += n
    buckets, running = [], 0
    for le, n in zip((*(str(b) for b in DELAY_BUCKETS_S), "+Inf"), counts, strict=True):
        running += n
        buckets.append((le, float(running)))
    return buckets, total_s


class Snapshot(Collector):
    """The figures read for one scrape, as metric families."""

    def __init__(self, figures: dict[str, Any]) -> None:
        self.figures = figures

    def collect(self) -> Iterator[Metric]:
        f = self.figures
        media = f.get("media") or {}
        node = GaugeMetricFamily("conference_node_info", "this server process", labels=["node", "pid"])
        node.add_metric([f["node"], str(os.getpid())], 1)
        yield node
        yield GaugeMetricFamily(
            "conference_node_draining",
            "1 while this node takes no new rooms (POST /api/nodes/{node}/drain)",
            value=1 if f.get("draining") else 0,
        )
        yield GaugeMetricFamily("conference_rooms", "rooms in the store", value=f["rooms"])
        yield GaugeMetricFamily(
            "conference_media_rooms", "rooms with media on this node", media.get("rooms", 0)
        )
        endpoints = GaugeMetricFamily(
            "conference_endpoints", "connected participants", labels=["role", "device"]
        )
        for (role, device), n in sorted(f["endpoints"].items()):
            endpoints.add_metric([role, device], n)
        yield endpoints
        for key, name, doc in _COUNTERS:
            if key in media:
                yield CounterMetricFamily(name, doc, value=media[key])
        snapshot = (media.get("forward_delay_us") or {}).get("histogram")
        if snapshot is not None:
            buckets, total = delay_histogram(snapshot)
            yield HistogramMetricFamily(
                "conference_forward_delay_seconds",
                "from a packet's arrival to its last subscriber's send",
                buckets=buckets,
                sum_value=total,
            )
        yield GaugeMetricFamily(
            "conference_remb_target_bits_per_second",
            "the video bitrate REMB asks publishers for (the cap)",
            value=f["remb_target"],
        )
        recorder = f.get("recorder") or {}
        yield GaugeMetricFamily(
            "conference_recordings_active", "recordings running", recorder.get("recording", 0)
        )
        yield GaugeMetricFamily(
            "conference_render_jobs", "render jobs queued or running", recorder.get("rendering", 0)
        )
        yield CounterMetricFamily(
            "conference_recording_bytes_written",
            "media bytes written to recordings",
            recorder.get("bytes_written", 0),
        )
        viewers = GaugeMetricFamily(
            "conference_live_viewers", "public viewers heard from lately", labels=["room"]
        )
        for room, n in sorted(f["viewers"].items()):
            viewers.add_metric([room], n)
        yield viewers


async def figures(app: web.Application) -> dict[str, Any]:
    from . import app as server  # the keys live there; it imports this module's setup
    from .public import SITE_KEY

    store = app[server.STORE_KEY]
    endpoints: dict[tuple[str, str], int] = {}
    names = await store.list_rooms()
    for name in names:
        state = await store.get(name)
        for p in state.participants.values() if state else ():
            if p.connected:
                key = (str(p.role), p.device)
                endpoints[key] = endpoints.get(key, 0) + 1
    recorder = app[server.RECORDING_KEY].service
    site: Any = app.get(SITE_KEY)
    viewers: dict[str, int] = {}
    if site is not None:
        now = time.time()
        viewers = {room: site.watching(room, None, now) for room in list(site.viewers)}
    return {
        "node": app[server.SETTINGS_KEY].node_id or socket.gethostname(),
        "draining": app[server.PLACEMENT_KEY].draining,
        "rooms": len(names),
        "endpoints": endpoints,
        "media": app[server.MEDIA_KEY].stats(),
        "recorder": recorder.stats() if recorder is not None else {},
        "remb_target": app[server.SETTINGS_KEY].publish_max_bitrate,
        "viewers": viewers,
    }


def exposition(collectors: Iterable[Collector]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry)


async def metrics_view(request: web.Request) -> web.Response:
    from . import app as server

    server.require_admin(request)
    body = exposition([Snapshot(await figures(request.app))])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def setup(app: web.Application) -> None:
    app.router.add_get("/metrics", metrics_view)


def open_metrics_app(main: web.Application) -> web.Application:
    """The app on ``metrics_listen``: ``/metrics`` of ``main`` without the admin key, nothing else."""

    async def view(request: web.Request) -> web.Response:
        body = exposition([Snapshot(await figures(main))])
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", view)
    return app
