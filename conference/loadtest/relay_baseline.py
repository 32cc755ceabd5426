"""The baseline media backend: aiortc's own relay, public API only.

Each publisher's tracks are decoded once by aiortc and fanned out with ``aiortc.contrib.media.MediaRelay``;
every subscriber's sender re-encodes what it sends. This is what an aiortc application does out of
the box, and it is here to be measured side by side with the forwarding core (``conference.sfu``):
``conference bench --backend relay_baseline`` (or ``conference serve --media-backend relay_baseline``)
runs the same meeting through it. The session shape is the same as the SFU's (docs/protocol.md):
recvonly publish m-lines, then sendonly video slots, audio slots and, for the chair, previews.

Deliberate simplifications (it is a baseline, not a product): audio slots carry the floor holder and
then the other audible publishers in join order (aiortc's public API exposes no audio levels, so
there is no loudest-speaker choice and no ``speakers`` push); a muted participant's audio is
removed from the slots. No forwarding delay is measured: frames are decoded and re-encoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamTrack
from aiortc.sdp import candidate_from_sdp

from conference.media import Emit, MediaError, RecordingSink, SessionOptions
from conference.room import Event, RoomState
from conference.sdp_bounds import SdpBounds, SdpTooComplex, check_sdp

log = logging.getLogger(__name__)

STATS_INTERVAL_S = 1.0


class DecodedTrack(MediaStreamTrack):
    """A publisher's received track as the relay sees it; counts the frames aiortc decoded."""

    def __init__(self, source: MediaStreamTrack, backend: RelayBackend) -> None:
        super().__init__()
        self.kind = source.kind
        self.source = source
        self.backend = backend

    async def recv(self) -> Any:
        frame = await self.source.recv()
        if self.kind == "video":
            self.backend.decoded_video_frames += 1
        else:
            self.backend.decoded_audio_frames += 1
        return frame

    def stop(self) -> None:
        super().stop()
        self.source.stop()


class RelaySession:
    def __init__(
        self, backend: RelayBackend, room: str, identity: str, options: SessionOptions, state: RoomState
    ) -> None:
        self.backend = backend
        self.room = room
        self.identity = identity
        self.options = options
        self.max_previews = state.max_endpoints
        # Max-bundle like the SFU: one transport for all m-lines, as browsers and test endpoints expect.
        config = RTCConfiguration(
            iceServers=list(backend.ice_servers), bundlePolicy=RTCBundlePolicy.MAX_BUNDLE
        )
        self.pc = RTCPeerConnection(config)
        self.publish: dict[str, Any] = {}
        self.video: list[Any] = []
        self.audio: list[Any] = []
        self.previews: list[Any] = []
        # sender -> identity it currently carries (None: nothing)
        self.assigned: dict[int, str | None] = {}
        self.tracks: dict[str, DecodedTrack] = {}  # what this endpoint publishes, by kind
        self.offer: dict[str, Any] | None = None
        self.closed = False
        self.stats: dict[str, Any] = {"packets_out": 0, "bytes_out": 0, "packets_in": 0, "bytes_in": 0}
        self.slot_packets: dict[str, int] = {}
        self.last_slots_push: dict[str, Any] | None = None

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self.tracks[track.kind] = DecodedTrack(track, backend)
            backend.schedule_assign(room)

        @self.pc.on("connectionstatechange")
        def on_state() -> None:
            if self.pc.connectionState == "failed":
                backend.schedule_assign(room)

    async def create_offer(self) -> dict[str, Any]:
        if self.offer is not None:
            return self.offer
        pc, options = self.pc, self.options
        if options.publish_audio:
            self.publish["audio"] = pc.addTransceiver("audio", direction="recvonly")
        if options.publish_video:
            self.publish["video"] = pc.addTransceiver("video", direction="recvonly")
        self.video = [pc.addTransceiver("video", direction="sendonly") for _ in range(options.video_slots)]
        self.audio = [pc.addTransceiver("audio", direction="sendonly") for _ in range(options.audio_slots)]
        if options.previews:
            self.previews = [
                pc.addTransceiver("video", direction="sendonly") for _ in range(self.max_previews)
            ]
        await pc.setLocalDescription(await pc.createOffer())
        self.offer = {
            "sdp": pc.localDescription.sdp,
            "slots": {
                "publish": {kind: t.mid for kind, t in self.publish.items()},
                "video": [t.mid for t in self.video],
                "audio": [t.mid for t in self.audio],
                "previews": [t.mid for t in self.previews],
            },
        }
        return self.offer

    async def set_answer(self, sdp: str) -> None:
        if self.offer is None:
            raise MediaError("conflict", "no offer to answer")
        try:  # as the SFU does: bounded before aiortc's parser sees it
            check_sdp(sdp, SdpBounds.for_answer_to(self.offer["sdp"]))
        except SdpTooComplex as exc:
            raise MediaError("bad_sdp", f"answer refused: {exc}") from None
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        except (ValueError, AssertionError, KeyError, IndexError) as exc:
            raise MediaError("bad_sdp", f"the answer could not be applied: {exc}") from None
        self.backend.schedule_assign(self.room)

    async def add_candidate(self, candidate: dict[str, Any]) -> None:
        text = str(candidate.get("candidate") or "")
        if not text:
            return
        try:
            parsed = candidate_from_sdp(text.removeprefix("candidate:"))
        except (ValueError, IndexError) as exc:
            raise MediaError("bad_request", f"bad ICE candidate: {exc}") from None
        parsed.sdpMid = candidate.get("sdpMid")
        parsed.sdpMLineIndex = candidate.get("sdpMLineIndex")
        await self.pc.addIceCandidate(parsed)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for track in self.tracks.values():
            track.stop()
        with contextlib.suppress(Exception):
            await self.pc.close()
        self.backend.session_closed(self)

    def slot_mids(self) -> list[tuple[str, Any]]:
        return [
            *(("video", t) for t in self.video),
            *(("audio", t) for t in self.audio),
            *(("preview", t) for t in self.previews),
        ]


class RelayBackend:
    """A ``conference.media.MediaBackend`` built on aiortc's MediaRelay (decode once, encode per leg)."""

    def __init__(self, ice_servers: list[RTCIceServer] | None = None) -> None:
        self.ice_servers = ice_servers or []  # never None: aiortc would ask a public STUN server
        self.relay = MediaRelay()
        self.rooms: dict[str, dict[str, RelaySession]] = {}
        self.states: dict[str, RoomState] = {}
        self.emit: Emit | None = None
        self.decoded_video_frames = 0
        self.decoded_audio_frames = 0
        self._assign_tasks: dict[str, asyncio.Future[None]] = {}
        self._dirty: set[str] = set()
        self._stats_task: asyncio.Task[None] | None = None
        self._totals: dict[str, Any] = {}

    def set_emitter(self, emit: Emit) -> None:
        self.emit = emit

    async def open_session(
        self, room: str, identity: str, options: SessionOptions, state: RoomState
    ) -> RelaySession:
        sessions = self.rooms.setdefault(room, {})
        old = sessions.get(identity)
        if old is not None:
            await old.close()
        session = RelaySession(self, room, identity, options, state)
        sessions[identity] = session
        self.states[room] = state
        if self._stats_task is None:
            self._stats_task = asyncio.create_task(self._collect_stats())
        return session

    def session_closed(self, session: RelaySession) -> None:
        sessions = self.rooms.get(session.room, {})
        if sessions.get(session.identity) is session:
            del sessions[session.identity]
        self.schedule_assign(session.room)

    async def room_changed(self, room: str, events: list[Event], state: RoomState) -> None:
        self.states[room] = state
        self.schedule_assign(room)

    def set_recorder(self, room: str, sink: RecordingSink | None) -> None:
        return None  # the baseline does not record

    def schedule_assign(self, room: str) -> None:
        """Reassign the room's slots soon (coalesces bursts of events)."""
        self._dirty.add(room)
        task = self._assign_tasks.get(room)
        if task is None or task.done():
            self._assign_tasks[room] = asyncio.ensure_future(self._assign_soon(room))

    async def _assign_soon(self, room: str) -> None:
        # Run again if anything changed while this pass ran: no change is ever lost.
        while room in self._dirty:
            self._dirty.discard(room)
            await asyncio.sleep(0)
            self._assign(room)

    def _assign(self, room: str) -> None:
        state = self.states.get(room)
        sessions = self.rooms.get(room, {})
        if state is None:
            return
        publishers = {identity: s.tracks for identity, s in sessions.items() if not s.closed and s.tracks}
        program = list(state.program.slots)
        audible = [
            p.identity
            for p in sorted(state.participants.values(), key=lambda p: p.joined_at)
            if p.audible and p.identity in publishers and "audio" in publishers[p.identity]
        ]
        if state.floor in audible:
            audible.remove(state.floor)
            audible.insert(0, state.floor)
        everyone = [
            p.identity
            for p in sorted(state.participants.values(), key=lambda p: p.joined_at)
            if p.identity in publishers and "video" in publishers[p.identity]
        ]
        for session in list(sessions.values()):
            if session.closed or session.offer is None:
                continue
            for i, transceiver in enumerate(session.video):
                source = program[i] if i < len(program) else None
                self._fill(session, transceiver, source, "video", publishers)
            voices = [v for v in audible if v != session.identity]
            for i, transceiver in enumerate(session.audio):
                self._fill(session, transceiver, voices[i] if i < len(voices) else None, "audio", publishers)
            for i, transceiver in enumerate(session.previews):
                self._fill(
                    session, transceiver, everyone[i] if i < len(everyone) else None, "video", publishers
                )
            self._push_slots(session)

    def _fill(
        self,
        session: RelaySession,
        transceiver: Any,
        source: str | None,
        kind: str,
        publishers: dict[str, dict[str, DecodedTrack]],
    ) -> None:
        track = publishers.get(source or "", {}).get(kind)
        wanted = source if track is not None else None
        key = id(transceiver)
        if session.assigned.get(key, "-") == wanted:
            return
        session.assigned[key] = wanted
        transceiver.sender.replaceTrack(None if track is None else self.relay.subscribe(track))

    def _push_slots(self, session: RelaySession) -> None:
        message = {
            "type": "slots",
            "audio": [{"mid": t.mid, "identity": session.assigned.get(id(t))} for t in session.audio],
            "previews": [{"mid": t.mid, "identity": session.assigned.get(id(t))} for t in session.previews],
        }
        if message != session.last_slots_push and self.emit is not None:
            session.last_slots_push = message
            self.emit(session.room, session.identity, message)

    async def _collect_stats(self) -> None:
        """aiortc's stats are async: refresh a snapshot each second for the synchronous stats()."""
        while True:
            with contextlib.suppress(Exception):
                await self._refresh_stats()
            await asyncio.sleep(STATS_INTERVAL_S)

    async def _refresh_stats(self) -> None:
        per_session: dict[str, Any] = {}
        totals = {"packets_in": 0, "bytes_in": 0, "packets_out": 0, "bytes_out": 0}
        for room, sessions in list(self.rooms.items()):
            for session in list(sessions.values()):
                slots: dict[str, Any] = {}
                packets_out = bytes_out = packets_in = bytes_in = 0
                for _, transceiver in session.slot_mids():
                    sent = 0
                    for stat in (await transceiver.sender.getStats()).values():
                        if stat.type == "outbound-rtp":
                            sent += stat.packetsSent
                            bytes_out += stat.bytesSent
                    packets_out += sent
                    slots[transceiver.mid] = {
                        "identity": session.assigned.get(id(transceiver)),
                        "packets": sent,
                    }
                for transceiver in session.publish.values():
                    for stat in (await transceiver.receiver.getStats()).values():
                        if stat.type == "inbound-rtp":
                            packets_in += stat.packetsReceived
                            bytes_in += getattr(stat, "bytesReceived", 0) or 0
                per_session[f"{room}/{session.identity}"] = {
                    "packets_out": packets_out,
                    "bytes_out": bytes_out,
                    "packets_in": packets_in,
                    "slots": slots,
                }
                totals["packets_in"] += packets_in
                totals["bytes_in"] += bytes_in
                totals["packets_out"] += packets_out
                totals["bytes_out"] += bytes_out
        self._totals = {**totals, "per_session": per_session}

    def stats(self) -> dict[str, Any]:
        return {
            "backend": "relay_baseline",
            "rooms": len(self.rooms),
            "sessions": sum(len(s) for s in self.rooms.values()),
            "packets_in": self._totals.get("packets_in", 0),
            "bytes_in": self._totals.get("bytes_in", 0),
            "packets_out": self._totals.get("packets_out", 0),
            "bytes_out": self._totals.get("bytes_out", 0),
            "decoded_frames": self.decoded_video_frames + self.decoded_audio_frames,
            "decoded_video_frames": self.decoded_video_frames,
            "decoded_audio_frames": self.decoded_audio_frames,
            "forward_delay_us": {"p50": None, "p99": None, "measured_from": "not measured (decode/encode)"},
            "stats_age_s": STATS_INTERVAL_S,
            "per_session": self._totals.get("per_session", {}),
        }

    async def close(self) -> None:
        if self._stats_task is not None:
            self._stats_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stats_task
        for sessions in list(self.rooms.values()):
            for session in list(sessions.values()):
                await session.close()
        for task in self._assign_tasks.values():
            task.cancel()


def create_backend(settings: Any = None) -> RelayBackend:
    """Selected by the setting ``media_backend = "relay_baseline"``.

    (``conference serve --media-backend relay_baseline``, ``conference bench --backend relay_baseline``.)"""
    servers = []
    for server in getattr(settings, "ice_servers", None) or []:
        servers.append(
            RTCIceServer(
                urls=server["urls"], username=server.get("username"), credential=server.get("credential")
            )
        )
    return RelayBackend(servers)
