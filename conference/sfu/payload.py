"""The one VP8 (RFC 7741) and H.264 (RFC 6184) payload parser: descriptors and keyframe checks.

Used by the rewriter (picture ids), the producer (keyframes, in place, no slice), the load
endpoint and the recorder's depacketiser alike.
"""

from __future__ import annotations

from typing import NamedTuple

from .packet import RtpHeader


class Vp8Descriptor(NamedTuple):
    """RFC 7741 VP8 payload descriptor."""

    extended: bool  # X
    non_reference: bool  # N
    start: bool  # S
    partition_id: int  # PID
    picture_id: int | None  # I (7 or 15 bits)
    picture_id_long: bool  # M: the picture id was sent in 15-bit form
    tl0picidx: int | None  # L
    tid: int | None  # T
    layer_sync: bool  # Y
    keyidx: int | None  # K
    header_size: int  # offset of the VP8 payload header inside the RTP payload


def vp8_layout(data: bytes | memoryview, pos: int, end: int) -> tuple[int, int, int, int]:
    """Where the fields of an extended VP8 descriptor starting at ``data[pos]`` (X set) lie, read in
    place for the rewriter's per-packet path: (first picture-id byte, TL0PICIDX, T/K byte, offset of
    the VP8 data), each field -1 when absent and 0 when truncated; a truncated descriptor ends at or
    beyond ``end``."""
    b1 = data[pos + 1] if end - pos > 1 else 0
    q = pos + 2
    p = tl0 = tk = -1
    if b1 & 0x80:
        p = data[q] if q < end else 0
        q += 2 if p & 0x80 else 1
    if b1 & 0x40:
        tl0 = data[q] if q < end else 0
        q += 1
    if b1 & 0x30:
        tk = data[q] if q < end else 0
        q += 1
    return p, tl0, tk, q


def vp8_descriptor(payload: bytes | memoryview) -> Vp8Descriptor:
    """Parse the VP8 payload descriptor; ValueError if truncated."""
    size = len(payload)
    if size < 1:
        raise ValueError("VP8 payload descriptor is empty")
    b0 = payload[0]
    picture_id = tl0 = tid = keyidx = None
    long_id = sync = False
    pos = 1
    if b0 & 0x80:
        if size < 2:
            raise ValueError("VP8 payload descriptor is truncated")
        p, l0, tk, pos = vp8_layout(payload, 0, size)
        if pos > size:
            raise ValueError("VP8 payload descriptor is truncated")
        if p >= 0:
            long_id = bool(p & 0x80)
            picture_id = ((p & 0x7F) << 8) | payload[3] if long_id else p
        if l0 >= 0:
            tl0 = l0
        b1 = payload[1]
        if tk >= 0:
            if b1 & 0x20:
                tid = tk >> 6
                sync = bool(tk & 0x20)
            if b1 & 0x10:
                keyidx = tk & 0x1F
    return Vp8Descriptor(
        bool(b0 & 0x80),
        bool(b0 & 0x20),
        bool(b0 & 0x10),
        b0 & 0x0F,
        picture_id,
        long_id,
        tl0,
        tid,
        sync,
        keyidx,
        pos,
    )


def _vp8_keyframe_at(data: bytes | memoryview, pos: int, end: int) -> bool:
    """VP8 keyframe start: S=1, PID=0 and the payload header's P bit clear (plus the start code)."""
    if end - pos < 1:
        return False
    b0 = data[pos]
    if b0 & 0x1F != 0x10:  # S=1 and PID=0
        return False
    pos += 1
    if b0 & 0x80:
        if end - pos < 1:
            return False
        b1 = data[pos]
        pos += 1
        if b1 & 0x80:
            if end - pos < 1:
                return False
            pos += 2 if data[pos] & 0x80 else 1
        if b1 & 0x40:
            pos += 1
        if b1 & 0x30:
            pos += 1
    # VP8 payload header (RFC 6386 9.1): 3-byte frame tag, then the keyframe start code 9d 01 2a.
    if end - pos < 6:
        return False
    return not data[pos] & 0x01 and data[pos + 3] == 0x9D and data[pos + 4] == 0x01 and data[pos + 5] == 0x2A


def vp8_keyframe_width(data: bytes | memoryview, pos: int, end: int) -> int:
    """The picture width a VP8 keyframe's first packet carries (RFC 6386 9.1: after the start
    code, 14 bits little-endian), 0 if the packet is not a keyframe's first. Read on keyframes only,
    to tell simulcast layers' sizes apart without decoding."""
    if not _vp8_keyframe_at(data, pos, end):
        return 0
    b1 = data[pos + 1] if data[pos] & 0x80 else 0
    q = pos + 1
    if data[pos] & 0x80:
        q += 1
        if b1 & 0x80:
            q += 2 if data[q] & 0x80 else 1
        if b1 & 0x40:
            q += 1
        if b1 & 0x30:
            q += 1
    if end - q < 8:
        return 0
    return (data[q + 6] | (data[q + 7] << 8)) & 0x3FFF


def vp8_is_keyframe(payload: bytes | memoryview) -> bool:
    """True if this RTP payload is the first packet of a VP8 keyframe."""
    return _vp8_keyframe_at(payload, 0, len(payload))


_H264_KEY_NALS = (5, 7)  # IDR slice, SPS


def _h264_keyframe_at(data: bytes | memoryview, pos: int, end: int) -> bool:
    if end - pos < 2:
        return False
    nal_type = data[pos] & 0x1F
    if nal_type == 5 or nal_type == 7:
        return True
    if nal_type == 24:  # STAP-A: 16-bit size, then a NAL unit, repeated
        pos += 1
        while pos + 2 < end:
            size = (data[pos] << 8) | data[pos + 1]
            if size == 0 or pos + 2 + size > end:
                return False
            if data[pos + 2] & 0x1F in _H264_KEY_NALS:
                return True
            pos += 2 + size
        return False
    if nal_type == 28:  # FU-A: the start fragment of an IDR or SPS
        fu = data[pos + 1]
        return bool(fu & 0x80) and fu & 0x1F in _H264_KEY_NALS
    return False


def h264_is_keyframe(payload: bytes | memoryview) -> bool:
    """True if this RTP payload carries an IDR slice or an SPS (single NAL, STAP-A, FU-A start)."""
    return _h264_keyframe_at(payload, 0, len(payload))


def is_keyframe(codec: str, data: bytes, header: RtpHeader) -> bool:
    """Keyframe detection in place, for the hot path (audio is never a keyframe)."""
    if codec == "vp8":
        return _vp8_keyframe_at(data, header.payload_offset, header.payload_end)
    if codec == "h264":
        return _h264_keyframe_at(data, header.payload_offset, header.payload_end)
    return False


def vp8_payload(payload: bytes | memoryview) -> tuple[Vp8Descriptor, bytes]:
    """The descriptor and the VP8 data after it (for reassembling frames); ValueError if truncated."""
    descriptor = vp8_descriptor(payload)
    return descriptor, bytes(payload[descriptor.header_size :])


_START_CODE = b"\x00\x00\x00\x01"


def h264_annexb(payload: bytes | memoryview) -> tuple[bool, bytes]:
    """One H.264 RTP payload (RFC 6184: single NAL unit, STAP-A, FU-A) as Annex B bytes, and whether
    it starts a NAL unit (false for the continuation of a fragmented one); ValueError otherwise."""
    data = bytes(payload)
    if not data:
        raise ValueError("H.264 payload is empty")
    nal_type = data[0] & 0x1F
    if 1 <= nal_type <= 23:
        return True, _START_CODE + data
    if nal_type == 24:  # STAP-A: 16-bit sizes, each followed by a NAL unit
        out, pos = [], 1
        while pos + 2 <= len(data):
            size = (data[pos] << 8) | data[pos + 1]
            pos += 2
            if size == 0 or pos + size > len(data):
                raise ValueError("STAP-A unit overruns the payload")
            out.append(_START_CODE + data[pos : pos + size])
            pos += size
        return True, b"".join(out)
    if nal_type == 28:  # FU-A: indicator, header (S, E, type), fragment
        if len(data) < 2:
            raise ValueError("FU-A payload is truncated")
        start = bool(data[1] & 0x80)
        if start:
            header = bytes([(data[0] & 0xE0) | (data[1] & 0x1F)])
            return True, _START_CODE + header + data[2:]
        return False, data[2:]
    raise ValueError(f"H.264 NAL unit type {nal_type} is not supported")


def annexb_is_keyframe(annexb: bytes) -> bool:
    """Whether an Annex B H.264 access unit holds an IDR slice or an SPS."""
    pos = annexb.find(b"\x00\x00\x01")
    while pos != -1 and pos + 3 < len(annexb):
        if annexb[pos + 3] & 0x1F in _H264_KEY_NALS:
            return True
        pos = annexb.find(b"\x00\x00\x01", pos + 3)
    return False
