"""What a room's roster costs every room change (figures for docs/performance.md, not a test).

The roster is part of the room state, and a store copies (and the SQLite store serialises) the
room on every change: a room of 50 participants with a roster of 0, 200 and 1,000 entries gets
``--changes`` mutes back to back in each store; printed: milliseconds per change, best of 3.

    .venv/bin/python tests/bench_roster.py [--changes 300]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from conference import room as commands
from conference import roster
from conference.roles import Role
from conference.room import Participant
from conference.sqlite_store import SqliteRoomStore
from conference.store import MemoryRoomStore, RoomStore

SIZES = (0, 200, 1000)


async def per_change(store: RoomStore, entries: int, changes: int) -> float:
    await store.create("council", max_endpoints=60)
    for i in range(50):
        await store.update(
            "council", lambda s, i=i: commands.join(s, Participant(f"p{i}", f"委员{i}", Role.MEMBER))
        )
    people = [
        roster.RosterEntry(f"e{i}", f"委员{i}", "member", "member", "教育界", "某某市第一中学")
        for i in range(entries)
    ]
    await store.update("council", lambda s: roster.set_roster(s, people))
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for j in range(changes):
            await store.update("council", lambda s, j=j: commands.mute(s, f"p{j % 50}", j % 2 == 0))
        best = min(best, (time.perf_counter() - started) / changes * 1000)
    return best


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=300)
    args = parser.parse_args()
    for name in ("memory", "sqlite"):
        for entries in SIZES:
            if name == "memory":
                store: RoomStore = MemoryRoomStore()
            else:
                sqlite = SqliteRoomStore(Path(tempfile.mkdtemp()) / "rooms.sqlite3")
                await sqlite.start()
                store = sqlite
            ms = await per_change(store, entries, args.changes)
            await store.close()
            print(f"{name:6s} roster {entries:5d} entries: {ms:.2f} ms per room change")


if __name__ == "__main__":
    asyncio.run(main())
