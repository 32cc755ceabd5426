"""`conference serve` as a process: HTTPS/WSS with a certificate, graceful SIGTERM; rooms shared
between two servers through Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from browser_util import self_signed_certificate

from conference.media import NullMedia
from conference.store import RedisRoomStore
from signaling.app import ADMIN_KEY_KEY
from signaling.tokens import mint_token
from tests.conftest import TEST_SECRET, SignalingClient

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_serve_https_wss_and_graceful_sigterm(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path, "localhost")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONFERENCE_")}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "signaling",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path / "data"),
            "--secret",
            TEST_SECRET,
            "--no-media",
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(key),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    context = ssl.create_default_context(cafile=str(cert))
    base = f"https://localhost:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 120
            while True:
                try:
                    async with http.get(f"{base}/healthz", ssl=context) as resp:
                        assert resp.status == 200
                        break
                except aiohttp.ClientConnectorError:
                    assert process.poll() is None and time.monotonic() < deadline, "server did not start"
                    await asyncio.sleep(0.3)
            token = mint_token(TEST_SECRET, "council", "hall-a", "Hall A", "venue", 600)
            ws = await http.ws_connect(f"wss://localhost:{port}/ws", params={"token": token}, ssl=context)
            client = SignalingClient(ws)
            await client.ok("join")
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            shutdown = await client.wait_for(lambda m: m["type"] == "shutdown", timeout=5)
            assert shutdown["reason"]
            # 1001 as sent; under uvloop's TLS transport the close frame is sometimes lost as the
            # process exits and the client sees 1006. The `shutdown` message above always arrives.
            assert await client.closed() in (1001, 1006)
            assert process.wait(timeout=8) == 0
            assert time.monotonic() - started < 6
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    output = process.stdout.read() if process.stdout else ""
    assert f"conference: serving on https://127.0.0.1:{port} " in output, output[:2000]  # TLS: an https URL
    assert "conference token" in output and "conference: stopped" in output
    assert "GET /ws?token=<redacted>" in output and token not in output  # no secrets in the access log


@pytest.mark.redis
async def test_two_servers_share_a_room_through_redis(signaling_server, connect, mint, settings) -> None:
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    url = os.environ.get("CONFERENCE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    stores = [RedisRoomStore(url, prefix=prefix), RedisRoomStore(url, prefix=prefix)]
    try:
        one = await signaling_server(replace(settings, redis_url=url), media=NullMedia(), store=stores[0])
        two = await signaling_server(replace(settings, redis_url=url), media=NullMedia(), store=stores[1])
        chair = await connect(one, mint("shared", "chair", "chair"))
        first = await chair.request("join")
        if first["type"] == "error":  # placed on two (its CPU figure was the lower one just then)
            assert first["code"] == "moved", first
            one, two = two, one
            chair = await connect(one, mint("shared", "chair", "chair"))
            await chair.ok("join")
        # The room is placed on server one now: a join that reaches server two is sent there,
        # naming it (docs/protocol.md, "moved").
        elsewhere = await connect(two, mint("shared", "hall-a", "venue"))
        moved = await elsewhere.request("join")
        assert moved["type"] == "error" and moved["code"] == "moved", moved
        at_one, at_two = await _get_room(one, "shared"), await _get_room(two, "shared")
        assert at_one["node"] == at_two["node"] == moved["node"]
        assert await elsewhere.closed() == 4307
        venue = await connect(one, mint("shared", "hall-a", "venue"))
        joined = await venue.ok("join")
        assert {p["identity"] for p in joined["room"]["participants"]} == {"chair", "hall-a"}
        await chair.wait_for(lambda m: m["type"] == "event" and m["event"]["kind"] == "participant_joined")
        result = await chair.ok("set_program", layout="pip", slots=["chair", "hall-a"])
        event = await venue.wait_for(lambda m: m["type"] == "event" and m["event"]["kind"] == "program")
        assert event["event"]["version"] == result["version"]
        await chair.ok("remove", identity="hall-a")
        assert await venue.closed() == 4410
    finally:
        import redis.asyncio as aioredis

        r = aioredis.from_url(url)
        keys = [k async for k in r.scan_iter(f"{prefix}:*")]
        if keys:
            await r.delete(*keys)
        await r.aclose()


async def _get_room(server: Any, room: str) -> dict[str, Any]:
    key = server.app[ADMIN_KEY_KEY]
    async with (
        aiohttp.ClientSession() as http,
        http.get(server.make_url(f"/api/rooms/{room}"), headers={"Authorization": f"Bearer {key}"}) as r,
    ):
        assert r.status == 200, await r.text()
        return dict(await r.json())


def test_access_log_redacts_tokens_and_link_signatures() -> None:
    import logging

    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from signaling.serve import AccessLog

    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("test-access-log")
    logger.addHandler(Collect())
    logger.setLevel(logging.INFO)
    target = "/api/recordings/r-1/download?render=grid-320x180&file=mp4&expires=1795779600&sig=SECRETSIG"
    AccessLog(logger, "").log(make_mocked_request("GET", target), web.Response(), 0.01)
    AccessLog(logger, "").log(make_mocked_request("GET", "/ws?token=SECRETTOKEN"), web.Response(), 0.01)
    assert "render=grid-320x180&file=mp4&expires=1795779600&sig=<redacted>" in records[0]
    assert "/ws?token=<redacted>" in records[1]
    assert "SECRET" not in "".join(records)
