"""The transport-cc feedback encoder and receiver (conference/sfu/twcc.py): byte-exact against
feedback packets Chrome sent (captured in pion's and webrtc-rs's rtcp test suites), and decoded
back with twcc.parse_feedback (the parser of subscribers' feedback)."""

from __future__ import annotations

import random
import struct

import pytest

from conference.sfu.packet import parse_header
from conference.sfu.twcc import (
    URI_TRANSPORT_CC,
    TransportCcReceiver,
    answered_transport_cc,
    encode_feedback,
    offer_transport_cc,
    parse_feedback,
)


def decode(packet: bytes) -> tuple[int, int, int, int, list[int | None]]:
    """(sender SSRC, media SSRC, base, feedback count, arrival in us per sequence number or None)
    through twcc.parse_feedback, the server's one parser (of its subscribers' feedback)."""
    first, pt, length, sender, media, base, count, _ = struct.unpack_from("!BBHIIHHI", packet)
    assert first >> 6 == 2 and first & 0x1F == 15 and pt == 205
    assert len(packet) == (length + 1) * 4
    if first & 0x20:
        assert packet[-1] and packet[-1] <= 3 and not any(packet[-packet[-1] : -1])
    fb_count, entries = parse_feedback(packet)
    assert len(entries) == count
    assert [seq for seq, _ in entries] == [(base + i) & 0xFFFF for i in range(count)]
    return sender, media, base, fb_count, [t for _, t in entries]


def test_matches_feedback_chrome_sent_byte_for_byte() -> None:
    # One packet, received 37 ms after the reference time.
    chrome_1 = bytes.fromhex("afcd0005 fa17fa17 43032fa0 00990001 3de80217 20019401".replace(" ", ""))
    reference = 4057090 * 64_000
    packet, covered = encode_feedback(0xFA17FA17, 0x43032FA0, 153, 23, [reference + 37_000])
    assert (packet, covered) == (chrome_1, 1)
    # Seven packets in a row, all small deltas: one run-length chunk, three bytes of padding.
    chrome_4 = bytes.fromhex(
        "afcd0007fa17fa17193dd8bb00040007 10636e01 2007 4c242410 0c0c1000 0003".replace(" ", "")
    )
    t, arrivals = 1074030 * 64_000, []
    for delta in (19000, 9000, 9000, 4000, 3000, 3000, 4000):
        t += delta
        arrivals.append(t)
    packet, covered = encode_feedback(0xFA17FA17, 0x193DD8BB, 4, 1, arrivals)
    assert (packet, covered) == (chrome_4, 7)
    assert decode(chrome_4) == (0xFA17FA17, 0x193DD8BB, 4, 1, arrivals)


def test_chunk_choice_follows_libwebrtc() -> None:
    ref = 1000 * 64_000
    # Lost packets and small deltas mixed, 14 of them: one 1-bit vector chunk.
    arrivals = [ref + 1000 * i if i % 3 else None for i in range(1, 15)]
    packet, _ = encode_feedback(1, 2, 10, 0, arrivals)
    (chunk,) = struct.unpack_from("!H", packet, 20)
    assert chunk >> 14 == 0b10
    assert decode(packet)[4] == arrivals
    # A large delta among them: 2-bit vectors of 7.
    arrivals = [ref + 1000, None, ref + 90_000, ref + 91_000, None, ref + 92_000, ref + 93_000, ref + 94_000]
    packet, _ = encode_feedback(1, 2, 10, 0, arrivals)
    chunks = struct.unpack_from("!HH", packet, 20)
    assert [c >> 14 for c in chunks] == [0b11, 0b00]  # a 2-bit vector of 7, the last one a run of 1
    assert decode(packet)[4] == arrivals
    # A long loss run then a packet: run-length chunks.
    arrivals = [ref + 500] + [None] * 300 + [ref + 80_000]
    packet, covered = encode_feedback(1, 2, 65500, 0, arrivals)  # across the wrap
    assert covered == 302 and decode(packet)[2] == 65500
    assert decode(packet)[4] == arrivals
    assert len(packet) <= 40


def test_random_feedback_round_trips_to_250_us() -> None:
    rng = random.Random(12)
    for _ in range(200):
        t = rng.randrange(10**9, 5 * 10**11)  # the reference time is signed 24 bits of 64 ms
        arrivals: list[int | None] = [t]
        for _ in range(rng.randrange(0, 400)):
            if rng.random() < 0.1:
                arrivals.append(None)
                continue
            t += rng.choice((0, 250, 1000, 5000, 70_000, -3000))  # reordering gives negative deltas
            arrivals.append(t)
        while arrivals[-1] is None:
            arrivals.pop()
        packet, covered = encode_feedback(7, 8, 1234, 5, arrivals)
        assert covered == len(arrivals)
        decoded = decode(packet)[4]
        assert [d is None for d in decoded] == [a is None for a in arrivals]
        for got, want in zip(decoded, arrivals, strict=True):
            if want is not None:
                assert got is not None and abs(got - want) <= 250  # rounding never accumulates


def test_a_gap_too_long_for_16_bits_starts_a_new_packet() -> None:
    arrivals = [1_000_000, 1_001_000, 1_000_000 + 9_000_000, 1_000_000 + 9_001_000]
    _, covered = encode_feedback(1, 2, 0, 0, arrivals)
    assert covered == 2
    rest, covered = encode_feedback(1, 2, 2, 1, arrivals[2:])
    assert covered == 2 and decode(rest)[4][0] == pytest.approx(arrivals[2], abs=64_000)


def _rtp(seq: int, transport_seq: int, ext_id: int) -> bytes:
    ext = bytes(((ext_id << 4) | 1,)) + struct.pack("!H", transport_seq) + b"\0"
    return struct.pack("!BBHIIHH", 0x90, 96, seq, 0, 0x1234, 0xBEDE, 1) + ext + b"payload"


def test_receiver_reports_arrivals_and_losses_across_the_wrap() -> None:
    receiver = TransportCcReceiver(ext_id=5)
    assert receiver.feedback(1, 2) == []
    sent = [65533, 65534, 65535, 0, 2, 3, 1]  # 1 arrives late (reordered), 4 is lost, 5 arrives
    for i, tseq in enumerate([*sent, 5]):
        data = _rtp(100 + i, tseq, 5)
        header = parse_header(data)
        assert header is not None
        receiver.add(data, header, 1_000_000 + 1000 * i)
    packets = receiver.feedback(0xAA, 0xBB)
    assert len(packets) == 1
    sender, media, base, count, arrivals = decode(packets[0])
    assert (sender, media, base, count) == (0xAA, 0xBB, 65533, 0)
    assert [a is not None for a in arrivals] == [True] * 7 + [False, True]
    # Nothing new: no feedback. A packet reported lost that turns up (reordered) is reported again,
    # from it on, as libwebrtc's receiver does.
    assert receiver.feedback(0xAA, 0xBB) == []
    data = _rtp(200, 4, 5)
    receiver.add(data, parse_header(data), 2_000_000)  # type: ignore[arg-type]
    (packet,) = receiver.feedback(0xAA, 0xBB)
    base, count, arrivals = decode(packet)[2], decode(packet)[3], decode(packet)[4]
    assert (base, count) == (4, 1) and arrivals[0] is not None and arrivals[1] is not None  # 4, 5
    data = _rtp(201, 6, 5)
    receiver.add(data, parse_header(data), 2_000_000)  # type: ignore[arg-type]
    (packet,) = receiver.feedback(0xAA, 0xBB)
    assert decode(packet)[2:4] == (6, 2)  # next base, feedback count 2
    # Packets without the extension (or another id) are ignored.
    data = _rtp(202, 7, 9)
    receiver.add(data, parse_header(data), 2_000_000)  # type: ignore[arg-type]
    assert receiver.feedback(0xAA, 0xBB) == [] and receiver.packets == 10


OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 1 1 IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1 2",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "a=mid:0",
        "a=recvonly",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=extmap:2 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        "a=rtpmap:111 opus/48000/2",
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
        "a=mid:1",
        "a=recvonly",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=extmap:3 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        "a=rtpmap:96 VP8/90000",
        "a=rtcp-fb:96 nack",
        "a=rtpmap:97 H264/90000",
        "m=video 9 UDP/TLS/RTP/SAVPF 96",
        "a=mid:2",
        "a=sendonly",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=rtpmap:96 VP8/90000",
        "",
    ]
)


def test_offer_adds_transport_cc_to_the_publish_sections_only() -> None:
    sdp, ext_id = offer_transport_cc(OFFER, {"0", "1"})
    assert ext_id == 4
    sections = sdp.split("\r\nm=")
    assert f"a=extmap:4 {URI_TRANSPORT_CC}" in sections[1] and "a=rtcp-fb:111 transport-cc" in sections[1]
    assert "a=rtcp-fb:96 transport-cc" in sections[2] and "a=rtcp-fb:97 transport-cc" in sections[2]
    assert "transport-cc" not in sections[3]
    assert sdp.count(" transport-cc") == 3 and sdp.count(URI_TRANSPORT_CC) == 2
    # The answer's id (a browser keeps ours), read from the publish sections only.
    answer = sdp.replace("a=recvonly", "a=sendonly").replace("\r\n", "\n")
    assert answered_transport_cc(answer, {"0", "1"}) == 4
    assert answered_transport_cc(answer, {"2"}) == 0
    assert answered_transport_cc(OFFER, {"0", "1"}) == 0  # an endpoint without transport-cc


def test_a_receiver_holds_a_fixed_amount_of_memory_whatever_arrives() -> None:
    """The arrival ring allocates nothing per packet (a list of int objects grew to ~1 MB per
    publisher over a meeting's first minutes: 50 MB of the 50-endpoint soak's RSS)."""
    import struct
    import tracemalloc

    from conference.sfu.packet import parse_header
    from conference.sfu.twcc import TransportCcReceiver

    receiver = TransportCcReceiver(3)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(20_000):
            ext = struct.pack("!HHBH", 0xBEDE, 1, 0x31, n & 0xFFFF) + b"\0"
            packet = struct.pack("!BBHII", 0x90, 96, n & 0xFFFF, 0, 1) + ext + b"x" * 100
            receiver.add(packet, parse_header(packet), 1_700_000_000_000_000 + 20_000 * n)  # type: ignore[arg-type]
            if n % 50 == 49:
                assert receiver.feedback(1, 2)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert receiver.packets == 20_000
    assert grown < 100_000, grown


def test_parse_feedback_refuses_malformed_packets() -> None:
    packet, _ = encode_feedback(1, 2, 10, 0, [64_000, 65_000, None, 70_000])
    assert parse_feedback(packet)[1][2] == (12, None)
    with pytest.raises(ValueError):
        parse_feedback(packet[:19])
    with pytest.raises(ValueError):
        parse_feedback(packet[:-4])  # length says more than the datagram holds
    bad = bytearray(packet)
    bad[1] = 206
    with pytest.raises(ValueError):
        parse_feedback(bytes(bad))
    short = bytearray(packet)
    struct.pack_into("!H", short, 14, 2000)  # a status count its chunks do not reach
    with pytest.raises(ValueError):
        parse_feedback(bytes(short))
    # Inside a compound packet: the offset of the feedback.
    assert parse_feedback(b"\0" * 8 + packet, 8) == parse_feedback(packet)
