"""Compositors on other machines (setting ``live_compositor = "remote"``).

A city's server need not spend its cores on x264: ``conference live --server URL --room R`` runs
the program compositor on another machine (``signaling.live_remote``). It connects here with the
admin key and waits; when the room broadcasts, ``signaling.broadcast`` takes it as the stream's
compositor exactly as it takes a local one: the same JSON lines, only over a WebSocket
(``GET /ws/live/{room}``), and the room's plain RTP sent to the compositor's machine, which must be
in ``live_hosts`` (a plain transport sends UDP where it is told, so only to hosts the operator
named). The compositor uploads what it writes: ``PUT /live/{room}/{name}`` for each finished
segment and then the playlist, ``DELETE`` for segments that left the sliding window. Viewers read
them here as they read a local compositor's files (``signaling.public``): the public side, nginx
and a CDN in front see no difference.

Several compositors may connect for one room: the first takes the broadcast, the others stand by
and the next takes over when it goes (its playlist goes on after a discontinuity).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Collection
from typing import Any

from aiohttp import WSMsgType, web

from .app import ADMIN_KEY_KEY, BROADCASTS_KEY, SETTINGS_KEY, bearer
from .broadcast import live_dir
from .errors import json_error
from .guard import check_throttle
from .public import LIVE_FILE, ROOM_NAME, SITE_KEY
from .tokens import admin_key_matches

MAX_LINE_BYTES = 64 * 1024  # the worker's lines: an offer, stats; the server's: program changes
MAX_UPLOAD_BYTES = 32 * 1024 * 1024  # a 2 s segment at 1280x720 is ~0.6 MB
MAX_QUEUED_LINES = 256


class RemoteCompositor:
    """A compositor connected over a WebSocket: ``signaling.broadcast.Compositor``."""

    def __init__(self, ws: web.WebSocketResponse, peers: Collection[str]) -> None:
        self.ws = ws
        self.peers = peers
        self._incoming: asyncio.Queue[bytes] = asyncio.Queue(MAX_QUEUED_LINES)
        self._outgoing: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.gone = False

    def received(self, text: str) -> bool:
        """A line from the compositor; False if it floods (more lines than the server reads)."""
        try:
            self._incoming.put_nowait(text.encode())
        except asyncio.QueueFull:
            return False
        return True

    def ended(self) -> None:
        self.gone = True
        with contextlib.suppress(asyncio.QueueFull):
            self._incoming.put_nowait(b"")
        self._outgoing.put_nowait(None)

    async def readline(self) -> bytes:
        if self.gone and self._incoming.empty():
            return b""
        return await self._incoming.get()

    def write(self, line: bytes) -> None:
        if not self.gone:
            self._outgoing.put_nowait(line)

    async def drain(self) -> None:
        return None  # the writer task sends as fast as the socket takes; lines are small

    @property
    def closing(self) -> bool:
        return self.gone or self.ws.closed

    def kill(self) -> None:
        self.ended()

    async def close(self) -> None:
        self.ended()

    async def send_lines(self) -> None:
        """The writer: the server's lines to the compositor, in order, until it is gone."""
        while (line := await self._outgoing.get()) is not None:
            await self.ws.send_str(line.decode().rstrip("\n"))
        await self.ws.close()


def _admin(request: web.Request) -> None:
    token = bearer(request)
    if token is None:
        raise json_error(
            401, "unauthorized", "a compositor connects with the admin key (Authorization: Bearer)"
        )
    check_throttle(request)
    if not admin_key_matches(request.app[ADMIN_KEY_KEY], token):
        raise json_error(403, "forbidden", "only the admin key may connect a compositor or upload its files")


def _remote_room(request: web.Request) -> str:
    _admin(request)
    if request.app[SETTINGS_KEY].live_compositor != "remote":
        raise json_error(
            409,
            "conflict",
            "this server starts its compositors itself (setting live_compositor is not remote)",
        )
    room = request.match_info["room"]
    if not ROOM_NAME.fullmatch(room):
        raise json_error(400, "bad_request", "not a room name")
    return room


async def compositor_socket(request: web.Request) -> web.StreamResponse:
    room = _remote_room(request)
    broadcasts = request.app[BROADCASTS_KEY]
    ws = web.WebSocketResponse(heartbeat=10, max_msg_size=MAX_LINE_BYTES)
    await ws.prepare(request)
    compositor = RemoteCompositor(ws, request.app[SETTINGS_KEY].live_hosts)
    writer = asyncio.get_running_loop().create_task(compositor.send_lines())
    broadcasts.attach(room, compositor)
    try:
        async for message in ws:
            if message.type != WSMsgType.TEXT or not compositor.received(message.data):
                await ws.close(code=1008, message=b"JSON lines only, read one at a time")
                break
    finally:
        broadcasts.detach(room, compositor)
        compositor.ended()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer, 2.0)
        writer.cancel()
    return ws


async def upload_file(request: web.Request) -> web.Response:
    room, name = _remote_room(request), request.match_info["name"]
    if not LIVE_FILE.fullmatch(name):
        raise json_error(400, "bad_request", "index.m3u8 or seg-NNNNN.ts only")
    if request.content_length is not None and request.content_length > MAX_UPLOAD_BYTES:
        raise json_error(413, "too_large", f"a live file is at most {MAX_UPLOAD_BYTES} bytes")
    body = bytearray()
    async for chunk in request.content.iter_chunked(1 << 16):
        body += chunk
        if len(body) > MAX_UPLOAD_BYTES:
            raise json_error(413, "too_large", f"a live file is at most {MAX_UPLOAD_BYTES} bytes")
    directory = live_dir(request.app[SETTINGS_KEY], room)
    await asyncio.to_thread(_write, directory, name, bytes(body))
    request.app[SITE_KEY].forget(directory / name)  # type: ignore[attr-defined]
    return web.json_response({"written": len(body)})


def _write(directory: Any, name: str, body: bytes) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    temporary = directory / f".{name}.upload"
    temporary.write_bytes(body)
    os.replace(temporary, directory / name)  # a viewer reads the old file or the new, never half


async def delete_file(request: web.Request) -> web.Response:
    room, name = _remote_room(request), request.match_info["name"]
    if not LIVE_FILE.fullmatch(name) or name == "index.m3u8":
        raise json_error(400, "bad_request", "only segments (seg-NNNNN.ts) are deleted")
    path = live_dir(request.app[SETTINGS_KEY], room) / name
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    request.app[SITE_KEY].forget(path)  # type: ignore[attr-defined]
    return web.json_response({})


def setup(app: web.Application) -> None:
    app.router.add_get("/ws/live/{room}", compositor_socket)
    app.router.add_put("/live/{room}/{name}", upload_file)
    app.router.add_delete("/live/{room}/{name}", delete_file)
