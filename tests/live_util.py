"""Shared by the live-stream tests that need the whole server: the real application with its SFU
on a free port and two aiortc venues with solid-colour cameras and tones (hall-a blue and
speaking, hall-b cyan), joined to the room through the store and the media core."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from browser_util import ADMIN_KEY, SECRET, free_port
from test_sfu_support import Endpoint

from conference.config import Settings
from conference.media import SessionOptions
from conference.roles import Role
from conference.room import Participant, join
from signaling.app import MEDIA_KEY, STORE_KEY, create_app

ROOM = "council"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
VENUES = (("hall-a", 2, True), ("hall-b", 4, False))  # identity, test_sfu_support colour, speaking


async def rest(http: aiohttp.ClientSession, url: str, method: str, path: str, body: Any = None) -> Any:
    async with http.request(method, url + path, json=body, headers=ADMIN) as resp:
        assert resp.status in (200, 201), f"{method} {path}: {resp.status} {await resp.text()}"
        return await resp.json()


@pytest.fixture
async def meeting(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """The real application with its SFU on a free port, two aiortc venues with solid-colour cameras
    (hall-a blue and speaking, hall-b cyan) joined to the room through the store and media core."""
    async with running_meeting(tmp_path) as started:
        yield started


@contextlib.asynccontextmanager
async def running_meeting(tmp_path: Path, **overrides: Any) -> AsyncIterator[dict[str, Any]]:
    """The ``meeting`` fixture's server and venues, with ``overrides`` of its settings."""
    port = free_port()
    settings = Settings(
        host="127.0.0.1",
        port=port,
        data_dir=tmp_path / "data",
        secret=SECRET,
        admin_key=ADMIN_KEY,
        room_store="memory",
        live_size="320x180",
        live_fps=10,
        shutdown_timeout_s=2.0,
    )
    settings = dataclasses.replace(settings, **overrides)
    app = create_app(settings)
    runner = web.AppRunner(app, shutdown_timeout=2.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    store, backend = app[STORE_KEY], app[MEDIA_KEY]
    endpoints: list[Endpoint] = []
    try:
        await store.create(ROOM, max_endpoints=50, auto_record=False, exist_ok=True)
        for identity, index, speaking in VENUES:
            participant = Participant(identity, identity, Role.VENUE, publish_audio=True, publish_video=True)
            state, _ = await store.update(ROOM, lambda s, p=participant: join(s, p))
            session = await backend.open_session(  # type: ignore[attr-defined]
                ROOM, identity, SessionOptions(video_slots=1, audio_slots=1), state
            )
            endpoint = Endpoint(identity, index, speaking=speaking)
            await endpoint.connect(session)
            endpoints.append(endpoint)
        yield {"url": f"http://127.0.0.1:{port}", "app": app}
    finally:
        for endpoint in endpoints:
            await endpoint.close()
        await runner.cleanup()
