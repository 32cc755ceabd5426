"""RTCP for the forwarding core: the feedback the server sends (receiver reports, REMB, NACK, PLI)
and the parser of the feedback plain-RTP workers send it (PLI, FIR, NACK)."""

from __future__ import annotations

import struct
from typing import NamedTuple

_RTCP_HEAD = struct.Struct("!BBHI")


def rtcp_receiver_report(sender_ssrc: int, blocks: list[bytes]) -> bytes:
    """RTCP RR (RFC 3550 6.4.2) with up to 31 report blocks."""
    blocks = blocks[:31]
    body = b"".join(blocks)
    return _RTCP_HEAD.pack(0x80 | len(blocks), 201, 1 + len(body) // 4, sender_ssrc) + body


def rtcp_remb(sender_ssrc: int, bitrate: int, media_ssrcs: list[int]) -> bytes:
    """RTCP REMB (draft-alvestrand-rmcat-remb): the highest bitrate the publisher should send."""
    exponent = 0
    mantissa = max(0, int(bitrate))
    while mantissa > 0x3FFFF:
        mantissa >>= 1
        exponent += 1
    fci = b"REMB" + struct.pack("!I", (len(media_ssrcs) << 24) | (exponent << 18) | mantissa)
    fci += b"".join(struct.pack("!I", s) for s in media_ssrcs)
    return _RTCP_HEAD.pack(0x80 | 15, 206, 2 + len(fci) // 4, sender_ssrc) + b"\0\0\0\0" + fci


def rtcp_nack(sender_ssrc: int, media_ssrc: int, lost: list[int]) -> bytes:
    """RTCP generic NACK (RFC 4585 6.2.1): each FCI names a packet and a bitmask of the next 16."""
    fci = bytearray()
    remaining = sorted(set(lost), key=lambda s: (s - lost[0]) & 0xFFFF)
    while remaining:
        pid = remaining.pop(0)
        mask = 0
        rest = []
        for seq in remaining:
            d = (seq - pid) & 0xFFFF
            if 1 <= d <= 16:
                mask |= 1 << (d - 1)
            else:
                rest.append(seq)
        remaining = rest
        fci += struct.pack("!HH", pid, mask)
    return _RTCP_HEAD.pack(0x81, 205, 2 + len(fci) // 4, sender_ssrc) + struct.pack("!I", media_ssrc) + fci


def rtcp_pli(sender_ssrc: int, media_ssrc: int) -> bytes:
    """RTCP picture loss indication (RFC 4585 6.3.1): ask for a keyframe of ``media_ssrc``."""
    return _RTCP_HEAD.pack(0x81, 206, 2, sender_ssrc) + struct.pack("!I", media_ssrc)


class Feedback(NamedTuple):
    """One request in a compound RTCP packet from a receiver: a keyframe ("pli", RFC 4585 PLI or
    RFC 5104 FIR) or retransmissions ("nack", the sequence numbers)."""

    kind: str
    media_ssrc: int
    sequences: tuple[int, ...] = ()


def parse_feedback(data: bytes) -> list[Feedback]:
    """The PLI, FIR and generic NACK requests of a compound RTCP packet (the rest is skipped);
    a truncated or malformed packet ends the parse, never raises."""
    out: list[Feedback] = []
    pos, size = 0, len(data)
    while pos + 4 <= size:
        first, packet_type, length = data[pos], data[pos + 1], (data[pos + 2] << 8) | data[pos + 3]
        end = pos + 4 + length * 4
        if first >> 6 != 2 or end > size:
            break
        fmt = first & 0x1F
        if packet_type == 206 and fmt == 1 and length >= 2:
            out.append(Feedback("pli", int.from_bytes(data[pos + 8 : pos + 12], "big")))
        elif packet_type == 206 and fmt == 4 and length >= 4:
            # FIR: the media SSRC is in each FCI entry (8 bytes: SSRC, sequence number, padding).
            for entry in range(pos + 12, end - 7, 8):
                out.append(Feedback("pli", int.from_bytes(data[entry : entry + 4], "big")))
        elif packet_type == 205 and fmt == 1 and length >= 3:
            media_ssrc = int.from_bytes(data[pos + 8 : pos + 12], "big")
            sequences: list[int] = []
            for entry in range(pos + 12, end - 3, 4):
                pid = (data[entry] << 8) | data[entry + 1]
                mask = (data[entry + 2] << 8) | data[entry + 3]
                sequences.append(pid)
                sequences.extend((pid + i + 1) & 0xFFFF for i in range(16) if mask >> i & 1)
            out.append(Feedback("nack", media_ssrc, tuple(sequences)))
        pos = end
    return out
