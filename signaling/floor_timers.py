"""The server side of speaking timers (``conference.speaking``): when a room's action is ``mute``,
the speaker is muted once the limit and the grace have passed.

One timer per room on the event loop's monotonic clock, set again by every event that can move
the moment (a grant, an extension, a change of the room's rules) and, at start, for every room the
store holds (a restarted server keeps the deadline: it is in the room's state). When it fires, the
store runs ``speaking.time_up`` atomically, which checks the floor is still the one it was set for:
with several processes on one Redis each may fire, and only the first changes anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from conference import speaking
from conference.room import CommandError, Event, RoomState
from conference.store import RoomStore

log = logging.getLogger(__name__)

_MOVING_KINDS = frozenset({"floor", "floor_timer", "floor_limits"})


class FloorTimers:
    def __init__(self, store: RoomStore) -> None:
        self.store = store
        self.handles: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        store.subscribe(self.on_events)

    async def on_events(self, room: str, events: list[Event], state: RoomState) -> None:
        if any(e.get("kind") in _MOVING_KINDS for e in events):
            self.schedule(room, state)

    def schedule(self, room: str, state: RoomState) -> None:
        handle = self.handles.pop(room, None)
        if handle is not None:
            handle.cancel()
        timer, identity = state.floor_timer, state.floor
        if timer is None or identity is None or timer.muted or state.floor_limits.action != "mute":
            return
        deadline = timer.deadline(state.floor_limits.grace_s)
        if deadline is None:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, deadline - time.time())
        self.handles[room] = loop.call_later(delay, self._fire, room, identity, timer.granted_at)

    def _fire(self, room: str, identity: str, granted_at: float) -> None:
        self.handles.pop(room, None)
        task = asyncio.get_running_loop().create_task(self._time_up(room, identity, granted_at))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _time_up(self, room: str, identity: str, granted_at: float) -> None:
        try:
            await self.store.update(room, lambda s: speaking.time_up(s, identity, granted_at))
        except CommandError as exc:  # the room is gone
            log.info("speaking timer of room %s: %s", room, exc.message)
        except Exception:
            log.exception("speaking timer of room %s failed", room)

    async def restore(self) -> None:
        for room in await self.store.list_rooms():
            state = await self.store.get(room)
            if state is not None:
                self.schedule(room, state)

    async def close(self) -> None:
        for handle in self.handles.values():
            handle.cancel()
        self.handles.clear()
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)


def setup(app: web.Application, store: RoomStore) -> None:
    """Appended after the server's own cleanup context, so the store has started (and has its
    rooms) when the timers are set, and closes after them."""
    timers = FloorTimers(store)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await timers.restore()
        yield
        await timers.close()

    app.cleanup_ctx.append(lifecycle)
