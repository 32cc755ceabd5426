"""Redis restarted mid-meeting (issue 17): a redis-server of the test's own (append-only file,
fsync always) behind two ``conference serve`` processes; two aiortc venues on the first, which
forwards their media. While Redis is away the media keeps flowing and commands fail with a clear
``unavailable`` (503), changing nothing; once it is back commands work again, nothing acknowledged
before is lost, and a command sent to the second server reaches the venues on the first again
(its event subscription came back by itself)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from browser_util import ADMIN_KEY, SECRET, RunningServer, server_process

from conference.loadtest.endpoint import Endpoint, EndpointConfig
from signaling.tokens import mint_token

pytestmark = pytest.mark.media
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def redis_server(directory: Path, port: int) -> AsyncIterator[asyncio.subprocess.Process]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (tests/run.sh installs it)")
    directory.mkdir(parents=True, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(directory),
        "--appendonly", "yes",
        "--appendfsync", "always",  # what was acknowledged is on disk when the process dies
        "--save", "",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", port), timeout=0.5) as s,
            ):
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
            assert proc.returncode is None and time.monotonic() < deadline, "redis-server did not start"
            await asyncio.sleep(0.1)
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def call(server: RunningServer, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, f"{server.url}{path}", json=body, headers=ADMIN) as r,
    ):
        return r.status, await r.json() if r.content_type == "application/json" else await r.text()


def received(endpoint: Endpoint) -> int:
    return sum(slot.packets for slot in endpoint.video_slots + endpoint.audio_slots)


async def test_media_flows_while_redis_is_away_and_commands_work_again_when_it_is_back(
    tmp_path: Path,
) -> None:
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    redis_dir = tmp_path / "redis"
    program_a = {"layout": "side-by-side", "slots": ["hall-a", "hall-b"]}
    program_b = {"layout": "side-by-side", "slots": ["hall-b", "hall-a"]}
    async with (
        redis_server(redis_dir, port) as redis,
        server_process(tmp_path / "one", media=True, extra_args=["--redis-url", url]) as one,
        server_process(tmp_path / "two", media=False, extra_args=["--redis-url", url]) as two,
    ):
        venues = []
        for i, identity in enumerate(("hall-a", "hall-b")):
            token = mint_token(SECRET, "council", identity, identity, "venue", 3600)
            config = EndpointConfig(url=one.url, token=token, identity=identity, index=i + 1, decode="none")
            venues.append(Endpoint(config))
            await venues[-1].join()
        assert (await call(one, "PUT", "/api/rooms/council/program", program_a))[0] == 200
        await asyncio.sleep(2)
        assert all(received(v) > 0 for v in venues)

        # Redis goes away (killed: only what was fsynced survives).
        redis.send_signal(signal.SIGKILL)
        await redis.wait()
        before = [received(v) for v in venues]
        started = time.monotonic()
        status, body = await call(one, "PUT", "/api/rooms/council/program", program_b)
        assert time.monotonic() - started < 5  # fails fast, does not hang
        assert status == 503 and body["error"] == "unavailable", (status, body)
        status, body = await call(two, "GET", "/api/rooms/council")
        assert status == 503 and body["error"] == "unavailable", (status, body)
        await asyncio.sleep(2)
        # The media core needs no store for packets: both venues kept receiving.
        after = [received(v) for v in venues]
        assert all(a > b + 50 for a, b in zip(after, before, strict=True)), (before, after)

        # Redis is back, from its own append-only file.
        async with redis_server(redis_dir, port):
            status, room = 0, {}
            for _ in range(50):
                status, room = await call(one, "GET", "/api/rooms/council")
                if status == 200:
                    break
                await asyncio.sleep(0.2)
            assert status == 200, room
            # Nothing acknowledged was lost; the refused change did not happen.
            assert room["program"]["slots"] == program_a["slots"], room["program"]
            assert {p["identity"] for p in room["participants"]} == {"hall-a", "hall-b"}
            # A command on the other server reaches the venues here: the subscription came back.
            for _ in range(50):
                status, _ = await call(two, "PUT", "/api/rooms/council/program", program_b)
                if status == 200:
                    break
                await asyncio.sleep(0.2)
            assert status == 200
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                if all(v.program["slots"] == program_b["slots"] for v in venues):
                    break
                await asyncio.sleep(0.2)
            assert [v.program["slots"] for v in venues] == [program_b["slots"]] * 2
            for venue in venues:
                await venue.close()
