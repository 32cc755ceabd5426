"""The clerk's REST API for recordings (docs/recordings.md).

- ``GET /api/recordings?room=R&date=YYYY-MM-DD``: the recordings the caller may see, newest first;
- ``GET /api/recordings/{id}``: metadata, participants, timeline summary (chapters), renders;
- ``POST /api/recordings/{id}/renders`` ``{"layout", "size", "from", "to", "captions"}``: a render job;
- ``GET /api/recordings/{id}/renders/{job}``: one job with its progress;
- ``GET /api/recordings/{id}/renders/{job}/events``: the job's progress as Server-Sent Events;
- ``GET /api/recordings/{id}/download?render=JOB&file=mp4|vtt``: a render (the program render by
  default), with HTTP Range;
- ``POST /api/recordings/{id}/download-url`` ``{"render", "file"}``: a signed, short-lived link to
  one file (``mp4``, ``vtt``, or ``events`` for the progress stream);
- ``GET /api/recordings/{id}/speaking-time.csv`` and ``.xlsx``: the speaking-time figures
  (``speaking_time`` in the recording's view) as a CSV and an Excel sheet;
- ``DELETE /api/recordings/{id}``.

Signed links: a browser can only put a token in a header with ``fetch``, which holds the whole file
in memory before saving it; a plain link or an ``EventSource`` sends no header. So the views hand
out URLs carrying ``expires`` and ``sig`` (HMAC-SHA256 with a key derived from the server's secret,
over recording, render, file and expiry): valid for ``SIGNED_URL_TTL_S`` for exactly that file.

Who may do what: the admin key and admin clerk tokens (``conference token --role clerk --admin``,
the records office) everything, in every room; a clerk or chair token of a room lists, reads,
renders and downloads that room's recordings. Deleting destroys one of the assembly's records:
only the admin key and admin clerk tokens may. A token whose identity the chair removed from its
room is refused (403), as on every other path (``signaling.admission``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web

from conference.roles import Permission, Role, can
from conference.store import RoomStore
from recorder.archive import ArchiveError, Recording, check_recording_id, list_recordings, recording_dir
from recorder.jobs import (
    JobError,
    RenderJobs,
    job_id_for,
    job_path,
    list_jobs,
    options_from_request,
    read_job,
)
from recorder.render import RenderOptions
from recorder.replay import chapters_of
from recorder.service import RecorderService
from recorder.speaking_sheets import to_csv, to_xlsx
from recorder.titles import language_of, recording_language

from .admission import check_not_removed
from .errors import STATUS_FOR_CODE, json_error
from .guard import GUARD_KEY, check_throttle
from .speaking import VIEW_WAIT_S, recording_figures
from .tokens import TokenError, admin_key_matches, verify_token

# The clerk sub-application's own keys: what it needs is passed in when it is built.
RECORDER_KEY = web.AppKey("clerk_recorder", RecorderService)
SECRET_KEY = web.AppKey("clerk_secret", str)
ADMIN_KEY_KEY = web.AppKey("clerk_admin_key", str)
STORE_KEY = web.AppKey("clerk_store", RoomStore)
SSE_INTERVAL_S = 0.5
SSE_MAX_S = 3600.0
# Long enough to click a link shown on the clerk's page, short enough that a copied or logged link
# is soon useless. The clerk page asks for a fresh one when it is close to expiry.
SIGNED_URL_TTL_S = 600
SIGNED_FILES = ("mp4", "vtt", "events")


# --- who is asking -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Access:
    """What the caller may see: every room (``room`` None) or one room, and whether it may delete."""

    room: str | None
    role: Role | None
    identity: str | None

    def sees(self, room: str) -> bool:
        return self.room is None or self.room == room

    @property
    def may_delete(self) -> bool:
        # Only the records office: the admin key or an admin clerk token (role None here).
        return self.role is None

    @property
    def may_download(self) -> bool:
        return self.role is None or can(self.role, Permission.DOWNLOAD_RECORDINGS)


# A request carrying a valid signed link: it may fetch exactly the file the link names.
SIGNED = Access(None, None, None)


def _bearer(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


async def authorize(request: web.Request) -> Access:
    """The one place that turns the request's credentials into an Access (or a 401/403)."""
    token = _bearer(request)
    if token is None:
        raise json_error(401, "unauthorized", "missing Authorization: Bearer <token or admin key>")
    check_throttle(request)
    if admin_key_matches(request.app[ADMIN_KEY_KEY], token):
        return Access(None, None, None)
    try:
        claims = verify_token(request.app[SECRET_KEY], token)
    except TokenError as exc:
        if exc.guess:
            request.config_dict[GUARD_KEY].failed(request)
        raise json_error(401, "unauthorized", exc.reason) from None
    try:
        await check_not_removed(request.app[STORE_KEY], claims)
    except TokenError as exc:
        raise json_error(403, "forbidden", exc.reason) from None
    if claims.admin:
        return Access(None, None, claims.identity)
    if not can(claims.role, Permission.LIST_RECORDINGS):
        raise json_error(403, "forbidden", f"role {claims.role} may not see recordings")
    return Access(claims.room, claims.role, claims.identity)


# --- signed links ----------------------------------------------------------------------------------


def link_signature(secret: str, recording_id: str, render: str, file: str, expires: int) -> str:
    """HMAC-SHA256 with a key of its own, derived from the token secret (so a link signature can
    never stand for a token's), over what the link may fetch and until when."""
    key = hmac.new(secret.encode(), b"conference recording link v1", hashlib.sha256).digest()
    message = f"{recording_id}\n{render}\n{file}\n{expires}".encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _secret(request: web.Request) -> str:
    return request.app[SECRET_KEY]


def signed_url(
    request: web.Request, recording_id: str, render: str, file: str, now: float | None = None
) -> tuple[str, int]:
    """A link to one file of one render, valid for SIGNED_URL_TTL_S: (url, expires)."""
    expires = int((time.time() if now is None else now) + SIGNED_URL_TTL_S)
    sig = link_signature(_secret(request), recording_id, render, file, expires)
    base = f"/api/recordings/{quote(recording_id, safe='')}"
    if file == "events":
        return (
            f"{base}/renders/{quote(render, safe='')}/events?{urlencode({'expires': expires, 'sig': sig})}",
            expires,
        )
    query = urlencode({"render": render, "file": file, "expires": expires, "sig": sig})
    return f"{base}/download?{query}", expires


def _check_signed(request: web.Request, file: str) -> None:
    """403 unless the request's ``expires``/``sig`` sign this recording, render and file."""
    recording_id = request.match_info["id"]
    render = request.match_info.get("job") or request.query.get("render") or _default_job()
    try:
        expires = int(request.query.get("expires", ""))
    except ValueError:
        request.config_dict[GUARD_KEY].failed(request)
        raise json_error(403, "forbidden", "the link has no valid expiry") from None
    expected = link_signature(_secret(request), recording_id, render, file, expires)
    if not hmac.compare_digest(expected, request.query.get("sig", "")):
        request.config_dict[GUARD_KEY].failed(request)  # a forged or tampered link: a guess
        raise json_error(403, "forbidden", "the link's signature does not match")
    # Checked after the signature, so a forged link learns nothing about expiry.
    if expires < time.time():
        raise json_error(403, "forbidden", "the link has expired: ask for a new one")


async def _access_or_link(request: web.Request, file: str) -> Access:
    """A signed link when the request carries one (no header needed), else the bearer credential."""
    if "sig" in request.query:
        check_throttle(request)
        _check_signed(request, file)
        return SIGNED
    return await authorize(request)


def _service(request: web.Request) -> RecorderService:
    return request.app[RECORDER_KEY]


def _recording(request: web.Request, access: Access) -> Recording:
    recording_id = request.match_info["id"]
    try:
        check_recording_id(recording_id)
        recording = Recording(recording_dir(_service(request).data_dir, recording_id))
    except ArchiveError:
        raise json_error(404, "not_found", f"no recording {recording_id!r}") from None
    if not access.sees(recording.room):
        raise json_error(403, "forbidden", "this recording belongs to another room")
    return recording


# --- views -----------------------------------------------------------------------------------------


def _state(service: RecorderService, recording: Recording) -> str:
    if service.active(recording.id):
        return "recording"
    if recording.meta.get("interrupted"):
        return "interrupted"
    return "finished" if recording.complete else "recording"


def _size(recording: Recording) -> int:
    total = 0
    for path in recording.directory.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file():
                total += path.stat().st_size
    return total


def _job_view(request: web.Request, access: Access, recording_id: str, job: dict[str, Any]) -> dict[str, Any]:
    """The job with its links; signed ones (working without a header) for callers who may download."""
    view = {k: v for k, v in job.items() if k != "chapters"}
    base = f"/api/recordings/{recording_id}"
    render = str(job["id"])
    view["url"] = f"{base}/renders/{render}"
    if not access.may_download:
        view["events_url"] = f"{base}/renders/{render}/events"
        return view
    view["events_url"], expires = signed_url(request, recording_id, render, "events")
    if job.get("state") == "done":
        view["download_url"], _ = signed_url(request, recording_id, render, "mp4")
        view["vtt_url"], _ = signed_url(request, recording_id, render, "vtt")
    view["links_expire_at"] = expires
    return view


def _summary(service: RecorderService, recording: Recording) -> dict[str, Any]:
    return {
        **recording.summary(),
        "state": _state(service, recording),
        "participants": recording.participants(),
        "size_bytes": _size(recording),
    }


async def list_view(request: web.Request) -> web.Response:
    access = await authorize(request)
    room = request.query.get("room") or None
    if room is not None and not access.sees(room):
        raise json_error(403, "forbidden", "your token is for another room")
    date = request.query.get("date") or None
    if date is not None and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", date):
        raise json_error(400, "bad_request", "date must be YYYY-MM-DD")
    service = _service(request)

    def collect() -> list[dict[str, Any]]:
        out = []
        for rec in list_recordings(service.data_dir, room or access.room):
            if not access.sees(rec.room):
                continue
            if date is not None and time.strftime("%Y-%m-%d", time.gmtime(rec.started_at)) != date:
                continue
            renders = [
                {k: j.get(k) for k in ("id", "layout", "size", "state", "progress")}
                for j in list_jobs(service.data_dir, rec.id)
            ]
            out.append({**_summary(service, rec), "renders": renders})
        return out

    return web.json_response(await asyncio.to_thread(collect))


async def detail_view(request: web.Request) -> web.Response:
    access = await authorize(request)
    recording = _recording(request, access)
    service = _service(request)

    def collect() -> dict[str, Any]:
        data = _summary(service, recording)
        kinds: dict[str, int] = {}
        for e in recording.timeline:
            kinds[str(e.get("kind"))] = kinds.get(str(e.get("kind")), 0) + 1
        # ?lang= the page's language; without it the recording's own (recorder/titles.py).
        language = request.query.get("lang") or None
        chapters = chapters_of(recording, recording.started_at, recording.stopped_at, language)
        data["timeline"] = [{"t": round(c.at, 3), "title": c.title} for c in chapters]
        data["events"] = kinds
        data["tracks"] = [
            {"identity": t.identity, "kind": t.media, "codec": t.codec} for t in recording.tracks
        ]
        data["renders"] = [
            _job_view(request, access, recording.id, j) for j in list_jobs(service.data_dir, recording.id)
        ]
        # The public's figures (signaling.comments): the last the meeting wrote into the timeline.
        data["public"] = next(
            (e.get("figures") for e in reversed(recording.timeline) if e.get("kind") == "public_figures"),
            None,
        )
        return data

    data = await asyncio.to_thread(collect)
    # None while a long meeting's first count goes on (docs/recordings.md).
    data["speaking_time"] = await recording_figures(recording, VIEW_WAIT_S)
    return web.json_response(data)


async def create_render(request: web.Request) -> web.Response:
    access = await authorize(request)
    recording = _recording(request, access)
    service = _service(request)
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise json_error(400, "bad_request", "body must be JSON") from None
    try:
        options = options_from_request(body)
    except JobError as exc:
        raise json_error(STATUS_FOR_CODE.get(exc.code, 400), exc.code, exc.message) from None
    if options.language == recording_language(recording.meta):
        options.language = None  # the recording's own: the same job as the default render's
    _layout, _, arg = options.layout.partition(":")
    if arg:
        known = {p["identity"] for p in recording.participants()}
        missing = [i for i in arg.split(",") if i and i not in known]
        if missing:
            raise json_error(400, "bad_request", f"no participant {missing[0]!r} in this recording")
    if service.active(recording.id):
        raise json_error(409, "conflict", "the room is still recording; render when it stops")
    existing = read_job(job_path(service.data_dir, recording.id, job_id_for(options), ".json"))
    job = service.jobs.submit(recording.id, options)
    status = 200 if existing is not None and existing.get("created_at") == job.get("created_at") else 202
    return web.json_response(_job_view(request, access, recording.id, job), status=status)


def _job(request: web.Request, recording: Recording) -> tuple[Path, dict[str, Any]]:
    job_id = request.match_info.get("job") or request.query.get("render") or _default_job()
    try:
        path = job_path(_service(request).data_dir, recording.id, job_id, ".json")
    except JobError:
        raise json_error(404, "not_found", f"no render {job_id!r}") from None
    job = read_job(path)
    if job is None:
        raise json_error(404, "not_found", f"no render {job_id!r} of this recording")
    return path, job


def _default_job() -> str:
    return job_id_for(RenderOptions())


async def job_view(request: web.Request) -> web.Response:
    access = await authorize(request)
    recording = _recording(request, access)
    _, job = _job(request, recording)
    return web.json_response(_job_view(request, access, recording.id, job))


async def job_events(request: web.Request) -> web.StreamResponse:
    """Progress of one render as Server-Sent Events until it is done or failed. A signed link works
    without a header (EventSource sends none); it is checked once, when the stream opens."""
    access = await _access_or_link(request, "events")
    recording = _recording(request, access)
    path, job = _job(request, recording)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    deadline = time.monotonic() + SSE_MAX_S
    last: tuple[Any, Any] | None = None
    while True:
        current = (job.get("state"), job.get("progress"))
        if current != last:
            last = current
            payload = json.dumps(_job_view(request, access, recording.id, job))
            await response.write(f"event: progress\ndata: {payload}\n\n".encode())
        if job.get("state") not in ("queued", "running") or time.monotonic() > deadline:
            break
        transport = request.transport
        if transport is None or transport.is_closing():
            return response  # the clerk closed the page: the production runner does not cancel us
        await asyncio.sleep(SSE_INTERVAL_S)
        job = read_job(path) or job
    await response.write_eof()
    return response


async def download(request: web.Request) -> web.StreamResponse:
    kind = request.query.get("file", "mp4")
    if kind not in ("mp4", "vtt"):
        raise json_error(400, "bad_request", "file must be mp4 or vtt")
    access = await _access_or_link(request, kind)
    if not access.may_download:
        raise json_error(403, "forbidden", f"role {access.role} may not download recordings")
    recording = _recording(request, access)
    _, job = _job(request, recording)
    if job.get("state") != "done":
        raise json_error(409, "conflict", f"render {job['id']!r} is {job.get('state')}, not done yet")
    path = job_path(_service(request).data_dir, recording.id, str(job["id"]), f".{kind}")
    if not path.is_file():
        raise json_error(404, "not_found", "the rendered file is missing")
    filename = f"{recording.id}-{job['id']}.{kind}"
    return web.FileResponse(
        path,
        headers={
            "Content-Type": "video/mp4" if kind == "mp4" else "text/vtt; charset=utf-8",
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Cache-Control": "private, no-store",
        },
    )


async def create_link(request: web.Request) -> web.Response:
    """A fresh signed link to one file of a render (the clerk page asks again when one is old)."""
    access = await authorize(request)
    if not access.may_download:
        raise json_error(403, "forbidden", f"role {access.role} may not download recordings")
    recording = _recording(request, access)
    try:
        body = await request.json() if request.can_read_body else {}
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise json_error(400, "bad_request", "body must be JSON") from None
    if not isinstance(body, dict) or set(body) - {"render", "file"}:
        raise json_error(400, "bad_request", 'body is {"render": JOB, "file": "mp4"|"vtt"|"events"}')
    file = body.get("file", "mp4")
    if file not in SIGNED_FILES:
        raise json_error(400, "bad_request", "file must be mp4, vtt or events")
    render = body.get("render") or _default_job()
    if not isinstance(render, str):
        raise json_error(400, "bad_request", "render must be a string")
    try:
        job = read_job(job_path(_service(request).data_dir, recording.id, render, ".json"))
    except JobError:
        job = None
    if job is None:
        raise json_error(404, "not_found", f"no render {render!r} of this recording")
    if file != "events" and job.get("state") != "done":
        raise json_error(409, "conflict", f"render {render!r} is {job.get('state')}, not done yet")
    url, expires = signed_url(request, recording.id, render, file)
    return web.json_response({"url": url, "expires": expires})


async def speaking_sheet(request: web.Request) -> web.Response:
    """The speaking-time figures as ``speaking-time.csv`` or ``speaking-time.xlsx`` (an attachment:
    small enough for the page to fetch with its header and save)."""
    access = await authorize(request)
    recording = _recording(request, access)
    kind = "csv" if request.path.endswith(".csv") else "xlsx"
    language = language_of(request.query.get("lang") or recording_language(recording.meta))
    data = await recording_figures(recording)
    if data is None:
        raise json_error(409, "conflict", "the speaking time is still being counted: ask again shortly")
    if kind == "csv":
        body, content_type = to_csv(data).encode(), "text/csv; charset=utf-8"
    else:
        body = await asyncio.to_thread(to_xlsx, data, language)
        content_type = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    return web.Response(
        body=body,
        headers={
            "Content-Type": content_type,
            "Content-Disposition": f'attachment; filename="{recording.id}-speaking-time.{kind}"',
            "Cache-Control": "private, no-store",
        },
    )


async def delete_view(request: web.Request) -> web.Response:
    access = await authorize(request)
    recording = _recording(request, access)
    if not access.may_delete:
        raise json_error(403, "forbidden", f"role {access.role} may not delete recordings")
    try:
        await asyncio.to_thread(_service(request).delete, recording.id)
    except ArchiveError as exc:
        raise json_error(409, "conflict", str(exc)) from None
    return web.json_response({"deleted": recording.id})


# --- wiring ----------------------------------------------------------------------------------------


def create_clerk_app(
    service: RecorderService, *, secret: str, admin_key: str, store: RoomStore
) -> web.Application:
    """The clerk API (recordings, renders, downloads), mounted at ``/api/recordings``."""
    app = web.Application()
    app[RECORDER_KEY] = service
    app[SECRET_KEY] = secret
    app[ADMIN_KEY_KEY] = admin_key
    app[STORE_KEY] = store
    app.router.add_get("", list_view)
    app.router.add_get("/{id}", detail_view)
    app.router.add_delete("/{id}", delete_view)
    app.router.add_post("/{id}/renders", create_render)
    app.router.add_get("/{id}/renders/{job}", job_view)
    app.router.add_get("/{id}/renders/{job}/events", job_events)
    app.router.add_get("/{id}/download", download)
    app.router.add_post("/{id}/download-url", create_link)
    app.router.add_get("/{id}/speaking-time.csv", speaking_sheet)
    app.router.add_get("/{id}/speaking-time.xlsx", speaking_sheet)

    return app


__all__ = ["Access", "RenderJobs", "authorize", "create_clerk_app", "link_signature", "signed_url"]
