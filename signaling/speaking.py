"""The running speaking-time figures of a room: ``GET /api/rooms/{room}/speaking-time``.

The chair's console shows them live (web/chair-speaking.js). They are counted, as the recording's
report is, from the room's current recording (``recorder.speaking_levels.count_live``): floor time
from its floor events, voiced time from the server's speaker announcements in its timeline (the
recorded audio is read only once the recording is finished). So the figures survive a console
reload and equal the report's floor time; a room that does not record has none (``recording_id``
null). Several consoles asking at once share one count while the timeline has not grown.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from conference.roles import Permission
from recorder.archive import ArchiveError, Recording, recording_dir
from recorder.speaking_levels import count_live

# Re-counted at most this often for the same timeline size (the consoles poll every few seconds).
FRESH_S = 1.0


def setup(app: web.Application) -> None:
    from . import app as server

    recording = app[server.RECORDING_KEY]
    counted: dict[str, tuple[int, float, dict[str, Any]]] = {}  # recording id -> (size, at, figures)

    def count(recording_id: str, now: float) -> dict[str, Any] | None:
        assert recording.service is not None
        try:
            rec = Recording(recording_dir(recording.service.data_dir, recording_id))
            size = (rec.directory / "timeline.jsonl").stat().st_size
        except (ArchiveError, OSError):
            return None
        cached = counted.get(recording_id)
        if cached is not None and cached[0] == size and now - cached[1] < FRESH_S:
            return cached[2]
        figures = count_live(rec, now)
        for old in [k for k, (_, at, _) in counted.items() if now - at > 60.0]:
            del counted[old]  # recordings that stopped
        counted[recording_id] = (size, now, figures)
        return figures

    async def speaking_time(request: web.Request) -> web.Response:
        room = request.match_info["room"]
        await server.authorize(request, room, Permission.FLOOR_CONTROL)
        state = await app[server.STORE_KEY].get(room)
        if state is None:
            raise server.json_error(404, "not_found", f"no room {room!r}")
        recording_id = state.recording.recording_id if state.recording.active else None
        now = time.time()
        figures = None
        if recording_id is not None and recording.service is not None:
            figures = await asyncio.to_thread(count, recording_id, now)
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

    app.router.add_get("/api/rooms/{room}/speaking-time", speaking_time)
