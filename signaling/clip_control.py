"""The chair's clip player: ``play_clip``, ``pause_clip``, ``seek_clip``, ``stop_clip`` (over the
socket and ``POST /api/rooms/{room}/commands``). A playing clip is the participant ``clip``
(``conference.clip_cue``) whose media is a ``ClipPlayer`` feeding an in-process transport
(``SfuBackend.open_direct``): it fills a program slot, its sound goes to the audio slots, the
recorder and the live stream get it as they get a venue's.

The player runs in the process that got ``play_clip``; with Redis, ``pause_clip``/``seek_clip``
sent to another process are refused (``conflict``), while ``stop_clip`` and the clip's removal work
from any (the player's process sees the clip leave and stops).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from dataclasses import dataclass
from typing import Any

from conference import clip_cue
from conference.clip_file import ClipFileError, PreparedClip
from conference.clip_player import AUDIO_LEVEL_EXT, AUDIO_PT, VIDEO_PT, ClipPlayer
from conference.room import CommandError, Event, RoomState
from conference.sfu.packet import URI_AUDIO_LEVEL, CodecInfo

from .clips import ClipLibrary
from .rooms import Actor, Rooms

log = logging.getLogger(__name__)

CLIP_COMMANDS = frozenset({"play_clip", "pause_clip", "seek_clip", "stop_clip"})
PUBLISH = {"video": [CodecInfo("vp8", VIDEO_PT, 90_000)], "audio": [CodecInfo("opus", AUDIO_PT, 48_000)]}


@dataclass(slots=True)
class Playing:
    clip_id: str
    prepared: PreparedClip
    player: ClipPlayer
    transport: Any  # conference.sfu.direct.DirectTransport


class ClipDeck:
    """The players of this process, one per room."""

    def __init__(self, rooms: Rooms, library: ClipLibrary) -> None:
        self.rooms = rooms
        self.library = library
        self.playing: dict[str, Playing] = {}
        self._lock: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        rooms.store.subscribe(self._on_events)
        for name in CLIP_COMMANDS:
            rooms.extensions[name] = functools.partial(self.command, command=name)

    async def command(self, room: str, actor: Actor, msg: dict[str, Any], command: str) -> dict[str, Any]:
        lock = self._lock.setdefault(room, asyncio.Lock())
        async with lock:  # one change of the player at a time: a play racing a stop stays coherent
            match command:
                case "play_clip":
                    state = await self._play(room, actor, msg["clip"], msg.get("slot", 0), msg.get("at_s"))
                case "pause_clip":
                    state = await self._move(room, actor, lambda p: p.pause())
                case "seek_clip":
                    state = await self._move(room, actor, lambda p: p.seek(float(msg["at_s"])))
                case _:
                    state = await self._stop(room, actor)
        return {"version": state.version, "clip": state.clip}

    async def _play(self, room: str, actor: Actor, clip_id: str, slot: int, at_s: float | None) -> RoomState:
        meta = self.library.get(room, clip_id)
        if meta is None:
            raise CommandError("not_found", f"no clip {clip_id!r} in room {room!r}")
        if meta["state"] != "ready":
            raise CommandError("conflict", f"clip {clip_id!r} is {meta['state']}, not ready")
        open_direct = getattr(self.rooms.media, "open_direct", None)
        if not self.rooms.has_media or open_direct is None:
            raise CommandError("conflict", "this server forwards no media: a clip cannot play")
        current = self.playing.get(room)
        if current is not None and current.clip_id != clip_id:
            await self._release(room)
            current = None
        if current is None:
            path = self.library.clip_dir(room, clip_id) / "packets.bin"
            try:
                prepared = await asyncio.get_running_loop().run_in_executor(None, PreparedClip.load, path)
            except (OSError, ClipFileError) as exc:
                raise CommandError("conflict", f"clip {clip_id!r} cannot be read: {exc}") from None
            player = ClipPlayer(prepared, lambda data: False, on_end=lambda: self._ended(room))
            position = 0.0
        else:
            prepared, player = current.prepared, current.player
            position = player.position_s
        if at_s is not None:
            position = min(max(0.0, float(at_s)), prepared.duration_s)
        if position >= prepared.duration_s:
            position = 0.0
        cue = {**meta, "has_audio": prepared.has_audio, "duration_s": prepared.duration_s}
        try:
            state, _ = await self.rooms.store.update(
                room, lambda s: clip_cue.play_clip(s, cue, slot, position, by=actor.identity)
            )
        except BaseException:
            if current is None:
                prepared.close()
            raise
        if current is None:
            publish = dict(PUBLISH) if prepared.has_audio else {"video": PUBLISH["video"]}
            transport = await open_direct(
                room,
                clip_cue.CLIP_IDENTITY,
                state,
                publish=publish,
                on_keyframe_request=lambda kind: player.keyframe_wanted(),
                # Levels measured at upload: speaker detection needs no Opus decoding.
                extensions={URI_AUDIO_LEVEL: AUDIO_LEVEL_EXT},
            )
            player.send = transport.send
            transport.start()
            current = self.playing[room] = Playing(clip_id, prepared, player, transport)
        if at_s is not None or not player.playing:
            player.seek(position)
        player.play()
        return state

    async def _move(self, room: str, actor: Actor, change: Any) -> RoomState:
        current = self.playing.get(room)
        if current is None:
            state = await self.rooms.store.get(room)
            if state is not None and state.clip is not None:
                raise CommandError("conflict", "the clip plays in another server process")
            raise CommandError("conflict", "no clip is playing")
        change(current.player)
        player = current.player
        state, _ = await self.rooms.store.update(
            room, lambda s: clip_cue.clip_moved(s, player.playing, player.position_s, by=actor.identity)
        )
        return state

    async def _stop(self, room: str, actor: Actor | None) -> RoomState:
        await self._release(room)
        state, _ = await self.rooms.store.update(
            room, lambda s: clip_cue.stop_clip(s, by=actor.identity if actor else None)
        )
        return state

    async def _release(self, room: str) -> None:
        current = self.playing.pop(room, None)
        if current is None:
            return
        current.player.stop()
        with contextlib.suppress(Exception):
            await current.transport.close()
        current.prepared.close()

    def _ended(self, room: str) -> None:
        """The clip played to its end: the picture holds; the room hears where the player is."""
        current = self.playing.get(room)
        if current is None:
            return
        position = current.player.position_s

        async def record() -> None:
            with contextlib.suppress(CommandError):
                await self.rooms.store.update(room, lambda s: clip_cue.clip_moved(s, False, position))

        self._spawn(record())

    async def _on_events(self, room: str, events: list[Event], state: RoomState) -> None:
        # The clip left (stopped from another process, removed by the chair, a restart's timeout).
        if clip_cue.CLIP_IDENTITY in state.participants:
            return
        if room in self.playing:
            await self._release(room)
        if state.clip is not None:
            self._spawn(self._forget(room))

    async def _forget(self, room: str) -> None:
        with contextlib.suppress(CommandError):
            await self.rooms.store.update(room, clip_cue.clip_gone)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for room in list(self.playing):
            await self._release(room)
        for task in list(self._tasks):
            task.cancel()
