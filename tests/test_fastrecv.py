"""The native receive side (conference/sfu/_fastrecv.c) against the pure-Python one, which is the
reference: the same SRTP datagrams, read from real UDP sockets on 127.0.0.1 and unprotected with real
libsrtp sessions, give the same RTP packets, headers, kernel receive times and transport-cc receiver
state; the transport-cc feedback built natively is byte for byte the Python encoder's; and on a real
aiortc leg the socket hook takes the native call."""

from __future__ import annotations

import fcntl
import random
import socket
import struct
import time
from typing import Any

import pylibsrtp
import pytest
from test_aiortc_glue import Pair
from test_sfu_support import wait_for

from conference.sfu import aiortc_glue as glue
from conference.sfu import twcc
from conference.sfu.packet import RtpHeader, parse_header
from conference.sfu.twcc import TransportCcReceiver

needs_native = pytest.mark.skipif(
    not (glue.native_send_available() and glue.native_receive_available()),
    reason="the native receive side was not built (no C compiler?)",
)

TWCC_ID = 3
KEY = bytes(range(44))  # AES-256-GCM: 32 bytes of key, 12 of salt


def sessions() -> tuple[pylibsrtp.Session, pylibsrtp.Session, pylibsrtp.Session]:
    """A sender's outbound session and two receivers' inbound ones with the same key."""
    from pylibsrtp import Policy, Session

    def policy(kind: int) -> Policy:
        p = Policy(key=KEY, ssrc_type=kind, srtp_profile=Policy.SRTP_PROFILE_AEAD_AES_256_GCM)
        p.window_size = 1024
        p.allow_repeat_tx = True
        return p

    return (
        Session(policy(Policy.SSRC_ANY_OUTBOUND)),
        Session(policy(Policy.SSRC_ANY_INBOUND)),
        Session(policy(Policy.SSRC_ANY_INBOUND)),
    )


def rtp(seq: int, form: str, twcc_seq: int, ssrc: int = 0x1234) -> bytes:
    """RTP packets in the forms the receive side meets (and some it must refuse as RTP)."""
    head = struct.pack("!BBHII", 0x90, 96, seq & 0xFFFF, seq * 3000, ssrc)
    payload = bytes(range(seq % 40, seq % 40 + 50))
    one_byte = struct.pack("!HHBHB", 0xBEDE, 1, (TWCC_ID << 4) | 1, twcc_seq & 0xFFFF, 0)
    if form == "browser":  # mid (1 byte) then transport-cc (2 bytes), one-byte form
        ext = struct.pack("!HHBBBHxx", 0xBEDE, 2, 0x10, ord("1"), (TWCC_ID << 4) | 1, twcc_seq & 0xFFFF)
        return head + ext + payload
    if form == "plain":  # no extension block
        return struct.pack("!BBHII", 0x80, 0x80 | 96, seq & 0xFFFF, seq * 3000, ssrc) + payload
    if form == "csrc":  # two CSRCs before the extension block
        head = struct.pack("!BBHIIII", 0x92, 96, seq & 0xFFFF, seq * 3000, ssrc, 7, 8)
        return head + one_byte + payload
    if form == "padded":  # 3 bytes of padding after the payload
        head = struct.pack("!BBHII", 0xB0, 96, seq & 0xFFFF, seq * 3000, ssrc)
        return head + one_byte + payload + b"\x00\x00\x03"
    if form == "two_byte":  # RFC 8285 two-byte form, appbits set
        ext = struct.pack("!HHBBHBBBx", 0x1003, 2, TWCC_ID, 2, twcc_seq & 0xFFFF, 9, 1, 0x55)
        return head + ext + payload
    if form == "wrong_size":  # the transport-cc id with a 1-byte value: not a sequence number
        ext = struct.pack("!HHBBxx", 0xBEDE, 1, TWCC_ID << 4, 0x42)
        return head + ext + payload
    if form == "bad_padding":  # a padding count of 0: parse_header refuses it
        head = struct.pack("!BBHII", 0xB0, 96, seq & 0xFFFF, seq * 3000, ssrc)
        return head + one_byte + payload + b"\x00"
    raise AssertionError(form)


FORMS = ("browser", "plain", "csrc", "padded", "two_byte", "wrong_size", "bad_padding")


def twcc_state(rx: TransportCcReceiver) -> tuple[Any, ...]:
    return (
        list(rx._arrivals),
        list(rx._seqs),
        rx._highest,
        rx._start,
        rx.packets,
        rx._count,
        rx.feedback_sent,
    )


class SocketPair:
    def __init__(self) -> None:
        self.rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rx.bind(("127.0.0.1", 0))
        self.tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def carry(self, datagram: bytes) -> bytes:
        self.tx.sendto(datagram, self.rx.getsockname())
        return self.rx.recv(2048)

    def close(self) -> None:
        self.rx.close()
        self.tx.close()


def python_receive(
    rx: pylibsrtp.Session, sock: socket.socket, datagram: bytes, receiver: TransportCcReceiver
) -> Any:
    """What SrtpDatagramHook._wrap and Session.on_rtp_packet do, in Python."""
    packet = rx.unprotect(datagram)
    stamp = bytearray(16)
    fcntl.ioctl(sock.fileno(), 0x8906, stamp, True)  # SIOCGSTAMP
    seconds, micros = struct.unpack_from("@ll", stamp)
    arrival = seconds * 1_000_000 + micros
    header = parse_header(packet)
    if header is not None:
        receiver.add(packet, header, arrival)
    return packet, header, arrival


@needs_native
def test_rtp_in_gives_what_the_python_receive_gives() -> None:
    tx, rx, native_rx = sessions()
    handle = glue.srtp_session_handle(native_rx)
    python_twcc, native_twcc = TransportCcReceiver(TWCC_ID), TransportCcReceiver(TWCC_ID, native=True)
    wire = SocketPair()
    rnd = random.Random(7)
    seq, twcc_seq, seen_none = 1000, 65500, 0  # transport-wide numbers wrap within the run
    try:
        for n in range(600):
            form = FORMS[n % len(FORMS)] if n < 70 else rnd.choice(FORMS[:5])
            r = rnd.random()  # the transport-wide numbering: mostly in order, some loss and reordering
            twcc_seq += 1 if r < 0.8 else rnd.randint(2, 9) if r < 0.9 else -rnd.randint(1, 30)
            seq += 1
            datagram = wire.carry(tx.protect(rtp(seq, form, twcc_seq)))
            expected = python_receive(rx, wire.rx, datagram, python_twcc)
            packet, header, arrival = glue._fastrecv.rtp_in(
                glue._SRTP_UNPROTECT, handle, datagram, wire.rx.fileno(), native_twcc
            )
            assert (packet, header, arrival) == expected, form
            assert header is None or type(header) is RtpHeader
            seen_none += header is None
            assert twcc_state(native_twcc) == twcc_state(python_twcc), (n, form)
            if n % 23 == 0:  # feedback now and then, each receiver its own way
                assert native_twcc.feedback(1, 2) == python_twcc.feedback(1, 2)
        assert seen_none >= 1 and python_twcc.packets > 400
        # A replay and a tampered datagram are refused alike.
        with pytest.raises(pylibsrtp.Error):
            glue._fastrecv.rtp_in(glue._SRTP_UNPROTECT, handle, datagram, -1, native_twcc)
        tampered = tx.protect(rtp(seq + 1, "browser", twcc_seq))[:-1] + b"\x00"
        with pytest.raises(pylibsrtp.Error):
            glue._fastrecv.rtp_in(glue._SRTP_UNPROTECT, handle, tampered, -1, native_twcc)
        with pytest.raises(ValueError, match="too long"):
            glue._fastrecv.rtp_in(glue._SRTP_UNPROTECT, handle, bytes(1501), -1, None)
        with pytest.raises(TypeError):
            glue._fastrecv.rtp_in(glue._SRTP_UNPROTECT, handle, datagram, -1, object())
    finally:
        wire.close()


@needs_native
def test_without_a_socket_the_arrival_is_the_wall_clock() -> None:
    tx, _, native_rx = sessions()
    handle = glue.srtp_session_handle(native_rx)
    receiver = TransportCcReceiver(TWCC_ID)
    before = int(time.time() * 1e6)
    _, header, arrival = glue._fastrecv.rtp_in(
        glue._SRTP_UNPROTECT, handle, tx.protect(rtp(5, "browser", 77)), -1, receiver
    )
    after = int(time.time() * 1e6)
    assert arrival == -1 and header is not None and header.sequence == 5
    i = (77 + 0x10000) & (twcc._RING - 1)
    assert receiver.packets == 1 and before <= receiver._arrivals[i] <= after


@needs_native
def test_native_feedback_is_the_python_encoders() -> None:
    rnd = random.Random(3)
    for trial in range(200):
        python, native = TransportCcReceiver(TWCC_ID), TransportCcReceiver(TWCC_ID, native=True)
        assert native._native and not python._native
        at, seq = rnd.randint(0, 2**40), rnd.randint(0, 65535)
        for _ in range(rnd.randint(1, 30)):
            for _ in range(rnd.randint(0, 120)):
                r = rnd.random()
                # in order; lost runs; late ones (re-reported); jumps; arrival gaps from 0 to
                # seconds (2-byte and overflowing deltas) and going back in time
                seq += (
                    1
                    if r < 0.8
                    else rnd.randint(2, 40)
                    if r < 0.9
                    else -rnd.randint(1, 20)
                    if r < 0.98
                    else 900
                )
                at += rnd.choice((rnd.randint(0, 3000), rnd.randint(0, 90_000), -rnd.randint(0, 2000), 20))
                if rnd.random() < 0.01:
                    at += rnd.randint(5_000_000, 20_000_000)
                packet = rtp(seq, "browser", seq)
                header = parse_header(packet)
                python.add(packet, header, at)
                native.add(packet, header, at)
            assert native.feedback(9, 8) == python.feedback(9, 8), trial
            assert twcc_state(native) == twcc_state(python)
    assert python.feedback(9, 8) == native.feedback(9, 8) == []


@needs_native
async def test_the_socket_hook_takes_the_native_receive_on_a_real_leg() -> None:
    pair = Pair()
    try:
        await pair.connect()
        got: list[tuple[bytes, Any]] = []
        hook = glue.hook_srtp_datagrams(
            pair.dtls, lambda p: pytest.fail("the Python path ran"), True, lambda p, h: got.append((p, h))
        )
        assert hook.native_receive and hook.protocols >= 1
        receiver = hook.transport_cc = TransportCcReceiver(TWCC_ID)
        hook.kernel_timestamps = True
        started = time.time()
        await wait_for(lambda: len(got) >= 20, 10, "RTP through the native receive")
        assert hook.unprotect_errors == 0 and hook.handler_errors == 0
        assert all(h == parse_header(p) and type(h) is RtpHeader for p, h in got)
        assert abs(hook.arrival_us / 1e6 - started) < 10 and hook.kernel_timestamps
        # aiortc's sender numbers no transport-wide sequence here: nothing noted.
        assert receiver.packets == 0
    finally:
        await pair.close()


def test_without_the_extension_the_python_receive_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(twcc, "_NATIVE_RECEIVE", False)
    assert not glue.native_receive_available()
    assert TransportCcReceiver(TWCC_ID, native=True)._native is False
    from conference.sfu.backend import SfuBackend

    assert SfuBackend(native_send=True).stats()["receive_path"] == "python"
    assert SfuBackend(native_send=False).native_receive is False
