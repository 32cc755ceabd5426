"""What every transport of an endpoint has (as mediasoup's ``Transport``): its producers, its
receive slots, and its place in a router. ``Session`` (WebRTC), ``PlainTransport`` (RTP over UDP
for workers in other processes) and ``DirectTransport`` (Python code in this process) build on it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Literal

from ..layer_choice import SCREEN_WIDTH, Downlink
from .consumer import DownTrack
from .packet import CodecInfo
from .producer import Producer

if TYPE_CHECKING:
    from .router import Router

Kind = Literal["audio", "video"]
TransportKind = Literal["webrtc", "plain", "direct"]


class Transport:
    """One endpoint's media in a room."""

    kind: TransportKind = "webrtc"

    def __init__(self, router: Router, identity: str) -> None:
        self.router = router
        self.identity = identity
        self.producers: dict[Kind, Producer] = {}
        # A simulcast publisher's video layers, low to high (``producers["video"]`` is the lowest);
        # empty when it publishes one stream.
        self.video_layers: list[Producer] = []
        self.downlink = Downlink()  # the layer choice's state of this endpoint's downlink
        self.video: list[DownTrack] = []
        self.audio: list[DownTrack] = []
        self.previews: list[DownTrack] = []
        self.ready = False
        self._closed = False
        self.last_slots_message: dict[str, Any] | None = None
        self.preview_order: dict[str, int] = {}  # identity -> preview slot index

    @property
    def closed(self) -> bool:
        return self._closed or self.router.backend.closed

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.router.room}/{self.identity})"

    def add_producers(
        self,
        publish: dict[Kind, list[CodecInfo]],
        rtcp_ssrc: int,
        max_bitrate: int = 0,
        extensions: dict[str, int] | None = None,
    ) -> None:
        """A producer per published kind, fed by this transport (which is its ``Upstream``), with
        the header extensions (URI -> id) its packets carry."""
        backend = self.router.backend
        for kind, codecs in publish.items():
            self.producers[kind] = Producer(
                self.identity,
                kind,
                codecs,
                dict(extensions or {}),
                self,  # type: ignore[arg-type]
                self.router,
                backend.counters,
                rtcp_ssrc=rtcp_ssrc,
                max_bitrate=max_bitrate,
            )

    def all_producers(self) -> list[Producer]:
        """Every producer of this endpoint, each simulcast layer included."""
        out = list(self.producers.values())
        return out + [p for p in self.video_layers if p not in out]

    @property
    def screen_width(self) -> int:
        """The width this endpoint draws the program at (``layer_choice.SCREEN_WIDTH``)."""
        options = getattr(self, "options", None)
        return SCREEN_WIDTH.get(getattr(options, "device", "venue"), SCREEN_WIDTH["venue"])

    def downlink_estimate(self, now: float) -> int | None:
        """The bitrate (bits per second) the endpoint's own estimate says its downlink carries, if
        it sends one (``now``: time.time())."""
        return None

    def send_side_estimate(self) -> int | None:
        """The server's own estimate of the endpoint's downlink (bit/s) from the transport-cc
        feedback it sends (``conference.downlink_estimate``); None: no such feedback on this leg."""
        return None

    def take_loss(self) -> float | None:
        """The fraction of its video slots' packets the endpoint's receiver reports say it lost
        (0-1), over at least ``layer_choice.LOSS_MIN_PACKETS`` since the last answer; None until then."""
        return None

    def round_trip(self) -> float | None:
        """The round trip to the endpoint from RTCP, if the transport measures one."""
        return None

    def down_tracks(self) -> list[DownTrack]:
        return [*self.video, *self.audio, *self.previews]

    def route(self, data: bytes, header: Any) -> None:
        """One incoming RTP packet of this endpoint: to the producer its payload type belongs to."""
        producers = self.producers
        if not producers:
            return
        video = producers.get("video")
        if video is not None and header.payload_type in video.codecs:
            video.receive(data, header)
            return
        audio = producers.get("audio")
        if audio is not None and header.payload_type in audio.codecs:
            audio.receive(data, header)

    def packets_out(self) -> tuple[int, int]:
        """(packets, bytes) sent to this endpoint."""
        return (0, 0)

    def stats(self) -> dict[str, Any]:
        packets, octets = self.packets_out()
        return {
            "transport": self.kind,
            "packets_out": packets,
            "bytes_out": octets,
            "packets_in": sum(p.packets for p in self.all_producers()),
            # The endpoint's own estimate of its downlink and the layer choice's budget (bit/s).
            "downlink_estimate": self.downlink_estimate(time.time()),
            # The server's own estimate from the endpoint's transport-cc feedback (bit/s).
            "send_side_estimate": self.send_side_estimate(),
            "downlink_budget": self.downlink.budget,
            "slots": {
                t.mid or f"{t.role}{t.index}": {
                    "identity": t.source.identity if t.source else None,
                    # The simulcast layer it carries (0 the lowest), None for a one-stream source.
                    "layer": t.source.layer if t.source is not None and t.source.layer >= 0 else None,
                    "packets": t.packets,
                    # The slot's numbering (gap-free, StreamRewriter): the soak counts delivery by it.
                    "ssrc": t.rewriter.ssrc if t.configured else None,
                    "last_sequence": t.rewriter.last_sequence if t.configured else None,
                }
                for t in self.down_tracks()
            },
        }

    def _close_media(self) -> None:
        """Leave the router and release producers and slots (the transport-specific part follows)."""
        self._closed = True
        self.router.transport_closed(self)
        for producer in self.all_producers():
            producer.stop()
        for track in self.down_tracks():
            track.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._close_media()
