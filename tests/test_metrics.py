"""``/metrics`` (signaling/metrics.py): the Prometheus text format behind the admin key, and a real
Prometheus from Debian, started here, scraping a real ``conference serve`` during a meeting of
aiortc endpoints: a PromQL query returns the packet rate."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from browser_util import ADMIN_KEY, SECRET, RunningServer, server_process, system_tool

from conference.loadtest.endpoint import Endpoint, EndpointConfig
from signaling.metrics import DELAY_BUCKETS_S, delay_histogram
from signaling.tokens import mint_token


def test_the_cores_delay_histogram_becomes_cumulative_prometheus_buckets() -> None:
    # Keys: microseconds rounded down to two significant digits (conference.sfu.stats).
    buckets, total = delay_histogram({"60": 10, "2500": 3, "120000": 1})
    as_dict = dict(buckets)
    assert as_dict["0.0001"] == 10  # 60 us < 0.1 ms
    assert as_dict["0.001"] == 10 and as_dict["0.005"] == 13  # 2.5 ms < 5 ms
    assert as_dict["0.1"] == 13 and as_dict["+Inf"] == 14  # 120 ms only in +Inf
    assert [b for b, _ in buckets] == [*(str(b) for b in DELAY_BUCKETS_S), "+Inf"]
    assert abs(total - (10 * 60e-6 + 3 * 2.5e-3 + 0.12)) < 1e-9


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers or {}) as r:
        return r.status, r.headers.get("Content-Type", ""), await r.text()


def _prometheus() -> str:
    return system_tool("prometheus", "prometheus")


@contextlib.asynccontextmanager
async def prometheus(tmp: Path, target: str) -> AsyncIterator[str]:
    """Debian's Prometheus scraping ``target`` every second with the admin key; yields its URL."""
    port = _free_port()
    config = tmp / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: conference\n"
        f"    authorization: {{type: Bearer, credentials: '{ADMIN_KEY}'}}\n"
        f"    static_configs: [{{targets: ['{target}']}}]\n"
    )
    log = (tmp / "prometheus.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        _prometheus(),
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        log.close()


async def _query(prom: str, promql: str) -> list[dict[str, Any]]:
    """The query's result vector; empty while Prometheus is still starting."""
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{prom}/api/v1/query", params={"query": promql}) as r,
        ):
            if r.status != 200:
                return []
            data = await r.json()
    except aiohttp.ClientError:
        return []
    return list(data.get("data", {}).get("result", []))


async def _endpoint(server: RunningServer, identity: str, index: int, role: str = "venue") -> Endpoint:
    token = mint_token(SECRET, "council", identity, identity.title(), role, 3600)
    endpoint = Endpoint(
        EndpointConfig(
            url=server.url, token=token, identity=identity, index=index, decode="none", video_slots=1
        )
    )
    await endpoint.join()
    return endpoint


@pytest.mark.media
async def test_a_real_prometheus_scrapes_the_meetings_packet_rate(tmp_path: Path) -> None:
    async with server_process(tmp_path / "data", media=True) as server:
        # Behind the admin key: none or a participant's token is refused.
        status, _, _ = await _get(f"{server.url}/metrics")
        assert status == 401
        venue_token = mint_token(SECRET, "council", "x", "X", "venue", 600)
        status, _, _ = await _get(f"{server.url}/metrics", {"Authorization": f"Bearer {venue_token}"})
        assert status in (401, 403)

        endpoints = [await _endpoint(server, f"hall-{c}", i + 1) for i, c in enumerate("ab")]
        try:
            async with aiohttp.ClientSession() as http:
                await http.put(
                    f"{server.url}/api/rooms/council/program",
                    json={"layout": "side-by-side", "slots": ["hall-a", "hall-b"]},
                    headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                )
            status, kind, text = await _get(f"{server.url}/metrics", {"Authorization": f"Bearer {ADMIN_KEY}"})
            assert status == 200 and kind.startswith("text/plain"), (status, kind)
            assert 'conference_endpoints{device="venue",role="venue"} 2.0' in text, text[:2000]
            for name in (
                "conference_packets_in_total",
                "conference_forward_delay_seconds_bucket",
                "conference_rooms",
            ):
                assert name in text, name

            host_port = server.url.removeprefix("http://")
            async with prometheus(tmp_path, host_port) as prom:
                deadline = time.monotonic() + 60
                rate: list[dict[str, Any]] = []
                delay: list[dict[str, Any]] = []
                quantile = "histogram_quantile(0.99, rate(conference_forward_delay_seconds_bucket[20s]))"
                while time.monotonic() < deadline:
                    rate = await _query(prom, "rate(conference_packets_in_total[10s])")
                    delay = await _query(prom, quantile)
                    if rate and float(rate[0]["value"][1]) > 0 and delay and delay[0]["value"][1] != "NaN":
                        break
                    await asyncio.sleep(1)
                assert rate, "Prometheus returned no packet rate"
                packets_per_s = float(rate[0]["value"][1])
                # Two endpoints publishing camera and microphone: tens to hundreds of packets a second.
                assert 20 < packets_per_s < 2000, packets_per_s
                up = await _query(prom, "up")
                assert up and up[0]["value"][1] == "1"
                assert delay and 0 < float(delay[0]["value"][1]) <= 0.1, delay
        finally:
            for endpoint in endpoints:
                await endpoint.close()


async def test_metrics_on_their_own_address_need_no_key(tmp_path: Path) -> None:
    port = _free_port()
    async with server_process(
        tmp_path / "data", media=False, extra_args=["--metrics-listen", f"127.0.0.1:{port}"]
    ) as server:
        status, _, text = await _get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200 and "conference_node_info" in text
        assert "conference_node_draining 0.0" in text
        # Nothing else there: the API stays on the main port, behind its keys.
        status, _, _ = await _get(f"http://127.0.0.1:{port}/api/stats")
        assert status == 404
        assert (await _get(f"{server.url}/metrics"))[0] == 401
