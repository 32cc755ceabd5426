"""RTX toward subscribers (RFC 4588): a subscriber's NACK is answered from the cache on the slot's
RTX stream when it negotiated RTX, on the main stream otherwise; the RTX packet carries the very
packet the slot sent (``rtx_original`` takes it back out, byte for byte)."""

from __future__ import annotations

import struct
from typing import Any

from bench_forward import build_package_layout, packets

from conference.sfu.packet import parse_header, rtx_original, rtx_packet


class Collect:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> bool:
        self.sent.append(data)
        return True


def test_rtx_packet_and_rtx_original_are_inverse() -> None:
    ext = struct.pack("!HHBBH", 0xBEDE, 1, 0x10, 0x31, 0)
    original = (
        struct.pack("!BBHII", 0x90 | 0x20, 0x80 | 96, 1234, 90_000, 0xAAAA) + ext + b"vp8 data" + b"\0\0\3"
    )
    header = parse_header(original)
    assert header is not None
    rtx = rtx_packet(original, header, 97, 0xBBBB, 7)
    rtx_header = parse_header(rtx)
    assert rtx_header is not None
    assert (rtx_header.payload_type, rtx_header.ssrc, rtx_header.sequence) == (97, 0xBBBB, 7)
    assert rtx_header.marker and rtx_header.timestamp == 90_000
    back = rtx_original(rtx, rtx_header, 96, 0xAAAA)
    assert back is not None
    # The original without its padding (an RTX copy carries none).
    assert back[0] == original[: header.payload_end].replace(bytes([0xB0]), bytes([0x90]), 1)


def _layout(tracks: int) -> tuple[Any, list[Any], list[Collect]]:
    outputs = [Collect() for _ in range(tracks)]
    producer, down, _ = build_package_layout(tracks, outputs)
    video = packets(40)
    producer.receive(video[0], parse_header(video[0]))
    for track in down:
        track.set_want("pub", producer)
    for data in video[1:]:
        producer.receive(data, parse_header(data))
    return producer, down, outputs


async def test_a_nack_is_answered_on_the_slots_rtx_stream_when_it_was_negotiated() -> None:
    _, down, outputs = _layout(2)
    with_rtx, without = down
    slot_pt = with_rtx.rewriter.payload_type
    with_rtx.rtx, with_rtx.rtx_ssrc = {slot_pt: 97}, 0xBEEF
    for track, output in zip(down, outputs, strict=True):
        assert len(output.sent) > 20
        wanted = output.sent[-5]
        sequence = parse_header(wanted).sequence  # type: ignore[union-attr]
        before = len(output.sent)
        track.on_nack(sequence)
        assert len(output.sent) == before + 1
        answer = output.sent[-1]
        header = parse_header(answer)
        assert header is not None
        if track is without:
            assert answer == wanted  # the very packet again, same SSRC and sequence number
            continue
        assert header.ssrc == 0xBEEF and header.payload_type == 97
        back = rtx_original(answer, header, slot_pt, track.rewriter.ssrc)
        assert back is not None
        original = parse_header(wanted)
        assert original is not None and back[1].sequence == sequence
        # The same packet inside, apart from the abs-send-time the repair is stamped with anew.
        assert back[0][original.payload_offset :] == wanted[original.payload_offset :]
    first = with_rtx.rtx_sequence
    with_rtx.on_nack(parse_header(outputs[0].sent[-3]).sequence)  # type: ignore[union-attr]
    assert with_rtx.rtx_sequence == (first + 1) & 0xFFFF  # the RTX stream numbers its own packets
    assert with_rtx.counters.nacks_answered_rtx == 2
