"""What the public sees of a room: the HLS stream, the short link with its QR code, the page.

- ``/live/{room}/index.m3u8`` and its segments: plain files written by the room's compositor
  (``signaling.broadcast``), served with headers a CDN or nginx caches by (segments immutable,
  the playlist one second). Viewers only ever GET these: nothing reaches the room or the media.
- ``/w/{code}``: the public page (``web/watch.html``); ``code`` is a keyed hash of the room name
  (the server's secret), so links cannot be guessed from room names and need no stored state.
- ``/w/{code}/qr.svg``, ``/w/{code}/qr.png``: the QR code of the short link (``segno``).
- ``GET /api/public/{code}``: the page's data (title, topic, start, background, broadcasting).
- ``POST /api/public/{code}/watching``: the page's heartbeat, for the number of people watching.
- ``GET /api/rooms/{room}/public`` (chair or admin key): ``{"url", "qr_svg", "broadcasting", ...}``.
- ``PATCH /api/rooms/{room}``: ``title``, ``topic``, ``starts_at``, ``background``, ``auto_broadcast``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import re
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import segno
from aiohttp import web

from conference.comments import set_moderation
from conference.roles import Permission, can
from conference.room import CommandError, Event, RoomState, set_public, set_title
from conference.store import RoomStore

from . import poster
from .app import (
    BROADCASTS_KEY,
    SECRET_KEY,
    SETTINGS_KEY,
    STORE_KEY,
    authorize,
    command_error,
    json_body,
    json_error,
    web_dir,
)
from .broadcast import live_dir
from .guard import PAGE_HEADERS, content_security_policy
from .protocol import TokenBucket

CODE_LENGTH = 10
LIVE_FILE = re.compile(r"index\.m3u8|seg-\d{5,9}\.ts")
ROOM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
PLAYLIST_CACHE = "public, max-age=1"
SEGMENT_CACHE = "public, max-age=31536000, immutable"
PLAYLIST_REREAD_S = 0.5
MAX_CACHED_FILES = 48  # a few rooms' sliding windows of segments (~0.6 MB each at 1280x720)
VIEWER_TTL_S = 70.0  # the page says it is watching every 30 s
MAX_VIEWERS_TRACKED = 100_000
COUNT_INTERVAL_S = 5.0
MAX_COUNTED_FILES = 500
VIEWER_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
PATCH_FIELDS = {"title", "topic", "starts_at", "background", "auto_broadcast", "comment_moderation"}

SITE_KEY = web.AppKey("public_site", object)


def public_code(secret: str, room: str) -> str:
    digest = hmac.new(secret.encode(), b"public-link\0" + room.encode(), hashlib.sha256).digest()
    return base64.b32encode(digest).decode().lower()[:CODE_LENGTH]


class PublicSite:
    def __init__(self, store: RoomStore, secret: str, live_requests_per_s: float = 1200.0) -> None:
        self.store = store
        self.secret = secret
        self._rooms: dict[str, str] = {}  # code -> room
        self.viewers: dict[str, dict[str, float]] = {}  # room -> viewer id -> last heartbeat
        self._counted: dict[str, tuple[float, int]] = {}  # room -> (when, viewers)
        # Live files in memory: a segment never changes (read once), the playlist is read again at
        # most every PLAYLIST_REREAD_S. No disk read per viewer, none in the loop for a cached file.
        self._files: OrderedDict[Path, tuple[float, bytes]] = OrderedDict()
        # Live-file requests the server answers itself (setting live_requests_per_s, bursts of twice
        # that); beyond it a viewer is refused (503, retry in a second) rather than the loop falling
        # behind the meeting. A crowd belongs behind nginx or a CDN, which asks for each file once.
        self.live_rate = TokenBucket(live_requests_per_s, max(1, int(2 * live_requests_per_s)))
        # Requests the server itself answered per live file (the last few hundred): what a caching
        # proxy in front saves shows here (tests/test_live_nginx.py).
        self.origin_requests: OrderedDict[str, int] = OrderedDict()
        self.audience: Any = None  # signaling.audience.Audience, set by signaling.comments

    def live_bytes(self, path: Path, now: float) -> bytes | None:
        cached = self._files.get(path)
        playlist = path.name == "index.m3u8"
        if cached is not None and (not playlist or now - cached[0] < PLAYLIST_REREAD_S):
            self._files.move_to_end(path)
            return cached[1]
        try:
            body = path.read_bytes()
        except OSError:  # not written yet, or deleted from the sliding window
            self._files.pop(path, None)
            return None
        self._files[path] = (now, body)
        while len(self._files) > MAX_CACHED_FILES:
            self._files.popitem(last=False)
        return body

    def forget(self, path: Path) -> None:
        """A live file changed or went (a remote compositor's upload): read it again when asked."""
        self._files.pop(path, None)

    def count_origin(self, path: str) -> None:
        counts = self.origin_requests
        counts[path] = counts.get(path, 0) + 1
        counts.move_to_end(path)
        while len(counts) > MAX_COUNTED_FILES:
            counts.popitem(last=False)

    def code(self, room: str) -> str:
        code = public_code(self.secret, room)
        self._rooms[code] = room
        return code

    async def room_of(self, code: str) -> RoomState | None:
        room = self._rooms.get(code)
        if room is None:
            for name in await self.store.list_rooms():
                self.code(name)
            room = self._rooms.get(code)
        return None if room is None else await self.store.get(room)

    def watching(self, room: str, viewer: str | None, now: float) -> int:
        """Note ``viewer``'s heartbeat; the number of viewers heard from lately (counted every few
        seconds, not per request: thousands of heartbeats must not each walk the table)."""
        seen = self.viewers.setdefault(room, {})
        counted = self._counted.get(room)
        if viewer is not None and (viewer in seen or len(seen) < MAX_VIEWERS_TRACKED):
            if viewer not in seen and counted is not None:
                counted = self._counted[room] = (counted[0], counted[1] + 1)  # a newcomer counts now
            seen[viewer] = now
        if counted is None or now - counted[0] > COUNT_INTERVAL_S:
            for key in [k for k, t in seen.items() if now - t > VIEWER_TTL_S]:
                del seen[key]
            counted = self._counted[room] = (now, len(seen))
        return counted[1]


def _site(request: web.Request) -> PublicSite:
    return request.app[SITE_KEY]  # type: ignore[return-value]


def base_url(request: web.Request) -> str:
    settings = request.app[SETTINGS_KEY]
    configured = settings.public_base_url
    return configured.rstrip("/") if configured else str(request.url.origin())


def public_json(state: RoomState, now: float | None = None) -> dict[str, Any]:
    broadcast = state.broadcast
    return {
        "room": state.room,
        "title": state.title,
        "topic": state.topic,
        "starts_at": state.starts_at,
        "background": state.background,
        "broadcasting": broadcast.active,
        "ended": not broadcast.active and broadcast.stopped_at is not None,
        "started_at": broadcast.started_at,
        "playlist": f"/live/{state.room}/index.m3u8",
        # The running order as the public sees it: titles, kinds and planned times, the current item.
        "agenda": [{k: item[k] for k in ("title", "kind", "planned_s")} for item in state.agenda],
        "current_item": state.agenda_index,
    }


# --- the HLS files ---------------------------------------------------------------------------------


async def live_file(request: web.Request) -> web.StreamResponse:
    room, name = request.match_info["room"], request.match_info["name"]
    headers = {"Access-Control-Allow-Origin": "*", "Cache-Control": "public, max-age=1"}
    if not ROOM_NAME.fullmatch(room) or not LIVE_FILE.fullmatch(name):
        raise web.HTTPNotFound(headers=headers)
    site = _site(request)
    if site.live_rate.take() > 0:
        # Over the origin's budget: refusing costs the loop a fraction of serving (players retry).
        raise web.HTTPServiceUnavailable(headers={**headers, "Retry-After": "1", "Cache-Control": "no-store"})
    site.count_origin(f"{room}/{name}")
    body = site.live_bytes(live_dir(request.app[SETTINGS_KEY], room) / name, time.monotonic())
    if body is None:
        raise web.HTTPNotFound(headers=headers)
    if name == "index.m3u8":
        headers["Cache-Control"] = PLAYLIST_CACHE
        return web.Response(body=body, content_type="application/vnd.apple.mpegurl", headers=headers)
    headers["Cache-Control"] = SEGMENT_CACHE
    return web.Response(body=body, content_type="video/mp2t", headers=headers)


# --- the page and its data -------------------------------------------------------------------------


async def watch_page(request: web.Request) -> web.StreamResponse:
    site = _site(request)
    state = await site.room_of(request.match_info["code"])
    if state is None:
        raise web.HTTPNotFound(text="no such meeting")
    if site.audience is not None:
        site.audience.seen(state.room, None, visit=True)
    path = web_dir() / "watch.html"
    headers = {
        "Cache-Control": "public, max-age=60",
        "Referrer-Policy": "no-referrer",
        "Content-Security-Policy": content_security_policy(path),
        **PAGE_HEADERS,
    }
    return web.FileResponse(path, headers=headers)


def _qr(request: web.Request, code: str) -> segno.QRCode:
    return segno.make(f"{base_url(request)}/w/{code}", error="m")


async def qr_image(request: web.Request) -> web.Response:
    code, kind = request.match_info["code"], request.match_info["kind"]
    if await _site(request).room_of(code) is None:
        raise web.HTTPNotFound(text="no such meeting")
    out = io.BytesIO()
    if kind == "svg":
        _qr(request, code).save(out, kind="svg", scale=8, border=2, xmldecl=False)
        content_type = "image/svg+xml"
    else:
        _qr(request, code).save(out, kind="png", scale=16, border=2)
        content_type = "image/png"
    headers = {"Cache-Control": "public, max-age=3600"}
    if "download" in request.query:
        headers["Content-Disposition"] = f'attachment; filename="meeting-{code}.{kind}"'
    return web.Response(body=out.getvalue(), content_type=content_type, headers=headers)


async def public_info(request: web.Request) -> web.Response:
    site = _site(request)
    state = await site.room_of(request.match_info["code"])
    if state is None:
        raise json_error(404, "not_found", "no such meeting")
    stream = request.app[BROADCASTS_KEY].streams.get(state.room)
    body = {
        **public_json(state),
        "viewers": site.watching(state.room, None, time.time()),
        # The stream runs and shows the slate: the page plays it, and the meeting appears in it.
        "standby": bool(stream and stream.standby and not stream.ending),
    }
    return web.json_response(body, headers={"Cache-Control": "public, max-age=2"})


async def post_watching(request: web.Request) -> web.Response:
    site = _site(request)
    state = await site.room_of(request.match_info["code"])
    if state is None:
        raise json_error(404, "not_found", "no such meeting")
    viewer = request.query.get("viewer", "")
    if not VIEWER_ID.fullmatch(viewer):
        raise json_error(400, "bad_request", "viewer must be 8-64 letters, digits, '_' or '-'")
    count = site.watching(state.room, viewer, time.time())
    return web.json_response({"viewers": count}, headers={"Cache-Control": "no-store"})


# --- the chair's side --------------------------------------------------------------------------------


async def room_public(request: web.Request) -> web.Response:
    room = request.match_info["room"]
    _, claims = await authorize(request, room)
    if claims is not None and not (
        can(claims.role, Permission.BROADCAST_CONTROL) or can(claims.role, Permission.MODERATE_COMMENTS)
    ):
        raise json_error(403, "forbidden", f"role {claims.role} may not see the public link")
    state = await request.app[STORE_KEY].get(room)
    if state is None:
        raise json_error(404, "not_found", f"no room {room!r}")
    site = _site(request)
    code = site.code(room)
    base = base_url(request)
    streams = request.app[BROADCASTS_KEY].streams
    return web.json_response(
        {
            "url": f"{base}/w/{code}",
            "qr_svg": f"{base}/w/{code}/qr.svg",
            "qr_png": f"{base}/w/{code}/qr.png",
            "poster": f"{base}/w/{code}/poster.png",
            "broadcasting": state.broadcast.active,
            "code": code,
            "playlist": f"{base}/live/{room}/index.m3u8",
            # Every process's, with Redis (signaling.audience.SharedFigures), else this one's.
            "viewers": site.audience.figures(room)["viewers"]
            if site.audience is not None and site.audience.room(room).shared is not None
            else site.watching(room, None, time.time()),
            "likes": 0 if site.audience is None else await site.audience.likes(room),
            "figures": None if site.audience is None else site.audience.figures(room),
            "comment_moderation": state.comment_moderation,
            "compositor": {"running": room in streams and streams[room].channel is not None},
            "auto_broadcast": state.auto_broadcast,
            **{k: v for k, v in public_json(state).items() if k not in ("playlist", "broadcasting")},
        }
    )


async def patch_room(request: web.Request) -> web.Response:
    room = request.match_info["room"]
    actor, _ = await authorize(request, room, Permission.BROADCAST_CONTROL)
    body = await json_body(request)
    unknown = set(body) - PATCH_FIELDS
    if unknown or not body:
        fields = f"give some of {sorted(PATCH_FIELDS)}; unknown: {sorted(unknown)}"
        raise json_error(400, "bad_request", fields)
    for key in ("title", "topic", "background"):
        if key in body and not isinstance(body[key], str):
            raise json_error(400, "bad_request", f"{key} must be a string")
    for key in ("auto_broadcast", "comment_moderation"):
        if key in body and not isinstance(body[key], bool):
            raise json_error(400, "bad_request", f"{key} must be true or false")
    starts_at = body.get("starts_at", False)
    if isinstance(starts_at, bool) and "starts_at" in body:
        raise json_error(400, "bad_request", "starts_at must be a time in Unix seconds or null")

    def change(state: RoomState) -> list[Event]:
        events: list[Event] = []
        if "title" in body:
            events += set_title(state, body["title"], by=actor.identity)
        if "comment_moderation" in body:
            events += set_moderation(state, body["comment_moderation"], by=actor.identity)
        if set(body) - {"title", "comment_moderation"}:
            events += set_public(
                state,
                topic=body.get("topic"),
                starts_at=starts_at,
                background=body.get("background"),
                auto_broadcast=body.get("auto_broadcast"),
                by=actor.identity,
            )
        return events

    try:
        state, _ = await request.app[STORE_KEY].update(room, change)
    except CommandError as exc:
        raise command_error(exc) from None
    return web.json_response({"version": state.version, **public_json(state)})


def setup(app: web.Application) -> None:
    app[SITE_KEY] = PublicSite(app[STORE_KEY], app[SECRET_KEY], app[SETTINGS_KEY].live_requests_per_s)
    app.router.add_get("/live/{room}/{name}", live_file)
    app.router.add_get("/w/{code}", watch_page)
    app.router.add_get(r"/w/{code}/qr.{kind:svg|png}", qr_image)
    app.router.add_get("/w/{code}/poster.png", poster.poster)
    app.router.add_get("/api/public/{code}", public_info)
    app.router.add_post("/api/public/{code}/watching", post_watching)
    app.router.add_get("/api/rooms/{room}/public", room_public)
    app.router.add_patch("/api/rooms/{room}", patch_room)
