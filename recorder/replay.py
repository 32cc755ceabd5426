"""Replaying a recording's timeline: the meeting as it was at any moment (``MeetingState``, on the
room's own reducer), walked forward in time (``TimelineCursor``), and the chapters of a render."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from conference import events
from conference.layouts import LAYOUTS
from conference.room import Participant, Program, RoomState

from . import titles
from .archive import Recording

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Person:
    identity: str
    name: str
    role: str
    order: int
    publish_video: bool = True
    publish_audio: bool = True


@dataclass(slots=True)
class Chapter:
    at: float  # seconds from the start of the render
    title: str


class MeetingState:
    """The room as the timeline describes it at one moment; entries are applied in order with the
    room's own reducer (``conference.events.apply``), so a replay follows the same rules (join,
    mute, floor, program) as the live room. People who left keep their name for the captions."""

    def __init__(self) -> None:
        self.room = RoomState(room="")
        self.people: dict[str, Person] = {}
        self.speakers: list[str] = []

    @property
    def present(self) -> dict[str, Participant]:
        return self.room.participants

    @property
    def layout(self) -> str:
        return self.room.program.layout

    @property
    def slots(self) -> list[str | None]:
        return self.room.program.slots

    @property
    def floor(self) -> str | None:
        return self.room.floor

    def name(self, identity: str) -> str:
        person = self.people.get(identity)
        return person.name if person and person.name else identity

    def apply(self, e: dict[str, Any]) -> None:
        kind = e.get("kind")
        if kind == "speakers":
            self.speakers = [str(s) for s in e.get("speakers") or []]
            return
        if kind == "program" and str((e.get("program") or {}).get("layout")) not in LAYOUTS:
            log.warning("timeline names unknown layout %r; kept the previous one", e["program"].get("layout"))
            return
        try:
            if kind == "snapshot":
                self.room = _snapshot(e.get("state") or {})
            else:
                events.apply(self.room, e)
        except (KeyError, TypeError, ValueError, AttributeError):
            # An entry an older or damaged timeline wrote differently: the rest still renders.
            log.warning("timeline entry %r could not be applied; skipped", kind)
            return
        for identity, p in self.room.participants.items():
            person = self.people.get(identity)
            if person is None:
                person = self.people[identity] = Person(
                    identity, p.name or identity, str(p.role), len(self.people)
                )
            person.name = p.name or person.name
            person.role = str(p.role)
            person.publish_video, person.publish_audio = p.publish_video, p.publish_audio

    def audible(self, identity: str) -> bool:
        p = self.room.participants.get(identity)
        return p is not None and not p.muted and not p.self_muted

    def publishers(self) -> list[str]:
        """Present participants who send media (not clerks or viewers), in order of arrival."""
        ids = [
            i
            for i in self.present
            if self.people[i].role not in ("clerk", "viewer")
            and (self.people[i].publish_video or self.people[i].publish_audio)
        ]
        return sorted(ids, key=lambda i: self.people[i].order)


def _snapshot(data: dict[str, Any]) -> RoomState:
    """The room at the recording's start; a snapshot an older server wrote may lack fields."""
    try:
        state = RoomState.from_json(data)
    except (KeyError, TypeError, ValueError):
        state = RoomState(room=str(data.get("room", "")))
        for p in data.get("participants", []):
            with contextlib.suppress(KeyError, TypeError, ValueError):
                participant = Participant.from_json(p)
                state.participants[participant.identity] = participant
        program = data.get("program") or {}
        if program.get("layout") in LAYOUTS:
            state.program = Program(str(program["layout"]), list(program.get("slots") or [None]))
        state.floor = data.get("floor")
    if state.program.layout not in LAYOUTS:
        state.program = Program()
    return state


class TimelineCursor:
    """Walks the timeline forward, keeping a MeetingState current."""

    def __init__(self, entries: list[dict[str, Any]]) -> None:
        self._entries = entries
        self._next = 0
        self.state = MeetingState()

    def advance(self, until: float) -> bool:
        """Apply entries up to ``until``; True if any changed the state."""
        changed = False
        while self._next < len(self._entries) and self._entries[self._next]["at"] <= until:
            self.state.apply(self._entries[self._next])
            self._next += 1
            changed = True
        return changed


def chapters_of(recording: Recording, t0: float, t1: float, language: str | None = None) -> list[Chapter]:
    """A chapter for every agenda item, program change, floor grant and answered comment (named
    after who answered it) between ``t0`` and ``t1``, titled in ``language`` (default: the
    recording's, recorder/titles.py) with display names. An item taken with its preset at once is
    one chapter, the item's."""
    cursor = TimelineCursor(recording.timeline)
    chapters: list[Chapter] = []
    item_at: float | None = None
    language = language or titles.recording_language(recording.meta)

    def program_title(state: MeetingState) -> str:
        return titles.program_title(state.layout, [state.name(s) for s in state.slots if s], language)

    cursor.advance(t0)
    chapters.append(Chapter(0.0, program_title(cursor.state)))
    for e in recording.timeline:
        at = float(e["at"])
        if at <= t0 or at >= t1:
            continue
        cursor.advance(at)
        if e.get("kind") == "agenda_item":
            title = titles.item_title(int(e.get("index", 0)), str(e.get("title", "")), language)
            item_at = at
        elif e.get("kind") == "program":
            if item_at is not None and abs(item_at - at) < 1e-3:
                continue  # the item's own take: its chapter is the item's
            title = program_title(cursor.state)
        elif e.get("kind") == "floor" and e.get("floor"):
            title = titles.floor_title(cursor.state.name(str(e["floor"])), language)
        elif e.get("kind") == "comment_answered" and e.get("by"):
            title = titles.answered_title(str(e["by"]), language)
        else:
            continue
        if chapters and abs(chapters[-1].at - (at - t0)) < 1e-3:
            chapters[-1] = Chapter(at - t0, title)
        else:
            chapters.append(Chapter(at - t0, title))
    return chapters
