"""Speaking-time figures counted from constructed timelines: the events are made by the room's own
commands (conference.room), stamped with times as the recorder stamps them, then counted."""

from __future__ import annotations

import csv
import io
from typing import Any

import openpyxl
import pytest
from recording_script import Script, Speaker, write_meeting

from conference import agenda
from conference import room as model
from conference import roster as rosters
from conference.roles import Role
from recorder.archive import Recording, recording_dir
from recorder.speaking_levels import CACHE_NAME, speaking_time
from recorder.speaking_sheets import to_csv, to_xlsx
from recorder.speaking_time import (
    Span,
    figures,
    union,
    voiced_from_loudness,
    voiced_from_speakers,
    walk,
)

T0 = 1_800_000_000.0


class Timeline:
    """A room and the timeline a recording of it would hold, starting at T0."""

    def __init__(self, *people: tuple[str, str, Role]) -> None:
        self.state = model.RoomState(room="assembly")
        for identity, name, role in people:
            model.join(self.state, model.Participant(identity, name, role, publish_audio=True), now=T0)
        self.entries: list[dict[str, Any]] = [{"kind": "snapshot", "at": T0, "state": self.state.to_json()}]

    def at(self, t: float, events: list[dict[str, Any]]) -> None:
        self.entries += [{**e, "at": T0 + t} for e in events]

    def person(self, fig: dict[str, Any], identity: str) -> dict[str, Any]:
        return next(p for p in fig["by_person"] if p["identity"] == identity)


def meeting() -> Timeline:
    return Timeline(
        ("chair", "Chair", Role.CHAIR),
        ("wang", "王委员", Role.MEMBER),
        ("edu", "Education Bureau", Role.VENUE),
        ("clerk", "Clerk", Role.CLERK),
    )


def test_grants_releases_and_revokes_count_floor_time_and_turns() -> None:
    tl = meeting()
    s = tl.state
    tl.at(10, model.grant_floor(s, "wang", by="chair"))
    tl.at(40, model.revoke_floor(s, by="chair"))
    tl.at(50, model.grant_floor(s, "edu", by="chair"))
    tl.at(70, model.grant_floor(s, "wang", by="chair"))  # straight to another speaker
    tl.at(75, model.release_floor(s, "wang"))
    fig = figures(walk(tl.entries, T0, T0 + 100), {})
    assert tl.person(fig, "wang")["floor_s"] == 35.0 and tl.person(fig, "wang")["turns"] == 2
    assert tl.person(fig, "edu")["floor_s"] == 20.0 and tl.person(fig, "edu")["turns"] == 1
    assert tl.person(fig, "chair")["floor_s"] == 0.0
    assert "clerk" not in {p["identity"] for p in fig["by_person"]}  # a clerk never speaks
    assert [p["identity"] for p in fig["by_person"]][:2] == ["wang", "edu"]  # longest first
    assert fig["total"] == {"duration_s": 100.0, "floor_s": 55.0, "voiced_s": 0.0}
    # No sector known (no roster yet): everyone counts under the unknown sector.
    assert fig["by_sector"] == [{"sector": None, "floor_s": 55.0, "voiced_s": 0.0, "people": 3}]


def test_a_speaker_who_leaves_holding_the_floor_stops_counting() -> None:
    tl = meeting()
    tl.at(5, model.grant_floor(tl.state, "edu"))
    tl.at(25, model.leave(tl.state, "edu"))
    left_only = [e for e in tl.entries if e["kind"] != "floor" or e["floor"] == "edu"]
    for entries in (tl.entries, left_only):  # also when no floor event follows the departure
        fig = figures(walk(entries, T0, T0 + 60), {})
        assert tl.person(fig, "edu")["floor_s"] == 20.0
        assert fig["total"]["floor_s"] == 20.0


def test_a_recording_that_stops_while_someone_speaks_counts_to_its_end() -> None:
    tl = meeting()
    tl.at(30, model.grant_floor(tl.state, "wang"))
    fig = figures(walk(tl.entries, T0, T0 + 42.5), {})
    assert tl.person(fig, "wang")["floor_s"] == 12.5


def test_the_floor_held_when_recording_starts_counts_from_the_start() -> None:
    tl = meeting()
    model.grant_floor(tl.state, "wang")
    tl.entries = [{"kind": "snapshot", "at": T0, "state": tl.state.to_json()}]
    tl.at(8, model.revoke_floor(tl.state))
    fig = figures(walk(tl.entries, T0, T0 + 20), {})
    assert tl.person(fig, "wang")["floor_s"] == 8.0


def test_overlapping_voiced_intervals_count_once_per_person_and_per_group() -> None:
    tl = meeting()
    voiced = {
        # Two tracks of one person (a rejoin) overlapping: 10..30 and 25..40 -> 30 s.
        "wang": [Span(T0 + 10, T0 + 30), Span(T0 + 25, T0 + 40)],
        # Someone talking over them: 35..45 -> 10 s, 5 of them together with wang.
        "edu": [Span(T0 + 35, T0 + 45)],
    }
    fig = figures(walk(tl.entries, T0, T0 + 60), voiced)
    assert tl.person(fig, "wang")["voiced_s"] == 30.0
    assert tl.person(fig, "edu")["voiced_s"] == 10.0
    # Someone was heard 10..45: the union, not the sum (40).
    assert fig["total"]["voiced_s"] == 35.0
    assert fig["by_sector"][0]["voiced_s"] == 35.0
    # Voiced time outside the recording is not counted.
    fig = figures(walk(tl.entries, T0, T0 + 20), voiced)
    assert tl.person(fig, "wang")["voiced_s"] == 10.0


def test_a_film_played_into_the_meeting_is_nobodys_speaking_time() -> None:
    tl = meeting()
    film = model.Participant("clip", "试点区短片", Role.VENUE, device="clip", publish_audio=True)
    tl.at(5, model.join(tl.state, film, now=T0 + 5))
    fig = figures(
        walk(tl.entries, T0, T0 + 60), {"clip": [Span(T0 + 5, T0 + 50)], "wang": [Span(T0, T0 + 3)]}
    )
    assert "clip" not in {p["identity"] for p in fig["by_person"]}
    assert fig["total"]["voiced_s"] == 3.0
    assert sum(g["people"] for g in fig["by_sector"]) == 3  # chair, wang, edu


def test_union_merges_overlaps_and_touching_spans() -> None:
    merged = union([Span(5, 7), Span(0, 2), Span(2, 3), Span(6, 9), Span(4, 4)])
    assert [(s.start, s.end) for s in merged] == [(0, 3), (5, 9)]


def tone(start: float, end: float, loud: float = 97.0, step: float = 0.02) -> list[tuple[float, float]]:
    """Audio-level samples every 20 ms: ``loud`` (127 - level) from start to end, silence around."""
    out = []
    t = 0.0
    while t < end + 5:
        out.append((T0 + t, loud if start <= t < end else 0.0))
        t += step
    return out


def test_voiced_time_follows_the_voice_within_a_tick_or_two() -> None:
    spans = voiced_from_loudness(tone(2.0, 12.0))
    assert len(spans) == 1
    assert spans[0].start - T0 == pytest.approx(2.0, abs=0.45)
    assert spans[0].end - T0 == pytest.approx(12.0, abs=0.45)


def test_short_pauses_are_bridged_and_long_ones_split_the_voice() -> None:
    samples = [(t, 0.0 if 5.0 <= t - T0 < 5.5 or 8.0 <= t - T0 < 11.0 else v) for t, v in tone(1.0, 14.0)]
    spans = voiced_from_loudness(samples)
    assert [(round(s.start - T0), round(s.end - T0)) for s in spans] == [(1, 8), (11, 14)]


def test_a_quiet_microphone_is_never_voiced() -> None:
    assert voiced_from_loudness(tone(1.0, 10.0, loud=127 - 70)) == []  # -70 dBov: background noise
    assert voiced_from_loudness([]) == []


def test_voiced_time_from_the_servers_speaker_announcements() -> None:
    entries = [
        {"kind": "speakers", "at": T0 + 1, "speakers": ["wang"]},
        {"kind": "speakers", "at": T0 + 4, "speakers": ["edu", "wang"]},
        {"kind": "speakers", "at": T0 + 6, "speakers": ["edu"]},
    ]
    spans = voiced_from_speakers(entries, T0 + 10)
    assert [(s.start - T0, s.end - T0) for s in spans["wang"]] == [(1, 6)]
    assert [(s.start - T0, s.end - T0) for s in spans["edu"]] == [(4, 10)]


def test_by_sector_organisation_and_agenda_item_from_the_running_order() -> None:
    """The roster (sector, kind, organisation) and the agenda items through the room's reducer; an
    item the chair comes back to adds up; time before the first item is listed when someone spoke."""
    tl = meeting()
    s = tl.state
    roster = rosters.parse_csv(
        "identity,name,role,kind,sector,organisation\n"
        "wang,王委员,member,member,教育界,第一中学\n"
        "edu,教育局,venue,department,,市教育局\n"
        "li,李委员,member,member,教育界,第二中学\n".encode()
    )
    tl.at(0, rosters.set_roster(s, roster))
    tl.at(
        0, agenda.set_agenda(s, [{"title": "近视防控"}, {"title": "部门答复", "kind": "department_answers"}])
    )
    model.join(s, model.Participant("li", "李委员", Role.MEMBER, publish_audio=True), now=T0 + 1)
    tl.entries.append(
        {"kind": "participant_joined", "at": T0 + 1, "participant": s.participants["li"].to_json()}
    )
    tl.at(2, model.grant_floor(s, "wang"))  # before the first item
    tl.at(5, agenda.next_item(s, now=T0 + 5))
    tl.at(15, model.grant_floor(s, "li"))
    tl.at(20, agenda.next_item(s, now=T0 + 20))
    tl.at(20, model.grant_floor(s, "edu"))
    tl.at(30, agenda.goto_item(s, 0, now=T0 + 30))
    tl.at(30, model.grant_floor(s, "wang"))
    tl.at(34, model.revoke_floor(s))
    voiced = {"wang": [Span(T0 + 3, T0 + 12)], "li": [Span(T0 + 10, T0 + 18)]}
    fig = figures(walk(tl.entries, T0, T0 + 40), voiced)

    wang = tl.person(fig, "wang")
    assert (wang["sector"], wang["kind"], wang["organisation"]) == ("教育界", "member", "第一中学")
    assert wang["floor_s"] == 13.0 + 4.0 and wang["turns"] == 2
    sectors = {g["sector"]: g for g in fig["by_sector"]}
    assert sectors["教育界"] == {"sector": "教育界", "floor_s": 22.0, "voiced_s": 15.0, "people": 2}  # 3..18
    assert sectors[None]["floor_s"] == 10.0 and sectors[None]["people"] == 2  # edu and the chair
    assert [g["sector"] for g in fig["by_sector"]] == ["教育界", None]  # unknown last
    assert {g["organisation"]: g["floor_s"] for g in fig["by_organisation"]}["市教育局"] == 10.0
    assert {g["kind"]: g["floor_s"] for g in fig["by_kind"]}["department"] == 10.0

    items = {i["index"]: i for i in fig["by_item"]}
    assert [i["index"] for i in fig["by_item"]] == [0, 1, None]
    assert items[0]["title"] == "近视防控" and items[0]["duration_s"] == 15.0 + 10.0
    assert items[0]["floor_s"] == 10.0 + 5.0 + 4.0  # wang 5..15, li 15..20, wang again 30..34
    assert items[0]["voiced_s"] == 13.0  # 5..18, wang and li overlapping once
    assert {p["identity"]: p["floor_s"] for p in items[0]["by_person"]} == {"wang": 14.0, "li": 5.0}
    assert items[1]["floor_s"] == 10.0 and items[1]["by_person"] == [
        {"identity": "edu", "floor_s": 10.0, "voiced_s": 0.0}
    ]
    assert items[None]["floor_s"] == 3.0 and items[None]["voiced_s"] == 2.0  # 2..5, voiced 3..5


def test_the_csv_and_the_workbook_carry_the_same_numbers() -> None:
    tl = meeting()
    tl.at(10, model.grant_floor(tl.state, "wang"))
    tl.at(22.25, model.grant_floor(tl.state, "edu"))
    fig = figures(walk(tl.entries, T0, T0 + 30), {"edu": [Span(T0 + 23, T0 + 29)]})
    rows = list(csv.DictReader(io.StringIO(to_csv(fig).lstrip("\ufeff"))))
    people = {r["identity"]: r for r in rows if r["table"] == "person"}
    assert float(people["wang"]["floor_s"]) == pytest.approx(12.25, abs=0.06)
    assert float(people["edu"]["floor_s"]) == pytest.approx(7.8, abs=0.05)
    assert float(people["edu"]["voiced_s"]) == 6.0
    assert people["wang"]["name"] == "王委员"
    assert next(r for r in rows if r["table"] == "sector")["sector"] == ""  # unknown
    total = next(r for r in rows if r["table"] == "total")
    assert float(total["floor_s"]) == fig["total"]["floor_s"] == 20.0

    book = openpyxl.load_workbook(io.BytesIO(to_xlsx(fig, "en")))
    sheet = book["By person"]
    header = [c.value for c in sheet[1]]
    cells = {r[0]: dict(zip(header, r, strict=True)) for r in sheet.iter_rows(min_row=2, values_only=True)}
    for identity, row in people.items():
        assert cells[identity]["Floor time (s)"] == float(row["floor_s"])
        assert cells[identity]["Voiced time (s)"] == float(row["voiced_s"])
    assert book.sheetnames == ["By person", "By sector", "By organisation", "By kind", "By agenda item"]
    assert openpyxl.load_workbook(io.BytesIO(to_xlsx(fig))).sheetnames[0] == "按人员"


def test_voiced_time_measured_from_opus_without_level_extension(tmp_path: Any) -> None:
    """A recording whose audio carries no RFC 6464 level (a SIP gateway, GStreamer): the level is
    measured from the decoded Opus. The figures are cached next to the recording once counted."""
    script = Script(
        [
            Speaker("a", "Alice", (255, 0, 0), 440.0, role="chair", video=False),
            Speaker("b", "Bob", (0, 255, 0), 660.0, video=False, joins_at=1.0, leaves_at=4.0),
            Speaker("c", "Carol", (0, 0, 255), None, video=False),
        ],
        duration=5.0,
        floors=[(1.5, "b"), (3.0, None)],
    )
    write_meeting(tmp_path, "assembly-1", script, started_at=T0)
    recording = Recording(recording_dir(tmp_path, "assembly-1"))
    assert not recording.tracks[0].extensions  # no audio-level extension in this archive
    fig = speaking_time(recording)
    people = {p["identity"]: p for p in fig["by_person"]}
    assert people["b"]["floor_s"] == 1.5
    assert people["a"]["voiced_s"] == pytest.approx(5.0, abs=0.6)
    assert people["b"]["voiced_s"] == pytest.approx(3.0, abs=0.6)
    assert "c" not in people  # no microphone and never the floor: no speaker
    cache = recording.directory / CACHE_NAME
    assert cache.is_file()
    assert oct(cache.stat().st_mode & 0o777) == "0o640"
    # A second count reads the cache (the audio is not read again): the same figures.
    (recording.directory / "tracks" / f"{recording.tracks[0].number}.rtp").write_bytes(b"")
    assert speaking_time(Recording(recording.directory)) == fig
