"""Issue 9, findings 5 and 9 (recordings): no orphaned recorder from an empty room, and the
assembly's records are not world-readable. Real server, real recorder, real WebSockets."""

from __future__ import annotations

import asyncio
import stat
import threading
import time
from typing import Any

import aiohttp
from recording_script import Script, Speaker, write_meeting

from signaling.app import RECORDING_KEY
from tests.conftest import TEST_ADMIN_KEY

ADMIN = {"Authorization": f"Bearer {TEST_ADMIN_KEY}"}


async def call(method: str, url: Any, headers: dict[str, str] | None = None, **kw: Any) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, url, headers=headers or {}, **kw) as resp,
    ):
        body = await resp.json() if resp.content_type == "application/json" else await resp.text()
        return resp.status, body


async def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_start_recording_in_an_empty_room_leaves_no_recorder(signaling_server, connect, mint) -> None:
    server = await signaling_server()
    service = server.app[RECORDING_KEY].service
    assert service is not None
    status, _ = await call("POST", server.make_url("/api/rooms"), ADMIN, json={"room": "council"})
    assert status == 201
    chair = {"Authorization": f"Bearer {mint('council', 'chair', 'chair')}"}
    commands = server.make_url("/api/rooms/council/commands")
    threads = threading.active_count()
    for _ in range(3):  # a chair token over REST, without joining
        status, err = await call("POST", commands, chair, json={"type": "start_recording"})
        assert status == 409 and "nobody is in the room" in err["message"], (status, err)
    await asyncio.sleep(0.3)
    assert service.stats()["recording"] == 0
    assert threading.active_count() <= threads
    status, room = await call("GET", server.make_url("/api/rooms/council"), chair)
    assert room["recording"]["active"] is False
    # With someone there it records, and the recorder goes when the room empties.
    venue = await connect(server, mint("council", "hall-a", "venue"))
    await venue.ok("join")
    status, result = await call("POST", commands, chair, json={"type": "start_recording"})
    assert status == 200, result
    assert service.stats()["recording"] == 1
    await venue.ok("leave")
    await wait_until(lambda: service.stats()["recording"] == 0)
    status, room = await call("GET", server.make_url("/api/rooms/council"), chair)
    assert room["recording"]["active"] is False


def _mode(path: Any) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_recordings_and_their_renders_are_not_world_readable(signaling_server, mint, settings) -> None:
    """Tracks, meta.json, the timeline, renders (MP4, VTT, job) 0640; their directories 0750."""
    import os

    previous = os.umask(0o022)  # the usual umask, which leaves new files world-readable
    try:
        script = Script([Speaker("a", "A", (255, 0, 0), 440.0, role="chair")], duration=1.0)
        write_meeting(settings.data_dir, "assembly-1", script, room="assembly")
        server = await signaling_server()
        clerk = {"Authorization": f"Bearer {mint('assembly', 'clerk', 'clerk')}"}
        base = server.make_url("/api/recordings/assembly-1")
        status, job = await call("POST", f"{base}/renders", clerk, json={"layout": "grid", "size": "320x180"})
        assert status == 202, job
        deadline = time.monotonic() + 60
        while job["state"] in ("queued", "running"):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
            status, job = await call("GET", f"{base}/renders/{job['id']}", clerk)
        assert job["state"] == "done", job
    finally:
        os.umask(previous)
    recordings = settings.data_dir / "recordings"
    directory = next(p for p in recordings.rglob("assembly-1") if p.is_dir())
    files = [p for p in directory.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {
        "meta.json",
        "timeline.jsonl",
        f"{job['id']}.mp4",
        f"{job['id']}.vtt",
        f"{job['id']}.json",
    } <= names
    assert any(p.parent.name == "tracks" for p in files)
    assert {str(p.relative_to(directory)): oct(_mode(p)) for p in files if _mode(p) != 0o640} == {}
    dirs = [directory, *(p for p in directory.rglob("*") if p.is_dir())]
    assert {str(p): oct(_mode(p)) for p in dirs if _mode(p) != 0o750} == {}
    assert _mode(recordings) == 0o750
