"""The in-process transport (mediasoup's ``DirectTransport``): media fed by Python code (a prepared
clip, a test source) and forwarded packets handed to Python code, through the same producers,
down-tracks, rewriting, keyframe requests and recording as a browser's.

A feeder calls ``send(packet)`` with complete RTP packets (its payload types, SSRCs, timestamps, and
the header extensions it declared in ``extensions``, e.g. the audio level);
a keyframe wanted by any subscriber reaches it as ``on_keyframe_request(kind)``. A consumer slot's
packets (already rewritten to the slot's SSRC and numbering) reach ``on_packet(track, packet)``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from .consumer import DownTrack
from .packet import CodecInfo, parse_header
from .transport import Kind, Transport

if TYPE_CHECKING:
    from .router import Router

KeyframeCallback = Callable[[Kind], None]
PacketCallback = Callable[[DownTrack, bytes], None]

DEFAULT_RECEIVE = {
    "video": [CodecInfo("vp8", 96, 90_000)],
    "audio": [CodecInfo("opus", 111, 48_000)],
}


class DirectOutput:
    """A down-track's output that calls Python code."""

    __slots__ = ("octets", "on_packet", "packets", "track")

    def __init__(self, on_packet: PacketCallback) -> None:
        self.on_packet = on_packet
        self.track: DownTrack | None = None
        self.packets = 0
        self.octets = 0

    def send(self, data: bytes) -> bool:
        self.packets += 1
        self.octets += len(data)
        self.on_packet(self.track, data)  # type: ignore[arg-type]
        return True


class DirectTransport(Transport):
    """An endpoint whose media is Python code in this process."""

    kind = "direct"

    def __init__(
        self,
        router: Router,
        identity: str,
        *,
        publish: dict[Kind, list[CodecInfo]] | None = None,
        video_slots: int = 0,
        audio_slots: int = 0,
        on_keyframe_request: KeyframeCallback | None = None,
        on_packet: PacketCallback | None = None,
        extensions: dict[str, int] | None = None,
    ) -> None:
        super().__init__(router, identity)
        self.on_keyframe_request = on_keyframe_request
        self.outputs: list[DirectOutput] = []
        backend = router.backend
        self.add_producers(publish or {}, random.getrandbits(32), extensions=extensions)
        if (video_slots or audio_slots) and on_packet is None:
            raise ValueError("a direct transport that receives needs on_packet")
        for tracks, kind, count in ((self.video, "video", video_slots), (self.audio, "audio", audio_slots)):
            for i in range(count):
                output = DirectOutput(on_packet)  # type: ignore[arg-type]
                track = DownTrack(kind, kind, i, output, backend.counters)  # type: ignore[arg-type]
                output.track = track
                track.configure(random.getrandbits(32), DEFAULT_RECEIVE[kind], {}, f"{kind}{i}")
                self.outputs.append(output)
                tracks.append(track)

    # fed by Python code
    def send(self, data: bytes) -> bool:
        """One RTP packet from the feeder; False if it is not RTP or the transport is closed."""
        if self.closed:
            return False
        header = parse_header(data)
        if header is None:
            return False
        self.route(data, header)
        return True

    def start(self) -> None:
        """Take part: the router fills this transport's slots and forwards its producers."""
        self.ready = True
        self.router.transport_ready(self)

    # Upstream, for this transport's producers
    def send_rtcp(self, data: bytes) -> bool:
        return True  # reception reports and NACKs mean nothing to a feeder in this process

    def send_pli(self, media_ssrc: int) -> None:
        callback = self.on_keyframe_request
        if callback is None:
            return
        for kind, producer in self.producers.items():
            if producer.ssrc == media_ssrc:
                callback(kind)
                return

    def last_sender_report(self, ssrc: int) -> tuple[int, float] | None:
        return None

    def packets_out(self) -> tuple[int, int]:
        return (sum(o.packets for o in self.outputs), sum(o.octets for o in self.outputs))
