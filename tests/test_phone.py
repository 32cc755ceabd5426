"""The telephone gateway's parts on their own: SIP messages, digest, SDP, G.711 and resampling,
DTMF, the IVR and throttle, the mixer, transactions over a real UDP socket, registration, and
the server's dial-in (set_dial_in, GET /api/rooms/{room}, POST /api/dial-in)."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import socket
from pathlib import Path

import aiohttp
import av
import numpy as np
import pytest
from phone_util import dominant, sine

from conference.room import RoomState
from signaling.phone import codecs, digest, dtmf, sdp
from signaling.phone.call import CallContext
from signaling.phone.gateway import Gateway
from signaling.phone.ivr import Check, HangUp, Ivr, Prompt, Throttle
from signaling.phone.link import Directory
from signaling.phone.message import SipParseError, SipRequest, SipResponse, parse, response_to
from signaling.phone.mixer import Mixer
from signaling.phone.register import Account, Registration
from signaling.phone.transaction import TransactionLayer
from signaling.phone.transport import Peer

ADMIN = {"Authorization": "Bearer test-admin-key-not-for-production-0123456789"}

INVITE = (
    "INVITE sip:dialin@127.0.0.1 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{branch};rport\r\n"
    "Max-Forwards: 70\r\n"
    "f: <sip:13812341234@127.0.0.1>;tag=abc\r\n"
    "To: <sip:dialin@127.0.0.1>\r\n"
    "Call-ID: {call_id}\r\n"
    "CSeq: 1 INVITE\r\n"
    "Contact: <sip:13812341234@127.0.0.1:{port}>\r\n"
    "Content-Type: application/sdp\r\n"
    "Content-Length: {length}\r\n\r\n{body}"
)
OFFER = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio {rtp} RTP/AVP {pts}\r\n{maps}a=sendrecv\r\n"
)


def offer(rtp: int = 40000, pts: str = "0 8 101", maps: str = "a=rtpmap:101 telephone-event/8000\r\n") -> str:
    return OFFER.format(rtp=rtp, pts=pts, maps=maps)


def invite(port: int, call_id: str, branch: str = "1", body: str | None = None) -> bytes:
    body = offer() if body is None else body
    return INVITE.format(
        port=port, branch=branch, call_id=call_id, length=len(body.encode()), body=body
    ).encode()


# --- messages, digest, SDP ---------------------------------------------------------------------


def test_parse_request_expands_compact_headers_and_round_trips() -> None:
    message = parse(invite(5062, "c1"))
    assert isinstance(message, SipRequest)
    assert message.method == "INVITE" and message.from_tag == "abc" and message.cseq == (1, "INVITE")
    assert message.top_via.branch == "z9hG4bK1" and message.top_via.port == 5062
    again = parse(message.encode())
    assert isinstance(again, SipRequest)
    assert again.headers.items == message.headers.items and again.body == message.body


@pytest.mark.parametrize(
    ("data", "answerable"),
    [
        (b"\x00\xff garbage", False),
        (b"INVITE sip:x@y SIP/2.0\r\nTo: <sip:x@y>\r\n\r\n", False),  # no Via: nowhere to answer
        (invite(5062, "c2").replace(b"CSeq: 1 INVITE", b"CSeq: one INVITE"), True),
        (invite(5062, "c3").replace(b"Content-Length: ", b"Content-Length: 9"), True),
        (invite(5062, "c4").replace(b"Call-ID: c4\r\n", b""), True),
        (invite(5062, "c5").replace(b"Max-Forwards: 70", b"Max Forwards 70"), True),
    ],
)
def test_malformed_messages_are_refused_and_say_whether_they_can_be_answered(
    data: bytes, answerable: bool
) -> None:
    with pytest.raises(SipParseError) as info:
        parse(data)
    assert (info.value.request is not None) is answerable


def test_response_to_copies_the_transaction_headers_and_tags_to() -> None:
    request = parse(invite(5062, "c6"))
    assert isinstance(request, SipRequest)
    response = parse(response_to(request, 488, to_tag="xyz").encode())
    assert isinstance(response, SipResponse) and response.status == 488
    assert response.to_tag == "xyz" and response.call_id == "c6" and response.cseq == (1, "INVITE")


def test_digest_matches_rfc_2617_example() -> None:
    challenge = digest.Challenge.parse(
        'Digest realm="testrealm@host.com", qop="auth,auth-int", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    value, _ = digest.response(
        challenge, "GET", "/dir/index.html", "Mufasa", "Circle Of Life", cnonce="0a4f113b", nc=1
    )
    assert value == "6629fae49393a05397450978507c4ef1"


def test_sdp_prefers_opus_then_pcma_and_matches_telephone_event_rate() -> None:
    maps = "a=rtpmap:111 opus/48000/2\r\na=rtpmap:101 telephone-event/8000\r\n"
    maps += "a=rtpmap:102 telephone-event/48000\r\n"
    negotiated = sdp.negotiate(sdp.parse_offer(offer(pts="0 8 111 101 102", maps=maps)))
    assert (
        negotiated.codec.name == "opus"
        and negotiated.dtmf is not None
        and negotiated.dtmf.payload_type == 102
    )
    negotiated = sdp.negotiate(sdp.parse_offer(offer(pts="0 8 101")))
    assert (
        negotiated.codec.name == "pcma"
        and negotiated.dtmf is not None
        and negotiated.remote == ("127.0.0.1", 40000)
    )
    answer = sdp.build_answer(negotiated, "127.0.0.1", 41000)
    assert "m=audio 41000 RTP/AVP 8 101" in answer and "a=rtpmap:101 telephone-event/8000" in answer
    with pytest.raises(sdp.NoCommonCodec):
        sdp.negotiate(sdp.parse_offer(offer(pts="18 9", maps="a=rtpmap:18 G729/8000\r\n")))
    with pytest.raises(sdp.SdpError):
        sdp.parse_offer("v=0\r\nm=audio x RTP/AVP 0\r\n")


# --- audio ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "ffmpeg"), [("pcmu", "pcm_mulaw"), ("pcma", "pcm_alaw")])
def test_g711_tables_match_ffmpeg(name: str, ffmpeg: str) -> None:
    samples = np.arange(-32768, 32768, 3, dtype=np.int16)
    encoder = av.CodecContext.create(ffmpeg, "w")
    encoder.sample_rate, encoder.layout, encoder.format = 8000, "mono", "s16"
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = 8000
    reference = b"".join(bytes(p) for p in encoder.encode(frame)) + b"".join(
        bytes(p) for p in encoder.encode(None)
    )
    table = codecs.ULAW_ENCODE if name == "pcmu" else codecs.ALAW_ENCODE
    ours = table[samples.astype(np.int32) + 32768]
    theirs = np.frombuffer(reference, dtype=np.uint8)
    # Decoding is fixed by G.711; encoders may round at the decision levels differently (ours
    # is the reference C code's, ffmpeg rounds to the nearest level): neighbours at most.
    decode = codecs.ULAW_DECODE if name == "pcmu" else codecs.ALAW_DECODE
    differ = ours != theirs
    assert differ.mean() < 0.05
    step = np.abs(decode[ours].astype(np.int32) - decode[theirs].astype(np.int32))[differ]
    level = np.abs(decode[theirs].astype(np.int32))[differ]
    assert np.all(step <= np.maximum(16, level // 8))
    decoder = av.CodecContext.create(ffmpeg, "r")
    decoder.sample_rate, decoder.layout = 8000, "mono"
    decoded = np.concatenate(
        [f.to_ndarray().reshape(-1) for f in decoder.decode(av.Packet(bytes(range(256))))]
    )
    g711 = codecs.G711(name)
    assert np.array_equal(g711.decode_narrow(bytes(range(256))), decoded)


def test_resampler_keeps_telephone_band_and_removes_what_would_alias() -> None:
    down, up = codecs.Resampler(), codecs.Resampler()
    for freq in (300.0, 1000.0, 3000.0):
        pcm48 = sine(freq, 0.4, 48000)
        narrow = np.concatenate([down.down(pcm48[i : i + 960]) for i in range(0, len(pcm48), 960)])
        assert len(narrow) == len(pcm48) // 6
        wide = np.concatenate([up.up(narrow[i : i + 160]) for i in range(0, len(narrow), 160)])
        assert abs(dominant(wide[1920:], 48000) - freq) < 10
        assert 0.8 < wide[1920:].std() / pcm48.std() < 1.1
    high = sine(6000.0, 0.4, 48000)
    narrow = np.concatenate([down.down(high[i : i + 960]) for i in range(0, len(high), 960)])
    assert narrow[400:].std() < 0.01 * high.std()


def test_opus_round_trip_keeps_the_tone() -> None:
    opus = codecs.Opus()
    pcm = sine(700.0, 0.5, 48000)
    out = np.concatenate([opus.decode(opus.encode(pcm[i : i + 960])) for i in range(0, len(pcm), 960)])
    assert abs(dominant(out[4800:], 48000) - 700) < 10


def test_inband_dtmf_finds_every_key_and_nothing_in_speech(tmp_path: Path) -> None:
    detector = dtmf.Goertzel()
    keys = "0123456789*#ABCD"
    pcm = np.concatenate([np.concatenate([dtmf.tone(k, 8000, 80), np.zeros(480, np.int16)]) for k in keys])
    pcm = (pcm + np.random.default_rng(1).normal(0, 200, len(pcm))).astype(np.int16)
    found = [detector.block(pcm[i : i + 160]) for i in range(0, len(pcm) - 159, 160)]
    assert "".join(k for k in found if k) == keys
    if shutil.which("espeak-ng"):  # real speech (the gateway's own prompts) holds no key presses
        from signaling.phone.prompts import ensure_prompts

        speech = codecs.Resampler().down(ensure_prompts(tmp_path)["welcome"])
        speech = speech[: len(speech) // 160 * 160]
        assert [k for k in (detector.block(b) for b in speech.reshape(-1, 160)) if k] == []


def test_rfc4733_reports_each_key_once() -> None:
    events = dtmf.Rfc4733()
    packets = [(bytes([5, 10, 0, 160]), 1000)] * 3 + [(bytes([5, 0x80 | 10, 1, 64]), 1000)] * 3
    packets += [(bytes([11, 10, 0, 160]), 3000)]
    assert [k for k in (events.packet(p, ts) for p, ts in packets) if k] == ["5", "#"]
    # A phone whose clock stalled gives the next key the same timestamp: still a new key.
    assert events.packet(bytes([4, 10, 0, 160]), 3000) == "4"
    assert events.packet(bytes([4, 0x80 | 10, 0, 160]), 3000) is None


def test_mixer_sums_slots_and_leaves_out_the_callers_own_voice() -> None:
    mixer = Mixer("tel-1")
    mixer.set_occupant(0, "hall-a")
    mixer.set_occupant(1, "tel-1")
    mixer.pcm(0, np.full(960, 1000, np.int16))
    mixer.pcm(1, np.full(960, 5000, np.int16))
    mixed = mixer.mix()
    assert mixed is not None and int(mixed[0]) == 1000  # slot 1 is the caller: not heard
    mixer.pcm(0, np.full(960, 1000, np.int16))
    mixer.pcm(2, np.full(960, 30000, np.int16))
    mixed = mixer.mix()
    assert mixed is not None and int(mixed[0]) == 31000
    mixer.pcm(0, np.full(960, 30000, np.int16))
    mixer.pcm(2, np.full(960, 30000, np.int16))
    mixed = mixer.mix()
    assert mixed is not None and int(mixed[0]) == 32767  # clipped, not wrapped
    assert mixer.mix() is None


# --- the IVR -------------------------------------------------------------------------------------


def test_ivr_meeting_id_then_pin_three_tries_then_hang_up() -> None:
    ivr = Ivr()
    assert ivr.start() == Prompt("welcome")
    actions = [ivr.digit(k) for k in "12*345#"]
    assert actions[-1] == Prompt("pin") and ivr.meeting_id == "345"
    assert ivr.digit("#") == Prompt("pin")  # an empty PIN is asked for again, not looked up
    actions = [ivr.digit(k) for k in "99#"]
    assert actions[-1] == Check("345", "99")
    assert ivr.digit("1") is None  # ignored while the server is asked
    assert ivr.refused() == Prompt("wrong")
    assert [ivr.digit(k) for k in "1#2#"][-1] == Check("1", "2")
    assert ivr.refused() == Prompt("wrong")
    assert [ivr.digit(k) for k in "1#2#"][-1] == Check("1", "2")
    assert ivr.refused() == HangUp("goodbye")


def test_throttle_refuses_a_source_after_its_failures_until_the_window_passes() -> None:
    now = [0.0]
    throttle = Throttle(limit=3, window_s=60.0, clock=lambda: now[0])
    for _ in range(3):
        assert throttle.blocked("10.0.0.1|138") == 0.0
        throttle.failure("10.0.0.1|138")
        now[0] += 1
    assert throttle.blocked("10.0.0.1|138") > 50
    assert throttle.blocked("10.0.0.1|139") == 0.0  # another caller through the same trunk
    now[0] = 61.0
    assert throttle.blocked("10.0.0.1|138") == 0.0


# --- SIP over a real socket ----------------------------------------------------------------------


class UdpPeer:
    """A raw SIP peer on the loopback: what it receives, in order."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]

    def send(self, data: bytes, port: int) -> None:
        self.sock.sendto(data, ("127.0.0.1", port))

    async def receive(self, timeout: float = 3.0) -> SipRequest | SipResponse:
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(self.sock, 65536), timeout)
        return parse(data)

    async def responses(self, seconds: float) -> list[SipRequest | SipResponse]:
        out = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (left := deadline - loop.time()) > 0:
            try:
                out.append(await self.receive(left))
            except TimeoutError:
                break
        return out


@pytest.fixture
async def gateway(signaling_server, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A gateway (fast timers: T1 = 50 ms) with a real server behind it."""
    server = await signaling_server()
    url = str(server.make_url("")).rstrip("/")
    async with aiohttp.ClientSession() as http:
        prompts = {name: np.zeros(960, np.int16) for name in ("welcome", "pin", "wrong", "goodbye", "joined")}
        prompts |= {name: np.zeros(960, np.int16) for name in ("unavailable", "ended")}
        ctx = CallContext(
            url,
            Directory(url, "test-admin-key-not-for-production-0123456789", http),
            http,
            prompts,
            Throttle(),
        )
        gw = Gateway(ctx, host="127.0.0.1", port=0, t1=0.05)
        await gw.start()
        yield gw
        await gw.close()


async def test_retransmitted_invite_is_one_call_and_488_is_repeated_until_ack(gateway: Gateway) -> None:
    peer = UdpPeer()
    peer.send(invite(peer.port, "r1", "aa"), gateway.port)
    first = [m for m in await peer.responses(0.6) if isinstance(m, SipResponse)]
    peer.send(invite(peer.port, "r1", "aa"), gateway.port)  # a retransmission: same branch
    again = [m for m in await peer.responses(0.6) if isinstance(m, SipResponse)]
    assert [m.status for m in first][:2] == [100, 200]
    assert {m.status for m in again} <= {100, 200} and again
    assert gateway.counters["invites"] == 1 and len(gateway.dialogs) == 1
    # No common codec: 488, retransmitted over UDP (timer G) until the ACK.
    g729 = offer(pts="18", maps="a=rtpmap:18 G729/8000\r\n")
    peer.send(invite(peer.port, "r2", "bb", g729), gateway.port)
    answers = [m for m in await peer.responses(0.6) if isinstance(m, SipResponse)]
    finals = [m for m in answers if m.status == 488]
    assert len(finals) >= 2, [m.status for m in answers]
    ack = (
        f"ACK sip:dialin@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{peer.port};branch=z9hG4bKbb\r\n"
        f"From: <sip:13812341234@127.0.0.1>;tag=abc\r\nTo: <sip:dialin@127.0.0.1>;tag={finals[0].to_tag}\r\n"
        "Call-ID: r2\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    )
    peer.send(ack.encode(), gateway.port)
    await asyncio.sleep(0.1)
    assert [m for m in await peer.responses(0.5) if isinstance(m, SipResponse) and m.call_id == "r2"] == []


async def test_rtp_from_another_address_is_dropped_and_silence_ends_the_call(gateway: Gateway) -> None:
    gateway.ctx.rtp_timeout_s = 1.0
    peer = UdpPeer()
    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp.bind(("127.0.0.1", 0))
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind(("127.0.0.1", 0))
    body = offer(rtp=rtp.getsockname()[1], pts="0")
    peer.send(invite(peer.port, "t1", "tt", body), gateway.port)
    answer = next(m for m in await peer.responses(0.3) if isinstance(m, SipResponse) and m.status == 200)
    media_port = sdp.parse_offer(answer.body.decode()).port
    ack = (
        f"ACK sip:conference@127.0.0.1:{gateway.port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{peer.port};branch=z9hG4bKack1\r\n"
        f"From: <sip:13812341234@127.0.0.1>;tag=abc\r\nTo: <sip:dialin@127.0.0.1>;tag={answer.to_tag}\r\n"
        "Call-ID: t1\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    )
    peer.send(ack.encode(), gateway.port)
    call = gateway.dialogs["t1"].call
    assert call is not None
    packet = bytes([0x80, 0]) + b"\x00\x01" + b"\x00" * 8 + b"\xff" * 160
    for _ in range(5):  # the right payload from the wrong port: not the caller
        stranger.sendto(packet, ("127.0.0.1", media_port))
    rtp.sendto(packet, ("127.0.0.1", media_port))
    await asyncio.sleep(0.2)
    assert call.rtp.dropped_wrong_source == 5 and call.rtp.packets_in == 1
    await asyncio.sleep(0.1)
    assert gateway.dialogs["t1"].confirmed
    # Nothing more from the caller: the gateway hangs up (any 200 retransmitted before the ACK
    # arrived is skipped).
    bye = next(m for m in await peer.responses(2.5) if isinstance(m, SipRequest))
    assert isinstance(bye, SipRequest) and bye.method == "BYE" and bye.call_id == "t1"
    assert bye.from_tag == answer.to_tag and bye.to_tag == "abc"
    assert gateway.finished[-1][1] == "rtp_timeout" and "t1" not in gateway.dialogs
    rtp.close()
    stranger.close()


async def test_options_cancel_unknown_bye_and_unknown_method(gateway: Gateway) -> None:
    peer = UdpPeer()
    base = (
        "{method} sip:dialin@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{b}\r\n"
        "From: <sip:x@127.0.0.1>;tag=1\r\nTo: <sip:dialin@127.0.0.1>{to}\r\nCall-ID: {cid}\r\n"
        "CSeq: 5 {method}\r\nContent-Length: 0\r\n\r\n"
    )
    expected = {"OPTIONS": 200, "BYE": 481, "SUBSCRIBE": 405, "CANCEL": 481}
    for i, (method, status) in enumerate(expected.items()):
        to = ";tag=nope" if method == "BYE" else ""
        peer.send(
            base.format(method=method, port=peer.port, b=f"o{i}", to=to, cid=f"o{i}").encode(), gateway.port
        )
        response = await peer.receive()
        assert isinstance(response, SipResponse) and response.status == status, (method, response.status)
        if method == "OPTIONS":
            assert "INVITE" in (response.headers.get("allow") or "")


async def test_registration_answers_the_digest_challenge_and_refreshes() -> None:
    """Against a registrar on a UDP socket that checks the digest with hashlib itself."""
    registrar = UdpPeer()
    sent: list[Peer] = []
    layer_box: list[TransactionLayer] = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))

    class Loop(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
            message = parse(data)
            assert isinstance(message, SipResponse)
            layer_box[0].response_received(message)

    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(Loop, sock=sock)
    layer = TransactionLayer(
        lambda peer, data: (sent.append(peer), transport.sendto(data, peer.addr)), t1=0.05
    )
    layer_box.append(layer)
    account = Account(f"127.0.0.1:{registrar.port}", "gw", "s3cret", "trunk.test", expires=2)
    registration = Registration(account, "127.0.0.1", sock.getsockname()[1], layer.request)
    registration.start()
    ok_count = 0
    nonce = "n0nce"
    for _ in range(4):
        request = await registrar.receive(5.0)
        assert isinstance(request, SipRequest) and request.method == "REGISTER"
        auth = request.headers.get("authorization")
        if auth is None:
            challenge = response_to(request, 401, to_tag="r")
            challenge.headers.add(
                "www-authenticate", f'Digest realm="trunk.test", nonce="{nonce}", qop="auth"'
            )
            registrar.sock.sendto(challenge.encode(), ("127.0.0.1", sock.getsockname()[1]))
            continue
        fields = dict(p.strip().split("=", 1) for p in auth[len("Digest ") :].split(","))
        fields = {k: v.strip('"') for k, v in fields.items()}
        ha1 = hashlib.md5(b"gw:trunk.test:s3cret").hexdigest()
        ha2 = hashlib.md5(f"REGISTER:{fields['uri']}".encode()).hexdigest()
        expected = hashlib.md5(
            f"{ha1}:{nonce}:{fields['nc']}:{fields['cnonce']}:auth:{ha2}".encode()
        ).hexdigest()
        assert fields["response"] == expected and fields["username"] == "gw"
        ok = response_to(request, 200, to_tag="r")
        ok.headers.add("contact", f"{request.headers.get('contact')};expires=2")
        registrar.sock.sendto(ok.encode(), ("127.0.0.1", sock.getsockname()[1]))
        ok_count += 1
    assert ok_count == 2  # registered, then refreshed before the 2 s binding lapsed
    assert registration.registered.is_set() and registration.expires_in == 2
    registration._task.cancel()  # type: ignore[union-attr]
    transport.close()


# --- the server's dial-in ------------------------------------------------------------------------


async def test_set_dial_in_and_lookup(signaling_server) -> None:  # type: ignore[no-untyped-def]
    server = await signaling_server()
    url = str(server.make_url("")).rstrip("/")
    async with aiohttp.ClientSession(headers=ADMIN) as http:
        assert (await http.post(f"{url}/api/rooms", json={"room": "council"})).status == 201
        members = [{"identity": "li-wei", "name": "Li Wei", "pin": "778899"}]
        async with http.post(
            f"{url}/api/rooms/council/commands",
            json={"type": "set_dial_in", "pin": "4321", "members": members},
        ) as response:
            assert response.status == 200
            meeting_id = (await response.json())["dial_in"]["meeting_id"]
        assert meeting_id.isdigit() and len(meeting_id) == 9
        async with http.get(f"{url}/api/rooms/council") as response:
            text = await response.text()
            room = await response.json()
        assert room["dial_in"] == {"meeting_id": meeting_id, "pin_set": True}
        assert '"4321"' not in text and '"778899"' not in text  # quoted: timestamps may hold the digits
        lookup = f"{url}/api/dial-in"
        async with http.post(
            lookup, json={"meeting_id": meeting_id, "pin": "4321", "caller": "13812341234"}
        ) as r:
            guest = await r.json()
        assert guest["room"] == "council" and guest["name"] == "电话 138****1234"
        assert guest["identity"].startswith("tel-1234-")
        async with http.post(lookup, json={"meeting_id": meeting_id, "pin": "778899", "caller": "1001"}) as r:
            member = await r.json()
        assert (member["identity"], member["name"]) == ("li-wei", "Li Wei")
        for body in (
            {"meeting_id": meeting_id, "pin": "0000"},
            {"meeting_id": "1" + meeting_id, "pin": "4321"},
        ):
            async with http.post(lookup, json=body) as r:
                assert r.status == 404
        async with http.post(lookup, json={"meeting_id": "x", "pin": "1"}) as r:
            assert r.status == 400
        async with (
            aiohttp.ClientSession() as anonymous,
            anonymous.post(lookup, json={"meeting_id": meeting_id, "pin": "4321"}) as r,
        ):
            assert r.status == 401
        # The meeting ID stays when the PIN changes; the old PIN stops working.
        async with http.post(
            f"{url}/api/rooms/council/commands", json={"type": "set_dial_in", "pin": "5555"}
        ) as r:
            assert (await r.json())["dial_in"]["meeting_id"] == meeting_id
        async with http.post(lookup, json={"meeting_id": meeting_id, "pin": "4321"}) as r:
            assert r.status == 404


def test_room_state_dial_in_round_trips_and_old_documents_load() -> None:
    state = RoomState(room="r")
    state.dial_in.meeting_id = "123456789"
    state.dial_in.pin_hash = "ab" * 32
    state.dial_in.members = [{"identity": "m", "name": "M", "pin_hash": "cd" * 32}]
    again = RoomState.from_json(state.to_json())
    assert again.dial_in == state.dial_in
    old = state.to_json()
    del old["dial_in"]
    assert RoomState.from_json(old).dial_in.meeting_id is None


async def test_sip_info_dtmf_relay_keys_reach_the_call_and_an_unknown_dialog_gets_481(
    gateway: Gateway,
) -> None:
    """Some trunks send keys as SIP INFO (application/dtmf-relay, application/dtmf) instead of RFC 4733."""
    peer = UdpPeer()
    peer.send(invite(peer.port, "i1", "ii", offer(pts="0")), gateway.port)
    answer = next(m for m in await peer.responses(0.3) if isinstance(m, SipResponse) and m.status == 200)
    dialog = (
        f"From: <sip:13812341234@127.0.0.1>;tag=abc\r\nTo: <sip:dialin@127.0.0.1>;tag={answer.to_tag}\r\n"
    )
    head = (
        f"sip:conference@127.0.0.1:{gateway.port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{peer.port};branch="
    )
    peer.send(
        f"ACK {head}z9hG4bKiack\r\n{dialog}Call-ID: i1\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n".encode(),
        gateway.port,
    )
    call = gateway.dialogs["i1"].call
    assert call is not None
    for cseq, (kind, body) in enumerate(
        [("application/dtmf-relay", "Signal=5\r\nDuration=160\r\n"), ("application/dtmf", "7"),
         ("application/dtmf-relay", "Signal=55\r\n"), ("text/plain", "Signal=9\r\n")],  # not keys
        start=2,
    ):  # fmt: skip
        peer.send(
            f"INFO {head}z9hG4bKinfo{cseq}\r\n{dialog}Call-ID: i1\r\nCSeq: {cseq} INFO\r\n"
            f"Content-Type: {kind}\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode(),
            gateway.port,
        )
        response = next(
            m for m in await peer.responses(0.3) if isinstance(m, SipResponse) and m.cseq[1] == "INFO"
        )
        assert response.status == 200 and response.cseq == (cseq, "INFO"), response.status
    assert call.digits == ["5", "7"]
    peer.send(
        f"INFO {head}z9hG4bKinfox\r\n{dialog}Call-ID: nope\r\nCSeq: 9 INFO\r\n"
        "Content-Type: application/dtmf\r\nContent-Length: 1\r\n\r\n1".encode(),
        gateway.port,
    )
    response = next(
        m for m in await peer.responses(0.3) if isinstance(m, SipResponse) and m.cseq[1] == "INFO"
    )
    assert response.status == 481
