"""Playout delay on what subscribers receive (conference/sfu/consumer.py, packet.py, rewriter.py):
the element's bytes in both header forms, the delay sized from the source's repair time and its
bounds, and a slot following its source's measured round trip."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from test_rtp import rtp, vp8_frames

from conference.sfu import consumer
from conference.sfu.consumer import DownTrack, playout_delay_for
from conference.sfu.nack import NackScheduler
from conference.sfu.packet import URI_PLAYOUT_DELAY, CodecInfo, ExtensionMap, parse_extensions, parse_header
from conference.sfu.rewriter import StreamRewriter
from conference.sfu.stats import Counters


def test_delay_follows_the_repair_time_within_its_bounds() -> None:
    assert playout_delay_for(None) is None  # round trip unknown: nothing asked
    assert playout_delay_for(0.012) is None  # a publisher near the server: the browser decides
    assert playout_delay_for(0.112) == (14, consumer.PLAYOUT_MAX_MS // 10)  # 112 + 20 ms, rounded up
    assert playout_delay_for(2.0) == (consumer.PLAYOUT_MIN_CAP_MS // 10, consumer.PLAYOUT_MAX_MS // 10)
    s = NackScheduler()
    assert not s.rtt_known
    s.set_round_trip(0.1)  # 50 ms each way
    assert s.rtt_known and s.repair_time() == pytest.approx(0.01 + 0.1 + (0.1 + 0.1))  # two requests
    s.lost(1, 1, 0.0)
    s.poll(0.01)
    s.arrived(1, 0.11)  # measured: 100 ms, variation 50 ms until more repairs
    assert s.repair_time() == pytest.approx(0.01 + 0.1 + (0.1 + 0.1))


@pytest.mark.parametrize(
    ("ext", "profile"), [(ExtensionMap(1, 3, 0, 4), 0xBEDE), (ExtensionMap(1, 3, 0, 20), 0x1000)]
)
def test_the_element_rides_every_packet_once_set(ext: ExtensionMap, profile: int) -> None:
    slot = StreamRewriter(5, 96, "video", 90000, "vp8", ext, b"0", first_sequence=1)
    slot.switch(1111)
    frames = vp8_frames((1, 2, 3), 3)
    data = rtp(frames[0][0][0], seq=1, ts=0)
    out = slot.rewrite(data, parse_header(data), 7, None, True, 0.0)  # type: ignore[arg-type]
    assert out is not None and ext.playout_delay not in parse_extensions(out, parse_header(out))  # type: ignore[arg-type]
    slot.set_playout_delay((14, 40))
    data = rtp(frames[1][0][0], seq=2, ts=3000)
    out = slot.rewrite(data, parse_header(data), 7, None, False, 0.04)  # type: ignore[arg-type]
    assert out is not None
    head = parse_header(out)
    assert head is not None and head.ext_profile == profile
    elements = parse_extensions(out, head)
    assert elements[ext.playout_delay] == bytes((0x00, 0xE0, 0x28))  # 12 bits min 14, 12 bits max 40
    assert elements[ext.mid] == b"0" and len(elements[ext.abs_send_time]) == 3
    source = parse_header(data)
    assert source is not None  # the VP8 payload after its descriptor (the picture id is rewritten)
    assert out[head.payload_offset + 4 :] == data[source.payload_offset + 4 :]
    slot.set_playout_delay(None)
    data = rtp(frames[2][0][0], seq=3, ts=6000)
    out = slot.rewrite(data, parse_header(data), 7, None, False, 0.08)  # type: ignore[arg-type]
    assert out is not None and ext.playout_delay not in parse_extensions(out, parse_header(out))  # type: ignore[arg-type]


def test_a_slot_follows_its_sources_round_trip_with_hysteresis() -> None:
    track = DownTrack("video", "video", 0, SimpleNamespace(send=lambda d: True), Counters())  # type: ignore[arg-type]
    assert track.configure(7, [CodecInfo("vp8", 96, 90000)], {URI_PLAYOUT_DELAY: 6}, "3")
    nack = NackScheduler()
    track.source = SimpleNamespace(reception=SimpleNamespace(nack=nack))  # type: ignore[assignment]
    assert track.rewriter is not None
    track.update_playout_delay()
    assert track.rewriter.playout_delay is None  # round trip unknown
    nack.set_round_trip(0.1)
    track.update_playout_delay()
    assert track.rewriter.playout_delay == (33, 60)  # 10 + 100 + 200 + 20 ms (the cap: 450)
    nack.set_round_trip(0.05)  # 10 + 50 + 100 + 20 ms
    track.update_playout_delay()
    assert track.rewriter.playout_delay == (18, 60)
    nack.set_round_trip(0.0525)  # 5 ms more repair time: within the hysteresis
    track.update_playout_delay()
    assert track.rewriter.playout_delay == (18, 60)
    nack.set_round_trip(0.002)  # the publisher moved next to the server
    track.update_playout_delay()
    assert track.rewriter.playout_delay is None
    # A subscriber that did not negotiate the extension never gets it.
    plain = DownTrack("video", "video", 1, SimpleNamespace(send=lambda d: True), Counters())  # type: ignore[arg-type]
    assert plain.configure(8, [CodecInfo("vp8", 96, 90000)], {}, "4")
    plain.source = track.source
    nack.set_round_trip(0.2)
    plain.update_playout_delay()
    assert plain.rewriter is not None and plain.rewriter.playout_delay is None
