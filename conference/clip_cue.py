"""The prepared clip in the room: pure commands, as in ``conference.room``.

A clip that plays is a source like a venue: a participant ``clip`` (device "clip", a venue's role)
that publishes the clip's picture and sound, placed in the program slot the chair names. The room
state's ``clip`` says which clip, in which slot, whether it plays, and where it was at ``at`` (Unix
seconds), so a page computes the position (and the remaining time) without ticks:
``position_s + (now - at)`` while playing. The player itself (``conference.clip_player``) is run
by ``signaling.clip_control`` in the process that got the command.
"""

from __future__ import annotations

import time
from typing import Any

from . import events as reducer
from .layouts import get_layout
from .roles import Role
from .room import CommandError, Event, Participant, RoomState, join, leave

CLIP_IDENTITY = "clip"


def play_clip(
    state: RoomState,
    clip: dict[str, Any],
    slot: int,
    position_s: float = 0.0,
    now: float | None = None,
    by: str | None = None,
) -> list[Event]:
    """Put ``clip`` (its ``id``, ``name``, ``duration_s``, ``has_audio``) in program slot ``slot``
    and mark it playing from ``position_s``. Another clip in the player is replaced."""
    now = time.time() if now is None else now
    size = get_layout(state.program.layout).size
    if not 0 <= slot < size:
        raise CommandError(
            "bad_request", f"layout {state.program.layout!r} has slots 0-{size - 1}, not {slot}"
        )
    existing = state.participants.get(CLIP_IDENTITY)
    if existing is not None and existing.device != "clip":
        raise CommandError("conflict", f"a participant is called {CLIP_IDENTITY!r}: the clip cannot join")
    events: list[Event] = []
    if existing is None or existing.name != clip["name"] or existing.publish_audio != clip["has_audio"]:
        player = Participant(
            CLIP_IDENTITY,
            clip["name"],
            Role.VENUE,
            device="clip",
            publish_audio=bool(clip["has_audio"]),
            publish_video=True,
        )
        events += join(state, player, now=now)
    slots = [None if s == CLIP_IDENTITY else s for s in state.program.slots]
    slots += [None] * (size - len(slots))
    slots[slot] = CLIP_IDENTITY
    program = {"layout": state.program.layout, "slots": slots}
    if program["slots"] != state.program.slots:
        events += reducer.apply_all(state, [{"kind": "program", "program": program, "by": by}])
    cue = {
        "id": clip["id"],
        "name": clip["name"],
        "identity": CLIP_IDENTITY,
        "slot": slot,
        "duration_s": clip["duration_s"],
        "playing": True,
        "position_s": round(position_s, 3),
        "at": now,
    }
    return events + reducer.apply_all(state, [{"kind": "clip", "clip": cue, "by": by}])


def clip_moved(
    state: RoomState, playing: bool, position_s: float, now: float | None = None, by: str | None = None
) -> list[Event]:
    """The player paused, went on, sought or reached the end: where it is now."""
    if state.clip is None:
        raise CommandError("conflict", "no clip is playing")
    cue = {**state.clip, "playing": playing, "position_s": round(position_s, 3)}
    cue["at"] = time.time() if now is None else now
    return reducer.apply_all(state, [{"kind": "clip", "clip": cue, "by": by}])


def clip_gone(state: RoomState) -> list[Event]:
    """The participant ``clip`` left another way (the chair removed it, or after a restart it timed
    out with nothing playing it): the player's state goes too."""
    if state.clip is None or CLIP_IDENTITY in state.participants:
        return []
    return reducer.apply_all(state, [{"kind": "clip", "clip": None, "by": None}])


def stop_clip(state: RoomState, by: str | None = None) -> list[Event]:
    """The clip leaves the program (its slot empties) and the room."""
    if state.clip is None and CLIP_IDENTITY not in state.participants:
        raise CommandError("conflict", "no clip is playing")
    events = reducer.apply_all(state, [{"kind": "clip", "clip": None, "by": by}])
    clip = state.participants.get(CLIP_IDENTITY)
    if clip is not None and clip.device == "clip":
        events += leave(state, CLIP_IDENTITY, "clip_stopped")
    return events
