"""Gives the C allocator's free pages back to the system every ``TRIM_EVERY_S`` (glibc's
``malloc_trim(0)``).

Every RTP packet over 512 bytes is a ``bytes`` object that Python takes from ``malloc``, and
packets of every lifetime interleave in the event loop thread's heap: the packet caches that answer
NACKs (kept for 1,024 packets), the recorder's pending writes, packets in flight. glibc gives memory
back to the system only from the top of that heap, so what departed sessions and turned-over caches
freed stayed resident: in a 24-endpoint soak (docs/performance.md) the heap's free part grew 8 MB
in two minutes of churn, and after everyone left 45 MB of the server's RSS was memory glibc held
free. ``malloc_trim(0)`` releases the free pages inside the heap too (madvise): 3 ms for 26 MB
on this machine, on the loop (a thread would block the loop's mallocs on the arena lock just the
same, and would leave one more thread behind after a meeting).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

TRIM_EVERY_S = 60.0


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


class HeapTrimmer:
    def __init__(self, every_s: float = TRIM_EVERY_S) -> None:
        self.every_s = every_s
        self._trim = _malloc_trim()
        self.trims = 0
        self.released_mb = 0.0  # RSS given back by the trims, summed
        self.last_ms = 0.0

    @property
    def available(self) -> bool:
        return self._trim is not None

    def trim(self) -> float:
        """Trim now; the RSS it gave back, in MB."""
        if self._trim is None:
            return 0.0
        before, started = _rss_mb(), time.perf_counter()
        self._trim(0)
        self.last_ms = round((time.perf_counter() - started) * 1000, 2)
        released = max(0.0, before - _rss_mb())
        self.trims += 1
        self.released_mb = round(self.released_mb + released, 1)
        return released

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            self.trim()

    def stats(self) -> dict[str, Any]:
        return {
            "every_s": self.every_s if self.available else None,
            "trims": self.trims,
            "released_mb": self.released_mb,
            "last_ms": self.last_ms,
        }


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


HEAP_TRIMMER_KEY = web.AppKey("heap_trimmer", HeapTrimmer)


def setup(app: web.Application) -> None:
    trimmer = app[HEAP_TRIMMER_KEY] = HeapTrimmer()

    async def running(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(trimmer.run()) if trimmer.available else None
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app.cleanup_ctx.append(running)
