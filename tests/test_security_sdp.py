"""Issue 9, finding 3: one SDP answer must not stall the event loop everyone shares. A real aiortc
peer answers the server's offer with 8,000 extra a=ssrc lines (about 228 KB, under the message
limit) while another client pings; the answer is refused at once and the ping stays low."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import replace

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from conference.sdp_bounds import SdpBounds, SdpTooComplex, check_sdp
from signaling.app import build_media

pytestmark = pytest.mark.media


def ping_from_another_loop(url: str, token: str, rtts: list[float], stop: threading.Event) -> None:
    async def run() -> None:
        async with aiohttp.ClientSession() as http, http.ws_connect(url, params={"token": token}) as ws:
            n = 0
            while not stop.is_set():
                n += 1
                started = time.perf_counter()
                await ws.send_str(json.dumps({"type": "ping", "id": n}))
                while json.loads((await ws.receive(timeout=30)).data).get("id") != n:
                    pass
                rtts.append(time.perf_counter() - started)
                await asyncio.sleep(0.005)

    asyncio.run(run())


def _with_extra_lines(sdp: str, lines: list[str]) -> str:
    """``sdp`` with ``lines`` appended to its first m-section."""
    head, sep, rest = sdp.partition("\r\nm=")
    first, sep2, others = rest.partition("\r\nm=")
    return head + sep + first + "\r\n" + "\r\n".join(lines) + sep2 + others


def test_bounds_follow_the_offer() -> None:
    offer = (
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
        + "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=recvonly\r\n" * 3
    )
    bounds = SdpBounds.for_answer_to(offer)
    assert bounds.max_m_sections == 3
    check_sdp(offer, bounds)
    with pytest.raises(SdpTooComplex, match="m-sections"):
        check_sdp(offer + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n", bounds)
    with pytest.raises(SdpTooComplex, match="lines"):
        check_sdp(offer + "a=x\r\n" * 200, bounds)
    with pytest.raises(SdpTooComplex, match="a=ssrc"):
        check_sdp(offer + "".join(f"a=ssrc:{i} cname:x\r\n" for i in range(17)), bounds)
    # A browser's sending m-section: SSRC, RTX, their group: fine.
    sender = "a=ssrc-group:FID 1 2\r\n" + "".join(
        f"a=ssrc:{n} cname:c\r\na=ssrc:{n} msid:s t\r\n" for n in (1, 2)
    )
    check_sdp(offer + sender, bounds)


@pytest.mark.parametrize("backend", ["sfu", "relay_baseline"])
async def test_a_hostile_answer_is_refused_fast_and_others_ping_low(
    signaling_server, connect, mint, settings, backend
) -> None:
    media_settings = replace(settings, media=True, media_backend=backend)
    server = await signaling_server(media_settings, media=build_media(media_settings))
    clerk_token = mint("council", "clerk", "clerk")  # signaling only: it pings
    hostile = await connect(server, mint("council", "hall-a", "venue"))
    await hostile.ok("join", publish={"audio": False, "video": False}, video_slots=1, audio_slots=1)
    offer = await hostile.wait_for(lambda m: m["type"] == "offer", timeout=20)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        answer = pc.localDescription.sdp
        bloated = _with_extra_lines(answer, [f"a=ssrc:{10000 + i} cname:hostile" for i in range(8000)])
        message = {"type": "answer", "id": "r99", "sdp": bloated}
        assert len(bloated) > 200_000 and len(json.dumps(message)) < settings.ws_max_message_bytes

        # The other client pings from its own thread and event loop: a stall of the server's loop
        # then shows in its round trips (a pinger on the server's own loop would stall with it).
        rtts: list[float] = []
        stop = threading.Event()
        ws_url = str(server.make_url("/ws"))
        pinger = threading.Thread(target=ping_from_another_loop, args=(ws_url, clerk_token, rtts, stop))
        pinger.start()
        while len(rtts) < 5:
            await asyncio.sleep(0.02)
        started = time.perf_counter()
        refused = await hostile.request("answer", sdp=bloated, timeout=30)
        took = time.perf_counter() - started
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.to_thread(pinger.join, 10)
        worst = max(rtts)
        print(
            f"\nhostile answer ({len(bloated)} bytes): answered in {took * 1000:.1f} ms;"
            f" other client's worst ping {worst * 1000:.1f} ms over {len(rtts)} pings"
        )
        assert refused["type"] == "error" and refused["code"] == "bad_sdp", refused
        assert "answer refused" in refused["message"]
        assert took < 0.25 and worst < 0.25
        # The session goes on: the honest answer is still accepted.
        assert await hostile.ok("answer", sdp=answer) == {}
    finally:
        await pc.close()
