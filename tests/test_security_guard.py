"""Issue 9, findings 8 and 9 (throttles, headers): secrets of 32 bytes at least, kept out of the
process list; refused credentials throttled per address (429); REST requests per credential;
unjoined sockets per token; the pages' security headers. Real server processes and sockets."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from signaling.guard import FAILURE_BURST, MAX_UNJOINED_PER_TOKEN
from signaling.tokens import mint_token
from tests.conftest import TEST_ADMIN_KEY

ROOT = Path(__file__).resolve().parents[1]
ADMIN = {"Authorization": f"Bearer {TEST_ADMIN_KEY}"}


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CONFERENCE_")}


async def call(
    method: str, url: Any, headers: dict[str, str] | None = None, *, source: str | None = None, **kw: Any
) -> tuple[int, Any, Any]:
    connector = aiohttp.TCPConnector(local_addr=(source, 0)) if source else None
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.request(method, url, headers=headers or {}, **kw) as resp,
    ):
        body = await resp.json() if resp.content_type == "application/json" else await resp.text()
        return resp.status, body, resp.headers


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["serve", "--secret", "s"], {}),
        (["serve", "--admin-key", "short-admin-key"], {}),
        (["serve"], {"CONFERENCE_SECRET": "x" * 31}),
        (
            [
                "token",
                "--secret",
                "short",
                "--room",
                "r",
                "--role",
                "chair",
                "--identity",
                "c",
                "--name",
                "C",
            ],
            {},
        ),
    ],
)
def test_secrets_shorter_than_32_bytes_are_refused(
    tmp_path: Path, args: list[str], env: dict[str, str]
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "signaling", *args, "--data-dir", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**clean_env(), **env},
        timeout=60,
    )
    assert result.returncode == 2, result
    assert "at least 32 bytes" in result.stderr
    assert not (tmp_path / "data" / "rooms.sqlite3").exists()


def test_a_short_secret_file_is_refused(tmp_path: Path) -> None:
    short = tmp_path / "secret"
    short.write_text("0123456789\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "signaling",
            "serve",
            "--secret-file",
            str(short),
            "--data-dir",
            str(tmp_path / "d"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=clean_env(),
        timeout=60,
    )
    assert result.returncode == 2 and "shorter than 32 bytes" in result.stderr, result


async def test_secrets_from_files_stay_out_of_the_process_list(tmp_path: Path) -> None:
    secret, admin_key = "s" * 24 + "-file-secret-0123456789", "a" * 24 + "-file-admin-key-0123456789"
    (tmp_path / "secret").write_text(secret + "\n")
    (tmp_path / "admin").write_text(admin_key + "\n")
    log = open(tmp_path / "server.log", "w+")  # noqa: SIM115 - the child writes it
    files = ["--secret-file", str(tmp_path / "secret"), "--admin-key-file", str(tmp_path / "admin")]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "signaling",
            "serve",
            "--port",
            "0",
            "--no-media",
            "--data-dir",
            str(tmp_path / "d"),
            *files,
        ],
        cwd=ROOT,
        env=clean_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        port = None
        while port is None:
            assert process.poll() is None and time.monotonic() < deadline, Path(log.name).read_text()
            for line in Path(log.name).read_text().splitlines():
                if "serving on http://127.0.0.1:" in line:
                    port = int(line.split("127.0.0.1:")[1].split()[0])
            await asyncio.sleep(0.2)
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes().decode()
        assert secret not in cmdline and admin_key not in cmdline
        base = f"http://127.0.0.1:{port}"
        status, _, _ = await call("GET", f"{base}/api/stats", {"Authorization": f"Bearer {admin_key}"})
        assert status == 200
        token = mint_token(secret, "council", "c", "C", "chair", 60)
        status, _, _ = await call("GET", f"{base}/api/rooms", {"Authorization": f"Bearer {token}"})
        assert status == 200
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


async def test_refused_credentials_are_throttled_per_address(signaling_server, mint) -> None:
    server = await signaling_server()
    stats = server.make_url("/api/stats")
    started = time.perf_counter()
    statuses = []
    for i in range(FAILURE_BURST + 5):
        status, _, headers = await call("GET", stats, {"Authorization": f"Bearer guess-{i}"})
        statuses.append(status)
    elapsed = time.perf_counter() - started
    assert set(statuses[:FAILURE_BURST]) == {403} and set(statuses[FAILURE_BURST:]) == {429}, statuses
    status, body, headers = await call("GET", stats, ADMIN)  # even the right key, from this address
    assert status == 429 and body["error"] == "rate_limited" and int(headers["Retry-After"]) >= 1
    status, _, _ = await call(
        "GET", server.make_url("/api/rooms"), {"Authorization": f"Bearer {mint('r', 'c', 'chair')}"}
    )
    assert status == 429
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(server.make_url("/ws"), params={"token": mint("r", "v", "venue")})
        frame = await ws.receive(timeout=5)
        assert frame.type == aiohttp.WSMsgType.CLOSE and frame.data == 4429, frame
        await ws.close()
    # Another address is not affected.
    status, _, _ = await call("GET", stats, ADMIN, source="127.0.0.2")
    assert status == 200
    print(f"\n{FAILURE_BURST + 5} guesses in {elapsed:.3f} s; 429 from guess {FAILURE_BURST + 1} on")


async def test_forged_tokens_over_the_websocket_are_throttled(signaling_server) -> None:
    server = await signaling_server()
    codes = []
    async with aiohttp.ClientSession() as http:
        for i in range(FAILURE_BURST + 3):
            ws = await http.ws_connect(server.make_url("/ws"), params={"token": f"forged-{i}"})
            frame = await ws.receive(timeout=5)
            codes.append(frame.data)
            await ws.close()
    assert set(codes[:FAILURE_BURST]) == {4401} and set(codes[FAILURE_BURST:]) == {4429}, codes


async def test_rest_requests_are_rate_limited_per_credential(
    signaling_server, connect, mint, settings
) -> None:
    server = await signaling_server()
    chair_token = mint("council", "chair", "chair")
    chair = await connect(server, chair_token)
    await chair.ok("join")
    url = server.make_url("/api/rooms/council/program")
    program = {"layout": "single", "slots": ["chair"]}
    statuses: list[int] = []
    async with aiohttp.ClientSession() as http:
        for _ in range(settings.rest_burst + 20):
            async with http.put(
                url, json=program, headers={"Authorization": f"Bearer {chair_token}"}
            ) as resp:
                statuses.append(resp.status)
                if resp.status == 429:
                    assert float(resp.headers["Retry-After"]) >= 1
                    assert (await resp.json())["error"] == "rate_limited"
    assert statuses.count(200) <= settings.rest_burst + 5 and statuses.count(429) >= 10, statuses
    # Another credential (a second chair, the admin key) is not held up by the first one's flood.
    other = {"Authorization": f"Bearer {mint('council', 'chair-2', 'chair')}"}
    assert (await call("GET", server.make_url("/api/rooms/council"), other))[0] == 200
    for _ in range(settings.rest_burst + 5):
        status, _, _ = await call("GET", server.make_url("/api/rooms/council"), ADMIN)
        assert status == 200


async def test_unjoined_sockets_per_token_are_capped(signaling_server, connect, mint) -> None:
    server = await signaling_server()
    token = mint("council", "hall-a", "venue")
    idle = [await connect(server, token) for _ in range(MAX_UNJOINED_PER_TOKEN)]
    for client in idle:
        await client.ok("ping")
    extra = await connect(server, token)
    assert await extra.closed() == 4429
    await idle[0].ok("join")  # one joins: room for one more unjoined
    again = await connect(server, token)
    await again.ok("ping")
    other = await connect(server, mint("council", "hall-b", "venue"))  # other tokens unaffected
    await other.ok("join")


async def test_pages_carry_security_headers_and_no_library_version(signaling_server) -> None:
    server = await signaling_server()
    for page in ("/", "/venue", "/phone", "/chair", "/clerk"):
        status, _, headers = await call("GET", server.make_url(page))
        assert status == 200
        csp = headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "object-src 'none'" in csp
        assert "'unsafe-inline'" not in csp
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert "aiohttp" not in headers.get("Server", "") and "Python" not in headers.get("Server", "")
    for path in ("/healthz", "/api/config", "/static/client.js", "/nothing-here"):
        _, _, headers = await call("GET", server.make_url(path))
        assert "aiohttp" not in headers.get("Server", ""), path


async def test_expired_tokens_do_not_throttle_an_address(signaling_server) -> None:
    """A page left open past its token's expiry retries with a token whose signature holds: not a
    guess, so it cannot lock out the other devices behind the same address."""
    from tests.conftest import TEST_SECRET

    server = await signaling_server()
    expired = mint_token(TEST_SECRET, "council", "hall-a", "Hall A", "venue", 1, now=1000)
    async with aiohttp.ClientSession() as http:
        for _ in range(FAILURE_BURST + 5):
            ws = await http.ws_connect(server.make_url("/ws"), params={"token": expired})
            frame = await ws.receive(timeout=5)
            assert frame.data == 4401 and frame.extra == "token expired"
            await ws.close()
    for _ in range(FAILURE_BURST + 5):
        status, body, _ = await call(
            "GET", server.make_url("/api/rooms"), {"Authorization": f"Bearer {expired}"}
        )
        assert status == 401 and body["message"] == "token expired"
    status, _, _ = await call("GET", server.make_url("/api/stats"), ADMIN)
    assert status == 200


def test_the_limiters_memory_stays_bounded_under_a_flood_of_keys() -> None:
    from signaling.guard import MAX_TRACKED, KeyedBuckets

    now = [0.0]
    buckets = KeyedBuckets(1.0, 2, clock=lambda: now[0])
    for i in range(5 * MAX_TRACKED):
        buckets.take(f"key-{i}")
    assert len(buckets._buckets) <= MAX_TRACKED
    assert buckets.take("steady") == 0.0 and buckets.take("steady") == 0.0
    assert buckets.take("steady") > 0  # the newest keys are kept and still limited
