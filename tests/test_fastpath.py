"""The native send (conference/sfu/_fastpath.c) against the pure-Python one: the same packets in give
the same SRTP datagrams on the wire, through the real forwarding path (producer, down-tracks,
rewriters, LegOutput, libsrtp, UDP sockets on 127.0.0.1); a real aiortc peer decodes what the native
send sent; and the switch that forces the pure-Python path."""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import time
from typing import Any

import pylibsrtp
import pytest
from bench_forward import build_package_layout, local_leg, packets, srtp_context, srtp_session
from test_aiortc_glue import Pair
from test_sfu_support import nearest_colour

from conference.config import load_settings
from conference.downlink_estimate import SentPackets
from conference.sfu import aiortc_glue as glue
from conference.sfu import consumer as consumer_module
from conference.sfu import producer as producer_module
from conference.sfu.backend import SfuBackend
from conference.sfu.consumer import DownTrack
from conference.sfu.packet import (
    URI_ABS_SEND_TIME,
    URI_AUDIO_LEVEL,
    URI_TRANSPORT_CC,
    CodecInfo,
    extension_value,
    parse_header,
)
from conference.sfu.producer import Producer
from conference.sfu.stats import Counters

needs_native = pytest.mark.skipif(
    not glue.native_send_available(), reason="the native send was not built (no C compiler?)"
)


class Wire:
    """A UDP socket on 127.0.0.1 that collects what arrives."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.address = self.sock.getsockname()

    def read(self, expected: int, timeout: float = 5.0) -> list[bytes]:
        out: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(out) < expected and time.monotonic() < deadline:
            try:
                out.append(self.sock.recv(2048))
            except BlockingIOError:
                time.sleep(0.01)
        return out

    def close(self) -> None:
        self.sock.close()


def opus_packets(count: int, level_id: int) -> list[bytes]:
    """Opus packets with an audio-level element (one-byte header extension), levels varying."""
    out = []
    for n in range(count):
        ext = struct.pack("!HHBB2x", 0xBEDE, 1, (level_id << 4) | 0, 0x80 | (n * 7) % 128)
        head = struct.pack("!BBHII", 0x90, 111, (40000 + n) & 0xFFFF, 960 * n, 0x5678)
        out.append(head + ext + bytes([0xFC]) + bytes(range(n % 50, n % 50 + 60)))
    return out


SLOT_STATE = ("in_highest", "last_timestamp", "packets_sent", "octets_sent", "in_picture_id", "seq_offset")


TWCC_ID = 5
# The legs' first transport-wide sequence numbers: each wraps through 0 within the run.
TWCC_FIRST = 0xFFE0


class StepClock:
    """time.time() for the forwarding modules: 1 ms a call, the same on both paths, so the send
    times the transport-wide sequence notes compare exactly."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def time(self) -> float:
        self.now += 0.001
        return self.now

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


async def forward(
    native: bool, wire: Wire, tracks: int = 3, sent: list[SentPackets] | None = None
) -> tuple[list[bytes], list[tuple[int, ...]]]:
    """A VP8 and an Opus stream through producers to ``tracks`` slots each, one leg per slot;
    returns the datagrams that arrived, in order, and every slot's state at the end. With ``sent``
    (one per leg) the leg's video and audio slot negotiated transport-cc and stamp from it."""
    random.seed(1919)  # the slots' random starting numbers are then the same on both paths
    legs = [await local_leg(wire.address, native) for _ in range(tracks)]
    producer, down, _ = build_package_layout(tracks, legs)
    assert all((t.send_parts is not None) == native for t in down)
    vp8 = CodecInfo("vp8", 96, 90_000)
    if sent is not None:
        for i, track in enumerate(down):
            # abs-send-time negotiated too: the stamped block carries the sequence in its place.
            track.configure(5000 + i, [vp8], {URI_TRANSPORT_CC: TWCC_ID, URI_ABS_SEND_TIME: 2}, str(i))
            track.rewriter.set_transport_cc(sent[i])
    video = packets(40)
    producer.receive(video[0], parse_header(video[0]))
    for track in down:
        track.set_want("pub", producer)
    for n, data in enumerate(video[1:]):
        if n == 15:  # a new SRTP context on one leg (as a DTLS restart gives): the checks see it
            glue.use_outbound_context(legs[1]._dtls, srtp_context(legs[1]._dtls))
        if n == 25:  # and another nominated pair (the same socket and peer) on another
            pair = legs[2]._connection._nominated[1]
            legs[2]._connection._nominated[1] = type(pair)(
                protocol=pair.protocol, remote_addr=pair.remote_addr
            )
        producer.receive(data, parse_header(data))

    opus = CodecInfo("opus", 111, 48_000)
    counters = Counters()
    upstream: Any = type(
        "Up", (), {"closed": False, "send_rtcp": lambda s, d: True, "send_pli": lambda s, x: None}
    )()
    listener: Any = type("L", (), {"sink": None, "producer_started": lambda s, p: None})()
    speaker = Producer("talker", "audio", [opus], {URI_AUDIO_LEVEL: 1}, upstream, listener, counters)
    slots = []
    for i, leg in enumerate(legs):
        slot = DownTrack("audio", "audio", i, leg, counters)
        ids = {URI_AUDIO_LEVEL: 3} if sent is None else {URI_AUDIO_LEVEL: 3, URI_TRANSPORT_CC: TWCC_ID}
        slot.configure(7000 + i, [opus], ids, f"a{i}")
        if sent is not None:
            slot.rewriter.set_transport_cc(sent[i])
        slots.append(slot)
    for n, data in enumerate(opus_packets(30, 1)):
        speaker.receive(data, parse_header(data))
        if n == 0:
            for slot in slots:
                slot.set_want("talker", speaker)
    # A subscriber's NACK is answered from the cache through the same leg (send, not send_parts).
    down[0].on_nack(down[0].rewriter.last_sequence - 5)
    sent = sum(leg.packets for leg in legs)
    assert sent > tracks * 60
    states = [tuple(getattr(t.rewriter, name) for name in SLOT_STATE) for t in [*down, *slots]]
    return wire.read(sent), states


class CountingFastpath:
    """The native module, counting the packets its rewriter fast path took."""

    def __init__(self, module: Any) -> None:
        self.module = module
        self.fast = 0

    def forward(self, *args: Any) -> Any:
        result = self.module.forward(*args)
        self.fast += result is not None
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.module, name)


@needs_native
async def test_both_paths_put_the_same_bytes_on_the_wire(monkeypatch: pytest.MonkeyPatch) -> None:
    python_wire, native_wire = Wire(), Wire()
    counting = CountingFastpath(glue._fastpath)
    monkeypatch.setattr(glue, "_fastpath", counting)
    copies_before = glue._fastpath.counters()["fast_copies"]
    try:
        on_python, python_state = await forward(False, python_wire)
        on_native, native_state = await forward(True, native_wire)
        fanned_out = glue._fastpath.counters()["fast_copies"] - copies_before
    finally:
        python_wire.close()
        native_wire.close()
    assert len(on_python) == len(on_native) > 180
    assert on_python == on_native
    # The producer's fan-out in C took the settled packets (VP8 and Opus) of every slot and left the
    # slots as Python does; what it did not take (the switches) went through the Python fallback.
    # (One packet after leg 1's new context took the leg's own forward: the fan-out leaves an SSRC
    # without a session on that context to it, which makes the session.)
    assert fanned_out > 150 and counting.fast <= 1
    assert native_state == python_state
    # And they are SRTP a receiver takes: the payloads come back intact.
    from pylibsrtp import Policy, Session

    policy = Policy(
        key=bytes(range(44)),
        ssrc_type=Policy.SSRC_ANY_INBOUND,
        srtp_profile=Policy.SRTP_PROFILE_AEAD_AES_256_GCM,
    )
    policy.window_size = 1024
    rx, native_rx = Session(policy), Session(policy)
    handle = glue.srtp_session_handle(native_rx)
    video, replays = [], 0
    for datagram in on_native:
        try:
            plain = rx.unprotect(datagram)
        except pylibsrtp.Error:
            replays += 1  # the NACKed packet sent again: libsrtp's replay check refuses it
            with pytest.raises(pylibsrtp.Error):
                glue._fastpath.unprotect(glue._SRTP_UNPROTECT, handle, datagram)
            continue
        # The native unprotect (the receive side's) gives the very same packet.
        assert glue._fastpath.unprotect(glue._SRTP_UNPROTECT, handle, datagram) == plain
        if plain[1] & 0x7F == 96:
            video.append(plain)
    assert replays == 1
    assert len(video) > 100 and all(p.endswith(bytes(1100)) for p in video)
    with pytest.raises(pylibsrtp.Error):  # tampered: authentication fails on both
        glue._fastpath.unprotect(glue._SRTP_UNPROTECT, handle, on_native[5][:-1] + b"\x00")


def ring(sent: SentPackets, first: int) -> tuple[int, int, list[tuple[int, int] | None]]:
    """(next sequence number, packets stamped, (send us, size) noted for each from ``first``)."""
    return sent.next_seq, sent.stamped, [sent.get((first + n) & 0xFFFF) for n in range(sent.stamped)]


@needs_native
async def test_both_paths_stamp_the_same_transport_wide_sequence(monkeypatch: pytest.MonkeyPatch) -> None:
    """Slots whose subscriber negotiated transport-cc: the same bytes on the wire from both paths,
    each leg's numbering continuous across its video and audio slot (and the NACK answer) through
    the 16-bit wrap, and the same send times and sizes noted for the leg's estimate."""
    python_wire, native_wire = Wire(), Wire()
    copies_before = glue._fastpath.counters()["fast_copies"]
    results = []
    try:
        for native, wire in ((False, python_wire), (True, native_wire)):
            clock = StepClock()
            monkeypatch.setattr(producer_module, "time", clock)
            monkeypatch.setattr(consumer_module, "time", clock)
            sent = [SentPackets(TWCC_FIRST + i) for i in range(3)]
            datagrams, state = await forward(native, wire, sent=sent)
            results.append((datagrams, state, [ring(s, TWCC_FIRST + i) for i, s in enumerate(sent)]))
        fanned_out = glue._fastpath.counters()["fast_copies"] - copies_before
    finally:
        python_wire.close()
        native_wire.close()
    (on_python, python_state, python_rings), (on_native, native_state, native_rings) = results
    assert len(on_python) == len(on_native) > 180
    assert on_python == on_native
    assert native_state == python_state
    assert python_rings == native_rings
    assert fanned_out > 150  # the stamped slots stayed on the native fan-out
    from pylibsrtp import Policy, Session

    policy = Policy(
        key=bytes(range(44)),
        ssrc_type=Policy.SSRC_ANY_INBOUND,
        srtp_profile=Policy.SRTP_PROFILE_AEAD_AES_256_GCM,
    )
    policy.window_size = 1024
    rx = Session(policy)
    by_leg: dict[int, list[int]] = {0: [], 1: [], 2: []}
    sizes: dict[int, dict[int, int]] = {0: {}, 1: {}, 2: {}}
    for datagram in on_native:
        try:
            plain = rx.unprotect(datagram)
        except pylibsrtp.Error:
            plain = Session(policy).unprotect(datagram)  # the NACK answer: an RTP number sent before
        header = parse_header(plain)
        assert header is not None
        leg = header.ssrc % 1000
        value = extension_value(plain, header, TWCC_ID)
        assert value is not None and len(value) == 2
        assert extension_value(plain, header, 2) is None  # abs-send-time gave way to it
        seq = int.from_bytes(value, "big")
        by_leg[leg].append(seq)
        sizes[leg][seq] = len(plain)
    for leg, seqs in by_leg.items():
        next_seq, stamped, noted = native_rings[leg]
        assert len(seqs) == stamped > 60  # every stamped packet arrived, once
        # One numbering per leg across its slots, through the wrap: 0xFFE0+leg, ..., 0xFFFF, 0, 1, ...
        assert seqs == [(TWCC_FIRST + leg + n) & 0xFFFF for n in range(len(seqs))]
        assert 0 in seqs and next_seq == (seqs[-1] + 1) & 0xFFFF
        # Noted as sent: each packet's RTP size, its send time (the step clock's) in order.
        assert all(entry is not None for entry in noted)
        assert [entry[1] for entry in noted if entry is not None] == [sizes[leg][seq] for seq in seqs]
        times = [entry[0] for entry in noted if entry is not None]
        assert times == sorted(times) and times[0] > 1_700_000_000 * 10**6


@needs_native
async def test_a_packet_too_long_for_libsrtp_is_refused_alike() -> None:
    wire = Wire()
    try:
        native = await local_leg(wire.address, True)
        python = await local_leg(wire.address, False)
        head = struct.pack("!BBHII", 0x80, 96, 1, 2, 3)
        data = bytes(1500)
        with pytest.raises(ValueError, match="packet is too long"):
            python.send(head + data[12:1400])
        with pytest.raises(ValueError, match="packet is too long"):
            native.send_parts(head, data, 12, 1400)
        assert native.packets == 0
        # One byte shorter than pylibsrtp's limit goes out on both.
        assert python.send(head + data[12:1356])
        assert native.send_parts(head, data, 12, 1356)
        assert len(wire.read(2)) == 2
    finally:
        wire.close()


def rtp_of(ssrc: int, seq: int, size: int = 200) -> tuple[bytes, bytes]:
    """(header, whole packet) of a VP8-typed RTP packet of ``ssrc``."""
    head = struct.pack("!BBHII", 0x80, 96, seq & 0xFFFF, seq * 3000, ssrc)
    return head, head + bytes((seq + i) & 0xFF for i in range(size))


def inbound_session() -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(
        key=bytes(range(44)),
        ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND,
        srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM,
    )
    policy.window_size = 1024
    return pylibsrtp.Session(policy)


@pytest.mark.parametrize("native", [False, pytest.param(True, marks=needs_native)])
async def test_each_ssrc_has_a_session_of_its_own_and_the_bytes_are_one_sessions(
    native: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """40 outgoing SSRCs on one leg, each through the 16-bit sequence wrap: the first 30 get a
    session of their own (the limit lowered to 30), the rest stay on the leg's; the datagrams are
    byte for byte what the leg's one ANY_OUTBOUND session gives, and a receiver decodes them."""
    monkeypatch.setattr(glue, "MAX_STREAM_SESSIONS", 30)
    wire = Wire()
    try:
        leg = await local_leg(wire.address, native)
        reference = srtp_session()
        expected, sent = [], 0
        for seq in (65533, 65534, 65535, 65536, 65537):
            for n in range(40):
                head, packet = rtp_of(0x10000 + n, seq)
                expected.append(reference.protect(packet))
                sent += leg.send_parts(head, packet, 12, len(packet)) if native else leg.send(packet)
        assert sent == 200 == leg.packets
        got = wire.read(200)
        assert got == expected
        rx = inbound_session()
        plain = [rx.unprotect(d) for d in got]  # across the wrap: its rollover counter is 1 at the end
        assert plain[-40:] == [rtp_of(0x10000 + n, 65537)[1] for n in range(40)]
        assert len(leg._stream_sessions) == 30
        assert len(leg._streams) == 40 and len(set(leg._streams.values())) == 31
        assert list(leg._streams.values())[30:] == [leg._handle] * 10
        # A new SRTP context (a DTLS restart): the streams start afresh on it.
        glue.use_outbound_context(leg._dtls, srtp_context(leg._dtls))
        head, packet = rtp_of(0x10000, 1)
        assert leg.send_parts(head, packet, 12, len(packet)) if native else leg.send(packet)
        assert list(leg._streams) == [0x10000] and leg._stream_sessions
        assert wire.read(1) == [srtp_session().protect(packet)]
    finally:
        wire.close()


@pytest.mark.parametrize("native", [False, pytest.param(True, marks=needs_native)])
async def test_a_leg_whose_key_was_not_seen_protects_on_its_one_session(native: bool) -> None:
    wire = Wire()
    try:
        leg = await local_leg(wire.address, native)
        # A context made without narrow_send_window: its key unknown.
        glue.use_outbound_context(leg._dtls, srtp_session())
        reference = srtp_session()
        expected = []
        for n in range(5):
            head, packet = rtp_of(0x20000 + n, 7)
            expected.append(reference.protect(packet))
            assert leg.send_parts(head, packet, 12, len(packet)) if native else leg.send(packet)
        assert wire.read(5) == expected
        assert not leg._stream_sessions and set(leg._streams.values()) == {leg._handle}
    finally:
        wire.close()


class RecordingFastpath(CountingFastpath):
    """The native module, noting which libsrtp function each send_rtp call protected with."""

    def __init__(self, module: Any) -> None:
        super().__init__(module)
        self.protects: list[int] = []

    def send_rtp(self, *args: Any) -> Any:
        self.protects.append(args[0])
        return self.module.send_rtp(*args)


@needs_native
async def test_rtcp_goes_out_natively_as_pylibsrtp_protects_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from aiortc.rtp import RtcpPacket

    recording = RecordingFastpath(glue._fastpath)
    monkeypatch.setattr(glue, "_fastpath", recording)
    wire = Wire()
    try:
        leg = await local_leg(wire.address, True)
        head, packet = rtp_of(0x30000, 100)
        assert leg.send_parts(head, packet, 12, len(packet))  # the route is resolved by a packet
        # A receiver report (RR, one block) and a PLI, as the leg sends them.
        rr = struct.pack("!BBHI", 0x81, 201, 7, 0x1234) + struct.pack("!IIIIII", 0x30000, 5, 100, 0, 0, 0)
        pli = struct.pack("!BBHII", 0x81, 206, 2, 0x1234, 0x30000)
        reference = srtp_session()
        reference.protect(packet)
        expected = [reference.protect_rtcp(rr), reference.protect_rtcp(pli)]
        assert leg.send_rtcp(rr) and leg.send_rtcp(pli)
        assert recording.protects.count(glue._SRTCP_PROTECT) == 2
        got = wire.read(3)[1:]
        assert got == expected
        rx = inbound_session()
        assert [type(p).__name__ for d in got for p in RtcpPacket.parse(rx.unprotect_rtcp(d))] == [
            "RtcpRrPacket",
            "RtcpPsfbPacket",
        ]
        # The longest pylibsrtp takes goes out natively too; one word more is refused, as pylibsrtp does.
        longest = struct.pack("!BBHI", 0x80, 204, 337, 0x1234) + bytes(1344)
        assert len(longest) == glue._SRTCP_MAX and leg.send_rtcp(longest)
        assert recording.protects.count(glue._SRTCP_PROTECT) == 3
        assert wire.read(1) == [reference.protect_rtcp(longest)]
        with pytest.raises(ValueError, match="too long"):
            leg.send_rtcp(struct.pack("!BBHI", 0x80, 204, 338, 0x1234) + bytes(1348))
    finally:
        wire.close()


@needs_native
async def test_native_send_on_a_real_aiortc_leg_decodes_at_the_peer() -> None:
    pair = Pair()
    try:
        await pair.connect()
        output = glue.LegOutput(pair.dtls, native=True)
        assert output.native
        from test_sfu_support import wait_for

        await wait_for(lambda: len(pair.packets) >= 10, 10, "raw RTP at the hook")
        ssrc = glue.sender_ssrc(pair.outbound.sender)
        received: list[int] = []

        async def read() -> None:
            while True:
                frame = await pair.echo_receiver.track.recv()
                rgb = frame.to_ndarray(format="rgb24")
                received.append(nearest_colour(tuple(rgb.reshape(-1, 3).mean(axis=0))))

        reader = asyncio.create_task(read())
        start, sent = len(pair.packets), 0
        deadline = time.monotonic() + 10
        pair.publish_sender._send_keyframe()  # type: ignore[attr-defined]
        while not received and time.monotonic() < deadline:
            for data in pair.packets[start:]:
                head = data[:8] + struct.pack("!I", ssrc)
                sent += output.send_parts(head, data, 12, len(data))
            start = len(pair.packets)
            await asyncio.sleep(0.02)
        reader.cancel()
        assert received and received[0] == 0, "the natively sent stream must decode as the red camera"
        assert output.packets == sent > 0 and output.send_errors == 0
        assert output._sockaddr is not None, "the leg's host pair took the native send"
        # The handshake noted the outbound key: the slot's SSRC went out on a session of its own.
        assert ssrc in output._stream_sessions and output._streams[ssrc] != output._handle
        # The handshake made the outbound session with the server's narrower send window: a packet
        # SEND_REPLAY_WINDOW behind its stream's newest is refused, one just inside it is not.
        tx = pair.dtls._tx_srtp
        newest = 5000
        tx.protect(struct.pack("!BBHII", 0x80, 96, newest, 1, 0xC0FFEE) + bytes(20))
        tx.protect(
            struct.pack("!BBHII", 0x80, 96, newest - glue.SEND_REPLAY_WINDOW + 1, 1, 0xC0FFEE) + bytes(20)
        )
        with pytest.raises(pylibsrtp.Error):
            tx.protect(
                struct.pack("!BBHII", 0x80, 96, newest - glue.SEND_REPLAY_WINDOW, 1, 0xC0FFEE) + bytes(20)
            )
    finally:
        await pair.close()


@needs_native
async def test_the_socket_hook_unprotects_natively_on_a_real_leg() -> None:
    pair = Pair()
    try:
        await pair.connect()
        got: list[bytes] = []
        hook = glue.hook_srtp_datagrams(pair.dtls, got.append, native=True)
        assert hook.protocols >= 1
        from test_sfu_support import wait_for

        await wait_for(lambda: len(got) >= 20, 10, "RTP unprotected natively from the sockets")
        assert hook.unprotect_errors == 0 and hook.handler_errors == 0
        assert all(p[0] >> 6 == 2 for p in got)
        assert len({struct.unpack_from("!I", p, 8)[0] for p in got}) == 1
    finally:
        await pair.close()


def test_the_native_send_can_be_switched_off() -> None:
    assert load_settings(environ={"CONFERENCE_NATIVE_SEND": "false"}).native_send is False
    assert load_settings(environ={}).native_send is True
    backend = SfuBackend(native_send=False)
    assert backend.native_send is False and backend.stats()["send_path"] == "python"
    session = srtp_session()
    dtls: Any = type("D", (), {"_tx_srtp": session, "transport": None})()
    dtls.transport = type("T", (), {"_connection": None})()
    assert glue.LegOutput(dtls, native=False).native is False


def test_without_the_extension_the_pure_python_path_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(glue, "_SRTP_PROTECT", 0)
    assert not glue.native_send_available()
    assert SfuBackend(native_send=True).native_send is False
    dtls: Any = type("D", (), {"_tx_srtp": None, "transport": type("T", (), {"_connection": None})()})()
    output = glue.LegOutput(dtls, native=True)
    assert output.native is False
    track = DownTrack("video", "video", 0, output, Counters())
    assert track.send_parts is None


def rewritten_stream() -> list[str]:
    """A VP8 slot's output for a stream with a switch, a resync and a late packet (hex), from the
    rewriter's Python code alone: what the native state must not change."""
    from conference.sfu.packet import ExtensionMap
    from conference.sfu.rewriter import StreamRewriter

    slot = StreamRewriter(
        0xAAAA,
        100,
        "video",
        90_000,
        "vp8",
        ExtensionMap(mid=1, abs_send_time=3),
        b"3",
        first_sequence=100,
        first_timestamp=5000,
        first_picture_id=77,
    )
    stream = packets(40)
    out: list[str] = []
    slot.switch(0x1234)
    for n, data in enumerate(stream):
        if n == 20:
            slot.resync()
        if n == 30:  # a late packet: sent with the offset that applied when it was due
            late = stream[25]
            sent = slot.rewrite(late, parse_header(late), 777, None, False, 1.0 + n)
            out.append("late:" + (sent.hex() if sent is not None else "-"))
        header = parse_header(data)
        sent = slot.rewrite(data, header, 1000 + n, None, n < 2 or n == 21, 1.0 + n)
        out.append(sent.hex() if sent is not None else "-")
    numbers = (*SLOT_STATE, "ts_offset", "tail")
    out.append(repr([getattr(slot, name) for name in numbers]))
    return out


def test_without_the_extension_the_rewriter_keeps_its_numbers_in_python() -> None:
    """A machine without a compiler: no _fastpath, so the per-copy state (the rewriter's numbers,
    the leg's and the down-track's counters) lives in the pure-Python bases, and the same packets
    give the same bytes as on the native RewriterState."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from conference.sfu import rewriter

    script = (
        "import json, sys\n"
        "sys.modules['conference.sfu._fastpath'] = None\n"
        "sys.modules['conference.sfu._fastrecv'] = None\n"
        "sys.path.insert(0, 'tests')\n"
        "from conference.sfu import aiortc_glue, consumer, rewriter\n"
        "assert rewriter.StreamRewriter.__mro__[1] is rewriter._PythonState\n"
        "assert consumer.DownTrack.__mro__[1] is consumer._PythonTrackState\n"
        "assert aiortc_glue.LegOutput.__mro__[1] is aiortc_glue._PythonLegState\n"
        "assert not aiortc_glue.native_send_available()\n"
        "import test_fastpath\n"
        "print(json.dumps(test_fastpath.rewritten_stream()))\n"
    )
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    in_python = json.loads(done.stdout.strip().splitlines()[-1])
    if glue.native_send_available():
        assert rewriter.StreamRewriter.__mro__[1] is glue._fastpath.RewriterState
    here = rewritten_stream()
    assert in_python == here
    assert sum(x != "-" for x in here) > 30 and any(x.startswith("late:") and x != "late:-" for x in here)


class ReportingPair(Pair):
    """The glue's Pair with the server's slot sending its own sender reports, as a Session's do."""

    async def connect(self, **restrict: Any) -> None:
        original = glue.restrict_host_candidates

        def take_over(pc: Any, **kw: Any) -> None:  # runs before the answer: the loop has not started
            glue.take_over_sender_reports(self.outbound.sender)
            original(pc, **kw)

        glue.restrict_host_candidates = take_over  # type: ignore[assignment]
        try:
            await super().connect(**restrict)
        finally:
            glue.restrict_host_candidates = original  # type: ignore[assignment]


async def test_sender_reports_come_from_active_slots_only_and_the_round_trip_still_works() -> None:
    """aiortc's RTCP loop would send SR + SDES every 0.5-1.5 s from every slot, one by one: its loop
    is stopped, an idle slot sends none, an active one's reports (batched by the leg) carry the
    counts and the receiver's RR still gives aiortc's round trip."""
    from aiortc.rtp import RtcpPacket, RtcpSdesPacket
    from test_sfu_support import wait_for

    pair = ReportingPair()
    try:
        await pair.connect()
        sender = pair.outbound.sender
        ssrc = glue.sender_ssrc(sender)
        await wait_for(lambda: len(pair.packets) >= 5, 10, "raw RTP at the hook")
        await asyncio.sleep(3.2)  # at least two of aiortc's report intervals (0.5-1.5 s)
        assert glue.last_sender_report(pair.echo_receiver, ssrc) is None, "an idle slot sent an SR"

        async def send_some() -> None:
            for data in pair.packets[-5:]:
                pair.output.send(data[:8] + struct.pack("!I", ssrc) + data[12:])

        await send_some()
        packets = glue.sender_reports([(sender, 5, 5000, 1234, time.time())])
        assert len(packets) == 1
        parsed = RtcpPacket.parse(packets[0])
        assert [type(p).__name__ for p in parsed] == ["RtcpSrPacket", "RtcpSdesPacket"]
        assert parsed[0].ssrc == ssrc and parsed[0].sender_info.packet_count == 5
        assert isinstance(parsed[1], RtcpSdesPacket) and parsed[1].chunks[0].ssrc == ssrc
        assert pair.output.send_rtcp(packets[0])
        await wait_for(
            lambda: glue.last_sender_report(pair.echo_receiver, ssrc) is not None, 5, "the slot's SR"
        )
        # The endpoint's receiver reports answer our SR: aiortc's sender measures the round trip.
        for _ in range(30):
            await send_some()
            pair.output.send_rtcp(glue.sender_reports([(sender, 5, 5000, 1234, time.time())])[0])
            if glue.sender_round_trip(sender) is not None:
                break
            await asyncio.sleep(0.2)
        assert glue.sender_round_trip(sender) is not None
    finally:
        await pair.close()


def test_many_slots_report_in_packets_that_fit_a_datagram() -> None:
    from aiortc.rtp import RtcpPacket

    senders = [type("S", (), {"_ssrc": 1000 + i, "_RTCRtpSender__cname": "x" * 36})() for i in range(61)]
    packets = glue.sender_reports([(s, 10, 1000, 5, time.time()) for s in senders])
    assert len(packets) == 5 and all(len(p) <= 1100 for p in packets)
    ssrcs = [p.ssrc for data in packets for p in RtcpPacket.parse(data) if type(p).__name__ == "RtcpSrPacket"]
    assert ssrcs == [s._ssrc for s in senders]


def test_a_build_left_from_older_sources_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """An in-place build of an older _fastpath.c (a worktree not rebuilt after a pull) lacks what the
    glue calls: its API number keeps it out, and the pure-Python path runs."""
    if glue._fastpath is None:
        pytest.skip("the native send was not built")
    stale: Any = type("Stale", (), {"set_error": staticmethod(lambda cls: None)})()
    monkeypatch.setattr(glue, "_fastpath", stale)
    assert glue._native_protect() == 0
    stale.API = glue.NATIVE_API
    monkeypatch.setattr(glue, "_fastpath", stale)
    if glue.version("pylibsrtp") == glue.NATIVE_PYLIBSRTP:
        assert glue._native_protect() != 0
