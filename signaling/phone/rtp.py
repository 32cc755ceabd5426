"""The call's RTP stream with the telephone (RFC 3550): one UDP socket, packets accepted only from
the address the caller's SDP named, sent with our own SSRC, sequence numbers and timestamps."""

from __future__ import annotations

import asyncio
import secrets
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

_HEADER = struct.Struct("!BBHII")


@dataclass(frozen=True, slots=True)
class RtpPacket:
    payload_type: int
    marker: bool
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes


def parse_rtp(data: bytes) -> RtpPacket | None:
    """The packet, or None for anything that is not RTP version 2 (RTCP included)."""
    if len(data) < 12:
        return None
    first, second, seq, ts, ssrc = _HEADER.unpack_from(data)
    if first >> 6 != 2:
        return None
    pt = second & 0x7F
    if 64 <= pt <= 95:  # RTCP packet types 192-223 share the port when muxed
        return None
    offset = 12 + 4 * (first & 0x0F)
    if first & 0x10:  # header extension
        if len(data) < offset + 4:
            return None
        offset += 4 + 4 * struct.unpack_from("!H", data, offset + 2)[0]
    end = len(data)
    if first & 0x20:  # padding
        if end <= offset or data[-1] > end - offset:
            return None
        end -= data[-1]
    if offset > end:
        return None
    return RtpPacket(pt, bool(second & 0x80), seq, ts, ssrc, data[offset:end])


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, owner: RtpStream) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        self.owner._received(data, addr)


class RtpStream:
    """Receive: ``on_packet(packet)`` for each RTP packet from the expected address. Send: ``send``."""

    def __init__(self, on_packet: Callable[[RtpPacket], None]) -> None:
        self.on_packet = on_packet
        self.remote: tuple[str, int] | None = None
        self.ssrc = secrets.randbits(32)
        self._seq = secrets.randbits(16)
        self._ts = secrets.randbits(32)
        self._transport: asyncio.DatagramTransport | None = None
        self._rtcp: asyncio.DatagramTransport | None = None
        self.last_received = time.monotonic()
        self.packets_in = 0
        self.packets_out = 0
        self.dropped_wrong_source = 0
        self._last_seq: int | None = None

    async def open(self, host: str) -> int:
        """Bind an even port (RTP) and the next one (RTCP, read and ignored); return the RTP port."""
        loop = asyncio.get_running_loop()
        for _ in range(50):
            transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), local_addr=(host, 0))
            port = transport.get_extra_info("sockname")[1]
            if port % 2 == 0 and port < 65535:
                try:
                    rtcp, _ = await loop.create_datagram_endpoint(
                        asyncio.DatagramProtocol, local_addr=(host, port + 1)
                    )
                except OSError:
                    transport.close()
                    continue
                self._transport, self._rtcp = transport, rtcp
                return port
            transport.close()
        raise OSError("no free RTP port pair")

    def _received(self, data: bytes, addr: tuple[str, int]) -> None:
        if addr[:2] != self.remote:
            self.dropped_wrong_source += 1
            return
        packet = parse_rtp(data)
        if packet is None:
            return
        # Drop late and duplicated packets (a 16-bit sequence compare); the call is live audio.
        if self._last_seq is not None and ((packet.sequence - self._last_seq) & 0xFFFF) >= 0x8000:
            return
        if packet.sequence == self._last_seq:
            return
        self._last_seq = packet.sequence
        self.last_received = time.monotonic()
        self.packets_in += 1
        self.on_packet(packet)

    def send(self, payload_type: int, payload: bytes, step: int, marker: bool = False) -> None:
        """One packet; ``step`` advances the timestamp after it (samples of the packet's audio)."""
        self.send_at(payload_type, payload, self._ts, marker)
        self._ts = (self._ts + step) & 0xFFFFFFFF

    def send_at(self, payload_type: int, payload: bytes, timestamp: int, marker: bool = False) -> None:
        if self._transport is None or self.remote is None:
            return
        header = _HEADER.pack(0x80, (0x80 if marker else 0) | payload_type, self._seq, timestamp, self.ssrc)
        self._seq = (self._seq + 1) & 0xFFFF
        self._transport.sendto(header + payload, self.remote)
        self.packets_out += 1

    @property
    def timestamp(self) -> int:
        return self._ts

    def close(self) -> None:
        for t in (self._transport, self._rtcp):
            if t is not None:
                t.close()
        self._transport = self._rtcp = None
