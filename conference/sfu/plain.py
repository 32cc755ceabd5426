"""Plain RTP over UDP (mediasoup's ``PlainTransport``): no ICE, no DTLS, for workers in other
processes on this machine (a live-stream compositor, a telephone gateway). One socket per
transport, bound to ``plain_rtp_host`` (127.0.0.1 unless configured), RTP and RTCP multiplexed on
it (RFC 5761). Only datagrams from the worker's own declared address are accepted.

The worker offers (``PlainOffer``) what it sends (codecs per kind) and how many slots it wants to
receive, and where it listens; the answer gives the server's port and each receive slot's SSRC and
payload type. PLI/FIR from the worker reach whoever fills the slot; its NACKs are answered from
the packet cache; the server's own feedback to what the worker publishes (receiver reports, NACK,
PLI) goes to the worker's address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..media import MediaError
from .consumer import DownTrack
from .direct import DEFAULT_RECEIVE
from .packet import FORWARDED_CODECS, URI_AUDIO_LEVEL, CodecInfo, parse_header
from .rtcp import parse_feedback, rtcp_pli
from .transport import Kind, Transport

if TYPE_CHECKING:
    from .router import Router

MAX_SLOTS = 9
KNOWN_EXTENSIONS = frozenset({URI_AUDIO_LEVEL})


@dataclass(slots=True)
class PlainOffer:
    """What a plain-RTP worker asks for."""

    address: tuple[str, int]  # where the worker receives RTP and RTCP
    publish: dict[Kind, list[CodecInfo]] = field(default_factory=dict)
    video_slots: int = 0
    audio_slots: int = 0
    receive: dict[Kind, list[CodecInfo]] = field(default_factory=lambda: dict(DEFAULT_RECEIVE))
    # RTP header extensions on what the worker publishes (URI -> one-byte id): a gateway sends the
    # RFC 6464 audio level it measured, so the server need not decode its Opus to hear it speak.
    extensions: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> PlainOffer:
        """From a worker's JSON offer; MediaError("bad_request") for anything malformed."""
        try:
            host, port = data["address"]
            address = (str(ipaddress.ip_address(host)), int(port))
            if not 0 < address[1] < 65536:
                raise ValueError("port out of range")
            publish = {kind: _codecs(c) for kind, c in (data.get("publish") or {}).items()}
            receive = {kind: _codecs(c) for kind, c in (data.get("receive") or {}).items()}
            offer = cls(
                address,
                publish,  # type: ignore[arg-type]
                int(data.get("video_slots", 0)),
                int(data.get("audio_slots", 0)),
                {**DEFAULT_RECEIVE, **receive},  # type: ignore[dict-item]
                _extensions(data.get("extensions") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MediaError("bad_request", f"bad plain-RTP offer: {exc}") from None
        if set(offer.publish) - {"audio", "video"} or set(offer.receive) - {"audio", "video"}:
            raise MediaError("bad_request", "plain-RTP kinds are audio and video")
        if not 0 <= offer.video_slots <= MAX_SLOTS or not 0 <= offer.audio_slots <= 8:
            raise MediaError("bad_request", "video_slots must be 0..9 and audio_slots 0..8")
        return offer


def _extensions(entries: Any) -> dict[str, int]:
    out = {str(uri): int(ext_id) for uri, ext_id in dict(entries).items()}
    if set(out) - KNOWN_EXTENSIONS:
        raise ValueError(f"header extensions understood: {', '.join(sorted(KNOWN_EXTENSIONS))}")
    if any(not 1 <= i <= 14 for i in out.values()) or len(set(out.values())) != len(out):
        raise ValueError("header extension ids must be distinct, 1..14 (RFC 8285 one-byte)")
    return out


def _codecs(entries: Any) -> list[CodecInfo]:
    out = []
    for entry in entries:
        name = str(entry["name"]).lower()
        if name not in FORWARDED_CODECS:
            raise ValueError(f"codec {name!r} is not forwarded")
        payload_type = int(entry["payload_type"])
        if not 0 <= payload_type <= 127:
            raise ValueError("payload type out of range")
        out.append(CodecInfo(name, payload_type, int(entry["clock_rate"])))
    return out


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, transport: PlainTransport) -> None:
        self.owner = transport

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.owner.datagram(data, addr)


class PlainTransport(Transport):
    """An endpoint whose media is plain RTP on a UDP socket of this machine."""

    kind = "plain"

    def __init__(self, router: Router, identity: str, offer: PlainOffer) -> None:
        super().__init__(router, identity)
        self.offer = offer
        self.remote = offer.address
        self.socket: asyncio.DatagramTransport | None = None
        self.local: tuple[str, int] | None = None
        self.dropped_foreign = 0
        self.packets_sent = 0
        self.octets_sent = 0
        self.rtcp_ssrc = random.getrandbits(32)
        backend = router.backend
        self.add_producers(offer.publish, self.rtcp_ssrc, backend.publish_max_bitrate, offer.extensions)
        self._by_ssrc: dict[int, DownTrack] = {}
        for tracks, kind, count in (
            (self.video, "video", offer.video_slots),
            (self.audio, "audio", offer.audio_slots),
        ):
            for i in range(count):
                track = DownTrack(kind, kind, i, self, backend.counters)  # type: ignore[arg-type]
                ssrc = random.getrandbits(32)
                if not track.configure(ssrc, offer.receive.get(kind, []), {}, f"{kind}{i}"):  # type: ignore[arg-type]
                    raise MediaError("bad_request", f"no {kind} codec to receive that the server forwards")
                self._by_ssrc[ssrc] = track
                tracks.append(track)

    async def bind(self, host: str) -> None:
        loop = asyncio.get_running_loop()
        self.socket, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), local_addr=(host, 0))
        self.local = self.socket.get_extra_info("sockname")[:2]

    def answer(self) -> dict[str, Any]:
        assert self.local is not None
        return {
            "type": "answer",
            "transport": "plain",
            "address": list(self.local),
            "rtcp_mux": True,
            "rtcp_ssrc": self.rtcp_ssrc,
            "slots": {
                kind: [
                    # mid: the name the router's `slots` messages give this slot
                    {
                        "mid": t.mid,
                        "ssrc": t.rewriter.ssrc,
                        "codecs": [c._asdict() for c in t.codecs.values()],
                    }
                    for t in tracks
                ]
                for kind, tracks in (("video", self.video), ("audio", self.audio))
            },
        }

    def start(self) -> None:
        self.ready = True
        self.router.transport_ready(self)

    # the socket
    def datagram(self, data: bytes, addr: tuple[Any, int]) -> None:
        if (addr[0], addr[1]) != self.remote:
            self.dropped_foreign += 1  # only the worker that asked for this transport may use it
            return
        if len(data) < 8:
            return
        if 192 <= data[1] <= 223:  # RTCP (RFC 5761: packet types 192-223)
            self._rtcp(data)
            return
        header = parse_header(data)
        if header is not None:
            self.route(data, header)

    def _rtcp(self, data: bytes) -> None:
        for item in parse_feedback(data):
            track = self._by_ssrc.get(item.media_ssrc)
            if track is None:
                continue
            if item.kind == "pli":
                track.on_keyframe_request()
            else:
                for sequence in item.sequences:
                    track.on_nack(sequence)

    # Output, for this transport's down-tracks
    def send(self, data: bytes) -> bool:
        socket = self.socket
        if socket is None or socket.is_closing():
            return False
        socket.sendto(data, self.remote)
        self.packets_sent += 1
        self.octets_sent += len(data)
        return True

    # Upstream, for this transport's producers
    def send_rtcp(self, data: bytes) -> bool:
        socket = self.socket
        if socket is None or socket.is_closing():
            return False
        socket.sendto(data, self.remote)
        return True

    def send_pli(self, media_ssrc: int) -> None:
        self.send_rtcp(rtcp_pli(self.rtcp_ssrc, media_ssrc))

    def last_sender_report(self, ssrc: int) -> tuple[int, float] | None:
        return None

    def packets_out(self) -> tuple[int, int]:
        return (self.packets_sent, self.octets_sent)

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        out["dropped_foreign"] = self.dropped_foreign
        return out

    async def close(self) -> None:
        if self._closed:
            return
        self._close_media()
        if self.socket is not None:
            self.socket.close()
