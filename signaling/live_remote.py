"""``conference live``: the program compositor of a room's public stream.

Without ``--server`` it is the worker itself (``recorder.live.worker``), as the server starts it for
each broadcasting room, on stdin/stdout. With ``--server URL --room ROOM`` it runs on a machine of
its own: it connects to the server with the admin key (``GET /ws/live/{room}``, the server's
``live_compositor`` set to ``remote``, this machine's address in its ``live_hosts``), waits for the
room to broadcast, then runs the worker here and relays its JSON lines over the socket; the room's
RTP comes straight to this machine; every finished segment and then the playlist is uploaded to the
server (``PUT /live/{room}/{name}``; ``DELETE`` for segments the sliding window dropped), where the
public reads them as usual. After a broadcast, or when the server goes away, it connects again and
waits for the next one. See ``signaling.live_link`` for the server's side.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import socket
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from recorder.live import worker

from .broadcast import worker_command

log = logging.getLogger("conference.live")

SEGMENT = re.compile(r"seg-\d{5,9}\.ts")
PLAYLIST = "index.m3u8"
SCAN_S = 0.25  # how soon a finished segment goes up (a 2 s segment: an eighth of it)
RECONNECT_S = (1.0, 2.0, 5.0)


class Uploader:
    """Mirrors the worker's HLS directory to the server: segments first, then the playlist that
    names them, so a viewer never reads a playlist whose segments are not there yet."""

    def __init__(self, http: aiohttp.ClientSession, base: str, directory: Path) -> None:
        self.http = http
        self.base = base  # {server}/live/{room}
        self.directory = directory
        self.uploaded: set[str] = set()
        self.playlist: tuple[int, int] | None = None
        self.failures = 0

    async def scan(self) -> None:
        try:
            present = {p.name for p in self.directory.iterdir() if SEGMENT.fullmatch(p.name)}
            stat = (self.directory / PLAYLIST).stat()
        except FileNotFoundError:
            return
        for name in sorted(present - self.uploaded):
            if await self._send("PUT", name, (self.directory / name).read_bytes()):
                self.uploaded.add(name)
            else:
                return  # the playlist must not go up before its segments
        if self.playlist != (stat.st_mtime_ns, stat.st_size):
            body = (self.directory / PLAYLIST).read_bytes()
            if await self._send("PUT", PLAYLIST, body):
                self.playlist = (stat.st_mtime_ns, stat.st_size)
        for name in sorted(self.uploaded - present):
            if await self._send("DELETE", name):
                self.uploaded.discard(name)

    async def _send(self, method: str, name: str, body: bytes | None = None) -> bool:
        try:
            async with self.http.request(method, f"{self.base}/{name}", data=body) as resp:
                if resp.status == 200:
                    return True
                log.warning("%s %s: %s %s", method, name, resp.status, (await resp.text())[:200])
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("%s %s: %s", method, name, exc)
        self.failures += 1
        return False

    async def run(self) -> None:
        while True:
            await self.scan()
            await asyncio.sleep(SCAN_S)


def own_address(server: str) -> str:
    """This machine's address towards the server: where the room's RTP should come."""
    host = urlsplit(server).hostname or "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((socket.gethostbyname(host), 9))  # UDP connect: no packet is sent
        return str(probe.getsockname()[0])


async def broadcast_once(
    http: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse, args: argparse.Namespace
) -> bool:
    """Wait for the server to hand this compositor a broadcast, run it to its end. False if the
    socket closed before a broadcast began."""
    message = await ws.receive()
    if message.type != aiohttp.WSMsgType.TEXT:
        return False
    start: dict[str, Any] = json.loads(message.data)
    if start.get("type") != "start":
        raise ValueError(f"expected the server's start, got {start.get('type')!r}")
    directory = Path(args.out)
    if start.get("fresh"):
        shutil.rmtree(directory, ignore_errors=True)  # a new broadcast: a new playlist
    directory.mkdir(parents=True, exist_ok=True)
    options = {
        k: start[k] for k in ("size", "fps", "threads", "preset", "video_slots", "audio_slots") if k in start
    }
    options["host"] = args.host
    process = await asyncio.create_subprocess_exec(
        *worker_command(options, directory), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert process.stdin is not None and process.stdout is not None
    stdin, stdout = process.stdin, process.stdout
    uploader = Uploader(http, f"{args.server}/live/{args.room}", directory)
    log.info("broadcast of room %s: compositor %d started", args.room, process.pid)

    async def worker_to_server() -> None:
        while line := await stdout.readline():
            await ws.send_str(line.decode().rstrip("\n"))

    async def server_to_worker() -> None:
        async for message in ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            stdin.write(message.data.encode() + b"\n")
            await stdin.drain()

    tasks = [asyncio.create_task(worker_to_server()), asyncio.create_task(server_to_worker())]
    upload = asyncio.create_task(uploader.run())
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if not tasks[0].done():  # the server went away: the worker ends with its stdin
            with contextlib.suppress(OSError, RuntimeError):
                stdin.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), 10.0)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        upload.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(upload, *tasks, return_exceptions=True)
    await uploader.scan()  # the last segment and the playlist's end
    log.info("broadcast of room %s ended (worker exit %s)", args.room, process.returncode)
    await ws.close()
    return True


async def serve_remote(args: argparse.Namespace) -> int:
    headers = {"Authorization": f"Bearer {args.admin_key}"}
    failures = 0
    async with aiohttp.ClientSession(headers=headers) as http:
        while True:
            try:
                async with http.ws_connect(f"{args.server}/ws/live/{args.room}", heartbeat=10) as ws:
                    failures = 0
                    log.info("connected to %s, waiting for room %s to broadcast", args.server, args.room)
                    await broadcast_once(http, ws, args)
            except aiohttp.WSServerHandshakeError as exc:
                if exc.status in (401, 403, 409):
                    print(
                        f"conference live: the server refused this compositor ({exc.status})", file=sys.stderr
                    )
                    return 2
                failures += 1
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                log.warning("server %s: %s", args.server, exc)
                failures += 1
            await asyncio.sleep(RECONNECT_S[min(failures, len(RECONNECT_S) - 1)] if failures else 0.2)


def configure(parser: argparse.ArgumentParser) -> None:
    worker.configure(parser)
    parser.add_argument(
        "--server",
        help="run on a machine of its own for this server (URL), which sends the room's RTP here;"
        " without it the process is the worker the server starts",
    )
    parser.add_argument("--room", help="with --server: the room whose broadcasts this machine composes")
    parser.add_argument(
        "--admin-key",
        default=os.environ.get("CONFERENCE_ADMIN_KEY"),
        help="with --server: the server's admin key (default: $CONFERENCE_ADMIN_KEY)",
    )
    parser.add_argument(
        "--admin-key-file", type=Path, help="with --server: read the admin key from this file"
    )


def run(args: argparse.Namespace) -> int:
    if not args.server:
        return worker.run(args)
    logging.basicConfig(level=logging.INFO, format="live %(levelname)s %(message)s", stream=sys.stderr)
    if args.admin_key_file is not None:
        args.admin_key = args.admin_key_file.read_text().strip()
    if not args.admin_key or not args.room:
        print("conference live --server: --room and --admin-key(-file) are required", file=sys.stderr)
        return 2
    args.server = args.server.rstrip("/")
    if args.host == "127.0.0.1":
        args.host = own_address(args.server)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(serve_remote(args))
    return 0
