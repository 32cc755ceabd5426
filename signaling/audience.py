"""The public pages' live pushes: Server-Sent Events (``aiohttp-sse``) at ``GET /w/{code}/events``.

Every viewer's stream gets ``comment`` (an approved comment, new or changed, or one taken back:
``{"id", "status": "rejected"}``), ``likes`` (``{"likes": total}``) and ``viewers``
(``{"viewers": n}``). Likes arrive batched by the pages (``POST /w/{code}/likes``, one a second at
most); the server adds them up in memory and once a second writes the sum to the comment store and
pushes the new total to every viewer, so a room's likes cost one store write and one message per
viewer a second however many taps there are. Each message is serialised once per room, not per viewer.

A viewer whose queue is full (a stalled connection) is dropped: its page reconnects (EventSource
does so by itself) or falls back to polling ``GET /w/{code}/comments``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp_sse import EventSourceResponse

from conference.comment_store import CommentStore, CommentsUnavailable
from conference.redis_subscription import reachable

from .abuse import COOKIE, COOKIE_MAX_AGE

log = logging.getLogger(__name__)

TICK_S = 1.0
QUEUE = 64  # messages waiting for one viewer before it is dropped
PING_S = 15.0  # keeps proxies from closing an idle stream
MAX_UNIQUE = 200_000
# Open streams this process keeps: per address (a venue's or a mobile network's many phones behind
# one), and in all; beyond them 503 with Retry-After, and the page polls instead.
MAX_STREAMS_PER_ADDRESS = 500
MAX_STREAMS = 20_000


class TooManyStreams(Exception):
    pass


@dataclass(eq=False, slots=True)
class Viewer:
    viewer: str | None
    queue: asyncio.Queue[tuple[str, str] | None] = field(default_factory=lambda: asyncio.Queue(QUEUE))

    def close(self) -> None:
        """End this viewer's stream: None is the last message (the oldest one makes room for it)."""
        with contextlib.suppress(asyncio.QueueEmpty, asyncio.QueueFull):
            if self.queue.full():
                self.queue.get_nowait()
            self.queue.put_nowait(None)


@dataclass(slots=True)
class RoomAudience:
    streams: set[Viewer] = field(default_factory=set)
    new_visits: int = 0  # not yet added to the shared figures (Redis)
    new_unique: list[str] = field(default_factory=list)
    shared: tuple[int, int, int, int] | None = None  # (visits, unique, viewers, peak) of every process
    pending_likes: int = 0
    comment_likes: dict[int, int] = field(default_factory=dict)
    likes: int | None = None  # the total last pushed (None: not read yet)
    viewers: int = 0
    peak: int = 0
    visits: int = 0
    unique: set[str] = field(default_factory=set)


# KEYS: visits, unique viewers (HyperLogLog), viewers per process (hash), peak. ARGV: new visits,
# this process, its viewers, now, how long a process's count stands, then new viewer ids.
_FIGURES_LUA = """
redis.call('INCRBY', KEYS[1], ARGV[1])
if #ARGV > 5 then redis.call('PFADD', KEYS[2], unpack(ARGV, 6)) end
local now, ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3] .. ':' .. ARGV[4])
local total = 0
local all = redis.call('HGETALL', KEYS[3])
for i = 1, #all, 2 do
  local value = all[i + 1]
  local sep = string.find(value, ':')
  local n, at = tonumber(string.sub(value, 1, sep - 1)), tonumber(string.sub(value, sep + 1))
  if now - at <= ttl then total = total + n else redis.call('HDEL', KEYS[3], all[i]) end
end
local peak = tonumber(redis.call('GET', KEYS[4]) or '0')
if total > peak then peak = total; redis.call('SET', KEYS[4], peak) end
return {tonumber(redis.call('GET', KEYS[1])), redis.call('PFCOUNT', KEYS[2]), total, peak}
"""
UNIQUE_PER_SYNC = 1000  # viewer ids handed to Redis in one call at most (Lua's argument stack)


class SharedFigures:
    """Visits, unique viewers (a HyperLogLog: ~1 % off, a few KB whatever the audience), viewers
    now (each process's count, summed) and the peak, in Redis for every process of a deployment:
    one call per room a tick."""

    def __init__(self, redis: Any, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._origin = uuid.uuid4().hex
        self._script = redis.register_script(_FIGURES_LUA)

    @reachable(CommentsUnavailable)
    async def sync(self, room: str, audience: RoomAudience, viewers: int) -> tuple[int, int, int, int]:
        new_unique = audience.new_unique[:UNIQUE_PER_SYNC]
        visits = audience.new_visits
        key = f"{self._prefix}:audience:{room}"
        keys = [f"{key}:visits", f"{key}:unique", f"{key}:viewers", f"{key}:peak"]
        args = [visits, self._origin, viewers, round(time.time(), 3), 3 * TICK_S + 2, *new_unique]
        result = await self._script(keys=keys, args=args)
        del audience.new_unique[: len(new_unique)]  # counted: only now (a failed call keeps them)
        audience.new_visits -= visits
        return int(result[0]), int(result[1]), int(result[2]), int(result[3])


class Audience:
    def __init__(
        self, store: CommentStore, shared: bool, count_viewers: Callable[[str, list[str]], int]
    ) -> None:
        self.store = store
        self.shared = shared  # Redis: other processes add likes too, so the total is read every tick
        self.count_viewers = count_viewers  # (room, connected viewer ids) -> viewers now
        self.rooms: dict[str, RoomAudience] = {}
        self.pushed = 0  # messages queued to viewers (for the benchmark)
        self.dropped = 0
        self.shared_figures: SharedFigures | None = None  # with Redis: every process's viewers
        self.open_streams = 0
        self.by_address: dict[str, int] = {}

    def room(self, room: str) -> RoomAudience:
        audience = self.rooms.get(room)
        if audience is None:
            audience = self.rooms[room] = RoomAudience()
        return audience

    def push(self, room: str, event: str, data: dict[str, Any]) -> None:
        audience = self.rooms.get(room)
        if audience is None or not audience.streams:
            return
        message = (event, json.dumps(data, ensure_ascii=False))
        for viewer in list(audience.streams):
            try:
                viewer.queue.put_nowait(message)
                self.pushed += 1
            except asyncio.QueueFull:
                audience.streams.discard(viewer)
                self.dropped += 1
                viewer.close()

    def like(self, room: str, count: int, comment: int | None) -> None:
        audience = self.room(room)
        audience.pending_likes += count
        if comment is not None:
            audience.comment_likes[comment] = audience.comment_likes.get(comment, 0) + count

    def seen(self, room: str, viewer: str | None, visit: bool = False) -> None:
        audience = self.room(room)
        audience.visits += int(visit)
        audience.new_visits += int(visit)
        if viewer is not None and viewer not in audience.unique and len(audience.unique) < MAX_UNIQUE:
            audience.unique.add(viewer)
            if self.shared_figures is not None:
                audience.new_unique.append(viewer)

    def figures(self, room: str) -> dict[str, int]:
        a = self.rooms.get(room) or RoomAudience()
        visits, unique, viewers, peak = a.shared or (a.visits, len(a.unique), a.viewers, a.peak)
        return {
            "visits": visits,
            "unique_viewers": unique,
            "peak_viewers": peak,
            "viewers": viewers,
            "likes": (a.likes or 0) + a.pending_likes,
        }

    async def likes(self, room: str) -> int:
        audience = self.room(room)
        if audience.likes is None:
            audience.likes = await self.store.add_likes(room, 0, {})
        return audience.likes + audience.pending_likes

    async def tick(self) -> None:
        for room, audience in list(self.rooms.items()):
            pending, per_comment = audience.pending_likes, audience.comment_likes
            if pending or self.shared or audience.likes is None:
                audience.pending_likes, audience.comment_likes = 0, {}
                try:
                    total = await self.store.add_likes(room, pending, per_comment)
                except Exception as exc:  # kept for the next tick: a store hiccup loses no like
                    if isinstance(exc, CommentsUnavailable):
                        log.warning("likes of room %s kept for later: %s", room, exc.message)
                    else:
                        log.exception("likes of room %s could not be written", room)
                    audience.pending_likes += pending
                    for comment, n in per_comment.items():
                        audience.comment_likes[comment] = audience.comment_likes.get(comment, 0) + n
                    continue
                if total != audience.likes:
                    audience.likes = total
                    self.push(room, "likes", {"likes": total})
            ids = [v.viewer for v in audience.streams if v.viewer]
            viewers = self.count_viewers(room, ids)
            audience.peak = max(audience.peak, viewers)
            if self.shared_figures is not None:
                try:
                    audience.shared = await self.shared_figures.sync(room, audience, viewers)
                    viewers = audience.shared[2]
                except CommentsUnavailable as exc:
                    log.warning("the shared figures of room %s: %s", room, exc.message)
                except Exception:
                    log.exception("the shared figures of room %s could not be read", room)
            if viewers != audience.viewers:
                audience.viewers = viewers
                self.push(room, "viewers", {"viewers": viewers})

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.tick()
            except Exception:
                log.exception("audience tick failed")
            await asyncio.sleep(max(0.05, TICK_S - (time.monotonic() - started)))

    async def stream(
        self,
        request: web.Request,
        room: str,
        viewer: str | None,
        hello: dict[str, Any],
        cookie: str | None,
        address: str,
    ) -> web.StreamResponse:
        """One viewer's event stream, until it goes away or the server shuts down."""
        held = self.by_address.get(address, 0)
        if self.open_streams >= MAX_STREAMS or held >= MAX_STREAMS_PER_ADDRESS:
            raise TooManyStreams()
        self.open_streams += 1
        self.by_address[address] = held + 1
        try:
            return await self._stream(request, room, viewer, hello, cookie)
        finally:
            self.open_streams -= 1
            left = self.by_address.pop(address, 1) - 1
            if left > 0:
                self.by_address[address] = left

    async def _stream(
        self, request: web.Request, room: str, viewer: str | None, hello: dict[str, Any], cookie: str | None
    ) -> web.StreamResponse:
        me = Viewer(viewer)
        audience = self.room(room)
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        response = EventSourceResponse(headers=headers, ping_interval=PING_S)
        if cookie is not None:
            response.set_cookie(
                COOKIE, cookie, max_age=COOKIE_MAX_AGE, path="/w/", httponly=True, samesite="Lax"
            )
        await response.prepare(request)
        audience.streams.add(me)
        # A viewer that went away is noticed by the ping (its write fails within PING_S): end the
        # stream then, or its handler would wait for the next push, which a quiet room never sends.
        gone = asyncio.ensure_future(response.wait())
        gone.add_done_callback(lambda _: me.close())
        try:
            await response.send(json.dumps(hello, ensure_ascii=False), event="hello", retry=3000)
            while True:
                message = await me.queue.get()
                if message is None:
                    break
                await response.send(message[1], event=message[0])
        except ConnectionResetError:
            pass
        finally:
            audience.streams.discard(me)
            gone.cancel()
            response.stop_streaming()
        return response

    def close_all(self) -> None:
        for audience in self.rooms.values():
            for viewer in list(audience.streams):
                viewer.close()
            audience.streams.clear()
