"""Speaking timers: a time limit that goes with the floor, and what happens when it is up.

When the chair gives the floor, a limit may go with it: ``grant_floor`` with ``limit_s``, else the
current agenda item's ``limit_s``, else the room's limit for the speaker's kind (``by_kind``: e.g.
members 180 s, departments 300 s; the kind comes from the roster), else the room's default, all set
with ``set_floor_limits``. The server holds the time: the floor event carries when
the floor was granted (Unix seconds) and the limit, so every page (and a page that reloads, or
another server) shows the same remaining time from its own clock; nothing ticks over the wire.
When the limit is up the room's action applies: ``none``, ``chime`` (the venue screens sound a
chime; the pages do that themselves), or ``mute``: the server mutes the speaker once the grace
period has passed too (``time_up``, scheduled by ``signaling.floor_timers`` on the event loop's
monotonic clock). The chair can always extend (``extend_floor``), which gives a speaker muted by
the timer their microphone back.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from . import events as reducer
from . import room as model

if TYPE_CHECKING:
    from .room import Event, RoomState

Action = Literal["none", "chime", "mute"]
ACTIONS: tuple[str, ...] = ("none", "chime", "mute")
MAX_LIMIT_S = 4 * 3600.0
MAX_GRACE_S = 600.0
# Pages turn the timer amber this long before the end (docs/pages.md).
WARN_BEFORE_S = 30.0


@dataclass(slots=True)
class FloorLimits:
    """The room's rules: the default limit (None: no limit), the action, the grace before a mute."""

    default_s: float | None = None
    action: Action = "none"
    grace_s: float = 10.0
    # Limits by kind of speaker (the roster's kind: member, expert, department, ...).
    by_kind: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> FloorLimits:
        if not data:
            return cls()
        return cls(**{**data, "by_kind": dict(data.get("by_kind") or {})})


@dataclass(slots=True)
class FloorTimer:
    """The running floor's clock: granted at (Unix seconds), its limit (None: unlimited) and
    whether the timer's action has muted the speaker."""

    granted_at: float
    limit_s: float | None = None
    muted: bool = False

    def deadline(self, grace_s: float = 0.0) -> float | None:
        return None if self.limit_s is None else self.granted_at + self.limit_s + grace_s

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> FloorTimer | None:
        return cls(**data) if data else None


def check_limit(value: Any, name: str = "limit_s", upper: float = MAX_LIMIT_S) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise model.CommandError("bad_request", f"{name} must be a number of seconds")
    if not 0 < value <= upper:
        raise model.CommandError("bad_request", f"{name} must be in (0, {upper:.0f}] seconds")
    return float(value)


def floor_fields(state: RoomState, identity: str | None, limit_s: float | None, now: float | None) -> Event:
    """What a floor event carries about the timer: the grant's time and its limit."""
    if identity is None:
        return {"granted_at": None, "limit_s": None}
    return {"granted_at": time.time() if now is None else now, "limit_s": limit_for(state, identity, limit_s)}


def limit_for(state: RoomState, identity: str, asked: float | None = None) -> float | None:
    """The limit of a grant: the one asked for, the current agenda item's, the speaker's kind's,
    the room's default (the first that is set)."""
    if asked is not None:
        return check_limit(asked)
    index = state.agenda_index
    if index is not None and 0 <= index < len(state.agenda):
        item_limit = state.agenda[index].get("limit_s")
        if item_limit is not None:
            return float(item_limit)
    p = state.participants.get(identity)
    if p is not None and p.kind and p.kind in state.floor_limits.by_kind:
        return float(state.floor_limits.by_kind[p.kind])
    return state.floor_limits.default_s


def set_floor_limits(
    state: RoomState,
    default_s: float | None,
    action: str,
    grace_s: float,
    by: str | None = None,
    by_kind: dict[str, Any] | None = None,
) -> list[Event]:
    if action not in ACTIONS:
        raise model.CommandError("bad_request", f"action must be one of {', '.join(ACTIONS)}")
    grace = check_limit(grace_s, "grace_s", MAX_GRACE_S) if grace_s else 0.0
    kinds: dict[str, float] = {}
    for kind, seconds in (by_kind or {}).items():
        if not isinstance(kind, str) or not 1 <= len(kind) <= 40:
            raise model.CommandError(
                "bad_request", "by_kind maps a kind of speaker (1-40 characters) to seconds"
            )
        limit = check_limit(seconds, f"by_kind[{kind!r}]")
        if limit is not None:
            kinds[kind] = limit
    limits = FloorLimits(check_limit(default_s, "default_s"), action, grace or 0.0, kinds)  # type: ignore[arg-type]
    return reducer.apply_all(state, [{"kind": "floor_limits", "limits": asdict(limits), "by": by}])


def extend_floor(state: RoomState, by_s: float, by: str | None = None) -> list[Event]:
    """More time for the speaker (or a first limit); a mute the timer imposed is lifted."""
    timer = state.floor_timer
    if state.floor is None or timer is None:
        raise model.CommandError("conflict", "nobody has the floor")
    extra = check_limit(by_s, "by_s")
    assert extra is not None
    # No limit yet: one starts now.
    used = timer.limit_s if timer.limit_s is not None else time.time() - timer.granted_at
    limit = used + extra
    events: list[Event] = [{"kind": "floor_timer", "limit_s": round(limit, 3), "muted": False, "by": by}]
    if timer.muted:
        p = state.participants[state.floor]
        events.append(
            {"kind": "mute", "identity": p.identity, "muted": False, "self_muted": p.self_muted, "by": by}
        )
    return reducer.apply_all(state, events)


def time_up(state: RoomState, identity: str, granted_at: float, now: float | None = None) -> list[Event]:
    """The ``mute`` action, when its moment has come: the same floor still running, past its limit
    and grace. Anything else (revoked, extended, granted again) changes nothing."""
    timer = state.floor_timer
    if state.floor != identity or timer is None or timer.granted_at != granted_at or timer.muted:
        return []
    if state.floor_limits.action != "mute":
        return []
    deadline = timer.deadline(state.floor_limits.grace_s)
    if deadline is None or (time.time() if now is None else now) < deadline - 0.05:
        return []
    p = state.participants[identity]
    return reducer.apply_all(
        state,
        [
            {"kind": "floor_timer", "limit_s": timer.limit_s, "muted": True, "by": None},
            {"kind": "mute", "identity": identity, "muted": True, "self_muted": p.self_muted, "by": None},
        ],
    )
