"""The public side over a real server: the chair's broadcast commands, the public link and its QR
code, the public page's data, PATCH of what it shows, and the HLS files with their cache headers."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from typing import Any

import aiohttp
import pytest

from signaling.broadcast import live_dir
from tests.conftest import TEST_ADMIN_KEY

ADMIN = {"Authorization": f"Bearer {TEST_ADMIN_KEY}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def call(
    http: aiohttp.ClientSession, method: str, url: Any, headers: dict | None = None, **kw: Any
) -> tuple[int, Any]:
    async with http.request(method, url, headers=headers or {}, **kw) as resp:
        body = await resp.json() if resp.content_type == "application/json" else await resp.read()
        return resp.status, body


async def test_the_chair_starts_and_stops_the_broadcast_separately_from_recording(
    signaling_server, http, mint, connect
) -> None:
    server = await signaling_server()
    assert (await call(http, "POST", server.make_url("/api/rooms"), ADMIN, json={"room": "council"}))[
        0
    ] == 201
    chair = bearer(mint("council", "chair", "chair"))
    venue = bearer(mint("council", "hall-a", "venue"))
    commands = server.make_url("/api/rooms/council/commands")
    status, err = await call(http, "POST", commands, venue, json={"type": "start_broadcast"})
    assert status == 403 and err["error"] == "forbidden"
    status, result = await call(http, "POST", commands, chair, json={"type": "start_broadcast"})
    assert status == 200 and result["broadcast"]["active"] is True
    assert result["broadcast"]["started_at"] and result["broadcast"]["stopped_at"] is None
    status, err = await call(http, "POST", commands, chair, json={"type": "start_broadcast"})
    assert status == 409 and err["error"] == "conflict"
    status, room = await call(http, "GET", server.make_url("/api/rooms/council"), chair)
    assert room["broadcast"]["active"] and not room["recording"]["active"]

    # Over the WebSocket too, with the event every participant sees.
    ws = await connect(server, mint("council", "chair", "chair"))
    await ws.ok("join")
    reply = await ws.request("stop_broadcast")
    assert reply["type"] == "reply" and reply["result"]["broadcast"]["active"] is False
    event = await ws.wait_for(lambda m: m.get("type") == "event" and m["event"]["kind"] == "broadcast")
    assert (
        event["event"]["active"] is False and event["event"]["stopped_at"] and event["event"]["by"] == "chair"
    )
    again = await ws.request("stop_broadcast")
    assert again["type"] == "error" and again["code"] == "conflict"
    bad = await ws.request("start_broadcast", now=5)
    assert bad["type"] == "error" and bad["code"] == "bad_request"


async def test_public_link_qr_code_and_page_data(signaling_server, http, mint) -> None:
    server = await signaling_server()
    await call(
        http, "POST", server.make_url("/api/rooms"), ADMIN, json={"room": "council", "title": "Budget"}
    )
    url = server.make_url("/api/rooms/council/public")
    assert (await call(http, "GET", url))[0] == 401
    assert (await call(http, "GET", url, bearer(mint("council", "hall-a", "venue"))))[0] == 403
    assert (await call(http, "GET", url, bearer(mint("other", "chair", "chair"))))[0] == 403
    status, info = await call(http, "GET", url, bearer(mint("council", "chair", "chair")))
    assert status == 200 and info["broadcasting"] is False
    code = info["code"]
    assert info["url"] == str(server.make_url(f"/w/{code}"))
    assert info["qr_svg"] == str(server.make_url(f"/w/{code}/qr.svg"))
    assert "council" not in code and len(code) == 10
    status, admin_info = await call(http, "GET", url, ADMIN)
    assert status == 200 and admin_info["url"] == info["url"]  # the same link, whoever asks

    # The QR code needs no login (an <img> sends no Authorization): SVG and PNG.
    async with http.get(info["qr_svg"]) as resp:
        assert resp.status == 200 and resp.content_type == "image/svg+xml"
        svg = ET.fromstring(await resp.read())
        assert svg.tag.endswith("svg") and any(e.tag.endswith("path") for e in svg.iter())
    async with http.get(info["qr_png"] + "?download=1") as resp:
        assert resp.status == 200 and (await resp.read()).startswith(b"\x89PNG\r\n\x1a\n")
        assert "attachment" in resp.headers["Content-Disposition"]

    # The page and its data, cacheable, without a token.
    async with http.get(info["url"]) as resp:
        page = await resp.text()
        assert resp.status == 200 and 'id="player"' in page and "<script>" not in page
        csp = resp.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "sha256" not in csp  # no inline script to allow
    status, data = await call(http, "GET", server.make_url(f"/api/public/{code}"))
    assert status == 200 and data["title"] == "Budget" and data["broadcasting"] is False
    assert data["playlist"] == "/live/council/index.m3u8" and data["ended"] is False
    for bad in ("nope", "x" * 10, code.upper() + "z"):
        assert (await call(http, "GET", server.make_url(f"/w/{bad}")))[0] == 404
        assert (await call(http, "GET", server.make_url(f"/api/public/{bad}")))[0] == 404

    # Viewers say they are watching: the count follows (counted every few seconds).
    watching = server.make_url(f"/api/public/{code}/watching")
    status, count = await call(http, "POST", watching, params={"viewer": "viewer-0001"})
    assert status == 200 and count["viewers"] == 1
    assert (await call(http, "POST", watching, params={"viewer": "../../x"}))[0] == 400


async def test_patch_room_sets_what_the_public_sees_and_bad_input_changes_nothing(
    signaling_server, http, mint
) -> None:
    server = await signaling_server()
    await call(http, "POST", server.make_url("/api/rooms"), ADMIN, json={"room": "council"})
    chair = bearer(mint("council", "chair", "chair"))
    room_url = server.make_url("/api/rooms/council")
    body = {
        "title": "第十二届委员会第三次会议",
        "topic": "城市更新条例草案",
        "starts_at": 1764234000,
        "background": "草案全文: https://example.org/draft\n意见征集至 12 月 10 日",
        "auto_broadcast": True,
    }
    status, result = await call(http, "PATCH", room_url, chair, json=body)
    assert status == 200, result
    status, room = await call(http, "GET", room_url, chair)
    assert room["title"] == body["title"] and room["topic"] == body["topic"]
    assert room["starts_at"] == 1764234000 and room["background"] == body["background"]
    assert room["auto_broadcast"] is True
    version = room["version"]
    for bad in (
        {"title": "x" * 121},
        {"topic": 5},
        {"starts_at": "tomorrow"},
        {"starts_at": True},
        {"title": "ok", "background": "x" * 5000},  # one bad field: the title does not change either
        {"colour": "red"},
        {},
    ):
        status, err = await call(http, "PATCH", room_url, chair, json=bad)
        assert status == 400 and err["error"] in ("bad_request", "bad_json"), (bad, err)
    status, room = await call(http, "GET", room_url, chair)
    assert room["version"] == version and room["title"] == body["title"]
    assert (await call(http, "PATCH", room_url, bearer(mint("council", "v", "venue")), json={"topic": "x"}))[
        0
    ] == 403
    status, _ = await call(http, "PATCH", room_url, ADMIN, json={"starts_at": None, "topic": ""})
    assert status == 200
    status, room = await call(http, "GET", room_url, chair)
    assert room["starts_at"] is None and room["topic"] == "" and room["title"] == body["title"]


async def test_hls_files_carry_cache_headers_and_nothing_else_is_served(
    signaling_server, http, settings
) -> None:
    server = await signaling_server()
    directory = live_dir(settings, "council")
    directory.mkdir(parents=True)
    (directory / "index.m3u8").write_text("#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\nseg-00001.ts\n")
    (directory / "seg-00001.ts").write_bytes(b"G" + bytes(187))
    (directory / "secret.txt").write_text("no")
    async with http.get(server.make_url("/live/council/index.m3u8")) as resp:
        assert resp.status == 200 and resp.content_type == "application/vnd.apple.mpegurl"
        assert resp.headers["Cache-Control"] == "public, max-age=1"
        assert (await resp.text()).startswith("#EXTM3U")
    async with http.get(server.make_url("/live/council/seg-00001.ts")) as resp:
        assert resp.status == 200 and resp.content_type == "video/mp2t"
        assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert len(await resp.read()) == 188
    for path in (
        "/live/council/secret.txt",
        "/live/council/seg-00002.ts",
        "/live/other/index.m3u8",
        "/live/..%2Fdata/index.m3u8",
        "/live/council/..%2F..%2Fsecret",
    ):
        async with http.get(server.make_url(path)) as resp:
            assert resp.status == 404, path


async def test_auto_broadcast_starts_the_broadcast_with_the_first_join(
    signaling_server, http, mint, connect
) -> None:
    server = await signaling_server()
    await call(http, "POST", server.make_url("/api/rooms"), ADMIN, json={"room": "council"})
    room_url = server.make_url("/api/rooms/council")
    status, _ = await call(http, "PATCH", room_url, ADMIN, json={"auto_broadcast": True})
    assert status == 200
    status, room = await call(http, "GET", room_url, ADMIN)
    assert room["auto_broadcast"] is True and room["broadcast"]["active"] is False
    venue = await connect(server, mint("council", "hall-a", "venue"))
    await venue.ok("join")
    event = await venue.wait_for(lambda m: m.get("type") == "event" and m["event"]["kind"] == "broadcast")
    assert event["event"]["active"] is True
    # Stopped by the chair, it stays stopped when the next one joins.
    status, _ = await call(
        http, "POST", server.make_url("/api/rooms/council/commands"), ADMIN, json={"type": "stop_broadcast"}
    )
    assert status == 200
    other = await connect(server, mint("council", "hall-b", "venue"))
    await other.ok("join")
    await asyncio.sleep(0.5)  # an auto-start would be a task of its own: give it its chance
    status, room = await call(http, "GET", room_url, ADMIN)
    assert room["broadcast"]["active"] is False and room["broadcast"]["stopped_at"]


def test_public_codes_and_the_viewer_count() -> None:
    from signaling.public import VIEWER_TTL_S, PublicSite, public_code

    a, b = public_code("s" * 40, "council"), public_code("s" * 40, "council-2")
    assert a != b and len(a) == len(b) == 10 and a == public_code("s" * 40, "council")
    assert public_code("t" * 40, "council") != a  # another server's secret, another link
    site = PublicSite(store=None, secret="s" * 40)  # type: ignore[arg-type]
    assert site.watching("council", "viewer-001", 0.0) == 1
    assert site.watching("council", "viewer-002", 1.0) == 2
    assert site.watching("council", "viewer-001", 2.0) == 2  # the same viewer again
    assert site.watching("council", None, 10.0) == 2  # recounted after a few seconds
    assert site.watching("council", "viewer-002", 60.0) == 2
    assert site.watching("council", None, 2.0 + VIEWER_TTL_S + 1) == 1  # viewer-001 went quiet
