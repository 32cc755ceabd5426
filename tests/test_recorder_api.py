"""The clerk API on a real server: who sees what, renders with progress, Range downloads, traversal."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import av
import pytest
from aiohttp.test_utils import TestServer
from recording_script import Script, Speaker, write_meeting

from conference.config import Settings

ADMIN = "test-admin-key-not-for-production-0123456789"  # tests/conftest.py
DAY = 86400.0
STARTED = 1_790_000_000.0  # 2026-09-21 (UTC)


@pytest.fixture
def recordings(settings: Settings) -> dict[str, str]:
    """Two recordings of the assembly and one of another room, written before the server starts."""
    script = Script(
        [Speaker("a", "Alice", (255, 0, 0), 440.0, role="chair"), Speaker("b", "Bob", (0, 255, 0), 660.0)],
        duration=2.0,
        first_program=("side-by-side", ["a", "b"]),
        floors=[(1.0, "b")],
    )
    write_meeting(settings.data_dir, "assembly-1", script, started_at=STARTED, room="assembly")
    write_meeting(settings.data_dir, "assembly-2", script, started_at=STARTED + DAY, room="assembly")
    write_meeting(settings.data_dir, "other-1", script, started_at=STARTED, room="other")
    return {"first": "assembly-1", "second": "assembly-2", "other": "other-1"}


Server = Callable[..., Awaitable[TestServer]]


async def call(
    server: TestServer, method: str, path: str, token: str | None = None, **kw: Any
) -> tuple[int, Any, aiohttp.ClientResponse]:
    headers = dict(kw.pop("headers", {}))
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, server.make_url(path), headers=headers, **kw) as resp,
    ):
        body = await resp.read()
        ctype = resp.headers.get("Content-Type", "")
        data: Any = body
        if ctype.startswith("application/json"):
            data = json.loads(body)
        return resp.status, data, resp


async def test_who_sees_which_recordings(
    signaling_server: Server, mint: Callable[..., str], recordings: dict[str, str]
) -> None:
    server = await signaling_server()
    clerk = mint("assembly", "clerk1", "clerk")
    chair = mint("assembly", "chair1", "chair")
    venue = mint("assembly", "venue1", "venue")
    other_clerk = mint("other", "clerk2", "clerk")
    admin_token = mint("assembly", "ops", "clerk", admin=True)

    status, data, _ = await call(server, "GET", "/api/recordings", ADMIN)
    assert status == 200
    assert {r["id"] for r in data} == {"assembly-1", "assembly-2", "other-1"}
    assert [r["id"] for r in data][:1] == ["assembly-2"]  # newest first
    first = next(r for r in data if r["id"] == "assembly-1")
    assert first["room"] == "assembly" and abs(first["duration_s"] - 2.0) < 0.01
    assert first["started_at"] == STARTED and first["state"] == "finished"
    assert [p["identity"] for p in first["participants"]] == ["a", "b"]
    assert first["size_bytes"] > 1000

    for token in (clerk, chair):
        status, data, _ = await call(server, "GET", "/api/recordings", token)
        assert status == 200 and {r["id"] for r in data} == {"assembly-1", "assembly-2"}
    status, data, _ = await call(server, "GET", "/api/recordings", admin_token, params={"room": "other"})
    assert status == 200 and [r["id"] for r in data] == ["other-1"]
    status, data, _ = await call(server, "GET", "/api/recordings", clerk, params={"date": "2026-09-22"})
    assert status == 200 and [r["id"] for r in data] == ["assembly-2"]
    status, data, _ = await call(server, "GET", "/api/recordings", clerk, params={"date": "22/09/2026"})
    assert status == 400 and data["error"] == "bad_request"

    status, data, _ = await call(server, "GET", "/api/recordings", clerk, params={"room": "other"})
    assert status == 403 and data["error"] == "forbidden"
    status, data, _ = await call(server, "GET", "/api/recordings", venue)
    assert status == 403 and "may not see recordings" in data["message"]
    status, data, _ = await call(server, "GET", "/api/recordings")
    assert status == 401 and data["error"] == "unauthorized"
    status, data, _ = await call(server, "GET", "/api/recordings", "not-a-token")
    assert status == 401 and data["message"] == "malformed token"

    status, data, _ = await call(server, "GET", "/api/recordings/assembly-1", clerk)
    assert status == 200
    # Titled in the recording's language (zh-CN by default) with display names, or in the page's.
    assert [c["title"] for c in data["timeline"]] == ["画面：左右并列（Alice、Bob）", "发言：Bob"]  # noqa: RUF001
    status, data, _ = await call(server, "GET", "/api/recordings/assembly-1?lang=en", clerk)
    assert [c["title"] for c in data["timeline"]] == ["Program: Side by side (Alice, Bob)", "Floor: Bob"]
    assert {t["kind"] for t in data["tracks"]} == {"audio", "video"} and data["renders"] == []
    status, data, _ = await call(server, "GET", "/api/recordings/other-1", clerk)
    assert status == 403
    status, data, _ = await call(server, "GET", "/api/recordings/other-1", other_clerk)
    assert status == 200 and data["room"] == "other"
    status, data, _ = await call(server, "GET", "/api/recordings/nothing-here", clerk)
    assert status == 404 and data["error"] == "not_found"

    # Deleting: only the records office (admin key, admin clerk token), and then it is gone.
    status, data, _ = await call(server, "DELETE", "/api/recordings/assembly-2", clerk)
    assert status == 403
    status, data, _ = await call(server, "DELETE", "/api/recordings/assembly-2", chair)
    assert status == 403
    status, data, _ = await call(server, "DELETE", "/api/recordings/assembly-2", admin_token)
    assert status == 200 and data == {"deleted": "assembly-2"}
    status, _, _ = await call(server, "GET", "/api/recordings/assembly-2", chair)
    assert status == 404


async def test_render_job_progress_and_range_download(
    signaling_server: Server, mint: Callable[..., str], recordings: dict[str, str], settings: Settings
) -> None:
    server = await signaling_server()
    clerk = mint("assembly", "clerk1", "clerk")
    base = "/api/recordings/assembly-1"

    # Nothing rendered yet.
    status, data, _ = await call(server, "GET", f"{base}/download", clerk)
    assert status == 404 and data["error"] == "not_found"

    for body, code in (
        ({"layout": "mosaic"}, "unknown_layout"),
        ({"layout": "grid", "size": "huge"}, "bad_request"),
        ({"layout": "single:zed"}, "bad_request"),
        ({"layout": "grid", "colour": "red"}, "bad_request"),
        ({"layout": "grid", "from": 5, "to": 1}, "bad_request"),
        ({"layout": "grid", "language": "fr"}, "bad_request"),
    ):
        status, data, _ = await call(server, "POST", f"{base}/renders", clerk, json=body)
        assert status == 400 and data["error"] == code, (body, data)

    status, job, _ = await call(
        server, "POST", f"{base}/renders", clerk, json={"layout": "grid", "size": "320x180"}
    )
    assert status == 202, job
    assert job["id"] == "grid-320x180" and job["state"] in ("queued", "running")
    # Asking again finds the same job instead of starting another.
    status, again, _ = await call(
        server, "POST", f"{base}/renders", clerk, json={"layout": "grid", "size": "320x180"}
    )
    assert status == 200 and again["id"] == job["id"] and again["created_at"] == job["created_at"]

    # Progress as Server-Sent Events until done.
    events: list[str] = []
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            server.make_url(f"{base}/renders/{job['id']}/events"),
            headers={"Authorization": f"Bearer {clerk}"},
            timeout=aiohttp.ClientTimeout(total=90),
        ) as resp,
    ):
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        async for line in resp.content:
            if line.startswith(b"data: "):
                events.append(line.decode())

    states = [json.loads(e[6:]) for e in events]
    assert states[-1]["state"] == "done", states[-1]
    assert (
        states[-1]["progress"] == 1.0
        and "render=grid-320x180&file=mp4&expires=" in states[-1]["download_url"]
    )
    assert len(states) >= 2  # at least one update before the end

    status, data, _ = await call(server, "GET", base, clerk)
    render = next(r for r in data["renders"] if r["id"] == "grid-320x180")
    assert render["state"] == "done" and render["size_bytes"] > 1000

    url = f"{base}/download?render=grid-320x180"
    status, whole, resp = await call(server, "GET", url, clerk)
    assert status == 200
    assert resp.headers["Content-Type"] == "video/mp4"
    assert resp.headers["Content-Disposition"] == 'attachment; filename="assembly-1-grid-320x180.mp4"'
    assert resp.headers["Accept-Ranges"] == "bytes"
    with av.open(io.BytesIO(whole)) as c:
        assert c.streams.video[0].width == 320 and abs(c.duration / 1e6 - 2.0) < 0.15

    status, part, resp = await call(server, "GET", url, clerk, headers={"Range": "bytes=100-199"})
    assert status == 206 and part == whole[100:200]
    assert resp.headers["Content-Range"] == f"bytes 100-199/{len(whole)}"
    status, part, _ = await call(server, "GET", url, clerk, headers={"Range": f"bytes=-{50}"})
    assert status == 206 and part == whole[-50:]
    status, _, resp = await call(server, "GET", url, clerk, headers={"Range": f"bytes={len(whole) + 10}-"})
    assert status == 416

    status, vtt, resp = await call(server, "GET", url + "&file=vtt", clerk)
    assert status == 200 and resp.headers["Content-Type"].startswith("text/vtt")
    assert "发言：Bob".encode() in vtt  # noqa: RUF001

    # Asking in the recording's own language is the same render; in English it is another, with
    # its chapters in English (the clerk page asks in its own language).
    status, same, _ = await call(
        server,
        "POST",
        f"{base}/renders",
        clerk,
        json={"layout": "grid", "size": "320x180", "language": "zh-CN"},
    )
    assert status == 200 and same["id"] == "grid-320x180", same
    status, job, _ = await call(
        server, "POST", f"{base}/renders", clerk, json={"layout": "grid", "size": "320x180", "language": "en"}
    )
    assert status == 202 and job["id"] == "grid-320x180-en" and job["language"] == "en", job
    for _ in range(300):
        status, job, _ = await call(server, "GET", f"{base}/renders/grid-320x180-en", clerk)
        if job["state"] in ("done", "failed"):
            break
        await asyncio.sleep(0.1)
    assert job["state"] == "done", job
    status, vtt_en, _ = await call(server, "GET", f"{base}/download?render=grid-320x180-en&file=vtt", clerk)
    assert status == 200 and b"Floor: Bob" in vtt_en and "发言".encode() not in vtt_en

    # A venue may not download; a clerk of another room may not either.
    status, _, _ = await call(server, "GET", url, mint("assembly", "v", "venue"))
    assert status == 403
    status, _, _ = await call(server, "GET", url, mint("other", "c", "clerk"))
    assert status == 403


async def _wait_done(server: TestServer, events_url: str) -> list[dict[str, Any]]:
    """Follow a render's progress stream with no Authorization header, as EventSource does."""
    states = []
    async with (
        aiohttp.ClientSession() as session,
        session.get(server.make_url(events_url), timeout=aiohttp.ClientTimeout(total=90)) as resp,
    ):
        assert resp.status == 200, await resp.text()
        async for line in resp.content:
            if line.startswith(b"data: "):
                states.append(json.loads(line[6:]))
    return states


async def test_signed_links_work_without_a_header_and_only_for_their_file(
    signaling_server: Server, mint: Callable[..., str], recordings: dict[str, str], settings: Settings
) -> None:
    from urllib.parse import parse_qs, urlencode, urlsplit

    from signaling.clerk import SIGNED_URL_TTL_S, link_signature

    server = await signaling_server()
    clerk = mint("assembly", "clerk1", "clerk")
    base = "/api/recordings/assembly-1"
    status, job, _ = await call(
        server, "POST", f"{base}/renders", clerk, json={"layout": "grid", "size": "320x180"}
    )
    assert status == 202 and "&sig=" in job["events_url"] and "download_url" not in job
    assert time.time() < job["links_expire_at"] <= time.time() + SIGNED_URL_TTL_S + 1

    states = await _wait_done(server, job["events_url"])
    assert states[-1]["state"] == "done", states[-1]
    mp4_url, vtt_url = states[-1]["download_url"], states[-1]["vtt_url"]

    # A plain GET, no header: the whole file, and Range still works.
    status, whole, resp = await call(server, "GET", mp4_url)
    assert status == 200 and resp.headers["Content-Type"] == "video/mp4" and len(whole) > 1000
    status, part, resp = await call(server, "GET", mp4_url, headers={"Range": "bytes=10-19"})
    assert status == 206 and part == whole[10:20]
    status, vtt, _ = await call(server, "GET", vtt_url)
    assert status == 200 and "发言：Bob".encode() in vtt  # noqa: RUF001
    # The same link as the token-header download gives.
    status, with_header, _ = await call(server, "GET", f"{base}/download?render=grid-320x180", clerk)
    assert status == 200 and with_header == whole

    parts = urlsplit(mp4_url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}

    def variant(path: str = parts.path, **changes: str) -> str:
        return f"{path}?{urlencode({**query, **changes})}"

    sig = query["sig"]
    refused = {
        "tampered signature": variant(sig=("A" if sig[0] != "A" else "B") + sig[1:]),
        "other file": variant(file="vtt"),
        "other render": variant(render="program-1280x720"),
        "later expiry": variant(expires=str(int(query["expires"]) + 3600)),
        "no expiry": variant(expires="soon"),
        "other recording": variant(path="/api/recordings/assembly-2/download"),
        "other room": variant(path="/api/recordings/other-1/download"),
        "events with a file link": variant(path=f"{base}/renders/grid-320x180/events"),
    }
    for what, url in refused.items():
        status, data, _ = await call(server, "GET", url)
        assert status == 403 and data["error"] == "forbidden", (what, status, data)
    # Signed correctly but expired.
    assert settings.secret is not None
    past = int(time.time()) - 1
    expired = variant(
        expires=str(past), sig=link_signature(settings.secret, "assembly-1", "grid-320x180", "mp4", past)
    )
    status, data, _ = await call(server, "GET", expired)
    assert status == 403 and "expired" in data["message"]
    # A header credential is not needed, but a bad link is not rescued by one either.
    status, _, _ = await call(server, "GET", refused["tampered signature"], clerk)
    assert status == 403

    # A fresh link on request, for whoever may download this recording.
    status, link, _ = await call(
        server, "POST", f"{base}/download-url", clerk, json={"render": "grid-320x180", "file": "vtt"}
    )
    assert status == 200 and link["expires"] > time.time()
    status, again, _ = await call(server, "GET", link["url"])
    assert status == 200 and again == vtt
    status, link, _ = await call(server, "POST", f"{base}/download-url", clerk, json={})
    assert status == 404  # the default program render was never made here
    for token, code in (
        (mint("other", "c", "clerk"), 403),
        (mint("assembly", "v", "venue"), 403),
        (None, 401),
    ):
        status, _, _ = await call(
            server, "POST", f"{base}/download-url", token, json={"render": "grid-320x180"}
        )
        assert status == code
    status, data, _ = await call(
        server, "POST", f"{base}/download-url", clerk, json={"render": "grid-320x180", "file": "meta"}
    )
    assert status == 400


@pytest.mark.parametrize(
    "path",
    [
        "/api/recordings/..%2F..%2Fsecret",
        "/api/recordings/%2E%2E/download",
        "/api/recordings/assembly-1/download?render=..%2F..%2F..%2Fsecret",
        "/api/recordings/assembly-1/download?render=../meta",
        "/api/recordings/assembly-1/download?render=grid-320x180&file=../../secret",
        "/api/recordings/assembly-1/renders/..%2Fmeta",
        "/api/recordings/.hidden",
        "/api/recordings/assembly-1%00",
    ],
)
async def test_path_traversal_is_refused(
    signaling_server: Server, recordings: dict[str, str], settings: Settings, path: str
) -> None:
    server = await signaling_server()
    (settings.data_dir / "recordings" / "assembly-1" / "renders").mkdir(exist_ok=True)
    status, data, _ = await call(server, "GET", path, ADMIN)
    assert status in (400, 404), (path, status, data)
    body = data if isinstance(data, bytes) else str(data).encode()
    assert settings.secret is not None and settings.secret.encode() not in body
    assert b'"format"' not in body  # meta.json never served


async def test_retention_deletes_old_recordings(settings: Settings, recordings: dict[str, str]) -> None:
    from recorder.service import RecorderService

    service = RecorderService(settings, data_dir=settings.data_dir)
    assert service.purge_expired() == []  # no retention set: keep everything
    service.retention_days = 30
    deleted = service.purge_expired(now=STARTED + 30.5 * DAY)
    assert sorted(deleted) == ["assembly-1", "other-1"]
    assert not (settings.data_dir / "recordings" / "assembly-1").exists()
    assert (settings.data_dir / "recordings" / "assembly-2").is_dir()
    await service.close()
