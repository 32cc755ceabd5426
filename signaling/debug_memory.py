"""``/api/debug/memory`` (admin key): where the server process's memory is, to tell a leak from a cache
filling and from the C allocator keeping pages it no longer uses (the soak, docs/performance.md).

- ``GET``: RSS by kind (``/proc/self/smaps_rollup``: anonymous, file-backed), glibc malloc's figures
  (``mallinfo2``: bytes in use, free but kept; and ``malloc_info``: its arenas), Python's allocator
  for small objects (its arenas, bytes in use and free in them), the objects the collector tracks, and,
  when ``conference serve --tracemalloc FRAMES`` started tracing, the biggest allocation sites;
  ``?compare=NAME`` gives the sites that grew most since snapshot NAME, ``?objects=1`` the object
  counts by type (and their growth since NAME): a walk of every object, so only when asked.
- ``POST`` ``{"name": NAME}``: keep a snapshot under NAME (tracemalloc's, if tracing, and the object
  counts; at most ``MAX_SNAPSHOTS``, the oldest dropped); ``{"trim": true}``: ``malloc_trim(0)``
  first, and say how much RSS that gave back (free memory glibc kept, not Python objects);
  ``{"collect": true}``: ``gc.collect()`` first (cyclic garbage not collected yet is not a leak).

Nothing here runs unless asked: tracemalloc is off by default (it costs every allocation while on),
and the routes do their work only when called.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import re
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

from aiohttp import web

from .app import require_admin
from .errors import json_error
from .heap_trim import HEAP_TRIMMER_KEY

MAX_SNAPSHOTS = 8
_MB = 2**20
_SMAPS_FIELDS = ("Rss", "Pss", "Pss_Anon", "Pss_File", "Anonymous", "Private_Dirty", "Shared_Clean", "Swap")


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",  # non-mmapped bytes obtained from the system (all arenas)
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",  # mmapped bytes (large blocks)
            "usmblks",
            "fsmblks",
            "uordblks",  # bytes in use
            "fordblks",  # free bytes kept
            "keepcost",
        )
    ]


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallinfo2.restype = _Mallinfo2
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.fopen.restype = ctypes.c_void_p
        libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        libc.fclose.argtypes = [ctypes.c_void_p]
        libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    except (OSError, AttributeError):  # not glibc (musl has none of these)
        return None
    return libc


_LIBC = _libc()


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return round(int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / _MB, 1)


def smaps() -> dict[str, float]:
    """``/proc/self/smaps_rollup`` in MB: anonymous memory is the heaps (Python's and C's)."""
    out: dict[str, float] = {}
    try:
        with open("/proc/self/smaps_rollup") as rollup:
            for line in rollup:
                key, _, rest = line.partition(":")
                if key in _SMAPS_FIELDS:
                    out[key.lower() + "_mb"] = round(int(rest.split()[0]) / 1024, 1)
    except OSError:
        pass
    return out


def anonymous_mappings() -> dict[str, dict[str, float]]:
    """Anonymous memory by mapping (``/proc/self/smaps``): the main malloc arena (``[heap]``, the
    event loop thread's mallocs), the main thread's stack, and the rest: Python's object arenas,
    glibc's thread arenas, thread stacks, large mallocs and native libraries' own (the kernel merges
    neighbouring mappings, so their sizes cannot tell these apart: the allocators' own figures do)."""
    kinds: dict[str, dict[str, float]] = {}
    current: str | None = None
    try:
        with open("/proc/self/smaps") as file:
            for line in file:
                first = line.split(None, 6)
                if "-" in first[0] and ":" not in first[0]:
                    path = first[5].strip() if len(first) > 5 else ""
                    current = {"[heap]": "malloc_main_arena", "[stack]": "main_stack", "": "other"}.get(path)
                    if current is not None:
                        kinds.setdefault(current, {"count": 0, "rss_mb": 0.0})["count"] += 1
                elif current is not None and first[0] == "Rss:":
                    kinds[current]["rss_mb"] += int(first[1]) / 1024
    except OSError:
        return {}
    return {k: {"count": v["count"], "rss_mb": round(v["rss_mb"], 1)} for k, v in sorted(kinds.items())}


def malloc_figures() -> dict[str, Any]:
    """glibc's allocator: what it holds from the system, what is in use, and its arenas (one per
    thread that allocated, up to 8 per core unless ``MALLOC_ARENA_MAX``)."""
    if _LIBC is None:
        return {}
    info = _LIBC.mallinfo2()
    out: dict[str, Any] = {
        "heap_mb": round(info.arena / _MB, 1),
        "mmapped_mb": round(info.hblkhd / _MB, 1),
        "in_use_mb": round(info.uordblks / _MB, 1),
        "free_kept_mb": round(info.fordblks / _MB, 1),
        "arena_max_env": os.environ.get("MALLOC_ARENA_MAX"),
    }
    out.update(_arenas())
    return out


def _arenas() -> dict[str, Any]:
    """``malloc_info``'s XML: one ``<heap>`` per arena, with the bytes it holds (``<system
    type="current">``)."""
    assert _LIBC is not None
    with tempfile.NamedTemporaryFile(prefix="malloc-info-", suffix=".xml") as file:
        handle = _LIBC.fopen(file.name.encode(), b"w")
        if not handle:
            return {}
        _LIBC.malloc_info(0, handle)
        _LIBC.fclose(handle)
        text = Path(file.name).read_text()
    sizes = [
        int(size)
        for size in re.findall(r'<heap nr="\d+">.*?<system type="current" size="(\d+)"/>', text, re.S)
    ]
    return {"arenas": len(sizes), "arena_mb": [round(s / _MB, 1) for s in sizes]}


def python_allocator() -> dict[str, Any]:
    """Python's small-object allocator (``_PyObject_DebugMallocStats``, written to a file rather than
    stderr): its arenas (1 MiB each, mmapped, given back only when wholly empty), the bytes in use
    in them and the bytes free inside them."""
    if _LIBC is None:
        return {}
    try:
        stats = ctypes.pythonapi._PyObject_DebugMallocStats
    except AttributeError:
        return {}
    stats.argtypes = [ctypes.c_void_p]
    with tempfile.NamedTemporaryFile(prefix="pymalloc-", suffix=".txt") as file:
        handle = _LIBC.fopen(file.name.encode(), b"w")
        if not handle:
            return {}
        stats(handle)
        _LIBC.fclose(handle)
        text = Path(file.name).read_text()

    def figure(label: str) -> int:
        found = re.search(rf"^{re.escape(label)}\s*=\s*([\d,]+)", text, re.M)
        return int(found.group(1).replace(",", "")) if found else 0

    return {
        "arenas": figure("# arenas allocated current"),
        "arenas_highwater": figure("# arenas highwater mark"),
        "in_use_mb": round(figure("# bytes in allocated blocks") / _MB, 1),
        "free_in_arenas_mb": round(figure("# bytes in available blocks") / _MB, 1),
        "total_mb": round(figure("Total") / _MB, 1),
    }


def _object_counts() -> Counter[str]:
    return Counter(type(o).__qualname__ for o in gc.get_objects())


class MemoryDebug:
    """The named snapshots this process keeps for comparison."""

    def __init__(self) -> None:
        self.snapshots: dict[str, tuple[float, tracemalloc.Snapshot | None, Counter[str] | None]] = {}

    def take(self, name: str, objects: bool) -> dict[str, Any]:
        snapshot = tracemalloc.take_snapshot() if tracemalloc.is_tracing() else None
        if snapshot is not None:
            snapshot = snapshot.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        counts = _object_counts() if objects else None
        self.snapshots.pop(name, None)
        self.snapshots[name] = (time.monotonic(), snapshot, counts)
        while len(self.snapshots) > MAX_SNAPSHOTS:
            self.snapshots.pop(next(iter(self.snapshots)))
        return {"name": name, "tracemalloc": snapshot is not None, "objects": counts is not None}

    def report(self, top: int, compare: str | None, objects: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "rss_mb": rss_mb(),
            "smaps": smaps(),
            "anonymous": anonymous_mappings(),
            "malloc": malloc_figures(),
            "pymalloc": python_allocator(),
            "gc_tracked": len(gc.get_objects()),
            "snapshots": list(self.snapshots),
        }
        base = self.snapshots.get(compare) if compare else None
        if compare and base is None:
            raise json_error(404, "not_found", f"no snapshot {compare!r}")
        # Counted before tracemalloc's snapshot: its own objects are not the server's.
        counts = _object_counts() if objects else None
        if tracemalloc.is_tracing():
            current, peak = tracemalloc.get_traced_memory()
            out["tracemalloc"] = {"traced_mb": round(current / _MB, 1), "peak_mb": round(peak / _MB, 1)}
            snapshot = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(False, tracemalloc.__file__)]
            )
            out["tracemalloc"]["top"] = [
                _site(stat.traceback, stat.size, stat.count) for stat in snapshot.statistics("lineno")[:top]
            ]
            if base is not None and base[1] is not None:
                diff = sorted(snapshot.compare_to(base[1], "lineno"), key=lambda d: d.size_diff, reverse=True)
                out["tracemalloc"]["grown"] = [
                    {**_site(d.traceback, d.size, d.count), "size_diff_kb": round(d.size_diff / 1024, 1)}
                    for d in diff[:top]
                ]
                out["tracemalloc"]["since_s"] = round(time.monotonic() - base[0], 1)
        if counts is not None:
            out["objects"] = dict(counts.most_common(top))
            if base is not None and base[2] is not None:
                grown = counts.copy()
                grown.subtract(base[2])
                out["objects_grown"] = {k: v for k, v in grown.most_common(top) if v > 0}
        return out


def _site(traceback: tracemalloc.Traceback, size: int, count: int) -> dict[str, Any]:
    frame = traceback[0]
    return {"at": f"{frame.filename}:{frame.lineno}", "kb": round(size / 1024, 1), "blocks": count}


MEMORY_DEBUG_KEY = web.AppKey("memory_debug", MemoryDebug)


async def get_memory(request: web.Request) -> web.Response:
    require_admin(request)
    try:
        top = max(1, min(200, int(request.query.get("top", "25"))))
    except ValueError:
        raise json_error(400, "bad_request", "top: a number") from None
    debug = request.app[MEMORY_DEBUG_KEY]
    out = debug.report(top, request.query.get("compare"), request.query.get("objects") in ("1", "true"))
    trimmer = request.app.get(HEAP_TRIMMER_KEY)
    if trimmer is not None:
        out["heap_trim"] = trimmer.stats()
    return web.json_response(out)


async def post_memory(request: web.Request) -> web.Response:
    require_admin(request)
    try:
        body = await request.json()
    except ValueError:
        body = None
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("name", ""), str)
        or len(body.get("name", "")) > 64
    ):
        raise json_error(
            400, "bad_request", 'a JSON object: {"name": "at-30s", "trim": false, "objects": false}'
        )
    out: dict[str, Any] = {}
    if body.get("collect"):  # cyclic garbage not yet collected is not held memory
        before, started = rss_mb(), time.perf_counter()
        found = gc.collect()
        took = time.perf_counter() - started
        out["collect"] = {
            "rss_before_mb": before,
            "rss_after_mb": rss_mb(),
            "unreachable": found,
            "ms": round(took * 1000, 1),
        }
    if body.get("trim") and _LIBC is not None:
        before, started = rss_mb(), time.perf_counter()
        _LIBC.malloc_trim(0)
        took = time.perf_counter() - started
        out["trim"] = {"rss_before_mb": before, "rss_after_mb": rss_mb(), "ms": round(took * 1000, 1)}
    if body.get("name"):
        out["snapshot"] = request.app[MEMORY_DEBUG_KEY].take(body["name"], bool(body.get("objects")))
    out["rss_mb"] = rss_mb()
    return web.json_response(out)


def setup(app: web.Application) -> None:
    app[MEMORY_DEBUG_KEY] = MemoryDebug()
    app.router.add_get("/api/debug/memory", get_memory)
    app.router.add_post("/api/debug/memory", post_memory)
