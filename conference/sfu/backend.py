"""The selective forwarding unit as signaling sees it (``conference.media.MediaBackend``): one
``Router`` per room, the transports endpoints open in it, the tick that drives speaker detection
and feedback, and the figures of ``/api/stats``."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Collection
from typing import Any

from aiortc import RTCIceServer

from ..config import Settings
from ..media import Emit, MediaError, RecordingSink, SessionOptions
from ..policy import TICK
from ..room import Event, RoomState
from . import aiortc_glue as glue
from .direct import DirectTransport, KeyframeCallback, PacketCallback
from .packet import CodecInfo
from .plain import PlainOffer, PlainTransport
from .router import Router
from .session import Session
from .stats import Counters
from .transport import Kind

logger = logging.getLogger(__name__)
# A room's media state (its Router) is dropped after this long with no transport and no recorder:
# long enough to outlast a reconnect's gap, short enough that rooms do not pile up.
EMPTY_ROOM_GRACE_S = 5.0


class SfuBackend:
    """Forwards raw RTP between endpoints' transports, room by room."""

    def __init__(
        self,
        *,
        ice_servers: list[RTCIceServer] | None = None,
        rtc_port_min: int = 0,
        rtc_port_max: int = 0,
        rtc_interfaces: list[str] | None = None,
        rtc_announced_address: str | None = None,
        max_previews: int | None = None,
        publish_max_bitrate: int = 1_500_000,
        plain_rtp_host: str = "127.0.0.1",
        native_send: bool = True,
        subscriber_rtx: bool = False,
        send_side_bwe: bool = False,
        simulcast: bool = True,
        video_codecs: tuple[str, ...] = ("vp8", "h264"),
    ) -> None:
        glue.check_aiortc()
        # Which send the WebRTC legs use: "native" (built and allowed) or "python".
        self.native_send = native_send and glue.native_send_available()
        # And the receive step (unprotect, header, transport-cc, its feedback): native with it when
        # the receive side (_fastrecv) was built too.
        self.native_receive = self.native_send and glue.native_receive_available()
        logger.info(
            "forwarding core: %s send, %s receive",
            "native" if self.native_send else "pure-Python",
            "native" if self.native_receive else "pure-Python",
        )
        self.plain_rtp_host = plain_rtp_host
        self.subscriber_rtx = subscriber_rtx
        self.send_side_bwe = send_side_bwe  # the layer choice acts on the send-side estimate
        self.simulcast = simulcast
        # MIME types offered, in order of preference.
        self.video_codecs = tuple(f"video/{name.upper()}" for name in video_codecs)
        self.publish_max_bitrate = publish_max_bitrate
        # Never None: aiortc would fall back to Google's public STUN server.
        self.ice_servers: list[RTCIceServer] = list(ice_servers or [])
        self.rtc_port_min = rtc_port_min
        self.rtc_port_max = rtc_port_max
        self.rtc_interfaces = list(rtc_interfaces or [])
        self.rtc_announced_address = rtc_announced_address
        self.max_previews = max_previews
        self.rooms: dict[str, Router] = {}
        self.counters = Counters()
        self._emit: Emit | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.closed = False

    def set_emitter(self, emit: Emit) -> None:
        self._emit = emit

    def emit(self, room: str, identity: str | None, message: dict[str, Any]) -> None:
        if self._emit is None:
            return
        try:
            self._emit(room, identity, message)
        except Exception:
            logger.exception("emitting %s to %s/%s failed", message.get("type"), room, identity)

    def router(self, room: str, state: RoomState) -> Router:
        router = self.rooms.get(room)
        if router is None:
            router = self.rooms[room] = Router(self, room, state)
        else:
            router.state = state
        return router

    async def _replace(self, router: Router, identity: str) -> None:
        old = router.transports.get(identity)
        if old is not None:
            await old.close()

    def _started(self) -> None:
        if self.closed:
            raise MediaError("unavailable", "the media backend is shut down")
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick_loop())

    async def open_session(
        self, room: str, identity: str, options: SessionOptions, state: RoomState
    ) -> Session:
        if self.closed:
            raise MediaError("unavailable", "the media backend is shut down")
        if not 0 <= options.video_slots <= 9 or not 0 <= options.audio_slots <= 8:
            raise MediaError("bad_request", "video_slots must be 0..9 and audio_slots 0..8")
        router = self.router(room, state)
        await self._replace(router, identity)
        session = Session(router, identity, options)
        router.add_transport(session)
        self._started()
        return session

    async def open_direct(
        self,
        room: str,
        identity: str,
        state: RoomState,
        *,
        publish: dict[Kind, list[CodecInfo]] | None = None,
        video_slots: int = 0,
        audio_slots: int = 0,
        on_keyframe_request: KeyframeCallback | None = None,
        on_packet: PacketCallback | None = None,
        extensions: dict[str, int] | None = None,
    ) -> DirectTransport:
        """Media from and to Python code in this process (a clip player, a test source); call
        ``start()`` on it to take part."""
        self._started()
        router = self.router(room, state)
        await self._replace(router, identity)
        transport = DirectTransport(
            router,
            identity,
            publish=publish,
            video_slots=video_slots,
            audio_slots=audio_slots,
            on_keyframe_request=on_keyframe_request,
            on_packet=on_packet,
            extensions=extensions,
        )
        router.add_transport(transport)
        return transport

    async def open_plain(
        self, room: str, identity: str, state: RoomState, offer: PlainOffer, peers: Collection[str] = ()
    ) -> PlainTransport:
        """Plain RTP over UDP for a worker on this machine; ``answer()`` tells it the server's port.
        The worker must listen on a loopback address, on ``plain_rtp_host`` itself or on one of
        ``peers`` (the operator's list of other machines, e.g. remote compositors): the transport
        sends UDP to the address the offer names, so it may never be an arbitrary host."""
        self._started()
        worker = ipaddress.ip_address(offer.address[0])
        if not worker.is_loopback and str(worker) != self.plain_rtp_host and str(worker) not in peers:
            raise MediaError("bad_request", "a plain-RTP worker must be on this machine")
        router = self.router(room, state)
        await self._replace(router, identity)
        transport = PlainTransport(router, identity, offer)
        await transport.bind(self.plain_rtp_host)
        router.add_transport(transport)
        transport.start()
        return transport

    async def room_changed(self, room: str, events: list[Event], state: RoomState) -> None:
        router = self.rooms.get(room)
        if router is None:
            return
        router.state = state
        for event in events:
            if event.get("kind") == "participant_left":
                transport = router.transports.get(event.get("identity", ""))
                if transport is not None:
                    await transport.close()
        router.assign_all()

    def set_recorder(self, room: str, sink: RecordingSink | None) -> None:
        router = self.rooms.get(room)
        if router is None:
            if sink is None:
                return
            router = self.router(room, RoomState(room=room))
        router.set_sink(sink)

    async def _tick_loop(self) -> None:
        while not self.closed:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            for router in list(self.rooms.values()):
                if router.idle_for(now) > EMPTY_ROOM_GRACE_S:
                    # No transport and no recorder for a while: let the room's media state go, or
                    # every room ever used would stay in memory (and in every tick) for good.
                    del self.rooms[router.room]
                    continue
                try:
                    router.tick(now)
                except Exception:
                    logger.exception("media tick of room %s failed", router.room)

    def stats(self) -> dict[str, Any]:
        c = self.counters
        sessions: dict[str, Any] = {}
        producers = down_tracks = decoded = packets_out = bytes_out = from_sockets = unprotect_errors = 0
        ice_dropped = send_errors = 0
        for router in self.rooms.values():
            for transport in router.transports.values():
                if isinstance(transport, Session):
                    decoded += transport.decoded_frames()
                    if transport.ice_queue_guard is not None:
                        ice_dropped += transport.ice_queue_guard.dropped
                    if transport.output is not None:
                        send_errors += transport.output.send_errors
                    if transport.datagram_hook is not None:
                        from_sockets += transport.datagram_hook.packets
                        unprotect_errors += transport.datagram_hook.unprotect_errors
                producers += sum(1 for p in transport.producers.values() if p.ssrc is not None)
                down_tracks += sum(1 for t in transport.down_tracks() if t.source is not None)
                entry = transport.stats()
                packets_out += entry["packets_out"]
                bytes_out += entry["bytes_out"]
                sessions[f"{router.room}/{transport.identity}"] = entry
        delay = c.delay
        return {
            "backend": "sfu",
            "send_path": "native" if self.native_send else "python",
            "receive_path": "native" if self.native_receive else "python",
            # Forwarded copies the native fan-out sent itself (the process's, all rooms).
            "native_copies": glue.native_copies(),
            # Native sends the kernel refused (not EAGAIN: those are queued on the transport).
            "send_errors": send_errors,
            "rooms": len(self.rooms),
            "sessions": len(sessions),
            "producers": producers,
            "down_tracks": down_tracks,
            "packets_in": c.packets_in,
            "bytes_in": c.bytes_in,
            "packets_out": packets_out,
            "bytes_out": bytes_out,
            "packets_forwarded": c.packets_forwarded,
            # Incoming RTP taken straight from the sockets (the rest went through aiortc's path).
            "packets_from_sockets": from_sockets,
            "srtp_unprotect_errors": unprotect_errors,
            # Non-STUN datagrams dropped while aioice's queue was full (a flood at a leg's port).
            "ice_datagrams_dropped": ice_dropped,
            "packets_dropped_muted": c.packets_dropped_muted,
            "keyframe_requests_relayed": c.keyframe_requests_relayed,
            "keyframe_requests_sent": c.keyframe_requests_sent,
            "nacks_received": c.nacks_received,
            "nacks_answered": c.nacks_answered,
            "nacks_answered_rtx": c.nacks_answered_rtx,
            "nacks_sent": c.nacks_sent,
            "nacks_given_up": c.nacks_given_up,
            "reports_sent": c.reports_sent,
            "transport_cc_feedback": c.transport_cc_feedback,
            "downlink_limits": c.downlink_limits,
            "levels_decoded": c.levels_decoded,
            "stream_changes_refused": c.stream_changes_refused,
            "decoded_frames": decoded,
            "forward_delay_us": {
                "count": delay.total,
                "p50": delay.percentile(50),
                "p90": delay.percentile(90),
                "p99": delay.percentile(99),
                "max": delay.max_us if delay.total else None,
                "histogram": delay.snapshot(),
                # Measured from the hook's entry (after UDP receive and SRTP unprotect) to the last
                # subscriber's sendto: the server's own forwarding work per incoming packet.
                "measured_from": "rtp hook entry",
            },
            "switch_wait_us": {
                # A video slot given a new source, until the source's keyframe switched it.
                "count": c.switch_wait.total,
                "p50": c.switch_wait.percentile(50),
                "p95": c.switch_wait.percentile(95),
                "histogram": c.switch_wait.snapshot(),
            },
            "keyframe_answer_us": {
                # A publisher's answer to a keyframe request (see ``Counters.keyframe_answer``).
                "count": c.keyframe_answer.total,
                "p50": c.keyframe_answer.percentile(50),
                "p95": c.keyframe_answer.percentile(95),
                "histogram": c.keyframe_answer.snapshot(),
            },
            "per_session": sessions,
        }

    async def close(self) -> None:
        self.closed = True
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        for router in list(self.rooms.values()):
            await router.close()
        self.rooms.clear()


def _ice_servers(settings: Settings) -> list[RTCIceServer]:
    servers = []
    for entry in settings.ice_servers or []:
        if isinstance(entry, RTCIceServer):
            servers.append(entry)
        elif isinstance(entry, dict):
            servers.append(
                RTCIceServer(
                    urls=entry["urls"], username=entry.get("username"), credential=entry.get("credential")
                )
            )
        else:
            raise ValueError(f"bad ice server entry {entry!r}")
    return servers


def create_backend(settings: Settings | None = None) -> SfuBackend:
    """The media backend, configured from ``conference.config.Settings``."""
    settings = settings or Settings()
    return SfuBackend(
        ice_servers=_ice_servers(settings),
        rtc_port_min=settings.rtc_port_min or 0,
        rtc_port_max=settings.rtc_port_max or 0,
        rtc_interfaces=list(settings.rtc_interfaces or []),
        rtc_announced_address=settings.rtc_announced_address,
        max_previews=settings.max_previews,
        publish_max_bitrate=settings.publish_max_bitrate or 1_500_000,
        plain_rtp_host=settings.plain_rtp_host,
        native_send=settings.native_send,
        subscriber_rtx=settings.subscriber_rtx,
        send_side_bwe=settings.send_side_bwe,
        simulcast=settings.simulcast,
        video_codecs=tuple(c.lower() for c in settings.video_codecs),
    )
