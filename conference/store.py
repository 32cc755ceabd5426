"""Where room state lives: in an SQLite file by default (``conference.sqlite_store``), in memory
when asked (tests, throw-away servers), in Redis when processes share rooms.

A store applies a room command atomically (``update``), numbers the resulting events with the
room version, keeps a bounded log of them so a client that missed some can catch up, and
hands them to every subscriber of the room (in this process, and with Redis in every
process). The media path never reads the store: it is driven by the events.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from .redis_subscription import RedisSubscription, reachable
from .room import CommandError, Event, RoomState

EVENT_LOG_SIZE = 1000
log = logging.getLogger(__name__)

Command = Callable[[RoomState], list[Event]]
Listener = Callable[[str, list[Event], RoomState], Awaitable[None] | None]


class RoomExists(Exception):
    pass


class StoreUnavailable(CommandError):
    """The shared store (Redis) cannot be reached: the command changed nothing; try again."""

    def __init__(self) -> None:
        super().__init__(
            "unavailable",
            "the shared room store (Redis) cannot be reached: nothing changed, try again shortly",
        )


# Redis being away is one clear error (``unavailable``), not whatever the client library raised.
_reachable = reachable(StoreUnavailable)


class RoomStore(Protocol):
    # False: the rooms' endpoints can only be connected to this process (memory, SQLite), so after
    # a restart every participant is known to be disconnected.
    shared: bool

    async def create(
        self, room: str, *, max_endpoints: int, auto_record: bool = False, exist_ok: bool = False
    ) -> RoomState: ...

    async def get(self, room: str) -> RoomState | None: ...

    async def list_rooms(self) -> list[str]: ...

    async def update(self, room: str, command: Command) -> tuple[RoomState, list[Event]]:
        """Apply ``command`` atomically; return the new state and its numbered events."""
        ...

    async def events_since(self, room: str, version: int) -> list[Event] | None:
        """Events after ``version``, or None when the log no longer reaches back that far."""
        ...

    async def delete(self, room: str) -> None: ...

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(room, events, state)`` after every change to any room."""
        ...

    async def close(self) -> None: ...


def number_events(state: RoomState, events: list[Event]) -> list[Event]:
    """Give each event the next room version and a timestamp (mutates ``state.version``)."""
    now = time.time()
    for event in events:
        state.version += 1
        event["version"] = state.version
        event["room"] = state.room
        event.setdefault("at", now)
    return events


async def notify(listeners: list[Listener], room: str, events: list[Event], state: RoomState) -> None:
    """Hand a change to every listener, in order (a listener may be sync or async)."""
    for listener in listeners:
        result = listener(room, events, state)
        if result is not None:
            await result


class MemoryRoomStore:
    """Room state in this process only: gone when the process ends (``room_store = "memory"``)."""

    shared = False  # rooms belong to this process alone (see Rooms.restore)

    def __init__(self) -> None:
        self._rooms: dict[str, RoomState] = {}
        self._logs: dict[str, deque[Event]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._listeners: list[Listener] = []

    async def create(
        self, room: str, *, max_endpoints: int, auto_record: bool = False, exist_ok: bool = False
    ) -> RoomState:
        if room in self._rooms:
            if exist_ok:
                return self._rooms[room]
            raise RoomExists(room)
        state = RoomState(
            room=room, created_at=time.time(), max_endpoints=max_endpoints, auto_record=auto_record
        )
        self._rooms[room] = state
        self._logs[room] = deque(maxlen=EVENT_LOG_SIZE)
        self._locks[room] = asyncio.Lock()
        return state

    async def get(self, room: str) -> RoomState | None:
        return self._rooms.get(room)

    async def list_rooms(self) -> list[str]:
        return sorted(self._rooms)

    async def update(self, room: str, command: Command) -> tuple[RoomState, list[Event]]:
        state = self._rooms.get(room)
        if state is None:
            raise CommandError("not_found", f"no room {room!r}")
        async with self._locks[room]:
            # Commands mutate in place: run on a copy so a failing command changes nothing.
            draft = RoomState.from_json(state.to_json())
            events = number_events(draft, command(draft))
            if events:
                self._rooms[room] = state = draft
                self._logs[room].extend(events)
        if events:
            await self._notify(room, events, state)
        return state, events

    async def events_since(self, room: str, version: int) -> list[Event] | None:
        log = self._logs.get(room)
        if log is None:
            return None
        if version >= (self._rooms[room].version):
            return []
        if not log or log[0]["version"] > version + 1:
            return None
        return [e for e in log if e["version"] > version]

    async def delete(self, room: str) -> None:
        self._rooms.pop(room, None)
        self._logs.pop(room, None)
        self._locks.pop(room, None)

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def _notify(self, room: str, events: list[Event], state: RoomState) -> None:
        await notify(self._listeners, room, events, state)

    async def close(self) -> None:
        self._listeners.clear()


class RedisRoomStore:
    """Room state in Redis, shared by several server processes.

    Each room is one JSON document changed with optimistic locking (WATCH/MULTI), so a command
    runs exactly as in memory. The events of a change are appended to the room's log and
    published on one channel in the same transaction; every process (this one included, which
    it recognises by its origin id and skips) hands them to its listeners.
    """

    CHANNEL = "conference:events"
    shared = True  # other processes hold connections of these rooms

    def __init__(self, url: str, *, prefix: str = "conference") -> None:
        # Short timeouts: while Redis is away a command fails in about a second, it does not hang.
        self._redis = aioredis.from_url(
            url, decode_responses=True, socket_connect_timeout=1.0, socket_timeout=2.0
        )
        self._url = url
        self._prefix = prefix
        self.prefix = prefix  # what other keys of this deployment start with (comments, limits)
        self._channel = f"{prefix}:events"
        self._origin = uuid.uuid4().hex
        self._listeners: list[Listener] = []
        self._subscription: RedisSubscription | None = None  # other processes' changes, once started
        self._seen: dict[str, int] = {}  # room -> the last version handed to the listeners

    def _key(self, room: str) -> str:
        return f"{self._prefix}:room:{room}"

    def _log_key(self, room: str) -> str:
        return f"{self._prefix}:room:{room}:log"

    @_reachable
    async def create(
        self, room: str, *, max_endpoints: int, auto_record: bool = False, exist_ok: bool = False
    ) -> RoomState:
        state = RoomState(
            room=room, created_at=time.time(), max_endpoints=max_endpoints, auto_record=auto_record
        )
        created = await self._redis.set(self._key(room), json.dumps(state.to_json()), nx=True)
        if not created:
            if exist_ok:
                existing = await self.get(room)
                if existing is not None:
                    return existing
            raise RoomExists(room)
        await self._redis.sadd(f"{self._prefix}:rooms", room)
        return state

    @_reachable
    async def get(self, room: str) -> RoomState | None:
        raw = await self._redis.get(self._key(room))
        return None if raw is None else RoomState.from_json(json.loads(raw))

    @_reachable
    async def list_rooms(self) -> list[str]:
        return sorted(await self._redis.smembers(f"{self._prefix}:rooms"))

    async def update(self, room: str, command: Command) -> tuple[RoomState, list[Event]]:
        state, events = await self._commit(room, command)
        if events:  # the listeners (media core, sockets) only once Redis has it
            await self._notify(room, events, state)
        return state, events

    @_reachable
    async def _commit(self, room: str, command: Command) -> tuple[RoomState, list[Event]]:
        key = self._key(room)
        for _ in range(100):  # bounded: contention is between a handful of processes
            async with self._redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    if raw is None:
                        raise CommandError("not_found", f"no room {room!r}")
                    state = RoomState.from_json(json.loads(raw))
                    events = number_events(state, command(state))
                    if not events:
                        await pipe.unwatch()
                        return state, events
                    pipe.multi()
                    pipe.set(key, json.dumps(state.to_json()))
                    pipe.rpush(self._log_key(room), *(json.dumps(e) for e in events))
                    pipe.ltrim(self._log_key(room), -EVENT_LOG_SIZE, -1)
                    message = {
                        "origin": self._origin,
                        "room": room,
                        "events": events,
                        "state": state.to_json(),
                    }
                    pipe.publish(self._channel, json.dumps(message))
                    await pipe.execute()
                except WatchError:
                    continue
            return state, events
        raise CommandError("conflict", f"room {room!r} is too busy, try again")

    @_reachable
    async def events_since(self, room: str, version: int) -> list[Event] | None:
        state = await self.get(room)
        if state is None:
            return None
        if version >= state.version:
            return []
        log = [json.loads(e) for e in await self._redis.lrange(self._log_key(room), 0, -1)]
        if not log or log[0]["version"] > version + 1:
            return None
        return [e for e in log if e["version"] > version]

    @_reachable
    async def delete(self, room: str) -> None:
        await self._redis.delete(self._key(room), self._log_key(room))
        await self._redis.srem(f"{self._prefix}:rooms", room)

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)
        self._follow().run()

    async def start(self) -> None:
        """Check the connection and start following other processes' changes."""
        await self._redis.ping()
        # Subscribed before this process acts: what another process publishes from now on arrives.
        await self._follow().start()

    def _follow(self) -> RedisSubscription:
        """The subscription to the channel, on its own connection; when Redis comes back after being
        away it subscribes again by itself and catches up (the pages notice the versions they missed
        and resynchronise)."""
        if self._subscription is None:
            self._subscription = RedisSubscription(
                self._url, self._channel, self._heard, on_subscribed=self._catch_up
            )
        return self._subscription

    async def _heard(self, data: dict[str, Any]) -> None:
        if data["origin"] != self._origin:
            await self._notify(data["room"], data["events"], RoomState.from_json(data["state"]))

    async def _notify(self, room: str, events: list[Event], state: RoomState) -> None:
        self._seen[room] = max(self._seen.get(room, 0), state.version)
        await notify(self._listeners, room, events, state)

    async def _catch_up(self) -> None:
        """Once subscribed again: what other processes changed while this one was not following
        (Redis publishes to whoever listens at that moment) is read from the rooms' event logs and
        handed to the listeners as if it had arrived, in order."""
        for room, seen in list(self._seen.items()):
            events = await self.events_since(room, seen)
            state = await self.get(room)
            if state is None or events == []:
                continue
            if events is None:  # older than the log: the state alone, as the pages' resync does
                events = []
            log.info("room %s: %d events while not following redis", room, len(events))
            await self._notify(room, events, state)

    async def close(self) -> None:
        self._listeners.clear()
        if self._subscription is not None:
            await self._subscription.close()
            self._subscription = None
        await self._redis.aclose()


STORE_KINDS = ("sqlite", "memory")


def create_store(settings: Any) -> RoomStore:
    """Redis when a URL is configured; else the ``room_store`` setting: the SQLite file in the
    data directory (default) or memory."""
    if settings.redis_url:
        return RedisRoomStore(settings.redis_url)
    if settings.room_store == "memory":
        return MemoryRoomStore()
    from .sqlite_store import DB_FILE, SqliteRoomStore

    return SqliteRoomStore(settings.data_dir / DB_FILE)
