"""The signaling server over a real socket: authentication, join, the program, reconnects, bad input."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace

import aiohttp
import jwt
import pytest

from conference.layouts import MAX_SLOTS
from conference.media import NullMedia, NullSession
from signaling.app import STORE_KEY
from signaling.tokens import mint_token
from tests.conftest import TEST_SECRET


async def test_healthz_and_public_endpoints(signaling_server) -> None:
    server = await signaling_server()
    async with aiohttp.ClientSession() as http:
        async with http.get(server.make_url("/healthz")) as resp:
            assert resp.status == 200
            body = await resp.json()
            assert body["status"] == "ok" and body["connections"] == 0
        async with http.get(server.make_url("/api/layouts")) as resp:
            names = [layout["name"] for layout in await resp.json()]
            assert {"single", "pip", "side-by-side", "grid-2x2", "grid-3x3", "speaker-1+5"} <= set(names)
        async with http.get(server.make_url("/api/config")) as resp:
            config = await resp.json()
            assert config["max_endpoints"] == 50
            assert "secret" not in json.dumps(config) and "admin" not in json.dumps(config)
        async with http.get(server.make_url("/api/protocol/schema")) as resp:
            schema = await resp.json()
            assert "set_program" in schema["$defs"]


@pytest.mark.parametrize(
    ("token", "query", "code", "reason"),
    [
        (None, {}, 4401, "missing token"),
        ("not-a-jwt", {}, 4401, "malformed token"),
        ("forged", {}, 4401, "invalid signature"),
        ("expired", {}, 4401, "token expired"),
        ("bad-role", {}, 4401, "invalid claims"),
        ("valid", {"room": "other"}, 4403, "token is for another room"),
    ],
)
async def test_bad_tokens_close_the_socket_before_any_room_state(
    signaling_server, mint, token, query, code, reason
) -> None:
    server = await signaling_server()
    bad_role = jwt.encode(
        {
            "room": "council",
            "sub": "x",
            "role": "king",
            "iat": int(time.time()),
            "exp": int(time.time()) + 60,
        },
        TEST_SECRET,
        algorithm="HS256",
    )
    tokens = {
        None: None,
        "not-a-jwt": "not-a-jwt",
        "forged": mint_token("another-secret-of-at-least-32-bytes!!", "council", "x", "X", "chair", 60),
        "expired": mint_token(TEST_SECRET, "council", "x", "X", "chair", 1, now=1000),
        "bad-role": bad_role,
        "valid": mint("council", "x", "chair"),
    }
    params = dict(query)
    if tokens[token] is not None:
        params["token"] = tokens[token]
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(server.make_url("/ws"), params=params)
        frame = await ws.receive(timeout=5)
        assert frame.type == aiohttp.WSMsgType.CLOSE
        assert frame.data == code
        assert reason in frame.extra
        await ws.close()
    # The room was never created: nothing reached room state.
    assert await server.app[STORE_KEY].list_rooms() == []


async def test_join_reply_has_snapshot_ice_servers_permissions(
    signaling_server, connect, mint, settings
) -> None:
    ice = [{"urls": ["turn:turn.example.org:3478"], "username": "u", "credential": "p"}]
    server = await signaling_server(replace(settings, ice_servers=ice))
    chair = await connect(server, mint("council", "chair", "chair", name="The Chair"))
    result = await chair.ok("join")
    assert result["protocol"] == 1
    assert result["you"]["identity"] == "chair" and result["you"]["name"] == "The Chair"
    assert "set_program" in result["permissions"] and "recording_control" in result["permissions"]
    assert result["ice_servers"] == ice
    assert result["room"]["room"] == "council"
    assert result["room"]["version"] >= 1
    assert [p["identity"] for p in result["room"]["participants"]] == ["chair"]
    assert result["limits"]["max_message_bytes"] == 262144
    assert {layout["name"] for layout in result["layouts"]} >= {"single", "grid-3x3"}
    venue = await connect(server, mint("council", "hall-a", "venue"))
    vres = await venue.ok("join")
    assert vres["permissions"] == ["publish_audio", "publish_video", "receive_program", "request_floor"]
    joined = await chair.wait_for(
        lambda m: (
            m["type"] == "event"
            and m["event"]["kind"] == "participant_joined"
            and m["event"]["participant"]["identity"] == "hall-a"
        )
    )
    assert joined["event"]["version"] == vres["room"]["version"]


async def test_member_defaults_to_phone_with_camera_off_viewer_publishes_nothing(
    signaling_server, connect, mint
) -> None:
    server = await signaling_server()
    member = await connect(server, mint("council", "m1", "member"))
    you = (await member.ok("join"))["you"]
    assert (you["device"], you["publish_audio"], you["publish_video"]) == ("phone", True, False)
    viewer = await connect(server, mint("council", "v1", "viewer"))
    you = (await viewer.ok("join", publish={"audio": True, "video": True}))["you"]
    assert (you["publish_audio"], you["publish_video"]) == (False, False)


async def test_program_change_is_broadcast_in_version_order(signaling_server, connect, mint) -> None:
    server = await signaling_server()
    chair = await connect(server, mint("council", "chair", "chair"))
    await chair.ok("join")
    venues = []
    for name in ("hall-a", "hall-b", "hall-c"):
        client = await connect(server, mint("council", name, "venue"))
        await client.ok("join")
        venues.append(client)
    layouts = [
        ("side-by-side", ["hall-a", "hall-b"]),
        ("grid-2x2", ["hall-c", None, "hall-a"]),
        ("single", ["hall-b"]),
    ]
    versions = []
    for layout, slots in layouts:
        result = await chair.ok("set_program", layout=layout, slots=slots)
        versions.append(result["version"])
        assert result["program"]["layout"] == layout
    assert versions == sorted(versions) and len(set(versions)) == 3
    for venue in venues:
        await venue.wait_for(lambda m: m["type"] == "event" and m["event"]["version"] == versions[-1])
        programs = venue.events("program")
        assert [e["program"]["layout"] for e in programs] == ["side-by-side", "grid-2x2", "single"]
        assert programs[1]["program"]["slots"] == ["hall-c", None, "hall-a", None]  # padded to the layout
        seen = [e["version"] for e in venue.events()]
        # Versions go up by one with no gaps from the first event this venue saw.
        assert seen == list(range(seen[0], seen[0] + len(seen)))


async def test_room_full_refuses_the_extra_endpoint(signaling_server, connect, mint, settings) -> None:
    server = await signaling_server(replace(settings, max_endpoints=3))
    for i in range(3):
        client = await connect(server, mint("small", f"p{i}", "venue"))
        await client.ok("join")
    extra = await connect(server, mint("small", "p3", "venue"))
    answer = await extra.request("join")
    assert answer["type"] == "error" and answer["code"] == "room_full"
    # The refused endpoint's socket stays open and can still talk.
    assert (await extra.ok("ping"))["pong"] is True
    # An identity already in the room reconnects even when the room is full.
    again = await connect(server, mint("small", "p0", "venue"))
    assert (await again.ok("join"))["you"]["identity"] == "p0"


async def test_default_room_holds_50_and_refuses_the_51st(signaling_server, connect, mint) -> None:
    server = await signaling_server()
    clients = []
    for i in range(50):
        client = await connect(server, mint("big", f"e{i:02d}", "member"))
        await client.ok("join")
        clients.append(client)
    extra = await connect(server, mint("big", "e50", "member"))
    answer = await extra.request("join")
    assert answer["code"] == "room_full" and "50" in answer["message"]


async def test_reconnect_with_same_identity_replaces_old_connection(signaling_server, connect, mint) -> None:
    server = await signaling_server()
    chair = await connect(server, mint("council", "chair", "chair"))
    await chair.ok("join")
    first = await connect(server, mint("council", "hall-a", "venue"))
    await first.ok("join")
    await chair.ok("mute", identity="hall-a", muted=True)
    await chair.ok("set_program", layout="single", slots=["hall-a"])
    second = await connect(server, mint("council", "hall-a", "venue"))
    result = await second.ok("join")
    await first.wait_for(lambda m: m["type"] == "replaced")
    assert await first.closed() == 4409
    # The chair's decisions survive; the program still shows the venue.
    assert result["you"]["muted"] is True
    assert result["room"]["program"]["slots"] == ["hall-a"]
    await chair.wait_for(lambda m: m["type"] == "event" and m["event"]["kind"] == "participant_rejoined")
    # The new connection works and the old one's close did not disconnect the participant: the
    # room's state itself (not a `sync` reply, which carries events rather than a snapshot here).
    await asyncio.sleep(0.2)
    state = await server.app[STORE_KEY].get("council")
    assert state is not None and state.participants["hall-a"].connected is True
    assert not [e for e in chair.events("participant_connection") if e["identity"] == "hall-a"]
    await second.ok("raise_hand")


async def test_leave_and_join_again(signaling_server, connect, mint) -> None:
    server = await signaling_server()
    chair = await connect(server, mint("council", "chair", "chair"))
    await chair.ok("join")
    venue = await connect(server, mint("council", "hall-a", "venue"))
    await venue.ok("join")
    assert await venue.ok("leave") == {}
    left = await chair.wait_for(lambda m: m["type"] == "event" and m["event"]["kind"] == "participant_left")
    assert left["event"]["reason"] == "left"
    assert (await venue.request("raise_hand"))["code"] == "not_joined"
    await venue.ok("join")


async def test_dropped_connection_keeps_place_for_grace_then_times_out(
    signaling_server, connect, mint, settings
) -> None:
    server = await signaling_server(replace(settings, reconnect_grace_s=0.5))
    chair = await connect(server, mint("council", "chair", "chair"))
    await chair.ok("join")
    venue = await connect(server, mint("council", "hall-a", "venue"))
    await venue.ok("join")
    await chair.ok("set_program", layout="single", slots=["hall-a"])
    await venue.close()
    drop = await chair.wait_for(
        lambda m: m["type"] == "event" and m["event"]["kind"] == "participant_connection"
    )
    assert drop["event"] == {**drop["event"], "identity": "hall-a", "connected": False}
    left = await chair.wait_for(lambda m: m["type"] == "event" and m["event"]["kind"] == "participant_left")
    assert left["event"]["reason"] == "timeout"
    assert left["event"]["at"] - drop["event"]["at"] >= 0.45
    program = chair.events("program")[-1]["program"]
    assert program["slots"] == [None]


async def test_reconnect_within_grace_keeps_slot(signaling_server, connect, mint, settings) -> None:
    server = await signaling_server(replace(settings, reconnect_grace_s=1.0))
    chair = await connect(server, mint("council", "chair", "chair"))
    await chair.ok("join")
    venue = await connect(server, mint("council", "hall-a", "venue"))
    await venue.ok("join")
    await chair.ok("set_program", layout="single", slots=["hall-a"])
    await venue.close()
    await chair.wait_for(lambda m: m["type"] == "event" and m["event"]["kind"] == "participant_connection")
    back = await connect(server, mint("council", "hall-a", "venue"))
    result = await back.ok("join")
    assert result["room"]["program"]["slots"] == ["hall-a"]
    await asyncio.sleep(1.3)  # past the grace period: the timer was cancelled
    assert not chair.events("participant_left")


async def test_bad_input_gets_error_replies_and_the_room_goes_on(signaling_server, connect, mint) -> None:
    server = await signaling_server()
    chair = await connect(server, mint("council", "chair", "chair"))
    await chair.ok("join")
    cases: list[tuple[str, str]] = [
        ("{not json", "bad_json"),
        ("[1, 2]", "bad_json"),
        (json.dumps({"id": 1}), "bad_request"),
        (json.dumps({"type": 5, "id": 2}), "bad_request"),
        (json.dumps({"type": "dance", "id": 3}), "unknown_type"),
        (json.dumps({"type": "set_program", "id": 4, "layout": "single"}), "bad_request"),
        (json.dumps({"type": "set_program", "id": 5, "layout": "single", "slots": "x"}), "bad_request"),
        (json.dumps({"type": "mute", "id": 6, "identity": "chair", "muted": "yes"}), "bad_request"),
        (
            json.dumps({"type": "mute", "id": 7, "identity": "chair", "muted": True, "extra": 1}),
            "bad_request",
        ),
        (json.dumps({"type": "set_program", "id": 8, "layout": "grid-5x5", "slots": []}), "unknown_layout"),
        (json.dumps({"type": "set_program", "id": 9, "layout": "single", "slots": ["nobody"]}), "not_found"),
        (
            json.dumps({"type": "set_program", "id": 10, "layout": "single", "slots": ["a", "b"]}),
            "bad_request",
        ),
        (json.dumps({"type": "ping", "id": 11, "v": 2}), "unsupported_version"),
        (json.dumps({"type": "join", "id": 12}), "already_joined"),
        (json.dumps({"type": "grant_floor", "id": 13}), "floor_queue_empty"),
        (json.dumps({"type": "stop_recording", "id": 14}), "conflict"),
        (json.dumps({"type": "ping", "id": 15, "pad": "x" * 270_000}), "too_large"),
    ]
    before = (await chair.ok("sync", since=0))["version"]
    for raw, code in cases:
        count = len(chair.messages)
        await chair.send(raw)
        answer = await chair.wait_for(lambda m, n=count: m in chair.messages[n:] and m["type"] == "error")
        assert answer["code"] == code, (raw[:80], answer)
        assert answer["message"]
        if code == "too_large":
            assert answer["id"] == 15  # echoed, so the client is not left waiting
    await chair.ws.send_bytes(b"\x00\x01")
    assert await chair.wait_for(lambda m: m.get("code") == "bad_json" and "binary" in m["message"])
    # Nothing changed, and the connection still works.
    assert (await chair.ok("sync", since=0))["version"] == before
    result = await chair.ok("set_program", layout="pip", slots=["chair"])
    assert result["version"] == before + 1


async def test_error_echoes_request_id(signaling_server, connect, mint) -> None:
    server = await signaling_server()
    client = await connect(server, mint("council", "v", "venue"))
    await client.send({"type": "raise_hand", "id": "abc"})
    answer = await client.wait_for(lambda m: m["type"] == "error")
    assert (answer["id"], answer["code"]) == ("abc", "not_joined")


async def test_rate_limit_per_connection(signaling_server, connect, mint, settings) -> None:
    server = await signaling_server(replace(settings, ws_rate=5.0, ws_burst=10))
    flooder = await connect(server, mint("council", "flood", "venue"))
    calm = await connect(server, mint("council", "calm", "venue"))
    await calm.ok("join")
    for i in range(60):
        await flooder.send({"type": "ping", "id": i})
    await flooder.wait_for(lambda m: m.get("id") == 59)
    answers = [m for m in flooder.messages if m["type"] in ("reply", "error")]
    assert len(answers) == 60  # every message answered
    limited = [m for m in answers if m["type"] == "error"]
    assert {m["code"] for m in limited} == {"rate_limited"}
    assert 40 <= len(limited) <= 50
    assert all(m["retry_after"] > 0 for m in limited)
    # The other connection is not limited by the flood; the flooder recovers after a pause.
    for _ in range(5):
        await calm.ok("ping")
    await asyncio.sleep(0.5)
    await flooder.ok("ping")


async def test_removed_participant_is_told_closed_and_cannot_return_with_old_token(
    signaling_server, connect, mint
) -> None:
    server = await signaling_server()
    chair = await connect(server, mint("council", "chair", "chair"))
    await chair.ok("join")
    old_token = mint("council", "heckler", "member")
    member = await connect(server, old_token)
    await member.ok("join")
    await chair.ok("remove", identity="heckler")
    removed = await member.wait_for(lambda m: m["type"] == "removed")
    assert removed["reason"]
    assert await member.closed() == 4410
    left = await chair.wait_for(lambda m: m["type"] == "event" and m["event"]["kind"] == "participant_left")
    assert left["event"]["reason"] == "removed"
    again = await connect(server, old_token)
    assert await again.closed() == 4403
    await asyncio.sleep(1.05)  # a token issued after the removal second lets them back in
    fresh = await connect(server, mint("council", "heckler", "member"))
    await fresh.ok("join")


async def test_sync_returns_missed_events_or_snapshot(signaling_server, connect, mint) -> None:
    server = await signaling_server()
    chair = await connect(server, mint("council", "chair", "chair"))
    start = (await chair.ok("join"))["room"]["version"]
    await chair.ok("set_program", layout="pip", slots=["chair"])
    await chair.ok("raise_hand")
    result = await chair.ok("sync", since=start)
    assert [e["kind"] for e in result["events"]] == ["program", "hand"]
    assert result["version"] == start + 2
    assert (await chair.ok("sync", since=result["version"]))["events"] == []
    assert (await chair.ok("sync", since=10_000))["room"]["version"] == start + 2


async def test_floor_queue_order_and_grant(signaling_server, connect, mint) -> None:
    server = await signaling_server()
    chair = await connect(server, mint("council", "chair", "chair"))
    await chair.ok("join")
    members = {}
    for name in ("m1", "m2", "m3"):
        members[name] = await connect(server, mint("council", name, "member"))
        await members[name].ok("join")
    for name in ("m2", "m3", "m1"):
        await members[name].ok("raise_hand")
    queue = (await members["m1"].ok("raise_hand"))["floor_queue"]  # raising twice keeps the place
    assert queue == ["m2", "m3", "m1"]
    result = await chair.ok("grant_floor")
    assert result["floor"] == "m2"
    event = await members["m3"].wait_for(lambda m: m["type"] == "event" and m["event"]["kind"] == "floor")
    assert event["event"]["floor"] == "m2" and event["event"]["floor_queue"] == ["m3", "m1"]
    await members["m3"].ok("lower_hand")
    assert (await chair.ok("grant_floor"))["floor"] == "m1"
    await chair.ok("revoke_floor")
    assert (await chair.request("grant_floor"))["code"] == "floor_queue_empty"
    assert (await chair.ok("grant_floor", identity="m3"))["floor"] == "m3"


async def test_recording_start_stop_broadcast(signaling_server, connect, mint) -> None:
    server = await signaling_server()
    chair = await connect(server, mint("council", "chair", "chair"))
    await chair.ok("join")
    venue = await connect(server, mint("council", "hall-a", "venue"))
    await venue.ok("join")
    started = await chair.ok("start_recording")
    rid = started["recording_id"]
    assert rid.startswith("council-") and len(rid.split("-")[-1]) == 4
    assert (await chair.request("start_recording"))["code"] == "conflict"
    event = await venue.wait_for(lambda m: m["type"] == "event" and m["event"]["kind"] == "recording")
    assert event["event"]["active"] is True and event["event"]["recording_id"] == rid
    assert (await chair.ok("stop_recording"))["recording_id"] == rid


async def test_self_mute_blocked_while_chair_mutes(signaling_server, connect, mint) -> None:
    server = await signaling_server()
    chair = await connect(server, mint("council", "chair", "chair"))
    await chair.ok("join")
    venue = await connect(server, mint("council", "hall-a", "venue"))
    await venue.ok("join")
    await chair.ok("mute", identity="hall-a", muted=True)
    answer = await venue.request("self_mute", muted=False)
    assert answer["code"] == "forbidden"
    await chair.ok("request_unmute", identity="hall-a")
    ask = await venue.wait_for(lambda m: m["type"] == "event" and m["event"]["kind"] == "unmute_requested")
    assert ask["event"]["identity"] == "hall-a"
    await venue.ok("self_mute", muted=False)
    await venue.ok("publish", audio=True, video=False)
    pub = await chair.wait_for(lambda m: m["type"] == "event" and m["event"]["kind"] == "publishing")
    assert (pub["event"]["audio"], pub["event"]["video"]) == (True, False)


class RecordingMedia(NullMedia):
    """NullMedia that records what signaling asked of it, with a fake offer."""

    def __init__(self) -> None:
        self.opened: list[tuple[str, str, object]] = []
        self.changes: list[str] = []
        self.answers: list[str] = []

    async def open_session(self, room, identity, options, state):  # type: ignore[override]
        self.opened.append((room, identity, options))
        media = self

        class Session(NullSession):
            async def create_offer(self) -> dict:
                return {
                    "sdp": f"v=0 offer for {identity}",
                    "slots": {"video": ["1"], "audio": [], "previews": []},
                }

            async def set_answer(self, sdp: str) -> None:
                if "bad" in sdp:
                    raise ValueError("no m-lines")
                media.answers.append(sdp)

        return Session()

    async def room_changed(self, room, events, state) -> None:  # type: ignore[override]
        self.changes.extend(e["kind"] for e in events)


async def test_join_order_with_media_offer_answer_and_emit(signaling_server, connect, mint, settings) -> None:
    media = RecordingMedia()
    server = await signaling_server(replace(settings, media=True), media=media)
    chair = await connect(server, mint("council", "chair", "chair"))
    await chair.send({"type": "join", "id": 1})
    offer = await chair.wait_for(lambda m: m["type"] == "offer")
    kinds = [m["type"] for m in chair.messages]
    assert kinds.index("reply") < kinds.index("offer")
    assert offer["sdp"] == "v=0 offer for chair" and offer["v"] == 1
    room, identity, options = media.opened[0]
    assert (room, identity) == ("council", "chair")
    assert options.previews is True and options.video_slots == MAX_SLOTS
    assert await chair.ok("answer", sdp="v=0 answer") == {}
    assert media.answers == ["v=0 answer"]
    assert (await chair.request("answer", sdp="bad answer"))["code"] == "bad_sdp"
    await chair.ok("candidate", candidate={"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0})
    phone = await connect(server, mint("council", "m1", "member"))
    await phone.ok("join")
    await phone.wait_for(lambda m: m["type"] == "offer")
    _, _, phone_options = media.opened[1]
    assert phone_options.device == "phone" and phone_options.video_slots == 1 and not phone_options.previews
    assert phone_options.publish_video is True  # the m-line is there so the camera can be switched on later
    clerk = await connect(server, mint("council", "clerk", "clerk"))
    result = await clerk.ok("join")
    assert result["media"] is False
    await asyncio.sleep(0.1)
    assert len(media.opened) == 2 and not [m for m in clerk.messages if m["type"] == "offer"]
    # The backend's emitter reaches one participant or the whole room.
    emit = media._emit if hasattr(media, "_emit") else None
    assert emit is not None
    emit("council", "m1", {"type": "slots", "audio": [], "previews": []})
    emit("council", None, {"type": "speakers", "speakers": ["m1"]})
    await phone.wait_for(lambda m: m["type"] == "slots")
    for client in (chair, phone, clerk):
        speakers = await client.wait_for(lambda m: m["type"] == "speakers")
        assert speakers == {"v": 1, "type": "speakers", "speakers": ["m1"]}
    assert not [m for m in chair.messages if m["type"] == "slots"]
    assert "participant_joined" in media.changes


async def test_late_joiner_is_told_who_is_speaking(signaling_server, connect, mint, settings) -> None:
    # The media core announces speakers only when they change; someone joining in the middle of a
    # speech must still see the speaking indicator (found with the venue pages in Chromium).
    media = RecordingMedia()
    server = await signaling_server(replace(settings, media=True), media=media)
    speaker = await connect(server, mint("council", "hall-a", "venue"))
    await speaker.ok("join")
    await speaker.wait_for(lambda m: m["type"] == "offer")
    media._emit("council", None, {"type": "speakers", "speakers": ["hall-a"]})
    await speaker.wait_for(lambda m: m["type"] == "speakers")
    late = await connect(server, mint("council", "hall-b", "venue"))
    await late.ok("join")
    told = await late.wait_for(lambda m: m["type"] == "speakers")
    assert told == {"v": 1, "type": "speakers", "speakers": ["hall-a"]}
    kinds = [m["type"] for m in late.messages]
    assert kinds.index("offer") < kinds.index("speakers")
    # Once the room is empty the old announcement is forgotten.
    await speaker.ok("leave")
    await late.ok("leave")
    again = await connect(server, mint("council", "hall-c", "venue"))
    await again.ok("join")
    await again.wait_for(lambda m: m["type"] == "offer")
    await asyncio.sleep(0.1)
    assert [m for m in again.messages if m["type"] == "speakers"] == []


async def test_shutdown_tells_clients_and_closes_1001(signaling_server, connect, mint) -> None:
    server = await signaling_server()
    clients = []
    for name in ("a", "b"):
        client = await connect(server, mint("council", name, "venue"))
        await client.ok("join")
        clients.append(client)
    unjoined = await connect(server, mint("council", "c", "venue"))
    started = time.monotonic()
    await server.close()
    assert time.monotonic() - started < 5
    for client in (*clients, unjoined):
        message = await client.wait_for(lambda m: m["type"] == "shutdown")
        assert message["reason"]
        assert await client.closed() == 1001


async def test_auto_record_starts_at_first_join_and_stops_when_room_empties(
    signaling_server, connect, mint, settings
) -> None:
    server = await signaling_server(replace(settings, auto_record=True))
    venue = await connect(server, mint("council", "hall-a", "venue"))
    result = await venue.ok("join")
    recording = result["room"]["recording"]
    assert recording["active"] is True and recording["recording_id"].startswith("council-")
    observer = await connect(server, mint("council", "obs", "viewer"))
    await observer.ok("join")
    await venue.ok("leave")
    await observer.ok("leave")
    snapshot = None
    for _ in range(50):  # the stop runs just after the last leave
        async with aiohttp.ClientSession() as http:
            headers = {"Authorization": "Bearer test-admin-key-not-for-production-0123456789"}
            async with http.get(server.make_url("/api/rooms/council"), headers=headers) as resp:
                snapshot = await resp.json()
        if not snapshot["recording"]["active"]:
            break
        await asyncio.sleep(0.1)
    assert snapshot is not None and snapshot["recording"]["active"] is False
    assert snapshot["participants"] == []


async def test_a_client_that_does_not_read_is_dropped_not_waited_for(monkeypatch) -> None:
    """The outgoing queue policy (unit level: a socket whose sends never complete)."""
    import signaling.connection as rooms_module
    from signaling.tokens import verify_token

    class StuckSocket:
        def __init__(self) -> None:
            self.closed_with: tuple[int, bytes] | None = None

        async def send_str(self, text: str) -> None:
            await asyncio.Event().wait()  # the peer never reads: the send never completes

        async def close(self, *, code: int, message: bytes) -> bool:
            self.closed_with = (code, message)
            return True

    monkeypatch.setattr(rooms_module, "OUTGOING_QUEUE", 5)
    claims = verify_token(TEST_SECRET, mint_token(TEST_SECRET, "council", "slow", "Slow", "venue", 60))
    ws = StuckSocket()
    conn = rooms_module.Connection(ws, claims)  # type: ignore[arg-type]
    started = time.monotonic()
    for i in range(7):  # one in the writer's hands, five queued, the seventh overflows
        conn.send({"n": i})
        await asyncio.sleep(0)
    await asyncio.sleep(0.05)
    assert time.monotonic() - started < 1  # sending never blocked the caller
    assert ws.closed_with == (1008, b"does not read its messages")
    conn.send({"n": "after"})  # ignored once closing
    await conn.finish(timeout=0.1)


async def test_media_session_failure_after_join_is_pushed_with_null_id(
    signaling_server, connect, mint, settings
) -> None:
    class BrokenMedia(NullMedia):
        async def open_session(self, room, identity, options, state):  # type: ignore[override]
            raise RuntimeError("no sockets left")

    server = await signaling_server(replace(settings, media=True), media=BrokenMedia())
    venue = await connect(server, mint("council", "hall-a", "venue"))
    assert (await venue.ok("join"))["you"]["identity"] == "hall-a"
    pushed = await venue.wait_for(lambda m: m["type"] == "error" and m["id"] is None)
    assert pushed["code"] == "internal" and "media session" in pushed["message"]
    assert (await venue.ok("raise_hand"))["floor_queue"] == ["hall-a"]  # signaling goes on


async def test_meeting_title_and_ending_ones_own_speaking(signaling_server, connect, mint) -> None:
    server = await signaling_server()
    chair = await connect(server, mint("council", "chair", "chair"))
    await chair.ok("join")
    member = await connect(server, mint("council", "m1", "member"))
    joined = await member.ok("join")
    assert joined["room"]["title"] == ""
    assert (await member.request("set_title", title="Mine"))["code"] == "forbidden"
    await chair.ok("set_title", title="第三次全体会议")
    event = await member.wait_for(lambda m: m["type"] == "event" and m["event"]["kind"] == "title")
    assert event["event"]["title"] == "第三次全体会议" and event["event"]["by"] == "chair"
    assert (await chair.request("set_title", title="x" * 121))["code"] == "bad_request"
    # Ending speaking: only the holder, and it reaches the chair as a floor event by the holder.
    assert (await member.request("release_floor"))["code"] == "conflict"
    await member.ok("raise_hand")
    await chair.ok("grant_floor")
    await member.ok("release_floor")
    event = await chair.wait_for(
        lambda m: m["type"] == "event" and m["event"]["kind"] == "floor" and m["event"]["floor"] is None
    )
    assert event["event"]["by"] == "m1"
