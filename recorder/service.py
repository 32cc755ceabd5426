"""The recorder as the server sees it: start and stop recordings, feed their timelines, renders.

Signaling calls ``start`` when a room begins recording (the chair's command or auto-record),
``on_events`` with every room event, and ``stop`` when it ends; the media core gets the sink that
``start`` returns. Stopping finalises the archive and queues the program render in a separate
process. Recordings older than ``recording_retention_days`` are deleted on a timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from conference.config import Settings
from conference.room import Event, RoomState

from .archive import (
    ArchiveError,
    Recording,
    RecordingWriter,
    list_recordings,
    make_private_dir,
    part_dir,
    recording_dir,
    write_private_text,
    writer_alive,
)
from .jobs import RenderJobs, interrupted, list_jobs, options_from_job
from .render import RenderError, RenderOptions

log = logging.getLogger(__name__)

PURGE_EVERY_S = 3600.0


class RecorderService:
    def __init__(self, settings: Settings | None = None, *, data_dir: str | Path | None = None) -> None:
        if settings is None:
            settings = Settings(data_dir=Path(data_dir if data_dir is not None else "data"))
        self.data_dir = Path(data_dir) if data_dir is not None else settings.data_dir
        self.retention_days: float | None = settings.recording_retention_days
        self.auto_render = settings.recording_auto_render
        self._fsync = settings.recording_fsync
        self._writers: dict[str, RecordingWriter] = {}  # by recording id
        self._room_recording: dict[str, str] = {}  # room -> recording id
        self.jobs = RenderJobs(self.data_dir)
        self._recovered = False
        self._finished_flusher_cpu_s = 0.0  # of the recordings already stopped
        self._finished_bytes = 0

    def stats(self) -> dict[str, Any]:
        """Recordings running, and the CPU seconds their archive threads used since the start."""
        running = sum(w.flusher_cpu_s for w in self._writers.values())
        return {
            "recording": len(self._writers),
            "rendering": len(self.jobs.running),  # render jobs queued or running
            "archive_thread_cpu_s": round(running + self._finished_flusher_cpu_s, 4),
            "bytes_written": self._finished_bytes + sum(w.bytes_written for w in self._writers.values()),
        }

    # --- recording -----------------------------------------------------------------------------

    def active(self, recording_id: str) -> bool:
        return recording_id in self._writers

    async def start(self, room: str, recording_id: str, state: RoomState) -> RecordingWriter:
        directory = recording_dir(self.data_dir, recording_id)  # checks the id
        if recording_id in self._writers or directory.exists():
            raise ArchiveError(f"recording {recording_id!r} already exists")
        make_private_dir(directory.parent)
        started_at = state.recording.started_at or time.time()
        writer = await asyncio.to_thread(
            RecordingWriter, directory, recording_id, room, started_at, fsync=self._fsync
        )
        # Who is there and what the program is when recording starts: the render's starting point.
        writer.add_entry({"kind": "snapshot", "at": started_at, "state": state.to_json()})
        self._writers[recording_id] = writer
        self._room_recording[room] = recording_id
        log.info("recording %s of room %s started in %s", recording_id, room, directory)
        return writer

    async def start_part(self, room: str, recording_id: str, part: int, state: RoomState) -> RecordingWriter:
        """Go on with ``recording_id`` as its part ``part`` (2, 3, ...): its node died and this one
        took the room up. The earlier parts are where the recordings directory has them: several
        nodes sharing one (docs/deploy.md) have them all, so the render spans the gap; a node with
        a directory of its own starts the recording's directory here with part 1 marked as written
        elsewhere (the render then shows its time as lost)."""
        main = recording_dir(self.data_dir, recording_id)  # checks the id
        if recording_id in self._writers:
            raise ArchiveError(f"recording {recording_id!r} is already being written here")
        started_at = time.time()
        if (main / "meta.json").is_file():
            # The dead node's parts: their writers are gone (no lock), finalise them with their data.
            await asyncio.to_thread(_finalise_dead_parts, main)
        else:
            make_private_dir(main / "tracks")
            meta = {
                "format": 1,
                "id": recording_id,
                "room": room,
                "started_at": state.recording.started_at or started_at,
                "stopped_at": state.recording.started_at or started_at,
                "complete": True,
                "interrupted": True,
                "elsewhere": True,  # part 1 was written on the node that died
            }
            write_private_text(main / "timeline.jsonl", "")
            _write_meta(main, meta)
        directory = part_dir(main, part)
        if directory.exists():
            raise ArchiveError(f"part {part} of recording {recording_id!r} already exists")
        writer = await asyncio.to_thread(
            RecordingWriter, directory, recording_id, room, started_at, fsync=self._fsync, part=part
        )
        writer.add_entry({"kind": "snapshot", "at": started_at, "state": state.to_json()})
        self._writers[recording_id] = writer
        self._room_recording[room] = recording_id
        log.info("recording %s of room %s goes on as part %d in %s", recording_id, room, part, directory)
        return writer

    def on_events(self, room: str, events: list[Event], state: RoomState) -> None:
        recording_id = self._room_recording.get(room)
        writer = self._writers.get(recording_id) if recording_id else None
        if writer is None:
            return
        for event in events:
            writer.add_entry(event)

    async def stop(self, room: str, recording_id: str) -> dict[str, Any] | None:
        """Finalise the recording; queue its program render unless ``auto_render`` is off."""
        writer = self._writers.pop(recording_id, None)
        if self._room_recording.get(room) == recording_id:
            del self._room_recording[room]
        if writer is None:
            log.warning("stop of unknown recording %s", recording_id)
            return None
        await asyncio.to_thread(writer.close)
        self._finished_flusher_cpu_s += writer.flusher_cpu_s
        self._finished_bytes += writer.bytes_written
        log.info("recording %s of room %s stopped", recording_id, room)
        if self.auto_render:
            return self.jobs.submit(recording_id, RenderOptions())
        return None

    async def hand_over(self, room: str) -> str | None:
        """The room went to another node while this one still wrote its recording (its beats came
        late): close this part as it is, without a render; the other node goes on with the next part
        and renders the whole when the recording stops there."""
        recording_id = self._room_recording.pop(room, None)
        writer = self._writers.pop(recording_id, None) if recording_id else None
        if writer is None:
            return None
        await asyncio.to_thread(writer.close)
        self._finished_flusher_cpu_s += writer.flusher_cpu_s
        self._finished_bytes += writer.bytes_written
        log.warning(
            "recording %s of room %s: this node's part closed, the room went elsewhere", recording_id, room
        )
        return recording_id

    async def recover(self, going_on: set[str] | None = None) -> list[str]:
        """Finalise recordings left open by a server that died; queue their program renders.

        A recording whose writer is gone (no process holds its lock, ``writer_alive``) is
        finalised however recent its data: a server restarted a second after a crash recovers it.
        One still written by another process on this machine is left alone, and so is one in
        ``going_on`` (its room still records: the node taking the room up writes its next part)."""
        if self._recovered:
            return []
        self._recovered = True
        recovered = []
        for rec in await asyncio.to_thread(list_recordings, self.data_dir):
            if rec.complete:
                # Renders cut short by a server shutdown or crash start again.
                for job in await asyncio.to_thread(list_jobs, self.data_dir, rec.id):
                    if interrupted(job) and (rec.id, job["id"]) not in self.jobs.running:
                        with contextlib.suppress(RenderError, KeyError, ValueError):
                            self.jobs.submit(rec.id, options_from_job(job), force=True)
                continue
            if rec.id in self._writers or (going_on and rec.id in going_on):
                continue
            if await asyncio.to_thread(writer_alive, rec.directory):
                continue  # still being written by another server process
            await asyncio.to_thread(_finalise_interrupted, rec)
            log.warning("recording %s was interrupted (server stopped); kept up to the last data", rec.id)
            recovered.append(rec.id)
            if self.auto_render:
                self.jobs.submit(rec.id, RenderOptions())
        return recovered

    # --- retention ------------------------------------------------------------------------------

    def delete(self, recording_id: str) -> None:
        if recording_id in self._writers:
            raise ArchiveError(f"recording {recording_id!r} is still running")
        directory = recording_dir(self.data_dir, recording_id)
        if not (directory / "meta.json").is_file():
            raise ArchiveError(f"no recording {recording_id!r}")
        shutil.rmtree(directory)

    def purge_expired(self, now: float | None = None) -> list[str]:
        """Delete finished recordings older than the retention setting; returns their ids."""
        if not self.retention_days:
            return []
        return purge(self.data_dir, self.retention_days, now, keep=set(self._writers))

    async def run_retention(self) -> None:
        while True:
            try:
                deleted = await asyncio.to_thread(self.purge_expired)
                if deleted:
                    log.info("retention: deleted %d recordings: %s", len(deleted), ", ".join(deleted))
            except Exception:
                log.exception("retention purge failed")
            await asyncio.sleep(PURGE_EVERY_S)

    async def close(self) -> None:
        """Server shutdown: finalise every running recording; its program render is queued for
        the next server start (``recover``) rather than started now."""
        for recording_id, writer in list(self._writers.items()):
            with contextlib.suppress(Exception):
                await asyncio.to_thread(writer.close)
                if self.auto_render:
                    self.jobs.submit(recording_id, RenderOptions(), start=False)
            self._writers.pop(recording_id, None)
        self._room_recording.clear()
        await self.jobs.close()


def _write_meta(directory: Path, meta: dict[str, Any]) -> None:
    from .archive import _write_json_atomic

    _write_json_atomic(directory / "meta.json", meta)


def _finalise_interrupted(rec: Recording) -> None:
    """Every part whose writer died: complete, ``interrupted``, stopped at its last data."""
    for part in (rec, *rec.parts):
        if not part.own_complete:
            meta = dict(part.meta)
            meta.update(stopped_at=part.own_stopped_at, complete=True, interrupted=True)
            _write_meta(part.directory, meta)


def _finalise_dead_parts(directory: Path) -> None:
    if not writer_alive(directory):
        _finalise_interrupted(Recording(directory))


def purge(
    data_dir: str | Path, retention_days: float, now: float | None = None, keep: set[str] | None = None
) -> list[str]:
    now = time.time() if now is None else now
    cutoff = now - retention_days * 86400
    deleted = []
    for rec in list_recordings(data_dir):
        if keep and rec.id in keep:
            continue
        if not rec.complete:
            continue  # possibly still being written by another process
        if rec.stopped_at < cutoff:
            shutil.rmtree(rec.directory, ignore_errors=True)
            deleted.append(rec.id)
    return deleted
