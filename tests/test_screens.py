"""A screen keeps its place for the whole meeting: session credentials outlive the token it joined
with, and a chair's long-lived screen link works until it is revoked (then nowhere, at once)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from conftest import TEST_ADMIN_KEY, TEST_SECRET, SignalingClient

from signaling.tokens import verify_token


def sessions(client: SignalingClient) -> list[dict[str, Any]]:
    return [m for m in client.messages if m["type"] == "session"]


async def test_a_venue_whose_token_expired_while_connected_comes_back_with_its_session_credential(
    signaling_server, connect, mint, settings
) -> None:
    server = await signaling_server(replace(settings, session_ttl_s=3, reconnect_grace_s=10))
    chair = await connect(server, mint("council", "chair", "chair"))
    await chair.ok("join")
    venue = await connect(server, mint("council", "hall-a", "venue", ttl=2))
    await venue.ok("join")
    await chair.ok("set_program", layout="single", slots=["hall-a"])
    first = await venue.wait_for(lambda m: m["type"] == "session")
    claims = verify_token(TEST_SECRET, first["token"])
    assert (claims.room, claims.identity, claims.role) == ("council", "hall-a", "venue")
    assert first["expires_at"] == claims.expires_at and claims.expires_at - time.time() <= 3.5
    await asyncio.sleep(2.6)  # the venue's own token has expired; the meeting goes on
    renewed = sessions(venue)
    assert len(renewed) >= 2 and renewed[-1]["expires_at"] > first["expires_at"], renewed
    await venue.close()  # the network drops

    again = await connect(server, mint("council", "hall-a", "venue", ttl=2, now=int(time.time()) - 3))
    assert await again.closed() == 4401  # the token it was opened with: expired, refused
    back = await connect(server, renewed[-1]["token"])
    joined = await back.ok("join")
    assert joined["you"]["identity"] == "hall-a" and joined["room"]["program"]["slots"] == ["hall-a"]
    rejoined = await chair.wait_for(
        lambda m: m["type"] == "event" and m["event"]["kind"] == "participant_rejoined"
    )
    assert rejoined["event"]["participant"]["identity"] == "hall-a"
    assert not chair.events("participant_left")
    # It goes on being handed credentials on the new connection.
    await back.wait_for(lambda m: m["type"] == "session")


async def test_a_removed_endpoint_gets_no_more_credentials_and_those_it_has_are_refused(
    signaling_server, connect, mint
) -> None:
    server = await signaling_server()
    chair = await connect(server, mint("council", "chair", "chair"))
    await chair.ok("join")
    venue = await connect(server, mint("council", "hall-a", "venue"))
    await venue.ok("join")
    credential = (await venue.wait_for(lambda m: m["type"] == "session"))["token"]
    await chair.ok("remove", identity="hall-a")
    assert await venue.closed() == 4410
    refused = await connect(server, credential)
    assert await refused.closed() == 4403


async def _rest(
    server: Any, method: str, path: str, key: str = TEST_ADMIN_KEY, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method, server.make_url(path), json=body, headers={"Authorization": f"Bearer {key}"}
        ) as res,
    ):
        return res.status, await res.json()


async def test_a_screen_link_admits_its_screen_until_the_chair_revokes_it(
    signaling_server, connect, mint, settings
) -> None:
    server = await signaling_server(replace(settings, session_ttl_s=30))
    chair_token = mint("council", "chair", "chair")
    path = "/api/rooms/council/screen-links"
    # Bad requests change nothing; only the chair (or the admin key) may issue links.
    status, body = await _rest(server, "POST", path, chair_token, {"identity": "hall-a", "ttl": 5})
    assert status == 400, body
    status, body = await _rest(server, "POST", path, chair_token, {"identity": "hall a"})
    assert status == 400, body
    venue_token = mint("council", "hall-b", "venue")
    status, body = await _rest(server, "POST", path, venue_token, {"identity": "hall-b"})
    assert status == 403, body

    status, created = await _rest(
        server, "POST", path, chair_token, {"identity": "hall-a", "name": "Hall A", "ttl": 30 * 86400}
    )
    assert status == 201, created
    link = created["link"]
    assert created["page"] == f"/venue?token={created['token']}"
    assert link["identity"] == "hall-a" and link["revoked_at"] is None
    assert link["expires_at"] - time.time() > 29 * 86400  # long-lived
    claims = verify_token(TEST_SECRET, created["token"])
    assert claims.link == link["id"] and claims.role == "venue" and claims.name == "Hall A"
    status, listed = await _rest(server, "GET", path, chair_token)
    assert status == 200 and [x["id"] for x in listed["links"]] == [link["id"]]
    status, _ = await _rest(server, "GET", path, venue_token)
    assert status == 403

    chair = await connect(server, chair_token)
    await chair.ok("join")
    screen = await connect(server, created["token"])
    await screen.ok("join")
    credential = (await screen.wait_for(lambda m: m["type"] == "session"))["token"]
    assert verify_token(TEST_SECRET, credential).link == link["id"]
    unjoined = await connect(server, created["token"])  # a second socket, not joined yet

    status, revoked = await _rest(server, "DELETE", f"{path}/{link['id']}", chair_token)
    assert status == 200 and revoked["link"]["revoked_at"] is not None
    # At once on the connected screen and on the unjoined socket: closed, final for the page.
    assert await screen.closed() == 4403
    assert await unjoined.closed() == 4403
    assert any(m["type"] == "removed" and m["reason"] == "screen link revoked" for m in screen.messages)
    for token in (created["token"], credential):
        refused = await connect(server, token)
        assert await refused.closed() == 4403
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            server.make_url("/api/rooms/council"), headers={"Authorization": f"Bearer {credential}"}
        ) as res,
    ):
        assert res.status == 403
    status, _ = await _rest(server, "DELETE", f"{path}/nope", chair_token)
    assert status == 404
    # The chair sees what happened.
    await chair.wait_for(lambda m: m["type"] == "event" and m["event"]["kind"] == "screen_link_revoked")


async def test_screen_links_over_the_socket_and_across_a_restart(
    signaling_server, connect, mint, settings
) -> None:
    server = await signaling_server()
    chair = await connect(server, mint("council", "chair", "chair"))
    await chair.ok("join")
    venue = await connect(server, mint("council", "hall-b", "venue"))
    await venue.ok("join")
    assert (await venue.request("create_screen_link", identity="hall-b"))["code"] == "forbidden"
    kept = await chair.ok("create_screen_link", identity="hall-a", name="Hall A")
    dropped = await chair.ok("create_screen_link", identity="hall-c", role="viewer")
    assert dropped["page"].startswith("/venue?token=") and dropped["link"]["role"] == "viewer"
    screen = await connect(server, dropped["token"])
    await screen.ok("join")
    result = await chair.ok("revoke_screen_link", link_id=dropped["link"]["id"])
    assert result["link"]["revoked_at"] is not None
    assert await screen.closed() == 4403
    assert (await chair.request("revoke_screen_link", link_id="nope"))["code"] == "not_found"
    await server.close()

    # The next server on the same data directory knows both links.
    again = await signaling_server()
    kept_screen = await connect(again, kept["token"])
    assert (await kept_screen.ok("join"))["you"]["identity"] == "hall-a"
    refused = await connect(again, dropped["token"])
    assert await refused.closed() == 4403


@pytest.mark.parametrize("ttl", [1, 86401])
def test_session_lifetime_is_bounded(ttl: int, settings) -> None:
    from conference.config import ConfigError

    with pytest.raises(ConfigError, match="session_ttl_s"):
        replace(settings, session_ttl_s=ttl)


@pytest.mark.redis
async def test_a_link_revoked_on_one_server_closes_its_screen_on_another(
    signaling_server, connect, mint, settings
) -> None:
    """Two processes sharing rooms through Redis: the link and its revocation are room state; the
    screen's socket is on the room's node (a join elsewhere is answered moved), and the other
    process refuses the revoked link."""
    import os
    import uuid

    import redis.asyncio as aioredis

    from conference.media import NullMedia
    from conference.store import RedisRoomStore

    prefix = f"test-{uuid.uuid4().hex[:8]}"
    url = os.environ.get("CONFERENCE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    stores = [RedisRoomStore(url, prefix=prefix), RedisRoomStore(url, prefix=prefix)]
    try:
        one = await signaling_server(replace(settings, redis_url=url), media=NullMedia(), store=stores[0])
        two = await signaling_server(replace(settings, redis_url=url), media=NullMedia(), store=stores[1])
        chair = await connect(one, mint("shared", "chair", "chair"))
        await chair.ok("join")
        created = await chair.ok("create_screen_link", identity="hall-a")
        # The room lives on the chair's node: the screen's join at the other one is sent there.
        elsewhere = await connect(two, created["token"])
        moved = await elsewhere.request("join")
        assert moved["type"] == "error" and moved["code"] == "moved", moved
        screen = await connect(one, created["token"])
        await screen.ok("join")
        await chair.ok("revoke_screen_link", link_id=created["link"]["id"])
        assert await screen.closed() == 4403
        # The other process was never told in memory: it refuses the revoked link from the store.
        refused = await connect(two, created["token"])
        assert await refused.closed() == 4403
    finally:
        r = aioredis.from_url(url)
        keys = [k async for k in r.scan_iter(f"{prefix}:*")]
        if keys:
            await r.delete(*keys)
        await r.aclose()
