"""The public's voice: comments, their moderation, likes, and the pushes to the public pages.

Public (no account; a signed cookie names the browser, ``signaling.abuse``):
- ``POST /w/{code}/comments`` ``{"nickname", "text"}`` -> ``{"id", "status"}`` (201; a repeat of the
  same text from the same browser or address within ``DUPLICATE_S`` answers the first one, 200).
- ``GET /w/{code}/comments``: approved comments (pinned first, then newest; ``?order=likes``), with
  ``likes`` and ``viewers``: also the page's poll fallback when Server-Sent Events do not get through.
- ``POST /w/{code}/likes`` ``{"count": N}`` (optionally ``"comment": id``): the page's batched taps.
- ``GET /w/{code}/events``: Server-Sent Events (``signaling.audience``).

Members and moderators (a token of the room):
- ``POST /api/rooms/{room}/comments`` ``{"text", "reply_to"?}``: a member's comment under the token's
  name, approved at once.
- ``GET /api/rooms/{room}/comments`` (moderator, chair, admin key): all, with status.
- The moderator commands (``conference.comments.ACTIONS``, each ``{"comment": id}``, ``answer_comment``
  also ``{"by": name}``) over the WebSocket and ``POST /api/rooms/{room}/commands`` run here through
  ``Rooms.extensions``; showing, hiding and answering change the room (the comment on screen, the
  answer's chapter in the recording). Moderators' sockets hear every change: ``{"type": "comment"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from conference.comment_store import CommentStore, create_comment_store
from conference.comments import (
    ACTIONS,
    MAX_NICKNAME,
    MAX_TEXT,
    Comment,
    answered,
    blocked_word,
    clean_text,
    duplicate_key,
    initial_status,
    moderate,
    parse_blocked_words,
    show_on_screen,
    sort_comments,
)
from conference.roles import Permission, Role, can
from conference.room import CommandError, Event, RoomState

from . import app as server
from .abuse import COOKIE, COOKIE_MAX_AGE, Limits, browser_cookie
from .audience import Audience, SharedFigures, TooManyStreams
from .guard import too_many
from .protocol import PROTOCOL_VERSION
from .public import SITE_KEY, PublicSite
from .rooms import Actor, Rooms

log = logging.getLogger(__name__)

COMMENTS_KEY = web.AppKey("comments", object)
DUPLICATE_S = 600.0
PENDING_S = 10.0
MAX_LIKES_PER_POST = 50  # a second's taps of one person, generously
FIGURES_EVERY_S = 30.0
FRESH_PER_S = 5.0  # posts a second from one address without a browser cookie
PUBLIC_LISTED = 200
POSTING_ROLES = (Role.CHAIR, Role.VENUE, Role.MEMBER, Role.MODERATOR)


class Comments:
    """The comment store, the limits and the audience, with what the routes and commands share."""

    def __init__(self, app: web.Application) -> None:
        settings = app[server.SETTINGS_KEY]
        self.settings = settings
        self.rooms: Rooms = app[server.ROOMS_KEY]
        self.site: PublicSite = app[SITE_KEY]  # type: ignore[assignment]
        prefix = getattr(self.rooms.store, "prefix", "conference")  # the Redis room store's
        self.store: CommentStore = create_comment_store(settings, prefix)
        self.limits = Limits(settings.redis_url, prefix)
        self.blocked = parse_blocked_words(settings.comment_blocked_words)
        self.audience = Audience(self.store, bool(settings.redis_url), self._count_viewers)
        if self.limits.redis is not None:  # every process's viewers in the figures
            self.audience.shared_figures = SharedFigures(self.limits.redis, prefix)
        self._listing_cache: dict[tuple[str, str], tuple[float, list[dict[str, Any]]]] = {}
        self.store.subscribe(self._changed)
        for action in ACTIONS:
            self.rooms.extensions[action] = self.command
        self.site.audience = self.audience
        self.recording = app[server.RECORDING_KEY]
        self.recording.before_stop.append(self.write_figures)

    def _count_viewers(self, room: str, connected: list[str]) -> int:
        now = time.time()
        for viewer in connected:  # an open stream counts as a heartbeat
            self.site.watching(room, viewer, now)
        return self.site.watching(room, None, now)

    async def _changed(self, room: str, comment: Comment) -> None:
        self._listing_cache = {k: v for k, v in self._listing_cache.items() if k[0] != room}
        if comment.status == "approved":
            self.audience.push(room, "comment", comment.public_json())
        elif comment.status == "rejected":
            self.audience.push(room, "comment", {"id": comment.id, "status": "rejected"})
        message = {"v": PROTOCOL_VERSION, "type": "comment", "comment": comment.to_json()}
        for conn in list(self.rooms.connections.get(room, {}).values()):
            if can(conn.claims.role, Permission.MODERATE_COMMENTS):
                conn.send(message)

    async def figures(self, room: str) -> dict[str, int]:
        """What the organisers report: visits, unique and peak viewers, comments by members and by
        the public, replies, answered, likes."""
        return {**await self.store.figures(room), **self.audience.figures(room)}

    async def write_figures(self, room: str) -> None:
        """The figures into a recording's timeline (``public_figures``, which the reducer ignores):
        every FIGURES_EVERY_S while it records and once more as it stops, so the recording keeps them
        (``GET /api/recordings/{id}`` answers the last) even after a crash."""
        state = await self.rooms.store.get(room)
        if state is None or not state.recording.active:
            return
        entry = {
            "kind": "public_figures",
            "at": time.time(),
            "room": room,
            "figures": await self.figures(room),
        }
        await self.recording.on_events(room, [entry], state)

    async def keep_figures(self) -> None:
        while True:
            await asyncio.sleep(FIGURES_EVERY_S)
            for room in list(self.audience.rooms):
                try:
                    await self.write_figures(room)
                except Exception:
                    log.exception("figures of room %s could not be written", room)

    async def public_listing(self, room: str, order: str) -> list[dict[str, Any]]:
        """Approved comments, cached a second: a crowd's polls cost one store read a second."""
        key = (room, order)
        cached = self._listing_cache.get(key)
        now = time.monotonic()
        if cached is not None and now - cached[0] < 1.0:
            return cached[1]
        approved = await self.store.listing(room, ("approved",))
        listed = [c.public_json() for c in sort_comments(approved, order)[:PUBLIC_LISTED]]
        self._listing_cache[key] = (now, listed)
        return listed

    async def post(
        self, state: RoomState, author: str, name: str, text: Any, *, browser: str, address: str, **extra: Any
    ) -> tuple[Comment, bool]:
        """A new comment, or (for a repeat) the earlier one and True."""
        text = clean_text(text, "text", MAX_TEXT, multiline=True)
        digest = hashlib.sha256(duplicate_key(text).encode()).hexdigest()[:24]
        marks = [f"{state.room}:b:{browser}:{digest}", f"{state.room}:a:{address}:{digest}"]
        for mark in marks:  # held briefly while the comment is stored: a refused post's retry is no repeat
            earlier = await self.limits.first(mark, "", PENDING_S)
            if earlier is not None:
                if earlier and (comment := await self.store.get(state.room, int(earlier))) is not None:
                    return comment, True
                raise CommandError("conflict", "the same comment was just posted")
        held = "blocked_word" if blocked_word(text, self.blocked) else None
        status = initial_status(author, moderation=state.comment_moderation, held=held)
        comment = Comment(
            id=0, room=state.room, author=author, name=name, text=text, status=status,
            created_at=time.time(), browser=browser, held=held, **extra,
        )  # fmt: skip
        try:
            comment = await self.store.add(comment)
        except BaseException:
            for mark in marks:
                with contextlib.suppress(Exception):  # Redis away: the mark expires after PENDING_S
                    await self.limits.release(mark)
            raise
        for mark in marks:  # the marks now name the comment a repeat answers with
            await self.limits.release(mark)
            await self.limits.first(mark, str(comment.id), DUPLICATE_S)
        return comment, False

    async def command(self, room: str, actor: Actor, msg: dict[str, Any]) -> dict[str, Any]:
        action, comment_id = msg["type"], msg["comment"]
        comment = await self.store.get(room, comment_id)
        if comment is None:
            raise CommandError("not_found", f"no comment {comment_id} in room {room!r}")
        fields = moderate(comment, action, by=msg.get("by"), who=actor.identity)
        if fields:
            comment = await self.store.change(room, comment_id, fields)

        def change(state: RoomState) -> list[Event]:
            shown = state.on_screen is not None and state.on_screen.get("id") == comment.id
            if action == "show_comment":
                return show_on_screen(state, comment, by=actor.identity)
            if action == "answer_comment":
                return answered(state, comment, by=actor.identity)
            if shown and action in ("hide_comment", "reject_comment"):
                return show_on_screen(state, None, by=actor.identity)
            return []

        state, _ = await self.rooms.store.update(room, change)
        return {"version": state.version, "comment": comment.to_json(), "on_screen": state.on_screen}

    async def limit(self, kind: str, browser: str, address: str, fresh: bool = False) -> None:
        """The token buckets; ``fresh``: the request came without a valid browser cookie (a new
        visitor, or a client that drops cookies to dodge the per-browser bucket): such requests
        also share one small bucket per address."""
        s = self.settings
        if fresh:
            wait = await self.limits.take(f"fresh:{address}", FRESH_PER_S, 10 * FRESH_PER_S)
            if wait > 0:
                raise too_many("too many new visitors from this address; try again later", wait)
        if kind == "post":
            per_browser, per_ip = s.comment_posts_per_min / 60, s.comment_posts_per_min_ip / 60
            bursts = (max(3.0, s.comment_posts_per_min / 2), max(5.0, s.comment_posts_per_min_ip / 6))
        else:
            per_browser, per_ip = s.like_posts_per_s, s.like_posts_per_s_ip
            bursts = (max(3.0, 2 * per_browser), max(5.0, 2 * per_ip))
        for key, rate, burst in (
            (f"{kind}:ip:{address}", per_ip, bursts[1]),
            (f"{kind}:browser:{browser}", per_browser, bursts[0]),
        ):
            wait = await self.limits.take(key, rate, burst)
            if wait > 0:
                what = "comments" if kind == "post" else "likes"
                raise too_many(f"too many {what} from this {key.split(':')[1]}; try again later", wait)


def _comments(request: web.Request) -> Comments:
    return request.app[COMMENTS_KEY]  # type: ignore[return-value]


async def _public_room(request: web.Request) -> RoomState:
    state = await _comments(request).site.room_of(request.match_info["code"])
    if state is None:
        raise server.json_error(404, "not_found", "no such meeting")
    return state


def _json_only(request: web.Request) -> None:
    """Public posts are JSON only: another site's page cannot send that without a CORS preflight
    (which this server never grants), so it cannot make its visitors' browsers post here."""
    if request.content_type != "application/json":
        raise server.json_error(400, "bad_request", "send Content-Type: application/json")


def _browser(request: web.Request) -> tuple[str, str | None]:
    return browser_cookie(request.app[server.SECRET_KEY], request.cookies.get(COOKIE))


def _with_cookie(response: web.StreamResponse, cookie: str | None) -> web.StreamResponse:
    if cookie is not None:
        response.set_cookie(
            COOKIE, cookie, max_age=COOKIE_MAX_AGE, path="/w/", httponly=True, samesite="Lax",
            secure=bool(response.headers.get("Strict-Transport-Security")),
        )  # fmt: skip
    response.headers["Cache-Control"] = "no-store"
    return response


def _command_error(exc: CommandError) -> web.HTTPException:
    return server.command_error(exc)


# --- public routes ------------------------------------------------------------------------------------


async def post_public_comment(request: web.Request) -> web.Response:
    comments = _comments(request)
    state = await _public_room(request)
    _json_only(request)
    browser, cookie = _browser(request)
    address = request.app[server.GUARD_KEY].source(request)
    await comments.limit("post", browser, address, fresh=cookie is not None)
    body = await server.json_body(request)
    if set(body) - {"nickname", "text"}:
        raise server.json_error(400, "bad_request", "give nickname and text only")
    try:
        nickname = clean_text(body.get("nickname"), "nickname", MAX_NICKNAME, multiline=False)
        comment, repeat = await comments.post(
            state, "public", nickname, body.get("text"), browser=browser, address=address
        )
    except CommandError as exc:
        raise _command_error(exc) from None
    response = web.json_response({"id": comment.id, "status": comment.status}, status=200 if repeat else 201)
    return _with_cookie(response, cookie)


async def get_public_comments(request: web.Request) -> web.Response:
    comments = _comments(request)
    state = await _public_room(request)
    order = "likes" if request.query.get("order") == "likes" else "time"
    audience = comments.audience.room(state.room)
    body = {
        "comments": await comments.public_listing(state.room, order),
        "likes": await comments.audience.likes(state.room),
        "viewers": audience.viewers,
    }
    return web.json_response(body, headers={"Cache-Control": "public, max-age=2"})


async def post_likes(request: web.Request) -> web.Response:
    comments = _comments(request)
    state = await _public_room(request)
    _json_only(request)
    browser, cookie = _browser(request)
    await comments.limit(
        "like", browser, request.app[server.GUARD_KEY].source(request), fresh=cookie is not None
    )
    body = await server.json_body(request)
    count, comment = body.get("count"), body.get("comment")
    if set(body) - {"count", "comment"} or isinstance(count, bool) or not isinstance(count, int):
        raise server.json_error(400, "bad_request", "give count (an integer) and optionally comment")
    if not 1 <= count <= MAX_LIKES_PER_POST:
        raise server.json_error(400, "bad_request", f"count must be 1-{MAX_LIKES_PER_POST}")
    if comment is not None and (isinstance(comment, bool) or not isinstance(comment, int) or comment < 1):
        raise server.json_error(400, "bad_request", "comment must be a comment id")
    comments.audience.like(state.room, count, comment)
    likes = await comments.audience.likes(state.room)
    return _with_cookie(web.json_response({"likes": likes}), cookie)


async def get_events(request: web.Request) -> web.StreamResponse:
    comments = _comments(request)
    state = await _public_room(request)
    viewer = request.query.get("viewer")
    if viewer is not None and not (
        8 <= len(viewer) <= 64 and viewer.replace("-", "").replace("_", "").isalnum()
    ):
        raise server.json_error(400, "bad_request", "viewer must be 8-64 letters, digits, '_' or '-'")
    audience = comments.audience
    audience.seen(state.room, viewer)
    hello = {"likes": await audience.likes(state.room), "viewers": audience.room(state.room).viewers}
    _, cookie = _browser(request)  # the page's first post then already names its browser
    address = request.app[server.GUARD_KEY].source(request)
    try:
        return await audience.stream(request, state.room, viewer, hello, cookie, address)
    except TooManyStreams:
        raise web.HTTPServiceUnavailable(
            text='{"error": "busy", "message": "too many open event streams; poll the comments"}',
            content_type="application/json",
            headers={"Retry-After": "30"},
        ) from None


# --- members and moderators -----------------------------------------------------------------------


async def post_member_comment(request: web.Request) -> web.Response:
    room = request.match_info["room"]
    _, claims = await server.authorize(request, room)
    if claims is None or claims.role not in POSTING_ROLES:
        raise server.json_error(403, "forbidden", "members, venues, the chair and moderators post here")
    comments = _comments(request)
    state = await comments.rooms.store.get(room)
    if state is None:
        raise server.json_error(404, "not_found", f"no room {room!r}")
    body = await server.json_body(request)
    if set(body) - {"text", "reply_to"}:
        raise server.json_error(400, "bad_request", "give text and optionally reply_to")
    reply_to = body.get("reply_to")
    if reply_to is not None and (isinstance(reply_to, bool) or not isinstance(reply_to, int)):
        raise server.json_error(400, "bad_request", "reply_to must be a comment id")
    if reply_to is not None and await comments.store.get(room, reply_to) is None:
        raise server.json_error(404, "not_found", f"no comment {reply_to}")
    # The sector as the room knows it: the participant's (from the roster or the token), else the roster's.
    participant = state.participants.get(claims.identity)
    entry = state.roster.get(claims.identity) or {}
    sector = (participant.sector if participant is not None else "") or entry.get("sector") or None
    try:
        comment, repeat = await comments.post(
            state, "member", claims.name, body.get("text"), browser=claims.identity,
            address=f"member:{claims.identity}", sector=sector, reply_to=reply_to,
        )  # fmt: skip
    except CommandError as exc:
        raise _command_error(exc) from None
    return web.json_response(comment.to_json(), status=200 if repeat else 201)


async def get_room_comments(request: web.Request) -> web.Response:
    room = request.match_info["room"]
    await server.authorize(request, room, Permission.MODERATE_COMMENTS)
    comments = _comments(request)
    if await comments.rooms.store.get(room) is None:
        raise server.json_error(404, "not_found", f"no room {room!r}")
    status = request.query.get("status")
    statuses = tuple(status.split(",")) if status else None
    listed = await comments.store.listing(room, statuses)
    order = "likes" if request.query.get("order") == "likes" else "time"
    return web.json_response(
        {
            "comments": [c.to_json() for c in sort_comments(listed, order)],
            "figures": await comments.figures(room),
        }
    )


# --- wiring --------------------------------------------------------------------------------------------


def _lifecycle(comments: Comments) -> Any:
    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await comments.store.start()
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(comments.audience.run()), loop.create_task(comments.keep_figures())]
        yield
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        comments.audience.close_all()
        await comments.store.close()
        await comments.limits.close()

    return lifecycle


def setup(app: web.Application) -> None:
    comments = Comments(app)
    app[COMMENTS_KEY] = comments
    app.router.add_post("/w/{code}/comments", post_public_comment)
    app.router.add_get("/w/{code}/comments", get_public_comments)
    app.router.add_post("/w/{code}/likes", post_likes)
    app.router.add_get("/w/{code}/events", get_events)
    app.router.add_post("/api/rooms/{room}/comments", post_member_comment)
    app.router.add_get("/api/rooms/{room}/comments", get_room_comments)
    app.cleanup_ctx.append(_lifecycle(comments))

    async def close_streams(app: web.Application) -> None:  # before the server waits for handlers
        comments.audience.close_all()

    app.on_shutdown.append(close_streams)
