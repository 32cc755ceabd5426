"""A meeting gives back what it took: the short version of the soak (docs/performance.md).

A real ``serve`` process with media and auto-record; a chair and five venues (aiortc test
endpoints publishing pre-encoded camera and microphone) meet for a minute while the program
changes every few seconds and two venues leave and rejoin every 20 s; then everyone leaves. Once
the recording is closed and rendered, the server's open file descriptors, asyncio tasks and
threads must be back to what they were before the meeting (measured after a short warm-up
meeting, so one-time set-up such as the recorder's first render is not counted as a leak).
``CONFERENCE_LEAK_MEETING_S`` shortens the meeting for a quick local run.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from pathlib import Path
from typing import Any

import pytest
from browser_util import SECRET, RunningServer, log, rest, server_process

from conference.loadtest.endpoint import Endpoint, EndpointConfig
from signaling.tokens import mint_token

pytestmark = [pytest.mark.media, pytest.mark.asyncio]

# A minute with three rounds of leaving and rejoining: what comes back or not shows by then (the
# 10-minute soak, `conference bench --duration 600 --churn`, measures the long run in detail).
MEETING_S = float(os.environ.get("CONFERENCE_LEAK_MEETING_S", "60"))
VENUES = [f"hall-{c}" for c in "abcde"]
ROOM = "council"


async def _join(server: RunningServer, identity: str, index: int, role: str = "venue") -> Endpoint:
    token = mint_token(SECRET, ROOM, identity, identity.title(), role, 3600)
    kw: dict[str, Any] = {"speaking": True, "video_slots": 1}
    if role == "chair":
        kw = {"publish_audio": False, "publish_video": False, "video_slots": 1}
    endpoint = Endpoint(
        EndpointConfig(url=server.url, token=token, identity=identity, index=index, decode="none", **kw)
    )
    await endpoint.join()
    return endpoint


def _received(endpoint: Endpoint) -> int:
    return sum(slot.packets for slot in endpoint.video_slots + endpoint.audio_slots)


async def _meeting(server: RunningServer, duration: float, churn_every: float) -> None:
    chair = await _join(server, "chair", 0, "chair")
    venues = {name: await _join(server, name, i + 1) for i, name in enumerate(VENUES)}
    rotation = itertools.cycle(range(len(VENUES)))
    started = time.monotonic()
    next_churn = started + churn_every
    leavers = itertools.cycle([VENUES[:2], VENUES[2:4], VENUES[3:]])
    try:
        while time.monotonic() - started < duration:
            first = next(rotation)
            slots = [VENUES[(first + k) % len(VENUES)] for k in range(4)]
            await rest(server, "PUT", f"/api/rooms/{ROOM}/program", {"layout": "grid-2x2", "slots": slots})
            if time.monotonic() >= next_churn:
                next_churn += churn_every
                for name in next(leavers):
                    await venues[name].close(leave=True)
                    venues[name] = await _join(server, name, VENUES.index(name) + 1)
            await asyncio.sleep(4.0)
        # Media flowed to everyone (what the soak measures in detail).
        for endpoint in (chair, *venues.values()):
            assert _received(endpoint) > 0, f"{endpoint.identity} received nothing"
    finally:
        for endpoint in (chair, *venues.values()):
            await endpoint.close(leave=True)


async def _stats(server: RunningServer) -> dict[str, Any]:
    return await rest(server, "GET", "/api/stats")


async def _settled(server: RunningServer, timeout: float) -> dict[str, Any]:
    """Process figures once nobody is connected, nothing records or renders, and readings over
    6 s agree (longer than the media core keeps an empty room's router: 5 s)."""
    deadline = time.monotonic() + timeout
    readings: list[dict[str, int]] = []
    while True:
        stats = await _stats(server)
        idle = (
            stats["connections"] == 0
            and stats["participants"] == 0
            and stats["recorder"]["recording"] == 0
            and stats["recorder"]["rendering"] == 0
        )
        readings = [*readings, _figures(stats["process"])][-4:] if idle else []
        if len(readings) == 4 and all(r == readings[0] for r in readings):
            return stats["process"]
        if time.monotonic() > deadline:
            raise AssertionError(f"the server did not settle within {timeout}s: {stats}")
        await asyncio.sleep(2.0)


async def _back_to(server: RunningServer, baseline: dict[str, Any], timeout: float) -> dict[str, Any]:
    """The process figures once none is above the baseline; fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        process = (await _stats(server))["process"]
        grown = {
            k: (b, _figures(process)[k]) for k, b in _figures(baseline).items() if _figures(process)[k] > b
        }
        if not grown:
            return process
        if time.monotonic() > deadline:
            raise AssertionError(
                f"(before, after) still above the baseline: {grown}; baseline {baseline}, now {process}"
            )
        await asyncio.sleep(2.0)


def _figures(process: dict[str, Any]) -> dict[str, int]:
    """What must come back: fds, tasks, and threads other than idle executor workers."""
    return {
        "fds": process["fds"],
        "tasks": process["tasks"],
        "threads": process["threads"] - process["pool_threads"],
    }


async def test_fds_tasks_and_threads_are_back_to_the_baseline_after_a_meeting(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with server_process(data, media=True, extra_args=["--auto-record"]) as server:
        await _meeting(server, 12.0, churn_every=6.0)  # warm-up: first joins, first recording, render
        baseline = await _settled(server, 600)
        log(f"baseline after the warm-up: {baseline}")
        started = time.monotonic()
        during: dict[str, Any] = {}

        async def sample() -> None:
            while True:
                await asyncio.sleep(20)
                during.update((await _stats(server))["process"])
                log(f"{time.monotonic() - started:5.0f}s into the meeting: {during}")

        sampler = asyncio.create_task(sample())
        try:
            await _meeting(server, MEETING_S, churn_every=20.0)
        finally:
            sampler.cancel()
        await _settled(server, 600)  # the recording closed and rendered
        after = await _back_to(server, baseline, 60)
        log(f"after everyone left: {after}")
        assert during.get("tasks", 0) > baseline["tasks"], "the meeting's tasks were seen while it ran"
        assert after["pool_threads"] <= min(32, (os.cpu_count() or 1) + 4)  # the executor's bound
        log(f"RSS {baseline.get('rss_mb')} MB before, {after.get('rss_mb')} MB after")
