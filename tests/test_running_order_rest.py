"""The running order on a real server (signaling/running_order.py): the roster as CSV over REST,
its invitations (tokens carrying kind and sector, valid for the meeting's day), guests, the
agenda and its commands over REST and the WebSocket, authorised like the other commands."""

from __future__ import annotations

import asyncio
import csv
import io
import sys
import time
from asyncio.subprocess import PIPE
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs, urlparse

import aiohttp
from conftest import TEST_ADMIN_KEY, TEST_SECRET

from conference.roster import MAX_BYTES
from signaling.tokens import verify_token

ROSTER = (
    "identity,name,role,kind,sector,organisation\n"
    "hall-a,第一分会场,venue,venue,,市政府\n"
    "wang,王委员,member,member,教育界,第一中学\n"
    "yang,杨主任,venue,department,医药卫生界,市疾病预防控制中心\n"
).encode()
ADMIN = {"Authorization": f"Bearer {TEST_ADMIN_KEY}"}


async def call(
    server: Any, method: str, path: str, token: str = TEST_ADMIN_KEY, **kw: Any
) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method,
            server.make_url(path),
            headers={"Authorization": f"Bearer {token}", **kw.pop("headers", {})},
            **kw,
        ) as res,
    ):
        body = await res.json() if res.content_type == "application/json" else await res.read()
        return res.status, body, res.headers


async def put_roster(
    server: Any, data: bytes, token: str = TEST_ADMIN_KEY, query: str = ""
) -> tuple[int, Any]:
    status, body, _ = await call(
        server,
        "PUT",
        f"/api/rooms/council/roster{query}",
        token,
        data=data,
        headers={"Content-Type": "text/csv"},
    )
    return status, body


async def test_roster_import_export_and_refusals_that_change_nothing(signaling_server, mint) -> None:
    server = await signaling_server()
    chair = mint("council", "chair", "chair")
    status, body = await put_roster(server, ROSTER, chair)  # the room need not exist yet
    assert status == 200 and body["entries"] == 3 and body["allow_guests"] is True
    status, exported, headers = await call(server, "GET", "/api/rooms/council/roster", chair)
    assert status == 200 and headers["Content-Type"] == "text/csv; charset=utf-8"
    rows = list(csv.DictReader(io.StringIO(exported.decode("utf-8-sig"))))
    assert [(r["identity"], r["name"], r["sector"]) for r in rows] == [
        ("hall-a", "第一分会场", ""),
        ("wang", "王委员", "教育界"),
        ("yang", "杨主任", "医药卫生界"),
    ]
    # Re-importing the export gives the same roster.
    assert (await put_roster(server, exported, chair))[0] == 200
    assert (await call(server, "GET", "/api/rooms/council/roster", chair))[1] == exported

    junk = b"identity,name\n" + (b"\x8f\x00junk" * 100 + b"\n") * 10_000  # ~10 MB
    reached = junk[:MAX_BYTES].count(b"\n") + 1
    for data, where in [
        (junk, f"line {reached}: the roster is larger than"),
        (ROSTER + "wang,王委员,member,,,\n".encode(), "line 5: identity 'wang' again (first on line 3)"),
        ("identity,name\nli,李\n".encode("gbk"), "line 2: not UTF-8"),
        (b"id,name\nli,x\n", "line 1: unknown columns ['id']"),
    ]:
        status, body = await put_roster(server, data, chair)
        assert status == 400 and body["error"] == "bad_request" and body["message"].startswith(where), body
    assert (await call(server, "GET", "/api/rooms/council/roster", chair))[1] == exported  # unchanged

    status, body, _ = await call(server, "PUT", "/api/rooms/council/roster", chair, json={"a": 1})
    assert status == 400 and "text/csv" in body["message"]
    venue = mint("council", "hall-a", "venue")
    assert (await put_roster(server, ROSTER, venue))[0] == 403
    assert (await call(server, "GET", "/api/rooms/council/roster", venue))[0] == 403
    assert (await call(server, "GET", "/api/rooms/council/roster/links", venue))[0] == 403
    assert (await put_roster(server, ROSTER, mint("other", "chair", "chair")))[0] == 403
    assert (await call(server, "GET", "/api/rooms/council/roster", "not-a-token"))[0] == 401


async def test_invitations_carry_kind_and_sector_and_guests_are_marked_or_refused(
    signaling_server, connect, mint
) -> None:
    server = await signaling_server()
    assert (await put_roster(server, ROSTER))[0] == 200
    status, body, headers = await call(server, "GET", "/api/rooms/council/roster/links")
    assert status == 200 and headers["Cache-Control"] == "no-store"
    links = {link["identity"]: link for link in body["links"]}
    assert list(links) == ["hall-a", "wang", "yang"]
    wang = links["wang"]
    assert urlparse(wang["url"]).path == "/phone" and urlparse(links["hall-a"]["url"]).path == "/venue"
    token = parse_qs(urlparse(wang["url"]).query)["token"][0]
    claims = verify_token(TEST_SECRET, token)
    assert (claims.identity, claims.name, claims.role, claims.kind, claims.sector) == (
        "wang",
        "王委员",
        "member",
        "member",
        "教育界",
    )
    # Valid until the end of today (no scheduled start): local midnight.
    end = time.localtime(claims.expires_at)
    assert (end.tm_hour, end.tm_min, end.tm_sec) == (0, 0, 0) and 0 < claims.expires_at - time.time() <= 86400
    assert claims.expires_at == wang["expires_at"]

    status, sheet, _ = await call(server, "GET", "/api/rooms/council/roster/links?format=csv")
    rows = list(csv.DictReader(io.StringIO(sheet.decode("utf-8-sig"))))
    assert [r["url"] for r in rows] == [links[i]["url"] for i in links] and rows[1]["sector"] == "教育界"
    status, page, headers = await call(server, "GET", "/api/rooms/council/roster/links?format=html")
    text = page.decode()
    assert status == 200 and text.count("<svg") == 3 and "王委员" in text
    assert "member · 教育界 · 第一中学" in text
    assert "default-src 'none'" in headers["Content-Security-Policy"]

    # The invitation joins: what the console shows of the person comes with it.
    chair = await connect(server, mint("council", "chair", "chair"))
    await chair.ok("join")
    member = await connect(server, token)
    you = (await member.ok("join"))["you"]
    assert (you["kind"], you["sector"], you["organisation"], you["guest"]) == (
        "member",
        "教育界",
        "第一中学",
        False,
    )
    guest = await connect(server, mint("council", "visitor", "viewer", "访客"))
    assert (await guest.ok("join"))["you"]["guest"] is True
    joined = chair.events("participant_joined")
    assert [(e["participant"]["identity"], e["participant"]["guest"]) for e in joined][-2:] == [
        ("wang", False),
        ("visitor", True),
    ]

    # The room stops admitting guests: one is refused, the roster's people still come in.
    assert (await chair.ok("allow_guests", allowed=False))["version"] > 0
    refused = await (await connect(server, mint("council", "stranger", "venue"))).request("join")
    assert refused["type"] == "error" and refused["code"] == "forbidden" and "roster" in refused["message"]
    hall = await connect(server, mint("council", "hall-a", "venue"))
    assert (await hall.ok("join"))["you"]["guest"] is False
    forbidden = await hall.request("allow_guests", allowed=True)
    assert forbidden["type"] == "error" and forbidden["code"] == "forbidden"


AGENDA = {
    "items": [
        {
            "title": "开幕",
            "kind": "speech",
            "planned_s": 300,
            "preset": {"layout": "single", "slots": ["hall-a"]},
        },
        {"title": "短片", "kind": "film", "planned_s": 120, "clip": "clip-7"},
        {
            "title": "答复",
            "kind": "department_answers",
            "planned_s": 900,
            "preset": {"layout": "side-by-side", "slots": ["hall-b", "absent"]},
        },
    ]
}


async def test_agenda_over_rest_and_the_socket(signaling_server, connect, mint) -> None:
    server = await signaling_server()
    chair_token = mint("council", "chair", "chair")
    status, body, _ = await call(server, "PUT", "/api/rooms/council/agenda", chair_token, json=AGENDA)
    assert (
        status == 200
        and body["current"] is None
        and [i["title"] for i in body["items"]] == ["开幕", "短片", "答复"]
    )
    assert body["items"][2]["preset"] == {"layout": "side-by-side", "slots": ["hall-b", "absent"]}
    bad = {"items": [AGENDA["items"][0], {"title": "x", "kind": "party"}]}
    status, body, _ = await call(server, "PUT", "/api/rooms/council/agenda", chair_token, json=bad)
    assert status == 400 and "items[1]: kind 'party'" in body["message"]
    status, body, _ = await call(server, "PUT", "/api/rooms/council/agenda", chair_token, json={"item": []})
    assert status == 400

    chair = await connect(server, chair_token)
    joined = await chair.ok("join")
    assert [i["title"] for i in joined["room"]["agenda"]] == ["开幕", "短片", "答复"]
    venue = await connect(server, mint("council", "hall-b", "venue"))
    await venue.ok("join")
    first = await chair.ok("next_item")
    assert first["index"] == 0 and first["title"] == "开幕"
    assert first["next_program"] == {"layout": "single", "slots": [None]}  # hall-a is not here
    event = await venue.wait_for(lambda m: m["type"] == "event" and m["event"]["kind"] == "agenda_item")
    assert event["event"]["index"] == 0 and event["event"]["title"] == "开幕"

    status, body, _ = await call(
        server,
        "POST",
        "/api/rooms/council/commands",
        chair_token,
        json={"type": "goto_item", "index": 2, "take": True},
    )
    assert status == 200 and body["program"] == {"layout": "side-by-side", "slots": ["hall-b", None]}
    status, body, _ = await call(
        server, "GET", "/api/rooms/council/agenda", mint("council", "hall-b", "venue")
    )
    assert status == 200 and body["current"] == 2 and body["started_at"] > 0
    status, body, _ = await call(server, "POST", "/api/rooms/council/commands", json={"type": "next_item"})
    assert status == 409  # the last item is current
    # The public page's data: the agenda's titles and the current item (no login).
    status, public, _ = await call(server, "GET", "/api/rooms/council/public", chair_token)
    status, page, _ = await call(server, "GET", f"/api/public/{public['code']}", "")
    assert status == 200 and page["current_item"] == 2
    assert page["agenda"] == [
        {k: i.get(k, 0) for k in ("title", "kind", "planned_s")} for i in AGENDA["items"]
    ]

    assert (await venue.request("next_item"))["code"] == "forbidden"
    assert (await venue.request("goto_item", index=0))["code"] == "forbidden"
    status, _, _ = await call(
        server, "PUT", "/api/rooms/council/agenda", mint("council", "hall-b", "venue"), json=AGENDA
    )
    assert status == 403
    assert (await chair.request("goto_item", index=7))["code"] == "not_found"
    assert (await chair.request("goto_item", index="1"))["code"] == "bad_request"

    await chair.ok("save_preset", name="两会场", layout="side-by-side", slots=["hall-b", "hall-a"])
    preset = await venue.wait_for(lambda m: m["type"] == "event" and m["event"]["kind"] == "preset")
    assert preset["event"]["preset"] == {"layout": "side-by-side", "slots": ["hall-b", "hall-a"]}
    status, body, _ = await call(server, "GET", "/api/rooms/council/agenda", chair_token)
    assert body["presets"] == {"两会场": {"layout": "side-by-side", "slots": ["hall-b", "hall-a"]}}
    await chair.ok("delete_preset", name="两会场")
    assert (await chair.request("delete_preset", name="两会场"))["code"] == "not_found"


async def cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "signaling", "roster", *args, stdout=PIPE, stderr=PIPE
    )
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def test_the_roster_command_imports_exports_and_prints_the_links(signaling_server, tmp_path) -> None:
    server = await signaling_server()
    where = ["--server", str(server.make_url("")).rstrip("/"), "--admin-key", TEST_ADMIN_KEY]
    csv_file = tmp_path / "名单.csv"
    csv_file.write_bytes(ROSTER)
    code, out, err = await cli("import", "council", str(csv_file), "--no-guests", *where)
    assert code == 0 and "3 entries imported" in out, err
    code, out, _ = await cli("export", "council", *where)
    assert code == 0 and "wang,王委员,member,member,教育界,第一中学" in out
    code, out, _ = await cli("links", "council", *where)
    lines = [line.split("\t") for line in out.splitlines()]
    assert [line[:3] for line in lines] == [
        ["第一分会场", "-", "venue"],
        ["王委员", "教育界", "member"],
        ["杨主任", "医药卫生界", "department"],
    ]
    claims = verify_token(TEST_SECRET, parse_qs(urlparse(lines[1][3]).query)["token"][0])
    assert (claims.identity, claims.sector) == ("wang", "教育界")
    code, _, _ = await cli("links", "council", "--format", "html", "-o", str(tmp_path / "sheet.html"), *where)
    assert code == 0 and (tmp_path / "sheet.html").read_text().count("<svg") == 3
    status, body, _ = await call(server, "GET", "/api/rooms/council")
    assert status == 200
    assert body["allow_guests"] is False

    csv_file.write_bytes(ROSTER + b"wang,dup\n")
    code, _, err = await cli("import", "council", str(csv_file), *where)
    assert code == 1 and "line 5: 2 fields where the header has 6" in err


async def test_the_recording_has_a_chapter_per_agenda_item(signaling_server, connect, mint, settings) -> None:
    server = await signaling_server(replace(settings, recording_auto_render=False))
    chair_token = mint("council", "chair", "chair", "主持人")
    assert (await call(server, "PUT", "/api/rooms/council/agenda", chair_token, json=AGENDA))[0] == 200
    chair = await connect(server, chair_token)
    await chair.ok("join")
    recording = (await chair.ok("start_recording"))["recording_id"]
    for _ in AGENDA["items"]:
        await asyncio.sleep(0.3)
        await chair.ok("next_item", take=True)
    await asyncio.sleep(0.3)
    await chair.ok("stop_recording")
    status, body, _ = await call(server, "GET", f"/api/recordings/{recording}?lang=en", chair_token)
    assert status == 200
    titles = [c["title"] for c in body["timeline"]]
    assert titles[1:] == ["Item 1: 开幕", "Item 2: 短片", "Item 3: 答复"], titles
    assert [round(c["t"], 1) for c in body["timeline"][1:]] == sorted(
        round(c["t"], 1) for c in body["timeline"][1:]
    )
