"""The simulcast layer choice (pure policy) and the SDP and packet parts it relies on: the offer's
RIDs, the answer's layers, the layers told apart by their RID extension, a VP8 keyframe's width."""

from __future__ import annotations

from conference.layer_choice import (
    HOLD_S,
    LOSS_HIGH,
    LOSS_SEVERE,
    LOSS_STALE_S,
    PREVIEW_WIDTH,
    SCREEN_WIDTH,
    Downlink,
    Layer,
    LossCounter,
    choose_layer,
    confirmed_loss,
    congestion_estimate,
    downlink_budget,
    fit_bandwidth,
    tile_width,
)
from conference.sfu.packet import parse_header
from conference.sfu.payload import vp8_keyframe_width
from conference.sfu.simulcast import URI_RID, SimulcastLayers, answered_rids, offer_simulcast

THREE = [Layer(0, 320, 150_000), Layer(1, 640, 500_000), Layer(2, 1280, 1_500_000)]


def test_tile_sizes_from_the_layout() -> None:
    assert tile_width("single", 0, SCREEN_WIDTH["venue"]) == 1280
    assert tile_width("grid-3x3", 4, 1280) == 427
    assert tile_width("pip", 1, 1280) == 320
    assert tile_width("grid-2x2", 4, 1280) == 0  # no such slot: nothing drawn
    assert tile_width("no-such-layout", 0, 1280) == 0


def test_small_tiles_get_low_layers_the_full_screen_the_top() -> None:
    assert choose_layer(1280, THREE) == 2
    assert choose_layer(tile_width("side-by-side", 0, 1280), THREE) == 1  # 640
    assert choose_layer(tile_width("grid-3x3", 0, 1280), THREE) == 0  # 427: 320 is over 0.7 of it
    assert choose_layer(tile_width("single", 0, SCREEN_WIDTH["phone"]), THREE) == 0
    assert choose_layer(PREVIEW_WIDTH, THREE) == 0
    assert choose_layer(0, THREE) == 0  # an empty tile costs the least


def test_only_arriving_layers_are_chosen() -> None:
    assert choose_layer(1280, THREE[:2]) == 1  # the top layer stopped: the best there is
    assert choose_layer(320, THREE[1:]) == 1  # the lowest stopped: the next one up
    assert choose_layer(1280, []) is None


def test_widths_not_known_are_taken_as_halves_of_the_next() -> None:
    unknown = [Layer(0), Layer(1), Layer(2)]  # H.264: no width read from keyframes
    assert choose_layer(1280, unknown) == 2
    assert choose_layer(640, unknown) == 1
    assert choose_layer(400, unknown) == 0
    assert choose_layer(640, [Layer(0, 160), Layer(1, 320), Layer(2, 640)]) == 2  # a small camera


def test_bandwidth_steps_the_largest_tiles_down_first() -> None:
    layers = [THREE, THREE, THREE, THREE]
    full = [2, 1, 1, 0]  # 1500 + 500 + 500 + 150 kbit/s
    assert fit_bandwidth(full, layers, None) == full
    assert fit_bandwidth(full, layers, 5_000_000) == full
    assert fit_bandwidth(full, layers, 1_700_000) == [1, 1, 1, 0]  # 1650
    assert fit_bandwidth(full, layers, 1_000_000) == [1, 0, 0, 0]  # 950: the top slot keeps the most
    assert fit_bandwidth(full, layers, 100_000) == [0, 0, 0, 0]  # as low as it goes
    assert fit_bandwidth([2, None], [THREE, THREE], 600_000) == [1, None]


OFFER = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=recvonly\r\n"
    "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=rtpmap:96 VP8/90000\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:2\r\na=sendonly\r\na=rtpmap:96 VP8/90000\r\n"
)


def test_the_offer_asks_for_three_layers_on_the_publish_section_only() -> None:
    sdp = offer_simulcast(OFFER, "1")
    publish, slot = sdp.split("a=mid:2")
    assert "a=rid:q recv\r\na=rid:h recv\r\na=rid:f recv\r\na=simulcast:recv q;h;f\r\n" in publish
    assert f"a=extmap:2 {URI_RID}\r\n" in publish
    assert "rid" not in slot
    answer = sdp.replace("recv", "send").replace("a=simulcast:send q;h;f", "a=simulcast:send q;~h;f")
    assert answered_rids(answer, "1") == ["q", "f"]  # a paused layer is not expected
    assert answered_rids(OFFER, "1") == []  # no simulcast answered: one stream


def rtp_with_rid(ssrc: int, rid: bytes | None, ext_id: int = 2) -> bytes:
    head = bytes((0x90 if rid else 0x80, 96)) + (1).to_bytes(2, "big") + (0).to_bytes(4, "big")
    head += ssrc.to_bytes(4, "big")
    if rid is None:
        return head + b"\x10\x02"
    element = bytes(((ext_id << 4) | (len(rid) - 1),)) + rid
    element += b"\x00" * (-len(element) % 4)
    return head + b"\xbe\xde" + (len(element) // 4).to_bytes(2, "big") + element + b"\x10\x02"


def test_layers_are_told_apart_by_the_rid_then_by_ssrc() -> None:
    answer = offer_simulcast(OFFER, "1").replace("recv", "send")
    low, high = object(), object()
    layers = SimulcastLayers(answer, "1", {"q": low, "f": high})  # type: ignore[dict-item]
    assert layers.rid_ext == 2
    first = rtp_with_rid(111, b"q")
    assert layers.layer_of(first, parse_header(first)) is low  # type: ignore[arg-type]
    later = rtp_with_rid(111, None)  # the RID is no longer sent once the SSRC is known
    assert layers.layer_of(later, parse_header(later)) is low  # type: ignore[arg-type]
    unknown = rtp_with_rid(222, None)
    assert layers.layer_of(unknown, parse_header(unknown)) is None  # type: ignore[arg-type]
    other = rtp_with_rid(222, b"x")
    assert layers.layer_of(other, parse_header(other)) is None  # type: ignore[arg-type]
    moved = rtp_with_rid(333, b"q")  # the layer's new SSRC replaces its old one
    assert layers.layer_of(moved, parse_header(moved)) is low  # type: ignore[arg-type]
    assert layers.by_ssrc == {333: low}


def test_vp8_keyframe_width() -> None:
    # Descriptor X=1 S=1, I=1 with a 15-bit picture id; frame tag (key), start code, 640 x 360.
    descriptor = bytes((0x90, 0x80, 0x81, 0x23))
    frame = (
        bytes((0x50, 0x02, 0x00, 0x9D, 0x01, 0x2A))
        + (640).to_bytes(2, "little")
        + (360).to_bytes(2, "little")
    )
    payload = descriptor + frame
    assert vp8_keyframe_width(payload, 0, len(payload)) == 640
    delta = descriptor + bytes((0x51,)) + frame[1:]
    assert vp8_keyframe_width(delta, 0, len(delta)) == 0
    assert vp8_keyframe_width(payload, 0, len(payload) - 3) == 0  # truncated


def test_the_downlink_budget_follows_drops_and_climbs_back_after_a_hold() -> None:
    link = Downlink()
    assert downlink_budget(link, None, 2_000_000, 0.0) is None  # no estimate: no limit
    assert downlink_budget(link, 3_000_000, 2_000_000, 0.0) is None  # the link carries it all
    assert downlink_budget(link, 1_000_000, 2_000_000, 1.0) == 1_000_000  # a drop: at once
    assert downlink_budget(link, 950_000, 2_000_000, 2.0) == 1_000_000  # noise: no change
    assert downlink_budget(link, 1_000_000, 2_000_000, 1.0 + HOLD_S) == 1_500_000  # the hold: a raise
    # The raise was too much (the estimate fell right after): back down, and a longer hold.
    assert downlink_budget(link, 1_100_000, 2_000_000, 2.0 + HOLD_S) == 1_100_000
    assert link.hold == 2 * HOLD_S
    assert downlink_budget(link, 1_100_000, 2_000_000, 3.0 + 2 * HOLD_S) == 1_100_000  # still held
    assert downlink_budget(link, 1_200_000, 2_000_000, 2.0 + 3 * HOLD_S) == 1_800_000
    assert downlink_budget(link, 1_900_000, 2_000_000, 2.0 + 5 * HOLD_S) is None  # all of it fits again


def test_a_drop_is_not_lifted_within_its_hold_when_the_tiles_seem_to_fit() -> None:
    """What the tiles want follows the sources' measured rates, which wander around a budget just
    set: a lift a second after the drop was a keyframe down and one back up."""
    link = Downlink()
    assert downlink_budget(link, 540_000, 560_000, 0.0) == 540_000
    assert downlink_budget(link, 540_000, 530_000, 1.0) == 540_000  # fits now, but held
    assert downlink_budget(link, 540_000, 530_000, HOLD_S) is None  # after the hold: lifted


def test_one_lossy_reading_is_not_yet_a_full_link() -> None:
    link = Downlink()
    assert confirmed_loss(link, None) is None
    assert confirmed_loss(link, 0.02) == 0.02
    # A 7 % window on a link with 2 % random loss: not acted on alone...
    assert confirmed_loss(link, 0.07) is None and link.lossy
    assert congestion_estimate(600_000, None, confirmed_loss(link, 0.01), None) is None
    # ... a second one in a row is (a full link goes on losing), and one far over at once.
    assert confirmed_loss(link, 0.07) is None
    assert confirmed_loss(link, 0.08) == 0.08
    assert congestion_estimate(600_000, None, 0.08, None) == 576_000
    assert confirmed_loss(link, 0.01) == 0.01 and not link.lossy
    assert confirmed_loss(link, LOSS_SEVERE + 0.01) == LOSS_SEVERE + 0.01
    assert confirmed_loss(Downlink(), LOSS_HIGH) == LOSS_HIGH  # at the threshold: no signal anyway


def test_congestion_is_a_remb_under_what_is_sent_or_losses_over_ten_percent() -> None:
    assert congestion_estimate(1_000_000, None, 0.3, None) == 850_000  # GCC: sending x (1 - loss / 2)
    assert congestion_estimate(1_000_000, None, 0.05, None) is None  # a little loss: no limit yet
    assert congestion_estimate(1_000_000, None, 0.05, 700_000) == 700_000  # nor a drop of the budget
    assert congestion_estimate(1_000_000, None, None, 700_000) == 700_000  # no report: the budget stands
    assert congestion_estimate(1_000_000, 600_000, None, None) == 600_000  # a REMB under what is sent
    assert congestion_estimate(1_000_000, 600_000, 0.5, None) == 600_000  # the lower of the two
    # A REMB at or over what is sent says nothing (it follows what arrives): no limit.
    assert congestion_estimate(1_000_000, 1_200_000, None, None) is None
    assert congestion_estimate(100_000, 150_000, None, None) is None  # while on a low layer too
    # A send-side (transport-cc) estimate replaces the loss rule: a ceiling under what is sent.
    assert congestion_estimate(1_000_000, None, 0.3, None, 700_000) == 700_000
    assert congestion_estimate(1_000_000, None, 0.3, None, 1_300_000) is None  # the loss is its own
    assert congestion_estimate(1_000_000, None, None, 600_000, 950_000) == 600_000  # the budget stands


def test_loss_is_counted_from_cumulative_counters_over_enough_packets() -> None:
    losses = LossCounter()
    losses.report(1, 1000, 5, 0.0)  # the first report of a slot only marks where it stands
    assert losses.take(0.0) is None
    losses.report(1, 1002, 6, 0.1)  # 1 of 2: a report sent with a NACK, far too few to tell
    assert losses.take(0.1) is None
    losses.report(2, 50, 0, 0.2)
    losses.report(2, 150, 10, 1.0)  # another slot: 10 of 100
    losses.report(1, 1102, 6, 1.0)  # 0 of 100
    assert losses.take(1.0) == 11 / 202
    assert losses.take(1.1) is None  # taken: counting starts again
    losses.report(1, 1202, 2, 2.0)  # late repairs count back: never below 0
    assert losses.take(2.0) == 0.0
    losses.report(1, 5, 2, 3.0)  # the slot's numbering restarted: not a loss of 60,000 packets
    losses.report(1, 205, 12, 3.5)
    assert losses.take(3.5 + LOSS_STALE_S + 1) is None  # counted too long ago


def test_a_layer_that_starts_again_is_offered_only_once_it_kept_arriving() -> None:
    """A browser stopping and starting a layer every few seconds must not move slots each time."""
    from types import SimpleNamespace

    from conference.sfu.packet import CodecInfo
    from conference.sfu.producer import LAYER_RESUME_S, LAYER_SILENT_S, LAYER_STABLE_S, Producer
    from conference.sfu.stats import Counters

    upstream = SimpleNamespace(closed=False, send_pli=lambda ssrc: None)
    listener = SimpleNamespace(sink=None, producer_started=lambda p: None)
    layer = Producer("cam", "video", [CodecInfo("vp8", 96, 90_000)], {}, upstream, listener, Counters())  # type: ignore[arg-type]
    layer.ssrc = 1234
    t = 1000.0
    layer.last_packet_at = t
    assert not layer.steady(t)  # it just started
    started = t
    while t - started < LAYER_RESUME_S - 0.1:  # packets keep coming, the tick asks every 200 ms
        assert not layer.steady(t)
        t += 0.2
        layer.last_packet_at = t
    t += 0.2
    layer.last_packet_at = t
    assert layer.steady(t)
    t += LAYER_SILENT_S + 0.1  # the browser stopped it
    assert not layer.steady(t)
    layer.last_packet_at = t + 0.1  # and starts it again: it ran under LAYER_STABLE_S, so it
    assert not layer.steady(t + 0.2)  # is flapping and waits twice as long this time
    layer.last_packet_at = t + 0.2 + LAYER_RESUME_S  # still arriving
    assert not layer.steady(t + 0.2 + LAYER_RESUME_S)
    t += 0.2 + 2 * LAYER_RESUME_S
    layer.last_packet_at = t
    assert layer.steady(t)
    # Each further stop soon after doubles the wait up to LAYER_RESUME_MAX_S ...
    waits = []
    for _ in range(5):
        t += LAYER_SILENT_S + 0.1
        assert not layer.steady(t)
        layer.last_packet_at = t
        assert not layer.steady(t)
        started = t
        while not layer.steady(t):
            t += 0.2
            layer.last_packet_at = t
        waits.append(round(t - started))
    assert waits == [20, 40, 40, 40, 40]
    # ... and a layer that then runs LAYER_STABLE_S is trusted again: the next resume is quick.
    t += LAYER_STABLE_S
    layer.last_packet_at = t
    assert layer.steady(t)
    t += LAYER_SILENT_S + 0.1
    assert not layer.steady(t)
    layer.last_packet_at = t
    assert not layer.steady(t)
    layer.last_packet_at = t + LAYER_RESUME_S
    assert layer.steady(t + LAYER_RESUME_S)


def test_loss_is_taken_against_what_the_slot_sent() -> None:
    """A gap the server forwarded (an upstream loss, a repair not in yet) is not the downlink's."""
    losses = LossCounter()
    losses.report(1, 1000, 0, 0.0, sent=900)
    # 200 numbers on, 30 of them never sent (the publisher's uplink lost them): the subscriber
    # counts 30 lost, 0 of its own.
    losses.report(1, 1200, 30, 1.0, sent=1070)
    assert losses.take(1.0) == 0.0
    # 10 of the 170 sent next are lost on the downlink, besides 30 more upstream gaps.
    losses.report(1, 1400, 70, 2.0, sent=1240)
    assert losses.take(2.0) == 10 / 170
    # The upstream repairs arrive late and are forwarded: the subscriber's count goes back by
    # what the server sent late, and that is no gain of the downlink's either.
    losses.report(1, 1500, 40, 3.0, sent=1370)
    assert losses.take(3.0) == 0.0
    # The slot set up again (its count from 0): a restart, not -1,370 packets sent.
    losses.report(1, 1600, 40, 3.5, sent=0)
    assert losses.take(3.5) is None
    losses.report(1, 1700, 40, 4.0, sent=100)
    assert losses.take(4.0) == 0.0
    # A slot that cannot tell what it sent: as the counters say.
    losses.report(2, 0, 0, 3.0)
    losses.report(2, 200, 30, 4.0)
    assert losses.take(4.0) == 30 / 200


def test_a_slot_counts_what_it_sent_up_to_the_subscribers_highest() -> None:
    """DownTrack.sent_through: first sends of the slot's numbers up to the report's highest."""
    import struct
    from types import SimpleNamespace

    from conference.sfu.consumer import DownTrack
    from conference.sfu.packet import CodecInfo, parse_header
    from conference.sfu.stats import Counters

    h264 = CodecInfo("h264", 102, 90_000)
    slot = DownTrack("video", "video", 0, SimpleNamespace(send=lambda d: True), Counters())
    assert slot.sent_through(0) is None
    slot.configure(5000, [h264], {}, "0")
    slot.rewriter.switch(77)
    out: list[int] = []
    for seq in [*range(100, 150), *range(160, 200)]:  # 150-159 never reached the server
        data = struct.pack("!BBHII", 0x80, 102, seq, seq * 3000, 77) + bytes(20)
        rewritten = slot.rewriter.rewrite(data, parse_header(data), 0, None, seq == 100, seq / 30)
        assert rewritten is not None
        out.append(struct.unpack_from("!H", rewritten, 2)[0])
    assert len(set(out)) == 90 and (out[-1] - out[0]) & 0xFFFF == 99  # the gap stays a gap
    assert slot.sent_through(out[-1]) == 90
    assert slot.sent_through(out[79]) == 80  # the last ten are in flight
    slot.retransmitted += 3  # answered NACKs are not first sends
    slot.rewriter.packets_sent += 3
    assert slot.sent_through(out[-1]) == 90


def test_a_report_with_nothing_new_still_counts_its_repairs() -> None:
    """Chromium sends a receiver report with each NACK, often with the same highest as the last:
    its repairs (lost counted back) and what was sent must stay in the sums (seen behind 150 ms:
    leaving such reports out read 10-14 % for a subscriber whose own loss over the run was 0)."""
    losses = LossCounter()
    losses.report(1, 1000, 0, 0.0, sent=1000)
    losses.report(1, 1100, 8, 0.5, sent=1092)  # 8 not yet had by the server: not the downlink's
    losses.report(1, 1100, 3, 0.6, sent=1097)  # 5 of them came and were sent; nothing new
    losses.report(1, 1200, 3, 1.0, sent=1197)
    assert losses.take(1.0) == 0.0
    # Without the slot's count, the same reports read B's own counters: 3 of 200.
    raw = LossCounter()
    for highest, lost, at in ((1000, 0, 0.0), (1100, 8, 0.5), (1100, 3, 0.6), (1200, 3, 1.0)):
        raw.report(1, highest, lost, at)
    assert raw.take(1.0) == 3 / 200
