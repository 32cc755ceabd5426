"""Shared fixtures: settings in a temporary data directory, a real signaling server on a free port
(media off unless a test passes its own backend), tokens, and a small WebSocket client. What the
suite does with tests it cannot judge now (wait, say so, fail under CI) is tests/suite_policy.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from conference.config import Settings
from conference.media import MediaBackend, NullMedia
from conference.store import RoomStore
from signaling.app import create_app
from signaling.tokens import mint_token

pytest_plugins = ["suite_policy"]

TEST_SECRET = "test-secret-not-for-production-0123456789"
TEST_ADMIN_KEY = "test-admin-key-not-for-production-0123456789"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        secret=TEST_SECRET,
        admin_key=TEST_ADMIN_KEY,
        media=False,
        reconnect_grace_s=2.0,
        shutdown_timeout_s=2.0,
    )


@pytest.fixture
def mint() -> Callable[..., str]:
    """mint(room, identity, role, name=None, ttl=3600, admin=False) -> token signed with TEST_SECRET."""

    def _mint(
        room: str, identity: str, role: str, name: str | None = None, ttl: int = 3600, **kw: Any
    ) -> str:
        return mint_token(TEST_SECRET, room, identity, name or identity, role, ttl, **kw)

    return _mint


class SignalingClient:
    """A test endpoint speaking the signaling protocol; keeps every message it received."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()
        self._next_id = 0
        self.close_code: int | None = None
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for frame in self.ws:
            if frame.type == aiohttp.WSMsgType.TEXT:
                message = json.loads(frame.data)
                async with self._changed:
                    self.messages.append(message)
                    self._changed.notify_all()
        self.close_code = self.ws.close_code
        async with self._changed:
            self._changed.notify_all()

    async def send(self, message: dict[str, Any] | str) -> None:
        await self.ws.send_str(message if isinstance(message, str) else json.dumps(message))

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 5.0
    ) -> dict[str, Any]:
        """The first received message (earliest first) matching ``predicate``."""

        async def find() -> dict[str, Any]:
            async with self._changed:
                while True:
                    for message in self.messages:
                        if predicate(message):
                            return message
                    if self._reader.done():
                        raise ConnectionError(f"socket closed ({self.close_code}) before the message came")
                    await self._changed.wait()

        return await asyncio.wait_for(find(), timeout)

    async def request(self, type_: str, timeout: float = 5.0, **fields: Any) -> dict[str, Any]:
        """Send a request; return its reply or error message (whole envelope)."""
        self._next_id += 1
        rid = f"r{self._next_id}"
        await self.send({"type": type_, "id": rid, **fields})
        return await self.wait_for(lambda m: m.get("id") == rid and m["type"] in ("reply", "error"), timeout)

    async def ok(self, type_: str, **fields: Any) -> dict[str, Any]:
        """Send a request that must succeed; return its result."""
        answer = await self.request(type_, **fields)
        assert answer["type"] == "reply", answer
        return answer["result"]

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [
            m["event"]
            for m in self.messages
            if m["type"] == "event" and (kind is None or m["event"]["kind"] == kind)
        ]

    async def closed(self, timeout: float = 5.0) -> int | None:
        await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        return self.close_code

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@pytest.fixture
async def signaling_server(
    settings: Settings,
) -> Callable[..., Awaitable[TestServer]]:
    """start(settings=None, media=None, store=None) -> a real server running the app on a free port."""
    servers: list[TestServer] = []

    async def start(
        custom: Settings | None = None, media: MediaBackend | None = None, store: RoomStore | None = None
    ) -> TestServer:
        app = create_app(custom or settings, media=media or NullMedia(), store=store)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def connect() -> Callable[..., Awaitable[SignalingClient]]:
    """connect(server, token, **query) -> SignalingClient on /ws (closed at the end of the test)."""
    session = aiohttp.ClientSession()
    clients: list[SignalingClient] = []

    async def _connect(server: TestServer, token: str | None, **query: str) -> SignalingClient:
        params = dict(query)
        if token is not None:
            params["token"] = token
        ws = await session.ws_connect(server.make_url("/ws"), params=params)
        client = SignalingClient(ws)
        clients.append(client)
        return client

    yield _connect
    for client in clients:
        await client.close()
    await session.close()


@pytest.fixture
async def meeting() -> AsyncIterator[Any]:
    """A room in a MemoryRoomStore with the SFU listening to its events (tests/test_sfu_support.py),
    closed with every endpoint added to it when the test ends."""
    from test_sfu_support import Meeting

    room = Meeting()
    await room.start()
    try:
        yield room
    finally:
        await room.close()
