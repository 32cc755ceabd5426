"""Issue 9, findings 4 and 9 (limits): one client cannot bloat the server or crowd it with sockets.
Real server, real WebSockets."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from pathlib import Path

import aiohttp

from signaling.app import ROOMS_KEY


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_a_client_that_does_not_read_is_closed_with_1008_and_costs_a_few_mb(
    signaling_server, connect, mint, settings
) -> None:
    limit = getattr(settings, "ws_max_queued_bytes", 4 * 1024 * 1024)  # getattr: runs on main too
    assert limit <= 4 * 1024 * 1024  # the default: a slow consumer costs a few MB at most
    # The memory store: 300 program changes need no disk commits to set the scene.
    server = await signaling_server(replace(settings, ws_rate=10_000.0, ws_burst=10_000, room_store="memory"))
    rooms = server.app[ROOMS_KEY]
    chair = await connect(server, mint("council", "chair", "chair"))
    await chair.ok("join")
    for i in range(300):  # an event log worth ~60 KB per `sync` from 0
        await chair.send(
            {"type": "set_program", "layout": "grid-2x2", "slots": ["chair", None, None, None][: 1 + i % 4]}
        )
    await chair.ok("ping")

    async with aiohttp.ClientSession() as http:
        # Never calls receive(): aiohttp stops reading the socket once 64 KB are buffered, so the
        # server's kernel buffers fill and its writer blocks, as with a stalled browser tab.
        lurker = await http.ws_connect(
            server.make_url("/ws"), params={"token": mint("council", "lurker", "viewer")}
        )
        await lurker.send_str(json.dumps({"type": "join", "id": "j"}))
        conn = None
        while conn is None:
            conn = next((c for c in rooms.sockets if c.identity == "lurker"), None)
            await asyncio.sleep(0.01)
        rss_before = rss_bytes()
        peak = 0
        sent = 0
        for sent in range(1, 757):  # the 756 requests
            await lurker.send_str(json.dumps({"type": "sync", "id": sent, "since": 0}))
            if sent % 10 == 0:
                await asyncio.sleep(0)
                peak = max(peak, getattr(conn, "queued_bytes", 0))
            if conn not in rooms.sockets or conn._closing:
                break
        peak = max(peak, getattr(conn, "queued_bytes", 0))
        deadline = time.monotonic() + 5
        while not conn._closing and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        grew = rss_bytes() - rss_before
        assert conn._closing, f"not closed after {sent} syncs; RSS grew {grew / 1e6:.1f} MB"
        print(
            f"\nnon-reading client closed after {sent} syncs; peak queued {peak / 1e6:.2f} MB;"
            f" RSS grew {grew / 1e6:.1f} MB"
        )
        assert peak <= limit
        # The chair is not disturbed.
        started = time.perf_counter()
        await chair.ok("ping")
        assert time.perf_counter() - started < 0.5
        # The lurker, reading at last, finds the server's close: 1008.
        codes = []
        while True:
            frame = await lurker.receive(timeout=10)
            if frame.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                codes.append(frame.data)
                break
        assert codes == [1008], codes
        deadline = time.monotonic() + 10
        while conn in rooms.sockets:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
