"""The one Python reducer of room events: ``apply(state, event)`` changes a ``RoomState`` as the
event says. The room commands (``conference.room``) validate, decide and build events, then apply
them here; the recorder's replay (``recorder.replay.MeetingState``) applies a recording's timeline
with the same function. The pages' JavaScript reducer (``web/client.js``) follows the same rules.

Events carry what their effect needs (a joined participant in full, a raised hand's time, a
removal's time), so a state rebuilt from a snapshot and the events after it equals the live one.
Secrets never travel in events: the dial-in PIN hashes are set by their command alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

# A module reference, not names: conference.room applies its events here, so each imports the other.
from . import room as model
from . import speaking
from .order_state import copy_item, copy_preset

if TYPE_CHECKING:
    from .room import RoomState

Event = dict[str, Any]


def apply(state: RoomState, event: Event) -> None:
    """Apply one event; kinds that do not change the room (e.g. ``speakers``) are ignored."""
    handler = _HANDLERS.get(event.get("kind", ""))
    if handler is not None:
        handler(state, event)


def apply_all(state: RoomState, events: list[Event]) -> list[Event]:
    for event in events:
        apply(state, event)
    return events


def _joined(state: RoomState, e: Event) -> None:
    participant = model.Participant.from_json(e["participant"])
    state.participants[participant.identity] = participant


def _connection(state: RoomState, e: Event) -> None:
    state.participants[e["identity"]].connected = bool(e["connected"])


def _left(state: RoomState, e: Event) -> None:
    identity = e["identity"]
    state.participants.pop(identity, None)
    removed_at = e.get("removed_at")
    if removed_at is not None:
        state.removed = {i: t for i, t in state.removed.items() if t > removed_at - model.REMOVAL_KEPT_S}
        state.removed[identity] = removed_at
    # The program slots and the floor it held arrive as their own events.


def _publishing(state: RoomState, e: Event) -> None:
    p = state.participants[e["identity"]]
    p.publish_audio, p.publish_video = bool(e["audio"]), bool(e["video"])


def _program(state: RoomState, e: Event) -> None:
    program = e["program"]
    state.program = model.Program(layout=str(program["layout"]), slots=list(program["slots"]))


def _title(state: RoomState, e: Event) -> None:
    state.title = str(e["title"])


def _public(state: RoomState, e: Event) -> None:
    state.topic = e["topic"]
    state.starts_at = e["starts_at"]
    state.background = e["background"]
    state.auto_broadcast = bool(e["auto_broadcast"])


def _broadcast(state: RoomState, e: Event) -> None:
    state.broadcast = model.Broadcast(bool(e["active"]), e.get("started_at"), e.get("stopped_at"))


def _mute(state: RoomState, e: Event) -> None:
    p = state.participants[e["identity"]]
    p.muted, p.self_muted = bool(e["muted"]), bool(e["self_muted"])
    # Muted by the chair, or the microphone switched on: no request to unmute is pending.
    if p.muted or not p.self_muted:
        p.unmute_requested = False


def _unmute_requested(state: RoomState, e: Event) -> None:
    p = state.participants[e["identity"]]
    p.muted = False
    p.unmute_requested = True


def _hand(state: RoomState, e: Event) -> None:
    p = state.participants[e["identity"]]
    p.hand_raised_at = e["at"] if e["raised"] else None


def _floor(state: RoomState, e: Event) -> None:
    identity = e["floor"]
    state.floor = identity
    granted_at = e.get("granted_at")
    state.floor_timer = None if granted_at is None else speaking.FloorTimer(granted_at, e.get("limit_s"))
    if identity is not None:
        # The floor holder leaves the queue, and the chair's mute lifts; a microphone still off
        # is asked to switch on.
        p = state.participants[identity]
        p.hand_raised_at = None
        p.muted = False
        p.unmute_requested = p.self_muted


def _floor_limits(state: RoomState, e: Event) -> None:
    state.floor_limits = speaking.FloorLimits.from_json(e["limits"])


def _floor_timer(state: RoomState, e: Event) -> None:
    if state.floor_timer is not None:
        state.floor_timer.limit_s = e["limit_s"]
        state.floor_timer.muted = bool(e["muted"])


def _dial_in(state: RoomState, e: Event) -> None:
    state.dial_in.meeting_id = e["meeting_id"]


def _recording(state: RoomState, e: Event) -> None:
    if e["active"]:
        state.recording = model.Recording(True, e["recording_id"], e["started_at"], int(e.get("part", 1)))
    else:
        state.recording = model.Recording()


def _comment_shown(state: RoomState, e: Event) -> None:
    state.on_screen = dict(e["comment"]) if e.get("comment") else None


def _comment_answered(state: RoomState, e: Event) -> None:
    # The answer's moment is a chapter of the recording (recorder.replay); the caption says who.
    if state.on_screen is not None and state.on_screen.get("id") == e["comment"]:
        state.on_screen = {**state.on_screen, "answered_by": e["by"]}


def _comment_moderation(state: RoomState, e: Event) -> None:
    state.comment_moderation = bool(e["on"])


def _clip(state: RoomState, e: Event) -> None:
    state.clip = dict(e["clip"]) if e["clip"] else None


# --- the running order (conference.roster, conference.agenda) ---


def _roster(state: RoomState, e: Event) -> None:
    state.roster = {entry["identity"]: dict(entry) for entry in e["entries"]}
    state.allow_guests = bool(e["allow_guests"])
    # Who is present is now on the roster, or a guest (the chair and clerks never are).
    for p in state.participants.values():
        entry = state.roster.get(p.identity)
        if entry is not None:
            p.kind, p.sector, p.organisation = entry["kind"], entry["sector"], entry["organisation"]
        # A playing clip (device "clip", conference.clip_cue) is a source, not a person.
        p.guest = (
            entry is None and bool(state.roster) and p.role not in ("chair", "clerk") and p.device != "clip"
        )


def _guests(state: RoomState, e: Event) -> None:
    state.allow_guests = bool(e["allowed"])


def _agenda(state: RoomState, e: Event) -> None:
    state.agenda = [copy_item(item) for item in e["items"]]
    state.agenda_index = e["current"]
    if state.agenda_index is None:
        state.agenda_started_at = None


def _agenda_item(state: RoomState, e: Event) -> None:
    state.agenda_index = int(e["index"])
    state.agenda_started_at = e["started_at"]


def _preset(state: RoomState, e: Event) -> None:
    if e["preset"] is None:
        state.presets.pop(e["name"], None)
    else:
        state.presets[e["name"]] = copy_preset(e["preset"])


_HANDLERS: dict[str, Callable[[RoomState, Event], None]] = {
    "participant_joined": _joined,
    "participant_rejoined": _joined,
    "participant_connection": _connection,
    "participant_left": _left,
    "publishing": _publishing,
    "program": _program,
    "title": _title,
    "public": _public,
    "broadcast": _broadcast,
    "mute": _mute,
    "unmute_requested": _unmute_requested,
    "hand": _hand,
    "floor": _floor,
    "floor_limits": _floor_limits,
    "floor_timer": _floor_timer,
    "dial_in": _dial_in,
    "recording": _recording,
    "comment_on_screen": _comment_shown,
    "comment_answered": _comment_answered,
    "comment_moderation": _comment_moderation,
    "clip": _clip,
    "roster": _roster,
    "guests": _guests,
    "agenda": _agenda,
    "agenda_item": _agenda_item,
    "preset": _preset,
}
