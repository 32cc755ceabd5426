"""Speaking-time figures for the REST API: a room's running figures, ``GET
/api/rooms/{room}/speaking-time``, and a finished recording's (``recording_figures``, for the clerk
API), counted in a low-priority process of their own the first time.

The chair's console shows them live (web/chair-speaking.js). They are counted, as the recording's
report is, from the room's current recording (``recorder.speaking_levels.count_live``): floor time
from its floor events, voiced time from the server's speaker announcements in its timeline (the
recorded audio is read only once the recording is finished). So the figures survive a console
reload and equal the report's floor time; a room that does not record has none (``recording_id``
null). Several consoles asking at once share one count while the timeline has not grown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from conference.roles import Permission
from recorder.archive import ArchiveError, Recording, recording_dir
from recorder.speaking_levels import cached, count_live, finished, speaking_time

log = logging.getLogger(__name__)

# A room's running figures are counted at most once this often, however many consoles ask, and
# not again while its timeline has not grown.
FRESH_S = 1.0
# How long a request waits for a first count (a long meeting's is given later: the count goes on):
# the recording's view briefly (it carries much else, and the clerk page asks again), the sheets
# longer (they are nothing else).
VIEW_WAIT_S = 2.0
COUNT_WAIT_S = 30.0
COUNT_NICE = 10
# Audio this small (about seven person-minutes of Opus) is counted in a thread of this process: well
# under 0.1 s with the level extension, 0.3 s at most decoding Opus; more goes to its own process.
SMALL_AUDIO_BYTES = 1_000_000
# After a stop, how long to wait for the writer to finish the recording before counting it.
STOP_WAIT_S = 30.0
_counting: dict[Path, asyncio.Future[None]] = {}
_stop_counts: set[asyncio.Future[None]] = set()  # kept referenced while they run


def _audio_bytes(recording: Recording) -> int:
    total = 0
    for track in recording.tracks:
        if track.media == "audio":
            with contextlib.suppress(OSError):
                total += recording.track_path(track.number).stat().st_size
    return total


def _count_in_thread(recording: Recording) -> None:
    try:
        speaking_time(recording)  # writes the cache
    except Exception:  # a damaged archive must not fail the clerk's view
        log.exception("%s: counting the speaking time failed", recording.directory)


async def recording_figures(recording: Recording, wait_s: float = COUNT_WAIT_S) -> dict[str, Any] | None:
    """The figures of a recording: counted now from the timeline while it is still written (cheap);
    once finished from its cache, else counted once: a short recording's audio in a thread here, a
    longer one by ``python -m recorder.speaking_levels`` in its own low-priority process (reading
    every audio packet in this one would hold the interpreter the media path needs), waiting at
    most ``wait_s``; None while that count goes on."""
    if not finished(recording):
        return await asyncio.to_thread(count_live, recording, recording.stopped_at)
    found = await asyncio.to_thread(cached, recording)
    if found is not None:
        return found
    key = recording.directory
    small = await asyncio.to_thread(_audio_bytes, recording) <= SMALL_AUDIO_BYTES
    task = _counting.get(key)  # no await from here to its creation: one count per recording
    if task is None:
        counting = asyncio.to_thread(_count_in_thread, recording) if small else _count_in_process(key)
        task = _counting[key] = asyncio.ensure_future(counting)
        task.add_done_callback(lambda done: _counting.pop(key, None) if _counting.get(key) is done else None)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(task), wait_s)
    return await asyncio.to_thread(cached, recording)


async def _count_in_process(directory: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "recorder.speaking_levels",
        str(directory),
        str(COUNT_NICE),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        cwd=str(Path(__file__).resolve().parent.parent),
    )
    try:
        _, err = await proc.communicate()
    except asyncio.CancelledError:
        if proc.returncode is None:
            proc.kill()
        await asyncio.shield(proc.wait())
        raise
    if proc.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-1:] if err else []
        log.warning("%s: counting the speaking time failed (%s): %s", directory, proc.returncode, tail)


def setup(app: web.Application) -> None:
    from . import app as server

    recording = app[server.RECORDING_KEY]
    counted: dict[str, tuple[int, float, dict[str, Any]]] = {}  # recording id -> (size, at, figures)

    def count(recording_id: str, now: float) -> tuple[float, dict[str, Any]] | None:
        """(when counted, figures): a count of the last second, or of the same timeline, is reused."""
        assert recording.service is not None
        try:
            rec = Recording(recording_dir(recording.service.data_dir, recording_id))
            size = (rec.directory / "timeline.jsonl").stat().st_size
        except (ArchiveError, OSError):
            return None
        cached = counted.get(recording_id)
        if cached is not None and (cached[0] == size or now - cached[1] < FRESH_S):
            return cached[1], cached[2]
        figures = count_live(rec, now)
        for old in [k for k, (_, at, _) in counted.items() if now - at > 60.0]:
            del counted[old]  # recordings that stopped
        counted[recording_id] = (size, now, figures)
        return now, figures

    async def running_figures(request: web.Request) -> web.Response:
        room = request.match_info["room"]
        await server.authorize(request, room, Permission.FLOOR_CONTROL)
        state = await app[server.STORE_KEY].get(room)
        if state is None:
            raise server.json_error(404, "not_found", f"no room {room!r}")
        recording_id = state.recording.recording_id if state.recording.active else None
        now = time.time()
        figures = None
        if recording_id is not None and recording.service is not None:
            found = await asyncio.to_thread(count, recording_id, now)
            if found is not None:
                now, figures = found
        return web.json_response(
            {
                "room": room,
                "recording_id": recording_id,
                "since": state.recording.started_at if recording_id else None,
                "at": now,
                "floor": state.floor,
                "speaking_time": figures,
            }
        )

    app.router.add_get("/api/rooms/{room}/speaking-time", running_figures)

    # A recording this process wrote is counted as soon as it stops: the figures are ready when
    # the clerk opens it (in the same low-priority way as on request).
    writing: dict[str, str] = {}  # room -> the recording this process writes for it

    async def count_when_finished(recording_id: str) -> None:
        assert recording.service is not None
        deadline = time.monotonic() + STOP_WAIT_S
        while time.monotonic() < deadline:
            try:
                rec = Recording(recording_dir(recording.service.data_dir, recording_id))
            except ArchiveError:
                return
            if finished(rec):
                await recording_figures(rec, wait_s=STOP_WAIT_S)
                return
            await asyncio.sleep(0.5)

    def on_room(room: str, events: list[dict[str, Any]], state: Any) -> None:
        service = recording.service
        if service is None:
            return
        current = state.recording.recording_id if state.recording.active else None
        if current is not None and service.active(current):
            writing[room] = current
        elif current is None and room in writing:
            task = asyncio.ensure_future(count_when_finished(writing.pop(room)))
            _stop_counts.add(task)
            task.add_done_callback(_stop_counts.discard)

    app[server.STORE_KEY].subscribe(on_room)
