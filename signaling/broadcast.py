"""The public broadcast: one program compositor (``conference live``, ``recorder.live.worker``) per
broadcasting room, in a process of its own, fed over a plain-RTP transport of the media core.

The room's ``broadcast`` state (``start_broadcast`` / ``stop_broadcast``, pure commands in
``conference.room``) decides; this module follows the store's events: a broadcast that starts
gets a worker, every change of the program, the names or the public text is written to the
worker's stdin as one JSON line, a stop asks the worker for its closing slate and the end of the
playlist. A worker that dies while the room broadcasts is started again on the same directory: its
playlist goes on with an ``EXT-X-DISCONTINUITY`` and the meeting never notices (the worker is one
more subscriber of the forwarding core, nothing else).

The HLS files are in ``<data_dir>/live/<room>/``, served by ``signaling.public`` at
``/live/{room}/``. Viewers only ever read those files: nothing they do reaches this module or the
media core.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import sys
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any, Protocol

from conference import room as room_commands
from conference.config import Settings
from conference.layouts import MAX_SLOTS
from conference.media import MediaBackend, MediaError
from conference.room import CommandError, Event, RoomState
from conference.sfu.plain import PlainOffer
from conference.store import RoomStore

log = logging.getLogger(__name__)

# The compositor's identity in the room's media: not a valid participant identity (those start
# with a letter or digit), so no token can ever take it.
IDENTITY = "~live"
AUDIO_SLOTS = 3
START_TIMEOUT_S = 20.0
END_TIMEOUT_S = 20.0  # the closing slate plus the last segment, then it is killed
RESTART_DELAYS_S = (1.0, 2.0, 5.0, 10.0)
# How long before its scheduled start a meeting's stream shows the slate (viewers who come early
# already play the stream; the meeting appears in it when the chair starts the broadcast).
STANDBY_S = 30 * 60


def live_dir(settings: Settings, room: str) -> Path:
    return Path(settings.data_dir) / "live" / room


def standby_wanted(state: RoomState, now: float | None = None) -> bool:
    """A meeting about to begin streams its slate before the broadcast: it has a scheduled start
    at most STANDBY_S away, people in the room, and has not broadcast yet."""
    now = time.time() if now is None else now
    return (
        not state.broadcast.active
        and state.broadcast.started_at is None
        and state.starts_at is not None
        and now >= state.starts_at - STANDBY_S
        and bool(state.participants)
    )


def program_message(state: RoomState) -> dict[str, Any]:
    """What the compositor needs of the room: the program, names, and the slate's text."""
    return {
        "type": "program",
        "room": state.room,
        "layout": state.program.layout,
        "slots": list(state.program.slots),
        "names": {identity: p.name for identity, p in state.participants.items()},
        "live": state.broadcast.active,
        "title": state.title,
        "topic": state.topic,
        "starts_at": state.starts_at,
        "on_screen": state.on_screen,  # the public's comment on the lower third
    }


class Compositor(Protocol):
    """Where a stream's compositor is: a process started here, or one on another machine connected
    over a WebSocket (``signaling.live_link``). Both speak the worker's JSON lines."""

    peers: Collection[str]  # the addresses it may receive plain RTP on, besides this machine's

    async def readline(self) -> bytes:
        """The compositor's next line; b"" once it is gone."""
        ...

    def write(self, line: bytes) -> None: ...

    async def drain(self) -> None: ...

    @property
    def closing(self) -> bool: ...

    def kill(self) -> None: ...

    async def close(self) -> None:
        """Stop it (if it still runs) and wait until it is gone."""
        ...


class LocalCompositor:
    """``conference live`` in a child process of this server, on stdin/stdout."""

    peers: Collection[str] = ()

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdin is not None and process.stdout is not None
        self.process = process
        self._stdin = process.stdin
        self._stdout = process.stdout

    @classmethod
    async def start(cls, options: dict[str, Any], directory: Path) -> LocalCompositor:
        process = await asyncio.create_subprocess_exec(
            *worker_command(options, directory), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        return cls(process)

    async def readline(self) -> bytes:
        return await self._stdout.readline()

    def write(self, line: bytes) -> None:
        self._stdin.write(line)

    async def drain(self) -> None:
        await self._stdin.drain()

    @property
    def closing(self) -> bool:
        return self.process.returncode is not None or self._stdin.is_closing()

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()

    async def close(self) -> None:
        if self.process.returncode is None:
            # Its stdin closed, a worker ends by itself (at once if it still waits for its answer).
            with contextlib.suppress(OSError, RuntimeError):
                self._stdin.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), 2.0)
        self.kill()
        await self.process.wait()


def worker_options(settings: Settings) -> dict[str, Any]:
    """The compositor's settings, as the server decides them (a remote one is told them)."""
    return {
        "size": settings.live_size,
        "fps": settings.live_fps,
        "threads": settings.live_threads,
        "preset": settings.live_preset,
        "video_slots": MAX_SLOTS,
        "audio_slots": AUDIO_SLOTS,
    }


def worker_command(options: dict[str, Any], directory: Path) -> list[str]:
    """``conference live`` (the worker itself) with ``options`` writing HLS into ``directory``."""
    command = [sys.executable, "-m", "signaling", "live", "--out", str(directory)]
    for name in ("size", "fps", "threads", "preset", "video_slots", "audio_slots", "host"):
        if name in options:
            command += ["--" + name.replace("_", "-"), str(options[name])]
    return command


class LiveStream:
    """One room's compositor, kept running while the room broadcasts."""

    def __init__(self, owner: Broadcasts, room: str, fresh: bool = True) -> None:
        self.owner = owner
        self.room = room
        self.directory = live_dir(owner.settings, room)
        self.channel: Compositor | None = None
        self.ending = False
        self.restarts = 0
        self.fresh = fresh  # a new playlist (a remote compositor then starts its own afresh)
        self.standby = False  # showing the slate before the broadcast starts
        self.answered = False
        self.stats: dict[str, Any] = {}
        self.last_program: dict[str, Any] | None = None
        self.started = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._supervise())

    async def _supervise(self) -> None:
        while not self.ending:
            try:
                await self._run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("live compositor of room %s failed", self.room)
            self.fresh = False  # a restart goes on on the same playlist
            if self.ending:
                break
            delay = RESTART_DELAYS_S[min(self.restarts, len(RESTART_DELAYS_S) - 1)]
            self.restarts += 1
            log.warning(
                "live compositor of room %s stopped: restart %d in %.0f s", self.room, self.restarts, delay
            )
            await asyncio.sleep(delay)

    async def _run_once(self) -> None:
        media = self.owner.media
        channel = await self.owner.open_compositor(self)
        self.channel = channel
        self.answered = False  # nothing but the answer may reach the worker first
        transport = None
        try:
            line = await asyncio.wait_for(channel.readline(), START_TIMEOUT_S)
            offer_json = json.loads(line)
            offer = PlainOffer.from_json(offer_json)
            state = await self.owner.store.get(self.room)
            if state is None:
                raise MediaError("not_found", f"room {self.room} is gone")
            transport = await media.open_plain(  # type: ignore[attr-defined]
                self.room, IDENTITY, state, offer, channel.peers
            )
            state = await self.owner.store.get(self.room) or state  # what changed while it opened
            self.last_program = program_message(state)
            channel.write((json.dumps(transport.answer()) + "\n").encode())
            channel.write((json.dumps(self.last_program) + "\n").encode())
            self.answered = True
            if self.ending:
                channel.write(b'{"type": "end"}\n')
            await channel.drain()
            while True:
                line = await channel.readline()
                if not line:
                    break
                with contextlib.suppress(ValueError):
                    message = json.loads(line)
                    if message.get("type") == "started":
                        self.started.set()
                    elif message.get("type") == "stats":
                        self.stats = message
        finally:
            self.channel = None
            await channel.close()
            if transport is not None:
                await transport.close()

    def send(self, message: dict[str, Any]) -> None:
        channel = self.channel
        if channel is None or not self.answered or channel.closing:
            return  # before the answer: the program goes with it (last_program)
        with contextlib.suppress(ConnectionError, RuntimeError):
            channel.write((json.dumps(message) + "\n").encode())

    def update(self, state: RoomState) -> None:
        message = program_message(state)
        if message != self.last_program:
            self.last_program = message
            self.send(message)

    async def end(self) -> None:
        """The broadcast stopped: the closing slate, the end of the playlist, then the process goes."""
        self.ending = True
        if self.channel is None and self.owner.remote_compositors:
            await self.kill()  # no remote compositor ever came: nothing to end
            return
        self.send({"type": "end"})
        try:
            await asyncio.wait_for(asyncio.shield(self.task), END_TIMEOUT_S)
        except (TimeoutError, asyncio.CancelledError):
            await self.kill()

    async def kill(self) -> None:
        self.ending = True
        channel = self.channel
        if channel is not None:
            channel.kill()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task


class Broadcasts:
    """The compositors of this process, following the rooms' broadcast state."""

    def __init__(self, settings: Settings, store: RoomStore, media: MediaBackend) -> None:
        self.settings = settings
        self.store = store
        self.media = media
        self.streams: dict[str, LiveStream] = {}
        # Remote compositors connected and waiting for a room's broadcast (live_compositor "remote"):
        # the first takes it, the others stand by and take over if it goes.
        self.remote: dict[str, list[Compositor]] = {}
        self._remote_arrived: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.closed = False
        store.subscribe(self.on_events)

    @property
    def available(self) -> bool:
        """Whether this server can run compositors (the SFU with plain-RTP transports)."""
        return hasattr(self.media, "open_plain") and self.settings.media

    @property
    def remote_compositors(self) -> bool:
        return self.settings.live_compositor == "remote"

    async def open_compositor(self, stream: LiveStream) -> Compositor:
        """A compositor for ``stream``: started here, or the next remote one that connects."""
        options = worker_options(self.settings)
        if not self.remote_compositors:
            return await LocalCompositor.start(options, stream.directory)
        while True:
            waiting = self.remote.get(stream.room, [])
            while waiting and waiting[0].closing:
                waiting.pop(0)
            if waiting:
                compositor = waiting.pop(0)
                compositor.write(
                    (json.dumps({"type": "start", "fresh": stream.fresh, **options}) + "\n").encode()
                )
                return compositor
            arrived = self._remote_arrived.setdefault(stream.room, asyncio.Event())
            arrived.clear()
            await arrived.wait()

    def attach(self, room: str, compositor: Compositor) -> None:
        """A remote compositor connected for ``room``: it waits until a broadcast needs it."""
        self.remote.setdefault(room, []).append(compositor)
        self._remote_arrived.setdefault(room, asyncio.Event()).set()

    def detach(self, room: str, compositor: Compositor) -> None:
        waiting = self.remote.get(room, [])
        if compositor in waiting:
            waiting.remove(compositor)
        if not waiting:
            self.remote.pop(room, None)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def on_events(self, room: str, events: list[Event], state: RoomState) -> None:
        if self.closed:
            return
        for event in events:
            if event.get("kind") == "broadcast":
                if event.get("active"):
                    self._start(room, fresh=True)
                else:
                    self._end(room)
            elif (
                event.get("kind") == "participant_joined"
                and state.auto_broadcast
                and not state.broadcast.active
                and state.broadcast.started_at is None
            ):
                self._spawn(self._auto_start(room))
        stream = self.streams.get(room)
        if stream is None and self.available and standby_wanted(state):
            self._start(room, fresh=True)  # the slate, until the chair starts the broadcast
        elif stream is not None and stream.standby and not state.broadcast.active and not state.participants:
            self._end(room)  # the room emptied before its broadcast began
        stream = self.streams.get(room)
        if stream is not None and not stream.ending:
            stream.standby = not state.broadcast.active
            stream.update(state)

    async def _auto_start(self, room: str) -> None:
        with contextlib.suppress(CommandError):  # another join started it first
            await self.store.update(room, room_commands.start_broadcast)

    def _start(self, room: str, fresh: bool) -> None:
        old = self.streams.get(room)
        if old is not None and not old.ending:
            return
        if not self.available:
            log.warning("room %s broadcasts, but this server has no media core to stream from", room)
            return
        if getattr(self.store, "shared", False) and room not in getattr(self.media, "rooms", {}):
            # Rooms shared between processes (Redis): the process that carries the room's media
            # streams it; two compositors must never write one playlist.
            return
        if old is not None:
            self._spawn(old.kill())
        if fresh:
            # A new broadcast is a new playlist: nothing of the last one is served again.
            shutil.rmtree(live_dir(self.settings, room), ignore_errors=True)
        self.streams[room] = LiveStream(self, room, fresh=fresh)

    def _end(self, room: str) -> None:
        stream = self.streams.get(room)
        if stream is None:
            return

        async def finish() -> None:
            await stream.end()
            if self.streams.get(room) is stream:
                del self.streams[room]

        self._spawn(finish())

    async def restore(self) -> None:
        """At start: the rooms that were broadcasting go on (on their playlist, after a gap)."""
        for room in await self.store.list_rooms():
            state = await self.store.get(room)
            if state is not None and state.broadcast.active:
                self._start(room, fresh=False)

    def stats(self) -> dict[str, Any]:
        return {
            room: {"running": s.channel is not None, "restarts": s.restarts, **s.stats}
            for room, s in self.streams.items()
        }

    async def close(self) -> None:
        self.closed = True
        for stream in list(self.streams.values()):
            await stream.kill()
        self.streams.clear()
        for task in list(self._tasks):
            task.cancel()
