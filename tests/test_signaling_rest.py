"""The REST API for integrations, over a real server: tokens, rooms, program, commands, stats, pages."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from signaling.app import web_dir
from signaling.tokens import mint_token, verify_token
from tests.conftest import TEST_ADMIN_KEY, TEST_SECRET

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
        body = await resp.json() if resp.content_type == "application/json" else await resp.text()
        return resp.status, body


async def test_post_tokens_needs_admin_key(signaling_server, http, mint) -> None:
    server = await signaling_server()
    url = server.make_url("/api/tokens")
    body = {"room": "council", "identity": "hall-a", "name": "Hall A", "role": "venue", "ttl": 600}
    status, result = await call(http, "POST", url, ADMIN, json=body)
    assert status == 201
    claims = verify_token(TEST_SECRET, result["token"])
    assert (claims.room, claims.identity, claims.name, claims.role) == (
        "council",
        "hall-a",
        "Hall A",
        "venue",
    )
    assert claims.expires_at - claims.issued_at == 600
    assert result["page"].startswith("/venue?token=")
    assert (await call(http, "POST", url, json=body))[0] == 401
    assert (await call(http, "POST", url, bearer(mint("council", "c", "chair")), json=body))[0] == 403
    status, err = await call(http, "POST", url, ADMIN, json={**body, "role": "king"})
    assert status == 400 and err["error"] == "bad_request" and "role" in err["message"]
    status, err = await call(http, "POST", url, ADMIN, json={**body, "identity": "../etc"})
    assert status == 400
    status, err = await call(http, "POST", url, ADMIN, data="{nope")
    assert status == 400 and err["error"] == "bad_json"


async def test_create_room_ahead_of_meeting(signaling_server, http, mint) -> None:
    server = await signaling_server()
    url = server.make_url("/api/rooms")
    status, state = await call(http, "POST", url, ADMIN, json={"room": "council"})
    assert status == 201 and state["room"] == "council" and state["version"] == 0
    status, err = await call(http, "POST", url, ADMIN, json={"room": "council"})
    assert status == 409 and err["error"] == "conflict"
    # A chair token creates its own room only; other roles may not.
    assert (await call(http, "POST", url, bearer(mint("budget", "c", "chair")), json={"room": "budget"}))[
        0
    ] == 201
    assert (await call(http, "POST", url, bearer(mint("budget", "c", "chair")), json={"room": "other"}))[
        0
    ] == 403
    assert (await call(http, "POST", url, bearer(mint("x", "v", "venue")), json={"room": "x"}))[0] == 403
    assert (await call(http, "POST", url, json={"room": "y"}))[0] == 401
    status, err = await call(http, "POST", url, ADMIN, json={"room": "bad room!"})
    assert status == 400 and "room" in err["message"]
    status, state = await call(http, "POST", url, ADMIN, json={"room": "plenary", "title": "全体会议"})
    assert status == 201 and state["title"] == "全体会议"
    status, err = await call(http, "POST", url, ADMIN, json={"room": "p2", "title": 7})
    assert status == 400 and "title" in err["message"]
    status, _ = await call(
        http,
        "POST",
        server.make_url("/api/rooms/plenary/commands"),
        ADMIN,
        json={"type": "set_title", "title": "新"},
    )
    assert status == 200
    assert (await call(http, "GET", server.make_url("/api/rooms/plenary"), ADMIN))[1]["title"] == "新"
    status, listing = await call(http, "GET", url, ADMIN)
    assert [r["room"] for r in listing["rooms"]] == ["budget", "council", "plenary"]
    status, listing = await call(http, "GET", url, bearer(mint("budget", "c", "chair")))
    assert [r["room"] for r in listing["rooms"]] == ["budget"]


async def test_program_over_rest_reaches_the_room(signaling_server, connect, http, mint) -> None:
    server = await signaling_server()
    venue = await connect(server, mint("council", "hall-a", "venue"))
    await venue.ok("join")
    room_url = server.make_url("/api/rooms/council")
    status, room = await call(http, "GET", room_url, ADMIN)
    assert status == 200
    assert room["program"] == {"layout": "single", "slots": [None]}
    assert [p["identity"] for p in room["participants"]] == ["hall-a"]
    version = room["version"]
    chair = bearer(mint("council", "chair", "chair"))
    program_url = server.make_url("/api/rooms/council/program")
    status, result = await call(
        http, "PUT", program_url, chair, json={"layout": "pip", "slots": [None, "hall-a"]}
    )
    assert status == 200 and result["version"] == version + 1
    event = await venue.wait_for(lambda m: m["type"] == "event" and m["event"]["kind"] == "program")
    assert event["event"]["program"] == {"layout": "pip", "slots": [None, "hall-a"]}
    assert event["event"]["by"] == "chair"
    status, room = await call(http, "GET", room_url, ADMIN)
    assert room["version"] == version + 1 and room["program"]["slots"] == [None, "hall-a"]
    # Refusals change nothing.
    refusals = [
        (bearer(mint("council", "hall-b", "venue")), {"layout": "single", "slots": []}, 403),
        (bearer(mint("other", "chair", "chair")), {"layout": "single", "slots": []}, 403),
        (
            bearer(mint_token(TEST_SECRET, "council", "c", "C", "chair", 1, now=1000)),
            {"layout": "single"},
            401,
        ),
        ({}, {"layout": "single", "slots": []}, 401),
        (chair, {"layout": "grid-5x5", "slots": []}, 400),
        (chair, {"layout": "single"}, 400),
        (chair, {"layout": "single", "slots": ["ghost"]}, 404),
        (chair, {"layout": "single", "slots": [], "extra": True}, 400),
    ]
    for headers, body, expected in refusals:
        status, err = await call(http, "PUT", program_url, headers, json=body)
        assert status == expected, (body, err)
        assert err["error"] and err["message"]
    status, room = await call(http, "GET", room_url, ADMIN)
    assert room["version"] == version + 1
    status, _ = await call(
        http,
        "PUT",
        server.make_url("/api/rooms/nowhere/program"),
        ADMIN,
        json={"layout": "single", "slots": []},
    )
    assert status == 404


async def test_chair_commands_over_rest(signaling_server, connect, http, mint) -> None:
    server = await signaling_server()
    venue = await connect(server, mint("council", "hall-a", "venue"))
    await venue.ok("join")
    url = server.make_url("/api/rooms/council/commands")
    status, result = await call(
        http, "POST", url, ADMIN, json={"type": "mute", "identity": "hall-a", "muted": True}
    )
    assert status == 200
    event = await venue.wait_for(lambda m: m["type"] == "event" and m["event"]["kind"] == "mute")
    assert event["event"]["muted"] is True and event["event"]["by"] is None
    status, result = await call(http, "POST", url, ADMIN, json={"type": "start_recording"})
    assert status == 200 and result["recording_id"].startswith("council-")
    status, err = await call(http, "POST", url, ADMIN, json={"type": "start_recording"})
    assert status == 409
    status, err = await call(http, "POST", url, ADMIN, json={"type": "raise_hand"})
    assert status == 400 and err["error"] == "unknown_type"
    status, err = await call(
        http, "POST", url, bearer(mint("council", "v2", "venue")), json={"type": "revoke_floor"}
    )
    assert status == 403
    status, result = await call(http, "POST", url, ADMIN, json={"type": "remove", "identity": "hall-a"})
    assert status == 200
    assert await venue.closed() == 4410


async def test_stats_need_admin_key(signaling_server, connect, http, mint) -> None:
    server = await signaling_server()
    client = await connect(server, mint("council", "hall-a", "venue"))
    await client.ok("join")
    status, stats = await call(http, "GET", server.make_url("/api/stats"), ADMIN)
    assert status == 200
    assert (stats["rooms"], stats["participants"], stats["connections"]) == (1, 1, 1)
    assert stats["media"] == {"backend": "null"}
    assert (await call(http, "GET", server.make_url("/api/stats"), bearer(mint("council", "c", "chair"))))[
        0
    ] == 403
    assert (await call(http, "GET", server.make_url("/api/stats")))[0] == 401


async def test_pages_and_static_files(signaling_server, http) -> None:
    server = await signaling_server()
    for route, filename in [("/", "index.html"), ("/venue", "venue.html"), ("/chair", "chair.html")]:
        assert (web_dir() / filename).is_file()  # the pages are part of the product
        async with http.get(server.make_url(route)) as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
            assert resp.headers["Referrer-Policy"] == "no-referrer"
            document = await resp.text()
        # One shared head (web/head.html) composed with the page's body: its title and script.
        page = filename.removesuffix(".html")
        assert document.startswith("<!doctype html>") and document.count("<head>") == 1
        assert f'<title data-i18n="{page}.title">' in document
        assert f'<script type="module" src="/static/{page}.js"></script>' in document
        assert f'data-page="{page}"' in document and "{page}" not in document
    async with http.get(server.make_url("/static/../../pyproject.toml")) as resp:
        assert resp.status in (403, 404)


def test_openapi_document_lists_every_rest_route(settings) -> None:
    import re
    from pathlib import Path

    from signaling.app import create_app

    doc = (Path(__file__).resolve().parents[1] / "docs" / "openapi.yaml").read_text(encoding="utf-8")
    documented = set(re.findall(r"^  (/[^:\s]+):$", doc, re.M))
    app = create_app(settings)
    # The public page's own API (comments, likes, events) too; the page and its QR code are files.
    routes = {
        r.resource.canonical
        for r in app.router.routes()
        if r.resource is not None
        and r.resource.canonical.startswith(("/api/", "/healthz", "/metrics", "/w/{code}/"))
        and "qr" not in r.resource.canonical
    }
    assert routes == documented
