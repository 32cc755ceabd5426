"""RTCP builders for the feedback the server sends: receiver reports, REMB and generic NACK."""

from __future__ import annotations

import struct

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
