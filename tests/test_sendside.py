"""Transport-cc from subscribers (issue 12): the stamped header extension block, the glue that takes
transport feedback out of a leg's RTCP, and a real aiortc leg whose answer keeps the extension on
its slots (as a browser's does): its slots stamp one numbering, its feedback reaches the leg's
send-side estimate, which starts at what the leg is sent; an aiortc peer that does not keep it
(aiortc drops extensions it does not know) gets exactly what it got before.

The Python and native paths putting the same stamped bytes on the wire: tests/test_fastpath.py.
A real Chromium subscriber: tests/test_browser_sendside.py."""

from __future__ import annotations

import asyncio
import struct
import time
from typing import Any

import pytest
from test_sfu_support import Endpoint, Meeting, wait_for

from conference.downlink_estimate import SentPackets
from conference.media import SessionOptions
from conference.roles import Role
from conference.room import Participant, join, set_program
from conference.sfu import aiortc_glue as glue
from conference.sfu.extmap import accept_extension, answered_extension
from conference.sfu.packet import (
    URI_AUDIO_LEVEL,
    URI_TRANSPORT_CC,
    ExtensionMap,
    _extension_block,
    extension_value,
    parse_header,
)
from conference.sfu.rewriter import StreamRewriter
from conference.sfu.twcc import encode_feedback

# --- the extension block --------------------------------------------------------------------


@pytest.mark.parametrize("two_byte", [False, True])
def test_the_stamped_block_carries_the_sequence_in_place_of_abs_send_time(two_byte: bool) -> None:
    ext = ExtensionMap(mid=1, abs_send_time=2, audio_level=3, transport_cc=20 if two_byte else 5)
    plain = _extension_block(ext, b"a0", True)
    stamped = _extension_block(ext, b"a0", True, transport_cc=True)
    assert plain.abs_mask == 0xFFFFFF and stamped.abs_mask == 0  # abs-send-time gives way
    # An id over 14 (or a long mid) takes the two-byte form, which the plain block did not need.
    assert (
        stamped.prefix[:2] == (b"\x10\x00" if two_byte else b"\xbe\xde") and plain.prefix[:2] == b"\xbe\xde"
    )
    slot = StreamRewriter(0xABC, 111, "audio", 48_000, "opus", ext, b"a0")
    sent = SentPackets(0xFFFF)
    slot.set_transport_cc(sent)
    assert slot.sends_transport_cc
    source = struct.pack("!BBHII", 0x80, 111, 100, 960, 0x55) + bytes([0xFC]) + bytes(40)
    out = []
    for n in range(3):
        data = source[:2] + (100 + n).to_bytes(2, "big") + source[4:]
        header = parse_header(data)
        assert header is not None
        if n == 0:
            slot.switch(0x55)
        packet = slot.rewrite(data, header, 0x123456, 10, False, 1000.0 + n / 50)
        assert packet is not None
        out.append(packet)
    for n, packet in enumerate(out):
        header = parse_header(packet)
        assert header is not None
        assert extension_value(packet, header, ext.transport_cc) == ((0xFFFF + n) & 0xFFFF).to_bytes(2, "big")
        assert extension_value(packet, header, 2) is None
        level = extension_value(packet, header, 3)
        assert level is not None and level[0] & 0x7F == 10
        assert sent.get((0xFFFF + n) & 0xFFFF) == (int((1000.0 + n / 50) * 1e6), len(packet))
    assert sent.next_seq == 2 and sent.stamped == 3
    # A slot whose subscriber did not negotiate the extension is not stamped.
    other = StreamRewriter(0xABD, 111, "audio", 48_000, "opus", ExtensionMap(audio_level=3), b"a1")
    other.set_transport_cc(sent)
    assert not other.sends_transport_cc


# --- transport feedback out of a leg's RTCP -------------------------------------------------


class FakeDtls:
    def __init__(self) -> None:
        self.passed: list[bytes] = []

    async def _handle_rtcp_data(self, data: bytes) -> None:
        self.passed.append(data)


async def test_transport_feedback_is_taken_out_of_compound_rtcp() -> None:
    dtls: Any = FakeDtls()
    taken: list[bytes] = []
    glue.hook_transport_feedback(dtls, lambda data, offset: taken.append(data[offset:]))
    rr = struct.pack("!BBHI", 0x80, 201, 1, 0x1111)
    pli = struct.pack("!BBHII", 0x81, 206, 2, 0x1111, 0x2222)
    feedback, _ = encode_feedback(0x1111, 0x2222, 7, 0, [1_000_000, None, 1_000_500])
    await dtls._handle_rtcp_data(rr + feedback + pli)
    await dtls._handle_rtcp_data(feedback)
    await dtls._handle_rtcp_data(rr + pli)
    assert taken == [feedback + pli, feedback]
    # aiortc gets the rest (nothing when the compound was feedback only), never the feedback.
    assert dtls.passed == [rr + pli, rr + pli]


# --- a real aiortc leg ----------------------------------------------------------------------


async def join_keeping_transport_cc(meeting: Meeting, identity: str, index: int) -> tuple[Endpoint, Any]:
    """An aiortc subscriber whose answer keeps transport-cc on its slots, as a browser's does
    (``accept_extension``: aiortc itself drops the extension)."""
    participant = Participant(identity, identity, Role.VENUE, publish_audio=False, publish_video=False)
    state, _ = await meeting.store.update(meeting.room, lambda s: join(s, participant))
    options = SessionOptions(publish_audio=False, publish_video=False, video_slots=2, audio_slots=1)
    session = await meeting.backend.open_session(meeting.room, identity, options, state)
    apply = session.set_answer

    async def set_answer(sdp: str) -> None:
        offer = session.offer["sdp"]
        slots = {*session.offer["slots"]["video"], *session.offer["slots"]["audio"]}
        await apply(accept_extension(sdp, offer, slots, URI_TRANSPORT_CC, "transport-cc"))

    session.set_answer = set_answer
    endpoint = Endpoint(identity, index, publish=False)
    await endpoint.connect(session)
    meeting.endpoints[identity] = endpoint
    return endpoint, session


async def alice_on_bobs_program(meeting: Meeting) -> tuple[Endpoint, Any]:
    """The meeting started, alice (aiortc) publishing, bob keeping transport-cc (as Chromium)
    with alice on the program."""
    await meeting.start()
    await meeting.add("alice", 0, video_slots=1, audio_slots=1)
    subscriber, session = await join_keeping_transport_cc(meeting, "bob", 1)
    await meeting.command(set_program, "single", ["alice"])
    return subscriber, session


def feedback_for(sent: SentPackets, count: int, delay_us: int, media_ssrc: int, fb_count: int) -> bytes:
    """Transport feedback for the leg's last ``count`` stamped packets, each arriving ``delay_us``
    after it was sent (a clear link)."""
    base = (sent.next_seq - count) & 0xFFFF
    arrivals: list[int | None] = []
    for n in range(count):
        noted = sent.get((base + n) & 0xFFFF)
        arrivals.append(None if noted is None else noted[0] + delay_us)
    packet, covered = encode_feedback(0x5EED, media_ssrc, base, fb_count, arrivals)
    assert covered == count
    return packet


async def test_a_leg_that_keeps_transport_cc_stamps_its_slots_and_estimates_from_its_feedback() -> None:
    meeting = Meeting(send_side_bwe=True)  # the slots are offered transport-cc only with the setting
    try:
        subscriber, session = await alice_on_bobs_program(meeting)
        plain = meeting.backend.rooms[meeting.room].transports["alice"]
        # The offer asked on every m-section, one id; the aiortc publisher's answer kept none.
        offer = session.offer["sdp"]
        offered = answered_extension(offer, URI_TRANSPORT_CC)
        assert set(offered) == {*session.offer["slots"]["video"], *session.offer["slots"]["audio"]}
        assert len(set(offered.values())) == 1
        assert plain.sent is None and not any(t.rewriter.sends_transport_cc for t in plain.down_tracks())
        assert plain.stats()["transport_cc_out"] is None and plain.send_side_estimate() is None
        # Bob's slots stamp one numbering; what they send still decodes at his (aiortc) end.
        assert session.sent is not None
        assert all(t.rewriter.sends_transport_cc for t in session.down_tracks())
        await wait_for(lambda: subscriber.video(0).frames > 10, 20, "bob decoding alice")
        sent = session.sent
        assert sent.stamped >= 10
        assert session.send_side_estimate() is None  # no feedback yet
        dtls = glue.leg_transport(subscriber.pc)
        media_ssrc = session.video[0].rewriter.ssrc
        # Malformed feedback: refused, counted, nothing else changes.
        good = feedback_for(sent, 20, 30_000, media_ssrc, 0)
        await dtls._send_rtp(good[:2] + b"\x00\x09" + good[4:])  # says it is longer than it is
        await dtls._send_rtp(good[:14] + b"\xff\xff" + good[16:])  # 65,535 statuses, no chunks
        await wait_for(lambda: session.feedback_refused >= 1, 5, "the malformed feedback refused")
        assert session.estimate is None
        # Feedback as a clear link gives it, every 100 ms, over a second.
        for n in range(10):
            await asyncio.sleep(0.1)
            await dtls._send_rtp(feedback_for(sent, min(sent.stamped, 60), 30_000, media_ssrc, n + 1))
        await wait_for(lambda: session.feedback_in >= 10, 5, "the feedback")
        sending = sum(t.source.bitrate for t in session.down_tracks() if t.source is not None)
        estimate = session.send_side_estimate()
        assert estimate is not None and sending > 0
        # Started at what the slots are sent, and a clear link never lowers it.
        assert estimate >= 0.95 * sending
        stats = session.stats()
        assert stats["send_side_estimate"] == estimate
        assert stats["transport_cc_out"]["feedback"] >= 10 and stats["transport_cc_out"]["refused"] >= 1
        assert stats["transport_cc_out"]["stamped"] == sent.stamped > 0
        # Stale feedback is no estimate.
        session.estimate_at = time.time() - 10
        assert session.send_side_estimate() is None
    finally:
        await meeting.close()


def test_the_audio_level_element_still_parses_beside_the_sequence() -> None:
    """The stamped word as a receiver parses it: RFC 8285 padding between elements."""
    ext = ExtensionMap.from_uris({URI_AUDIO_LEVEL: 1, URI_TRANSPORT_CC: 3})
    block = _extension_block(ext, b"", True, transport_cc=True)
    word = (block.tag | (5 << block.level_shift) | 0xBEEF).to_bytes(8, "big")
    data = struct.pack("!BBHII", 0x90, 111, 1, 2, 3) + block.prefix + word + block.suffix + b"\xfc"
    header = parse_header(data)
    assert header is not None
    assert extension_value(data, header, 3) == b"\xbe\xef"
    assert extension_value(data, header, 1) == b"\x05"


async def test_without_the_setting_slots_are_not_offered_transport_cc() -> None:
    """send_side_bwe off (the default): publishers' m-sections keep transport-cc (their browser's
    estimate), the slots are offered none, so nothing is stamped and no feedback comes."""
    meeting = Meeting()
    try:
        subscriber, session = await alice_on_bobs_program(meeting)
        publisher = meeting.backend.rooms[meeting.room].transports["alice"]
        offered = set(answered_extension(publisher.offer["sdp"], URI_TRANSPORT_CC))
        slots = {*publisher.offer["slots"]["video"], *publisher.offer["slots"]["audio"]}
        assert offered and not offered & slots
        assert not answered_extension(session.offer["sdp"], URI_TRANSPORT_CC)  # bob publishes nothing
        await wait_for(lambda: subscriber.video(0).frames > 10, 20, "bob decoding alice")
        assert session.sent is None and not any(t.rewriter.sends_transport_cc for t in session.down_tracks())
        assert session.stats()["transport_cc_out"] is None and session.send_side_estimate() is None
    finally:
        await meeting.close()
