"""Speaking-time figures: how long each person, sector, organisation and agenda item spoke.

Two measures, side by side:

- **floor time**: from the room's ``floor`` events (a grant starts a span; a revoke, a release,
  a grant to someone else, the holder leaving or the recording's end closes it). The timeline is
  replayed with the room's own reducer (``recorder.replay.MeetingState``), so a replay follows the
  live room's rules.
- **voiced time**: when a person's microphone carried a voice, whether or not they had the floor.
  ``voiced_from_loudness`` runs the server's own speaker detection (``conference.policy``: 200 ms
  ticks, the same thresholds and hysteresis) over a series of audio levels (``recorder.speaking_levels``
  reads them from the recorded audio), or ``voiced_from_speakers`` takes the server's ``speakers``
  announcements in the timeline (the live figures; capped at four voices at once).

Overlaps: two voices at once each count for their person; a sector's, an organisation's, an item's
and the total voiced time count the time *someone* of it was heard (the union), so two members of
one sector talking together count once. Floor time never overlaps (one floor).

Who someone is (kind, sector, organisation) comes from the room: the participant as it joined
(its invitation's token) or the room's roster; a person with no sector counts under ``None``
("unknown sector"). Agenda items come from the room's agenda events through the same reducer.
Pure code: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from conference import policy

from .replay import MeetingState

# Roles that never speak in a meeting: left out of the figures unless they held the floor or were
# heard (as is anyone who never sent audio, e.g. the chair's console).
SILENT_ROLES = ("clerk", "viewer")
ROUND = 1  # seconds are given to a tenth
# Timeline entries the recorder writes about media: they change neither the floor nor who is who.
MEDIA_ENTRIES = frozenset({"speakers", "track", "track_end", "recording_end"})


@dataclass(slots=True)
class PersonInfo:
    identity: str
    name: str = ""
    role: str = ""
    kind: str = ""
    sector: str = ""
    organisation: str = ""
    audio: bool = False  # sent audio at some point (a console that never does is no speaker)
    device: str = ""


@dataclass(slots=True)
class Span:
    start: float
    end: float


@dataclass(slots=True)
class ItemSpan:
    index: int | None  # None: outside any agenda item (before the first, or no agenda)
    title: str
    start: float
    end: float


@dataclass(slots=True)
class Walk:
    """What the timeline says between ``start`` and ``end``: who held the floor when, which agenda
    item ran when, and who everyone was."""

    start: float
    end: float
    people: dict[str, PersonInfo] = field(default_factory=dict)
    floor: dict[str, list[Span]] = field(default_factory=dict)
    turns: dict[str, int] = field(default_factory=dict)
    items: list[ItemSpan] = field(default_factory=list)


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _current_item(state: MeetingState) -> tuple[int | None, str]:
    # The agenda's fields exist once the running order is part of the room (conference.agenda).
    room = state.room
    index = getattr(room, "agenda_index", None)
    agenda = getattr(room, "agenda", None) or []
    if not isinstance(index, int) or not 0 <= index < len(agenda):
        return None, ""
    item = agenda[index]
    return index, _text(item.get("title")) if isinstance(item, Mapping) else ""


def _learn_people(state: MeetingState, people: dict[str, PersonInfo]) -> None:
    """Names, roles, kinds, sectors and organisations as the room knows them now; what the roster
    says fills what the participant itself does not carry, and nothing known is forgotten."""
    roster = getattr(state.room, "roster", None) or {}
    for identity, entry in roster.items() if isinstance(roster, Mapping) else ():
        if isinstance(entry, Mapping):
            info = people.setdefault(identity, PersonInfo(identity))
            for name in ("name", "kind", "sector", "organisation"):
                if not getattr(info, name):
                    setattr(info, name, _text(entry.get(name)))
            info.role = info.role or _text(entry.get("role"))
    for identity, p in state.present.items():
        info = people.setdefault(identity, PersonInfo(identity))
        info.name = p.name or info.name or identity
        info.role = str(p.role)
        info.audio = info.audio or p.publish_audio
        info.device = str(p.device)
        for name in ("kind", "sector", "organisation"):
            value = _text(getattr(p, name, ""))
            if value:
                setattr(info, name, value)


def walk(entries: Iterable[Mapping[str, Any]], start: float, end: float) -> Walk:
    """Replay a timeline (sorted by ``at``) and cut floor and agenda spans to [start, end]."""
    state = MeetingState()
    result = Walk(start, end)
    holder: str | None = None
    since = start
    item: tuple[int | None, str] = (None, "")
    item_since = start

    def close_floor(at: float) -> None:
        if holder is not None and at > since:
            result.floor.setdefault(holder, []).append(Span(since, at))

    def close_item(at: float) -> None:
        if at > item_since:
            result.items.append(ItemSpan(item[0], item[1], item_since, at))

    for entry in entries:
        at = float(entry.get("at") or 0.0)
        if at > end:
            break
        if entry.get("kind") in MEDIA_ENTRIES:
            continue  # the recorder's own entries: nothing of the room changes
        state.apply(dict(entry))
        _learn_people(state, result.people)
        now = max(at, start)
        # The holder who left keeps no floor, even before the room's own floor event follows.
        current = state.floor if state.floor in state.present else None
        if current != holder:
            close_floor(now)
            holder, since = current, now
            if holder is not None:
                result.turns[holder] = result.turns.get(holder, 0) + 1
        new_item = _current_item(state)
        if new_item != item:
            close_item(now)
            item, item_since = new_item, now
    close_floor(end)
    close_item(end)
    return result


# --- voiced time ---------------------------------------------------------------------------------


def voiced_from_loudness(samples: Iterable[tuple[float, float]], tick: float = policy.TICK) -> list[Span]:
    """When one microphone carried a voice, from ``(time, loudness)`` samples in time order
    (loudness = 127 - the RFC 6464 level: 0 silence .. 127 loudest), with the server's speaker
    detection: the samples are averaged per tick and fed to ``policy.update_voice``. A span ends
    where the voice fell quiet (not when the detector's hold runs out), so pauses shorter than the
    hold are bridged and the hold itself is not counted."""
    spans: list[Span] = []
    voice = policy.Voice("")
    tick_start: float | None = None
    total = 0.0
    count = 0
    opened: float | None = None

    def step(at: float, loudness: float) -> None:
        nonlocal opened
        was = voice.speaking
        policy.update_voice(voice, loudness, at)
        if voice.speaking and not was:
            opened = at
        elif was and not voice.speaking and opened is not None:
            spans.append(Span(opened, max(opened, voice.quiet_since or at)))
            opened = None

    for at, loudness in samples:
        if tick_start is None:
            tick_start = at
        while at >= tick_start + tick:
            # A tick without samples (DTX, silence, a muted microphone) is loudness 0.
            step(tick_start, total / count if count else 0.0)
            total, count = 0.0, 0
            tick_start += tick
        total += loudness
        count += 1
    if tick_start is not None:
        step(tick_start, total / count if count else 0.0)
        last = tick_start + tick
        while voice.speaking:
            last += tick
            step(last, 0.0)
    return spans


def voiced_from_speakers(entries: Iterable[Mapping[str, Any]], end: float) -> dict[str, list[Span]]:
    """Voiced spans from the server's ``speakers`` announcements (who was speaking, loudest first)."""
    spans: dict[str, list[Span]] = {}
    since: dict[str, float] = {}
    for entry in entries:
        if entry.get("kind") != "speakers":
            continue
        at = float(entry.get("at") or 0.0)
        now = {str(s) for s in entry.get("speakers") or []}
        for identity in list(since):
            if identity not in now:
                spans.setdefault(identity, []).append(Span(since.pop(identity), at))
        for identity in now:
            since.setdefault(identity, at)
    for identity, at in since.items():
        spans.setdefault(identity, []).append(Span(at, max(at, end)))
    return spans


def union(spans: Iterable[Span]) -> list[Span]:
    """Overlapping or touching spans merged, in time order."""
    merged: list[Span] = []
    for s in sorted(spans, key=lambda s: s.start):
        if s.end <= s.start:
            continue
        if merged and s.start <= merged[-1].end:
            merged[-1].end = max(merged[-1].end, s.end)
        else:
            merged.append(Span(s.start, s.end))
    return merged


def clip(spans: Iterable[Span], start: float, end: float) -> list[Span]:
    return [Span(max(s.start, start), min(s.end, end)) for s in spans if s.end > start and s.start < end]


def seconds(spans: Iterable[Span]) -> float:
    return sum((s.end - s.start for s in spans), 0.0)


# --- the figures ---------------------------------------------------------------------------------


def _row(floor: list[Span], voiced: list[Span]) -> dict[str, float]:
    return {"floor_s": round(seconds(floor), ROUND), "voiced_s": round(seconds(union(voiced)), ROUND)}


def figures(result: Walk, voiced: Mapping[str, list[Span]]) -> dict[str, Any]:
    """The report: ``by_person``, ``by_sector``, ``by_organisation``, ``by_kind``, ``by_item`` and
    ``total``, seconds (docs/recordings.md). ``voiced`` is per identity, any overlaps allowed."""
    # A prepared film (the clip player, device "clip") is heard, but its sound is nobody's speech.
    films = {i for i, info in result.people.items() if info.device == "clip"}
    voiced = {i: union(clip(s, result.start, result.end)) for i, s in voiced.items() if i not in films}
    floor = {i: s for i, s in result.floor.items() if i not in films}
    people = {i: info for i, info in result.people.items() if i not in films}
    for identity in (*floor, *voiced):
        people.setdefault(identity, PersonInfo(identity, identity))
    counted = [
        info
        for info in people.values()
        if (info.audio and info.role not in SILENT_ROLES)
        or floor.get(info.identity)
        or voiced.get(info.identity)
    ]

    by_person = []
    for info in counted:
        spans_f, spans_v = floor.get(info.identity, []), voiced.get(info.identity, [])
        by_person.append(
            {
                "identity": info.identity,
                "name": info.name or info.identity,
                "role": info.role,
                "kind": info.kind or None,
                "sector": info.sector or None,
                "organisation": info.organisation or None,
                **_row(spans_f, spans_v),
                "turns": result.turns.get(info.identity, 0),
            }
        )
    by_person.sort(key=lambda r: (-r["floor_s"], -r["voiced_s"], r["name"]))

    def grouped(attribute: str) -> list[dict[str, Any]]:
        groups: dict[str | None, list[PersonInfo]] = {}
        for info in counted:
            groups.setdefault(getattr(info, attribute) or None, []).append(info)
        rows = []
        for key, members in groups.items():
            spans_f = [s for m in members for s in floor.get(m.identity, [])]
            spans_v = [s for m in members for s in voiced.get(m.identity, [])]
            rows.append({attribute: key, **_row(spans_f, spans_v), "people": len(members)})
        # Unknown last, then the longest first.
        rows.sort(key=lambda r: (r[attribute] is None, -r["floor_s"], -r["voiced_s"], r[attribute] or ""))
        return rows

    by_item = []
    for index, title, spans in _items(result.items):
        per_person = []
        for info in counted:
            spans_f = [c for s in spans for c in clip(floor.get(info.identity, []), s.start, s.end)]
            spans_v = [c for s in spans for c in clip(voiced.get(info.identity, []), s.start, s.end)]
            if spans_f or spans_v:
                per_person.append({"identity": info.identity, **_row(spans_f, spans_v)})
        per_person.sort(key=lambda r: (-r["floor_s"], -r["voiced_s"]))
        all_f = [c for s in spans for v in floor.values() for c in clip(v, s.start, s.end)]
        all_v = [c for s in spans for v in voiced.values() for c in clip(v, s.start, s.end)]
        if index is None and not all_f and not all_v:
            continue  # the time before the first item, or no agenda: listed only when someone spoke
        by_item.append(
            {
                "index": index,
                "title": title,
                "duration_s": round(seconds(spans), ROUND),
                **_row(all_f, all_v),
                "by_person": per_person,
            }
        )
    by_item.sort(key=lambda r: (r["index"] is None, r["index"] or 0))
    all_floor = [s for v in floor.values() for s in v]
    all_voiced = [s for v in voiced.values() for s in v]
    return {
        "by_person": by_person,
        "by_sector": grouped("sector"),
        "by_organisation": grouped("organisation"),
        "by_kind": grouped("kind"),
        "by_item": by_item,
        "total": {"duration_s": round(result.end - result.start, ROUND), **_row(all_floor, all_voiced)},
    }


def _items(items: list[ItemSpan]) -> list[tuple[int | None, str, list[Span]]]:
    """Each agenda item's spans (an item the chair came back to has several), in agenda order."""
    grouped: dict[int | None, tuple[str, list[Span]]] = {}
    for it in items:
        _, spans = grouped.setdefault(it.index, (it.title, []))
        spans.append(Span(it.start, it.end))
        if it.title:
            grouped[it.index] = (it.title, spans)
    keys = sorted(grouped, key=lambda k: (k is None, k or 0))
    return [(k, grouped[k][0], grouped[k][1]) for k in keys]
