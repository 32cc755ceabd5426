"""Property-based: random and mutated messages thrown at a live server never harm the room.

One real server runs in a background thread for the whole module; every Hypothesis example opens
fresh sockets to it: an attacker (any non-chair role) sends a batch of frames, then a well-behaved
chair in the same room must still get answers, change the program and see contiguous versions.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conference.config import Settings
from conference.media import NullMedia
from signaling.app import create_app
from signaling.tokens import mint_token
from tests.conftest import TEST_ADMIN_KEY, TEST_SECRET

ROOM = "fuzz"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)

VALID: list[dict[str, Any]] = [
    {
        "type": "join",
        "id": 1,
        "device": "venue",
        "publish": {"audio": True, "video": False},
        "video_slots": 4,
    },
    {"type": "answer", "id": 2, "sdp": "v=0"},
    {"type": "candidate", "id": 3, "candidate": {"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0}},
    {"type": "set_program", "id": 4, "layout": "grid-2x2", "slots": ["good", None]},
    {"type": "mute", "id": 5, "identity": "good", "muted": True},
    {"type": "request_unmute", "id": 6, "identity": "good"},
    {"type": "remove", "id": 7, "identity": "good"},
    {"type": "grant_floor", "id": 8, "identity": "attacker"},
    {"type": "revoke_floor", "id": 9},
    {"type": "start_recording", "id": 10},
    {"type": "stop_recording", "id": 11},
    {"type": "raise_hand", "id": 12},
    {"type": "lower_hand", "id": 13},
    {"type": "self_mute", "id": 14, "muted": False},
    {"type": "publish", "id": 15, "audio": True, "video": True},
    {"type": "sync", "id": 16, "since": 0},
    {"type": "ping", "id": 17},
    {"type": "leave", "id": 18},
]


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    message = dict(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["drop", "replace", "add", "retype"]))
        if action == "drop" and message:
            message.pop(draw(st.sampled_from(sorted(message))))
        elif action == "replace" and message:
            message[draw(st.sampled_from(sorted(message)))] = draw(json_values)
        elif action == "add":
            message[draw(st.text(max_size=10))] = draw(json_values)
        else:
            message["type"] = draw(st.sampled_from([m["type"] for m in VALID]) | st.text(max_size=12))
    return message


frames = st.one_of(
    st.text(max_size=200),
    json_values.map(json.dumps),
    st.sampled_from(VALID).map(json.dumps),
    mutated().map(json.dumps),
    st.just(json.dumps({"type": "ping", "pad": "x" * 270_000})),
    st.binary(max_size=50),
)


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config = Settings(
        data_dir=Path(tmp_path_factory.mktemp("fuzz")),
        secret=TEST_SECRET,
        admin_key=TEST_ADMIN_KEY,
        media=False,
        reconnect_grace_s=0.5,
    )
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def start() -> None:
            runner = web.AppRunner(create_app(config, media=NullMedia()))
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            holder["runner"] = runner
            holder["port"] = runner.addresses[0][1]

        loop.run_until_complete(start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10), "server did not start"
    yield f"http://127.0.0.1:{holder['port']}"
    asyncio.run_coroutine_threadsafe(holder["runner"].cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


async def read_until(ws: aiohttp.ClientWebSocketResponse, done: Any, timeout: float = 5.0) -> list[dict]:
    received: list[dict] = []

    async def loop() -> None:
        while not done(received):
            frame = await ws.receive()
            if frame.type != aiohttp.WSMsgType.TEXT:
                raise AssertionError(f"socket closed or odd frame: {frame.type} {frame.data} {frame.extra}")
            received.append(json.loads(frame.data))

    await asyncio.wait_for(loop(), timeout)
    return received


async def attack(base: str, role: str, batch: list[str | bytes], join_first: bool) -> None:
    async with aiohttp.ClientSession() as http:
        good = await http.ws_connect(
            f"{base}/ws", params={"token": mint_token(TEST_SECRET, ROOM, "good", "Good", "chair")}
        )
        await good.send_json({"type": "join", "id": "g1"})
        joined = await read_until(good, lambda ms: any(m.get("id") == "g1" for m in ms))
        reply = next(m for m in joined if m.get("id") == "g1")
        assert reply["type"] == "reply", reply
        last_version = reply["result"]["room"]["version"]

        token = mint_token(TEST_SECRET, ROOM, "attacker", "Attacker", role)
        bad = await http.ws_connect(f"{base}/ws", params={"token": token})
        sent = 0
        if join_first:
            await bad.send_json({"type": "join", "id": "a-join"})
            sent += 1
        for frame in batch:
            if isinstance(frame, bytes):
                await bad.send_bytes(frame)
            else:
                await bad.send_str(frame)
            sent += 1
        # Every frame gets exactly one answer, and the socket stays open.
        answers = await read_until(bad, lambda ms: sum(m["type"] in ("reply", "error") for m in ms) >= sent)
        answered = [m for m in answers if m["type"] in ("reply", "error")]
        assert len(answered) == sent
        assert all(m["v"] == 1 for m in answers)
        assert all(m["code"] != "internal" for m in answered if m["type"] == "error"), answered
        await bad.close()

        # The well-behaved chair is unharmed: it can still command the room and sees ordered events.
        await good.send_json({"type": "set_program", "id": "g2", "layout": "pip", "slots": ["good"]})
        after = await read_until(good, lambda ms: any(m.get("id") == "g2" for m in ms))
        result = next(m for m in after if m.get("id") == "g2")
        assert result["type"] == "reply", result
        versions = [m["event"]["version"] for m in after if m["type"] == "event"]
        assert versions == list(range(last_version + 1, last_version + 1 + len(versions)))
        assert result["result"]["version"] == versions[-1]
        await good.send_json({"type": "leave", "id": "g3"})
        await read_until(good, lambda ms: any(m.get("id") == "g3" for m in ms))
        await good.close()

        async with http.get(f"{base}/healthz") as resp:
            assert resp.status == 200


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    role=st.sampled_from(["venue", "member", "viewer", "clerk"]),
    batch=st.lists(frames, max_size=25),
    join_first=st.booleans(),
)
def test_random_messages_do_not_harm_the_room(
    live_server: str, role: str, batch: list, join_first: bool
) -> None:
    asyncio.run(attack(live_server, role, batch, join_first))
