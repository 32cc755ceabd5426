"""A server that starts again finds its rooms (the SQLite store) and picks the meeting up.

Nobody is connected to a process that has just started, so every participant the store still
lists is marked disconnected and keeps its place (slots, hand, floor, mutes) for the reconnect
grace, exactly as after a dropped connection: venue screens that reconnect by themselves come
back to the program they had; whoever does not come back leaves when the grace ends.

A room that was recording goes on recording: the recording that was running is closed (by the
shutdown, or by the recorder's recovery after a crash) and rendered, and a new recording starts
at once, so the meeting is recorded in two recordings. A recording room with nobody in it stops.
A room taken up from a node that died (several nodes) goes on with the same recording as its next
part instead (``RecordingControl.resume``): one recording, its render spanning the failover.

Only for stores whose rooms belong to this process alone (``shared`` false): with Redis other
processes may hold the connections.
"""

from __future__ import annotations

import contextlib
import logging

from conference import room as room_commands
from conference.room import CommandError, Event, RoomState

from .rooms import Rooms

log = logging.getLogger(__name__)


def _all_disconnected(state: RoomState) -> list[Event]:
    events: list[Event] = []
    for identity, participant in state.participants.items():
        if participant.connected:
            events += room_commands.set_connected(state, identity, False)
    return events


async def restore_rooms(rooms: Rooms) -> list[str]:
    """Pick up the rooms found in the store at start; returns their names."""
    store = rooms.store
    if getattr(store, "shared", True):
        return []
    names = await store.list_rooms()
    for name in names:
        try:
            await restore_room(rooms, name)
        except Exception:  # one room that cannot be restored must not keep the server down
            log.exception("room %s could not be picked up after the restart", name)
    if names:
        log.info("picked up %d rooms after a restart: %s", len(names), ", ".join(names))
    return names


async def restore_room(rooms: Rooms, name: str, *, next_part: bool = False) -> None:
    """Every participant disconnected with its place kept; a running recording goes on as a new one,
    or with ``next_part`` (a room taken up from a node that died, Rooms._host) as the next part of
    the same recording."""
    store = rooms.store
    state, _ = await store.update(name, _all_disconnected)
    for identity in state.participants:
        rooms.keep_place(name, identity)
    if not state.recording.active:
        return
    previous = state.recording.recording_id
    if next_part and state.participants:
        try:
            _, part = await rooms.recording.resume(name)
        except CommandError as exc:
            log.error("room %s: recording %s could not go on here: %s", name, previous, exc.message)
            return
        log.info("room %s: recording %s goes on here as part %d", name, previous, part)
        return
    with contextlib.suppress(CommandError):
        await store.update(name, room_commands.stop_recording)
    if not state.participants:
        log.info("room %s: recording %s ended with the previous server (room empty)", name, previous)
        return
    try:
        _, recording_id = await rooms.recording.start(name)
    except CommandError as exc:
        log.error("room %s: recording could not start again after the restart: %s", name, exc.message)
        return
    log.info("room %s: recording %s goes on as %s after the restart", name, previous, recording_id)
