"""The recording archive: written while a room records, read by the renderer and the clerk API.

A recording is one directory ``<data_dir>/recordings/<recording_id>/`` (format in
docs/recordings.md):

- ``meta.json``: id, room, start and (once finalised) stop time; replaced atomically.
- ``timeline.jsonl``: one JSON object per line: the room snapshot at the start, every room event,
  active-speaker changes and which file holds which published track.
- ``tracks/<n>.rtp``: the track's RTP packets as they arrived, undecoded, in checksummed records.

The media hot path only appends to an in-memory buffer (``TrackWriter.write``); a flusher thread
per recording moves the buffers to disk every ``FLUSH_INTERVAL`` seconds (sooner when a buffer
holds ``FLUSH_PACKETS`` packets), so a killed server loses at most the last fraction of a second.
"""

from __future__ import annotations

import fcntl
import json
import logging
import mmap
import os
import re
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
FLUSH_INTERVAL = 0.25
# Flush sooner than the timer when this many packets wait (~0.5 s of a 1.5 Mbit/s video track).
FLUSH_PACKETS = 256

# A track file is a sequence of chunks, one per flush: chunk header (magic, body length, CRC-32 of
# the body), then the body: records of (arrival as float64 seconds since the epoch, packet length,
# packet). The checksum is per chunk so the hot path does no hashing; the magic lets a reader
# resynchronise after a damaged chunk.
CHUNK_MAGIC = b"RCK1"
_CHUNK = struct.Struct("!4sII")
CHUNK_HEADER_SIZE = _CHUNK.size  # 12
_RECORD = struct.Struct("!dH")
RECORD_HEADER_SIZE = _RECORD.size  # 10
MAX_CHUNK = 64 * 1024 * 1024

_RECORDING_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # fullmatch: `$` passes a trailing newline


class ArchiveError(Exception):
    """A recording that does not exist or cannot be read."""


class BadRecordingId(ArchiveError, ValueError):
    pass


def check_recording_id(recording_id: str) -> str:
    """Return ``recording_id`` if it is safe as a single path component, else raise."""
    if not isinstance(recording_id, str) or not _RECORDING_ID.fullmatch(recording_id) or ".." in recording_id:
        raise BadRecordingId(f"invalid recording id {recording_id!r}")
    return recording_id


def recordings_root(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / "recordings"


def recording_dir(data_dir: str | os.PathLike[str], recording_id: str) -> Path:
    """The directory of a recording; the id is checked so it can never leave the data dir."""
    root = recordings_root(data_dir).resolve()
    path = (root / check_recording_id(recording_id)).resolve()
    if path.parent != root:
        raise BadRecordingId(f"invalid recording id {recording_id!r}")
    return path


def encode_chunk(records: list[tuple[float, bytes]]) -> bytes:
    """One chunk as it appears in a track file (for tools and tests)."""
    body = b"".join(_RECORD.pack(arrival, len(packet)) + packet for arrival, packet in records)
    return _CHUNK.pack(CHUNK_MAGIC, len(body), zlib.crc32(body)) + body


# Recordings are the assembly's records: owner and group only, whatever the process umask.
FILE_MODE = 0o640
DIR_MODE = 0o750


def make_private_dir(path: Path) -> None:
    """``path`` and any missing parents, 0750 (mkdir's mode is cut by the umask: chmod after)."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    for created in missing:
        os.chmod(created, DIR_MODE)


def write_private_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a temporary file renamed over it), mode 0640."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, FILE_MODE)  # an older temporary file keeps its old mode through O_CREAT
    os.replace(tmp, path)


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    write_private_text(path, json.dumps(data, indent=1, sort_keys=True))


# --- writing -------------------------------------------------------------------------------


class TrackWriter:
    """One published track's file; ``write`` is called on the media hot path."""

    __slots__ = ("_fd", "_owner", "_pending", "bytes_written", "closed", "number", "packets")

    def __init__(self, owner: RecordingWriter, number: int, path: Path) -> None:
        self._owner = owner
        self.number = number
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        self._pending: list[tuple[float, bytes]] = []
        self.packets = 0
        self.bytes_written = 0
        self.closed = False

    def write(self, arrival: float, packet: bytes) -> None:
        # Only a reference is kept (packets are immutable bytes); the flusher thread packs and
        # writes them. No lock: list.append and the flusher's slice-then-delete are each atomic
        # under the GIL, and only this method appends.
        if not self.closed:
            pending = self._pending
            pending.append((arrival, packet))
            if len(pending) >= FLUSH_PACKETS:
                self._owner.wake()

    def flush(self) -> None:
        pending = self._pending
        count = len(pending)
        if not count:
            return
        items = pending[:count]
        del pending[:count]
        parts: list[bytes] = []
        for arrival, packet in items:
            if len(packet) <= 0xFFFF:
                parts.append(_RECORD.pack(arrival, len(packet)))
                parts.append(packet)
        body = b"".join(parts)
        _write_all(self._fd, _CHUNK.pack(CHUNK_MAGIC, len(body), zlib.crc32(body)) + body)
        self.packets += count
        self.bytes_written += CHUNK_HEADER_SIZE + len(body)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._owner.track_closed(self)

    def _release(self) -> None:
        self.flush()
        os.close(self._fd)


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class RecordingWriter:
    """Writes one recording; also the ``conference.media.RecordingSink`` the media core feeds."""

    def __init__(
        self,
        directory: Path,
        recording_id: str,
        room: str,
        started_at: float | None = None,
        *,
        fsync: bool = False,
        flush_interval: float = FLUSH_INTERVAL,
        part: int = 1,
    ) -> None:
        self.directory = directory
        self.recording_id = recording_id
        self.room = room
        self.started_at = time.time() if started_at is None else started_at
        self._fsync = fsync
        self._interval = flush_interval
        if (directory / "tracks").exists():
            raise FileExistsError(directory / "tracks")
        make_private_dir(directory / "tracks")
        # The timeline is locked (flock) for as long as this writer lives, before meta.json makes the
        # recording visible: a reader can tell a recording being written from one whose writer died
        # (the kernel drops the lock with the process), whenever it looks (``writer_alive``).
        self._timeline_fd = os.open(
            directory / "timeline.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640
        )
        fcntl.flock(self._timeline_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._meta: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "id": recording_id,
            "room": room,
            "started_at": self.started_at,
            "stopped_at": None,
            "complete": False,
        }
        if part > 1:
            self._meta["part"] = part
        _write_json_atomic(directory / "meta.json", self._meta)
        self._timeline = bytearray()
        self._lock = threading.Lock()
        self._tracks: list[TrackWriter] = []
        self._closing: list[TrackWriter] = []
        self._wake = threading.Event()
        self._stopped = False
        self._ending_at: float | None = None
        self.flusher_cpu_s = 0.0
        self._flusher = threading.Thread(target=self._run, name=f"recorder-{recording_id}", daemon=True)
        self._flusher.start()

    @property
    def bytes_written(self) -> int:
        """Media bytes written to the track files so far (the metrics' recording bytes)."""
        return sum(track.bytes_written for track in list(self._tracks))

    # RecordingSink -----------------------------------------------------------------------

    def open_track(
        self,
        identity: str,
        kind: str,
        codec: str,
        clock_rate: int,
        payload_type: int,
        ssrc: int,
        extensions: dict[str, int],
    ) -> TrackWriter:
        with self._lock:
            number = len(self._tracks)
            track = TrackWriter(self, number, self.directory / "tracks" / f"{number}.rtp")
            self._tracks.append(track)
        self.add_entry(
            {
                "kind": "track",
                "track": number,
                "file": f"tracks/{number}.rtp",
                "identity": identity,
                "media": kind,
                "codec": codec,
                "clock_rate": clock_rate,
                "payload_type": payload_type,
                "ssrc": ssrc,
                "extensions": dict(extensions),
            }
        )
        return track

    def speakers(self, at: float, identities: list[str]) -> None:
        self.add_entry({"kind": "speakers", "at": at, "speakers": list(identities)})

    # timeline ----------------------------------------------------------------------------

    def add_entry(self, entry: dict[str, Any]) -> None:
        """Append one timeline entry (``at`` defaults to now)."""
        if self._stopped:
            return
        entry = {**entry}
        entry.setdefault("at", time.time())
        line = json.dumps(entry, separators=(",", ":"), default=str).encode() + b"\n"
        with self._lock:
            self._timeline += line

    def track_closed(self, track: TrackWriter) -> None:
        entry = {"kind": "track_end", "track": track.number, "packets": track.packets}
        if self._ending_at is not None:
            entry["at"] = self._ending_at
        self.add_entry(entry)
        with self._lock:
            self._closing.append(track)
        self.wake()

    # flushing ----------------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(self._interval)
            self._wake.clear()
            try:
                self.flush()
            except OSError:
                log.exception("recording %s: cannot write to disk", self.recording_id)
            # This thread's own CPU (packing, checksums, writes): the archive's cost beside forwarding.
            self.flusher_cpu_s = time.thread_time()

    def flush(self) -> None:
        with self._lock:
            tracks = list(self._tracks)
            closing, self._closing = self._closing, []
            timeline, self._timeline = self._timeline, bytearray()
        for track in tracks:
            if not track.closed:
                track.flush()
        for track in closing:
            track._release()
        if timeline:
            _write_all(self._timeline_fd, timeline)
        if self._fsync:
            for track in tracks:
                if not track.closed:
                    os.fsync(track._fd)
            os.fsync(self._timeline_fd)

    def close(self, stopped_at: float | None = None) -> dict[str, Any]:
        """Finalise: flush everything, close the files, mark the recording complete."""
        if self._stopped:
            return self._meta
        stopped_at = time.time() if stopped_at is None else stopped_at
        self._ending_at = stopped_at
        for track in list(self._tracks):
            track.close()
        self.add_entry({"kind": "recording_end", "at": stopped_at})
        self._stopped = True
        self._wake.set()
        self._flusher.join(timeout=10)
        self.flush()
        self._meta.update(stopped_at=stopped_at, complete=True)
        _write_json_atomic(self.directory / "meta.json", self._meta)
        os.close(self._timeline_fd)  # releases the lock only once meta.json says complete
        return self._meta


# --- reading -------------------------------------------------------------------------------


@dataclass(slots=True)
class TrackInfo:
    number: int
    identity: str
    media: str  # "audio" | "video"
    codec: str
    clock_rate: int
    payload_type: int
    ssrc: int
    opened_at: float
    extensions: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class ReadStats:
    chunks: int = 0
    records: int = 0
    damaged: int = 0
    skipped_bytes: int = 0


def read_records(path: Path, stats: ReadStats | None = None) -> Iterator[tuple[float, bytes]]:
    """Yield ``(arrival, packet)`` from a track file; damaged chunks are skipped with a warning."""
    stats = stats if stats is not None else ReadStats()
    with path.open("rb") as f:
        try:
            # Memory-mapped so an hour-long track is not read into memory at once.
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # empty file
            return
    with data:
        pos, end = 0, len(data)
        while pos < end:
            body = _chunk_at(data, pos)
            if body is None:
                # Damaged or truncated: look for the next chunk that checks out.
                nxt = data.find(CHUNK_MAGIC, pos + 1)
                while nxt != -1 and _chunk_at(data, nxt) is None:
                    nxt = data.find(CHUNK_MAGIC, nxt + 1)
                skipped = (nxt if nxt != -1 else end) - pos
                stats.damaged += 1
                stats.skipped_bytes += skipped
                what = "truncated" if nxt == -1 else "damaged"
                log.warning("%s: %s chunk at byte %d, skipped %d bytes", path, what, pos, skipped)
                if nxt == -1:
                    return
                pos = nxt
                continue
            stats.chunks += 1
            pos += CHUNK_HEADER_SIZE + len(body)
            offset = 0
            while offset + RECORD_HEADER_SIZE <= len(body):
                arrival, length = _RECORD.unpack_from(body, offset)
                offset += RECORD_HEADER_SIZE
                stats.records += 1
                yield arrival, body[offset : offset + length]
                offset += length


def _chunk_at(data: mmap.mmap, pos: int) -> bytes | None:
    """The body of the intact chunk starting at ``pos``, or None."""
    if pos + CHUNK_HEADER_SIZE > len(data):
        return None
    magic, length, crc = _CHUNK.unpack_from(data, pos)
    start = pos + CHUNK_HEADER_SIZE
    if magic != CHUNK_MAGIC or length > MAX_CHUNK or start + length > len(data):
        return None
    body = data[start : start + length]
    return body if zlib.crc32(body) == crc else None


class Recording:
    """A recording on disk, complete or cut short by a crash."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        meta_path = directory / "meta.json"
        if not meta_path.is_file():
            raise ArchiveError(f"no recording at {directory}")
        try:
            self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise ArchiveError(f"unreadable meta.json in {directory}: {exc}") from None
        self.id: str = self.meta["id"]
        self.room: str = self.meta["room"]
        self.started_at: float = float(self.meta["started_at"])
        self._timeline: list[dict[str, Any]] | None = None
        self._own_timeline: list[dict[str, Any]] | None = None
        self._track_files: dict[int, Path] = {}
        # Parts written after a failover (another node went on with the recording): part-<n>/.
        self.parts: list[Recording] = _load_parts(directory)

    @classmethod
    def open(cls, data_dir: str | os.PathLike[str], recording_id: str) -> Recording:
        directory = recording_dir(data_dir, recording_id)
        if not directory.is_dir():
            raise ArchiveError(f"no recording {recording_id!r} in {data_dir}")
        return cls(directory)

    @property
    def complete(self) -> bool:
        return bool(self.meta.get("complete")) and all(p.complete for p in self.parts)

    @property
    def own_complete(self) -> bool:
        """This directory's part alone is finalised (the later parts aside)."""
        return bool(self.meta.get("complete"))

    @property
    def own_timeline(self) -> list[dict[str, Any]]:
        """This directory's timeline alone (its track numbers its own)."""
        if self._own_timeline is None:
            self._own_timeline = read_timeline(self.directory / "timeline.jsonl")
        return self._own_timeline

    @property
    def timeline(self) -> list[dict[str, Any]]:
        """The whole recording's timeline: every part's, a later part's track numbers moved past
        the earlier parts' (``track_path`` knows where each lives), and a ``recording_gap`` entry
        for the time between one part's last data and the next part's start (the failover)."""
        if self._timeline is not None:
            return self._timeline
        if not self.parts:
            self._timeline = self.own_timeline
            return self._timeline
        merged = list(self.own_timeline)
        offset = 1 + max((int(e["track"]) for e in merged if _is_track_entry(e)), default=-1)
        previous: Recording = self
        for part in self.parts:
            merged.append({"kind": "recording_gap", "at": previous.own_stopped_at, "until": part.started_at})
            numbers: list[int] = []
            for e in part.own_timeline:
                if _is_track_entry(e):
                    local = int(e["track"])
                    numbers.append(local)
                    self._track_files[offset + local] = part.track_path(local)
                    e = {**e, "track": offset + local}
                merged.append(e)
            offset += 1 + max(numbers, default=-1)
            previous = part
        merged.sort(key=lambda e: e["at"])
        self._timeline = merged
        return self._timeline

    @property
    def gaps(self) -> list[tuple[float, float]]:
        """(from, until) wall times between parts: nothing was recorded then."""
        out, previous = [], self
        for part in self.parts:
            out.append((previous.own_stopped_at, max(previous.own_stopped_at, part.started_at)))
            previous = part
        return out

    @property
    def tracks(self) -> list[TrackInfo]:
        tracks = []
        for e in self.timeline:
            if e.get("kind") != "track":
                continue
            try:
                tracks.append(
                    TrackInfo(
                        number=int(e["track"]),
                        identity=str(e["identity"]),
                        media=str(e["media"]),
                        codec=str(e["codec"]),
                        clock_rate=int(e["clock_rate"]),
                        payload_type=int(e["payload_type"]),
                        ssrc=int(e["ssrc"]),
                        opened_at=float(e["at"]),
                        extensions=dict(e.get("extensions") or {}),
                    )
                )
            except (KeyError, TypeError, ValueError):
                log.warning("%s: bad track entry skipped: %r", self.directory, e)
        return tracks

    def track_path(self, number: int) -> Path:
        if self.parts:
            self.timeline  # noqa: B018 - fills _track_files
            if int(number) in self._track_files:
                return self._track_files[int(number)]
        return self.directory / "tracks" / f"{int(number)}.rtp"

    def read_track(self, number: int, stats: ReadStats | None = None) -> Iterator[tuple[float, bytes]]:
        path = self.track_path(number)
        if not path.is_file():
            log.warning("%s: track file missing", path)
            return iter(())
        return read_records(path, stats)

    @property
    def stopped_at(self) -> float:
        """When recording stopped (its last part); after a crash, the last thing on the disk."""
        return self.parts[-1].own_stopped_at if self.parts else self.own_stopped_at

    @property
    def own_stopped_at(self) -> float:
        """When this directory's part stopped; after a crash, the last thing that reached the disk."""
        if self.meta.get("stopped_at"):
            return float(self.meta["stopped_at"])
        last = self.started_at
        for e in self.own_timeline:
            if isinstance(e.get("at"), int | float):
                last = max(last, float(e["at"]))
            if e.get("kind") == "track" and isinstance(e.get("track"), int):
                last = max(last, _last_arrival(self.directory / "tracks" / f"{int(e['track'])}.rtp"))
        return last

    @property
    def duration(self) -> float:
        return max(0.0, self.stopped_at - self.started_at)

    def participants(self) -> list[dict[str, Any]]:
        """Everyone who was in the room while it recorded, in order of appearance."""
        seen: dict[str, dict[str, Any]] = {}
        for e in self.timeline:
            people: list[dict[str, Any]] = []
            if e.get("kind") == "snapshot":
                people = list(e.get("state", {}).get("participants", []))
            elif e.get("kind") in ("participant_joined", "participant_rejoined"):
                people = [e.get("participant", {})]
            for p in people:
                if isinstance(p, dict) and "identity" in p:
                    seen.setdefault(
                        str(p["identity"]),
                        {"identity": p["identity"], "name": p.get("name"), "role": p.get("role")},
                    )
        return list(seen.values())

    def summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "id": self.id,
            "room": self.room,
            "started_at": self.started_at,
            "stopped_at": self.stopped_at,
            "duration_s": round(self.duration, 3),
            "complete": self.complete,
        }
        if self.parts:  # went on after a failover: how many parts, and the seconds lost between
            summary["parts"] = 1 + len(self.parts)
            summary["lost_s"] = round(sum(b - a for a, b in self.gaps), 3)
        return summary


PART_PREFIX = "part-"


def part_dir(directory: Path, part: int) -> Path:
    """Where part ``part`` (2, 3, ...) of the recording in ``directory`` is written."""
    return directory / f"{PART_PREFIX}{int(part)}"


def _is_track_entry(e: dict[str, Any]) -> bool:
    return e.get("kind") in ("track", "track_end") and isinstance(e.get("track"), int)


def _load_parts(directory: Path) -> list[Recording]:
    parts: list[tuple[int, Recording]] = []
    for entry in directory.glob(f"{PART_PREFIX}*"):
        number = entry.name[len(PART_PREFIX) :]
        if not number.isdigit() or not (entry / "meta.json").is_file():
            continue  # a part being created (meta.json comes right after the lock)
        try:
            parts.append((int(number), Recording(entry)))
        except (ArchiveError, KeyError, TypeError, ValueError) as exc:
            log.warning("skipping part %s: %s", entry, exc)
    return [rec for _, rec in sorted(parts, key=lambda p: p[0])]


def _last_arrival(path: Path) -> float:
    """Arrival time of the last record of the last intact chunk (a crashed or running recording has
    no stop time); reads backwards from the end, so it costs one chunk, not the whole file."""
    try:
        with path.open("rb") as f:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):  # missing or empty
        return 0.0
    with data:
        pos = data.rfind(CHUNK_MAGIC)
        while pos != -1:
            body = _chunk_at(data, pos)
            if body is not None:
                last, offset = 0.0, 0
                while offset + RECORD_HEADER_SIZE <= len(body):
                    last, length = _RECORD.unpack_from(body, offset)
                    offset += RECORD_HEADER_SIZE + length
                return last
            pos = data.rfind(CHUNK_MAGIC, 0, pos)
    return 0.0


def writer_alive(directory: Path) -> bool:
    """Whether a ``RecordingWriter`` (in any process on this machine) still writes the recording
    in ``directory`` or one of its parts: it holds the lock on the timeline until it closes or its
    process dies."""
    return _part_alive(directory) or any(_part_alive(p) for p in directory.glob(f"{PART_PREFIX}*"))


def _part_alive(directory: Path) -> bool:
    try:
        fd = os.open(directory / "timeline.jsonl", os.O_RDONLY)
    except FileNotFoundError:
        return False  # the writer creates (and locks) it before meta.json exists
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def read_timeline(path: Path) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    if not path.is_file():
        return entries
    with path.open("rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                log.warning("%s:%d: damaged timeline line skipped", path, number)
                continue
            if not isinstance(entry, dict) or not isinstance(entry.get("at"), int | float):
                log.warning("%s:%d: timeline line without time skipped", path, number)
                continue
            entries.append(entry)
    entries.sort(key=lambda e: e["at"])  # stable: equal times keep their written order
    return entries


def list_recordings(data_dir: str | os.PathLike[str], room: str | None = None) -> list[Recording]:
    """Every readable recording, newest first."""
    root = recordings_root(data_dir)
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        if not entry.is_dir() or not _RECORDING_ID.fullmatch(entry.name):
            continue
        try:
            rec = Recording(entry)
        except (ArchiveError, KeyError, TypeError, ValueError) as exc:
            log.warning("skipping %s: %s", entry, exc)
            continue
        if room is None or rec.room == room:
            found.append(rec)
    found.sort(key=lambda r: r.started_at, reverse=True)
    return found
