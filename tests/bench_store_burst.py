"""A burst of 50 joins (100 room changes) at once plus the chair's program change, on an event loop kept busy
by Python work in 2 ms slices: how long the program change takes with each store (docs/performance.md)."""

import asyncio
import tempfile
import time
from pathlib import Path

from conference.roles import Role
from conference.room import Participant, join, set_program, update_publishing
from conference.sqlite_store import SqliteRoomStore
from conference.store import MemoryRoomStore


async def busy(stop):
    while not stop.is_set():
        t = time.perf_counter()
        while time.perf_counter() - t < 0.002:
            pass
        await asyncio.sleep(0)


async def main(kind):
    d = tempfile.mkdtemp()
    store = SqliteRoomStore(Path(d) / "rooms.sqlite3") if kind == "sqlite" else MemoryRoomStore()
    if hasattr(store, "start"):
        await store.start()
    await store.create("hall", max_endpoints=200)
    await store.update(
        "hall",
        lambda s: join(s, Participant("chair", "C", Role.CHAIR, publish_audio=True, publish_video=True)),
    )
    stop = asyncio.Event()
    tasks = [asyncio.create_task(busy(stop)) for _ in range(3)]
    await asyncio.sleep(0.1)

    async def joiner(i):
        await store.update(
            "hall",
            lambda s: join(
                s, Participant(f"p{i}", f"P{i}", Role.VENUE, publish_audio=True, publish_video=True)
            ),
        )
        await store.update("hall", lambda s: update_publishing(s, f"p{i}", True, False))

    started = time.perf_counter()
    joins = [asyncio.create_task(joiner(i)) for i in range(50)]
    await asyncio.sleep(0.05)
    t = time.perf_counter()
    await store.update("hall", lambda s: set_program(s, "single", ["chair"]))
    program = time.perf_counter() - t
    await asyncio.gather(*joins)
    total = time.perf_counter() - started
    stop.set()
    await asyncio.gather(*tasks)
    commits = len(getattr(store, "write_seconds", []))
    print(
        f"{kind}: 100 changes from 50 joins at once + the chair's program change: program change took {program * 1000:.0f} ms, all {total * 1000:.0f} ms, commits {commits}"
    )
    await store.close()


asyncio.run(main("memory"))
asyncio.run(main("sqlite"))
