"""Where room state lives: in memory by default, in Redis when processes share rooms.

A store applies a room command atomically (``update``), numbers the resulting events with the
room version, keeps a bounded log of them so a client that missed some can catch up, and
hands them to every subscriber of the room (in this process, and with Redis in every
process). The media path never reads the store: it is driven by the events.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

from .room import CommandError, Event, RoomState

EVENT_LOG_SIZE = 1000

Command = Callable[[RoomState], list[Event]]
Listener = Callable[[str, list[Event], RoomState], Awaitable[None] | None]


class RoomExists(Exception):
    pass


class RoomStore(Protocol):
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


class MemoryRoomStore:
    """Room state in this process: the default, nothing to install."""

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
        for listener in self._listeners:
            result = listener(room, events, state)
            if result is not None:
                await result

    async def close(self) -> None:
        self._listeners.clear()
