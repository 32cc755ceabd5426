"""A real ``serve`` process stopped (SIGTERM) or killed (SIGKILL) mid-meeting and started again on
the same data directory and port: every room is back with its program, floor queue, mutes and
recording, and the endpoints that reconnect get their places back. (The venue pages doing that
by themselves: tests/test_browser_restart.py.)"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiohttp
import pytest
from browser_util import RunningServer, rest, server_process
from conftest import SignalingClient

from recorder.archive import Recording
from recorder.jobs import job_path

pytestmark = pytest.mark.asyncio


async def _connect(http: aiohttp.ClientSession, server: RunningServer, token: str) -> SignalingClient:
    ws = await http.ws_connect(f"{server.url.replace('http', 'ws', 1)}/ws", params={"token": token})
    return SignalingClient(ws)


async def _meeting(http: aiohttp.ClientSession, server: RunningServer) -> dict[str, SignalingClient]:
    """A chair and three venues; a program, a mute, two raised hands, the floor, a recording, and
    a fourth venue the chair removed."""
    clients = {}
    venues = [("hall-a", "venue"), ("hall-b", "venue"), ("hall-c", "venue"), ("hall-d", "venue")]
    for identity, role in [("chair", "chair"), *venues]:
        clients[identity] = await _connect(http, server, server.token("council", identity, role))
        await clients[identity].ok("join")
    chair = clients["chair"]
    await chair.ok("remove", identity="hall-d")
    assert await clients.pop("hall-d").closed(5) == 4410
    await chair.ok("set_program", layout="side-by-side", slots=["hall-b", "hall-a"])
    await chair.ok("mute", identity="hall-c", muted=True)
    await clients["hall-c"].ok("raise_hand")
    await clients["hall-b"].ok("raise_hand")
    await clients["hall-a"].ok("raise_hand")
    await chair.ok("grant_floor", identity="hall-a")
    await chair.ok("start_recording")
    return clients


def _essentials(room: dict[str, Any]) -> dict[str, Any]:
    people = {p["identity"]: p for p in room["participants"]}
    return {
        "program": room["program"],
        "floor": room["floor"],
        "floor_queue": room["floor_queue"],
        "muted": sorted(i for i, p in people.items() if p["muted"]),
        "participants": sorted(people),
        "recording": room["recording"]["active"],
        "removed": sorted(room["removed"]),
    }


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_a_restarted_server_has_every_room_and_endpoints_get_their_places_back(
    tmp_path: Path, how: signal.Signals
) -> None:
    data = tmp_path / "data"
    async with aiohttp.ClientSession() as http:
        async with server_process(data, media=False) as first:
            port = urlparse(first.url).port
            removed_token = first.token("council", "hall-d", "venue")  # issued before the removal
            clients = await _meeting(http, first)
            before = await rest(first, "GET", "/api/rooms/council")
            first_recording = before["recording"]["recording_id"]
            first.process.send_signal(how)
            await asyncio.wait_for(first.process.wait(), 15)
            for client in clients.values():
                await client.closed(10)
        assert _essentials(before)["floor_queue"] == ["hall-c", "hall-b"]
        assert _essentials(before)["removed"] == ["hall-d"]

        started = time.monotonic()
        async with server_process(data, media=False, port=port) as second:
            restart_s = time.monotonic() - started
            print(f"restart after {how.name}: serving again in {restart_s:.2f} s")
            after = await rest(second, "GET", "/api/rooms/council")
            assert _essentials(after) == _essentials(before)
            # Nobody is connected to a process that just started; everyone keeps its place.
            assert all(not p["connected"] for p in after["participants"])
            # Recording goes on in a new recording; the one before is closed (and rendered).
            assert after["recording"]["recording_id"] not in (None, first_recording)
            # Closed and its render queued or running, however soon the server came back (after
            # a SIGKILL the data is a second old: recovery knows the writer is gone by its lock).
            previous = Recording.open(data, first_recording)
            assert previous.complete
            assert bool(previous.meta.get("interrupted")) == (how is signal.SIGKILL)
            program_job = job_path(data, first_recording, "program-1280x720", ".json")
            assert json.loads(program_job.read_text())["state"] in ("queued", "running", "done")

            # The endpoints come back (as the pages do by themselves) and find their places.
            back = {}
            for identity, role in [("hall-a", "venue"), ("hall-b", "venue"), ("chair", "chair")]:
                back[identity] = await _connect(http, second, second.token("council", identity, role))
                joined = await back[identity].ok("join")
                assert joined["room"]["program"] == before["program"]
                assert joined["room"]["floor"] == "hall-a"
            assert joined["room"]["floor_queue"] == ["hall-c", "hall-b"]
            people = {p["identity"]: p for p in joined["room"]["participants"]}
            assert people["hall-c"]["muted"] and not people["hall-c"]["connected"]
            assert people["hall-a"]["connected"] and people["hall-b"]["connected"]
            # The removed venue stays out with the token it had.
            removed = await _connect(http, second, removed_token)
            assert await removed.closed(5) == 4403
            # The room goes on: versions continue, commands work.
            result = await back["chair"].ok("set_program", layout="single", slots=["hall-b"])
            assert result["version"] > before["version"]
            for client in back.values():
                await client.close()
