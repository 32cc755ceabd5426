"""Both room stores run the same contract; Redis also shares rooms between processes."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conference import room as commands
from conference.roles import Role
from conference.room import CommandError, Participant, RoomState
from conference.sqlite_store import SqliteRoomStore
from conference.store import EVENT_LOG_SIZE, MemoryRoomStore, RedisRoomStore, RoomExists, RoomStore

REDIS_URL = os.environ.get("CONFERENCE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _redis_store(prefix: str) -> RedisRoomStore:
    store = RedisRoomStore(REDIS_URL)
    store._prefix = prefix  # a fresh namespace per test: tests never see each other's rooms
    store._channel = f"{prefix}:events"
    return store


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RoomStore]:
    if request.param in ("memory", "sqlite"):
        s: RoomStore = MemoryRoomStore() if request.param == "memory" else SqliteRoomStore(tmp_path / "r.db")
        yield s
        await s.close()
        return
    prefix = f"test-{uuid.uuid4().hex}"
    s = _redis_store(prefix)
    await s.start()
    yield s
    for room in await s.list_rooms():
        await s.delete(room)
    await s.close()


def venue(identity: str) -> Participant:
    return Participant(
        identity=identity, name=identity.title(), role=Role.VENUE, publish_audio=True, publish_video=True
    )


async def test_create_get_list(store: RoomStore) -> None:
    state = await store.create("hall", max_endpoints=5)
    assert state.version == 0 and state.max_endpoints == 5
    assert (await store.get("hall")).room == "hall"  # type: ignore[union-attr]
    assert await store.get("nowhere") is None
    assert await store.list_rooms() == ["hall"]
    with pytest.raises(RoomExists):
        await store.create("hall", max_endpoints=5)
    again = await store.create("hall", max_endpoints=9, exist_ok=True)
    assert again.max_endpoints == 5


async def test_events_are_numbered_and_logged(store: RoomStore) -> None:
    await store.create("hall", max_endpoints=5)
    _, e1 = await store.update("hall", lambda s: commands.join(s, venue("a")))
    _, e2 = await store.update("hall", lambda s: commands.join(s, venue("b")))
    state, e3 = await store.update("hall", lambda s: commands.set_program(s, "side-by-side", ["a", "b"]))
    assert [e["version"] for e in e1 + e2 + e3] == [1, 2, 3]
    assert state.version == 3 and state.program.slots == ["a", "b"]
    since = await store.events_since("hall", 1)
    assert since is not None and [e["kind"] for e in since] == ["participant_joined", "program"]
    assert await store.events_since("hall", 3) == []


async def test_failed_command_changes_nothing(store: RoomStore) -> None:
    await store.create("hall", max_endpoints=5)
    await store.update("hall", lambda s: commands.join(s, venue("a")))

    def half_done(s: RoomState) -> list[dict[str, object]]:
        commands.mute(s, "a", True)
        raise CommandError("bad_request", "fails after changing the draft")

    with pytest.raises(CommandError):
        await store.update("hall", half_done)
    state = await store.get("hall")
    assert state is not None and state.version == 1 and not state.participants["a"].muted
    with pytest.raises(CommandError) as info:
        await store.update("nowhere", lambda s: [])
    assert info.value.code == "not_found"


async def test_concurrent_updates_lose_nothing(store: RoomStore) -> None:
    await store.create("hall", max_endpoints=50)
    await asyncio.gather(
        *(store.update("hall", lambda s, i=i: commands.join(s, venue(f"v{i}"))) for i in range(20))
    )
    state = await store.get("hall")
    assert state is not None and len(state.participants) == 20 and state.version == 20
    events = await store.events_since("hall", 0)
    assert events is not None and [e["version"] for e in events] == list(range(1, 21))


async def test_log_is_bounded_and_says_when_it_cannot_reach_back(store: RoomStore) -> None:
    await store.create("hall", max_endpoints=5)
    await store.update("hall", lambda s: commands.join(s, venue("a")))
    for i in range(EVENT_LOG_SIZE + 5):
        await store.update("hall", lambda s, i=i: commands.mute(s, "a", i % 2 == 0))
    assert await store.events_since("hall", 0) is None  # too old: the client must take a snapshot
    recent = await store.events_since("hall", EVENT_LOG_SIZE)
    assert recent is not None and len(recent) == 6


async def test_listeners_hear_every_change(store: RoomStore) -> None:
    heard: list[tuple[str, int]] = []
    store.subscribe(lambda room, events, state: heard.extend((room, e["version"]) for e in events))
    await store.create("hall", max_endpoints=5)
    await store.update("hall", lambda s: commands.join(s, venue("a")))
    await store.update("hall", lambda s: commands.raise_hand(s, "a"))
    assert heard == [("hall", 1), ("hall", 2)]


async def test_redis_shares_rooms_between_processes() -> None:
    """Two stores on one Redis stand for two server processes: both see one room and its events."""
    prefix = f"test-{uuid.uuid4().hex}"
    a, b = _redis_store(prefix), _redis_store(prefix)
    await a.start()
    await b.start()
    try:
        heard_by_b: asyncio.Queue[tuple[str, list[dict[str, object]], RoomState]] = asyncio.Queue()
        b.subscribe(lambda room, events, state: heard_by_b.put_nowait((room, events, state)))
        await a.create("hall", max_endpoints=20)
        await a.update("hall", lambda s: commands.join(s, venue("a")))
        room, events, state = await asyncio.wait_for(heard_by_b.get(), 5)
        assert room == "hall" and events[0]["kind"] == "participant_joined" and "a" in state.participants
        # b changes the room a created; optimistic locking keeps both processes' changes.
        await asyncio.gather(
            *(
                store.update("hall", lambda s, i=i: commands.join(s, venue(f"x{i}")))
                for i, store in enumerate([a, b] * 5)
            )
        )
        final = await b.get("hall")
        assert final is not None and len(final.participants) == 11 and final.version == 11
    finally:
        await a.delete("hall")
        await a.close()
        await b.close()


async def test_sqlite_commits_a_burst_of_changes_together_and_keeps_every_one(tmp_path: Path) -> None:
    """50 joins at once are not 50 commits one after the other (each waiting in the room's lock):
    their writes queue while one is committed and go in together; every join is on disk."""
    path = tmp_path / "rooms.sqlite3"
    store = SqliteRoomStore(path)
    await store.start()
    await store.create("council", max_endpoints=60)
    before = len(store.write_seconds)
    await asyncio.gather(
        *(store.update("council", lambda s, i=i: commands.join(s, venue(f"v{i}"))) for i in range(50))
    )
    commits = len(store.write_seconds) - before
    assert commits < 25, commits
    await store.close()
    reopened = SqliteRoomStore(path)
    await reopened.start()
    state = await reopened.get("council")
    assert state is not None and len(state.participants) == 50 and state.version == 50
    await reopened.close()
