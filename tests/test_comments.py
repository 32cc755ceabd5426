"""The public's comments, likes and their moderation over a real server: the public routes with a
browser cookie, Server-Sent Events, the moderator's commands over REST and the WebSocket, the room
setting, blocked words, duplicates, the limits' 429s with Retry-After, and the figures."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.conftest import TEST_ADMIN_KEY

ADMIN = {"Authorization": f"Bearer {TEST_ADMIN_KEY}"}
SCRIPT = '<script>alert("x")</script>'


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@contextlib.asynccontextmanager
async def browser() -> AsyncIterator[aiohttp.ClientSession]:
    """A visitor's browser: its own cookie jar (unsafe: the server is 127.0.0.1)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with browser() as session:
        yield session


async def call(http: aiohttp.ClientSession, method: str, url: Any, headers: dict | None = None, **kw: Any):
    async with http.request(method, url, headers=headers or {}, **kw) as resp:
        body = await resp.json() if resp.content_type == "application/json" else await resp.read()
        return resp.status, body, resp.headers


class Events:
    """An SSE stream read as a browser's EventSource would: (event, data) pairs."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.received: list[tuple[str, dict[str, Any]]] = []

    async def next(self, event: str, timeout: float = 5.0, where: Any = None) -> dict[str, Any]:
        async def read() -> dict[str, Any]:
            name, data = "message", ""
            while True:
                line = (await self.resp.content.readline()).decode().rstrip("\r\n")
                if line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data += line[5:].strip()
                elif line == "" and data:
                    payload = json.loads(data)
                    self.received.append((name, payload))
                    if name == event and (where is None or where(payload)):
                        return payload
                    name, data = "message", ""

        return await asyncio.wait_for(read(), timeout)


async def public_code(http: aiohttp.ClientSession, server: Any, mint: Any, room: str = "council") -> str:
    await call(http, "POST", server.make_url("/api/rooms"), ADMIN, json={"room": room})
    _, info, _ = await call(
        http, "GET", server.make_url(f"/api/rooms/{room}/public"), bearer(mint(room, "mod", "moderator"))
    )
    return info["code"]


async def test_a_public_comment_waits_for_a_moderator_and_reaches_every_viewer(
    signaling_server, mint, connect
) -> None:
    server = await signaling_server()
    async with browser() as a, browser() as b:
        code = await public_code(a, server, mint)
        async with b.get(server.make_url(f"/w/{code}/events"), params={"viewer": "viewer-b-0001"}) as sse:
            assert sse.status == 200 and sse.content_type == "text/event-stream"
            events = Events(sse)
            hello = await events.next("hello")
            assert hello["likes"] == 0

            comments = server.make_url(f"/w/{code}/comments")
            status, posted, headers = await call(
                a, "POST", comments, json={"nickname": SCRIPT, "text": "<b>hi</b>"}
            )
            assert status == 201 and posted["status"] == "pending" and posted["id"] == 1
            assert "visitor=" in headers["Set-Cookie"] and "HttpOnly" in headers["Set-Cookie"]
            assert (await call(b, "GET", comments))[1]["comments"] == []  # not approved yet

            moderator = bearer(mint("council", "mod", "moderator"))
            status, listing, _ = await call(
                a, "GET", server.make_url("/api/rooms/council/comments"), moderator
            )
            assert status == 200 and listing["comments"][0]["status"] == "pending"
            assert listing["comments"][0]["name"] == SCRIPT  # stored as the text it is
            assert listing["figures"]["comments_public"] == 1
            venue = bearer(mint("council", "hall-a", "venue"))
            assert (await call(a, "GET", server.make_url("/api/rooms/council/comments"), venue))[0] == 403

            commands = server.make_url("/api/rooms/council/commands")
            for who in (
                venue,
                bearer(mint("council", "v", "viewer")),
                bearer(mint("council", "m", "member")),
            ):
                status, err, _ = await call(
                    a, "POST", commands, who, json={"type": "approve_comment", "comment": 1}
                )
                assert status == 403 and err["error"] == "forbidden"
            status, err, _ = await call(
                a, "POST", commands, moderator, json={"type": "approve_comment", "comment": 9}
            )
            assert status == 404
            status, result, _ = await call(
                a, "POST", commands, moderator, json={"type": "approve_comment", "comment": 1}
            )
            assert status == 200 and result["comment"]["status"] == "approved"
            pushed = await events.next("comment")
            assert pushed["id"] == 1 and pushed["name"] == SCRIPT and pushed["text"] == "<b>hi</b>"
            assert "browser" not in pushed  # the browser id never leaves the server
            _, public, _ = await call(b, "GET", comments)
            assert [c["text"] for c in public["comments"]] == ["<b>hi</b>"]

            # The chair may do what a moderator does, over the socket; rejecting takes it back.
            chair = await connect(server, mint("council", "chair", "chair"))
            await chair.ok("join")
            result = await chair.ok("reject_comment", comment=1)
            assert result["comment"]["status"] == "rejected"
            taken = await events.next("comment")
            assert taken == {"id": 1, "status": "rejected"}
            await chair.wait_for(lambda m: m["type"] == "comment" and m["comment"]["status"] == "rejected")
            await asyncio.sleep(1.05)  # the public listing is cached a second
            assert (await call(b, "GET", comments))[1]["comments"] == []
            bad = await chair.request("pin_comment", comment="1")
            assert bad["type"] == "error" and bad["code"] == "bad_request"


async def test_members_post_under_their_name_approved_and_replies_count(signaling_server, mint, http) -> None:
    server = await signaling_server()
    code = await public_code(http, server, mint)
    url = server.make_url("/api/rooms/council/comments")
    from conference.roster import RosterEntry, set_roster
    from signaling.app import STORE_KEY

    entry = RosterEntry("m1", "王委员", "member", "member", "教育界")  # the roster knows the sector
    await server.app[STORE_KEY].update("council", lambda s: set_roster(s, [entry], allow_guests=True))
    member = bearer(mint("council", "m1", "member", name="王委员"))
    status, comment, _ = await call(http, "POST", url, member, json={"text": "支持草案第三条"})
    assert status == 201 and comment["status"] == "approved" and comment["author"] == "member"
    assert comment["name"] == "王委员" and comment["sector"] == "教育界"
    status, reply, _ = await call(
        http, "POST", url, bearer(mint("council", "mod", "moderator")), json={"text": "谢谢", "reply_to": 1}
    )
    assert status == 201 and reply["reply_to"] == 1
    for body in (
        {"text": ""},
        {"text": "x" * 501},
        {"text": 5},
        {"text": "a", "name": "x"},
        {"text": "a", "reply_to": 77},
    ):
        assert (await call(http, "POST", url, member, json=body))[0] in (400, 404), body
    assert (await call(http, "POST", url, bearer(mint("council", "v", "viewer")), json={"text": "x"}))[
        0
    ] == 403
    _, listing, _ = await call(http, "GET", url, bearer(mint("council", "chair", "chair")))
    figures = listing["figures"]
    assert figures["comments_members"] == 2 and figures["replies"] == 1 and figures["comments_public"] == 0
    _, public, _ = await call(http, "GET", server.make_url(f"/w/{code}/comments"))
    assert [c["name"] for c in public["comments"]] == ["mod", "王委员"]  # newest first


async def test_the_room_setting_blocked_words_and_duplicates(signaling_server, settings, mint) -> None:
    custom = dataclasses.replace(settings, comment_blocked_words=["Spam Word"], comment_posts_per_min=600)
    server = await signaling_server(custom)
    async with browser() as a:
        code = await public_code(a, server, mint)
        chair = bearer(mint("council", "chair", "chair"))
        status, _, _ = await call(
            a, "PATCH", server.make_url("/api/rooms/council"), chair, json={"comment_moderation": False}
        )
        assert status == 200
        assert (
            await call(
                a, "PATCH", server.make_url("/api/rooms/council"), chair, json={"comment_moderation": 1}
            )
        )[0] == 400
        comments = server.make_url(f"/w/{code}/comments")
        status, first, _ = await call(
            a, "POST", comments, json={"nickname": "Li", "text": "When does it start?"}
        )
        assert status == 201 and first["status"] == "approved"
        # The same words again (case and punctuation aside): the first comment, nothing new.
        status, again, _ = await call(
            a, "POST", comments, json={"nickname": "Li", "text": "when does it START"}
        )
        assert status == 200 and again == first
        status, held, _ = await call(
            a, "POST", comments, json={"nickname": "Li", "text": "buy SPAM-word now"}
        )
        assert status == 201 and held["status"] == "pending"
        # Another site's form can post text/plain without a preflight: refused, nothing stored.
        form = '{"nickname": "x", "text": "from a form elsewhere"}'
        plain = {"Content-Type": "text/plain"}
        assert (await call(a, "POST", comments, plain, data=form))[0] == 400
        assert (await call(a, "POST", server.make_url(f"/w/{code}/likes"), plain, data='{"count": 5}'))[
            0
        ] == 400
        for body in (
            {"nickname": "", "text": "x"},
            {"nickname": "n" * 41, "text": "x"},
            {"text": "x"},
            {"nickname": "a", "text": "b", "x": 1},
        ):
            assert (await call(a, "POST", comments, json=body))[0] == 400, body
        _, room, _ = await call(a, "GET", server.make_url("/api/rooms/council/public"), chair)
        assert room["comment_moderation"] is False
        _, listing, _ = await call(a, "GET", server.make_url("/api/rooms/council/comments"), chair)
        assert [c["text"] for c in listing["comments"]] == ["buy SPAM-word now", "When does it start?"]
        assert listing["comments"][0]["held"] == "blocked_word"


async def test_limits_answer_429_with_retry_after(signaling_server, settings, mint, monkeypatch) -> None:
    from signaling import comments as comments_module

    custom = dataclasses.replace(
        # Slow refills, so a loaded machine's slow requests cannot refill a bucket within the test.
        settings,
        comment_posts_per_min=6.0,
        like_posts_per_s=0.05,
        like_posts_per_s_ip=1000,
    )
    server = await signaling_server(custom)
    async with browser() as a, browser() as b:
        code = await public_code(a, server, mint)
        comments = server.make_url(f"/w/{code}/comments")
        statuses = []
        for i in range(5):
            status, body, headers = await call(
                a, "POST", comments, json={"nickname": "n", "text": f"question {i}"}
            )
            statuses.append(status)
        assert statuses[:3] == [201, 201, 201] and statuses[3] == 429  # a burst of 3 per browser
        assert int(headers["Retry-After"]) >= 1 and body["error"] == "rate_limited"
        # Another browser from the same address is not held back by the first one's bucket.
        assert (await call(b, "POST", comments, json={"nickname": "m", "text": "mine"}))[0] == 201
        likes = server.make_url(f"/w/{code}/likes")
        answers = [(await call(b, "POST", likes, json={"count": 2}))[0] for _ in range(6)]
        assert answers[:3] == [200] * 3 and answers[3:] == [429] * 3  # bursts of 3 per browser
        # A client that drops its cookie gets a new browser each time: those share one bucket
        # per address (bursts of ten times the rate; here 0.5 a second, bursts of 5).
        monkeypatch.setattr(comments_module, "FRESH_PER_S", 0.5)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as bot:
            answers = [(await call(bot, "POST", likes, json={"count": 1}))[0] for _ in range(20)]
        assert answers[:5] == [200] * 5 and answers[5:].count(429) >= 12
        assert (await call(a, "POST", likes, json={"count": 0}))[0] == 400
        assert (await call(a, "POST", likes, json={"count": 51}))[0] == 400


async def test_likes_are_summed_and_pushed_with_the_viewer_count(signaling_server, mint) -> None:
    server = await signaling_server()
    async with browser() as a, browser() as b:
        code = await public_code(a, server, mint)
        async with b.get(server.make_url(f"/w/{code}/events"), params={"viewer": "viewer-b-0002"}) as sse:
            events = Events(sse)
            await events.next("hello")
            likes = server.make_url(f"/w/{code}/likes")
            assert (await call(a, "POST", likes, json={"count": 3}))[0] == 200
            assert (await call(a, "POST", likes, json={"count": 4}))[0] == 200
            pushed = await events.next("likes", timeout=6.0, where=lambda d: d["likes"] == 7)
            assert pushed == {"likes": 7}
            viewers = await events.next("viewers", timeout=6.0)
            assert viewers["viewers"] >= 1
        _, info, _ = await call(
            a, "GET", server.make_url("/api/rooms/council/public"), bearer(mint("council", "chair", "chair"))
        )
        assert info["likes"] == 7 and info["viewers"] >= 1 and info["figures"]["unique_viewers"] == 1
        _, public, _ = await call(a, "GET", server.make_url(f"/w/{code}/comments"))
        assert public["likes"] == 7


async def test_on_screen_and_answered_change_the_room_for_every_screen(
    signaling_server, mint, connect
) -> None:
    server = await signaling_server()
    async with browser() as a:
        code = await public_code(a, server, mint)
        _, posted, _ = await call(
            a,
            "POST",
            server.make_url(f"/w/{code}/comments"),
            json={"nickname": "张三", "text": "公交线路何时调整"},
        )
        venue = await connect(server, mint("council", "hall-a", "venue"))
        await venue.ok("join")
        moderator = await connect(server, mint("council", "mod", "moderator"))
        joined = await moderator.ok("join")
        assert joined["media"] is False and "moderate_comments" in joined["permissions"]
        forbidden = await venue.request("show_comment", comment=posted["id"])
        assert forbidden["type"] == "error" and forbidden["code"] == "forbidden"

        shown = await moderator.ok("show_comment", comment=posted["id"])
        assert shown["comment"]["status"] == "approved"  # shown means approved
        event = await venue.wait_for(
            lambda m: m["type"] == "event" and m["event"]["kind"] == "comment_on_screen"
        )
        assert (
            event["event"]["comment"]["text"] == "公交线路何时调整"
            and event["event"]["comment"]["name"] == "张三"
        )
        bad = await moderator.request("answer_comment", comment=posted["id"])
        assert bad["type"] == "error" and bad["code"] == "bad_request"  # by is required
        answer = await moderator.ok("answer_comment", comment=posted["id"], by="市交通局")
        assert answer["on_screen"]["answered_by"] == "市交通局"
        event = await venue.wait_for(
            lambda m: m["type"] == "event" and m["event"]["kind"] == "comment_answered"
        )
        assert event["event"]["by"] == "市交通局"
        _, room, _ = await call(a, "GET", server.make_url("/api/rooms/council"), ADMIN)
        assert room["on_screen"]["answered_by"] == "市交通局"
        await moderator.ok("hide_comment", comment=posted["id"])
        _, room, _ = await call(a, "GET", server.make_url("/api/rooms/council"), ADMIN)
        assert room["on_screen"] is None
        _, listing, _ = await call(
            a,
            "GET",
            server.make_url("/api/rooms/council/comments"),
            bearer(mint("council", "mod", "moderator")),
        )
        assert listing["figures"]["answered"] == 1


@pytest.mark.redis
async def test_redis_shares_comments_likes_and_limits_between_processes(settings, tmp_path) -> None:
    import uuid

    from conference.comment_store import RedisCommentStore
    from conference.comments import Comment
    from signaling.abuse import Limits
    from tests.test_store import REDIS_URL

    # Unique: other sessions' suites may run this very test against the same Redis at the same time.
    prefix = f"test-comments-{uuid.uuid4().hex[:8]}"
    a, b = RedisCommentStore(REDIS_URL, prefix=prefix), RedisCommentStore(REDIS_URL, prefix=prefix)
    heard: list[Comment] = []
    b.subscribe(lambda room, comment: heard.append(comment))
    try:
        await a.start()
        await b.start()
        first = await a.add(Comment(0, "council", "public", "Li", "hello", created_at=1.0))
        second = await b.add(Comment(0, "council", "public", "Wu", "hi", created_at=2.0))
        assert (first.id, second.id) == (1, 2)
        await a.change("council", 1, {"status": "approved"})
        for _ in range(50):
            if any(c.id == 1 and c.status == "approved" for c in heard):
                break
            await asyncio.sleep(0.02)
        assert any(c.id == 1 and c.status == "approved" for c in heard)  # another process heard it
        assert [c.id for c in await b.listing("council", ("approved",))] == [1]
        assert await a.add_likes("council", 5, {1: 2}) == 5
        assert await b.add_likes("council", 3, {}) == 8
        assert (await b.get("council", 1)).likes == 2  # type: ignore[union-attr]
        figures = await b.figures("council")
        assert figures["comments_public"] == 2 and figures["likes"] == 8 and figures["approved"] == 1
        la, lb = Limits(REDIS_URL, prefix), Limits(REDIS_URL, prefix)
        waits = [await (la if i % 2 else lb).take("post:ip:1.2.3.4", 1.0, 3) for i in range(5)]
        assert waits[:3] == [0, 0, 0] and waits[3] > 0  # one bucket across both processes
        assert await la.first("dup:x", "7", 60) is None and await lb.first("dup:x", "8", 60) == "7"
        await la.close()
        await lb.close()
    finally:
        keys = [k async for k in a._redis.scan_iter(f"{prefix}:*")]
        if keys:
            await a._redis.delete(*keys)
        await a.close()
        await b.close()


async def test_the_figures_go_with_the_recording_and_answered_is_a_chapter(
    signaling_server, settings, mint, connect
) -> None:
    custom = dataclasses.replace(settings, recording_auto_render=False)
    server = await signaling_server(custom)
    async with browser() as a:
        code = await public_code(a, server, mint)
        chair = await connect(server, mint("council", "chair", "chair"))
        await chair.ok("join")
        recording_id = (await chair.ok("start_recording"))["recording_id"]
        await call(a, "GET", server.make_url(f"/w/{code}"))  # a visit
        _, posted, _ = await call(
            a, "POST", server.make_url(f"/w/{code}/comments"), json={"nickname": "Li", "text": "Route 12?"}
        )
        await call(
            a,
            "POST",
            server.make_url("/api/rooms/council/comments"),
            bearer(mint("council", "m1", "member")),
            json={"text": "agreed", "reply_to": posted["id"]},
        )
        await chair.ok("answer_comment", comment=posted["id"], by="Transport Bureau")
        await call(a, "POST", server.make_url(f"/w/{code}/likes"), json={"count": 4})
        await chair.ok("stop_recording")
        clerk = bearer(mint("council", "clerk", "clerk"))
        status, detail, _ = await call(
            a, "GET", server.make_url(f"/api/recordings/{recording_id}?lang=en"), clerk
        )
        assert status == 200
        figures = detail["public"]
        assert figures["comments_public"] == 1 and figures["comments_members"] == 1
        assert figures["replies"] == 1 and figures["answered"] == 1
        assert figures["likes"] == 4 and figures["visits"] == 1
        assert "Answered: Transport Bureau" in [c["title"] for c in detail["timeline"]]


async def test_the_poster_and_the_link_a_venue_screen_shows(signaling_server, mint, connect) -> None:
    from PIL import Image

    server = await signaling_server()
    async with browser() as a:
        await call(
            a, "POST", server.make_url("/api/rooms"), ADMIN, json={"room": "council", "title": "Budget"}
        )
        chair = bearer(mint("council", "chair", "chair"))
        await call(a, "PATCH", server.make_url("/api/rooms/council"), chair, json={"starts_at": 1764568800})
        _, info, _ = await call(a, "GET", server.make_url("/api/rooms/council/public"), chair)
        status, body, headers = await call(a, "GET", info["poster"] + "?tz=Asia/Shanghai&download=1")
        assert (
            status == 200
            and headers["Content-Type"] == "image/png"
            and "attachment" in headers["Content-Disposition"]
        )
        image = Image.open(io.BytesIO(body))
        assert image.size == (1080, 1350)
        # The QR code: a white square with black modules in the lower half.
        lower = image.convert("L").crop((0, 675, 1080, 1350))
        histogram = lower.histogram()
        assert sum(histogram[:40]) > 20_000 and sum(histogram[230:]) > 50_000
        again = await call(a, "GET", info["poster"] + "?tz=Asia/Shanghai")
        assert again[1] == body  # made once, then handed out again
        assert (await call(a, "GET", server.make_url("/w/nope/poster.png")))[0] == 404
        venue = await connect(server, mint("council", "hall-a", "venue"))
        joined = await venue.ok("join")
        assert joined["public_url"] == f"/w/{info['code']}"


async def test_open_event_streams_are_bounded_per_address(signaling_server, mint, monkeypatch) -> None:
    from signaling import audience

    monkeypatch.setattr(audience, "MAX_STREAMS_PER_ADDRESS", 2)
    server = await signaling_server()
    async with browser() as a:
        code = await public_code(a, server, mint)
        url = server.make_url(f"/w/{code}/events")
        first, second = await a.get(url), await a.get(url)
        assert first.status == second.status == 200
        async with a.get(url) as third:
            assert third.status == 503 and third.headers["Retry-After"] == "30"
        first.close()
        for _ in range(50):  # the server notices the closed stream
            async with a.get(url) as again:
                if again.status == 200:
                    break
            await asyncio.sleep(0.1)
        assert again.status == 200
        second.close()


@pytest.mark.redis
async def test_two_servers_sharing_redis_share_comments_and_pushes(
    signaling_server, settings, mint, connect
) -> None:
    """A comment posted through one process and approved through another reaches an event stream
    open on the first; likes posted to both add up."""
    import os
    import uuid

    import redis.asyncio as aioredis

    from conference.media import NullMedia
    from conference.store import RedisRoomStore

    prefix = f"test-{uuid.uuid4().hex[:8]}"
    url = os.environ.get("CONFERENCE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    stores = [RedisRoomStore(url, prefix=prefix), RedisRoomStore(url, prefix=prefix)]
    shared = dataclasses.replace(settings, redis_url=url)
    try:
        one = await signaling_server(shared, media=NullMedia(), store=stores[0])
        two = await signaling_server(shared, media=NullMedia(), store=stores[1])
        async with browser() as a, browser() as b:
            code = await public_code(a, one, mint)
            async with b.get(one.make_url(f"/w/{code}/events"), params={"viewer": "viewer-one-0001"}) as sse:
                events = Events(sse)
                await events.next("hello")
                _, posted, _ = await call(
                    a, "POST", two.make_url(f"/w/{code}/comments"), json={"nickname": "Li", "text": "hi"}
                )
                # Approved through the second server too (over REST: a socket's join there may be
                # answered moved, the room being placed on the first; a REST command is carried there).
                moderator = {"Authorization": f"Bearer {mint('council', 'mod', 'moderator')}"}
                status, approved, _ = await call(
                    a, "POST", two.make_url("/api/rooms/council/commands"), moderator,
                    json={"type": "approve_comment", "comment": posted["id"]},
                )  # fmt: skip
                assert status == 200, approved
                pushed = await events.next("comment")
                assert pushed["id"] == posted["id"] and pushed["status"] == "approved"
                await call(a, "POST", one.make_url(f"/w/{code}/likes"), json={"count": 2})
                await call(b, "POST", two.make_url(f"/w/{code}/likes"), json={"count": 3})
                await events.next("likes", timeout=4.0, where=lambda d: d["likes"] == 5)
                # A viewer on the other process: both count in the viewers and the figures.
                async with b.get(two.make_url(f"/w/{code}/events"), params={"viewer": "viewer-two-0002"}):
                    await events.next("viewers", timeout=5.0, where=lambda d: d["viewers"] == 2)
                    for server in (one, two):
                        _, listing, _ = await call(
                            a, "GET", server.make_url("/api/rooms/council/comments"), ADMIN
                        )
                        server_figures = listing["figures"]
                        assert server_figures["unique_viewers"] == 2 and server_figures["peak_viewers"] == 2
    finally:
        r = aioredis.from_url(url)
        keys = [k async for k in r.scan_iter(f"{prefix}:*")]
        if keys:
            await r.delete(*keys)
        await r.aclose()


async def test_an_event_stream_whose_viewer_went_away_ends_in_a_quiet_room(
    settings, mint, monkeypatch
) -> None:
    """No push comes to a room where nothing happens: the stream's ping notices the viewer left.
    On the runner `conference serve` uses (aiohttp's TestServer cancels a handler whose client
    disconnects; the production runner does not, so a handler waits until it is told)."""
    from aiohttp import web

    from conference.media import NullMedia
    from signaling import audience
    from signaling.app import create_app
    from signaling.comments import COMMENTS_KEY

    monkeypatch.setattr(audience, "PING_S", 0.3)
    app = create_app(settings, media=NullMedia())
    runner = web.AppRunner(app)  # as signaling.serve runs it
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    class Server:
        def make_url(self, path: str) -> str:
            return f"http://127.0.0.1:{port}{path}"

    streams = app[COMMENTS_KEY].audience  # type: ignore[attr-defined]
    try:
        async with browser() as a:
            code = await public_code(a, Server(), mint)
            url = Server().make_url(f"/w/{code}/events")
            opened = [await a.get(url) for _ in range(5)]
            for resp in opened:
                assert resp.status == 200
                await resp.content.readline()  # the hello
            assert streams.open_streams == 5
            for resp in opened:
                resp.close()
            for _ in range(60):
                if streams.open_streams == 0:
                    break
                await asyncio.sleep(0.1)
            assert streams.pushed == 0, "nothing happened in the room: no push ended the streams"
            assert streams.open_streams == 0, "the handlers of streams whose viewers left still wait"
            assert all(not room.streams for room in streams.rooms.values())
    finally:
        await runner.cleanup()
