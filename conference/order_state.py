"""The running order's part of the room state as plain data (the roster, the agenda, the program
presets): how ``RoomState`` copies it to and from JSON. Kept apart from ``conference.room`` and
from the commands (``conference.roster``, ``conference.agenda``), which import the room."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .room import RoomState


def copy_preset(preset: dict[str, Any]) -> dict[str, Any]:
    return {"layout": preset["layout"], "slots": list(preset["slots"])}


def copy_item(item: dict[str, Any]) -> dict[str, Any]:
    out = dict(item)
    out["speakers"] = list(item.get("speakers") or [])
    if item.get("preset") is not None:
        out["preset"] = copy_preset(item["preset"])
    return out


def running_order_json(state: RoomState) -> dict[str, Any]:
    # The roster goes out as a list (its CSV's order: dicts keep insertion order). Its entries are
    # never changed in place (an import replaces them all), so copies of the room share them: a
    # store copies the room on every change, and copying 1,000 entries cost ~1 ms each time.
    return {
        "roster": list(state.roster.values()),
        "allow_guests": state.allow_guests,
        "agenda": [copy_item(item) for item in state.agenda],
        "agenda_index": state.agenda_index,
        "agenda_started_at": state.agenda_started_at,
        "presets": {n: copy_preset(p) for n, p in state.presets.items()},
    }
