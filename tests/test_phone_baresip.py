"""The dial-in gateway with a real telephone: baresip (Debian's package) calls it on the loopback.

Everything is real: baresip, the gateway's SIP stack, RTP, G.711/Opus, DTMF, the prompts spoken by
espeak-ng, the conference server with its media core (meeting ID and PIN lookup, the caller joining
as a member on a phone device with a plain-RTP media session, raise hand, the chair's mute), and a
venue in the room that is a real aiortc peer: it hears the caller's tone, and its own tone is what
baresip records.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from phone_util import Baresip, WsSession, band_share, dominant, hears, need_baresip, sine, write_wav
from test_sfu_support import TONES, Endpoint

from signaling.app import MEDIA_KEY, build_media
from signaling.phone.call import CallContext
from signaling.phone.codecs import OpusDecoder, Resampler
from signaling.phone.gateway import Gateway
from signaling.phone.ivr import Throttle
from signaling.phone.link import Directory, PlainRoomAudio
from signaling.phone.prompts import ensure_prompts

ADMIN = {"Authorization": "Bearer test-admin-key-not-for-production-0123456789"}
CALLER = "13812341234"


@pytest.fixture(scope="module")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    need_baresip()
    if shutil.which("espeak-ng") is None:
        message = "espeak-ng is not installed (tests/run.sh installs Debian's package)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return ensure_prompts(tmp_path_factory.mktemp("prompts"))


@dataclass
class Rig:
    url: str
    http: aiohttp.ClientSession
    gateway: Gateway
    meeting_id: str
    tmp: Path
    server: Any
    connect: Callable[..., Any]
    mint: Callable[..., str]
    endpoints: list[Endpoint]

    async def venue(self, identity: str = "hall-a", tone: int = 2) -> Endpoint:
        """A venue in the room: a real aiortc peer through the server, speaking TONES[tone]."""
        client = await self.connect(self.server, self.mint("council", identity, "venue"))
        await client.ok("join", video_slots=1, audio_slots=3)
        endpoint = Endpoint(identity, tone, speaking=True)
        self.endpoints.append(endpoint)
        await endpoint.connect(WsSession(client))
        return endpoint

    def callers(self, room: dict[str, Any]) -> list[dict[str, Any]]:
        return [p for p in room["participants"] if p["device"] == "phone"]

    async def room(self) -> dict[str, Any]:
        async with self.http.get(f"{self.url}/api/rooms/council") as response:
            return await response.json()

    async def wait_room(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 5.0
    ) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            room = await self.room()
            if predicate(room):
                return room
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"room did not change as expected: {room['participants']}")
            await asyncio.sleep(0.1)

    async def command(self, **body: Any) -> dict[str, Any]:
        async with self.http.post(f"{self.url}/api/rooms/council/commands", json=body) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def baresip(
        self, name: str, codecs: str = "PCMU", tone_hz: float = 1000.0, rate: int = 8000
    ) -> Baresip:
        source = self.tmp / f"{name}-tone.wav"
        # baresip's file source must match the codec: 48 kHz stereo for its Opus.
        write_wav(source, sine(tone_hz, 30.0, rate), rate, channels=2 if rate == 48000 else 1)
        phone = Baresip(self.tmp / name, source, codecs=codecs, user=CALLER)
        await phone.start()
        return phone


@pytest.fixture
async def rig(signaling_server, connect, mint, settings, prompts, tmp_path: Path) -> AsyncIterator[Rig]:  # type: ignore[no-untyped-def]
    media_settings = replace(settings, media=True)
    server = await signaling_server(media_settings, media=build_media(media_settings))
    url = str(server.make_url("")).rstrip("/")
    endpoints: list[Endpoint] = []
    async with aiohttp.ClientSession(headers=ADMIN) as http:
        async with http.post(f"{url}/api/rooms", json={"room": "council"}) as response:
            assert response.status == 201
        async with http.post(
            f"{url}/api/rooms/council/commands", json={"type": "set_dial_in", "pin": "4321"}
        ) as r:
            meeting_id = (await r.json())["dial_in"]["meeting_id"]
        async with aiohttp.ClientSession() as plain:  # the gateway's own session: no chair header
            ctx = CallContext(
                url,
                Directory(url, "test-admin-key-not-for-production-0123456789", plain),
                plain,
                prompts,
                Throttle(limit=3),
            )  # the default audio_factory: the plain-RTP transport of the server's media core
            gateway = Gateway(ctx, host="127.0.0.1", port=0)
            await gateway.start()
            try:
                yield Rig(url, http, gateway, meeting_id, tmp_path, server, connect, mint, endpoints)
            finally:
                await gateway.close()
                for endpoint in endpoints:
                    await endpoint.close()


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def decode_opus(packets: list[bytes]) -> np.ndarray:
    decoder = OpusDecoder()
    return np.concatenate([decoder.decode(p) for p in packets]) if packets else np.zeros(0, np.int16)


def best_match(heard: np.ndarray, reference: np.ndarray, max_lag: int) -> float:
    """The normalised cross-correlation of ``reference`` within the first ``max_lag`` samples."""
    best = 0.0
    ref = reference.astype(np.float64)
    ref /= np.linalg.norm(ref) or 1.0
    for lag in range(0, max_lag, 8):
        part = heard[lag : lag + len(ref)].astype(np.float64)
        if len(part) < len(ref):
            break
        best = max(best, float(part @ ref) / (np.linalg.norm(part) or 1.0))
    return best


async def test_caller_is_heard_in_the_room_hears_it_raises_a_hand_is_muted_and_hangs_up(rig: Rig) -> None:
    venue = await rig.venue()  # speaks TONES[2], 700 Hz
    assert TONES[2] == 700
    phone = await rig.baresip("caller")  # PCMU, its microphone a 1 kHz file
    try:
        await phone.dial(f"sip:dialin@127.0.0.1:{rig.gateway.port}")
        await phone.wait_event("CALL_ESTABLISHED")
        clock = asyncio.get_running_loop().time
        started = clock()
        await asyncio.sleep(1.5)  # the welcome prompt plays; then the caller types over it
        await phone.send_digits(f"{rig.meeting_id}#4321#")
        room = await rig.wait_room(lambda r: len(rig.callers(r)) == 1)
        joined = clock() - started
        me = rig.callers(room)[0]
        assert (me["role"], me["device"], me["name"]) == ("member", "phone", "电话 138****1234")
        assert me["publish_audio"] and not me["publish_video"]
        identity = me["identity"]
        # The caller's 1 kHz reaches the venue: the server forwards the gateway's Opus, the venue's
        # aiortc decodes it.
        await until(lambda: hears(venue, 1000.0), timeout=10.0)
        call = next(d.call for d in rig.gateway.dialogs.values() if d.call is not None)
        assert call.link is not None and isinstance(call.link.audio, PlainRoomAudio)
        # *1 raises the hand in the room.
        await phone.send_digits("*1")
        await rig.wait_room(lambda r: r["floor_queue"] == [identity])
        # The chair mutes the caller: the tone stops reaching the room, and stays away.
        await rig.command(type="mute", identity=identity, muted=True)
        await until(lambda: not hears(venue, 1000.0), timeout=5.0)
        await until(lambda: call.link is not None and call.link.state.muted)
        for _ in range(10):
            await asyncio.sleep(0.1)
            assert not hears(venue, 1000.0)
        # The chair lifts the mute: the caller is heard again.
        await rig.command(type="mute", identity=identity, muted=False)
        await until(lambda: hears(venue, 1000.0), timeout=10.0)
        await phone.send_digits("*6")
        room = await rig.wait_room(lambda r: rig.callers(r)[0]["self_muted"])
        hung_up = clock() - started
        await phone.hangup()
        room = await rig.wait_room(lambda r: not rig.callers(r))
        assert [p["identity"] for p in room["participants"]] == ["hall-a"]
        assert [reason for _, reason in rig.gateway.finished] == ["caller_hung_up"]
        # The caller's plain-RTP transport is gone with it.
        stats = rig.server.app[MEDIA_KEY].stats()["per_session"]
        assert list(stats) == ["council/hall-a"]
    finally:
        await phone.stop()
    heard, rate = phone.heard()
    assert rate == 8000
    # The welcome prompt reached the phone: its first second is found in what baresip decoded.
    welcome = Resampler().down(rig.gateway.ctx.prompts["welcome"][: 48000 * 1])
    assert best_match(heard[: rate * 2], welcome[1000:], rate) > 0.8
    # Once in, the venue's 700 Hz is what the caller hears most.
    in_room = heard[int(rate * (joined + 0.5)) : int(rate * (hung_up - 0.3))]
    assert band_share(in_room, rate, 700.0) > 0.3, dominant(in_room, rate)
    assert abs(dominant(in_room, rate) - 700) < 15


async def test_opus_caller_is_decoded_and_reencoded_once_for_the_room(rig: Rig) -> None:
    venue = await rig.venue()
    phone = await rig.baresip("opus", codecs="opus/48000/2", tone_hz=1200.0, rate=48000)
    try:
        await phone.dial(f"sip:dialin@127.0.0.1:{rig.gateway.port}")
        await phone.wait_event("CALL_ESTABLISHED")
        assert [d.call.negotiated.codec.name for d in rig.gateway.dialogs.values() if d.call] == ["opus"]
        await phone.send_digits(f"{rig.meeting_id}#4321#", gap=0.12)
        await rig.wait_room(lambda r: len(rig.callers(r)) == 1)
        await until(lambda: hears(venue, 1200.0), timeout=10.0)
        await asyncio.sleep(1.0)
        await phone.hangup()
        await rig.wait_room(lambda r: not rig.callers(r))
    finally:
        await phone.stop()
    heard, rate = phone.heard()
    assert rate == 48000
    in_room = heard[-int(rate * 1.0) :]  # the last second: the venue's 700 Hz
    assert band_share(in_room, rate, 700.0) > 0.2, dominant(in_room, rate)


async def test_wrong_pin_three_times_hangs_up_and_the_source_is_throttled(rig: Rig) -> None:
    phone = await rig.baresip("wrong")
    try:
        await phone.dial(f"sip:dialin@127.0.0.1:{rig.gateway.port}")
        await phone.wait_event("CALL_ESTABLISHED")
        await phone.send_digits(f"{rig.meeting_id}#9999#", gap=0.12)  # the right room, a wrong PIN
        for _ in range(2):
            await asyncio.sleep(0.3)
            await phone.send_digits("1#1#", gap=0.12)  # no such meeting: also a wrong try
        closed = await phone.wait_event("CALL_CLOSED", timeout=12.0)
        assert [reason for _, reason in rig.gateway.finished] == ["wrong_pin"], closed
        assert rig.callers(await rig.room()) == []
        # Three failures from this caller: the next call is refused before it is answered.
        phone.events.clear()
        await phone.dial(f"sip:dialin@127.0.0.1:{rig.gateway.port}")
        closed = await phone.wait_event("CALL_CLOSED", timeout=5.0)
        assert "403" in closed.get("param", ""), closed
        assert not any(e.get("type") == "CALL_ESTABLISHED" for e in phone.events)
    finally:
        await phone.stop()


async def test_no_common_codec_is_488_and_a_malformed_invite_gets_400(rig: Rig) -> None:
    loop = asyncio.get_running_loop()
    received: asyncio.Queue[bytes] = asyncio.Queue()

    class Peer(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
            received.put_nowait(data)

    transport, _ = await loop.create_datagram_endpoint(Peer, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    bad = (
        f"INVITE sip:dialin@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKbad\r\n"
        "From: <sip:x@127.0.0.1>;tag=1\r\nTo: <sip:dialin@127.0.0.1>\r\nCall-ID: bad\r\nCSeq: x INVITE\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    transport.sendto(bad.encode(), ("127.0.0.1", rig.gateway.port))
    transport.sendto(b"\x16\x03\x01 not sip at all", ("127.0.0.1", rig.gateway.port))
    answer = await asyncio.wait_for(received.get(), 3.0)
    assert answer.startswith(b"SIP/2.0 400 "), answer[:80]
    transport.close()
    # The gateway keeps serving: a caller who speaks only G.722 gets 488 from it.
    phone = await rig.baresip("g722", codecs="G722/16000/1", rate=16000)
    try:
        await phone.dial(f"sip:dialin@127.0.0.1:{rig.gateway.port}")
        closed = await phone.wait_event("CALL_CLOSED", timeout=5.0)
        assert "488" in closed.get("param", ""), "\n".join(phone.output)
    finally:
        await phone.stop()
    assert rig.gateway.counters["bad_requests"] == 1 and rig.gateway.counters["dropped"] >= 1


async def test_invite_from_an_address_not_allowed_is_refused(rig: Rig) -> None:
    ctx = rig.gateway.ctx
    strict = Gateway(ctx, host="127.0.0.1", port=0, allow=(ipaddress.ip_network("10.0.0.0/8"),))
    await strict.start()
    phone = await rig.baresip("stranger")
    try:
        await phone.dial(f"sip:dialin@127.0.0.1:{strict.port}")
        closed = await phone.wait_event("CALL_CLOSED", timeout=5.0)
        assert "403" in closed.get("param", ""), closed
        assert strict.counters["refused"] >= 1 and strict.counters["calls"] == 0
    finally:
        await phone.stop()
        await strict.close()


async def test_chair_removes_the_caller_the_gateway_hangs_up_and_the_media_goes(rig: Rig) -> None:
    phone = await rig.baresip("removed")
    try:
        await phone.dial(f"sip:dialin@127.0.0.1:{rig.gateway.port}")
        await phone.wait_event("CALL_ESTABLISHED")
        await phone.send_digits(f"{rig.meeting_id}#4321#", gap=0.12)
        room = await rig.wait_room(lambda r: len(rig.callers(r)) == 1)
        identity = rig.callers(room)[0]["identity"]
        media = rig.server.app[MEDIA_KEY]
        await until(lambda: f"council/{identity}" in media.stats()["per_session"], timeout=5.0)
        await rig.command(type="remove", identity=identity)
        # The gateway says "the meeting connection has ended" and sends BYE; the room is empty.
        closed = await phone.wait_event("CALL_CLOSED", timeout=15.0)
        assert [reason for _, reason in rig.gateway.finished] == ["room_removed"], closed
        assert rig.callers(await rig.room()) == []
        assert f"council/{identity}" not in media.stats()["per_session"]
    finally:
        await phone.stop()


async def test_a_call_over_tcp_joins_is_heard_and_hangs_up(rig: Rig) -> None:
    """SIP over TCP on the same address as UDP (RFC 3261 §18): baresip's INVITE, the DTMF, its BYE."""
    venue = await rig.venue()
    phone = await rig.baresip("tcp")
    try:
        await phone.dial(f"sip:dialin@127.0.0.1:{rig.gateway.port};transport=tcp")
        await phone.wait_event("CALL_ESTABLISHED")
        await phone.send_digits(f"{rig.meeting_id}#4321#", gap=0.12)
        await rig.wait_room(lambda r: len(rig.callers(r)) == 1)
        (dialog,) = [d for d in rig.gateway.dialogs.values() if d.call is not None]
        assert dialog.peer.transport == "TCP", dialog.peer
        await until(lambda: hears(venue, 1000.0), timeout=10.0)
        await phone.hangup()
        await rig.wait_room(lambda r: not rig.callers(r))
        assert [reason for _, reason in rig.gateway.finished] == ["caller_hung_up"]
    finally:
        await phone.stop()
