"""The agenda and the program presets (conference/agenda.py) on the room state, through the one
reducer: advancing, jumping, editing during the meeting, presets naming someone absent."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_store import store  # noqa: F401  (the fixture: memory, SQLite, a real Redis)

from conference import agenda
from conference import room as r
from conference.roles import Role
from conference.room import CommandError, Participant, RoomState
from conference.sqlite_store import SqliteRoomStore
from conference.store import MemoryRoomStore
from recorder.archive import Recording, RecordingWriter, recording_dir
from recorder.replay import chapters_of

ITEMS = [
    {
        "title": "开幕",
        "kind": "speech",
        "planned_s": 300,
        "preset": {"layout": "single", "slots": ["hall-a"]},
    },
    {"title": "近视防控试点区短片", "kind": "film", "planned_s": 180, "clip": "clip-1"},
    {
        "title": "教育、卫生、体育部门答复",
        "kind": "department_answers",
        "planned_s": 1200,
        "speakers": ["hall-b", "hall-c"],
        "preset": {"layout": "grid-2x2", "slots": ["hall-b", "hall-c", "ghost", "@floor"]},
    },
]


def room() -> RoomState:
    state = RoomState(room="council")
    for identity, role in (
        ("chair", Role.CHAIR),
        ("hall-a", Role.VENUE),
        ("hall-b", Role.VENUE),
        ("hall-c", Role.VENUE),
    ):
        r.join(state, Participant(identity, identity, role))
    return state


def test_the_chair_advances_and_jumps_and_each_item_stages_its_preset() -> None:
    state = room()
    events = agenda.set_agenda(state, ITEMS, by="chair")
    assert events[0]["kind"] == "agenda" and events[0]["current"] is None
    assert state.agenda[1] == {**ITEMS[1], "speakers": [], "preset": None}
    assert state.agenda[2]["preset"]["slots"] == ["hall-b", "hall-c", "ghost", "@floor"]

    first = agenda.next_item(state, now=100.0, by="chair")
    assert [e["kind"] for e in first] == ["agenda_item"]  # staged, not taken
    assert first[0] == {**first[0], "index": 0, "title": "开幕", "started_at": 100.0}
    assert first[0]["next_program"] == {"layout": "single", "slots": ["hall-a"]}
    assert (state.agenda_index, state.agenda_started_at, state.program.slots) == (0, 100.0, [None])

    film = agenda.next_item(state, now=400.0)
    assert film[0]["next_program"] is None and film[0]["clip"] == "clip-1"
    # The department answers: "ghost" is not here and nobody has the floor: those slots stay empty
    # and the take goes through.
    answers = agenda.next_item(state, take=True, now=600.0)
    assert [e["kind"] for e in answers] == ["agenda_item", "program"]
    assert state.program.to_json() == {"layout": "grid-2x2", "slots": ["hall-b", "hall-c", None, None]}
    with pytest.raises(CommandError) as info:
        agenda.next_item(state)
    assert info.value.code == "conflict"

    r.grant_floor(state, "hall-a")
    agenda.goto_item(state, 2, take=True, now=700.0)  # "@floor": the speaker joins the program
    assert state.program.slots == ["hall-b", "hall-c", None, "hall-a"]
    agenda.goto_item(state, 0, now=800.0)
    assert state.agenda_index == 0
    for index in (3, -1, True):
        with pytest.raises(CommandError) as info:
            agenda.goto_item(state, index)  # type: ignore[arg-type]
        assert info.value.code == "not_found"


def test_editing_during_the_meeting_keeps_the_current_place_and_bad_items_change_nothing() -> None:
    state = room()
    agenda.set_agenda(state, ITEMS)
    agenda.goto_item(state, 2, now=5.0)
    agenda.set_agenda(state, [*ITEMS, {"title": "自由讨论", "kind": "open_discussion"}])
    assert state.agenda_index == 2 and len(state.agenda) == 4 and state.agenda_started_at == 5.0
    agenda.set_agenda(state, ITEMS[:1])  # the current item is gone: none is current
    assert state.agenda_index is None and state.agenda_started_at is None
    before = state.to_json()
    for items, words in [
        ([{"title": ""}], "items[0]: the title"),
        ([ITEMS[0], {"title": "x", "kind": "party"}], "items[1]: kind 'party'"),
        ([{"title": "x", "planned_s": -1}], "planned_s"),
        (
            [{"title": "x", "preset": {"layout": "single", "slots": ["a", "b"]}}],
            "items[0].preset: layout 'single' has 1",
        ),
        ([{"title": "x", "preset": {"layout": "grid-2x2", "slots": ["a", "a"]}}], "two slots"),
        ([{"title": "x", "colour": "red"}], "unknown fields ['colour']"),
        ([{"title": "x"}] * 101, "at most 100"),
    ]:
        with pytest.raises(CommandError) as info:
            agenda.set_agenda(state, items)
        assert words in info.value.message, info.value.message
    with pytest.raises(CommandError) as info:
        agenda.set_agenda(state, [{"title": "x", "preset": {"layout": "mosaic", "slots": []}}])
    assert info.value.code == "unknown_layout"
    assert state.to_json() == before


def test_presets_by_name_saved_replaced_deleted() -> None:
    state = room()
    agenda.save_preset(state, "两会场", {"layout": "side-by-side", "slots": ["hall-a", "hall-b"]})
    agenda.save_preset(state, "两会场", {"layout": "side-by-side", "slots": ["hall-b", "hall-a"]})
    agenda.save_preset(state, "发言人", {"layout": "single", "slots": ["@floor"]})
    assert state.presets == {
        "两会场": {"layout": "side-by-side", "slots": ["hall-b", "hall-a"]},
        "发言人": {"layout": "single", "slots": ["@floor"]},
    }
    assert agenda.resolve(state, state.presets["发言人"]) == {"layout": "single", "slots": [None]}
    agenda.delete_preset(state, "两会场")
    assert list(state.presets) == ["发言人"]
    with pytest.raises(CommandError):
        agenda.delete_preset(state, "两会场")
    with pytest.raises(CommandError):
        agenda.save_preset(state, " ", {"layout": "single"})
    for i in range(agenda.MAX_PRESETS - 1):
        agenda.save_preset(state, f"p{i}", {"layout": "single"})
    with pytest.raises(CommandError) as info:
        agenda.save_preset(state, "one too many", {"layout": "single"})
    assert info.value.code == "conflict"


async def test_through_the_store_a_failed_command_changes_nothing_and_versions_count() -> None:
    memory = MemoryRoomStore()
    await memory.create("council", max_endpoints=10)
    await memory.update("council", lambda s: agenda.set_agenda(s, ITEMS))
    state, events = await memory.update("council", lambda s: agenda.next_item(s, take=True))
    assert [e["version"] for e in events] == [2, 3] and state.program.slots == [None]  # nobody here yet
    with pytest.raises(CommandError):
        await memory.update("council", lambda s: agenda.goto_item(s, 9))
    assert (await memory.get("council")).version == 3


def test_the_recording_gets_a_chapter_per_item(tmp_path: Path) -> None:
    """A real archive (recorder/archive.py) of a meeting that goes through the agenda: each item is
    a chapter; an item taken with its preset at once is one chapter, the item's."""
    t0 = 1_700_000_000.0
    state = room()
    writer = RecordingWriter(recording_dir(tmp_path, "r1"), "r1", "council", started_at=t0)
    writer.add_entry({"kind": "snapshot", "at": t0, "state": state.to_json()})
    script = [
        (t0 + 1, lambda: agenda.set_agenda(state, ITEMS)),
        (t0 + 5, lambda: agenda.next_item(state, take=True, now=t0 + 5)),
        (t0 + 60, lambda: agenda.next_item(state, now=t0 + 60)),
        (t0 + 70, lambda: r.set_program(state, "side-by-side", ["hall-b", "hall-c"])),
        (t0 + 200, lambda: agenda.next_item(state, now=t0 + 200)),
    ]
    for at, command in script:
        for event in command():
            writer.add_entry({**event, "at": at})
    writer.close(stopped_at=t0 + 300)
    chapters = chapters_of(Recording.open(tmp_path, "r1"), t0, t0 + 300)
    assert [(c.at, c.title) for c in chapters] == [
        (0.0, "画面：单画面"),  # noqa: RUF001
        (5.0, "议程1：开幕"),  # noqa: RUF001
        (60.0, "议程2：近视防控试点区短片"),  # noqa: RUF001
        (70.0, "画面：左右并列（hall-b、hall-c）"),  # noqa: RUF001
        (200.0, "议程3：教育、卫生、体育部门答复"),  # noqa: RUF001
    ]
    assert chapters_of(Recording.open(tmp_path, "r1"), t0, t0 + 300, "en")[1].title == "Item 1: 开幕"


async def test_every_store_keeps_the_roster_agenda_and_presets(store, tmp_path: Path) -> None:  # noqa: F811
    """Every store keeps the running order as part of the room (SQLite: also after a restart)."""
    from conference import roster

    entries = [roster.RosterEntry("wang", "王委员", "member", "member", "教育界", "第一中学")]
    await store.create("council", max_endpoints=10)
    await store.update("council", lambda s: roster.set_roster(s, entries, allow_guests=False))
    await store.update("council", lambda s: agenda.set_agenda(s, ITEMS))
    await store.update("council", lambda s: agenda.goto_item(s, 1, now=42.0))
    await store.update(
        "council", lambda s: agenda.save_preset(s, "发言人", {"layout": "single", "slots": ["@floor"]})
    )
    state = await store.get("council")
    assert state.roster == {"wang": entries[0].to_json()} and state.allow_guests is False
    assert [i["title"] for i in state.agenda] == [i["title"] for i in ITEMS]
    assert (state.agenda_index, state.agenda_started_at) == (1, 42.0)
    assert state.presets == {"发言人": {"layout": "single", "slots": ["@floor"]}}
    if isinstance(store, SqliteRoomStore):  # and after a restart: read back from the file
        await store.close()  # the file is one server's at a time
        again = SqliteRoomStore(store.path)
        await again.start()
        try:
            assert (await again.get("council")).to_json() == state.to_json()
        finally:
            await again.close()
