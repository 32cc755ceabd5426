"""What a WebRTC client that is not a browser does differently, each with real aiortc peers:

- its answer carries RFC 8285 extension attributes (``a=extmap:2 …ssrc-audio-level vad=on``, what
  GStreamer's webrtcbin writes), which aiortc's SDP parser refused: the answer is accepted;
- it trickles candidates after a refused answer (or before any answer): each gets an error reply,
  not ``{}`` and a server-side warning.

The same with GStreamer's webrtcbin itself is in tests/test_gstreamer.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from test_sfu_support import Endpoint, Meeting, wait_for

from conference.media import SessionOptions
from conference.roles import Role
from conference.room import Participant, join
from conference.rtp import URI_AUDIO_LEVEL
from signaling.app import build_media

pytestmark = pytest.mark.media

Edit = Callable[[str], str]


def with_vad_attribute(sdp: str) -> str:
    """The answer as GStreamer writes it: the audio-level extmap with its ``vad=on`` attribute."""
    edited = sdp.replace(URI_AUDIO_LEVEL + "\r\n", URI_AUDIO_LEVEL + " vad=on\r\n")
    assert edited != sdp, "aiortc's answer has no audio-level extmap to edit"
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


async def test_an_answer_with_extension_attributes_is_accepted_and_its_levels_used() -> None:
    meeting = Meeting()
    await meeting.start()
    try:
        await add_edited(meeting, "gst-venue", 0, with_vad_attribute, speaking=True)
        listener = await meeting.add("hall-b", 1)
        producer = meeting.backend.rooms["hall"].sessions["gst-venue"].producers["audio"]
        assert producer.level_ext, "the audio-level extension was not negotiated"
        await wait_for(lambda: listener.heard() == {0}, 10, "hall-b hears the venue")
        assert "gst-venue" in speakers_named(meeting)
    finally:
        await meeting.close()


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
