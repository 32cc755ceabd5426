"""The public's comments and likes across a Redis restart (issue 15): a redis-server of the test's own
(append-only, fsync always) behind two ``conference serve`` processes; a visitor posts on the first,
a viewer watches the second's event stream (SSE). While Redis does not answer, or is gone, posts and
likes are refused with a clear 503 at once (no hang) and change nothing; once Redis is back the
viewer's same stream hears what is posted on the first server again (the comment store's
subscription came back by itself), and nothing acknowledged was lost.

The second test takes one store's connection away while another keeps posting (a TCP relay the
test cuts): what was posted meanwhile reaches the cut-off store's listeners from the change log,
in order and exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from browser_util import ADMIN_KEY, SECRET, RunningServer, server_process
from test_redis_restart import _free_port, redis_server

from conference.comment_store import RedisCommentStore
from conference.comments import Comment
from signaling.tokens import mint_token
from tests.test_comments import Events

pytestmark = pytest.mark.redis
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


async def call(
    http: aiohttp.ClientSession, server: RunningServer, method: str, path: str, body: Any = None, **kw: Any
) -> tuple[int, Any, float]:
    """(status, body, seconds it took)."""
    started = time.monotonic()
    async with http.request(method, f"{server.url}{path}", json=body, **kw) as r:
        data = await r.json() if r.content_type == "application/json" else await r.text()
        if r.status == 503:
            assert int(r.headers["Retry-After"]) >= 1, r.headers
        return r.status, data, time.monotonic() - started


async def until_ok(
    http: aiohttp.ClientSession, server: RunningServer, method: str, path: str, body: Any = None, **kw: Any
) -> Any:
    status, answer = 0, None
    for _ in range(100):
        status, answer, _ = await call(http, server, method, path, body, **kw)
        if status < 300:
            return answer
        await asyncio.sleep(0.1)
    raise AssertionError((status, answer))


async def test_comments_and_likes_reach_another_servers_viewers_across_a_redis_restart(
    tmp_path: Path,
) -> None:
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    redis_dir = tmp_path / "redis"
    moderator = {"Authorization": f"Bearer {mint_token(SECRET, 'council', 'mod', 'mod', 'moderator', 3600)}"}
    async with (
        redis_server(redis_dir, port) as redis,
        server_process(tmp_path / "one", media=False, extra_args=["--redis-url", url]) as one,
        server_process(tmp_path / "two", media=False, extra_args=["--redis-url", url]) as two,
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as visitor,
        aiohttp.ClientSession() as staff,
        aiohttp.ClientSession() as viewer,
    ):
        assert (await call(staff, one, "POST", "/api/rooms", {"room": "council"}, headers=ADMIN))[0] == 201
        code = (await until_ok(staff, one, "GET", "/api/rooms/council/public", headers=moderator))["code"]

        async def post(text: str) -> tuple[int, Any, float]:
            return await call(visitor, one, "POST", f"/w/{code}/comments", {"nickname": "李", "text": text})

        async def approve(comment: int) -> None:
            body = {"type": "approve_comment", "comment": comment}
            await until_ok(staff, one, "POST", "/api/rooms/council/commands", body, headers=moderator)

        async with viewer.get(f"{two.url}/w/{code}/events", params={"viewer": "viewer-two-0001"}) as sse:
            assert sse.status == 200
            events = Events(sse)
            assert (await events.next("hello"))["likes"] == 0
            status, first, _ = await post("before the restart")
            assert status == 201 and first["status"] == "pending", first
            await approve(first["id"])
            heard = await events.next("comment", where=lambda c: c["id"] == first["id"])
            assert heard["text"] == "before the restart"
            assert (await call(visitor, one, "POST", f"/w/{code}/likes", {"count": 3}))[0] == 200
            await events.next("likes", timeout=6.0, where=lambda d: d["likes"] == 3)

            # Redis stops answering (a stalled host): refused within the store's timeouts, no hang.
            redis.send_signal(signal.SIGSTOP)
            try:
                status, body, took = await post("while redis is stalled")
                assert status == 503 and body["error"] == "unavailable" and took < 5, (status, body, took)
                status, body, took = await call(visitor, one, "POST", f"/w/{code}/likes", {"count": 5})
                assert status == 503 and took < 5, (status, body, took)
            finally:
                redis.send_signal(signal.SIGCONT)

            # Redis is killed (only what was fsynced survives) and comes back from its own file.
            redis.send_signal(signal.SIGKILL)
            await redis.wait()
            status, body, took = await post("while redis is away")
            assert status == 503 and body["error"] == "unavailable" and took < 3, (status, body, took)
            status, body, took = await call(visitor, one, "POST", f"/w/{code}/likes", {"count": 5})
            assert status == 503 and took < 3, (status, body, took)
            status, body, _ = await call(viewer, two, "GET", f"/w/{code}/comments")
            assert status == 503, (status, body)
            await asyncio.sleep(3)  # long enough for the second server's subscription to back off

            async with redis_server(redis_dir, port):
                # Posted as soon as the first server answers: likely before the second has
                # subscribed again, which then finds it in the change log.
                second = await until_ok(
                    visitor, one, "POST", f"/w/{code}/comments", {"nickname": "王", "text": "after"}
                )
                await approve(second["id"])
                assert second["id"] == first["id"] + 1  # the refused posts took no number
                heard = await events.next("comment", timeout=15.0, where=lambda c: c["id"] == second["id"])
                assert heard["text"] == "after" and heard["status"] == "approved"
                await until_ok(visitor, one, "POST", f"/w/{code}/likes", {"count": 4})
                await events.next("likes", timeout=10.0, where=lambda d: d["likes"] == 7)

                # Nothing acknowledged was lost, nothing refused happened.
                _, listing, _ = await call(
                    staff, two, "GET", "/api/rooms/council/comments", headers=moderator
                )
                assert [c["text"] for c in listing["comments"]] == ["after", "before the restart"]
                assert all(c["status"] == "approved" for c in listing["comments"])
                _, public, _ = await call(viewer, two, "GET", f"/w/{code}/comments")
                assert public["likes"] == 7, public


class Relay:
    """A TCP relay on the loopback between one client and Redis that the test can cut."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.open = True
        self._pairs: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._pairs |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._pairs -= {writer, up_writer}

    def cut(self) -> None:
        self.open = False
        for writer in list(self._pairs):
            writer.transport.abort()

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()


@contextlib.asynccontextmanager
async def stores(
    url: str, prefix: str, relay_url: str
) -> AsyncIterator[tuple[RedisCommentStore, RedisCommentStore]]:
    a, b = RedisCommentStore(url, prefix=prefix), RedisCommentStore(relay_url, prefix=prefix)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def test_changes_made_while_a_store_was_cut_off_reach_it_from_the_log_in_order_once(
    tmp_path: Path,
) -> None:
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    async with redis_server(tmp_path / "redis", port):
        relay = Relay(port)
        relay_url = f"redis://127.0.0.1:{await relay.start()}/0"
        prefix = f"test-{uuid.uuid4().hex[:8]}"
        try:
            async with stores(url, prefix, relay_url) as (a, b):
                heard: list[tuple[int, str]] = []
                b.subscribe(lambda room, c: heard.append((c.id, c.status)))
                await a.start()
                await b.start()
                first = await a.add(Comment(0, "council", "public", "Li", "one", created_at=1.0))
                for _ in range(100):
                    if heard:
                        break
                    await asyncio.sleep(0.02)
                assert heard == [(first.id, "pending")]

                relay.cut()  # b loses Redis; a goes on
                await asyncio.sleep(0.5)
                assert not b._subscription.subscribed.is_set()
                while_cut = [
                    await a.add(Comment(0, "council", "public", "Wu", f"cut {i}", created_at=2.0 + i))
                    for i in range(3)
                ]
                await a.change("council", first.id, {"status": "approved"})
                await asyncio.sleep(0.3)
                assert heard == [(first.id, "pending")]  # b cannot have heard these yet

                relay.open = True  # b subscribes again by itself and reads what it missed
                expected = [
                    (first.id, "pending"),
                    *[(c.id, "pending") for c in while_cut],
                    (first.id, "approved"),
                ]
                for _ in range(200):
                    if len(heard) >= len(expected):
                        break
                    await asyncio.sleep(0.05)
                after = await a.add(Comment(0, "council", "public", "Zhao", "after", created_at=9.0))
                expected.append((after.id, "pending"))
                for _ in range(100):
                    if len(heard) >= len(expected):
                        break
                    await asyncio.sleep(0.02)
                await asyncio.sleep(0.2)  # nothing heard twice
                assert heard == expected
        finally:
            await relay.close()
