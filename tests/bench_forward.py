"""The forwarding hot path on its own, for a before/after comparison that a busy machine cannot blur.

One VP8 publisher's packets go through ``Producer.receive`` to ``--tracks`` down-tracks whose
outputs only count (no sockets): the parse, the reception statistics, the keyframe check, the packet
cache and each slot's rewrite, exactly the per-packet work of the server minus SRTP and ``sendto``.

    python tests/bench_forward.py --packets 20000 --tracks 10     # timing (process CPU, best of 5)
    valgrind --tool=callgrind --callgrind-out-file=/dev/null python tests/bench_forward.py --packets 0
    valgrind --tool=callgrind ... --packets 4000                  # instructions: the difference / 4000

With ``--leg python`` or ``--leg native`` every down-track sends through a real
``aiortc_glue.LegOutput`` instead: its own libsrtp session (AES-256-GCM, what aiortc peers
negotiate) and its own UDP socket on 127.0.0.1, sending to a local socket, with the pure-Python send
(pylibsrtp's ``protect`` and the event loop transport's ``sendto``) or the native one
(``_fastpath.send_rtp``); only the DTLS handshake and ICE that would set the leg up are left out.
The event loop is uvloop (the server's) unless ``--loop asyncio``.

Runs against the media core of the tree it is started in: the package layout of this session
(``conference/sfu/``) or the single module of earlier ones (``conference/sfu.py``), so the same
script measures both sides of the restructure (figures in docs/performance.md).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import struct
import time
from types import SimpleNamespace
from typing import Any

HEADER = struct.Struct("!BBHII")


TRANSPORT_CC_ID = 5


def packets(count: int, payload_size: int = 1100, transport_cc: bool = False) -> list[bytes]:
    """A VP8 stream: two one-packet keyframes (the stream starts; the slots switch), then delta
    frames of 3 packets each, 15-bit picture ids; with ``transport_cc`` each packet carries a
    transport-wide sequence number (a one-byte header extension block, as Chromium sends)."""
    out = []
    seq, ts, pid = 1000, 90_000, 100
    for n in range(count + 2):
        key = n < 2
        position = 0 if key else (n - 2) % 3
        first, last = position == 0, key or position == 2
        if first:
            pid = (pid + 1) & 0x7FFF
            ts = (ts + 3600) & 0xFFFFFFFF
        descriptor = bytes((0x90 if first else 0x80, 0x80, 0x80 | (pid >> 8), pid & 0xFF))
        # RFC 6386 9.1: the frame tag (P bit clear on a keyframe), then the keyframe start code.
        vp8 = (b"\x00\x00\x00\x9d\x01\x2a" if key else b"\x01\x00\x00") + bytes(payload_size)
        if transport_cc:
            ext = struct.pack("!HHBHB", 0xBEDE, 1, (TRANSPORT_CC_ID << 4) | 1, n & 0xFFFF, 0)
            head = HEADER.pack(0x90, (0x80 if last else 0) | 96, seq, ts, 0x1234) + ext
        else:
            head = HEADER.pack(0x80, (0x80 if last else 0) | 96, seq, ts, 0x1234)
        out.append(head + descriptor + vp8)
        seq = (seq + 1) & 0xFFFF
    return out


class CountingOutput:
    packets = 0

    def send(self, data: bytes) -> bool:
        self.packets += 1
        return True

    def send_rtcp(self, data: bytes) -> bool:
        return True


# The server's send window (aiortc_glue.SEND_REPLAY_WINDOW; aiortc's own 1,024 before it).
SEND_WINDOW = 1024
SRTP_KEY = bytes(range(44))  # AES-256-GCM: 32 bytes of key, 12 of salt


def srtp_session(key: bytes = SRTP_KEY) -> Any:
    """An outbound libsrtp session as aiortc's DTLS transport makes one (``_tx_srtp``)."""
    from pylibsrtp import Policy, Session

    policy = Policy(
        key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=Policy.SRTP_PROFILE_AEAD_AES_256_GCM
    )
    policy.allow_repeat_tx = True
    policy.window_size = SEND_WINDOW
    return Session(policy)


def srtp_context(dtls: Any, key: bytes = SRTP_KEY) -> Any:
    """``srtp_session`` made as the leg's handshake makes it: the key noted on ``dtls`` so the leg
    can give each SSRC a session of its own (trees before that only get the session)."""
    from conference.sfu import aiortc_glue

    session = srtp_session(key)
    remember = getattr(aiortc_glue, "remember_outbound_policy", None)
    if remember is not None:
        from pylibsrtp import Policy

        remember(dtls, session, key, Policy.SRTP_PROFILE_AEAD_AES_256_GCM, SEND_WINDOW)
    return session


async def local_leg(remote: tuple[str, int], native: bool, key: bytes = SRTP_KEY) -> Any:
    """A ``LegOutput`` on a real UDP socket (an aioice ``StunProtocol`` on this machine's
    127.0.0.1, as aioice binds one per candidate) whose nominated pair sends to ``remote``, with a
    fresh SRTP session: the leg as the DTLS handshake and ICE leave it."""
    import aioice.ice

    from conference.sfu.aiortc_glue import LegOutput

    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(
        lambda: aioice.ice.StunProtocol(None),  # type: ignore[arg-type]
        local_addr=("127.0.0.1", 0),
    )
    pair = SimpleNamespace(protocol=protocol, remote_addr=remote)
    connection = SimpleNamespace(_nominated={1: pair})
    dtls = SimpleNamespace(transport=SimpleNamespace(_connection=connection))
    dtls._tx_srtp = srtp_context(dtls, key)
    # (Without ``native`` as LegOutput was before the native send: the script also measures that tree.)
    return LegOutput(dtls, native=True) if native else LegOutput(dtls)  # type: ignore[arg-type]


def build_package_layout(tracks: int, legs: list[Any] | None = None) -> tuple[Any, list[Any], Any]:
    from conference.sfu.consumer import DownTrack
    from conference.sfu.packet import CodecInfo
    from conference.sfu.producer import Producer
    from conference.sfu.stats import Counters

    vp8 = CodecInfo("vp8", 96, 90_000)
    counters = Counters()
    out = CountingOutput()
    upstream = SimpleNamespace(
        closed=False, send_rtcp=out.send_rtcp, send_pli=lambda ssrc: None, last_sender_report=lambda s: None
    )
    listener = SimpleNamespace(sink=None, producer_started=lambda p: None)
    producer = Producer("pub", "video", [vp8], {}, upstream, listener, counters)  # type: ignore[arg-type]
    down = []
    for i in range(tracks):
        track = DownTrack("video", "video", i, out if legs is None else legs[i], counters)
        track.configure(5000 + i, [vp8], {}, str(i))
        down.append(track)
    return producer, down, out if legs is None else SimpleNamespace(legs=legs)


def build_module_layout(tracks: int) -> tuple[Any, list[Any], CountingOutput]:
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters
    from conference.rtp import ExtensionMap, StreamRewriter

    from conference import sfu

    vp8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90_000, payloadType=96)
    out = CountingOutput()
    backend = SimpleNamespace(counters=sfu.Counters(), publish_max_bitrate=1_500_000, closed=False)
    room_media = SimpleNamespace(sink=None, producer_started=lambda p: None)
    session = SimpleNamespace(
        identity="pub", backend=backend, backend_closed=False, room_media=room_media, output=out
    )
    receiver = SimpleNamespace()
    producer = sfu.Producer(session, "video", receiver, [vp8], {})  # type: ignore[arg-type]
    down = []
    for i in range(tracks):
        sender = SimpleNamespace(_ssrc=5000 + i)
        track = sfu.DownTrack(session, "video", "video", i, SimpleNamespace(sender=sender, mid=str(i)))  # type: ignore[arg-type]
        track.rewriter = StreamRewriter(5000 + i, 96, "video", 90_000, "vp8", ExtensionMap(), str(i).encode())
        track.codecs = {"vp8": vp8}
        track.payload_types = {96: vp8}
        down.append(track)
    return producer, down, out


def _sent(out: Any) -> int:
    legs = getattr(out, "legs", None)
    return out.packets if legs is None else sum(leg.packets for leg in legs)


async def run(
    count: int, tracks: int, repeats: int, transport_cc: bool = False, leg: str = "none", stamp: bool = False
) -> None:
    sink = None
    try:
        import conference.sfu.producer  # noqa: F401

        legs = None
        if leg != "none":
            if leg == "native":
                from conference.sfu.aiortc_glue import native_send_available

                if not native_send_available():
                    raise SystemExit("the native send is not built (pip install -e . with a C compiler)")
            sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sink.bind(("127.0.0.1", 0))  # never read: the kernel drops what overflows it
            legs = [await local_leg(sink.getsockname(), leg == "native") for _ in range(tracks)]
        producer, down, out = build_package_layout(tracks, legs)
        layout = "conference/sfu/ package" + ("" if leg == "none" else f" + SRTP and sendto ({leg} send)")
    except ModuleNotFoundError:
        producer, down, out = build_module_layout(tracks)
        layout = "conference/sfu.py module"
    if stamp:  # each slot's subscriber negotiated transport-cc: its leg's sequence on every packet
        from conference.downlink_estimate import SentPackets
        from conference.sfu.packet import URI_ABS_SEND_TIME, URI_TRANSPORT_CC, CodecInfo

        vp8 = CodecInfo("vp8", 96, 90_000)
        for i, track in enumerate(down):
            track.configure(5000 + i, [vp8], {URI_TRANSPORT_CC: 5, URI_ABS_SEND_TIME: 2}, str(i))
            track.rewriter.set_transport_cc(SentPackets())
        layout += " + stamped"
    parse = _parser()
    stream = packets(count * repeats, transport_cc=transport_cc)
    receive = producer.receive
    if transport_cc:  # what Session.on_rtp_packet adds before the producer (transport-cc, RTX)
        from conference.sfu.twcc import TransportCcReceiver

        twcc = TransportCcReceiver(TRANSPORT_CC_ID)
        plain_receive = receive

        rtx = {97: 96}  # the publisher's RTX payload type: one lookup per packet in the session

        def receive(data: bytes, header: Any) -> None:
            twcc.add(data, header, int(time.time() * 1e6))
            if header.payload_type in rtx:
                return
            plain_receive(data, header)

        layout += " + transport-cc"
    producer.receive(stream[0], parse(stream[0]))  # the stream starts: the producer knows its SSRC
    for track in down:
        track.set_want("pub", producer)  # waiting for a keyframe ...
    producer.receive(stream[1], parse(stream[1]))  # ... which switches every slot
    assert all(t.source is producer for t in down), "the slots did not switch"
    rest = stream[2:]
    headers = [parse(p) for p in rest]
    best = float("inf")
    for r in range(repeats):
        sent = _sent(out)
        started = time.process_time()
        for i in range(r * count, (r + 1) * count):
            receive(rest[i], headers[i])
        elapsed = time.process_time() - started
        assert _sent(out) - sent == count * tracks, (_sent(out) - sent, count * tracks)
        best = min(best, elapsed)
    if sink is not None:
        sink.close()
    if count:
        print(
            f"{layout}: {count} packets x {tracks} slots, best of {repeats}: {best / count * 1e6:.2f} us"
            f" per incoming packet, {best / (count * tracks) * 1e6:.2f} us per forwarded copy"
        )


def _parser() -> Any:
    try:
        from conference.sfu.packet import parse_header
    except ModuleNotFoundError:
        from conference.rtp import parse_header
    return parse_header


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--packets", type=int, default=20_000)
    parser.add_argument("--tracks", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--transport-cc", action="store_true", help="packets carry transport-wide seq")
    parser.add_argument(
        "--stamp", action="store_true", help="the slots stamp their leg's transport-wide seq (issue 12)"
    )
    parser.add_argument(
        "--leg",
        choices=("none", "python", "native"),
        default="none",
        help="send through real LegOutputs (SRTP + UDP on 127.0.0.1), pure-Python or native",
    )
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--send-window", type=int, default=0, help="SRTP send window (default: the server's)")
    args = parser.parse_args()
    global SEND_WINDOW
    try:
        from conference.sfu.aiortc_glue import SEND_REPLAY_WINDOW

        SEND_WINDOW = args.send_window or SEND_REPLAY_WINDOW
    except ImportError:  # a tree before the narrower window
        SEND_WINDOW = args.send_window or 1024
    main_coroutine = run(
        args.packets,
        args.tracks,
        args.repeats if args.packets else 1,
        args.transport_cc,
        args.leg,
        args.stamp,
    )
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(main_coroutine)
    else:
        asyncio.run(main_coroutine)


if __name__ == "__main__":
    main()
