"""Prepared clips ("VCR"): the chair's films, uploaded before or during the meeting, checked,
transcoded once and kept in ``<data_dir>/clips/<room>/<id>/`` (``meta.json``, ``packets.bin``,
``thumb.jpg``, ``preview.webm``).

- ``POST /api/rooms/{room}/clips``: multipart, one file part; the file is checked at once (a file
  that is not a video or whose picture does not decode is refused with 400 ``bad_clip``, one over
  ``clip_max_bytes`` with 413, and nothing is kept); then it is transcoded in a worker process
  (``recorder.clips``, niced, one at a time) and the answer is 202 with the clip (``state``
  ``processing``).
- ``GET /api/rooms/{room}/clips`` and ``GET /api/rooms/{room}/clips/{id}``: ``state`` (processing,
  ready, failed), ``progress`` (0-1), ``duration_s``, ``error``, and signed links to the thumbnail
  and the console's preview (they work without a header, for ``<img>`` and ``<video>``).
- ``DELETE /api/rooms/{room}/clips/{id}``: refused while the clip plays.

The chair (or the admin key) only. Playing is ``signaling.clip_control``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlencode

from aiohttp import BodyPartReader, web

from conference.roles import Permission
from recorder.clips import ClipError, probe

log = logging.getLogger(__name__)

SIGNED_URL_TTL_S = 6 * 3600  # a console left open all meeting keeps its thumbnails
MAX_CLIPS_PER_ROOM = 100
FILES = {"thumbnail": ("thumb.jpg", "image/jpeg"), "preview": ("preview.webm", "video/webm")}
_SAFE_ROOM = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_CLIP_ID = re.compile(r"[0-9a-f]{16}")


class ClipRefused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class ClipLibrary:
    """The clips on disk and their transcoding jobs (one at a time: the machine's cores belong to
    the meeting first)."""

    def __init__(self, data_dir: Path, max_bytes: int) -> None:
        self.root = data_dir / "clips"
        self.max_bytes = max_bytes
        self._jobs: set[asyncio.Task[None]] = set()
        self._one_at_a_time = asyncio.Semaphore(1)
        self._meta: dict[tuple[str, str], dict[str, Any]] = {}

    def room_dir(self, room: str) -> Path:
        name = room if _SAFE_ROOM.fullmatch(room) and room not in (".", "..") else None
        return self.root / (name or "h-" + hashlib.sha256(room.encode()).hexdigest()[:32])

    def clip_dir(self, room: str, clip_id: str) -> Path:
        return self.room_dir(room) / clip_id

    def get(self, room: str, clip_id: str) -> dict[str, Any] | None:
        if not _CLIP_ID.fullmatch(clip_id):
            return None
        meta = self._meta.get((room, clip_id))
        if meta is not None:
            return meta
        try:
            meta = json.loads((self.clip_dir(room, clip_id) / "meta.json").read_text())
        except (OSError, ValueError):
            return None
        if meta.get("state") == "processing" and not self._running(room, clip_id):
            meta = {**meta, "state": "failed", "error": "the server stopped while it was transcoding"}
        self._meta[(room, clip_id)] = meta
        return meta

    def _running(self, room: str, clip_id: str) -> bool:
        return any(task.get_name() == f"clip:{room}:{clip_id}" for task in self._jobs)

    def list(self, room: str) -> list[dict[str, Any]]:
        base = self.room_dir(room)
        if not base.is_dir():
            return []
        found = (self.get(room, entry.name) for entry in base.iterdir())
        return sorted((m for m in found if m is not None), key=lambda m: m["created_at"])

    def _save(self, meta: dict[str, Any]) -> None:
        directory = self.clip_dir(meta["room"], meta["id"])
        tmp = directory / "meta.json.tmp"
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, directory / "meta.json")
        self._meta[(meta["room"], meta["id"])] = meta

    async def add(self, room: str, part: BodyPartReader, declared: int | None) -> dict[str, Any]:
        """Receive, check and queue one upload; refused uploads leave nothing behind."""
        if declared is not None and declared > self.max_bytes + 64 * 1024:
            raise ClipRefused(413, "too_large", f"the file is larger than {self.max_bytes} bytes")
        if len(self.list(room)) >= MAX_CLIPS_PER_ROOM:
            raise ClipRefused(409, "conflict", f"room {room!r} has {MAX_CLIPS_PER_ROOM} clips: delete some")
        clip_id = secrets.token_hex(8)
        directory = self.clip_dir(room, clip_id)
        directory.mkdir(parents=True)
        try:
            source = directory / "source"
            size = await _receive(part, source, self.max_bytes)
            try:
                facts = await asyncio.get_running_loop().run_in_executor(None, probe, source)
            except ClipError as exc:
                raise ClipRefused(400, "bad_clip", str(exc)) from None
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        name = _display_name(part.filename or "clip")
        meta = {
            "id": clip_id,
            "room": room,
            "name": name,
            "state": "processing",
            "progress": 0.0,
            "size": size,
            "duration_s": round(facts.duration_s, 3),
            "width": None,
            "height": None,
            "has_audio": facts.has_audio,
            "error": None,
            "created_at": time.time(),
        }
        self._save(meta)
        task = asyncio.get_running_loop().create_task(self._transcode(meta), name=f"clip:{room}:{clip_id}")
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)
        return meta

    async def _transcode(self, meta: dict[str, Any]) -> None:
        directory = self.clip_dir(meta["room"], meta["id"])
        result: dict[str, Any] | None = None
        error = "the transcoder stopped without a result"
        async with self._one_at_a_time:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "recorder.clips",
                str(directory / "source"),
                str(directory),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                assert process.stdout is not None
                async for line in process.stdout:
                    try:
                        message = json.loads(line)
                    except ValueError:
                        continue
                    if "progress" in message:
                        meta["progress"] = float(message["progress"])  # in memory: polled, not saved
                    elif "result" in message:
                        result = message["result"]
                    elif "error" in message:
                        error = str(message["error"])
                await process.wait()
            except asyncio.CancelledError:  # the server stops: the transcoder goes with it
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
                raise
        if result is not None and process.returncode == 0:
            meta.update(state="ready", progress=1.0, error=None)
            meta.update({k: result[k] for k in ("duration_s", "width", "height", "has_audio")})
            (directory / "source").unlink(missing_ok=True)  # the prepared packets are what plays
        else:
            meta.update(state="failed", error=error)
            log.info("clip %s of room %s failed: %s", meta["id"], meta["room"], error)
        self._save(meta)

    def delete(self, room: str, clip_id: str) -> None:
        shutil.rmtree(self.clip_dir(room, clip_id), ignore_errors=True)
        self._meta.pop((room, clip_id), None)

    async def close(self) -> None:
        for task in list(self._jobs):
            task.cancel()
        if self._jobs:
            await asyncio.gather(*self._jobs, return_exceptions=True)


async def _receive(part: BodyPartReader, path: Path, limit: int) -> int:
    size = 0
    with open(path, "wb") as out:
        while chunk := await part.read_chunk(256 * 1024):
            size += len(chunk)
            if size > limit:
                raise ClipRefused(413, "too_large", f"the file is larger than {limit} bytes")
            out.write(chunk)
    if size == 0:
        raise ClipRefused(400, "bad_clip", "the file is empty")
    return size


def _display_name(filename: str) -> str:
    # Browsers send the name as is; some clients (aiohttp, curl's --form-string) percent-encode it.
    name = " ".join(Path(unquote(filename)).name.split())[:100]
    return name or "clip"


# --- REST ------------------------------------------------------------------------------------------


def _signature(secret: str, room: str, clip_id: str, file: str, expires: int) -> str:
    key = hmac.new(secret.encode(), b"conference clip link v1", hashlib.sha256).digest()
    digest = hmac.new(key, f"{room}\n{clip_id}\n{file}\n{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def clip_view(meta: dict[str, Any], secret: str, now: float | None = None) -> dict[str, Any]:
    """The clip as the API shows it, with signed links once it is ready."""
    view = {k: v for k, v in meta.items() if k != "room"}
    view["thumbnail_url"] = view["preview_url"] = None
    if meta["state"] == "ready":
        expires = int((time.time() if now is None else now) + SIGNED_URL_TTL_S)
        base = f"/api/rooms/{meta['room']}/clips/{meta['id']}"
        for file in FILES:
            query = urlencode(
                {"expires": expires, "sig": _signature(secret, meta["room"], meta["id"], file, expires)}
            )
            view[f"{file}_url"] = f"{base}/{file}?{query}"
    return view


LIBRARY_KEY = web.AppKey("clip_library", ClipLibrary)


def setup(app: web.Application) -> ClipLibrary:
    from . import app as server

    settings = app[server.SETTINGS_KEY]
    library = ClipLibrary(settings.data_dir, settings.clip_max_bytes)
    app[LIBRARY_KEY] = library

    async def chair(request: web.Request) -> str:
        room = request.match_info["room"]
        await server.authorize(request, room, Permission.SET_PROGRAM)
        return room

    def found(room: str, clip_id: str) -> dict[str, Any]:
        meta = library.get(room, clip_id)
        if meta is None:
            raise server.json_error(404, "not_found", f"no clip {clip_id!r} in room {room!r}")
        return meta

    async def upload(request: web.Request) -> web.Response:
        room = await chair(request)
        try:
            reader = await request.multipart()
            part = await reader.next()
            while part is not None and not (isinstance(part, BodyPartReader) and part.filename):
                part = await reader.next()
        except (ValueError, AssertionError, KeyError):
            raise server.json_error(400, "bad_request", "send the film as multipart/form-data") from None
        if part is None:
            raise server.json_error(400, "bad_request", "the form has no file part")
        try:
            meta = await library.add(room, part, request.content_length)
        except ClipRefused as exc:
            if exc.status == 413:
                raise server.json_error(413, "too_large", exc.message, max_size=library.max_bytes) from None
            raise server.json_error(exc.status, exc.code, exc.message) from None
        return web.json_response(clip_view(meta, request.app[server.SECRET_KEY]), status=202)

    async def listing(request: web.Request) -> web.Response:
        room = await chair(request)
        secret = request.app[server.SECRET_KEY]
        return web.json_response({"clips": [clip_view(m, secret) for m in library.list(room)]})

    async def detail(request: web.Request) -> web.Response:
        room = await chair(request)
        meta = found(room, request.match_info["clip"])
        return web.json_response(clip_view(meta, request.app[server.SECRET_KEY]))

    async def remove(request: web.Request) -> web.Response:
        room = await chair(request)
        meta = found(room, request.match_info["clip"])
        state = await app[server.STORE_KEY].get(room)
        if state is not None and state.clip is not None and state.clip["id"] == meta["id"]:
            raise server.json_error(409, "conflict", "the clip is in the player: stop it first")
        if meta["state"] == "processing":
            raise server.json_error(409, "conflict", "the clip is still being transcoded")
        library.delete(room, meta["id"])
        return web.json_response({"deleted": meta["id"]})

    def file_handler(file: str) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            room, clip_id = request.match_info["room"], request.match_info["clip"]
            server.check_throttle(request)
            try:
                expires = int(request.query.get("expires", ""))
            except ValueError:
                raise server.json_error(403, "forbidden", "the link has no valid expiry") from None
            expected = _signature(request.app[server.SECRET_KEY], room, clip_id, file, expires)
            if not hmac.compare_digest(expected, request.query.get("sig", "")):
                request.app[server.GUARD_KEY].failed(request)
                raise server.json_error(403, "forbidden", "the link's signature does not match")
            if expires < time.time():
                raise server.json_error(403, "forbidden", "the link has expired: ask for a new one")
            meta = found(room, clip_id)
            name, content_type = FILES[file]
            path = library.clip_dir(room, meta["id"]) / name
            if not path.is_file():
                raise server.json_error(404, "not_found", f"clip {clip_id!r} has no {file}")
            return web.FileResponse(path, headers={"Content-Type": content_type, "Cache-Control": "private"})

        return handler

    app.router.add_post("/api/rooms/{room}/clips", upload)
    app.router.add_get("/api/rooms/{room}/clips", listing)
    app.router.add_get("/api/rooms/{room}/clips/{clip}", detail)
    app.router.add_delete("/api/rooms/{room}/clips/{clip}", remove)
    for file in FILES:
        app.router.add_get(f"/api/rooms/{{room}}/clips/{{clip}}/{file}", file_handler(file))

    async def close(app: web.Application) -> None:
        await library.close()

    app.on_cleanup.append(close)
    return library
