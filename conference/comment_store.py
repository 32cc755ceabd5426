"""Where the public's comments and the likes live: apart from the room state, which the room store
copies on every change (a meeting gathers thousands of comments; the room holds only the one on
screen).

``SqliteCommentStore`` (the default: ``<data_dir>/comments.sqlite3``, one writer thread so the loop
never waits on the disk) and ``RedisCommentStore`` (when ``redis_url`` is set: every process sees the
same comments, likes and notifications). ``MemoryCommentStore`` is the SQLite store on ``:memory:``.
Listeners hear every new or changed comment (with Redis, those of every process).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import redis.asyncio as aioredis

from .comments import Comment
from .redis_subscription import RedisSubscription, reachable
from .room import CommandError
from .store import StoreUnavailable

log = logging.getLogger(__name__)

DB_FILE = "comments.sqlite3"
MAX_LISTED = 500  # one listing's comments at most (newest first)
Listener = Callable[[str, Comment], Awaitable[None] | None]


class CommentStore(Protocol):
    async def start(self) -> None: ...

    async def add(self, comment: Comment) -> Comment:
        """Store a new comment; returns it with its id."""
        ...

    async def get(self, room: str, comment_id: int) -> Comment | None: ...

    async def change(self, room: str, comment_id: int, fields: dict[str, Any]) -> Comment: ...

    async def listing(self, room: str, statuses: tuple[str, ...] | None = None) -> list[Comment]:
        """Newest first, at most MAX_LISTED."""
        ...

    async def add_likes(self, room: str, count: int, comments: dict[int, int]) -> int:
        """Add ``count`` to the room's likes (and each comment's); the room's new total."""
        ...

    async def figures(self, room: str) -> dict[str, int]: ...

    def subscribe(self, listener: Listener) -> None: ...

    async def close(self) -> None: ...


def _figures(rows: list[tuple[str, str, int, int, int]], likes: int) -> dict[str, int]:
    """rows: (author, status, is_reply, answered, count)."""
    out = {"comments_public": 0, "comments_members": 0, "replies": 0, "answered": 0, "approved": 0}
    out["pending"] = out["rejected"] = 0
    for author, status, reply, answered, count in rows:
        out["comments_members" if author == "member" else "comments_public"] += count
        out["replies"] += count if reply else 0
        out["answered"] += count if answered else 0
        out[status] = out.get(status, 0) + count
    out["likes"] = likes
    return out


async def _notify(listeners: list[Listener], room: str, comment: Comment) -> None:
    for listener in listeners:
        try:
            result = listener(room, comment)
            if result is not None:
                await result
        except Exception:
            log.exception("comment listener failed")


class SqliteCommentStore:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="comment-store")
        self._db: sqlite3.Connection | None = None
        self._listeners: list[Listener] = []

    async def start(self) -> None:
        if self._db is None:
            await self._run(self._open)

    def _open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS comments (room TEXT NOT NULL, id INTEGER NOT NULL,"
            " status TEXT NOT NULL, created_at REAL NOT NULL, data TEXT NOT NULL, PRIMARY KEY (room, id))"
        )
        db.execute("CREATE INDEX IF NOT EXISTS comments_status ON comments (room, status, created_at)")
        db.execute("CREATE TABLE IF NOT EXISTS likes (room TEXT PRIMARY KEY, total INTEGER NOT NULL)")
        db.commit()
        self._db = db

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self._open()
        assert self._db is not None
        return self._db

    def _add(self, comment: Comment) -> Comment:
        db = self.db
        (last,) = db.execute(
            "SELECT COALESCE(MAX(id), 0) FROM comments WHERE room = ?", (comment.room,)
        ).fetchone()
        comment.id = last + 1
        db.execute(
            "INSERT INTO comments VALUES (?, ?, ?, ?, ?)",
            (comment.room, comment.id, comment.status, comment.created_at, json.dumps(comment.to_json())),
        )
        db.commit()
        return comment

    def _get(self, room: str, comment_id: int) -> Comment | None:
        row = self.db.execute(
            "SELECT data FROM comments WHERE room = ? AND id = ?", (room, comment_id)
        ).fetchone()
        return None if row is None else Comment.from_json(json.loads(row[0]))

    def _change(self, room: str, comment_id: int, fields: dict[str, Any]) -> Comment:
        comment = self._get(room, comment_id)
        if comment is None:
            raise CommandError("not_found", f"no comment {comment_id} in room {room!r}")
        for key, value in fields.items():
            setattr(comment, key, value)
        self.db.execute(
            "UPDATE comments SET status = ?, data = ? WHERE room = ? AND id = ?",
            (comment.status, json.dumps(comment.to_json()), room, comment_id),
        )
        self.db.commit()
        return comment

    def _listing(self, room: str, statuses: tuple[str, ...] | None) -> list[Comment]:
        if statuses:
            marks = ",".join("?" * len(statuses))
            sql = f"SELECT data FROM comments WHERE room = ? AND status IN ({marks}) ORDER BY id DESC LIMIT ?"
            rows = self.db.execute(sql, (room, *statuses, MAX_LISTED)).fetchall()
        else:
            sql = "SELECT data FROM comments WHERE room = ? ORDER BY id DESC LIMIT ?"
            rows = self.db.execute(sql, (room, MAX_LISTED)).fetchall()
        return [Comment.from_json(json.loads(r[0])) for r in rows]

    def _add_likes(self, room: str, count: int, comments: dict[int, int]) -> int:
        db = self.db
        db.execute(
            "INSERT INTO likes VALUES (?, ?) ON CONFLICT(room) DO UPDATE SET total = total + excluded.total",
            (room, count),
        )
        for comment_id, n in comments.items():
            comment = self._get(room, comment_id)
            if comment is not None and comment.status == "approved":
                comment.likes += n
                db.execute(
                    "UPDATE comments SET data = ? WHERE room = ? AND id = ?",
                    (json.dumps(comment.to_json()), room, comment_id),
                )
        db.commit()
        (total,) = db.execute("SELECT total FROM likes WHERE room = ?", (room,)).fetchone()
        return int(total)

    def _figures(self, room: str) -> dict[str, int]:
        rows = self.db.execute(
            "SELECT json_extract(data, '$.author'), status, json_extract(data, '$.reply_to') IS NOT NULL,"
            " json_extract(data, '$.answered_by') IS NOT NULL, COUNT(*) FROM comments WHERE room = ?"
            " GROUP BY 1, 2, 3, 4",
            (room,),
        ).fetchall()
        like_row = self.db.execute("SELECT total FROM likes WHERE room = ?", (room,)).fetchone()
        return _figures(rows, int(like_row[0]) if like_row else 0)

    async def add(self, comment: Comment) -> Comment:
        comment = await self._run(self._add, comment)
        await _notify(self._listeners, comment.room, comment)
        return comment

    async def get(self, room: str, comment_id: int) -> Comment | None:
        return await self._run(self._get, room, comment_id)

    async def change(self, room: str, comment_id: int, fields: dict[str, Any]) -> Comment:
        comment = await self._run(self._change, room, comment_id, fields)
        await _notify(self._listeners, room, comment)
        return comment

    async def listing(self, room: str, statuses: tuple[str, ...] | None = None) -> list[Comment]:
        return await self._run(self._listing, room, statuses)

    async def add_likes(self, room: str, count: int, comments: dict[int, int]) -> int:
        return await self._run(self._add_likes, room, count, comments)

    async def figures(self, room: str) -> dict[str, int]:
        return await self._run(self._figures, room)

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._executor.shutdown(wait=False)


class MemoryCommentStore(SqliteCommentStore):
    def __init__(self) -> None:
        super().__init__(":memory:")


class CommentsUnavailable(StoreUnavailable):
    """Redis cannot be reached for comments, likes or their limits: nothing changed; try again."""

    def __init__(self) -> None:
        CommandError.__init__(
            self,
            "unavailable",
            "the shared store (Redis) cannot be reached: nothing changed, try again shortly",
        )


_reachable = reachable(CommentsUnavailable)


CHANGE_LOG_SIZE = 2000  # changes of every room kept for a process that was not following (a few seconds')

# Stores a comment and announces the change in one step: numbered (KEYS[2], the deployment's change
# counter), appended to the bounded change log (KEYS[3]) and published, so a process that was not
# subscribed reads from the log exactly what it missed. KEYS[1] the room's hash; ARGV: comment id,
# its JSON, this process's origin, the channel, the log's size. Answers the change's number.
_WRITE_LUA = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local n = redis.call('INCR', KEYS[2])
local message = '{"origin": "' .. ARGV[3] .. '", "change": ' .. n .. ', "comment": ' .. ARGV[2] .. '}'
redis.call('RPUSH', KEYS[3], message)
redis.call('LTRIM', KEYS[3], -tonumber(ARGV[5]), -1)
redis.call('PUBLISH', ARGV[4], message)
return n
"""


class RedisCommentStore:
    """Comments as JSON in one hash per room (``prefix:comments:ROOM``, field = id), ids from a
    counter, likes in a counter per room. Every change is numbered, logged and published in one
    step (``_WRITE_LUA``), so every process's listeners hear it, also a process that was not
    subscribed when it happened (Redis restarted, a dropped connection): it catches up from the log
    once subscribed again (``conference.redis_subscription``)."""

    def __init__(self, url: str, *, prefix: str = "conference") -> None:
        # Short timeouts: while Redis is away a post fails in about a second (503), it does not hang.
        self._redis = aioredis.from_url(
            url, decode_responses=True, socket_connect_timeout=1.0, socket_timeout=2.0
        )
        self._prefix = prefix
        self._channel = f"{prefix}:comments"
        self._changes = f"{prefix}:comment-changes"  # not under prefix:comments:, where rooms are
        self._change_log = f"{prefix}:comment-log"
        self._origin = uuid.uuid4().hex
        self._listeners: list[Listener] = []
        self._subscription = RedisSubscription(url, self._channel, self._heard, on_subscribed=self._catch_up)
        self._seen: int | None = None  # the last change handed to the listeners (None: not subscribed yet)
        self._replayed = 0  # changes up to this one came from the log: skip them when published

    def _key(self, room: str, part: str = "") -> str:
        return f"{self._prefix}:comments:{room}{part}"

    async def start(self) -> None:
        """Follow every process's changes: subscribed before this process acts."""
        await self._subscription.start()

    async def _heard(self, data: dict[str, Any]) -> None:
        change = int(data["change"])
        if change <= self._replayed:
            return  # published while this process read the log: handed over already
        self._seen = change if self._seen is None else max(self._seen, change)
        if data["origin"] != self._origin:
            comment = Comment.from_json(data["comment"])
            await _notify(self._listeners, comment.room, comment)

    async def _catch_up(self) -> None:
        """Subscribed (again): what other processes changed while this one did not follow comes
        from the change log, in order, as if it had been published now."""
        if self._seen is None:  # the first time: nothing was missed; follow from here on
            self._seen = int(await self._redis.get(self._changes) or 0)
            return
        last = int(await self._redis.get(self._changes) or 0)
        if last < self._seen:  # Redis came back without its data (no append-only file): start over
            log.warning(
                "the comment change counter went back from %d to %d: redis lost data", self._seen, last
            )
            self._seen, self._replayed = last, 0
        if last <= self._seen:
            return
        missed = [json.loads(m) for m in await self._redis.lrange(self._change_log, 0, -1)]
        missed = [m for m in missed if m["change"] > self._seen]
        if missed and missed[0]["change"] > self._seen + 1:
            log.warning(
                "%d comment changes older than the log are lost here", missed[0]["change"] - self._seen - 1
            )
        log.info("%d comment changes while not following redis", len(missed))
        for data in missed:
            self._seen = self._replayed = data["change"]
            if data["origin"] != self._origin:
                comment = Comment.from_json(data["comment"])
                await _notify(self._listeners, comment.room, comment)

    def _write_args(self, comment: Comment) -> tuple[Any, ...]:
        keys = (self._key(comment.room), self._changes, self._change_log)
        args = (comment.id, json.dumps(comment.to_json()), self._origin, self._channel, CHANGE_LOG_SIZE)
        return (_WRITE_LUA, len(keys), *keys, *args)

    @_reachable
    async def add(self, comment: Comment) -> Comment:
        comment.id = int(await self._redis.incr(self._key(comment.room, ":seq")))
        await self._redis.eval(*self._write_args(comment))
        await _notify(self._listeners, comment.room, comment)
        return comment

    @_reachable
    async def get(self, room: str, comment_id: int) -> Comment | None:
        text = await self._redis.hget(self._key(room), str(comment_id))
        return None if text is None else Comment.from_json(json.loads(text))

    @_reachable
    async def change(self, room: str, comment_id: int, fields: dict[str, Any]) -> Comment:
        key = self._key(room)
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:  # optimistic: two moderators in two processes do not lose each other's change
                try:
                    await pipe.watch(key)
                    text = await pipe.hget(key, str(comment_id))
                    if text is None:
                        raise CommandError("not_found", f"no comment {comment_id} in room {room!r}")
                    comment = Comment.from_json(json.loads(text))
                    for name, value in fields.items():
                        setattr(comment, name, value)
                    pipe.multi()
                    pipe.eval(*self._write_args(comment))
                    await pipe.execute()
                    break
                except aioredis.WatchError:
                    continue
        await _notify(self._listeners, room, comment)
        return comment

    async def _all(self, room: str) -> list[Comment]:
        values = await self._redis.hvals(self._key(room))
        return [Comment.from_json(json.loads(v)) for v in values]

    @_reachable
    async def listing(self, room: str, statuses: tuple[str, ...] | None = None) -> list[Comment]:
        comments = [c for c in await self._all(room) if not statuses or c.status in statuses]
        comments.sort(key=lambda c: -c.id)
        return comments[:MAX_LISTED]

    @_reachable
    async def add_likes(self, room: str, count: int, comments: dict[int, int]) -> int:
        total = int(await self._redis.incrby(self._key(room, ":likes"), count))
        for comment_id, n in comments.items():
            comment = await self.get(room, comment_id)
            if comment is not None and comment.status == "approved":
                await self.change(room, comment_id, {"likes": comment.likes + n})
        return total

    @_reachable
    async def figures(self, room: str) -> dict[str, int]:
        counts: dict[tuple[str, str, int, int], int] = {}
        for c in await self._all(room):
            key = (c.author, c.status, int(c.reply_to is not None), int(c.answered_by is not None))
            counts[key] = counts.get(key, 0) + 1
        likes = int(await self._redis.get(self._key(room, ":likes")) or 0)
        return _figures([(*k, n) for k, n in counts.items()], likes)

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def close(self) -> None:
        await self._subscription.close()
        await self._redis.aclose()


def create_comment_store(settings: Any, prefix: str = "conference") -> CommentStore:
    """Redis when a URL is configured (keys under ``prefix``, the room store's), else as the room
    store: the SQLite file in the data directory, or memory."""
    if settings.redis_url:
        return RedisCommentStore(settings.redis_url, prefix=prefix)
    if settings.room_store == "memory":
        return MemoryCommentStore()
    return SqliteCommentStore(Path(settings.data_dir) / DB_FILE)
