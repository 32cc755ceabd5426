"""``/api/debug/memory`` (signaling/debug_memory.py) over a real server: admin only, snapshots that
find what grew, bad requests refused with nothing kept."""

from __future__ import annotations

import tracemalloc
from typing import Any

import aiohttp
import pytest

from tests.conftest import TEST_ADMIN_KEY

ADMIN = {"Authorization": f"Bearer {TEST_ADMIN_KEY}"}


async def _call(http: aiohttp.ClientSession, method: str, url: Any, **kw: Any) -> tuple[int, Any]:
    async with http.request(method, url, **kw) as resp:
        body = await resp.json() if resp.content_type == "application/json" else await resp.text()
        return resp.status, body


@pytest.fixture
def tracing():
    tracemalloc.start(1)
    yield
    tracemalloc.stop()


async def test_memory_figures_need_the_admin_key(signaling_server, mint) -> None:
    server = await signaling_server()
    url = server.make_url("/api/debug/memory")
    venue = mint("council", "hall-a", "venue")
    async with aiohttp.ClientSession() as http:
        assert (await _call(http, "GET", url))[0] == 401
        assert (await _call(http, "GET", url, headers={"Authorization": f"Bearer {venue}"}))[0] == 403
        assert (await _call(http, "POST", url, json={"name": "x"}))[0] == 401
        status, body = await _call(http, "GET", url, headers=ADMIN)
    assert status == 200
    assert body["rss_mb"] > 10 and body["smaps"]["anonymous_mb"] > 0 and body["gc_tracked"] > 1000
    assert body["malloc"]["arenas"] >= 1 and body["malloc"]["in_use_mb"] > 0
    pymalloc = body["pymalloc"]
    assert pymalloc["arenas"] >= 1 and 0 < pymalloc["in_use_mb"] <= pymalloc["total_mb"]
    assert sum(kind["rss_mb"] for kind in body["anonymous"].values()) <= body["smaps"]["anonymous_mb"] + 1
    assert "tracemalloc" not in body  # off unless serve --tracemalloc


async def test_a_snapshot_shows_what_grew_since(signaling_server, tracing) -> None:
    server = await signaling_server()
    url = server.make_url("/api/debug/memory")
    async with aiohttp.ClientSession() as http:
        status, body = await _call(http, "POST", url, headers=ADMIN, json={"name": "before", "objects": True})
        assert status == 200 and body["snapshot"] == {"name": "before", "tracemalloc": True, "objects": True}
        kept = [_Grown() for _ in range(3000)]  # noqa: F841 - held while the server compares
        status, body = await _call(
            http, "GET", url, headers=ADMIN, params={"compare": "before", "objects": "1", "top": "200"}
        )
        assert status == 200, body
        assert body["objects_grown"].get("_Grown") == 3000
        grown = body["tracemalloc"]["grown"]
        assert any("test_debug_memory.py" in site["at"] and site["size_diff_kb"] > 50 for site in grown), (
            grown
        )
        assert body["snapshots"] == ["before"] and body["tracemalloc"]["traced_mb"] > 0
        status, body = await _call(http, "POST", url, headers=ADMIN, json={"collect": True, "trim": True})
        assert status == 200 and body["trim"]["rss_after_mb"] > 0 and "unreachable" in body["collect"]


async def test_bad_requests_are_refused_and_keep_nothing(signaling_server) -> None:
    server = await signaling_server()
    url = server.make_url("/api/debug/memory")
    async with aiohttp.ClientSession() as http:
        for body in ([1], {"name": 5}, {"name": "x" * 65}):
            status, answer = await _call(http, "POST", url, headers=ADMIN, json=body)
            assert status == 400 and answer["error"] == "bad_request", (body, answer)
        status, answer = await _call(http, "GET", url, headers=ADMIN, params={"compare": "nothing"})
        assert status == 404 and answer["error"] == "not_found"
        assert (await _call(http, "GET", url, headers=ADMIN, params={"top": "many"}))[0] == 400
        status, answer = await _call(http, "GET", url, headers=ADMIN)
        assert answer["snapshots"] == []


class _Grown:
    pass


async def test_the_heap_is_trimmed_and_the_figures_say_so(signaling_server) -> None:
    from signaling.heap_trim import HEAP_TRIMMER_KEY, TRIM_EVERY_S

    server = await signaling_server()
    trimmer = server.app[HEAP_TRIMMER_KEY]
    assert trimmer.available and trimmer.every_s == TRIM_EVERY_S
    # Memory malloc held free after a burst of packet-sized objects is given back.
    burst = [bytes(1200) for _ in range(20_000)]
    keep = burst[::200]  # a few survivors pin the heap's top, as a packet cache does
    del burst
    released = trimmer.trim()
    assert released > 5, released  # of the ~23 MB freed between the survivors
    assert trimmer.trims == 1 and trimmer.last_ms > 0
    async with aiohttp.ClientSession() as http:
        status, body = await _call(http, "GET", server.make_url("/api/debug/memory"), headers=ADMIN)
    assert status == 200 and body["heap_trim"]["trims"] == 1 and body["heap_trim"]["every_s"] == TRIM_EVERY_S
    assert keep
