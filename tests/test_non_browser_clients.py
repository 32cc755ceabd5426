"""What a WebRTC client that is not a browser does differently, each with real aiortc peers:

- its answer carries RFC 8285 extension attributes (``a=extmap:2 …ssrc-audio-level vad=on``, what
  GStreamer's webrtcbin writes), which aiortc's SDP parser refused: the answer is accepted;
- it sends no audio-level header extension: the server measures its level from its Opus instead,
  so it is chosen as a speaker and heard;
- it trickles candidates after a refused answer (or before any answer): each gets an error reply,
  not ``{}`` and a server-side warning.

The same three with GStreamer's webrtcbin itself are in tests/test_gstreamer.py.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from test_sfu_support import Endpoint, Meeting, wait_for

from conference.loadtest.testmedia import load_clip
from conference.media import SessionOptions
from conference.roles import Role
from conference.room import Participant, join
from conference.sfu.audiolevel import OpusLevelMeter, dbov_level
from conference.sfu.packet import URI_AUDIO_LEVEL, parse_header
from signaling.app import build_media

pytestmark = pytest.mark.media

Edit = Callable[[str], str]


def with_vad_attribute(sdp: str) -> str:
    """The answer as GStreamer writes it: the audio-level extmap with its ``vad=on`` attribute."""
    edited = sdp.replace(URI_AUDIO_LEVEL + "\r\n", URI_AUDIO_LEVEL + " vad=on\r\n")
    assert edited != sdp, "aiortc's answer has no audio-level extmap to edit"
    return edited


def without_audio_level(sdp: str) -> str:
    """The answer of a client that does not negotiate the audio-level extension."""
    edited = re.sub(r"a=extmap:\d+ " + re.escape(URI_AUDIO_LEVEL) + r"\r\n", "", sdp)
    assert edited != sdp, "aiortc's answer has no audio-level extmap to remove"
    return edited


class EditedAnswer:
    """A media session whose client's answer is edited on its way to the server."""

    def __init__(self, session: object, edit: Edit) -> None:
        self.session = session
        self.edit = edit

    async def create_offer(self) -> dict:
        return await self.session.create_offer()  # type: ignore[attr-defined]

    async def set_answer(self, sdp: str) -> None:
        await self.session.set_answer(self.edit(sdp))  # type: ignore[attr-defined]


async def add_edited(meeting: Meeting, identity: str, index: int, edit: Edit, speaking: bool) -> Endpoint:
    participant = Participant(identity, identity, Role.VENUE, publish_audio=True, publish_video=True)
    state, _ = await meeting.store.update(meeting.room, lambda s: join(s, participant))
    session = await meeting.backend.open_session(
        meeting.room, identity, SessionOptions(video_slots=1, audio_slots=3), state
    )
    endpoint = Endpoint(identity, index, speaking=speaking)
    meeting.endpoints[identity] = endpoint
    await endpoint.connect(EditedAnswer(session, edit))
    return endpoint


def speakers_named(meeting: Meeting) -> set[str]:
    return {s for _, _, m in meeting.messages if m["type"] == "speakers" for s in m["speakers"]}


async def test_an_answer_with_extension_attributes_is_accepted_and_its_levels_used(meeting: Meeting) -> None:
    await add_edited(meeting, "gst-venue", 0, with_vad_attribute, speaking=True)
    listener = await meeting.add("hall-b", 1)
    producer = meeting.backend.rooms["hall"].transports["gst-venue"].producers["audio"]
    assert producer.level_ext, "the audio-level extension was not negotiated"
    await wait_for(lambda: listener.heard() == {0}, 10, "hall-b hears the venue")
    assert "gst-venue" in speakers_named(meeting)
    # Chosen from the extension it sends: nothing was decoded on the server.
    assert producer.meter is None and meeting.backend.stats()["levels_decoded"] == 0


async def test_a_publisher_without_the_audio_level_extension_is_heard(meeting: Meeting) -> None:
    await add_edited(meeting, "gst-venue", 0, without_audio_level, speaking=True)
    await add_edited(meeting, "gst-quiet", 2, without_audio_level, speaking=False)
    listener = await meeting.add("hall-b", 1)
    room = meeting.backend.rooms["hall"]
    assert room.transports["gst-venue"].producers["audio"].level_ext == 0
    # Nobody has the floor: only a level can put the venue in hall-b's audio slots.
    assert room.state.floor is None
    await wait_for(lambda: listener.heard() == {0}, 10, "hall-b hears the venue")
    await wait_for(lambda: "gst-venue" in room.speakers, 5, "the venue among the speakers")
    assert "gst-venue" in speakers_named(meeting)
    loud = room.transports["gst-venue"].producers["audio"]
    quiet = room.transports["gst-quiet"].producers["audio"]
    # Measured from the decoded Opus: a tone of amplitude 8000/32768 is -15 dBov; silence is 127.
    assert loud.meter is not None and 12 <= loud.meter.level <= 18, loud.meter.level
    assert quiet.meter is not None and quiet.meter.level == 127
    assert "gst-quiet" not in room.speakers and "gst-quiet" not in speakers_named(meeting)
    assert meeting.backend.stats()["levels_decoded"] > 0
    # hall-b sends the extension: its level is never decoded.
    assert room.transports["hall-b"].producers["audio"].meter is None


def test_dbov_level_follows_rfc_6464() -> None:
    t = np.arange(960) / 48_000
    full_scale_sine = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    assert dbov_level(full_scale_sine) == 3  # a full-scale sine's RMS is -3 dBov
    assert dbov_level(full_scale_sine * 0.1) == 23
    assert dbov_level(np.zeros(960, np.float32)) == 127
    assert dbov_level(np.ones(960, np.float32)) == 0
    assert dbov_level(np.array([], np.float32)) == 127


def test_the_meter_decodes_opus_packets_to_their_level(tmp_path) -> None:
    clip = load_clip(1, cache_dir=tmp_path)
    meter = OpusLevelMeter()
    header = b"\x80\x6f\x00\x01" + bytes(8)  # RTP, PT 111, no extension
    for frame in clip.tone[:30]:
        data = header + frame
        assert meter.add(data, parse_header(data)) == 127  # nothing measured yet
    levels = meter.measure()
    assert len(levels) == 30 and meter.packets_decoded == 30
    # The clip's tone is a sine of amplitude 0.1: -23 dBov once the encoder has settled (it
    # fades in over the loop's first 300 ms).
    assert levels[0] > 40 and all(22 <= level <= 24 for level in levels[20:]), levels
    assert meter.measure() == []
    for frame in clip.silence[:20]:
        meter.add(header + frame, parse_header(header + frame))
    meter.measure()
    silent = meter.level
    assert meter.measure() == [] and silent >= 90  # the decoder's tail: below -90 dBov
    junk = header + b"\xff\xff\xff"
    meter.add(junk, parse_header(junk))
    meter.measure()  # a packet that is not Opus changes at most a counter
    assert meter.level >= 90


async def test_candidates_after_a_refused_answer_get_an_error(
    signaling_server, connect, mint, settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    media_settings = replace(settings, media=True)
    server = await signaling_server(media_settings, media=build_media(media_settings))
    venue = await connect(server, mint("council", "gst-venue", "venue"))
    await venue.ok("join", video_slots=1, audio_slots=1)
    offer = await venue.wait_for(lambda m: m["type"] == "offer", timeout=20)
    candidate = {"candidate": "candidate:1 1 UDP 2015363327 127.0.0.1 45776 typ host", "sdpMLineIndex": 0}

    early = await venue.request("candidate", candidate=candidate)
    assert early["type"] == "error" and early["code"] == "conflict"
    assert "no answer yet" in early["message"]

    refused = await venue.request("answer", sdp="v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 96\r\na=extmap:x\r\n")
    assert refused["code"] == "bad_sdp"
    for entry in (candidate, {"candidate": "", "sdpMLineIndex": 0}):
        after = await venue.request("candidate", candidate=entry)
        assert after["type"] == "error" and after["code"] == "conflict", after
        assert "the answer was refused" in after["message"] and "send a valid answer" in after["message"]
    assert not [r for r in caplog.records if "addIceCandidate" in r.getMessage()]

    # A valid answer afterwards is applied, and then candidates are taken.
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        assert await venue.ok("answer", sdp=pc.localDescription.sdp) == {}
        assert await venue.ok("candidate", candidate=candidate) == {}
    finally:
        await pc.close()
