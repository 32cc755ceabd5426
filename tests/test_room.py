"""Unit tests of the room model (conference/room.py) through the in-memory store (conference/store.py)."""

from __future__ import annotations

import pytest

from conference import room as r
from conference.roles import Role
from conference.room import CommandError, Participant, RoomState
from conference.store import MemoryRoomStore, RoomExists


def person(identity: str, role: Role = Role.VENUE, **kw) -> Participant:
    return Participant(identity=identity, name=identity.title(), role=role, **kw)


@pytest.fixture
async def store() -> MemoryRoomStore:
    s = MemoryRoomStore()
    await s.create("council", max_endpoints=4)
    return s


async def test_join_numbers_events_and_keeps_versions_monotonic(store: MemoryRoomStore) -> None:
    seen: list[int] = []
    store.subscribe(lambda room, events, state: seen.extend(e["version"] for e in events))
    for name in ("a", "b", "c"):
        await store.update("council", lambda s, n=name: r.join(s, person(n)))
    state, events = await store.update("council", lambda s: r.set_program(s, "side-by-side", ["a"]))
    assert seen == [1, 2, 3, 4] and state.version == 4
    assert events[0]["kind"] == "program" and events[0]["room"] == "council"
    assert state.program.slots == ["a", None]  # padded to the layout's size


async def test_room_full_and_rejoin_when_full(store: MemoryRoomStore) -> None:
    for name in "abcd":
        await store.update("council", lambda s, n=name: r.join(s, person(n)))
    with pytest.raises(CommandError) as info:
        await store.update("council", lambda s: r.join(s, person("e")))
    assert info.value.code == "room_full"
    state, events = await store.update("council", lambda s: r.join(s, person("a")))
    assert events[0]["kind"] == "participant_rejoined" and len(state.participants) == 4


async def test_failed_command_changes_nothing(store: MemoryRoomStore) -> None:
    await store.update("council", lambda s: r.join(s, person("a")))
    before = (await store.get("council")).to_json()
    for command, code in [
        (lambda s: r.set_program(s, "nope", []), "unknown_layout"),
        (lambda s: r.set_program(s, "single", ["a", "a"]), "bad_request"),
        (lambda s: r.set_program(s, "pip", ["a", "ghost"]), "not_found"),
        (lambda s: r.mute(s, "ghost", True), "not_found"),
        (lambda s: r.grant_floor(s), "floor_queue_empty"),
        (lambda s: r.stop_recording(s), "conflict"),
    ]:
        with pytest.raises(CommandError) as info:
            await store.update("council", command)
        assert info.value.code == code
    assert (await store.get("council")).to_json() == before


async def test_floor_queue_is_ordered_by_time_of_raised_hand(store: MemoryRoomStore) -> None:
    for name in "abc":
        await store.update("council", lambda s, n=name: r.join(s, person(n, Role.MEMBER)))
    await store.update("council", lambda s: r.raise_hand(s, "c", now=10.0))
    await store.update("council", lambda s: r.raise_hand(s, "a", now=20.0))
    await store.update("council", lambda s: r.raise_hand(s, "b", now=15.0))
    state, _ = await store.update("council", lambda s: r.raise_hand(s, "c", now=30.0))  # keeps its place
    assert state.floor_queue == ["c", "b", "a"]
    state, events = await store.update("council", lambda s: r.grant_floor(s, by="chair"))
    assert state.floor == "c" and state.floor_queue == ["b", "a"]
    assert events[0] == {**events[0], "kind": "floor", "floor": "c", "by": "chair"}
    state, _ = await store.update("council", lambda s: r.lower_hand(s, "b"))
    state, _ = await store.update("council", lambda s: r.grant_floor(s))
    assert state.floor == "a" and state.floor_queue == []
    state, events = await store.update("council", lambda s: r.leave(s, "a"))
    assert state.floor is None and [e["kind"] for e in events] == ["participant_left", "floor"]


async def test_grant_floor_lifts_chair_mute_and_asks_to_unmute(store: MemoryRoomStore) -> None:
    await store.update("council", lambda s: r.join(s, person("a", Role.MEMBER, publish_audio=True)))
    await store.update("council", lambda s: r.mute(s, "a", True))
    await store.update("council", lambda s: r.self_mute(s, "a", True))
    with pytest.raises(CommandError) as info:
        await store.update("council", lambda s: r.self_mute(s, "a", False))
    assert info.value.code == "forbidden"
    state, _ = await store.update("council", lambda s: r.grant_floor(s, "a"))
    p = state.participants["a"]
    assert (p.muted, p.self_muted, p.unmute_requested) == (False, True, True)
    state, _ = await store.update("council", lambda s: r.self_mute(s, "a", False))
    assert state.participants["a"].audible and not state.participants["a"].unmute_requested


async def test_leave_empties_program_slots(store: MemoryRoomStore) -> None:
    for name in "ab":
        await store.update("council", lambda s, n=name: r.join(s, person(n)))
    await store.update("council", lambda s: r.set_program(s, "grid-2x2", ["a", "b", "a"]))
    state, events = await store.update("council", lambda s: r.remove(s, "a"))
    assert state.program.slots == [None, "b", None, None]
    assert events[0]["reason"] == "removed" and events[1]["program"]["slots"] == [None, "b", None, None]


async def test_reconnect_keeps_chair_decisions(store: MemoryRoomStore) -> None:
    await store.update("council", lambda s: r.join(s, person("a", publish_audio=True), now=5.0))
    await store.update("council", lambda s: r.mute(s, "a", True))
    await store.update("council", lambda s: r.raise_hand(s, "a", now=6.0))
    await store.update("council", lambda s: r.set_connected(s, "a", False))
    state, _ = await store.update("council", lambda s: r.join(s, person("a", publish_audio=True), now=9.0))
    p = state.participants["a"]
    assert (p.muted, p.hand_raised_at, p.joined_at, p.connected) == (True, 6.0, 5.0, True)


async def test_non_publishers_never_publish(store: MemoryRoomStore) -> None:
    state, _ = await store.update(
        "council", lambda s: r.join(s, person("v", Role.VIEWER, publish_audio=True))
    )
    assert not state.participants["v"].publish_audio
    state, events = await store.update("council", lambda s: r.update_publishing(s, "v", True, True))
    assert events == [] and not state.participants["v"].publish_video


async def test_recording_start_stop(store: MemoryRoomStore) -> None:
    with pytest.raises(CommandError, match="nobody is in the room"):
        await store.update("council", lambda s: r.start_recording(s, "council-w", now=1.0))
    await store.update("council", lambda s: r.join(s, person("a")))
    state, events = await store.update("council", lambda s: r.start_recording(s, "council-x", now=1.0))
    assert state.recording.active and events[0]["recording_id"] == "council-x"
    with pytest.raises(CommandError):
        await store.update("council", lambda s: r.start_recording(s, "council-y"))
    state, events = await store.update("council", r.stop_recording)
    assert not state.recording.active and events[0] == {
        **events[0],
        "active": False,
        "recording_id": "council-x",
    }


async def test_events_since_and_snapshot_round_trip(store: MemoryRoomStore) -> None:
    for name in "ab":
        await store.update("council", lambda s, n=name: r.join(s, person(n)))
    assert [e["version"] for e in await store.events_since("council", 0)] == [1, 2]
    assert await store.events_since("council", 2) == []
    assert await store.events_since("nowhere", 0) is None
    state = await store.get("council")
    assert RoomState.from_json(state.to_json()).to_json() == state.to_json()
    with pytest.raises(RoomExists):
        await store.create("council", max_endpoints=4)
    assert (await store.create("council", max_endpoints=9, exist_ok=True)).max_endpoints == 4


async def test_title_is_one_line_bounded_and_survives_a_snapshot(store: MemoryRoomStore) -> None:
    state, events = await store.update("council", lambda s: r.set_title(s, " 第三次\n全体会议 ", by="c"))
    assert state.title == "第三次 全体会议"
    assert events[0]["kind"] == "title" and events[0]["title"] == "第三次 全体会议" and events[0]["by"] == "c"
    _, events = await store.update("council", lambda s: r.set_title(s, "第三次 全体会议"))
    assert events == []  # unchanged: no event
    with pytest.raises(CommandError) as info:
        await store.update("council", lambda s: r.set_title(s, "x" * (r.MAX_TITLE + 1)))
    assert info.value.code == "bad_request"
    state = await store.get("council")
    assert state.title == "第三次 全体会议"
    assert RoomState.from_json(state.to_json()).title == "第三次 全体会议"
    # A snapshot written before titles existed loads with none.
    old = state.to_json()
    del old["title"]
    assert RoomState.from_json(old).title == ""


async def test_the_floor_holder_ends_their_own_speaking(store: MemoryRoomStore) -> None:
    for name in "ab":
        await store.update("council", lambda s, n=name: r.join(s, person(n)))
    await store.update("council", lambda s: r.raise_hand(s, "b", now=1.0))
    await store.update("council", lambda s: r.grant_floor(s, "a"))
    with pytest.raises(CommandError) as info:  # only the holder may end it
        await store.update("council", lambda s: r.release_floor(s, "b"))
    assert info.value.code == "conflict"
    state, events = await store.update("council", lambda s: r.release_floor(s, "a"))
    assert state.floor is None
    assert events[0]["kind"] == "floor" and events[0]["floor"] is None and events[0]["by"] == "a"
    assert events[0]["floor_queue"] == ["b"]  # the queue is untouched


async def test_leaving_names_who_left(store: MemoryRoomStore) -> None:
    await store.update("council", lambda s: r.join(s, person("a")))
    _, events = await store.update("council", lambda s: r.leave(s, "a"))
    assert events[0]["kind"] == "participant_left" and events[0]["name"] == "A"


def test_what_clients_see_of_a_room_holds_no_pin_hash() -> None:
    state = RoomState(room="council")
    r.set_dial_in(state, "123456", "ab" * 32, [{"identity": "m", "name": "M", "pin_hash": "cd" * 32}])
    seen = state.client_json()
    assert seen["dial_in"] == {"meeting_id": "123456", "pin_set": True}
    assert "ab" * 32 not in str(seen) and "cd" * 32 not in str(seen)
    assert state.to_json()["dial_in"]["pin_hash"] == "ab" * 32  # the stores keep it
