"""The signaling path with the real media core: a real aiortc peer joins through /ws, answers the
server's offer and connects (ICE + DTLS), and a program change reaches it while connected."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from signaling.app import MEDIA_KEY, build_media

pytestmark = pytest.mark.media


async def test_viewer_connects_media_through_signaling(signaling_server, connect, mint, settings) -> None:
    media_settings = replace(settings, media=True)
    server = await signaling_server(media_settings, media=build_media(media_settings))
    assert type(server.app[MEDIA_KEY]).__name__ != "NullMedia"
    chair = await connect(server, mint("council", "chair", "chair"))
    await chair.ok("join", publish={"audio": False, "video": False})
    viewer = await connect(server, mint("council", "screen", "viewer"))
    joined = await viewer.ok("join", video_slots=4, audio_slots=1)
    assert joined["media"] is True and joined["ice_servers"] == []
    offer = await viewer.wait_for(lambda m: m["type"] == "offer", timeout=20)
    assert len(offer["slots"]["video"]) == 4 and len(offer["slots"]["audio"]) == 1
    assert "publish" not in offer["slots"] or not offer["slots"]["publish"]

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # never a public STUN server
    connected = asyncio.Event()

    @pc.on("connectionstatechange")
    def on_state() -> None:
        if pc.connectionState == "connected":
            connected.set()

    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        assert await viewer.ok("answer", sdp=pc.localDescription.sdp) == {}
        await asyncio.wait_for(connected.wait(), 20)
        await chair.ok("set_program", layout="single", slots=["chair"])
        event = await viewer.wait_for(lambda m: m["type"] == "event" and m["event"]["kind"] == "program")
        assert event["event"]["program"]["slots"] == ["chair"]
        # A broken answer is refused with bad_sdp and the session goes on.
        assert (await viewer.request("answer", sdp="not sdp"))["code"] in ("bad_sdp", "conflict")
        assert pc.connectionState == "connected"
    finally:
        await pc.close()
