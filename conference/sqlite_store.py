"""Room state in an SQLite file in the data directory: the default, durable, nothing to install.

The rooms live in memory exactly as in ``MemoryRoomStore`` (commands, locks, the event log and the
listeners are the same code); every change is also written to ``<data_dir>/rooms.sqlite3`` before
it is acknowledged: ``update`` applies a command to a draft, queues the draft's write, makes it the
room's state, and hands its events out (and returns) only once the write is committed. A server
that restarts, however it stopped (SIGTERM or SIGKILL), therefore finds every room as it was at its
last acknowledged change. A write that fails is reported to the command's caller; the change stays
in memory and reaches the disk with the room's next write.

The writes run in one thread of their own, so the event loop never waits on the disk (a commit is
~0.2 ms here, but a WAL checkpoint can take milliseconds); changes that queue up while a write is
in flight are committed together (group commit). The database is in WAL mode with
``synchronous=NORMAL``: a commit survives the process being killed, the last commits may be lost
only if the machine itself loses power. The event log stays in memory: after a restart a client's
``sync`` gets the room's snapshot instead of the events it missed, as the protocol allows.

One server process owns the file (a lock file says so); several processes share rooms through
Redis instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .room import CommandError, Event, RoomState
from .store import EVENT_LOG_SIZE, Command, MemoryRoomStore, RoomExists, number_events

log = logging.getLogger(__name__)

DB_FILE = "rooms.sqlite3"
SCHEMA_VERSION = 1


class StoreError(RuntimeError):
    """The room store cannot be opened (the message says why)."""


class StoreLocked(StoreError):
    """Another server process already uses this data directory's room store."""


class SqliteRoomStore(MemoryRoomStore):
    """``MemoryRoomStore`` whose every change is committed to SQLite first."""

    shared = False  # rooms belong to this process alone (see Rooms.restore)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = Path(path)
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        # Group commit: what waits for the next write (room -> JSON text, None = delete).
        self._pending: dict[str, tuple[int, str] | None] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._started = False
        self.write_seconds: deque[float] = deque(maxlen=1000)  # per commit, in the writer thread
        self.loaded_rooms = 0

    # --- start and stop --------------------------------------------------------------------

    async def start(self) -> None:
        """Take the file, open the database and load every room (idempotent)."""
        if self._started:
            return
        self._started = True
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="room-store")
        loop = asyncio.get_running_loop()
        try:
            rows = await loop.run_in_executor(self._executor, self._open)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            self._started = False
            raise
        for room, text in rows:
            try:
                state = RoomState.from_json(json.loads(text))
            except (ValueError, KeyError, TypeError) as exc:
                # Kept in the file untouched: a later version may read it; the server goes on.
                log.error("room %r in %s cannot be read, skipped: %s", room, self.path, exc)
                continue
            self._rooms[room] = state
            self._logs[room] = deque(maxlen=EVENT_LOG_SIZE)
            self._locks[room] = asyncio.Lock()
        self.loaded_rooms = len(self._rooms)

    def _open(self) -> list[tuple[str, str]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise StoreLocked(
                f"{self.path} is used by another server process; give each process its own "
                "--data-dir, or share rooms through Redis (--redis-url)"
            ) from None
        try:
            rows = self._open_db()
        except BaseException:
            os.close(lock_fd)  # nothing was opened: the next attempt may take the file
            raise
        self._lock_fd = lock_fd
        return rows

    def _open_db(self) -> list[tuple[str, str]]:
        # The file holds dial-in PIN hashes: readable by the server's user only.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            return self._prepare(db)
        except BaseException:
            db.close()
            raise

    def _prepare(self, db: sqlite3.Connection) -> list[tuple[str, str]]:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path} was written by a newer version (schema {version})")
        db.execute(
            "CREATE TABLE IF NOT EXISTS rooms ("
            " room TEXT PRIMARY KEY, version INTEGER NOT NULL, updated_at REAL NOT NULL,"
            " state TEXT NOT NULL)"
        )
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._db = db
        return list(db.execute("SELECT room, state FROM rooms ORDER BY room"))

    async def close(self) -> None:
        """Write what is pending, then close the database and release the file."""
        await super().close()
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._flusher)
        if self._executor is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._close_db)
            self._executor.shutdown(wait=True)
            self._executor = None
        self._started = False

    def _close_db(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()
            self._db = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # --- the store -------------------------------------------------------------------------

    async def create(
        self, room: str, *, max_endpoints: int, auto_record: bool = False, exist_ok: bool = False
    ) -> RoomState:
        return await _finish(self._create(room, max_endpoints, auto_record, exist_ok))

    async def _create(self, room: str, max_endpoints: int, auto_record: bool, exist_ok: bool) -> RoomState:
        await self._ensure_started()
        if room in self._rooms:
            if exist_ok:
                return self._rooms[room]
            raise RoomExists(room)
        state = RoomState(
            room=room, created_at=time.time(), max_endpoints=max_endpoints, auto_record=auto_record
        )
        await self._write(room, state)
        if room in self._rooms:  # created by a concurrent call while this one wrote
            if exist_ok:
                return self._rooms[room]
            raise RoomExists(room)
        self._rooms[room] = state
        self._logs[room] = deque(maxlen=EVENT_LOG_SIZE)
        self._locks[room] = asyncio.Lock()
        return state

    async def get(self, room: str) -> RoomState | None:
        await self._ensure_started()
        return await super().get(room)

    async def list_rooms(self) -> list[str]:
        await self._ensure_started()
        return await super().list_rooms()

    async def update(self, room: str, command: Command) -> tuple[RoomState, list[Event]]:
        # Whole, even when the caller is cancelled (a handler whose client went away): a change
        # that reached the disk must also reach the state in memory and every listener.
        return await _finish(self._update(room, command))

    async def _update(self, room: str, command: Command) -> tuple[RoomState, list[Event]]:
        await self._ensure_started()
        state = self._rooms.get(room)
        if state is None:
            raise CommandError("not_found", f"no room {room!r}")
        async with self._locks[room]:
            state = self._rooms.get(room)
            if state is None:  # deleted while this command waited for the lock
                raise CommandError("not_found", f"no room {room!r}")
            draft = RoomState.from_json(state.to_json())
            events = number_events(draft, command(draft))
            if not events:
                return state, events
            # Queued in the lock (writes go in the order of the changes), awaited outside it: the
            # room's next change need not wait for this commit, and changes that queue up meanwhile
            # are committed together. On a busy event loop each hand-over to the writer thread
            # takes several loop turns (~60 ms at saturation): waited for in the lock, a burst of
            # joins queued a chair's program change behind seconds of commits.
            written = self._queue_write(room, draft)
            self._rooms[room] = state = draft
            self._logs[room].extend(events)
        # On disk before anyone hears of it: a change acknowledged is there after any restart.
        await written
        await self._notify(room, events, state)
        return state, events

    async def delete(self, room: str) -> None:
        await _finish(self._delete(room))

    async def _delete(self, room: str) -> None:
        await self._ensure_started()
        await self._write(room, None)
        await super().delete(room)

    async def _ensure_started(self) -> None:
        if not self._started:
            await self.start()

    # --- writing ---------------------------------------------------------------------------

    async def _write(self, room: str, state: RoomState | None) -> None:
        await self._queue_write(room, state)

    def _queue_write(self, room: str, state: RoomState | None) -> asyncio.Future[None]:
        """Queue the room's new state (None: delete it) for the writer thread; the future is done
        once it is committed (a later state of the same room queued meanwhile replaces it)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._pending[room] = None if state is None else (state.version, json.dumps(state.to_json()))
        self._waiters.append(waiter)
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush())
        return waiter

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = self._pending, {}
            waiters, self._waiters = self._waiters, []
            try:
                if self._executor is None:
                    raise RuntimeError("the room store is closed")
                await loop.run_in_executor(self._executor, self._commit, batch)
            except Exception as exc:
                log.exception("room store: cannot write %s", ", ".join(sorted(batch)))
                failure = CommandError("internal", f"the room store cannot write: {exc}")
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(failure)
            else:
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)

    def _commit(self, batch: dict[str, tuple[int, str] | None]) -> None:
        db = self._db
        if db is None:
            raise RuntimeError("the room store is closed")
        started = time.perf_counter()
        now = time.time()
        db.execute("BEGIN IMMEDIATE")
        try:
            for room, entry in batch.items():
                if entry is None:
                    db.execute("DELETE FROM rooms WHERE room = ?", (room,))
                else:
                    version, text = entry
                    db.execute(
                        "INSERT INTO rooms (room, version, updated_at, state) VALUES (?, ?, ?, ?)"
                        " ON CONFLICT(room) DO UPDATE SET version = excluded.version,"
                        " updated_at = excluded.updated_at, state = excluded.state",
                        (room, version, now, text),
                    )
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        self.write_seconds.append(time.perf_counter() - started)

    def stats(self) -> dict[str, Any]:
        """Commit times of the last writes (the writer thread's, not the event loop's)."""
        times = sorted(self.write_seconds)
        if not times:
            return {"writes": 0}
        return {
            "writes": len(times),
            "commit_ms_median": round(times[len(times) // 2] * 1000, 3),
            "commit_ms_max": round(times[-1] * 1000, 3),
        }


async def _finish(coro: Any) -> Any:
    """Await ``coro`` to its end even if the caller is cancelled meanwhile, then re-raise the
    cancellation."""
    task = asyncio.ensure_future(coro)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
            continue
        if cancelled:
            raise asyncio.CancelledError
        return result


__all__ = ["DB_FILE", "SqliteRoomStore", "StoreError", "StoreLocked"]
