"""A burst of 50 joins (100 room changes) at once plus the chair's program change, on an event loop
kept busy by Python work in 2 ms slices: how long the program change takes with each store
(docs/performance.md, "Room store"). ``python tests/bench_store_burst.py``."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from conference.roles import Role
from conference.room import Participant, join, set_program, update_publishing
from conference.sqlite_store import SqliteRoomStore
from conference.store import MemoryRoomStore


def person(identity: str, role: Role = Role.VENUE) -> Participant:
    return Participant(identity, identity.upper(), role, publish_audio=True, publish_video=True)


async def busy(stop: asyncio.Event) -> None:
    """Python work in 2 ms slices, as the forwarding callbacks keep a loaded server's loop."""
    while not stop.is_set():
        started = time.perf_counter()
        while time.perf_counter() - started < 0.002:
            pass
        await asyncio.sleep(0)


async def measure(kind: str) -> None:
    if kind == "sqlite":
        store: SqliteRoomStore | MemoryRoomStore = SqliteRoomStore(Path(tempfile.mkdtemp()) / "rooms.sqlite3")
        await store.start()
    else:
        store = MemoryRoomStore()
    await store.create("hall", max_endpoints=200)
    await store.update("hall", lambda s: join(s, person("chair", Role.CHAIR)))
    stop = asyncio.Event()
    loaders = [asyncio.create_task(busy(stop)) for _ in range(3)]
    await asyncio.sleep(0.1)

    async def joiner(i: int) -> None:
        await store.update("hall", lambda s: join(s, person(f"p{i}")))
        await store.update("hall", lambda s: update_publishing(s, f"p{i}", True, False))

    started = time.perf_counter()
    joins = [asyncio.create_task(joiner(i)) for i in range(50)]
    await asyncio.sleep(0.05)
    before = time.perf_counter()
    await store.update("hall", lambda s: set_program(s, "single", ["chair"]))
    program = time.perf_counter() - before
    await asyncio.gather(*joins)
    total = time.perf_counter() - started
    stop.set()
    await asyncio.gather(*loaders)
    commits = len(getattr(store, "write_seconds", []))
    print(
        f"{kind}: 50 joins at once and the chair's program change: the program change took"
        f" {program * 1000:.0f} ms, everything {total * 1000:.0f} ms, {commits} commits"
    )
    await store.close()


if __name__ == "__main__":
    asyncio.run(measure("memory"))
    asyncio.run(measure("sqlite"))
