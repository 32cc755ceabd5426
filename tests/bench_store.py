"""What a room change costs in each store (figures for docs/performance.md, not a test).

A room with 50 participants (the largest meeting) gets ``--changes`` program changes, one after
the other as a chair makes them, and then the same number at once from 20 rooms (group commit).
Printed per change: the latency the caller waits, the event loop's busy time (what other
endpoints could be delayed by), the longest stall of the loop seen by a 1 ms ticker, and for
SQLite the commit time in its writer thread.

    .venv/bin/python tests/bench_store.py [--changes 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from conference import room as commands
from conference.roles import Role
from conference.room import Participant
from conference.sqlite_store import SqliteRoomStore
from conference.store import Command, MemoryRoomStore, RoomStore


async def _ticker(stalls: list[float], stop: asyncio.Event) -> None:
    last = time.perf_counter()
    while not stop.is_set():
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        stalls.append(now - last - 0.001)
        last = now


async def _fill(store: RoomStore, room: str, people: int) -> None:
    await store.create(room, max_endpoints=people)
    for i in range(people):
        venue = Participant(f"hall-{i}", f"Hall {i}", Role.VENUE, publish_audio=True, publish_video=True)
        await store.update(room, lambda s, v=venue: commands.join(s, v))


def _program_change(i: int) -> Command:
    slots: list[str | None] = [f"hall-{(i + k) % 50}" for k in range(4)]
    return lambda s: commands.set_program(s, "grid-2x2", slots)


def _single(identity: str) -> Command:
    return lambda s: commands.set_program(s, "single", [identity])


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def run(kind: str, changes: int, directory: Path) -> None:
    store: RoomStore = (
        SqliteRoomStore(directory / f"{kind}.sqlite3") if kind == "sqlite" else MemoryRoomStore()
    )
    await _fill(store, "council", 50)
    # Back to back: what a change costs the event loop (its thread's CPU) and the caller (wall).
    waits: list[float] = []
    cpu_start = time.thread_time()
    for i in range(changes):
        started = time.perf_counter()
        await store.update("council", _program_change(i))
        waits.append(time.perf_counter() - started)
    loop_ms = (time.thread_time() - cpu_start) / changes * 1000
    # Spaced out, as a chair makes them, with a 1 ms ticker: how late the loop runs other work.
    stalls: list[float] = []
    stop = asyncio.Event()
    ticker = asyncio.get_running_loop().create_task(_ticker(stalls, stop))
    for i in range(changes // 4):
        await store.update("council", _program_change(i))
        await asyncio.sleep(0.003)
    stop.set()
    await ticker
    print(
        f"{kind:6s} 1 room (50 participants) x {changes} changes: event loop CPU {loop_ms:.3f} ms per"
        f" change; caller waits median {_ms(waits, 0.5):.3f} ms, p99 {_ms(waits, 0.99):.3f} ms;"
        f" 1 ms ticker late by p99 {_ms(stalls, 0.99):.2f} ms, max {max(stalls) * 1000:.2f} ms"
    )
    if isinstance(store, SqliteRoomStore):
        commits = list(store.write_seconds)
        print(
            f"       commit in the writer thread: median {statistics.median(commits) * 1000:.3f} ms,"
            f" max {max(commits) * 1000:.2f} ms (last {len(commits)})"
        )
    rooms = [f"room-{i}" for i in range(20)]
    for name in rooms:
        await _fill(store, name, 10)
    before = len(getattr(store, "write_seconds", []))
    started = time.perf_counter()
    for i in range(changes // 20):
        await asyncio.gather(
            *(
                store.update(name, lambda s, i=i: commands.set_program(s, "single", [f"hall-{i % 10}"]))
                for name in rooms
            )
        )
    elapsed = time.perf_counter() - started
    line = f"       20 rooms at once: {elapsed / (changes // 20 * 20) * 1000:.3f} ms per change"
    if isinstance(store, SqliteRoomStore):
        commits = len(store.write_seconds) - before if len(store.write_seconds) < 1000 else None
        if commits:
            line += f", {changes // 20 * 20 / commits:.1f} changes per commit"
    print(line)
    await store.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("memory", "sqlite"):
            await run(kind, args.changes, Path(tmp))


if __name__ == "__main__":
    asyncio.run(main())
