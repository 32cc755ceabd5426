"""The agenda and the program presets: the meeting's script.

An agenda is an ordered list of items, each with a title, a kind (``KINDS``), a planned duration,
the people expected to speak, and optionally a program preset (a layout and its slots) and a clip
id (a prepared film, cued by the clip player). The chair advances (``next_item``) or jumps
(``goto_item``); the item's preset becomes the console's next program, ready to take, or is taken
at once when the command says ``take``. A slot of a preset may name ``@floor``: whoever has the
floor when it is taken ("the speaker full screen"). Presets are also saved by name in the room.

Someone a preset names who is not in the room leaves that slot empty: a take never fails for an
absent person (``resolve``). Pure commands on the room state, as in ``conference.room``.
"""

from __future__ import annotations

import time
from typing import Any

from . import events as reducer
from . import speaking
from .layouts import UnknownLayout, get_layout
from .order_state import copy_item, copy_preset
from .room import CommandError, Event, RoomState, set_program

KINDS = ("speech", "film", "remote_link", "department_answers", "open_discussion", "vote", "other")
FLOOR = "@floor"  # a preset's slot for whoever has the floor
MAX_ITEMS = 100
MAX_PRESETS = 30
MAX_TITLE = 120
MAX_PRESET_NAME = 40
MAX_PLANNED_S = 24 * 3600
MAX_SPEAKERS = 50
MAX_CLIP_ID = 64


def _bad(where: str, message: str) -> CommandError:
    return CommandError("bad_request", f"{where}: {message}")


def check_preset(preset: Any, where: str) -> dict[str, Any]:
    """A preset ``{"layout", "slots"}`` checked and padded to its layout's size (people are not
    checked against the room: a preset is prepared before they join)."""
    if not isinstance(preset, dict) or set(preset) - {"layout", "slots"} or "layout" not in preset:
        raise _bad(where, 'a preset is {"layout": name, "slots": [identity, "@floor" or null, ...]}')
    layout, slots = preset["layout"], preset.get("slots", [])
    try:
        spec = get_layout(str(layout))
    except UnknownLayout as exc:
        raise CommandError("unknown_layout", f"{where}: {exc}") from None
    if not isinstance(slots, list) or len(slots) > spec.size:
        raise _bad(where, f"layout {layout!r} has {spec.size} slots")
    named = [s for s in slots if s is not None]
    if any(not isinstance(s, str) or not 1 <= len(s) <= 64 for s in named):
        raise _bad(where, 'each slot is an identity, "@floor" or null')
    if len(set(named)) != len(named):
        raise _bad(where, "someone is in two slots")
    return {"layout": spec.name, "slots": list(slots) + [None] * (spec.size - len(slots))}


def check_item(data: Any, index: int) -> dict[str, Any]:
    where = f"items[{index}]"
    known = {"title", "kind", "planned_s", "speakers", "preset", "clip", "limit_s"}
    if not isinstance(data, dict):
        raise _bad(where, "an item is an object with a title")
    if unknown := set(data) - known:
        raise _bad(where, f"unknown fields {sorted(unknown)}; an item has {sorted(known)}")
    title = data.get("title")
    if not isinstance(title, str) or not " ".join(title.split()) or len(title) > MAX_TITLE:
        raise _bad(where, f"the title is 1-{MAX_TITLE} characters")
    kind = data.get("kind", "speech")
    if kind not in KINDS:
        raise _bad(where, f"kind {str(kind)[:40]!r} is not one of {', '.join(KINDS)}")
    planned = data.get("planned_s", 0)
    if isinstance(planned, bool) or not isinstance(planned, int | float) or not 0 <= planned <= MAX_PLANNED_S:
        raise _bad(where, f"planned_s is a number of seconds from 0 to {MAX_PLANNED_S}")
    speakers = data.get("speakers", [])
    if (
        not isinstance(speakers, list)
        or len(speakers) > MAX_SPEAKERS
        or any(not isinstance(s, str) or not 1 <= len(s) <= 64 for s in speakers)
    ):
        raise _bad(where, f"speakers is a list of at most {MAX_SPEAKERS} identities")
    preset = data.get("preset")
    clip = data.get("clip")
    if clip is not None and (not isinstance(clip, str | int) or isinstance(clip, bool)):
        raise _bad(where, "clip is a clip id")
    if clip is not None and not 1 <= len(str(clip)) <= MAX_CLIP_ID:
        raise _bad(where, f"clip ids are 1-{MAX_CLIP_ID} characters")
    limit = data.get("limit_s")
    try:
        limit = speaking.check_limit(limit, "limit_s")
    except CommandError as exc:
        raise _bad(where, exc.message) from None
    return {
        "title": " ".join(title.split()),
        "kind": kind,
        "planned_s": planned,
        "speakers": list(dict.fromkeys(speakers)),
        "preset": None if preset is None else check_preset(preset, f"{where}.preset"),
        "clip": None if clip is None else str(clip),
        # The speaking limit of floor grants during this item (conference.speaking); absent: the room's.
        **({} if limit is None else {"limit_s": limit}),
    }


def resolve(state: RoomState, preset: dict[str, Any]) -> dict[str, Any]:
    """The program a preset makes now: ``@floor`` is the floor holder, and anyone not in the room
    (or already in an earlier slot) leaves an empty slot."""
    slots: list[str | None] = []
    for slot in preset["slots"]:
        who = state.floor if slot == FLOOR else slot
        slots.append(who if who in state.participants and who not in slots else None)
    return {"layout": preset["layout"], "slots": slots}


# --- the agenda ----------------------------------------------------------------------------


def set_agenda(state: RoomState, items: list[Any], by: str | None = None) -> list[Event]:
    """Replace the agenda (before or during the meeting). The current item keeps its place in
    the order; an agenda now too short for it has none current."""
    if not isinstance(items, list) or len(items) > MAX_ITEMS:
        raise CommandError("bad_request", f"items is a list of at most {MAX_ITEMS} agenda items")
    checked = [check_item(item, i) for i, item in enumerate(items)]
    current = (
        state.agenda_index if state.agenda_index is not None and state.agenda_index < len(checked) else None
    )
    event: Event = {"kind": "agenda", "items": checked, "current": current, "by": by}
    return reducer.apply_all(state, [event])


def goto_item(
    state: RoomState, index: int, take: bool = False, now: float | None = None, by: str | None = None
) -> list[Event]:
    """Make item ``index`` (from 0) current; with ``take``, its preset goes on the program now."""
    if not state.agenda:
        raise CommandError("conflict", "the room has no agenda")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(state.agenda):
        raise CommandError("not_found", f"no agenda item {index!r}: the agenda has {len(state.agenda)} items")
    item = state.agenda[index]
    program = None if item.get("preset") is None else resolve(state, item["preset"])
    event: Event = {
        "kind": "agenda_item",
        "index": index,
        "title": item["title"],
        "clip": item.get("clip"),
        "started_at": time.time() if now is None else now,
        # The console stages it as the next program (it resolves the preset again when taken).
        "next_program": program,
        "by": by,
    }
    events = reducer.apply_all(state, [event])
    if take and program is not None:
        events += set_program(state, program["layout"], program["slots"], by=by)
    return events


def next_item(
    state: RoomState, take: bool = False, now: float | None = None, by: str | None = None
) -> list[Event]:
    if not state.agenda:
        raise CommandError("conflict", "the room has no agenda")
    index = 0 if state.agenda_index is None else state.agenda_index + 1
    if index >= len(state.agenda):
        raise CommandError("conflict", "the last agenda item is already current")
    return goto_item(state, index, take, now, by)


# --- program presets ------------------------------------------------------------------------


def save_preset(state: RoomState, name: str, preset: Any, by: str | None = None) -> list[Event]:
    name = " ".join(str(name).split())
    if not 1 <= len(name) <= MAX_PRESET_NAME:
        raise CommandError("bad_request", f"a preset's name is 1-{MAX_PRESET_NAME} characters")
    checked = check_preset(preset, f"preset {name!r}")
    if name not in state.presets and len(state.presets) >= MAX_PRESETS:
        raise CommandError("conflict", f"the room has {MAX_PRESETS} presets: delete one first")
    return reducer.apply_all(state, [{"kind": "preset", "name": name, "preset": checked, "by": by}])


def delete_preset(state: RoomState, name: str, by: str | None = None) -> list[Event]:
    if name not in state.presets:
        raise CommandError("not_found", f"no preset {name!r} in room {state.room!r}")
    return reducer.apply_all(state, [{"kind": "preset", "name": name, "preset": None, "by": by}])


def agenda_json(state: RoomState) -> dict[str, Any]:
    """``GET /api/rooms/{room}/agenda``: the items, the current one, the presets."""
    return {
        "items": [copy_item(item) for item in state.agenda],
        "current": state.agenda_index,
        "started_at": state.agenda_started_at,
        "presets": {n: copy_preset(p) for n, p in state.presets.items()},
    }
