"""The boundary between signaling and the media core.

Signaling authenticates, runs room commands and relays SDP; the media core (``conference.sfu``)
owns peer connections and forwarding. They meet only here, so signaling can be tested without
media (``NullMedia``) and the media path never depends on which room store is in use: it learns
about the room from the events the store broadcasts (``room_changed``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .layouts import MAX_SLOTS
from .room import Device, Event, RoomState

DEFAULT_AUDIO_SLOTS = 3

# emit(room, identity or None for everyone in the room, message) -> sends a signaling message.
Emit = Callable[[str, str | None, dict[str, Any]], None]


class MediaError(Exception):
    """Bad SDP or a failed negotiation; ``code`` is a protocol error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(slots=True)
class SessionOptions:
    device: Device = "venue"
    publish_audio: bool = True
    publish_video: bool = True
    # Program slots negotiated once at join: 9 for screens, 1 by default on a phone, 0 audio-only.
    video_slots: int = MAX_SLOTS
    audio_slots: int = DEFAULT_AUDIO_SLOTS
    # The chair's console also receives every endpoint's feed.
    previews: bool = False


class TrackSink(Protocol):
    """Where the recorder stores one published track while the room records."""

    def write(self, arrival: float, packet: bytes) -> None:
        """A decrypted RTP packet as it arrived (``arrival`` in seconds, time.time() clock)."""
        ...

    def close(self) -> None: ...


class RecordingSink(Protocol):
    """The recorder as the media core sees it (``recorder.archive``)."""

    def open_track(
        self,
        identity: str,
        kind: str,
        codec: str,
        clock_rate: int,
        payload_type: int,
        ssrc: int,
        extensions: dict[str, int],
    ) -> TrackSink:
        """A published track starts (or was already publishing when recording began).

        ``extensions`` maps header-extension URIs to their ids, e.g. the audio level's."""
        ...

    def speakers(self, at: float, identities: list[str]) -> None:
        """Active speakers changed (loudest first)."""
        ...


class MediaSession(Protocol):
    """One endpoint's WebRTC session (one peer connection, BUNDLEd)."""

    async def create_offer(self) -> dict[str, Any]:
        """The server's offer: ``{"sdp": ..., "slots": {...}}`` (see docs/protocol.md)."""
        ...

    async def set_answer(self, sdp: str) -> None: ...

    async def add_candidate(self, candidate: dict[str, Any]) -> None: ...

    async def close(self) -> None: ...


class MediaBackend(Protocol):
    def set_emitter(self, emit: Emit) -> None: ...

    async def open_session(
        self, room: str, identity: str, options: SessionOptions, state: RoomState
    ) -> MediaSession:
        """Start the endpoint's session; replaces an earlier session of the same identity."""
        ...

    async def room_changed(self, room: str, events: list[Event], state: RoomState) -> None:
        """Program, mutes, floor, membership or recording changed."""
        ...

    def set_recorder(self, room: str, sink: RecordingSink | None) -> None:
        """Start (or with None stop) handing the room's media to the recorder."""
        ...

    def stats(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...


class NullSession:
    """A session that negotiates nothing: for signaling without media."""

    async def create_offer(self) -> dict[str, Any]:
        return {"sdp": None, "slots": {}}

    async def set_answer(self, sdp: str) -> None:
        return None

    async def add_candidate(self, candidate: dict[str, Any]) -> None:
        return None

    async def close(self) -> None:
        return None


class NullMedia:
    """A media backend that forwards nothing (``conference serve --no-media`` and unit tests)."""

    def set_emitter(self, emit: Emit) -> None:
        self._emit = emit

    async def open_session(
        self, room: str, identity: str, options: SessionOptions, state: RoomState
    ) -> MediaSession:
        return NullSession()

    async def room_changed(self, room: str, events: list[Event], state: RoomState) -> None:
        return None

    def set_recorder(self, room: str, sink: RecordingSink | None) -> None:
        return None

    def stats(self) -> dict[str, Any]:
        return {"backend": "null"}

    async def close(self) -> None:
        return None
