"""The room: who is in the meeting, the program everyone sees, the floor, the recording.

Room state is plain data (``RoomState``) changed only by the command functions below. Each
command checks its arguments, decides, and builds the events that say what changes; the events are
applied by the one reducer, ``conference.events.apply`` (which the recorder's replay uses too), and
returned. The store (``conference.store``) runs a command atomically, bumps the room version once
per event and broadcasts the events. Because commands are pure functions of the state, every store
runs exactly the same logic.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from . import events as reducer
from . import speaking
from .layouts import DEFAULT_LAYOUT, UnknownLayout, get_layout
from .order_state import copy_item, copy_preset, running_order_json
from .roles import Role, publishes

Device = Literal["venue", "phone", "clip"]  # "clip": the prepared-clip player (conference.clip_cue)
DEFAULT_MAX_ENDPOINTS = 50
# A removal refuses every token of that identity issued up to the moment of removal. No such token
# outlives the longest token lifetime (signaling.tokens.MAX_TTL_S, 366 days), so an entry is
# dropped after that: by then nothing it could refuse is still valid.
REMOVAL_KEPT_S = 366 * 24 * 3600


class CommandError(Exception):
    """A command that cannot be carried out; ``code`` is one of the protocol's error codes."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Removed(CommandError):
    """The sender's identity was removed from the room after its token was issued."""

    def __init__(self) -> None:
        super().__init__("forbidden", "removed from the room")


@dataclass(slots=True)
class Participant:
    identity: str
    name: str
    role: Role
    device: Device = "venue"
    publish_audio: bool = False
    publish_video: bool = False
    # Chair-imposed mute: the server drops this participant's audio whatever the client does.
    muted: bool = False
    # The participant's own microphone switch; also enforced on the server.
    self_muted: bool = False
    unmute_requested: bool = False
    hand_raised_at: float | None = None
    connected: bool = True
    joined_at: float = 0.0
    # From the roster (conference.roster) or the invitation's token: shown in the console.
    kind: str = ""
    sector: str = ""
    organisation: str = ""
    guest: bool = False  # not on the room's roster, admitted because the room allows guests

    @property
    def audible(self) -> bool:
        return self.publish_audio and not self.muted and not self.self_muted

    def to_json(self) -> dict[str, Any]:
        # Field by field rather than dataclasses.asdict (which deep-copies every value): a store
        # copies the room on every change, and asdict made that ~1.5 ms for 50 participants.
        data = {name: getattr(self, name) for name in _PARTICIPANT_FIELDS}
        data["role"] = str(self.role)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Participant:
        return cls(**{**data, "role": Role(data["role"])})


_PARTICIPANT_FIELDS = tuple(f.name for f in fields(Participant))  # all plain values: no copy needed


@dataclass(slots=True)
class Program:
    layout: str = DEFAULT_LAYOUT
    slots: list[str | None] = field(default_factory=lambda: [None])

    def to_json(self) -> dict[str, Any]:
        return {"layout": self.layout, "slots": list(self.slots)}


@dataclass(slots=True)
class Recording:
    active: bool = False
    recording_id: str | None = None
    started_at: float | None = None
    # 2, 3, ... once another node went on with the recording after its node died (issue 17).
    part: int = 1


@dataclass(slots=True)
class Broadcast:
    """The public live stream (``recorder.live``): on while the chair broadcasts, apart from the
    recording. ``stopped_at`` tells the public page the broadcast is over rather than yet to come."""

    active: bool = False
    started_at: float | None = None
    stopped_at: float | None = None


@dataclass(slots=True)
class DialIn:
    """Telephone dial-in: the meeting's numeric ID and PINs, kept only as keyed hashes
    (``signaling.dialin``), so the state never holds a PIN."""

    meeting_id: str | None = None
    pin_hash: str | None = None
    # Roster entries with their own PIN: [{"identity", "name", "pin_hash"}].
    members: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "meeting_id": self.meeting_id,
            "pin_set": self.pin_hash is not None,
            "pin_hash": self.pin_hash,
            "members": [dict(m) for m in self.members],
        }

    def public_json(self) -> dict[str, Any]:
        return {"meeting_id": self.meeting_id, "pin_set": self.pin_hash is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> DialIn:
        if not data:
            return cls()
        return cls(data.get("meeting_id"), data.get("pin_hash"), [dict(m) for m in data.get("members", [])])


@dataclass(slots=True)
class RoomState:
    room: str
    version: int = 0
    # The meeting's title as the chair names it ("第十二届委员会第三次会议"); shown on every screen.
    title: str = ""
    created_at: float = 0.0
    max_endpoints: int = DEFAULT_MAX_ENDPOINTS
    auto_record: bool = False
    program: Program = field(default_factory=Program)
    participants: dict[str, Participant] = field(default_factory=dict)
    floor: str | None = None
    # The running floor's speaking timer, and the room's rules for it (conference.speaking).
    floor_timer: speaking.FloorTimer | None = None
    floor_limits: speaking.FloorLimits = field(default_factory=speaking.FloorLimits)
    recording: Recording = field(default_factory=Recording)
    dial_in: DialIn = field(default_factory=DialIn)
    # Removed identities and when (Unix seconds): their tokens issued until then are refused.
    removed: dict[str, float] = field(default_factory=dict)
    broadcast: Broadcast = field(default_factory=Broadcast)
    # Start the public broadcast with the meeting (the first join), as auto_record does recording.
    auto_broadcast: bool = False
    # What the public page shows of the meeting besides its title (``set_public``).
    topic: str = ""
    starts_at: float | None = None  # the scheduled start, Unix seconds
    background: str = ""  # background material: plain text, links written out
    # The chair's long-lived links for venue screens, by link id (conference.screen_links).
    screen_links: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The public's comment on every screen's lower third (conference.comments.on_screen_json), or None;
    # the comments themselves live in their own store (signaling.comments), not in the room.
    on_screen: dict[str, Any] | None = None
    comment_moderation: bool = True  # the public's comments wait for a moderator
    # The prepared clip cued or playing (conference.clip_cue), None when none is.
    clip: dict[str, Any] | None = None
    # The running order: the roster by identity (conference.roster), whether people not on it may
    # join, the agenda and its current item, program presets by name (conference.agenda).
    roster: dict[str, dict[str, str]] = field(default_factory=dict)
    allow_guests: bool = True
    agenda: list[dict[str, Any]] = field(default_factory=list)
    agenda_index: int | None = None
    agenda_started_at: float | None = None
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)

    def is_removed(self, identity: str, issued_at: float) -> bool:
        """Whether a token of ``identity`` issued at ``issued_at`` predates its removal. Token
        times are whole seconds: one issued in the second of the removal counts as before it."""
        removed_at = self.removed.get(identity)
        return removed_at is not None and issued_at <= int(removed_at)

    @property
    def floor_queue(self) -> list[str]:
        """Raised hands, earliest first (the floor holder is not in the queue)."""
        raised = [p for p in self.participants.values() if p.hand_raised_at is not None]
        raised.sort(key=lambda p: (p.hand_raised_at, p.identity))
        return [p.identity for p in raised]

    def to_json(self) -> dict[str, Any]:
        return {
            "room": self.room,
            "title": self.title,
            "version": self.version,
            "created_at": self.created_at,
            "max_endpoints": self.max_endpoints,
            "auto_record": self.auto_record,
            "program": self.program.to_json(),
            "participants": [p.to_json() for p in self.participants.values()],
            "floor": self.floor,
            "floor_queue": self.floor_queue,
            "floor_timer": None if self.floor_timer is None else asdict(self.floor_timer),
            "floor_limits": asdict(self.floor_limits),
            "recording": asdict(self.recording),
            "dial_in": self.dial_in.to_json(),
            "removed": dict(self.removed),
            "broadcast": asdict(self.broadcast),
            "auto_broadcast": self.auto_broadcast,
            "topic": self.topic,
            "starts_at": self.starts_at,
            "background": self.background,
            "screen_links": {i: dict(link) for i, link in self.screen_links.items()},
            "on_screen": None if self.on_screen is None else dict(self.on_screen),
            "comment_moderation": self.comment_moderation,
            "clip": dict(self.clip) if self.clip else None,
            **running_order_json(self),
        }

    def client_json(self) -> dict[str, Any]:
        """What clients (pages, the REST API) see of the room: everything but secrets. The dial-in
        PIN hashes stay with the server (``to_json`` is what the stores keep)."""
        data = self.to_json()
        data["dial_in"] = self.dial_in.public_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RoomState:
        return cls(
            room=data["room"],
            title=data.get("title", ""),
            version=data["version"],
            created_at=data["created_at"],
            max_endpoints=data["max_endpoints"],
            auto_record=data["auto_record"],
            program=Program(**data["program"]),
            participants={p["identity"]: Participant.from_json(p) for p in data["participants"]},
            floor=data["floor"],
            floor_timer=speaking.FloorTimer.from_json(data.get("floor_timer")),
            floor_limits=speaking.FloorLimits.from_json(data.get("floor_limits")),
            recording=Recording(**data["recording"]),
            dial_in=DialIn.from_json(data.get("dial_in")),
            removed=dict(data.get("removed") or {}),
            broadcast=Broadcast(**(data.get("broadcast") or {})),
            auto_broadcast=bool(data.get("auto_broadcast", False)),
            topic=data.get("topic", ""),
            starts_at=data.get("starts_at"),
            background=data.get("background", ""),
            screen_links={i: dict(link) for i, link in (data.get("screen_links") or {}).items()},
            on_screen=dict(data["on_screen"]) if data.get("on_screen") else None,
            comment_moderation=bool(data.get("comment_moderation", True)),
            clip=dict(data["clip"]) if data.get("clip") else None,
            roster={e["identity"]: e for e in data.get("roster") or []},  # shared: see order_state
            allow_guests=bool(data.get("allow_guests", True)),
            agenda=[copy_item(item) for item in data.get("agenda") or []],
            agenda_index=data.get("agenda_index"),
            agenda_started_at=data.get("agenda_started_at"),
            presets={n: copy_preset(p) for n, p in (data.get("presets") or {}).items()},
        )


Event = dict[str, Any]


def _participant(state: RoomState, identity: str) -> Participant:
    try:
        return state.participants[identity]
    except KeyError:
        raise CommandError("not_found", f"no participant {identity!r} in room {state.room!r}") from None


# --- membership -------------------------------------------------------------------------


def join(
    state: RoomState, participant: Participant, now: float | None = None, issued_at: float | None = None
) -> list[Event]:
    """Add a participant, or take over the entry of the same identity (a reconnect).

    ``issued_at``: when the participant's token was issued; refused if it predates a removal
    (checked here, in the same atomic update as the removal itself, so no join slips between)."""
    now = time.time() if now is None else now
    if issued_at is not None and state.is_removed(participant.identity, issued_at):
        raise Removed()
    existing = state.participants.get(participant.identity)
    if existing is None and len(state.participants) >= state.max_endpoints:
        raise CommandError("room_full", f"room {state.room!r} is full ({state.max_endpoints} endpoints)")
    if not publishes(participant.role):
        participant.publish_audio = participant.publish_video = False
    if existing is not None:
        # Keep what the chair decided about this identity across a reconnect.
        participant.muted = existing.muted
        participant.hand_raised_at = existing.hand_raised_at
        participant.joined_at = existing.joined_at
    else:
        participant.joined_at = now
    participant.connected = True
    kind = "participant_rejoined" if existing is not None else "participant_joined"
    return reducer.apply_all(state, [{"kind": kind, "participant": participant.to_json()}])


def set_connected(state: RoomState, identity: str, connected: bool) -> list[Event]:
    p = _participant(state, identity)
    if p.connected == connected:
        return []
    return reducer.apply_all(
        state, [{"kind": "participant_connection", "identity": identity, "connected": connected}]
    )


def leave(
    state: RoomState, identity: str, reason: str = "left", removed_at: float | None = None
) -> list[Event]:
    """Remove a participant: their program slots empty, their hand and floor go."""
    if identity not in state.participants:
        return []
    gone = state.participants[identity]
    # The name travels with the event: a log or a replay names who left without a lookup.
    left: Event = {"kind": "participant_left", "identity": identity, "name": gone.name, "reason": reason}
    if removed_at is not None:
        left["removed_at"] = removed_at
    events: list[Event] = [left]
    if identity in state.program.slots:
        slots = [None if s == identity else s for s in state.program.slots]
        events.append(
            {"kind": "program", "program": {"layout": state.program.layout, "slots": slots}, "by": None}
        )
    floor_goes = state.floor == identity
    reducer.apply_all(state, events)
    if floor_goes:
        events += reducer.apply_all(
            state, [{"kind": "floor", "floor": None, "floor_queue": state.floor_queue}]
        )
    return events


def remove(state: RoomState, identity: str, now: float | None = None) -> list[Event]:
    """Remove a participant and remember it, so its tokens issued until now stay refused."""
    _participant(state, identity)
    return leave(state, identity, reason="removed", removed_at=time.time() if now is None else now)


def update_publishing(state: RoomState, identity: str, audio: bool, video: bool) -> list[Event]:
    p = _participant(state, identity)
    if not publishes(p.role):
        audio = video = False
    if (p.publish_audio, p.publish_video) == (audio, video):
        return []
    return reducer.apply_all(
        state, [{"kind": "publishing", "identity": identity, "audio": audio, "video": video}]
    )


# --- the program ---------------------------------------------------------------------------


def set_program(state: RoomState, layout: str, slots: list[str | None], by: str | None = None) -> list[Event]:
    """Set layout and slot assignment as one atomic change."""
    try:
        spec = get_layout(layout)
    except UnknownLayout as exc:
        raise CommandError("unknown_layout", str(exc)) from None
    if len(slots) > spec.size:
        raise CommandError("bad_request", f"layout {layout!r} has {spec.size} slots, got {len(slots)}")
    filled = list(slots) + [None] * (spec.size - len(slots))
    for identity in filled:
        if identity is not None and identity not in state.participants:
            raise CommandError("not_found", f"no participant {identity!r} in room {state.room!r}")
    program = Program(layout=layout, slots=filled).to_json()
    return reducer.apply_all(state, [{"kind": "program", "program": program, "by": by}])


MAX_TITLE = 120


def set_title(state: RoomState, title: str, by: str | None = None) -> list[Event]:
    """Name the meeting (blank: no title; the screens then show the room)."""
    title = " ".join(title.split())  # no line breaks or runs of spaces on a one-line title bar
    if len(title) > MAX_TITLE:
        raise CommandError("bad_request", f"the title is longer than {MAX_TITLE} characters")
    if title == state.title:
        return []
    return reducer.apply_all(state, [{"kind": "title", "title": title, "by": by}])


MAX_TOPIC = 200
MAX_BACKGROUND = 4000


def set_public(
    state: RoomState,
    *,
    topic: str | None = None,
    starts_at: float | bool | None = False,
    background: str | None = None,
    auto_broadcast: bool | None = None,
    by: str | None = None,
) -> list[Event]:
    """What the public page shows besides the title: the topic, the scheduled start (None: none;
    False: unchanged), background material; and whether the broadcast starts with the meeting.
    Checked before anything changes, so a bad field changes nothing."""
    if topic is not None:
        topic = " ".join(topic.split())
        if len(topic) > MAX_TOPIC:
            raise CommandError("bad_request", f"the topic is longer than {MAX_TOPIC} characters")
    if background is not None:
        background = background.replace("\r\n", "\n").strip()
        if len(background) > MAX_BACKGROUND:
            raise CommandError("bad_request", f"the background is longer than {MAX_BACKGROUND} characters")
    if starts_at is not False and starts_at is not None:
        if isinstance(starts_at, bool) or not isinstance(starts_at, int | float) or not 0 < starts_at < 1e11:
            raise CommandError("bad_request", "starts_at must be a time in Unix seconds")
        starts_at = float(starts_at)
    event: Event = {
        "kind": "public",
        "topic": state.topic if topic is None else topic,
        "starts_at": state.starts_at if starts_at is False else starts_at,
        "background": state.background if background is None else background,
        "auto_broadcast": state.auto_broadcast if auto_broadcast is None else bool(auto_broadcast),
        "by": by,
    }
    return reducer.apply_all(state, [event])


# --- the public broadcast ------------------------------------------------------------------


def start_broadcast(state: RoomState, now: float | None = None, by: str | None = None) -> list[Event]:
    """The chair puts the meeting on the public stream (separately from recording)."""
    if state.broadcast.active:
        raise CommandError("conflict", "the room is already broadcasting")
    started = Broadcast(True, time.time() if now is None else now, None)
    return reducer.apply_all(state, [{"kind": "broadcast", **asdict(started), "by": by}])


def stop_broadcast(state: RoomState, now: float | None = None, by: str | None = None) -> list[Event]:
    if not state.broadcast.active:
        raise CommandError("conflict", "the room is not broadcasting")
    stopped = Broadcast(False, state.broadcast.started_at, time.time() if now is None else now)
    return reducer.apply_all(state, [{"kind": "broadcast", **asdict(stopped), "by": by}])


# --- audio ---------------------------------------------------------------------------------


def mute(state: RoomState, identity: str, muted: bool, by: str | None = None) -> list[Event]:
    """The chair mutes (server-enforced) or lifts its mute."""
    p = _participant(state, identity)
    event = {"kind": "mute", "identity": identity, "muted": muted, "self_muted": p.self_muted, "by": by}
    return reducer.apply_all(state, [event])


def request_unmute(state: RoomState, identity: str, by: str | None = None) -> list[Event]:
    """Lift the chair's mute and ask the participant to switch their microphone on.

    The microphone itself is only switched on by the participant (no remote hot mic)."""
    _participant(state, identity)
    return reducer.apply_all(state, [{"kind": "unmute_requested", "identity": identity, "by": by}])


def self_mute(state: RoomState, identity: str, muted: bool) -> list[Event]:
    p = _participant(state, identity)
    if not muted and p.muted:
        raise CommandError("forbidden", "the chair has muted you; ask for the floor to speak")
    event = {"kind": "mute", "identity": identity, "muted": p.muted, "self_muted": muted, "by": identity}
    return reducer.apply_all(state, [event])


# --- the floor -----------------------------------------------------------------------------


def raise_hand(state: RoomState, identity: str, now: float | None = None) -> list[Event]:
    p = _participant(state, identity)
    if p.hand_raised_at is not None or state.floor == identity:
        return []  # already queued, or already speaking: nothing changes
    return _hand(state, identity, time.time() if now is None else now)


def _hand(state: RoomState, identity: str, at: float | None) -> list[Event]:
    event: Event = {"kind": "hand", "identity": identity, "raised": at is not None, "at": at}
    reducer.apply(state, event)
    event["floor_queue"] = state.floor_queue  # for clients: the queue as it now is
    return [event]


def lower_hand(state: RoomState, identity: str) -> list[Event]:
    p = _participant(state, identity)
    if p.hand_raised_at is None:
        return []
    return _hand(state, identity, None)


def grant_floor(
    state: RoomState,
    identity: str | None = None,
    by: str | None = None,
    limit_s: float | None = None,
    now: float | None = None,
) -> list[Event]:
    """Give the floor to ``identity``, or to the first raised hand when none is named; with a
    speaking limit (``limit_s``, else the room's default: conference.speaking)."""
    if identity is None:
        queue = state.floor_queue
        if not queue:
            raise CommandError("floor_queue_empty", "no raised hands to give the floor to")
        identity = queue[0]
    _participant(state, identity)
    return _floor(state, identity, by, limit_s, now)


def _floor(
    state: RoomState,
    identity: str | None,
    by: str | None,
    limit_s: float | None = None,
    now: float | None = None,
) -> list[Event]:
    timer = speaking.floor_fields(state, identity, limit_s, now)
    event: Event = {"kind": "floor", "floor": identity, "by": by, **timer}
    reducer.apply(state, event)
    event["floor_queue"] = state.floor_queue
    return [event]


def revoke_floor(state: RoomState, by: str | None = None) -> list[Event]:
    if state.floor is None:
        return []
    return _floor(state, None, by)


def release_floor(state: RoomState, identity: str) -> list[Event]:
    """The floor holder ends their own speaking (the chair's revoke, from the speaker's side)."""
    _participant(state, identity)
    if state.floor != identity:
        raise CommandError("conflict", "you do not have the floor")
    return _floor(state, None, identity)


# --- telephone dial-in ---------------------------------------------------------------------


def set_dial_in(
    state: RoomState, meeting_id: str, pin_hash: str | None, members: list[dict[str, str]] | None = None
) -> list[Event]:
    """Set the meeting ID, the room's PIN (None: no room PIN) and the roster PINs when given."""
    # The PIN hashes are secrets: set here, never carried by the event (see conference.events).
    state.dial_in.pin_hash = pin_hash
    if members is not None:
        state.dial_in.members = [dict(m) for m in members]
    names = [{"identity": m["identity"], "name": m["name"]} for m in state.dial_in.members]
    event = {"kind": "dial_in", "meeting_id": meeting_id, "pin_set": pin_hash is not None, "members": names}
    return reducer.apply_all(state, [event])


# --- recording -----------------------------------------------------------------------------


def start_recording(state: RoomState, recording_id: str, now: float | None = None) -> list[Event]:
    if state.recording.active:
        raise CommandError("conflict", "the room is already recording")
    if not state.participants:
        # An empty room's recording would be stopped at once (nobody there) and, racing the
        # recorder's start, leave its writer running with nobody to stop it.
        raise CommandError("conflict", "nobody is in the room: start recording once someone has joined")
    started = Recording(True, recording_id, time.time() if now is None else now)
    return reducer.apply_all(state, [{"kind": "recording", **asdict(started)}])


def next_recording_part(state: RoomState) -> list[Event]:
    """The recording goes on as its next part (same id, same start): the node that wrote it is
    gone and another takes the room up (signaling.restore)."""
    if not state.recording.active:
        raise CommandError("conflict", "the room is not recording")
    going_on = replace(state.recording, part=state.recording.part + 1)
    return reducer.apply_all(state, [{"kind": "recording", **asdict(going_on)}])


def stop_recording(state: RoomState) -> list[Event]:
    if not state.recording.active:
        raise CommandError("conflict", "the room is not recording")
    stopped = state.recording
    event = {
        "kind": "recording",
        "active": False,
        "recording_id": stopped.recording_id,
        "started_at": stopped.started_at,
    }
    return reducer.apply_all(state, [event])
