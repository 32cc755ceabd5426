"""Every role x every command over the WebSocket: allowed or refused as the issue says.

The expectations are written out here from the issue text, not derived from conference/roles.py,
so a wrong permission table fails this test.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from conference.media import NullMedia, NullSession

CHAIR_ONLY = {"chair"}
FLOOR = {"chair", "venue", "member"}
PUBLISHERS = {"chair", "venue", "member"}
EVERYONE = {"chair", "venue", "member", "clerk", "viewer"}
WITH_MEDIA = {"chair", "venue", "member", "viewer"}  # clerks get no media session

# (command, fields, roles allowed). Order matters: stop after start, remove last.
COMMANDS: list[tuple[str, dict[str, Any], set[str]]] = [
    ("ping", {}, EVERYONE),
    ("sync", {"since": 0}, EVERYONE),
    ("answer", {"sdp": "v=0 answer"}, WITH_MEDIA),
    ("candidate", {"candidate": {"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0}}, WITH_MEDIA),
    ("set_program", {"layout": "side-by-side", "slots": ["target", None]}, CHAIR_ONLY),
    ("mute", {"identity": "target", "muted": True}, CHAIR_ONLY),
    ("request_unmute", {"identity": "target"}, CHAIR_ONLY),
    ("raise_hand", {}, FLOOR),
    ("lower_hand", {}, FLOOR),
    ("grant_floor", {"identity": "target"}, CHAIR_ONLY),
    ("revoke_floor", {}, CHAIR_ONLY),
    ("self_mute", {"muted": True}, PUBLISHERS),
    ("publish", {"audio": True, "video": False}, PUBLISHERS),
    ("start_recording", {}, CHAIR_ONLY),
    ("stop_recording", {}, CHAIR_ONLY),
    ("remove", {"identity": "target"}, CHAIR_ONLY),
    ("leave", {}, EVERYONE),
]


class OfferingMedia(NullMedia):
    """Sessions that offer something, so answer/candidate have a session to go to."""

    async def open_session(self, room, identity, options, state):  # type: ignore[override]
        class Session(NullSession):
            async def create_offer(self) -> dict[str, Any]:
                return {"sdp": "v=0", "slots": {}}

        return Session()


@pytest.mark.parametrize("role", sorted(EVERYONE))
async def test_every_command_for_role(role, signaling_server, connect, mint, settings) -> None:
    server = await signaling_server(replace(settings, media=True), media=OfferingMedia())
    target = await connect(server, mint("hall", "target", "venue"))
    await target.ok("join")
    observer = await connect(server, mint("hall", "observer", "viewer"))
    await observer.ok("join")
    me = await connect(server, mint("hall", "me", role))
    await me.ok("join")
    outcomes = {}
    for command, fields, allowed in COMMANDS:
        version_before = (await observer.ok("sync", since=0))["version"]
        answer = await me.request(command, **fields)
        if role in allowed:
            assert answer["type"] == "reply", (role, command, answer)
        else:
            expected = "conflict" if command in ("answer", "candidate") else "forbidden"
            assert answer["type"] == "error" and answer["code"] == expected, (role, command, answer)
            # A refused command changes nothing in the room.
            assert (await observer.ok("sync", since=0))["version"] == version_before
        outcomes[command] = answer["type"]
    if role == "chair":
        await target.wait_for(lambda m: m["type"] == "removed")
        assert await target.closed() == 4410
    else:
        assert (await target.ok("ping"))["pong"] is True
    assert len(outcomes) == len(COMMANDS)


async def test_commands_before_join_are_refused(signaling_server, connect, mint) -> None:
    server = await signaling_server()
    me = await connect(server, mint("hall", "me", "chair"))
    for command, fields, _ in COMMANDS:
        answer = await me.request(command, **fields)
        if command in ("ping", "leave"):
            assert answer["type"] == "reply"
        else:
            assert answer["code"] == "not_joined", (command, answer)
