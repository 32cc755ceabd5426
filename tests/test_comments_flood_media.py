"""The meeting's media while the public's limits answer 429 (issue 15): a real ``conference serve``
with media, two aiortc venues forwarding to each other, and a flooder in a process of its own
posting comments and likes as fast as it gets answers (one browser cookie, and clients without one)
until the limits refuse them with 429 and ``Retry-After``. Compared within the run, before the flood
and during it: the packets each venue receives a second, the longest pause in what it receives, the
server's WebSocket round trip (its loop's latency: the answer waits for whatever the loop has queued)
and the server's forwarding delay from ``/metrics``. The store keeps only what the limits let through.

Figures are printed (``-s``); the bounds are what "undisturbed" means here, loose enough for a
shared machine: a stalled loop or forwarding that starves shows up as pauses of seconds."""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from browser_util import ADMIN_KEY, SECRET, RunningServer, server_process
from prometheus_client.parser import text_string_to_metric_families

from conference.loadtest.endpoint import Endpoint, EndpointConfig
from signaling.tokens import mint_token

pytestmark = [pytest.mark.media, pytest.mark.realtime]  # judges media timing: waits for a calm machine
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
WINDOW_S = 6.0
FLOOD_WORKERS = 24


# --- the flooder (a child process: its requests do not share the venues' loop) ------------------------


async def flood(base: str, code: str, seconds: float, workers: int) -> dict[str, Any]:
    statuses: dict[str, int] = {}
    retry_after: list[int] = []
    accepted_comments = 0

    async def worker(http: aiohttp.ClientSession, n: int) -> None:
        nonlocal accepted_comments
        k = 0
        while time.monotonic() < until:
            k += 1
            for path, body in (
                (f"/w/{code}/comments", {"nickname": "spam", "text": f"buy now {n}-{k}"}),
                (f"/w/{code}/likes", {"count": 50}),
            ):
                try:
                    async with http.post(base + path, json=body) as resp:
                        statuses[str(resp.status)] = statuses.get(str(resp.status), 0) + 1
                        if resp.status == 429:
                            retry_after.append(int(resp.headers.get("Retry-After", "0")))
                        elif resp.status == 201:
                            accepted_comments += 1
                        await resp.read()
                except aiohttp.ClientError:
                    statuses["error"] = statuses.get("error", 0) + 1

    connector = aiohttp.TCPConnector(limit=0)
    async with (
        aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser,
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as cookieless,
    ):
        started = time.monotonic()
        until = started + seconds
        await asyncio.gather(*(worker(browser if n % 2 else cookieless, n) for n in range(workers)))
        took = time.monotonic() - started
    return {
        "statuses": statuses,
        "requests_per_s": sum(statuses.values()) / took,
        "retry_after_min": min(retry_after, default=0),
        "accepted_comments": accepted_comments,
    }


def flood_main() -> None:
    """The child process: ``base code seconds workers`` -> one JSON line."""
    base, code, seconds, workers = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    print(json.dumps(asyncio.run(flood(base, code, seconds, workers))))


# --- the test ------------------------------------------------------------------------------------------


def received(endpoint: Endpoint) -> int:
    return sum(slot.packets for slot in endpoint.video_slots + endpoint.audio_slots)


async def forward_delay_buckets(http: aiohttp.ClientSession, server: RunningServer) -> dict[float, float]:
    async with http.get(f"{server.url}/metrics", headers=ADMIN) as resp:
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        if family.name == "conference_forward_delay_seconds":
            return {float(s.labels["le"]): s.value for s in family.samples if s.name.endswith("_bucket")}
    raise AssertionError("no conference_forward_delay_seconds in /metrics")


def within(before: dict[float, float], after: dict[float, float], le: float) -> float:
    """The share of the packets forwarded between two scrapes whose forwarding took at most ``le``."""
    total = after[float("inf")] - before[float("inf")]
    assert total > 0, "no packet was forwarded"
    return (after[le] - before.get(le, 0)) / total


async def measure(venues: list[Endpoint], seconds: float) -> dict[str, Any]:
    """Packets a second per venue, the longest pause in any venue's reception, and the server's
    WebSocket round trips, over ``seconds``."""
    counts = [received(v) for v in venues]
    last_new = [time.monotonic()] * len(venues)
    pauses = [0.0] * len(venues)
    round_trips: list[float] = []
    started = time.monotonic()

    async def ping() -> None:
        while time.monotonic() - started < seconds:
            sent = time.perf_counter()
            await venues[0].request("ping")
            round_trips.append(time.perf_counter() - sent)
            await asyncio.sleep(0.1)

    pinger = asyncio.create_task(ping())
    first = list(counts)
    while (now := time.monotonic()) - started < seconds:
        for i, venue in enumerate(venues):
            n = received(venue)
            if n != counts[i]:
                counts[i], last_new[i] = n, now
            pauses[i] = max(pauses[i], now - last_new[i])
        await asyncio.sleep(0.01)
    await pinger
    took = time.monotonic() - started
    return {
        "packets_per_s": [(c - f) / took for c, f in zip(counts, first, strict=True)],
        "longest_pause_s": max(pauses),
        "ping_median_ms": statistics.median(round_trips) * 1000,
        "ping_p90_ms": sorted(round_trips)[int(0.9 * (len(round_trips) - 1))] * 1000,
        "pings": len(round_trips),
    }


async def test_media_is_undisturbed_while_the_limits_answer_429(tmp_path: Path) -> None:
    async with server_process(tmp_path / "server", media=True) as server, aiohttp.ClientSession() as http:
        venues = []
        try:
            for i, identity in enumerate(("hall-a", "hall-b")):
                token = mint_token(SECRET, "council", identity, identity, "venue", 3600)
                config = EndpointConfig(
                    url=server.url, token=token, identity=identity, index=i + 1, decode="none"
                )
                venues.append(Endpoint(config))
                await venues[-1].join()
            program = {"layout": "side-by-side", "slots": ["hall-a", "hall-b"]}
            async with http.put(f"{server.url}/api/rooms/council/program", json=program, headers=ADMIN) as r:
                assert r.status == 200
            moderator = mint_token(SECRET, "council", "mod", "mod", "moderator", 3600)
            async with http.get(
                f"{server.url}/api/rooms/council/public", headers={"Authorization": f"Bearer {moderator}"}
            ) as r:
                code = (await r.json())["code"]
            await asyncio.sleep(3)  # past the first keyframes and the bandwidth ramp-up
            assert all(received(v) > 0 for v in venues)

            delay0 = await forward_delay_buckets(http, server)
            quiet = await measure(venues, WINDOW_S)
            delay1 = await forward_delay_buckets(http, server)
            flooder = await asyncio.create_subprocess_exec(
                sys.executable, "-c",
                "import sys; sys.path[:0] = ['tests', '.']; import test_comments_flood_media as t; t.flood_main()",  # noqa: E501
                server.url, code, str(WINDOW_S + 1), str(FLOOD_WORKERS),
                cwd=Path(__file__).resolve().parent.parent, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            await asyncio.sleep(0.5)  # the flood under way
            flooded = await measure(venues, WINDOW_S)
            delay2 = await forward_delay_buckets(http, server)
            out, _ = await asyncio.wait_for(flooder.communicate(), 30)
            assert flooder.returncode == 0
            result = json.loads(out.decode().strip().splitlines()[-1])
            for window, (a, b) in ((quiet, (delay0, delay1)), (flooded, (delay1, delay2))):
                window["forwarded_within_1ms"] = within(a, b, 0.001)
                window["forwarded_within_5ms"] = within(a, b, 0.005)
            print(f"\nbefore the flood: {quiet}\nduring the flood: {flooded}\nflood: {result}")

            # A real flood, refused: most of it 429 with Retry-After, none a server error.
            statuses = result["statuses"]
            assert statuses.get("429", 0) > 0.8 * sum(statuses.values()), statuses
            assert result["retry_after_min"] >= 1
            assert not any(s.startswith("5") or s == "error" for s in statuses), statuses
            assert result["requests_per_s"] > 200, result

            # The media went on as before: the same packets a second, no stall, a prompt loop.
            for q, f in zip(quiet["packets_per_s"], flooded["packets_per_s"], strict=True):
                assert f > 0.85 * q, (quiet, flooded)
            assert flooded["longest_pause_s"] < max(0.5, 3 * quiet["longest_pause_s"]), (quiet, flooded)
            assert flooded["ping_p90_ms"] < max(100.0, 3 * quiet["ping_p90_ms"]), (quiet, flooded)
            # Forwarding is synchronous per packet; what exceeds 5 ms under the flood is the process
            # preempted on a shared 2-core machine (0.97-0.99 within 5 ms seen, 0.997 before).
            assert flooded["forwarded_within_5ms"] >= 0.9, flooded

            # Only what the limits let through was kept.
            async with http.get(
                f"{server.url}/api/rooms/council/comments", headers={"Authorization": f"Bearer {moderator}"}
            ) as r:
                kept = (await r.json())["comments"]
            # the per-address bucket: a burst of 10, then one a second
            assert len(kept) == result["accepted_comments"] <= 10 + (WINDOW_S + 1) + 1, (len(kept), result)
        finally:
            for venue in venues:
                await venue.close()
