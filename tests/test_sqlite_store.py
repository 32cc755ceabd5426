"""The default room store: rooms are in the SQLite file after every acknowledged change.

The store contract itself runs for every store in tests/test_store.py; a real server killed and
started again is tests/test_restart.py.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from conference import room as commands
from conference.roles import Role
from conference.room import Participant
from conference.sqlite_store import SqliteRoomStore, StoreLocked


def venue(identity: str) -> Participant:
    return Participant(identity, identity.title(), Role.VENUE, publish_audio=True, publish_video=True)


async def test_a_reopened_store_has_every_room_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "rooms.sqlite3"
    store = SqliteRoomStore(path)
    await store.create("council", max_endpoints=12)
    await store.create("other", max_endpoints=5)
    for who in ("hall-a", "hall-b", "hall-c"):
        await store.update("council", lambda s, w=who: commands.join(s, venue(w)))
    await store.update("council", lambda s: commands.set_program(s, "side-by-side", ["hall-b", "hall-a"]))
    await store.update("council", lambda s: commands.mute(s, "hall-c", True))
    await store.update("council", lambda s: commands.raise_hand(s, "hall-c", now=10.0))
    await store.update("council", lambda s: commands.raise_hand(s, "hall-b", now=11.0))
    await store.update("council", lambda s: commands.grant_floor(s, "hall-a"))
    await store.update("council", lambda s: commands.start_recording(s, "council-1", now=5.0))
    before = await store.get("council")
    await store.close()

    again = SqliteRoomStore(path)
    await again.start()
    try:
        assert await again.list_rooms() == ["council", "other"]
        state = await again.get("council")
        assert state is not None and before is not None
        assert state.to_json() == before.to_json()
        assert state.program.slots == ["hall-b", "hall-a"] and state.floor == "hall-a"
        assert state.floor_queue == ["hall-c", "hall-b"] and state.participants["hall-c"].muted
        assert state.recording.active and state.recording.recording_id == "council-1"
        # Versions go on from where they were; the event log did not survive (a client syncs
        # from a snapshot), which the store says rather than inventing events.
        _, events = await again.update("council", lambda s: commands.revoke_floor(s))
        assert events[0]["version"] == before.version + 1
        assert await again.events_since("council", 1) is None
        await again.delete("other")
    finally:
        await again.close()
    third = SqliteRoomStore(path)
    assert await third.list_rooms() == ["council"]
    await third.close()


async def test_changes_are_on_disk_when_acknowledged(tmp_path: Path) -> None:
    """Read the file with a separate connection, as a process started after a SIGKILL would."""
    path = tmp_path / "rooms.sqlite3"
    store = SqliteRoomStore(path)
    try:
        await store.create("council", max_endpoints=5)
        await store.update("council", lambda s: commands.join(s, venue("hall-a")))
        state, _ = await store.update("council", lambda s: commands.set_program(s, "single", ["hall-a"]))
        with sqlite3.connect(path) as other:
            row = other.execute("SELECT version, state FROM rooms WHERE room = 'council'").fetchone()
        version, text = row
        assert version == state.version == 2 and '"slots": ["hall-a"]' in text
        mode = stat.S_IMODE(os.stat(path).st_mode)
        assert mode & 0o077 == 0, f"{oct(mode)}: the file holds dial-in PIN hashes"
        with sqlite3.connect(path) as other:
            assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        await store.close()


async def test_a_second_process_cannot_take_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "rooms.sqlite3"
    first = SqliteRoomStore(path)
    await first.start()
    second = SqliteRoomStore(path)
    with pytest.raises(StoreLocked, match="Redis"):
        await second.start()
    await first.close()
    await second.start()  # free again once the first one closed
    await second.close()


async def test_changes_waiting_for_a_write_are_committed_together(tmp_path: Path) -> None:
    store = SqliteRoomStore(tmp_path / "rooms.sqlite3")
    try:
        rooms = [f"room-{i}" for i in range(20)]
        for name in rooms:
            await store.create(name, max_endpoints=5)
        commits_before = len(store.write_seconds)
        await asyncio.gather(
            *(store.update(name, lambda s: commands.join(s, venue("hall"))) for name in rooms)
        )
        commits = len(store.write_seconds) - commits_before
        assert 1 <= commits < len(rooms), commits
        for name in rooms:
            state = await store.get(name)
            assert state is not None and "hall" in state.participants
    finally:
        await store.close()
    again = SqliteRoomStore(tmp_path / "rooms.sqlite3")
    try:
        for name in rooms:
            state = await again.get(name)
            assert state is not None and "hall" in state.participants, name
    finally:
        await again.close()


async def test_a_room_that_cannot_be_read_is_skipped_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "rooms.sqlite3"
    store = SqliteRoomStore(path)
    await store.create("good", max_endpoints=5)
    await store.create("bad", max_endpoints=5)
    await store.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE rooms SET state = '{\"room\": \"bad\"}' WHERE room = 'bad'")
    again = SqliteRoomStore(path)
    try:
        assert await again.list_rooms() == ["good"]
    finally:
        await again.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM rooms").fetchone()[0] == 2


async def test_a_change_that_cannot_be_written_is_refused_and_reaches_the_disk_with_the_next(
    tmp_path: Path,
) -> None:
    """The disk goes away under the store (here its database connection is closed): the command's
    caller gets a clear error and nobody is told of the change; it stays in memory (later changes
    build on it) and reaches the file with the room's next write once the disk is back."""
    from conference.room import CommandError

    path = tmp_path / "rooms.sqlite3"
    store = SqliteRoomStore(path)
    await store.create("council", max_endpoints=5)
    await store.update("council", lambda s: commands.join(s, venue("hall-a")))
    heard: list[object] = []
    store.subscribe(lambda room, events, state: heard.append([e["kind"] for e in events]))
    assert store._db is not None
    store._db.close()
    with pytest.raises(CommandError) as info:
        await store.update("council", lambda s: commands.set_program(s, "single", ["hall-a"]))
    assert info.value.code == "internal" and "cannot write" in info.value.message
    assert heard == []
    with sqlite3.connect(path) as other:
        assert other.execute("SELECT version FROM rooms WHERE room = 'council'").fetchone()[0] == 1
    store._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)  # the disk is back
    await store.update("council", lambda s: commands.mute(s, "hall-a", True))
    assert heard == [["mute"]]
    await store.close()
    again = SqliteRoomStore(path)
    try:
        state = await again.get("council")
        assert state is not None and state.version == 3
        assert state.program.slots == ["hall-a"] and state.participants["hall-a"].muted
    finally:
        await again.close()


async def test_a_file_from_a_newer_version_or_not_a_database_is_refused_clearly(tmp_path: Path) -> None:
    from conference.sqlite_store import StoreError

    newer = tmp_path / "newer.sqlite3"
    with sqlite3.connect(newer) as db:
        db.execute("PRAGMA user_version=99")
    with pytest.raises(StoreError, match="newer version"):
        await SqliteRoomStore(newer).start()
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(sqlite3.DatabaseError):
        await SqliteRoomStore(garbage).start()
    # Refusing released the file: once it is fixed, the store opens.
    garbage.unlink()
    store = SqliteRoomStore(garbage)
    await store.start()
    await store.close()
