"""A telephone gateway's caller joins with a plain-RTP media session instead of WebRTC: the real
server with the real media core, a real UDP socket for the gateway's side, and a real aiortc venue
in the room (issue 18)."""

from __future__ import annotations

import asyncio
import struct
from dataclasses import replace
from typing import Any

import aiohttp
import jwt
import numpy as np
import pytest
from conftest import TEST_ADMIN_KEY, TEST_SECRET
from phone_util import WsSession, dominant, hears, sine
from test_sfu_support import TONES, Endpoint, wait_for

from conference.sfu.packet import URI_AUDIO_LEVEL, audio_level, parse_header
from signaling.app import build_media
from signaling.phone.cli import on_this_machine
from signaling.phone.codecs import FRAME, OpusDecoder, OpusEncoder
from signaling.phone.link import LEVEL_EXT_ID, Admission, PlainRoomAudio, SignalingLink
from signaling.phone.rtp import parse_rtp
from signaling.tokens import TokenError, mint_token, verify_token

pytestmark = pytest.mark.media

OPUS = {"name": "opus", "payload_type": 111, "clock_rate": 48000}
ADMIN = {"Authorization": f"Bearer {TEST_ADMIN_KEY}"}


def plain_join(port: int, **extra: Any) -> dict[str, Any]:
    return {
        "device": "phone",
        "publish": {"audio": True, "video": False},
        "transport": "plain",
        "plain": {"address": ["127.0.0.1", port], "publish": {"audio": [OPUS]}, "audio_slots": 3},
        **extra,
    }


class Socket(asyncio.DatagramProtocol):
    """The gateway's end: one UDP socket, everything that arrives kept with its source."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, tuple[str, int]]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        self.received.append((data, addr))

    @property
    def port(self) -> int:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[1]


async def open_socket() -> Socket:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(Socket, local_addr=("127.0.0.1", 0))
    return protocol


async def test_plain_join_hears_the_venue_and_is_heard(signaling_server, connect, mint, settings) -> None:
    media_settings = replace(settings, media=True)
    server = await signaling_server(media_settings, media=build_media(media_settings))
    gateway_socket = await open_socket()
    venue_endpoint: Endpoint | None = None
    try:
        phone = await connect(server, mint("council", "tel-1234-ab", "member", gateway=True))
        joined = await phone.ok("join", **plain_join(gateway_socket.port))
        assert joined["media"] is True and joined["you"]["device"] == "phone"
        answer = await phone.wait_for(lambda m: m["type"] == "transport", timeout=5)
        assert answer["transport"] == "plain" and answer["rtcp_mux"] is True
        host, port = answer["address"]
        server_address = (host, int(port))
        assert host == "127.0.0.1"
        slots = answer["slots"]["audio"]
        assert [s["mid"] for s in slots] == ["audio0", "audio1", "audio2"] and answer["slots"]["video"] == []
        assert all(s["codecs"][0]["name"] == "opus" for s in slots)
        ssrcs = {s["ssrc"]: i for i, s in enumerate(slots)}
        # A plain session negotiates no SDP: nothing to answer.
        assert (await phone.request("answer", sdp="v=0"))["code"] == "conflict"

        # A venue (a real aiortc peer over the same server) speaks a 700 Hz tone.
        venue = await connect(server, mint("council", "hall-a", "venue"))
        await venue.ok("join", video_slots=1, audio_slots=3)
        venue_endpoint = Endpoint("hall-a", 2, speaking=True)
        await venue_endpoint.connect(WsSession(venue))
        await wait_for(lambda: len(gateway_socket.received) > 100, 20, "the venue audio, plain")
        assert not any(m["type"] == "offer" for m in phone.messages)  # never a WebRTC offer
        occupied = await phone.wait_for(
            lambda m: m["type"] == "slots" and any(s["identity"] == "hall-a" for s in m["audio"])
        )
        slot_of_venue = next(i for i, s in enumerate(occupied["audio"]) if s["identity"] == "hall-a")
        assert all(s["identity"] != "tel-1234-ab" for s in occupied["audio"])  # never its own voice
        packets: dict[int, list[bytes]] = {}
        for data, addr in gateway_socket.received:
            assert addr == server_address
            packet = parse_rtp(data)
            if packet is not None and packet.ssrc in ssrcs:
                assert packet.payload_type == 111
                packets.setdefault(ssrcs[packet.ssrc], []).append(packet.payload)
        assert list(packets) == [slot_of_venue]
        decoder = OpusDecoder()
        heard = np.concatenate([decoder.decode(p) for p in packets[slot_of_venue][-50:]])
        assert abs(dominant(heard, 48000) - TONES[2]) < 15 and heard.std() > 1000

        # The caller's voice: Opus RTP from the gateway's socket reaches the venue's audio slot.
        stop = asyncio.Event()

        async def speak() -> None:
            assert gateway_socket.transport is not None
            encoder, tone = OpusEncoder(), sine(1000.0, 20.0, 48000, level=8000)
            loop = asyncio.get_running_loop()
            start = loop.time()
            for i in range(len(tone) // FRAME):
                if stop.is_set():
                    return
                header = struct.pack("!BBHII", 0x80, 111 | (0x80 if i == 0 else 0), i, i * FRAME, 0xCA11)
                opus = encoder.encode(tone[i * FRAME : (i + 1) * FRAME])
                gateway_socket.transport.sendto(header + opus, server_address)
                await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - loop.time()))

        speaker = asyncio.get_running_loop().create_task(speak())

        await wait_for(lambda: hears(venue_endpoint, 1000.0), 10, "the caller's 1 kHz at the venue")
        # The chair (here the admin key) mutes the caller: the server drops what it sends.
        async with aiohttp.ClientSession(headers=ADMIN) as http:
            url = server.make_url("/api/rooms/council/commands")
            async with http.post(url, json={"type": "mute", "identity": "tel-1234-ab", "muted": True}) as r:
                assert r.status == 200, await r.text()
        await wait_for(lambda: not hears(venue_endpoint, 1000.0), 5, "the muted caller to fall silent")
        stop.set()
        await speaker
        # Leaving closes the plain transport: nothing more reaches the socket.
        await phone.ok("leave")
        await asyncio.sleep(0.3)
        count = len(gateway_socket.received)
        await asyncio.sleep(0.5)
        assert len(gateway_socket.received) == count
    finally:
        if venue_endpoint is not None:
            await venue_endpoint.close()
        assert gateway_socket.transport is not None
        gateway_socket.transport.close()


async def test_plain_join_needs_a_gateway_token(signaling_server, connect, mint, settings) -> None:
    media_settings = replace(settings, media=True)
    server = await signaling_server(media_settings, media=build_media(media_settings))
    chair = await connect(server, mint("council", "chair", "chair"))
    await chair.ok("join", publish={"audio": False, "video": False})
    for identity, role in (("member-1", "member"), ("hall-b", "venue")):
        client = await connect(server, mint("council", identity, role))
        refused = await client.request("join", **plain_join(40000))
        assert refused["type"] == "error" and refused["code"] == "forbidden", refused
        # Nothing changed: not joined, and a normal join on the same socket still works.
        assert (await client.request("raise_hand"))["code"] == "not_joined"
    assert not [e for e in chair.events("participant_joined") if e["participant"]["identity"] != "chair"]
    # A gateway's caller naming an address off this machine is refused before joining too.
    gateway = await connect(server, mint("council", "tel-9", "member", gateway=True))
    far = plain_join(40000)
    far["plain"]["address"] = ["192.0.2.7", 40000]
    assert (await gateway.request("join", **far))["code"] == "bad_request"
    # A malformed offer is a schema error.
    bad = plain_join(40000)
    del bad["plain"]
    assert (await gateway.request("join", **bad))["code"] == "bad_request"


async def test_plain_join_without_media_is_refused_clearly(signaling_server, connect, mint) -> None:
    server = await signaling_server()  # NullMedia: signaling only
    gateway = await connect(server, mint("council", "tel-5", "member", gateway=True))
    refused = await gateway.request("join", **plain_join(40000))
    assert refused["code"] == "unavailable" and "without media" in refused["message"], refused
    assert (await gateway.ok("join", device="phone"))["media"] is False  # signaling only still works


def test_gateway_claim_only_on_member_tokens() -> None:
    token = mint_token(TEST_SECRET, "council", "tel-1", "电话 138****1234", "member", 60, gateway=True)
    assert verify_token(TEST_SECRET, token).gateway is True
    assert (
        verify_token(TEST_SECRET, mint_token(TEST_SECRET, "council", "m", "M", "member", 60)).gateway is False
    )
    with pytest.raises(ValueError, match="only for member tokens"):
        mint_token(TEST_SECRET, "council", "hall", "Hall", "venue", 60, gateway=True)
    # A venue token claiming to be a gateway's (refused by mint_token, so signed by hand).
    forged = jwt.encode(
        {"room": "council", "sub": "hall", "role": "venue", "iat": 1, "exp": 2**31, "gateway": True},
        TEST_SECRET,
        algorithm="HS256",
    )
    with pytest.raises(TokenError, match="gateway"):
        verify_token(TEST_SECRET, forged)


def test_gateway_knows_whether_the_server_is_on_this_machine() -> None:
    # The callers' audio is plain RTP on this machine: a gateway elsewhere has signaling only.
    assert on_this_machine("http://127.0.0.1:8080") and on_this_machine("http://localhost:8080")
    assert not on_this_machine("http://192.0.2.1:8080")  # TEST-NET-1: never an address of ours
    assert not on_this_machine("http://no-such-host.invalid:8080")


async def test_gateway_link_without_media_joins_by_signaling_only(signaling_server, mint) -> None:
    server = await signaling_server()  # NullMedia
    url = str(server.make_url("")).rstrip("/")
    token = mint("council", "tel-7", "member", name="电话 ****07", gateway=True)
    audio = PlainRoomAudio()
    async with aiohttp.ClientSession() as http:
        link = SignalingLink(url, Admission("council", "tel-7", "电话 ****07", token), http)
        try:
            assert await link.join(await audio.open()) is None  # refused `unavailable`: no media
            async with http.get(f"{url}/api/rooms/council", headers=ADMIN) as r:
                participants = (await r.json())["participants"]
            assert [(p["identity"], p["device"]) for p in participants] == [("tel-7", "phone")]
        finally:
            await audio.close()
            await link.leave()


async def test_room_audio_takes_only_the_servers_datagrams_and_follows_the_clock() -> None:
    server_end, stranger = await open_socket(), await open_socket()
    audio = PlainRoomAudio()
    offer = await audio.open()
    got: list[tuple[int, bytes]] = []
    audio.set_receiver(lambda slot, opus: got.append((slot, opus)))
    opus = [{"name": "opus", "payload_type": 111, "clock_rate": 48000}]
    audio.connect(
        {
            "address": ["127.0.0.1", server_end.port],
            "slots": {
                "audio": [
                    {"mid": "audio0", "ssrc": 10, "codecs": opus},
                    {"mid": "audio1", "ssrc": 11, "codecs": opus},
                ]
            },
        }
    )
    assert audio.slot_of("audio1") == 1 and audio.slot_of("audio9") is None
    ours = ("127.0.0.1", offer["address"][1])
    assert server_end.transport is not None and stranger.transport is not None
    for ssrc, sender in ((11, server_end), (10, stranger), (99, server_end)):
        sender.transport.sendto(struct.pack("!BBHII", 0x80, 111, 1, 960, ssrc) + b"opus", ours)  # type: ignore[union-attr]
    server_end.transport.sendto(struct.pack("!BBHI", 0x80, 201, 1, 10), ours)  # RTCP RR: ignored
    await wait_for(lambda: audio.dropped_foreign == 1, 2, "the stranger's datagram")
    await asyncio.sleep(0.05)
    assert got == [(1, b"opus")]  # the slot by SSRC; the stranger and an unknown SSRC dropped
    # Sent: our SSRC, sequence +1 each; after a pause the timestamp jumps by the time that passed.
    for _ in range(2):
        audio.send(b"x")
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.5)
    audio.send(b"y", level=30)
    await wait_for(lambda: len(server_end.received) == 3, 2, "three packets at the server end")
    packets = [parse_rtp(data) for data, _ in server_end.received]
    # The level travels as RFC 6464 in the one-byte header extension the offer declared.
    assert offer["extensions"] == {URI_AUDIO_LEVEL: LEVEL_EXT_ID}
    last = server_end.received[-1][0]
    assert audio_level(last, parse_header(last), LEVEL_EXT_ID) == 30 and packets[-1].payload == b"y"
    assert (
        audio_level(server_end.received[0][0], parse_header(server_end.received[0][0]), LEVEL_EXT_ID) is None
    )
    assert all(p is not None and p.ssrc == audio.ssrc and p.payload_type == 111 for p in packets)
    first, second, third = packets  # type: ignore[misc]
    assert (second.sequence - first.sequence) % 65536 == 1 and (third.sequence - second.sequence) % 65536 == 1
    assert first.marker and not second.marker and third.marker
    assert second.timestamp - first.timestamp == 960
    assert 0.45 * 48000 < (third.timestamp - second.timestamp) % 2**32 < 0.65 * 48000
    await audio.close()
    for end in (server_end, stranger):
        end.transport.close()  # type: ignore[union-attr]


async def test_a_caller_whose_level_comes_with_its_packets_is_heard_without_decoding(
    signaling_server, connect, mint, settings
) -> None:
    """The gateway declares the RFC 6464 audio level in its plain offer and sends it with each
    packet: the server chooses the caller as a speaker from it and decodes nothing; an offer with a
    header extension the server does not know is refused."""
    media_settings = replace(settings, media=True)
    server = await signaling_server(media_settings, media=build_media(media_settings))
    gateway_socket = await open_socket()
    try:
        phone = await connect(server, mint("council", "tel-5678-cd", "member", gateway=True))
        bad = plain_join(gateway_socket.port)
        bad["plain"]["extensions"] = {"urn:example:unknown": 3}
        refused = await phone.request("join", **bad)
        assert refused["type"] == "error" and refused["code"] == "bad_request", refused
        good = plain_join(gateway_socket.port)
        good["plain"]["extensions"] = {URI_AUDIO_LEVEL: LEVEL_EXT_ID}
        await phone.ok("join", **good)
        answer = await phone.wait_for(lambda m: m["type"] == "transport", timeout=5)
        server_address = (answer["address"][0], int(answer["address"][1]))
        listener = await connect(server, mint("council", "chair", "chair"))
        await listener.ok("join")
        encoder, tone = OpusEncoder(), sine(1000.0, 4.0, 48000, level=8000)
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert gateway_socket.transport is not None
        for i in range(len(tone) // FRAME):
            header = struct.pack("!BBHII", 0x90, 111 | (0x80 if i == 0 else 0), i, i * FRAME, 0xCA12)
            header += struct.pack("!HHBBxx", 0xBEDE, 1, LEVEL_EXT_ID << 4, 20)  # -20 dBov: speaking
            gateway_socket.transport.sendto(
                header + encoder.encode(tone[i * FRAME : (i + 1) * FRAME]), server_address
            )
            await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - loop.time()))
            if any(m["type"] == "speakers" and "tel-5678-cd" in m["speakers"] for m in listener.messages):
                break
        spoke = await listener.wait_for(
            lambda m: m["type"] == "speakers" and "tel-5678-cd" in m["speakers"], timeout=2
        )
        assert spoke["speakers"][0] == "tel-5678-cd"
        async with aiohttp.ClientSession(headers=ADMIN) as http, http.get(server.make_url("/api/stats")) as r:
            stats = await r.json()
        assert stats["media"]["levels_decoded"] == 0  # the level came with the packets
    finally:
        assert gateway_socket.transport is not None
        gateway_socket.transport.close()


async def test_a_refused_token_is_told_apart_from_a_connection_that_went_away(signaling_server, mint) -> None:
    """After a server restart the gateway joins again; a token the server refuses (4401: here signed
    with another secret, as one whose caller was removed meanwhile gets 4403) is not worth retrying."""
    server = await signaling_server()
    url = str(server.make_url("")).rstrip("/")
    forged = mint_token(
        "another-secret-" + "x" * 30, "council", "tel-8", "电话", "member", 3600, gateway=True
    )
    async with aiohttp.ClientSession() as http:
        link = SignalingLink(url, Admission("council", "tel-8", "电话", forged), http)
        try:
            with pytest.raises(RuntimeError, match=r"^forbidden: the server refused the caller \(4401\)"):
                await link.join()
        finally:
            await link.leave()
        await server.close()  # the server goes away: that is a ConnectionError, worth retrying
        link = SignalingLink(
            url, Admission("council", "tel-8", "电话", mint("council", "tel-8", "member")), http
        )
        with pytest.raises((aiohttp.ClientError, ConnectionError)):
            await link.join()
