"""Packet-level RTP: parsing, keyframe detection and the per-slot rewriting
of conference.sfu's packet modules.

aiortc is the reference: its RtpPacket/HeaderExtensionsMap parse what we write, its VP8 and H.264
encoders/packetisers produce the payloads, and a real VP8 decoder decodes a stream switched between two
real sources.
"""

from __future__ import annotations

import fractions
import itertools
import struct

import av
import numpy as np
import pytest
from aiortc.codecs.h264 import H264Encoder, h264_depayload
from aiortc.codecs.vpx import Vp8Decoder, Vp8Encoder, VpxPayloadDescriptor, vp8_depayload
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket, pack_header_extensions
from hypothesis import given, settings
from hypothesis import strategies as st

from conference.sfu.packet import (
    URI_ABS_SEND_TIME,
    URI_AUDIO_LEVEL,
    URI_MID,
    ExtensionMap,
    RtpHeader,
    abs_send_time,
    audio_level,
    extension_value,
    parse_extensions,
    parse_header,
)
from conference.sfu.payload import h264_is_keyframe, is_keyframe, vp8_descriptor, vp8_is_keyframe
from conference.sfu.reception import PacketCache
from conference.sfu.rewriter import MAX_SEQUENCE_STEP, StreamRewriter

# The publisher's extension ids (what a browser might pick) differ from the subscriber's on purpose.
PUB_MID, PUB_ABS, PUB_LEVEL = 4, 2, 1
SUB = ExtensionMap(mid=1, abs_send_time=3, audio_level=2)


def extensions_map(mid: int, abs_id: int, level: int) -> HeaderExtensionsMap:
    m = HeaderExtensionsMap()
    exts = [
        RTCRtpHeaderExtensionParameters(id=i, uri=uri)
        for i, uri in ((mid, URI_MID), (abs_id, URI_ABS_SEND_TIME), (level, URI_AUDIO_LEVEL))
        if i
    ]
    m.configure(RTCRtpParameters(headerExtensions=exts))
    return m


PUB_MAP = extensions_map(PUB_MID, PUB_ABS, PUB_LEVEL)
SUB_MAP = extensions_map(SUB.mid, SUB.abs_send_time, SUB.audio_level)


def rtp(
    payload: bytes,
    *,
    seq: int,
    ts: int,
    ssrc: int = 1111,
    pt: int = 96,
    marker: int = 0,
    mid: str | None = "pub",
    level: int | None = None,
    csrc: tuple[int, ...] = (),
    padding: int = 0,
) -> bytes:
    packet = RtpPacket(payload_type=pt, marker=marker, sequence_number=seq, timestamp=ts, ssrc=ssrc)
    packet.payload = payload
    packet.csrc = list(csrc)
    packet.padding_size = padding
    packet.extensions.mid = mid
    packet.extensions.abs_send_time = 0x123456
    if level is not None:
        packet.extensions.audio_level = (True, level)
    return packet.serialize(PUB_MAP)


def header(data: bytes) -> RtpHeader:
    h = parse_header(data)
    assert h is not None
    return h


def video_slot(**kw: int) -> StreamRewriter:
    return StreamRewriter(0xCAFE, 100, "video", 90000, "vp8", SUB, b"v3", **kw)


def audio_slot(**kw: int) -> StreamRewriter:
    return StreamRewriter(0xA0D1, 111, "audio", 48000, "opus", SUB, b"a0", **kw)


def send(slot: StreamRewriter, data: bytes, now: float = 0.0, level: int | None = None) -> RtpPacket | None:
    h = header(data)
    out = slot.rewrite(data, h, abs_send_time(now), level, is_keyframe(slot.codec, data, h), now)
    return None if out is None else RtpPacket.parse(out, SUB_MAP)


# -- header and extensions ------------------------------------------------------------------------


def test_parse_header_matches_aiortc_with_csrcs_extensions_and_padding() -> None:
    data = rtp(b"hello world", seq=65535, ts=0xFFFFFFFF, marker=1, csrc=(7, 8), padding=5, level=30)
    h = header(data)
    ref = RtpPacket.parse(data, PUB_MAP)
    assert (h.marker, h.payload_type, h.sequence, h.timestamp, h.ssrc) == (1, 96, 65535, 0xFFFFFFFF, 1111)
    assert data[h.payload_offset : h.payload_end] == ref.payload == b"hello world"
    assert h.ext_offset == 12 + 8 + 4
    assert parse_extensions(data, h) == {PUB_MID: b"pub", PUB_ABS: b"\x12\x34\x56", PUB_LEVEL: b"\x9e"}
    assert audio_level(data, h, PUB_LEVEL) == 30
    assert audio_level(data, h, 9) is None
    assert extension_value(data, h, PUB_MID) == b"pub"


def test_parse_header_without_extension() -> None:
    data = RtpPacket(payload_type=111, sequence_number=5, timestamp=6, ssrc=7, payload=b"x").serialize()
    h = header(data)
    assert (h.ext_profile, h.ext_length, h.payload_offset, h.payload_end) == (0, 0, 12, 13)
    assert audio_level(data, h, 1) is None
    assert parse_extensions(data, h) == {}


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80" * 11,
        bytes([0x40]) + bytes(15),  # version 1
        bytes([0x81, 0x60]) + bytes(10),  # one CSRC announced, none there
        bytes([0x90, 0x60]) + bytes(10) + b"\xbe\xde",  # extension header truncated
        bytes([0x90, 0x60]) + bytes(10) + b"\xbe\xde\x00\x02" + bytes(4),  # extension body truncated
        bytes([0xA0, 0x60]) + bytes(10) + b"ab\x00",  # padding length zero
        bytes([0xA0, 0x60]) + bytes(10) + b"ab\x09",  # padding longer than the payload
    ],
)
def test_parse_header_rejects_malformed(data: bytes) -> None:
    assert parse_header(data) is None


def test_two_byte_extensions() -> None:
    profile, value = pack_header_extensions([(1, b"a"), (20, b""), (200, b"x" * 20)])
    assert profile == 0x1000
    data = (
        struct.pack("!BBHII", 0x90, 96, 1, 2, 3)
        + struct.pack("!HH", profile, len(value) // 4)
        + value
        + b"payload"
    )
    h = header(data)
    assert parse_extensions(data, h) == {1: b"a", 20: b"", 200: b"x" * 20}
    assert extension_value(data, h, 200) == b"x" * 20
    assert extension_value(data, h, 20) == b""
    assert data[h.payload_offset :] == b"payload"


def test_one_byte_extension_with_padding_between_elements() -> None:
    # id 3 (len 1), two padding zeros, id 1 (len 2), padding to a 4-byte boundary
    value = bytes([0x30, 0x85, 0, 0, 0x11, 0xAB, 0xCD, 0])
    data = struct.pack("!BBHII", 0x90, 96, 1, 2, 3) + struct.pack("!HH", 0xBEDE, 2) + value + b"p"
    h = header(data)
    assert parse_extensions(data, h) == {3: b"\x85", 1: b"\xab\xcd"}
    assert audio_level(data, h, 3) == 5


def test_abs_send_time_is_6_18_fixed_point() -> None:
    assert abs_send_time(1.0) == 1 << 18
    assert abs_send_time(1.5) == 3 << 17
    assert abs_send_time(64.0) == 0  # wraps every 64 s
    assert abs_send_time(63.999999) == 0xFFFFFF


# -- codec payloads -------------------------------------------------------------------------------


def solid(rgb: tuple[int, int, int], pts: int, size: tuple[int, int] = (320, 180)) -> av.VideoFrame:
    image = np.empty((size[1], size[0], 3), dtype=np.uint8)
    image[:, :] = rgb
    # A moving stripe so delta frames carry data.
    image[:, (pts * 7) % size[0] : (pts * 7) % size[0] + 8] = 255 - np.array(rgb, dtype=np.uint8)
    frame = av.VideoFrame.from_ndarray(image, format="rgb24")
    frame.pts = pts * 3000
    frame.time_base = fractions.Fraction(1, 90000)
    return frame


def vp8_frames(
    rgb: tuple[int, int, int], count: int, keyframes: tuple[int, ...] = ()
) -> list[tuple[list[bytes], int]]:
    """``count`` real VP8 frames packetised by aiortc: (payloads, timestamp) each."""
    encoder = Vp8Encoder()
    return [encoder.encode(solid(rgb, i), force_keyframe=i in keyframes) for i in range(count)]


def test_vp8_keyframe_detection_on_real_packets() -> None:
    frames = vp8_frames((200, 30, 30), 6, keyframes=(4,))
    first = [vp8_is_keyframe(payloads[0]) for payloads, _ in frames]
    assert first == [True, False, False, False, True, False]
    for payloads, _ in frames:
        assert not any(vp8_is_keyframe(p) for p in payloads[1:])  # continuation packets
    # In place, as the hot path sees it
    data = rtp(frames[4][0][0], seq=1, ts=2)
    assert is_keyframe("vp8", data, header(data))
    data = rtp(frames[5][0][0], seq=1, ts=2)
    assert not is_keyframe("vp8", data, header(data))
    assert not vp8_is_keyframe(b"")
    assert not vp8_is_keyframe(b"\x90\x80")  # truncated


def test_vp8_descriptor_forms() -> None:
    long_form = bytes(VpxPayloadDescriptor(1, 0, picture_id=0x1234, tl0picidx=9, tid=(2, 1), keyidx=5))
    d = vp8_descriptor(long_form + b"data")
    assert d.start and d.partition_id == 0 and d.picture_id == 0x1234 and d.picture_id_long
    assert (d.tl0picidx, d.tid, d.layer_sync, d.keyidx, d.header_size) == (9, 2, True, 5, 6)
    short_form = bytes([0x90, 0x80, 0x45])  # X, S; I with a 7-bit picture id
    d = vp8_descriptor(short_form + b"data")
    assert d.picture_id == 0x45 and not d.picture_id_long and d.tl0picidx is None and d.header_size == 3
    d = vp8_descriptor(b"\x00data")
    assert not d.extended and not d.start and d.picture_id is None and d.header_size == 1
    with pytest.raises(ValueError):
        vp8_descriptor(b"\x80\x80")


def test_h264_keyframe_detection_on_aiortc_packetiser_output() -> None:
    encoder = H264Encoder()
    key, _ = encoder.encode(solid((10, 200, 10), 0, (320, 240)))
    delta, _ = encoder.encode(solid((10, 200, 10), 1, (320, 240)))
    assert h264_is_keyframe(key[0])  # STAP-A with SPS and PPS (or the IDR itself)
    assert not any(h264_is_keyframe(p) for p in delta)


def test_h264_keyframe_detection_hand_built() -> None:
    idr = bytes([0x65]) + b"\x88" * 10
    sps = bytes([0x67, 0x42, 0x00, 0x1F])
    pps = bytes([0x68, 0xCE, 0x3C, 0x80])
    non_idr = bytes([0x41]) + b"\x9a" * 10
    assert h264_is_keyframe(idr) and h264_is_keyframe(sps)
    assert not h264_is_keyframe(non_idr) and not h264_is_keyframe(pps)
    stap = bytes([0x78]) + struct.pack("!H", len(sps)) + sps + struct.pack("!H", len(pps)) + pps
    assert h264_is_keyframe(stap)
    stap_delta = bytes([0x78]) + struct.pack("!H", len(pps)) + pps + struct.pack("!H", 11) + non_idr
    assert not h264_is_keyframe(stap_delta)
    assert not h264_is_keyframe(bytes([0x78, 0x00, 0x40]) + sps)  # STAP-A size beyond the packet
    fu_start, fu_middle = bytes([0x7C, 0x85]) + b"\x88" * 10, bytes([0x7C, 0x05]) + b"\x88" * 10
    assert h264_is_keyframe(fu_start) and not h264_is_keyframe(fu_middle)
    assert not h264_is_keyframe(bytes([0x7C, 0x81]) + b"\x00")  # FU-A start of a non-IDR slice
    assert not h264_is_keyframe(b"\x65")


# -- rewriting ------------------------------------------------------------------------------------


def test_rewritten_packet_carries_the_slots_identity_and_extensions() -> None:
    slot = audio_slot(first_sequence=10, first_timestamp=1000)
    slot.switch(1111)
    data = rtp(b"opus-frame", seq=500, ts=96000, pt=109, marker=1, csrc=(42,), level=40, padding=3)
    out = send(slot, data, now=2.0, level=40)
    assert out is not None
    assert (out.ssrc, out.payload_type, out.sequence_number, out.timestamp) == (0xA0D1, 111, 10, 1000)
    assert out.marker == 1 and out.csrc == [] and out.padding_size == 0
    assert out.payload == b"opus-frame"
    # The slot's own mid: the publisher's never leaks through.
    assert out.extensions.mid == "a0"
    assert out.extensions.abs_send_time == 2 << 18
    assert out.extensions.audio_level == (False, 40)
    assert (slot.packets_sent, slot.octets_sent, slot.last_sequence, slot.last_timestamp) == (1, 10, 10, 1000)


@pytest.mark.parametrize(
    ("ext", "mid", "profile"),
    [
        (ExtensionMap(mid=1, abs_send_time=3, audio_level=2), b"0", 0xBEDE),
        (ExtensionMap(mid=1, abs_send_time=0, audio_level=2), b"0", 0xBEDE),
        (ExtensionMap(mid=14, abs_send_time=13, audio_level=0), b"sixteen-chars-16", 0xBEDE),
        (ExtensionMap(mid=15, abs_send_time=3, audio_level=2), b"0", 0x1000),
        (ExtensionMap(mid=1, abs_send_time=200, audio_level=100), b"a-mid-longer-than-16", 0x1000),
        (ExtensionMap(mid=0, abs_send_time=0, audio_level=0), b"", 0xBEDE),
    ],
)
def test_extension_block_forms_parse_with_aiortc(ext: ExtensionMap, mid: bytes, profile: int) -> None:
    slot = StreamRewriter(5, 111, "audio", 48000, "opus", ext, mid, first_sequence=1)
    slot.switch(1111)
    data = rtp(b"x" * 20, seq=1, ts=1, level=77)
    h = header(data)
    out = slot.rewrite(data, h, abs_send_time(3.25), 77, False, 0.0)
    assert out is not None
    oh = header(out)
    assert oh.ext_profile == profile and oh.ext_length % 4 == 0
    ref = RtpPacket.parse(out, extensions_map(ext.mid, ext.abs_send_time, ext.audio_level))
    assert ref.payload == b"x" * 20
    assert ref.extensions.mid == (mid.decode() if ext.mid else None)
    assert ref.extensions.abs_send_time == (abs_send_time(3.25) if ext.abs_send_time else None)
    assert ref.extensions.audio_level == ((False, 77) if ext.audio_level else None)
    expected = {}
    if ext.mid:
        expected[ext.mid] = mid
    if ext.abs_send_time:
        expected[ext.abs_send_time] = abs_send_time(3.25).to_bytes(3, "big")
    if ext.audio_level:
        expected[ext.audio_level] = bytes([77])
    assert parse_extensions(out, oh) == expected


def test_video_slot_writes_no_audio_level() -> None:
    slot = video_slot(first_sequence=1)
    slot.switch(1111)
    data = rtp(vp8_frames((1, 2, 3), 1)[0][0][0], seq=9, ts=9)
    h = header(data)
    out = slot.rewrite(data, h, 77, 5, True, 0.0)
    assert out is not None
    assert set(parse_extensions(out, header(out))) == {SUB.mid, SUB.abs_send_time}


def test_bad_slot_parameters_are_rejected() -> None:
    with pytest.raises(ValueError):
        StreamRewriter(1, 96, "video", 90000, "vp9", SUB, b"0")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        StreamRewriter(1, 128, "video", 90000, "vp8", SUB, b"0")
    with pytest.raises(ValueError):
        StreamRewriter(1, 96, "video", 90000, "vp8", ExtensionMap(1, 1, 0), b"0")
    with pytest.raises(ValueError):
        StreamRewriter(1, 96, "video", 90000, "vp8", ExtensionMap(300, 0, 0), b"0")
    slot = audio_slot()
    with pytest.raises(ValueError):
        slot.switch(5, codec="theora")  # type: ignore[arg-type]


def test_nothing_is_sent_before_a_switch_or_after_detach() -> None:
    slot = audio_slot()
    assert send(slot, rtp(b"a", seq=1, ts=1)) is None
    slot.switch(1111)
    assert send(slot, rtp(b"a", seq=2, ts=960)) is not None
    assert send(slot, rtp(b"a", seq=3, ts=1920, ssrc=2222)) is None  # not this slot's source
    slot.detach()
    assert send(slot, rtp(b"a", seq=4, ts=2880)) is None
    assert slot.packets_sent == 1


def test_audio_switch_continues_sequence_and_timestamp() -> None:
    slot = audio_slot(first_sequence=65534, first_timestamp=0xFFFFFFFF - 960)
    slot.switch(1111)
    outs = [send(slot, rtp(b"a", seq=100 + i, ts=5000 + 960 * i), now=i * 0.02) for i in range(3)]
    assert [o.sequence_number for o in outs if o] == [65534, 65535, 0]  # 16-bit wrap
    assert [o.timestamp for o in outs if o] == [0xFFFFFFFF - 960, 0xFFFFFFFF, 959]  # 32-bit wrap
    slot.switch(2222)
    # The old source keeps flowing until the new one's first packet.
    kept = send(slot, rtp(b"a", seq=103, ts=5000 + 960 * 3), now=0.06)
    assert kept is not None and kept.sequence_number == 1
    first_b = send(slot, rtp(b"b", seq=40000, ts=123, ssrc=2222), now=0.1)
    assert first_b is not None and first_b.sequence_number == 2
    # 40 ms of wall time since the last packet: the clock moves on by that much.
    assert first_b.timestamp == (kept.timestamp + 1920) & 0xFFFFFFFF
    second_b = send(slot, rtp(b"b", seq=40001, ts=123 + 960, ssrc=2222), now=0.12)
    assert second_b is not None
    assert (second_b.sequence_number, second_b.timestamp) == (3, first_b.timestamp + 960)
    assert send(slot, rtp(b"a", seq=104, ts=9000), now=0.12) is None  # the old source is gone


def test_audio_switch_without_a_pause_never_overlaps_the_last_frame() -> None:
    slot = audio_slot(first_timestamp=0)
    slot.switch(1111)
    a = send(slot, rtp(b"a", seq=1, ts=0), now=5.0)
    slot.switch(2222)
    b = send(slot, rtp(b"b", seq=1, ts=77, ssrc=2222), now=5.0001)
    assert a is not None and b is not None
    assert b.timestamp - a.timestamp == 960  # at least one 20 ms frame


def test_reordered_and_retransmitted_packets_map_through_the_same_offset() -> None:
    slot = audio_slot(first_sequence=1000, first_timestamp=0)
    slot.switch(1111)
    order = [10, 12, 11, 13, 11, 15, 14]
    seqs = []
    for n in order:
        out = send(slot, rtp(bytes([n]), seq=65530 + n & 0xFFFF, ts=960 * n), now=n * 0.02)
        assert out is not None and out.payload == bytes([n])
        seqs.append(out.sequence_number)
    assert seqs == [1000 + n - 10 for n in order]
    assert slot.last_sequence == 1005  # the newest, not the last one handled
    assert slot.source_sequence(1002) == (65530 + 12) & 0xFFFF


def test_packets_from_before_the_switch_point_are_not_sent() -> None:
    slot = video_slot(first_sequence=50)
    slot.switch(1111)
    frames = vp8_frames((9, 9, 9), 2)
    assert send(slot, rtp(frames[0][0][0], seq=200, ts=0)) is not None
    late = send(slot, rtp(frames[0][0][0], seq=199, ts=0))  # older than the keyframe we started on
    assert late is None


def test_deliberate_drops_and_padding_leave_no_gap() -> None:
    slot = audio_slot(first_sequence=0, first_timestamp=0)
    slot.switch(1111)
    out = []
    for n in range(1, 9):
        data = rtp(bytes([n]), seq=n, ts=960 * n)
        if n in (3, 4):
            slot.drop(header(data))
            continue
        if n == 6:  # padding only: the publisher probing bandwidth
            data = rtp(b"", seq=n, ts=960 * n, padding=20)
        p = send(slot, data, now=n * 0.02)
        if p is not None:
            out.append((p.sequence_number, p.payload))
    assert out == [(0, b"\x01"), (1, b"\x02"), (2, b"\x05"), (3, b"\x07"), (4, b"\x08")]
    assert slot.packets_dropped == 3
    # A late packet from before a drop keeps the number it was due; NACK maps back exactly.
    assert slot.source_sequence(1) == 2
    assert slot.source_sequence(2) == 5
    assert slot.source_sequence(4) == 8
    assert slot.source_sequence(5) is None  # not sent yet


def test_late_packet_across_a_drop_takes_its_original_number() -> None:
    slot = audio_slot(first_sequence=0, first_timestamp=0)
    slot.switch(1111)
    send(slot, rtp(b"\x01", seq=1, ts=0))
    send(slot, rtp(b"\x03", seq=3, ts=1920))  # 2 is late
    slot.drop(header(rtp(b"\x04", seq=4, ts=2880)))
    p5 = send(slot, rtp(b"\x05", seq=5, ts=3840))
    p2 = send(slot, rtp(b"\x02", seq=2, ts=960))
    assert p5 is not None and p2 is not None
    assert (p2.sequence_number, p5.sequence_number) == (1, 3)


def test_source_sequence_is_none_for_an_earlier_source() -> None:
    slot = audio_slot(first_sequence=0)
    assert slot.source_sequence(0) is None
    slot.switch(1111)
    send(slot, rtp(b"a", seq=70, ts=0))
    send(slot, rtp(b"a", seq=71, ts=960))
    slot.switch(2222)
    send(slot, rtp(b"b", seq=9000, ts=0, ssrc=2222), now=1)
    assert slot.source_sequence(2) == 9000
    assert slot.source_sequence(1) is None  # that one came from 1111


def test_video_switch_waits_for_a_keyframe_of_the_new_source() -> None:
    a = vp8_frames((200, 0, 0), 4)
    b = vp8_frames((0, 0, 200), 4, keyframes=(2,))
    slot = video_slot(first_sequence=65535, first_picture_id=0x7FFF)
    slot.switch(1111)
    sent = []
    seq_a = 10
    for i in range(2):
        for p in a[i][0]:
            sent.append(send(slot, rtp(p, seq=seq_a, ts=a[i][1], ssrc=1111), now=i / 30))
            seq_a += 1
    slot.switch(2222)
    assert slot.switching
    # B's delta frames are refused; A keeps flowing meanwhile.
    for j, p in enumerate(b[1][0]):
        assert send(slot, rtp(p, seq=500 + j, ts=b[1][1], ssrc=2222), now=0.05) is None
    for p in a[2][0]:
        sent.append(send(slot, rtp(p, seq=seq_a, ts=a[2][1], ssrc=1111), now=2 / 30))
        seq_a += 1
    for j, p in enumerate(b[2][0]):
        sent.append(send(slot, rtp(p, seq=600 + j, ts=b[2][1], ssrc=2222), now=3 / 30))
    assert not slot.switching
    assert send(slot, rtp(a[3][0][0], seq=seq_a, ts=a[3][1], ssrc=1111), now=0.1) is None
    assert all(p is not None for p in sent)
    seqs = [p.sequence_number for p in sent if p]
    assert seqs == [(65535 + k) & 0xFFFF for k in range(len(seqs))]
    pids = [VpxPayloadDescriptor.parse(p.payload)[0].picture_id for p in sent if p]
    frame_pids = sorted(set(pids), key=pids.index)
    assert frame_pids == [0x7FFF, 0, 1, 2]  # +1 per frame across the switch, wrapping at 2^15
    ts = [p.timestamp for p in sent if p]
    assert ts[-1] - ts[-2 - len(b[2][0]) + 1] == pytest.approx(3000, abs=1)  # 1/30 s of wall time


def test_switch_without_ssrc_takes_the_next_keyframe_of_any_source() -> None:
    frames = vp8_frames((50, 50, 50), 3)
    slot = video_slot(first_sequence=7)
    slot.switch()
    assert send(slot, rtp(frames[1][0][0], seq=1, ts=1, ssrc=3333)) is None  # not a keyframe
    out = send(slot, rtp(frames[0][0][0], seq=2, ts=2, ssrc=3333))
    assert out is not None and out.sequence_number == 7 and slot.source_ssrc == 3333


def test_switch_to_the_current_source_cancels_a_pending_switch() -> None:
    frames = vp8_frames((50, 50, 50), 3)
    slot = video_slot()
    slot.switch(1111)
    send(slot, rtp(frames[0][0][0], seq=1, ts=1))
    slot.switch(2222)
    slot.switch(1111)
    assert not slot.switching
    assert send(slot, rtp(frames[1][0][0], seq=2, ts=2)) is not None
    assert send(slot, rtp(frames[0][0][0], seq=3, ts=3, ssrc=2222)) is None


def vp8_packet(desc: bytes, seq: int, ts: int, ssrc: int = 1111, key: bool = False) -> bytes:
    # A minimal VP8 payload header: keyframe tag and start code, or an interframe tag.
    body = bytes([0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A, 0x40, 0x01, 0xB4, 0x00]) if key else b"\x01\x02\x03"
    return rtp(desc + body, seq=seq, ts=ts, ssrc=ssrc)


def out_descriptor(p: RtpPacket | None) -> VpxPayloadDescriptor:
    assert p is not None
    return VpxPayloadDescriptor.parse(p.payload)[0]


def test_vp8_seven_bit_picture_ids_are_unwrapped_and_sent_in_15_bit_form() -> None:
    slot = video_slot(first_picture_id=32760)
    slot.switch(1111)
    pids = []
    for n in range(300):  # 7-bit ids wrap at 128 twice; the output wraps at 2^15 once
        key = n == 0
        desc = bytes([0x90 if key else 0x80, 0x80, (120 + n) & 0x7F])
        p = send(slot, vp8_packet(desc, seq=n, ts=3000 * n, key=key), now=n / 30)
        assert p is not None
        assert p.payload[2] & 0x80  # M bit: 15-bit form
        pids.append(out_descriptor(p).picture_id)
    assert pids == [(32760 + n) & 0x7FFF for n in range(300)]
    # A late packet of an earlier frame gets that frame's id back.
    late = send(slot, vp8_packet(bytes([0x80, 0x80, (120 + 290) & 0x7F]), seq=290, ts=3000 * 290))
    assert out_descriptor(late).picture_id == (32760 + 290) & 0x7FFF


def test_vp8_picture_id_and_tl0picidx_continue_across_switches() -> None:
    slot = video_slot(first_picture_id=100)
    slot.switch(1111)
    # Source A: 15-bit ids, TL0PICIDX and TID (three temporal layers: tl0 steps on TID 0).
    for n in range(4):
        desc = bytes([0x90 if n == 0 else 0x80, 0xE0]) + struct.pack("!H", 0x8000 | (5000 + n))
        desc += bytes([250 + n // 2, (n % 2) << 6])
        p = send(slot, vp8_packet(desc, seq=n, ts=3000 * n, key=n == 0), now=n / 30)
        d = out_descriptor(p)
        assert d.picture_id == 100 + n
        assert d.tid == ((n % 2), 0)
    tl0_a = out_descriptor(p).tl0picidx
    assert tl0_a is not None
    slot.switch(2222)
    # Source B: 7-bit ids, TL0PICIDX wrapping at 256.
    for n in range(4):
        desc = bytes([0x90 if n == 0 else 0x80, 0xC0, 126 + n & 0x7F, (255 + n) & 0xFF])
        p = send(slot, vp8_packet(desc, seq=900 + n, ts=7 + 3000 * n, ssrc=2222, key=n == 0), now=1 + n / 30)
        d = out_descriptor(p)
        assert d.picture_id == 104 + n
        assert d.tl0picidx == (tl0_a + 1 + n) & 0xFF
        assert d.tid is None and d.partition_start == (n == 0)


def test_vp8_truncated_descriptor_is_not_forwarded() -> None:
    slot = video_slot()
    slot.switch(1111)
    send(slot, vp8_packet(bytes([0x90, 0x80, 0x01]), seq=1, ts=1, key=True))
    assert send(slot, rtp(bytes([0x80, 0xE0, 0x81]), seq=2, ts=2)) is None


def decode_stream(packets: list[RtpPacket]) -> list[np.ndarray]:
    """What an aiortc subscriber does with the slot's packets: its jitter buffer assembles frames
    (it emits a frame when the next one starts, so the last stays buffered) and its VP8 decoder
    decodes them; a decoder error raises."""
    jitter = JitterBuffer(capacity=128, is_video=True)
    decoder = Vp8Decoder()
    images: list[np.ndarray] = []
    for packet in packets:
        packet._data = vp8_depayload(packet.payload)  # type: ignore[attr-defined]
        _, frame = jitter.add(packet)
        if frame is not None:
            images.extend(f.to_ndarray(format="rgb24") for f in decoder.decode(frame))  # type: ignore[attr-defined]
    return images


def test_real_vp8_streams_decode_across_a_switch() -> None:
    red = vp8_frames((220, 20, 20), 8)
    blue = vp8_frames((20, 20, 220), 8, keyframes=(5,))
    slot = video_slot(first_sequence=65530, first_timestamp=0xFFFFFFFF - 6000)
    slot.switch(1111)
    out: list[RtpPacket] = []
    next_seq = {1111: 100, 2222: 30000}
    for i in range(8):
        if i == 4:
            slot.switch(2222)
        for ssrc, frames in ((1111, red), (2222, blue)):
            payloads, ts = frames[i]
            for j, payload in enumerate(payloads):
                data = rtp(payload, seq=next_seq[ssrc], ts=ts, ssrc=ssrc, marker=j + 1 == len(payloads))
                next_seq[ssrc] += 1
                p = send(slot, data, now=i / 30)
                if p is not None:
                    out.append(p)
    assert {p.ssrc for p in out} == {0xCAFE}
    seqs = [p.sequence_number for p in out]
    assert seqs == [(65530 + k) & 0xFFFF for k in range(len(out))]
    images = decode_stream(out)
    # Red frames 0..5 (A flows until B's keyframe, which comes after A's frame 5), then blue 5..6
    # (blue 7 stays in the jitter buffer): one stream the decoder takes without a hitch.
    assert len(images) == 8
    colours = [tuple(int(c) for c in image[90, 160]) for image in images]
    assert all(c[0] > 150 and c[2] < 80 for c in colours[:6]), colours
    assert all(c[2] > 150 and c[0] < 80 for c in colours[6:]), colours
    ts = [p.timestamp for p in out]
    assert all((b - a) & 0xFFFFFFFF < 0x80000000 for a, b in itertools.pairwise(ts))


# -- properties -----------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    start=st.integers(0, 0xFFFF),
    first=st.integers(0, 0xFFFF),
    steps=st.lists(
        st.tuples(st.sampled_from(["send", "drop", "switch", "late"]), st.integers(1, 3)),
        max_size=60,
    ),
)
def test_newest_packets_always_continue_plus_one(
    start: int, first: int, steps: list[tuple[str, int]]
) -> None:
    slot = audio_slot(first_sequence=start)
    sources = {1111: first, 2222: (first * 7) & 0xFFFF, 3333: 0}
    current = 1111
    slot.switch(current)
    expected = start
    history: list[tuple[int, int]] = []  # (source seq, out seq) of sent packets of the current source
    for action, n in steps:
        if action == "switch":
            current = [1111, 2222, 3333][n - 1]
            slot.switch(current)
            history = []
            continue
        if action == "late":
            if history:
                src, out_seq = history[-min(n, len(history))]
                p = send(slot, rtp(b"x", seq=src, ts=src * 960, ssrc=current))
                assert p is not None and p.sequence_number == out_seq
            continue
        seq = sources[current]
        sources[current] = (seq + 1) & 0xFFFF
        data = rtp(b"x", seq=seq, ts=seq * 960, ssrc=current)
        if action == "drop" and slot.source_ssrc == current and not slot.switching:
            slot.drop(header(data))
            continue
        p = send(slot, data)
        assert p is not None and p.sequence_number == expected
        assert slot.source_sequence(expected) == seq
        history.append((seq, expected))
        expected = (expected + 1) & 0xFFFF


def test_packet_cache_ring() -> None:
    cache = PacketCache(512)
    for seq in range(65000, 65000 + 1000):
        cache.put(seq & 0xFFFF, bytes([seq & 0xFF]))
    assert cache.get((65000 + 999) & 0xFFFF) == bytes([(65000 + 999) & 0xFF])
    assert cache.get((65000 + 488) & 0xFFFF) == bytes([(65000 + 488) & 0xFF])  # the oldest kept
    assert cache.get((65000 + 487) & 0xFFFF) is None  # overwritten
    assert cache.get(12345) is None  # never stored
    with pytest.raises(ValueError):
        PacketCache(1000)


class SlowOnly(StreamRewriter):
    """The same slot with every packet through the general path: the reference for the fast path."""

    __slots__ = ()
    rewrite_head = StreamRewriter._rewrite_slow  # rewrite() joins it with the payload


@settings(max_examples=25, deadline=None)
@given(
    packets=st.lists(
        st.tuples(
            st.sampled_from(["plain15", "plain7", "tl0", "nox", "pad", "late", "drop"]),
            st.integers(0, 0x7FFF),
            st.booleans(),
        ),
        min_size=1,
        max_size=30,
    ),
    switch_at=st.integers(0, 30),
)
def test_fast_path_matches_the_general_path(packets: list[tuple[str, int, bool]], switch_at: int) -> None:
    kw = {"first_sequence": 65500, "first_timestamp": 0xFFFFF000, "first_picture_id": 0x7FF0}
    fast, slow = video_slot(**kw), SlowOnly(0xCAFE, 100, "video", 90000, "vp8", SUB, b"v3", **kw)
    slow.last_tl0picidx = fast.last_tl0picidx  # the one start value drawn at random
    for slot in (fast, slow):
        slot.switch(1111)
    seq = {1111: 65530, 2222: 10}
    ssrc = 1111
    sent: list[tuple[int, bytes]] = []
    for i, (shape, pid, marker) in enumerate(packets):
        if i == switch_at:
            ssrc = 2222
            for slot in (fast, slow):
                slot.switch(2222)
        key = i == 0 or i == switch_at
        if shape == "late" and sent:
            s, data = sent[-3] if len(sent) >= 3 else sent[0]
        else:
            s = seq[ssrc]
            seq[ssrc] = (s + 1) & 0xFFFF
            if shape == "plain15":
                desc = bytes([0x90 if key else 0x80, 0x80]) + struct.pack("!H", 0x8000 | pid)
            elif shape == "plain7":
                desc = bytes([0x90 if key else 0x80, 0x80, pid & 0x7F])
            elif shape == "tl0":
                desc = bytes([0x90 if key else 0x80, 0xE0]) + struct.pack(
                    "!HBB", 0x8000 | pid, pid & 0xFF, 0x40
                )
            else:
                desc = bytes([0x10 if key else 0x00])
            data = vp8_packet(desc, seq=s, ts=3000 * i, ssrc=ssrc, key=key)
            if shape == "pad":
                data = rtp(b"", seq=s, ts=3000 * i, ssrc=ssrc, padding=16)
            data = data[:1] + bytes([data[1] | (0x80 if marker else 0)]) + data[2:]
            sent.append((s, data))
        h = header(data)
        if shape == "drop":
            fast.drop(h)
            slow.drop(h)
            continue
        k = is_keyframe("vp8", data, h)
        a = fast.rewrite(data, h, abs_send_time(i / 30), None, k, i / 30)
        b = slow.rewrite(data, h, abs_send_time(i / 30), None, k, i / 30)
        assert a == b, (i, shape)
        if a is not None:
            ref = RtpPacket.parse(a, SUB_MAP)
            assert ref.ssrc == 0xCAFE and ref.extensions.mid == "v3"
            assert ref.marker == data[1] >> 7
    for name in ("last_sequence", "last_timestamp", "last_picture_id", "packets_sent", "octets_sent"):
        assert getattr(fast, name) == getattr(slow, name), name


def h264_frames(
    rgb: tuple[int, int, int], count: int, keyframes: tuple[int, ...] = ()
) -> list[tuple[list[bytes], int]]:
    encoder = H264Encoder()
    return [encoder.encode(solid(rgb, i, (320, 240)), force_keyframe=i in keyframes) for i in range(count)]


def test_real_h264_streams_decode_across_a_switch() -> None:
    green = h264_frames((20, 200, 20), 6)
    grey = h264_frames((128, 128, 128), 6, keyframes=(3,))
    slot = StreamRewriter(0xBEEF, 102, "video", 90000, "h264", SUB, b"v1", first_sequence=65533)
    slot.switch(1111)
    out: list[RtpPacket] = []
    next_seq = {1111: 7, 2222: 60000}
    for i in range(6):
        if i == 2:
            slot.switch(2222)
        for ssrc, frames in ((1111, green), (2222, grey)):
            payloads, ts = frames[i]
            for j, payload in enumerate(payloads):
                data = rtp(payload, seq=next_seq[ssrc], ts=ts, ssrc=ssrc, marker=j + 1 == len(payloads))
                next_seq[ssrc] = (next_seq[ssrc] + 1) & 0xFFFF
                p = send(slot, data, now=i / 30)
                if p is not None:
                    out.append(p)
    assert [p.sequence_number for p in out] == [(65533 + k) & 0xFFFF for k in range(len(out))]
    assert {p.payload_type for p in out} == {102}
    decoder = av.CodecContext.create("h264", "r")
    images = []
    access_unit = b""
    for i, packet in enumerate(out):
        access_unit += h264_depayload(packet.payload)
        if i + 1 == len(out) or out[i + 1].timestamp != packet.timestamp:
            for frame in decoder.decode(av.Packet(access_unit)):
                images.append(frame.to_ndarray(format="rgb24"))
            access_unit = b""
    for frame in decoder.decode(None):
        images.append(frame.to_ndarray(format="rgb24"))
    # Green 0..3 (until grey's keyframe at 3, sent after green's frame 3), then grey 3..5.
    assert len(images) == 7
    colours = [tuple(int(c) for c in image[120, 160]) for image in images]
    assert all(c[1] > 150 and c[0] < 80 for c in colours[:4]), colours
    assert all(100 < c[0] < 160 and abs(c[0] - c[1]) < 20 for c in colours[4:]), colours


def test_rtp_module_does_not_import_aiortc() -> None:
    import ast
    import inspect

    from conference.sfu import packet, payload, reception, rewriter, rtcp

    for module in (packet, payload, rewriter, reception, rtcp):
        tree = ast.parse(inspect.getsource(module))
        imported = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {
            node.module.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module and not node.level
        }
        assert imported <= {"__future__", "random", "struct", "collections", "typing"}, (module, imported)


def test_a_source_that_restarts_its_numbering_continues_the_slot() -> None:
    slot = audio_slot(first_sequence=100, first_timestamp=0)
    slot.switch(1111)
    for n in range(3):
        send(slot, rtp(b"a", seq=50 + n, ts=960 * n), now=n * 0.02)
    # The publisher came back with the same SSRC and fresh random numbers (far behind, then ahead).
    p = send(slot, rtp(b"b", seq=40000, ts=123456, level=10), now=1.0)
    assert p is not None and p.sequence_number == 103
    assert p.timestamp == 960 * 2 + 46080  # 0.96 s of wall time after the last packet
    q = send(slot, rtp(b"b", seq=40001, ts=123456 + 960), now=1.02)
    assert q is not None and (q.sequence_number, q.timestamp) == (104, p.timestamp + 960)
    r = send(slot, rtp(b"c", seq=40001 + MAX_SEQUENCE_STEP + 1, ts=5), now=1.04)
    assert r is not None and r.sequence_number == 105


def test_a_video_source_that_restarts_waits_for_its_keyframe() -> None:
    frames = vp8_frames((90, 90, 90), 3, keyframes=(2,))
    slot = video_slot(first_sequence=0)
    slot.switch(1111)
    assert slot.wants_keyframe == 1111
    assert send(slot, rtp(frames[0][0][0], seq=10, ts=0)) is not None
    assert slot.wants_keyframe is None
    assert send(slot, rtp(frames[1][0][0], seq=30000, ts=3000), now=0.1) is None  # restarted, delta
    assert slot.wants_keyframe == 1111
    p = send(slot, rtp(frames[2][0][0], seq=30001, ts=6000), now=0.2)
    assert p is not None and p.sequence_number == 1 and slot.wants_keyframe is None
    assert out_descriptor(p).picture_id == (slot.last_picture_id) and p.timestamp == slot.last_timestamp
    slot.switch()
    assert slot.wants_keyframe == -1
    assert audio_slot().wants_keyframe is None


def test_switching_to_the_current_source_with_its_codec_does_not_wait() -> None:
    frames = vp8_frames((70, 70, 70), 3)
    slot = video_slot()
    slot.switch(1111, codec="vp8", payload_type=100)
    assert send(slot, rtp(frames[0][0][0], seq=1, ts=1)) is not None
    slot.switch(1111, codec="vp8", payload_type=100)
    assert not slot.switching
    assert send(slot, rtp(frames[1][0][0], seq=2, ts=2)) is not None  # a delta frame still flows
    slot.switch(1111, codec="h264", payload_type=102)  # a codec change does wait for a keyframe
    assert slot.wants_keyframe == 1111


@settings(max_examples=100, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=80),
        # mostly-valid packets: version 2 with random flags, CSRC count and lengths
        st.builds(
            lambda b0, rest: bytes([0x80 | (b0 & 0x3F)]) + rest,
            st.integers(0, 255),
            st.binary(min_size=0, max_size=80),
        ),
    )
)
def test_parse_header_agrees_with_aiortc_on_arbitrary_bytes(data: bytes) -> None:
    ours = parse_header(data)
    try:
        ref = RtpPacket.parse(data)
    except ValueError:
        ref = None
    if ref is not None:
        assert ours is not None
        assert (ours.marker, ours.payload_type, ours.sequence, ours.timestamp, ours.ssrc) == (
            ref.marker,
            ref.payload_type,
            ref.sequence_number,
            ref.timestamp,
            ref.ssrc,
        )
        assert data[ours.payload_offset : ours.payload_end] == ref.payload
    elif ours is not None:
        # aiortc also rejects malformed extension elements, which the header parse leaves alone.
        assert ours.ext_length > 0
        with pytest.raises(ValueError):
            parse_extensions(data, ours)


def test_resync_waits_for_the_current_sources_next_keyframe() -> None:
    frames = vp8_frames((40, 80, 120), 4, keyframes=(3,))
    slot = video_slot(first_sequence=500)
    slot.resync()  # nothing to resync to yet
    assert not slot.switching
    slot.switch(1111)
    first = send(slot, rtp(frames[0][0][0], seq=1, ts=0))
    assert first is not None and first.sequence_number == 500
    slot.resync()  # say the keyframe never reached the subscriber
    assert slot.wants_keyframe == 1111
    assert send(slot, rtp(frames[1][0][0], seq=2, ts=3000), now=0.1) is None
    assert send(slot, rtp(frames[2][0][0], seq=3, ts=6000), now=0.2) is None
    again = send(slot, rtp(frames[3][0][0], seq=4, ts=9000), now=0.3)
    assert again is not None and again.sequence_number == 501
    assert again.timestamp == (first.timestamp + 27000) & 0xFFFFFFFF  # 0.3 s of wall time


def test_resync_keeps_a_pending_switch() -> None:
    frames = vp8_frames((40, 80, 120), 2)
    slot = video_slot()
    slot.switch(1111)
    send(slot, rtp(frames[0][0][0], seq=1, ts=0))
    slot.switch(2222)
    slot.resync()
    assert slot.wants_keyframe == 2222


# --- reception statistics and feedback -----------------------------------------------------------


def test_reception_stats_count_loss_wrap_and_late_packets() -> None:
    from conference.sfu.reception import ReceptionStats

    stats = ReceptionStats(90_000, track_missing=True)
    nack = stats.nack
    assert nack is not None
    now = 1000.0
    assert not stats.add(65530, 0, now)
    assert not stats.add(65531, 3000, now)
    assert stats.add(65533, 6000, now)  # 65532 missing
    assert stats.add(2, 9000, now)  # across the wrap: 65534 .. 1
    assert not stats.add(65532, 6000, now)  # late (reordered): fills its gap
    assert sorted(nack.missing) == [0, 1, 65534, 65535]
    assert stats.expected == 9 and stats.received == 5 and stats.extended_max == 0x10002
    assert nack.poll(now)[0] == []  # the reordering allowance first
    assert sorted(nack.poll(now + 0.05)[0]) == [0, 1, 65534, 65535]
    # A restart far ahead is not loss to ask for.
    assert not stats.add(30000, 0, now) and not nack.missing
    audio = ReceptionStats(48_000, track_missing=False)
    audio.add(10, 0, now)
    assert not audio.add(15, 960, now) and audio.nack is None


def test_feedback_packets_parse_as_rtcp() -> None:
    """Our RR, REMB and NACK read back with aiortc's RTCP parser (an independent implementation)."""
    from aiortc.rtp import RtcpPacket, unpack_remb_fci

    from conference.sfu.reception import ReceptionStats
    from conference.sfu.rtcp import rtcp_nack, rtcp_receiver_report, rtcp_remb

    stats = ReceptionStats(90_000, track_missing=True)
    for seq in (100, 101, 104, 105):
        stats.add(seq, seq * 3000, 5.0)
    compound = (
        rtcp_receiver_report(0xAAAA, [stats.report_block(0xBBBB)])
        + rtcp_remb(0xAAAA, 1_500_000, [0xBBBB])
        + rtcp_nack(0xAAAA, 0xBBBB, [102, 103, 130, 65535])
    )
    rr, remb, nack = RtcpPacket.parse(compound)
    report = rr.reports[0]
    assert (rr.ssrc, report.ssrc, report.highest_sequence, report.packets_lost) == (0xAAAA, 0xBBBB, 105, 2)
    assert report.fraction_lost == (2 << 8) // 6
    assert (remb.fmt, remb.media_ssrc) == (15, 0)
    assert unpack_remb_fci(remb.fci) == (1_500_000, [0xBBBB])
    assert nack.fmt == 1 and nack.media_ssrc == 0xBBBB
    assert sorted(s & 0xFFFF for s in nack.lost) == [102, 103, 130, 65535]
    # LSR/DLSR as given (the publisher's last sender report and the delay since it).
    block = RtcpPacket.parse(rtcp_receiver_report(1, [stats.report_block(0xBBBB, 0x12345678, 65536 // 2)]))
    assert (block[0].reports[0].lsr, block[0].reports[0].dlsr) == (0x12345678, 32768)
    # The next report covers only what happened since the last one.
    stats.add(106, 106 * 3000, 6.0)
    again = RtcpPacket.parse(rtcp_receiver_report(1, [stats.report_block(0xBBBB)]))[0].reports[0]
    assert again.fraction_lost == 0 and again.packets_lost == 2


def test_feedback_parser_reads_pli_fir_and_nack_and_survives_garbage() -> None:
    import struct

    from conference.sfu.rtcp import Feedback, parse_feedback, rtcp_nack, rtcp_pli, rtcp_receiver_report

    fir = struct.pack("!BBHII", 0x84, 206, 4, 1, 0) + struct.pack("!IBxxx", 0xABC, 7)
    compound = rtcp_receiver_report(1, []) + rtcp_pli(1, 0x111) + fir + rtcp_nack(1, 0x222, [10, 12, 30])
    assert parse_feedback(compound) == [
        Feedback("pli", 0x111),
        Feedback("pli", 0xABC),
        Feedback("nack", 0x222, (10, 12, 30)),
    ]
    for garbage in (b"", b"\x81\xce", compound[:-3], b"\x00" * 40, bytes(range(256))):
        parse_feedback(garbage)  # never raises
    assert parse_feedback(compound[:-3])[:2] == [Feedback("pli", 0x111), Feedback("pli", 0xABC)]


def test_rtx_original_matches_aiortc_unwrap() -> None:
    """RFC 4588: the original packet back out of a retransmission (aiortc's wrap_rtx builds it),
    extensions kept; RTX padding (a bandwidth probe) has no packet inside."""
    from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
    from aiortc.rtp import HeaderExtensionsMap, RtpPacket, wrap_rtx

    from conference.sfu.packet import rtx_original

    extensions = HeaderExtensionsMap()
    extensions.configure(
        RTCRtpParameters(
            headerExtensions=[
                RTCRtpHeaderExtensionParameters(id=1, uri="urn:ietf:params:rtp-hdrext:sdes:mid")
            ]
        )
    )
    original = RtpPacket(payload_type=96, marker=1, sequence_number=4242, timestamp=90_000, ssrc=0xAAAA)
    original.payload = b"\x90\x80\x81\x23vp8 payload"
    original.extensions.mid = "1"
    rtx = wrap_rtx(original, payload_type=97, sequence_number=17, ssrc=0xBBBB)
    data = rtx.serialize(extensions)
    got = rtx_original(data, header(data), 96, 0xAAAA)
    assert got is not None
    packet, parsed = got
    assert packet == original.serialize(extensions)
    assert (parsed.payload_type, parsed.sequence, parsed.ssrc, parsed.marker) == (96, 4242, 0xAAAA, 1)
    padding = RtpPacket(payload_type=97, sequence_number=18, timestamp=1, ssrc=0xBBBB)
    padding.padding_size = 200
    probe = padding.serialize(extensions)
    assert rtx_original(probe, header(probe), 96, 0xAAAA) is None


def test_a_packet_further_back_than_the_send_window_is_not_sent() -> None:
    """Late packets and NACK answers up to LATE_PACKET_WINDOW - 1 behind the newest go out; older
    ones are dropped: libsrtp's send window of that size (the leg's) would refuse them."""
    import pylibsrtp

    from conference.sfu.aiortc_glue import SEND_REPLAY_WINDOW
    from conference.sfu.rewriter import LATE_PACKET_WINDOW

    assert SEND_REPLAY_WINDOW == LATE_PACKET_WINDOW
    policy = pylibsrtp.Policy(
        key=bytes(range(44)),
        ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
        srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM,
    )
    policy.allow_repeat_tx = True
    policy.window_size = SEND_REPLAY_WINDOW
    srtp = pylibsrtp.Session(policy)
    slot = audio_slot(first_sequence=1000, first_timestamp=0)
    slot.switch(1111)

    def rewrite(n: int) -> bytes | None:
        data = rtp(bytes([n & 0xFF]), seq=n, ts=960 * n)
        return slot.rewrite(data, header(data), abs_send_time(0.0), None, True, n * 0.02)

    newest = LATE_PACKET_WINDOW + 10
    for n in range(newest + 1):
        if n not in (10, 11):  # these two arrive late
            out = rewrite(n)
            assert out is not None
            srtp.protect(out)
    inside = rewrite(11)  # 255 behind the newest: sent, and libsrtp takes it
    assert inside is not None and inside[2:4] == (1000 + 11).to_bytes(2, "big")
    srtp.protect(inside)
    assert rewrite(10) is None  # 256 behind: not sent ...
    too_old = bytearray(inside)
    too_old[2:4] = (1000 + 10).to_bytes(2, "big")
    with pytest.raises(pylibsrtp.Error):  # ... libsrtp would have refused it
        srtp.protect(bytes(too_old))
