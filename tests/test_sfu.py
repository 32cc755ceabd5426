"""The SFU with real aiortc endpoints (no signaling): forwarding, program switches, speakers and the
floor, server-side mute, reconnects, keyframe requests and NACKs. Each endpoint publishes a solid
colour and a tone of its own pitch, so what a subscriber decodes tells whose feed it got."""

from __future__ import annotations

import asyncio
import itertools
import logging
import struct
import time
from typing import Any

import pytest
from test_sfu_support import Endpoint, Meeting, wait_for

from conference.media import MediaError
from conference.room import grant_floor, mute, remove, set_connected, set_program

pytestmark = pytest.mark.media


def no_decode_errors(caplog: pytest.LogCaptureFixture, meeting: Meeting) -> list[str]:
    """Decode errors of this meeting's endpoints (not of decoder threads a previous test left)."""
    threads = meeting.decoder_threads()
    return [
        r.getMessage() for r in caplog.records if "failed to decode" in r.getMessage() and r.thread in threads
    ]


async def test_two_endpoints_see_the_program_and_hear_each_other(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="aiortc")
    meeting = Meeting()
    await meeting.start()
    try:
        a = await meeting.add("hall-a", 0, speaking=True)
        b = await meeting.add("expert-b", 1)
        await meeting.command(set_program, "side-by-side", ["hall-a", "expert-b"])
        for endpoint in (a, b):
            await wait_for(
                lambda e=endpoint: e.video(0).colour == 0 and e.video(1).colour == 1, 10, "the program"
            )
        caplog.clear()
        await asyncio.sleep(1)
        # Video slots beyond the layout send nothing.
        assert all(b.video(i).frames == 0 for i in range(2, 9))
        # b hears a's tone; a never hears itself.
        await wait_for(lambda: b.heard() == {0}, 10, "b hears a")
        assert a.heard() == set()
        await wait_for(
            lambda: any(
                m["type"] == "speakers" and m["speakers"] == ["hall-a"] for _, _, m in meeting.messages
            ),
            5,
            "a speakers event naming hall-a",
        )
        slots = meeting.slot_messages("expert-b")[-1]
        assert [s["identity"] for s in slots["audio"]].count("hall-a") == 1
        assert {s["mid"] for s in slots["audio"]} == set(b.slots["audio"])
        stats = meeting.backend.stats()
        assert stats["decoded_frames"] == 0
        assert stats["sessions"] == 2 and stats["producers"] == 4
        if stats["send_path"] == "native":  # what the peers decoded went through the C fan-out
            assert stats["native_copies"] > 20
        assert stats["forward_delay_us"]["count"] > 0 and stats["forward_delay_us"]["p99"] is not None
        per_b = stats["per_session"]["hall/expert-b"]
        assert per_b["slots"][b.slots["video"][0]]["identity"] == "hall-a"
        assert per_b["slots"][b.slots["video"][0]]["packets"] > 0
        assert not no_decode_errors(caplog, meeting), meeting.backend.stats()["nacks_received"]
    finally:
        await meeting.close()


async def test_three_endpoints_program_change_switches_every_subscriber(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="aiortc")
    meeting = Meeting()
    await meeting.start()
    try:
        endpoints = [await meeting.add(f"venue-{i}", i) for i in range(3)]
        await meeting.command(set_program, "single", ["venue-0"])
        for e in endpoints:
            await wait_for(lambda e=e: e.video(0).colour == 0, 10, f"{e.identity} sees venue-0")
        for new in (1, 2, 0):
            before = {e.identity: e.video(0).frames for e in endpoints}
            await meeting.command(set_program, "single", [f"venue-{new}"])
            for e in endpoints:
                # Bounded by the wait (5 s): the benchmark, not this test on a shared machine,
                # measures switch times against the 500 ms target.
                await wait_for(
                    lambda e=e, new=new: e.video(0).colour == new, 5, f"{e.identity} sees venue-{new}"
                )
            # Same slot, same decoder: it kept decoding through the switch.
            await wait_for(
                lambda before=before: all(e.video(0).frames > before[e.identity] + 5 for e in endpoints),
                5,
                "frames flow",
            )
            assert all(e.video(0).sizes == {(160, 96)} for e in endpoints)
        assert not no_decode_errors(caplog, meeting)
        assert meeting.backend.stats()["decoded_frames"] == 0
    finally:
        await meeting.close()


async def test_muted_participant_is_dropped_at_the_server_and_the_floor_is_always_heard(
    meeting: Meeting,
) -> None:
    await meeting.add("hall-a", 0, speaking=True)
    b = await meeting.add("expert-b", 1)
    c = await meeting.add("member-c", 2)
    await wait_for(lambda: b.heard() == {0} and c.heard() == {0}, 10, "b and c hear a")
    await meeting.command(mute, "hall-a", True, by="chair")
    await wait_for(lambda: b.heard() == set() and c.heard() == set(), 3, "a's voice stops everywhere")
    dropped = meeting.backend.stats()["packets_dropped_muted"]
    await asyncio.sleep(0.5)
    assert meeting.backend.stats()["packets_dropped_muted"] > dropped
    assert all(s["identity"] != "hall-a" for s in meeting.slot_messages("expert-b")[-1]["audio"])
    # A silent floor holder still gets an audio slot at everyone else (the chair gave the floor).
    await meeting.command(grant_floor, "member-c", by="chair")
    await wait_for(
        lambda: any(s["identity"] == "member-c" for s in meeting.slot_messages("expert-b")[-1]["audio"]),
        3,
        "member-c's slot at expert-b",
    )
    assert all(s["identity"] != "member-c" for s in meeting.slot_messages("member-c")[-1]["audio"])
    # Granting the floor lifts the chair's mute on hall-a? No: hall-a stays muted.
    assert b.heard() == set()


async def test_dropped_endpoint_reconnects_into_its_slots(meeting: Meeting) -> None:
    a = await meeting.add("hall-a", 0)
    b = await meeting.add("expert-b", 1)
    await meeting.command(set_program, "side-by-side", ["hall-a", "expert-b"])
    await wait_for(lambda: a.video(1).colour == 1 and b.video(0).colour == 0, 10, "program")
    # b's connection drops: signaling closes its media session and keeps the participant.
    await b.session.close()
    await b.close()
    await meeting.command(set_connected, "expert-b", False)
    frames = a.video(1).frames
    await asyncio.sleep(0.5)
    stalled = a.video(1).frames
    await asyncio.sleep(0.5)
    assert a.video(1).frames == stalled, "the slot of a gone publisher sends nothing"
    assert a.video(0).colour == 0 and a.video(0).frames > frames  # the other slot is unaffected
    # b comes back (a new session, a new peer connection) into the same program slots.
    b2 = await meeting.add("expert-b", 1)
    await wait_for(lambda: b2.video(0).colour == 0 and b2.video(1).colour == 1, 10, "b2 sees the program")
    await wait_for(lambda: a.video(1).frames > stalled + 5 and a.video(1).colour == 1, 10, "a sees b again")
    assert meeting.backend.stats()["sessions"] == 2


async def test_a_phone_with_one_slot_gets_the_main_feed(meeting: Meeting) -> None:
    await meeting.add("hall-a", 0)
    await meeting.add("expert-b", 1)
    phone = await meeting.add("member-p", 2, video_slots=1, audio_slots=1, publish=False)
    assert len(phone.slots["video"]) == 1 and len(phone.slots["audio"]) == 1
    assert phone.slots["publish"] == {}
    await meeting.command(set_program, "pip", ["expert-b", "hall-a"])
    await wait_for(lambda: phone.video(0).colour == 1, 10, "the phone sees the main slot")


async def test_subscriber_pli_is_relayed_upstream_rate_limited(meeting: Meeting) -> None:
    a = await meeting.add("hall-a", 0)
    b = await meeting.add("expert-b", 1)
    await meeting.command(set_program, "single", ["hall-a"])
    await wait_for(lambda: b.video(0).colour == 0, 10, "b sees a")
    publisher_sender = next(t.sender for t in a.pc.getTransceivers() if t.mid == a.slots["publish"]["video"])
    requests: list[float] = []
    original = publisher_sender._send_keyframe

    def record() -> None:
        requests.append(time.monotonic())
        original()

    publisher_sender._send_keyframe = record  # type: ignore[method-assign]
    receiver = next(t.receiver for t in b.pc.getTransceivers() if t.mid == b.slots["video"][0])
    slot_ssrc = meeting.backend.rooms["hall"].transports["expert-b"].video[0].rewriter.ssrc
    stats = meeting.backend.stats
    relayed = stats()["keyframe_requests_relayed"]
    # A burst of PLIs from the subscriber reaches the publisher, as keyframe requests spaced by
    # the server's rate limit (300 ms; other requests, e.g. after a loss, share the budget).
    for _ in range(5):
        await receiver._send_rtcp_pli(slot_ssrc)
    await wait_for(lambda: stats()["keyframe_requests_relayed"] >= relayed + 5, 3, "relay")
    await wait_for(lambda: len(requests) >= 1, 3, "PLI at the publisher")
    await asyncio.sleep(0.7)
    gaps = [b - a for a, b in itertools.pairwise(requests)]
    assert len(requests) <= 3 and all(gap > 0.2 for gap in gaps), requests


async def test_nack_is_answered_from_the_publishers_cache(meeting: Meeting) -> None:
    await meeting.add("hall-a", 0)
    b = await meeting.add("expert-b", 1)
    await meeting.command(set_program, "single", ["hall-a"])
    await wait_for(lambda: b.video(0).colour == 0, 10, "b sees a")
    track = meeting.backend.rooms["hall"].transports["expert-b"].video[0]
    receiver = next(t.receiver for t in b.pc.getTransceivers() if t.mid == b.slots["video"][0])
    last = track.rewriter.last_sequence
    before = meeting.backend.stats()
    sent_before = track.packets
    await receiver._send_rtcp_nack(track.rewriter.ssrc, [(last - 1) & 0xFFFF, last])
    await wait_for(
        lambda: meeting.backend.stats()["nacks_answered"] >= before["nacks_answered"] + 2, 3, "NACK"
    )
    assert meeting.backend.stats()["nacks_received"] >= before["nacks_received"] + 2
    assert track.packets >= sent_before  # retransmissions go out on the same leg
    # A sequence number never sent cannot be answered.
    answered = meeting.backend.stats()["nacks_answered"]
    await receiver._send_rtcp_nack(track.rewriter.ssrc, [(last + 30000) & 0xFFFF])
    await wait_for(lambda: meeting.backend.stats()["nacks_received"] >= before["nacks_received"] + 3, 3, "N")
    assert meeting.backend.stats()["nacks_answered"] == answered


async def test_bad_answers_are_refused_and_change_nothing(meeting: Meeting) -> None:
    a = await meeting.add("hall-a", 0)
    session = await meeting.backend.open_session(
        "hall",
        "expert-b",
        meeting.backend.rooms["hall"].transports["hall-a"].options,
        meeting.store._rooms["hall"],
    )
    with pytest.raises(MediaError) as excinfo:
        await session.set_answer("v=0\r\n")
    assert excinfo.value.code == "conflict"  # no offer yet
    offer = await session.create_offer()
    assert await session.create_offer() is offer
    with pytest.raises(MediaError) as excinfo:
        await session.set_answer("this is not SDP")
    assert excinfo.value.code == "bad_sdp"
    with pytest.raises(MediaError):
        await session.add_candidate({"candidate": "candidate:garbage", "sdpMid": "0"})
    # The room is unaffected: a still publishes and the session can still be answered properly.
    endpoint = Endpoint("expert-b", 1)
    meeting.endpoints["expert-b"] = endpoint
    endpoint.session = session
    await meeting.command(set_program, "single", ["hall-a"])
    await _answer(endpoint, session, offer)
    await wait_for(lambda: endpoint.video(0).colour == 0, 10, "b sees a after the bad answers")
    assert a.pc.connectionState == "connected"


async def _answer(endpoint: Endpoint, session: object, offer: dict) -> None:
    """Connect an endpoint to a session whose offer was already created."""

    class Replay:
        async def create_offer(self) -> dict:
            return offer

        async def set_answer(self, sdp: str) -> None:
            await session.set_answer(sdp)  # type: ignore[attr-defined]

    await endpoint.connect(Replay())


async def test_h264_is_forwarded_where_both_sides_offer_it(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="aiortc")
    meeting = Meeting()
    await meeting.start()
    try:
        await meeting.add("hall-a", 0, video_codec="H264")
        b = await meeting.add("expert-b", 1)
        await meeting.command(set_program, "side-by-side", ["hall-a", "expert-b"])
        await wait_for(lambda: b.video(0).colour == 0 and b.video(1).colour == 1, 15, "H.264 and VP8 slots")
        room = meeting.backend.rooms["hall"]
        assert room.transports["hall-a"].producers["video"].codec == "h264"
        assert room.transports["expert-b"].video[0].rewriter.codec == "h264"
        assert not no_decode_errors(caplog, meeting), meeting.backend.stats()["nacks_received"]
        # The same slot switches to a VP8 source (codec and payload type change at the keyframe).
        await meeting.command(set_program, "single", ["expert-b"])
        await wait_for(lambda: b.video(0).colour == 1, 10, "slot 0 switches from H.264 to VP8")
        assert room.transports["expert-b"].video[0].rewriter.codec == "vp8"
        frames = b.video(0).frames
        await wait_for(lambda: b.video(0).frames > frames + 5 and b.video(0).colour == 1, 5, "VP8 flows")
        # aiortc's receiver hands the frame completed by a packet to the decoder of that packet's
        # payload type, so the last H.264 frame goes to the new VP8 decoder once (browsers key the
        # decoder on the frame's own payload type). Nothing else may fail.
        assert len(no_decode_errors(caplog, meeting)) <= 2
    finally:
        await meeting.close()


class MemorySink:
    """A recorder stand-in that keeps what the media core hands it."""

    def __init__(self) -> None:
        self.tracks: list[dict[str, object]] = []
        self.speaker_updates: list[list[str]] = []

    def open_track(self, identity, kind, codec, clock_rate, payload_type, ssrc, extensions):  # type: ignore[no-untyped-def]
        track = {
            "identity": identity,
            "kind": kind,
            "codec": codec,
            "clock_rate": clock_rate,
            "payload_type": payload_type,
            "ssrc": ssrc,
            "extensions": extensions,
            "packets": [],
            "closed": False,
        }
        self.tracks.append(track)
        sink = self

        class Track:
            def write(self, arrival: float, packet: bytes) -> None:
                assert not track["closed"]
                track["packets"].append((arrival, packet))  # type: ignore[union-attr]

            def close(self) -> None:
                track["closed"] = True

        del sink
        return Track()

    def speakers(self, at: float, identities: list[str]) -> None:
        self.speaker_updates.append(identities)


async def test_recorder_gets_every_track_but_not_muted_audio(meeting: Meeting) -> None:
    await meeting.add("hall-a", 0, speaking=True)
    await meeting.add("expert-b", 1)
    await wait_for(lambda: meeting.backend.stats()["producers"] == 4, 10, "both publishing")
    sink = MemorySink()
    meeting.backend.set_recorder("hall", sink)
    kinds = {(t["identity"], t["kind"]) for t in sink.tracks}
    assert kinds == {
        ("hall-a", "audio"),
        ("hall-a", "video"),
        ("expert-b", "audio"),
        ("expert-b", "video"),
    }
    video = next(t for t in sink.tracks if t == {**t, "identity": "hall-a", "kind": "video"})
    assert video["codec"] == "vp8" and video["clock_rate"] == 90_000
    audio = next(t for t in sink.tracks if t == {**t, "identity": "hall-a", "kind": "audio"})
    assert audio["codec"] == "opus" and audio["extensions"]["urn:ietf:params:rtp-hdrext:ssrc-audio-level"]
    await wait_for(lambda: len(video["packets"]) > 10 and len(audio["packets"]) > 20, 10, "packets recorded")
    first = video["packets"][0][1]
    assert first[0] >> 6 == 2 and struct.unpack_from("!I", first, 8)[0] == video["ssrc"]  # decrypted RTP
    await wait_for(lambda: ["hall-a"] in sink.speaker_updates, 5, "speakers reach the recorder")
    # Muted audio is not recorded either.
    await meeting.command(mute, "hall-a", True, by="chair")
    await asyncio.sleep(0.3)
    count = len(audio["packets"])
    await asyncio.sleep(0.6)
    assert len(audio["packets"]) == count
    meeting.backend.set_recorder("hall", None)
    assert all(t["closed"] for t in sink.tracks)
    frozen = len(video["packets"])
    await asyncio.sleep(0.3)
    assert len(video["packets"]) == frozen


async def test_a_second_session_of_the_same_identity_replaces_the_first(meeting: Meeting) -> None:
    a = await meeting.add("hall-a", 0)
    b = await meeting.add("expert-b", 1)
    await meeting.command(set_program, "single", ["expert-b"])
    await wait_for(lambda: a.video(0).colour == 1, 10, "a sees b")
    old = meeting.backend.rooms["hall"].transports["expert-b"]
    b2 = await meeting.add("expert-b", 1)  # b's old connection is still up
    assert old.closed and meeting.backend.rooms["hall"].transports["expert-b"] is not old
    frames = a.video(0).frames
    await wait_for(lambda: a.video(0).frames > frames + 5 and a.video(0).colour == 1, 10, "a sees b2")
    await wait_for(lambda: b2.video(0).colour == 1, 10, "b2 sees itself in the program")
    assert meeting.backend.stats()["sessions"] == 2
    await b.close()


async def test_a_removed_participant_loses_its_session_and_its_slots_empty(meeting: Meeting) -> None:
    a = await meeting.add("hall-a", 0)
    await meeting.add("expert-b", 1)
    await meeting.command(set_program, "side-by-side", ["hall-a", "expert-b"])
    await wait_for(lambda: a.video(1).colour == 1, 10, "a sees b")
    await meeting.command(remove, "expert-b")
    room = meeting.backend.rooms["hall"]
    assert "expert-b" not in room.transports
    assert meeting.backend.stats()["sessions"] == 1
    assert room.transports["hall-a"].video[1].source is None
    frames = a.video(1).frames
    await asyncio.sleep(0.5)
    assert a.video(1).frames <= frames + 1  # at most a frame in flight, then nothing
    assert a.video(0).colour == 0


async def test_publishers_get_receiver_reports_remb_and_nacks_for_what_was_lost() -> None:
    """aiortc's receive path is bypassed, so the SFU sends the feedback it would have: receiver
    reports, a REMB with the bitrate cap, and a NACK when a video packet is missing (the
    publisher's retransmission then reaches the forwarder)."""
    meeting = Meeting()
    meeting.backend.publish_max_bitrate = 400_000
    await meeting.start()
    try:
        a = await meeting.add("hall-a", 0)
        b = await meeting.add("expert-b", 1)
        await meeting.command(set_program, "single", ["hall-a"])
        await wait_for(lambda: b.video(0).colour == 0, 10, "b sees a")
        sender = next(t.sender for t in a.pc.getTransceivers() if t.mid == a.slots["publish"]["video"])

        def encoder_target() -> int | None:
            return getattr(sender._RTCRtpSender__encoder, "target_bitrate", None)  # type: ignore[attr-defined]

        # aiortc's sender hands a REMB for its SSRC to its encoder as the target bitrate.
        await wait_for(lambda: encoder_target() == 400_000, 5, "REMB at the publisher's encoder")
        reports = [s for s in (await sender.getStats()).values() if s.type == "remote-inbound-rtp"]
        assert reports and reports[0].packetsLost == 0, reports

        # Our reports answer the publisher's sender reports (LSR/DLSR): it knows the round trip.
        async def round_trip() -> float | None:
            stats = [s for s in (await sender.getStats()).values() if s.type == "remote-inbound-rtp"]
            return stats[0].roundTripTime if stats else None

        deadline = time.monotonic() + 8
        rtt = await round_trip()
        while rtt is None and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            rtt = await round_trip()
        assert rtt is not None and 0 <= rtt < 0.5, rtt

        # One video packet lost on the way in (before SRTP: a packet unprotected once would be
        # refused again as a replay): the gap is NACKed and the retransmission arrives.
        session = meeting.backend.rooms["hall"].transports["hall-a"]
        producer = session.producers["video"]
        ice = session.pc.getTransceivers()[0].receiver.transport.transport
        protocols = list(ice._connection._protocols)
        seen: list[int] = []
        dropped: list[int] = []
        for protocol in protocols:
            hooked = protocol.datagram_received

            def lossy(data: bytes, addr: Any, hooked: Any = hooked) -> None:
                if len(data) > 12 and struct.unpack_from("!I", data, 8)[0] == producer.ssrc:
                    sequence = struct.unpack_from("!H", data, 2)[0]
                    seen.append(sequence)
                    if not dropped and len(seen) > 20:
                        dropped.append(sequence)
                        return
                hooked(data, addr)

            protocol.datagram_received = lossy
        # The publisher answers on RTX (negotiated with publishers): the producer counts a repair.
        await wait_for(lambda: bool(dropped) and producer.reception.repaired >= 1, 5, "the retransmission")
        assert session.rtx, "RTX was not negotiated with the publisher"
        # The kernel's receive time of each datagram (what transport-cc reports), on the wall clock.
        hook = session.datagram_hook
        assert hook is not None and hook.arrival_us == 0 and session.transport_cc is None  # aiortc: no tcc
        hook.kernel_timestamps = True
        await wait_for(lambda: hook.arrival_us > 0, 5, "a kernel timestamp")
        assert hook.kernel_timestamps and abs(hook.arrival_us / 1e6 - time.time()) < 1.0
        stats = meeting.backend.stats()
        assert stats["nacks_sent"] >= 1 and stats["reports_sent"] >= 2
        assert dropped[0] not in producer.reception.nack.missing  # the late packet filled the gap
        assert producer.reception.repaired >= 1

        # Our next receiver report says the packet was lost on the wire, repaired or not.
        async def reported_lost() -> int:
            stats = [s for s in (await sender.getStats()).values() if s.type == "remote-inbound-rtp"]
            return stats[0].packetsLost if stats else 0

        deadline = time.monotonic() + 5
        while await reported_lost() < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert await reported_lost() >= 1
        assert stats["srtp_unprotect_errors"] == 0
    finally:
        await meeting.close()
