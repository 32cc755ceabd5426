"""Speaking timers (conference/speaking.py): the limit that goes with the floor, the room's rules,
extending, and the server muting the speaker once limit and grace have passed."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from conference import room as model
from conference import speaking
from conference.events import apply_all
from conference.roles import Role
from conference.room import CommandError, RoomState
from tests.conftest import TEST_ADMIN_KEY

ADMIN = {"Authorization": f"Bearer {TEST_ADMIN_KEY}"}


def _room() -> RoomState:
    state = RoomState("council")
    model.join(state, model.Participant("chair", "Chair", Role.CHAIR))
    model.join(state, model.Participant("m-1", "王委员", Role.MEMBER, device="phone"))
    return state


def test_grant_carries_its_time_and_limit_and_a_new_grant_restarts_the_clock() -> None:
    state = _room()
    event = model.grant_floor(state, "m-1", by="chair", limit_s=90, now=1000.0)[0]
    assert (event["granted_at"], event["limit_s"]) == (1000.0, 90.0)
    assert state.floor_timer == speaking.FloorTimer(1000.0, 90.0)
    model.revoke_floor(state, by="chair")
    assert state.floor_timer is None
    # The room's default applies when the grant names no limit.
    speaking.set_floor_limits(state, 120, "mute", 5)
    model.grant_floor(state, "m-1", now=2000.0)
    assert state.floor_timer == speaking.FloorTimer(2000.0, 120.0)
    assert state.floor_timer.deadline(state.floor_limits.grace_s) == 2125.0


@pytest.mark.parametrize("bad", [0, -5, "60", True, float("inf"), 5 * 3600])
def test_bad_limits_are_refused_and_change_nothing(bad: object) -> None:
    state = _room()
    before = state.to_json()
    with pytest.raises(CommandError) as err:
        model.grant_floor(state, "m-1", limit_s=bad)  # type: ignore[arg-type]
    assert err.value.code == "bad_request"
    with pytest.raises(CommandError):
        speaking.set_floor_limits(state, bad, "none", 10)  # type: ignore[arg-type]
    with pytest.raises(CommandError):
        speaking.set_floor_limits(state, 60, "explode", 10)
    assert state.to_json() == before


def test_time_up_mutes_only_the_same_floor_past_limit_and_grace_and_extend_gives_the_mic_back() -> None:
    state = _room()
    speaking.set_floor_limits(state, None, "mute", 2)
    model.grant_floor(state, "m-1", limit_s=10, now=100.0)
    assert speaking.time_up(state, "m-1", 100.0, now=111.0) == []  # within the grace
    assert speaking.time_up(state, "m-1", 99.0, now=200.0) == []  # another grant's timer
    events = speaking.time_up(state, "m-1", 100.0, now=112.5)
    assert [e["kind"] for e in events] == ["floor_timer", "mute"]
    assert state.participants["m-1"].muted and state.floor_timer.muted
    assert speaking.time_up(state, "m-1", 100.0, now=113.0) == []  # once
    events = speaking.extend_floor(state, 60, by="chair")
    assert [e["kind"] for e in events] == ["floor_timer", "mute"]
    assert state.floor_timer == speaking.FloorTimer(100.0, 70.0, False)
    assert not state.participants["m-1"].muted
    # The other actions never mute.
    speaking.set_floor_limits(state, None, "chime", 0)
    assert speaking.time_up(state, "m-1", 100.0, now=10_000.0) == []


def test_extend_without_a_limit_starts_one_and_needs_a_floor() -> None:
    state = _room()
    with pytest.raises(CommandError) as err:
        speaking.extend_floor(state, 60)
    assert err.value.code == "conflict"
    model.grant_floor(state, "m-1", now=time.time() - 30)
    speaking.extend_floor(state, 60)
    assert state.floor_timer is not None and 89 < state.floor_timer.limit_s < 91


def test_a_state_rebuilt_from_snapshot_and_events_keeps_the_timer() -> None:
    live = _room()
    snapshot = RoomState.from_json(live.to_json())
    events = speaking.set_floor_limits(live, 300, "chime", 10)
    events += model.grant_floor(live, "m-1", limit_s=45, now=50.0)
    events += speaking.extend_floor(live, 30)
    apply_all(snapshot, events)
    assert snapshot.to_json() == live.to_json()
    assert RoomState.from_json(live.to_json()).to_json() == live.to_json()


async def test_the_server_mutes_the_speaker_when_limit_and_grace_are_over(
    signaling_server, connect, mint
) -> None:
    server = await signaling_server()
    member = await connect(server, mint("council", "m-1", "member"))
    await member.ok("join")
    chair = await connect(server, mint("council", "chair", "chair"))
    await chair.ok("join")
    await chair.ok("set_floor_limits", default_s=None, action="mute", grace_s=0.5)
    granted = await chair.ok("grant_floor", identity="m-1", limit_s=1.0)
    assert granted["floor"] == "m-1" and granted["floor_timer"]["limit_s"] == 1.0
    started = time.monotonic()
    event = await member.wait_for(
        lambda m: m["type"] == "event" and m["event"]["kind"] == "mute" and m["event"]["identity"] == "m-1",
        timeout=10,
    )
    assert event["event"]["muted"] is True
    assert 1.3 < time.monotonic() - started < 10  # limit + grace, not before
    url = server.make_url("/api/rooms/council")
    async with aiohttp.ClientSession() as http, http.get(url, headers=ADMIN) as response:
        state = await response.json()
    assert state["floor"] == "m-1" and state["floor_timer"]["muted"] is True
    member_state = next(p for p in state["participants"] if p["identity"] == "m-1")
    assert member_state["muted"] is True
    # The chair extends: the speaker's microphone is free again; a member cannot extend.
    await chair.ok("extend_floor", by_s=60)
    event = await member.wait_for(
        lambda m: m["type"] == "event" and m["event"]["kind"] == "mute" and not m["event"]["muted"], timeout=5
    )
    assert event["event"]["by"] == "chair"
    refused = await member.request("extend_floor", by_s=60)
    assert refused["type"] == "error" and refused["code"] == "forbidden"


async def test_a_revoked_floor_is_not_muted_later(signaling_server, connect, mint) -> None:
    server = await signaling_server()
    member = await connect(server, mint("council", "m-1", "member"))
    await member.ok("join")
    chair = await connect(server, mint("council", "chair", "chair"))
    await chair.ok("join")
    await chair.ok("set_floor_limits", action="mute", grace_s=0)
    await chair.ok("grant_floor", identity="m-1", limit_s=0.5)
    await chair.ok("revoke_floor")
    await asyncio.sleep(1.2)
    url = server.make_url("/api/rooms/council")
    async with aiohttp.ClientSession() as http, http.get(url, headers=ADMIN) as response:
        state = await response.json()
    assert state["floor"] is None
    assert not next(p for p in state["participants"] if p["identity"] == "m-1")["muted"]


async def test_a_killed_server_started_again_still_mutes_when_the_time_is_up(tmp_path) -> None:
    """The deadline is in the room's state: a server killed while someone speaks sets the timer
    again when it starts and mutes the speaker at the same moment."""
    import signal
    from urllib.parse import urlparse

    from browser_util import rest, server_process
    from conftest import SignalingClient

    data = tmp_path / "data"
    async with aiohttp.ClientSession() as http:
        async with server_process(data, media=False) as first:
            port = urlparse(first.url).port
            ws_url = f"{first.url.replace('http', 'ws', 1)}/ws"
            clients = []
            for identity, role in (("m-1", "member"), ("chair", "chair")):
                ws = await http.ws_connect(ws_url, params={"token": first.token("council", identity, role)})
                clients.append(SignalingClient(ws))
                await clients[-1].ok("join")
            chair = clients[-1]
            await chair.ok("set_floor_limits", action="mute", grace_s=1)
            granted = await chair.ok("grant_floor", identity="m-1", limit_s=7)
            deadline = granted["floor_timer"]["granted_at"] + 8
            first.process.send_signal(signal.SIGKILL)
            await asyncio.wait_for(first.process.wait(), 15)
        async with server_process(data, media=False, port=port) as second:
            state = await rest(second, "GET", "/api/rooms/council")
            assert state["floor"] == "m-1"
            # (A restart slower than the limit finds the time up at once: muted at start then.)
            assert time.time() >= deadline or not state["floor_timer"]["muted"]
            while time.time() < deadline + 3:
                state = await rest(second, "GET", "/api/rooms/council")
                if state["floor_timer"]["muted"]:
                    break
                await asyncio.sleep(0.2)
            assert state["floor_timer"]["muted"], state["floor_timer"]
            assert time.time() >= deadline - 0.1  # not before its time
            assert next(p for p in state["participants"] if p["identity"] == "m-1")["muted"]


def test_the_limit_comes_from_the_grant_the_agenda_item_the_kind_or_the_room() -> None:
    from conference import agenda

    state = _room()
    state.participants["m-1"].kind = "member"
    model.join(state, model.Participant("edu", "教育局", Role.VENUE, kind="department"))
    speaking.set_floor_limits(state, 600, "none", 10, by_kind={"member": 180, "department": 300})
    # The room's rules: by kind, else the default.
    assert model.grant_floor(state, "m-1", now=1.0)[0]["limit_s"] == 180
    assert model.grant_floor(state, "edu", now=2.0)[0]["limit_s"] == 300
    assert model.grant_floor(state, "chair", now=3.0)[0]["limit_s"] == 600
    # An agenda item with its own limit comes first; one without leaves the room's.
    agenda.set_agenda(state, [{"title": "部门答复", "limit_s": 120}, {"title": "自由讨论"}])
    agenda.goto_item(state, 0)
    assert model.grant_floor(state, "edu", now=4.0)[0]["limit_s"] == 120
    agenda.goto_item(state, 1)
    assert model.grant_floor(state, "edu", now=5.0)[0]["limit_s"] == 300
    # What the chair asks for comes first of all.
    assert model.grant_floor(state, "edu", limit_s=45, now=6.0)[0]["limit_s"] == 45
    with pytest.raises(CommandError):
        agenda.set_agenda(state, [{"title": "x", "limit_s": -1}])
    with pytest.raises(CommandError):
        speaking.set_floor_limits(state, None, "none", 10, by_kind={"member": "long"})
    # Rebuilt from its snapshot, the room keeps the rules by kind.
    assert RoomState.from_json(state.to_json()).floor_limits == state.floor_limits
