"""``conference bench --memory`` / ``--tracemalloc FRAMES``: where the server's memory went during the
window, from its ``/api/debug/memory`` (signaling/debug_memory.py).

Snapshots are taken at the window's start, at ``EARLY_S`` into it (the meeting's caches are full by
then: what grows after is proportional to time or to churn), at its end and after everyone left;
the report has RSS by kind and glibc malloc's figures at each, the allocation sites (tracemalloc)
and object types that grew from the early snapshot to the end, and what ``malloc_trim`` gave back
once everyone left (memory the C allocator kept, not objects).
"""

from __future__ import annotations

from typing import Any

import aiohttp

EARLY_S = 30.0
TOP = 30


class MemoryProbe:
    def __init__(self, http: aiohttp.ClientSession, url: str, admin_key: str) -> None:
        self.http = http
        self.url = f"{url}/api/debug/memory"
        self.headers = {"Authorization": f"Bearer {admin_key}"}
        self.points: dict[str, dict[str, Any]] = {}
        self.grown: dict[str, Any] = {}

    async def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        # A snapshot of a traced process with a meeting in it takes seconds: not the bench's 15 s default.
        timeout = aiohttp.ClientTimeout(total=120)
        async with self.http.post(self.url, json=body, headers=self.headers, timeout=timeout) as response:
            if response.status != 200:
                raise RuntimeError(f"POST /api/debug/memory: HTTP {response.status}: {await response.text()}")
            return dict(await response.json())

    async def _get(self, **query: str) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=120)
        async with self.http.get(self.url, params=query, headers=self.headers, timeout=timeout) as response:
            if response.status != 200:
                raise RuntimeError(f"GET /api/debug/memory: HTTP {response.status}: {await response.text()}")
            return dict(await response.json())

    async def point(self, name: str, at_s: float, *, keep: bool = True) -> None:
        """The process's memory now; ``keep``: also a snapshot to compare later ones with."""
        if keep:
            await self._post({"name": name, "objects": True})
        figures = await self._get(top="10")
        self.points[name] = {"at_s": round(at_s, 1), **_summary(figures)}

    async def compare(self, name: str, since: str) -> None:
        """Sites and object types that grew from snapshot ``since`` to now."""
        figures = await self._get(top=str(TOP), compare=since, objects="1")
        traced = figures.get("tracemalloc") or {}
        self.grown[f"{since}->{name}"] = {
            "tracemalloc_sites": traced.get("grown"),
            "objects": figures.get("objects_grown"),
            "biggest_sites": traced.get("top"),
            "biggest_objects": figures.get("objects"),
        }

    async def collect(self) -> dict[str, Any]:
        """A full collection first: cyclic garbage not collected yet is not memory held."""
        return dict((await self._post({"collect": True})).get("collect") or {})

    async def trim(self, name: str) -> None:
        self.points[name] = {
            **self.points.get(name, {}),
            "trim": (await self._post({"trim": True})).get("trim"),
        }

    def figures(self) -> dict[str, Any]:
        return {"points": self.points, "grown": self.grown}


def _summary(figures: dict[str, Any]) -> dict[str, Any]:
    smaps = figures.get("smaps") or {}
    malloc = figures.get("malloc") or {}
    traced = figures.get("tracemalloc") or {}
    return {
        "rss_mb": figures.get("rss_mb"),
        "anonymous_mb": smaps.get("anonymous_mb"),
        "file_mb": smaps.get("pss_file_mb"),
        "malloc_heap_mb": malloc.get("heap_mb"),
        "malloc_mmapped_mb": malloc.get("mmapped_mb"),
        "malloc_in_use_mb": malloc.get("in_use_mb"),
        "malloc_free_kept_mb": malloc.get("free_kept_mb"),
        "arenas": malloc.get("arenas"),
        "arena_mb": malloc.get("arena_mb"),
        "pymalloc_mb": (figures.get("pymalloc") or {}).get("total_mb"),
        "pymalloc_in_use_mb": (figures.get("pymalloc") or {}).get("in_use_mb"),
        "gc_tracked": figures.get("gc_tracked"),
        "traced_mb": traced.get("traced_mb"),
        "anonymous": figures.get("anonymous"),
        "heap_trim": figures.get("heap_trim"),
    }


def table_rows(memory: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    for name, p in (memory.get("points") or {}).items():
        traced = f", traced {p['traced_mb']} MB" if p.get("traced_mb") is not None else ""
        trim = p.get("trim") or {}
        trimmed = f"; malloc_trim -> {trim.get('rss_after_mb')} MB" if trim else ""
        rows.append(
            (
                f"server memory {name} ({p.get('at_s')} s)",
                f"RSS {p.get('rss_mb')} MB (anon {p.get('anonymous_mb')}), malloc in use "
                f"{p.get('malloc_in_use_mb')} free {p.get('malloc_free_kept_mb')} "
                f"in {p.get('arenas')} arenas, pymalloc {p.get('pymalloc_mb')} (in use "
                f"{p.get('pymalloc_in_use_mb')}), "
                f"{p.get('gc_tracked')} objects{traced}{trimmed}",
                "",
            )
        )
    for span, grown in (memory.get("grown") or {}).items():
        sites = grown.get("tracemalloc_sites") or []
        top = ", ".join(f"{s['at'].rsplit('/', 2)[-1]} {s['size_diff_kb']:+.0f} KB" for s in sites[:5])
        objects = ", ".join(f"{k} +{v}" for k, v in list((grown.get("objects") or {}).items())[:5])
        rows.append((f"grown {span}", top or objects or "-", ""))
        if top and objects:
            rows.append(("", objects, ""))
    return rows
