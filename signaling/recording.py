"""Where signaling meets the recorder: start and stop recordings, feed the timeline.

The recorder (``recorder.service.RecorderService``) is optional at run time: without it the room's
recording state still changes and is broadcast (so the chair sees it), but nothing is stored, and
the server says so once in its log.
"""

from __future__ import annotations

import inspect
import logging
import secrets
import time
from collections.abc import Awaitable, Callable

from conference import room as room_commands
from conference.config import Settings
from conference.media import MediaBackend
from conference.room import CommandError, Event, RoomState
from conference.store import RoomStore
from recorder.service import RecorderService

log = logging.getLogger(__name__)


def new_recording_id(room: str, now: float | None = None) -> str:
    """``<room>-<UTC yyyymmddTHHMMSS>-<4 hex>``: sortable, and safe as a file name."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(time.time() if now is None else now))
    return f"{room}-{stamp}-{secrets.token_hex(2)}"


class RecordingControl:
    def __init__(self, settings: Settings, store: RoomStore, media: MediaBackend) -> None:
        self.settings = settings
        self.store = store
        self.media = media
        self.service: RecorderService | None = RecorderService(settings)
        self.before_stop: list[Callable[[str], Awaitable[None]]] = []

    @property
    def stores_recordings(self) -> bool:
        return self.service is not None

    async def start(self, room: str) -> tuple[RoomState, str]:
        recording_id = new_recording_id(room)
        state, _ = await self.store.update(room, lambda s: room_commands.start_recording(s, recording_id))
        if self.service is not None:
            try:
                sink = await self.service.start(room, recording_id, state)
            except Exception as exc:
                log.exception("recorder failed to start %s", recording_id)
                # Undo, so the room does not claim to record what is not being stored.
                await self.store.update(room, room_commands.stop_recording)
                raise CommandError("internal", f"the recorder could not start: {exc}") from None
            current = await self.store.get(room)
            if current is None or current.recording.recording_id != recording_id:
                # Stopped while the writer opened (the last participant left): the stop found no
                # writer to close, so close it here rather than leave it running unowned.
                await self.service.stop(room, recording_id)
                raise CommandError("conflict", "the recording stopped as it started (the room emptied)")
            self.media.set_recorder(room, sink)
        return state, recording_id

    async def resume(self, room: str) -> tuple[RoomState, int]:
        """The room's recording goes on here as its next part (its node died; signaling.restore):
        same recording id, so the render spans both parts with the gap shown."""
        state, _ = await self.store.update(room, room_commands.next_recording_part)
        recording_id, part = state.recording.recording_id, state.recording.part
        if self.service is not None and recording_id is not None:
            try:
                sink = await self.service.start_part(room, recording_id, part, state)
            except Exception as exc:
                log.exception("recorder failed to go on with %s as part %d", recording_id, part)
                await self.store.update(room, room_commands.stop_recording)
                raise CommandError("internal", f"the recorder could not go on: {exc}") from None
            self.media.set_recorder(room, sink)
        return state, part

    async def stop(self, room: str) -> tuple[RoomState, str | None]:
        for hook in self.before_stop:  # last entries of the timeline (signaling.comments: figures)
            try:
                await hook(room)
            except Exception:
                log.exception("a recording's closing entry failed for room %s", room)
        stopped: list[str | None] = [None]

        def stop(state: RoomState) -> list[Event]:
            stopped[0] = state.recording.recording_id  # read inside the atomic update
            return room_commands.stop_recording(state)

        state, _ = await self.store.update(room, stop)
        recording_id = stopped[0]
        self.media.set_recorder(room, None)
        if self.service is not None and recording_id is not None:
            try:
                await self.service.stop(room, recording_id)
            except Exception:
                log.exception("recorder failed to stop %s", recording_id)
        return state, recording_id

    async def on_events(self, room: str, events: list[Event], state: RoomState) -> None:
        if self.service is None:
            return
        try:
            result = self.service.on_events(room, events, state)
            if inspect.isawaitable(result):
                await result
        except Exception:  # the timeline must never break the room
            log.exception("recorder timeline failed for room %s", room)
