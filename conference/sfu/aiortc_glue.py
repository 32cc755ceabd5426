"""Every touch of a private aiortc / aioice name, in one small module.

aiortc's public API decodes everything it receives and encodes everything it sends. The
forwarding core (``conference.sfu``) needs the layers underneath instead:

- incoming: SRTP datagrams are taken straight from the leg's UDP sockets (aioice
  ``StunProtocol.datagram_received``, per instance) and unprotected with the leg's ``_rx_srtp``;
  the DTLS transport's decrypted-RTP entry point (``RTCDtlsTransport._handle_rtp_data``) is
  replaced too, for whatever still takes aiortc's path (e.g. relayed through TURN), so packets
  never reach aiortc's parser, jitter buffer or decoder;
- outgoing: the leg's SRTP context (``_tx_srtp``) and the nominated ICE pair (aioice
  ``Connection._nominated``), so a rewritten packet is protected and sent in one call;
- RTCP: a subscriber's PLI/FIR reaches ``RTCRtpSender._send_keyframe`` and its NACK reaches
  ``RTCRtpSender._retransmit``: both are replaced per instance; keyframe requests go upstream
  through ``RTCRtpReceiver._send_rtcp_pli``; sender reports are built from the sender's
  name-mangled counters, which we keep updated;
- decoding: every ``RTCRtpReceiver`` starts a decoder thread in ``receive()``; we stop it as soon
  as it starts and replace its queue with one that only counts what would have been decoded;
- negotiation results: ``RTCRtpTransceiver._codecs`` / ``_headerExtensions``;
- ICE host candidates: ``aioice.Connection.get_component_candidates`` is replaced per instance to
  pick interfaces, pin a UDP port range and announce a public address.

Name-mangled attributes fail silently when renamed, so :func:`check_aiortc` verifies every name
used here (at import, and the test suite again on real instances) and raises ``GlueError`` with
the name that moved. aiortc and aioice are pinned exactly in pyproject.toml.
"""

from __future__ import annotations

import asyncio
import contextlib
import dis
import fcntl
import inspect
import ipaddress
import queue
import random
import re
import socket
import struct
import time
from asyncio.selector_events import _SelectorDatagramTransport  # type: ignore[attr-defined]
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from typing import Any

import aioice.ice
import aioice.stun
import aioice.turn
import pylibsrtp
from aiortc import (
    MediaStreamTrack,
    RTCDtlsTransport,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCRtpTransceiver,
)
from aiortc import rtcdtlstransport as _aiortc_dtls
from aiortc.rtcicetransport import RTCIceGatherer
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpHeaderExtensionParameters
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpByePacket,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
    unpack_remb_fci,
)
from pylibsrtp._binding import ffi as _srtp_ffi
from pylibsrtp._binding import lib as _srtp_lib

from .native import NATIVE_API, state_base
from .rewriter import LATE_PACKET_WINDOW
from .twcc import native_receive_available

try:  # the optional native send (conference/sfu/_fastpath.c), built by pip install when it can be
    from . import _fastpath
except ImportError:
    _fastpath = None  # type: ignore[assignment]
try:  # the optional native receive side (conference/sfu/_fastrecv.c)
    from . import _fastrecv
except ImportError:
    _fastrecv = None  # type: ignore[assignment]

PINNED = {"aiortc": "1.16.0", "aioice": "0.13.0"}
_SIOCGSTAMP = 0x8906  # linux/sockios.h: the kernel's receive time of the last datagram read
_TIMEVAL = struct.Struct("@ll")

# Name-mangled instance attributes: created in __init__, checked on a real instance.
_SENDER_COUNTERS = (
    "_RTCRtpSender__ntp_timestamp",
    "_RTCRtpSender__rtp_timestamp",
    "_RTCRtpSender__octet_count",
    "_RTCRtpSender__packet_count",
)
# The round trip aiortc's sender measures from receiver reports of its sender reports (seconds).
_SENDER_RTT = "_RTCRtpSender__rtt"
# What aiortc's RTCP loop keeps: the last SR (middle of its NTP time, when it went) for that round
# trip, the CNAME, and the events its stop() waits for.
_SENDER_LSR = ("_RTCRtpSender__lsr", "_RTCRtpSender__lsr_time")
_SENDER_CNAME = "_RTCRtpSender__cname"
_SENDER_RTCP_EVENTS = ("_RTCRtpSender__rtcp_started", "_RTCRtpSender__rtcp_exited")
_RECEIVER_DECODER = (
    "_RTCRtpReceiver__decoder_queue",
    "_RTCRtpReceiver__decoder_thread",
)
_RECEIVER_STOP_DECODER = "_RTCRtpReceiver__stop_decoder"
# The middle 32 bits of the NTP time of the publisher's last sender report, and when it arrived.
_RECEIVER_LSR = ("_RTCRtpReceiver__lsr", "_RTCRtpReceiver__lsr_time")

# (class, method name, parameter names after self, coroutine?)
_METHODS: list[tuple[type, str, tuple[str, ...], bool]] = [
    (RTCDtlsTransport, "_handle_rtp_data", ("data", "arrival_time_ms"), True),
    (RTCDtlsTransport, "_handle_rtcp_data", ("data",), True),
    (RTCDtlsTransport, "_send_rtp", ("data",), True),
    (RTCRtpSender, "_send_keyframe", (), False),
    (RTCRtpSender, "_next_encoded_frame", ("codec",), True),
    (RTCRtpSender, "_retransmit", ("sequence_number",), True),
    (RTCRtpSender, "_handle_rtcp_packet", ("packet",), True),
    (RTCRtpSender, "_send_rtcp", ("packets",), True),
    (RTCRtpSender, "_run_rtcp", (), True),
    (RTCRtpReceiver, "_send_rtcp_pli", ("media_ssrc",), True),
    # Used by the tests (a subscriber's NACK, sent as a browser would): checked here all the same.
    (RTCRtpReceiver, "_send_rtcp_nack", ("media_ssrc", "lost"), True),
    (RTCRtpReceiver, "receive", ("parameters",), True),
    (RTCRtpReceiver, _RECEIVER_STOP_DECODER, (), False),
    (aioice.ice.Connection, "get_component_candidates", ("component", "addresses", "timeout"), True),
    # lenient_consent (load endpoints) replaces the consent task with its own checks.
    (aioice.ice.Connection, "build_request", ("pair", "nominate"), False),
    (aioice.ice.Connection, "query_consent", (), True),
]


class GlueError(RuntimeError):
    """aiortc/aioice changed under us: a private name this server relies on moved."""


def _fail(what: str) -> GlueError:
    return GlueError(
        f"aiortc/aioice internals changed: {what}. conference.sfu.aiortc_glue is written for "
        f"aiortc=={PINNED['aiortc']} and aioice=={PINNED['aioice']}; re-check it before upgrading."
    )


def check_aiortc() -> None:
    """Verify versions and every private class-level name used here; raise GlueError if moved."""
    for package, wanted in PINNED.items():
        found = version(package)
        if found != wanted:
            raise _fail(f"{package} is {found}, expected {wanted}")
    for cls, name, params, is_coroutine in _METHODS:
        method = getattr(cls, name, None)
        if method is None or not callable(method):
            raise _fail(f"{cls.__name__}.{name} is missing")
        got = tuple(p for p in inspect.signature(method).parameters if p != "self")
        if got != params:
            raise _fail(f"{cls.__name__}.{name}{got} no longer takes {params}")
        if inspect.iscoroutinefunction(method) != is_coroutine:
            raise _fail(f"{cls.__name__}.{name} changed between sync and async")
    if "datagram_received" not in vars(aioice.ice.StunProtocol):
        raise _fail("aioice StunProtocol.datagram_received is missing")
    for name in ("_ssrc", "_rtx_ssrc"):
        if name not in RTCRtpSender.__init__.__code__.co_names:
            raise _fail(f"RTCRtpSender no longer sets {name}")
    if "_queue" not in aioice.ice.Connection.__init__.__code__.co_names or "data_received" not in vars(
        aioice.ice.Connection
    ):
        raise _fail("aioice Connection no longer queues data in _queue through data_received")
    for name in ("_nominated", "_protocols", "_local_candidates", "_query_consent_task"):
        if name not in aioice.ice.Connection.__init__.__code__.co_names:
            raise _fail(f"aioice Connection no longer sets {name}")
    for module_name in (
        "StunProtocol",
        "Candidate",
        "candidate_foundation",
        "candidate_priority",
        "CONSENT_INTERVAL",
    ):
        if not hasattr(aioice.ice, module_name):
            raise _fail(f"aioice.ice.{module_name} is missing")
    setup = getattr(_aiortc_dtls.RTCDtlsTransport, "_setup_srtp", None)
    if setup is None or "Session" not in setup.__code__.co_names or not hasattr(_aiortc_dtls, "Session"):
        raise _fail(
            "RTCDtlsTransport._setup_srtp no longer makes its sessions with Session (narrow_send_window)"
        )
    # The native fan-out reads the outbound context and the nominated pairs without asking aiortc
    # and aioice each time (LegOutput): aiortc must set _tx_srtp only as the handshake ends, and
    # aioice change its dict of nominated pairs in place.
    if _stored_in(_aiortc_dtls.RTCDtlsTransport, "_tx_srtp") != {"__init__", "_setup_srtp"}:
        raise _fail("RTCDtlsTransport sets _tx_srtp outside __init__ and _setup_srtp")
    if _stored_in(aioice.ice.Connection, "_nominated") != {"__init__"}:
        raise _fail("aioice Connection rebinds _nominated outside __init__")
    reader = _SelectorDatagramTransport._read_ready.__code__.co_names
    for name in ("_conn_lost", "_sock", "recvfrom", "_protocol", "datagram_received"):
        if name not in reader:
            raise _fail(f"asyncio's datagram transport no longer uses {name}")


def _stored_in(cls: type, name: str) -> set[str]:
    """The methods of ``cls`` (their nested functions included) that assign ``self.<name>``."""

    def stores(code: Any) -> bool:
        if any(i.opname == "STORE_ATTR" and i.argval == name for i in dis.get_instructions(code)):
            return True
        return any(stores(c) for c in code.co_consts if inspect.iscode(c))

    found = set()
    for attr, value in vars(cls).items():
        function = getattr(value, "__func__", value)
        code = getattr(function, "__code__", None)
        if code is not None and stores(code):
            found.add(attr)
    return found


def check_instances(pc: RTCPeerConnection) -> None:
    """Verify the per-instance private attributes on a real peer connection's objects."""
    for transceiver in pc.getTransceivers():
        for name in (*_SENDER_COUNTERS, _SENDER_RTT, *_SENDER_LSR, _SENDER_CNAME, *_SENDER_RTCP_EVENTS):
            if not hasattr(transceiver.sender, name):
                raise _fail(f"RTCRtpSender has no attribute {name}")
        # The encoder and remote streams: names the tests reach (tests/test_sfu_support.py and
        # tests/test_endpoint.py), checked here so a changed aiortc fails here first.
        if not hasattr(transceiver.sender, "_RTCRtpSender__encoder"):
            raise _fail("RTCRtpSender has no attribute _RTCRtpSender__encoder")
        for name in (*_RECEIVER_DECODER, *_RECEIVER_LSR, "_RTCRtpReceiver__remote_streams"):
            if not hasattr(transceiver.receiver, name):
                raise _fail(f"RTCRtpReceiver has no attribute {name}")
        for name in ("_codecs", "_headerExtensions"):
            if not hasattr(transceiver, name):
                raise _fail(f"RTCRtpTransceiver has no attribute {name}")
        dtls = transceiver.receiver.transport
        for table in ("ssrc_table", "senders"):
            if not isinstance(getattr(getattr(dtls, "_rtp_router", None), table, None), dict):
                raise _fail(f"RTCDtlsTransport has no _rtp_router.{table}")
        for name in ("_rx_srtp", "_tx_srtp", "_rtp_header_extensions_map"):
            if not hasattr(dtls, name):
                raise _fail(f"RTCDtlsTransport has no attribute {name}")
        if not hasattr(dtls.transport, "_connection"):
            raise _fail("RTCIceTransport has no attribute _connection")
        if not hasattr(dtls.transport.iceGatherer, "_connection"):
            raise _fail("RTCIceGatherer has no attribute _connection")


check_aiortc()


# --- negotiation results -------------------------------------------------------------------


def negotiated_codecs(transceiver: RTCRtpTransceiver) -> list[RTCRtpCodecParameters]:
    """The codecs agreed for this m-line, preferred first (after the answer is applied)."""
    return list(transceiver._codecs)


def negotiated_extensions(transceiver: RTCRtpTransceiver) -> list[RTCRtpHeaderExtensionParameters]:
    return list(transceiver._headerExtensions)


# RFC 8285 section 8: a=extmap:<id>["/"<direction>] <URI> [<extension attributes>].
_EXTMAP_ATTRIBUTES = re.compile(r"^(a=extmap:\S+)[ \t]+(\S+)[ \t]+[^\r\n]*", re.MULTILINE)


def parseable_sdp(sdp: str) -> str:
    """The remote SDP as aiortc's parser takes it: RFC 8285 extension attributes removed.

    aiortc splits an ``a=extmap`` value into exactly id and URI and fails on anything after the URI
    ("too many values to unpack"), e.g. GStreamer's ``a=extmap:2 urn:ietf:params:rtp-hdrext:ssrc-
    audio-level vad=on``. The attributes only tell how the sender fills the element (``vad=on``:
    the V bit is set); the forwarder needs the id and URI alone, so nothing else changes."""
    if "a=extmap:" not in sdp:
        return sdp
    return _EXTMAP_ATTRIBUTES.sub(r"\1 \2", sdp)


def leg_transport(pc: RTCPeerConnection) -> RTCDtlsTransport:
    """The one DTLS transport of a max-bundle peer connection."""
    return pc.getTransceivers()[0].receiver.transport


# --- ICE consent (load endpoints) -------------------------------------------------------------

CONSENT_EXPIRY_S = 30.0  # RFC 7675 section 5.1: consent lasts 30 s from the last answered check


def lenient_consent(pc: RTCPeerConnection) -> None:
    """Check consent the RFC 7675 way on this peer connection once ICE has connected: consent
    lasts 30 s from the last answered check, and an answer to a retransmitted request counts.

    aioice sends single requests that must be answered within 0.5 s and hangs up after six misses
    in a row, about 30 s: a peer whose answers take longer (a round trip over 0.5 s on a congested
    mobile link, or a busy process that reads its socket late) is cut off although it is there.
    Seen in the soak: the load generator's chair, receiving 2.5k packets/s on one socket, closed its
    own connection a minute in while the server went on sending. Used on the server's legs and on
    the load generator's endpoints."""

    def connected() -> None:
        if pc.iceConnectionState != "completed":
            return
        for transport in {t.receiver.transport.transport for t in pc.getTransceivers()}:
            connection = transport._connection
            task = connection._query_consent_task
            if task is not None and not getattr(task, "lenient", False):
                task.cancel()
                task = connection._query_consent_task = asyncio.ensure_future(_consent(connection))
                task.lenient = True  # type: ignore[attr-defined]

    pc.on("iceconnectionstatechange", connected)
    connected()


async def _consent(connection: aioice.ice.Connection) -> None:
    answered = time.monotonic()
    while True:
        await asyncio.sleep(aioice.ice.CONSENT_INTERVAL * (0.8 + 0.4 * random.random()))
        assert connection.remote_password is not None
        for pair in list(connection._nominated.values()):
            request = connection.build_request(pair, nominate=False)
            with contextlib.suppress(aioice.stun.TransactionError):
                await pair.protocol.request(
                    request,
                    pair.remote_addr,
                    integrity_key=connection.remote_password.encode("utf8"),
                    retransmissions=2,  # answered within 3.5 s
                )
                answered = time.monotonic()
        if time.monotonic() - answered > CONSENT_EXPIRY_S:
            connection._query_consent_task = None
            await connection.close()
            return


# --- incoming RTP ---------------------------------------------------------------------------

RtpHandler = Callable[[bytes, int], Awaitable[None]]


# libsrtp's send-side replay window per outgoing stream: aiortc asks for 1,024 packets, and libsrtp
# shifts the whole window on every packet protected (1.4k instructions a copy, a tenth of the
# forwarding). The server never sends a packet further back than the rewriter's LATE_PACKET_WINDOW.
SEND_REPLAY_WINDOW = LATE_PACKET_WINDOW


def narrow_send_window(dtls: RTCDtlsTransport, window: int = SEND_REPLAY_WINDOW) -> None:
    """Give the leg's outbound SRTP session (made when the DTLS handshake ends) a replay window of
    ``window`` packets instead of aiortc's 1,024; the inbound one keeps aiortc's."""
    original = dtls._setup_srtp

    def setup_srtp() -> None:
        plain = _aiortc_dtls.Session

        def session(policy: Any = None) -> Any:
            if policy is not None and policy.ssrc_type == pylibsrtp.Policy.SSRC_ANY_OUTBOUND:
                policy.window_size = window
                made = plain(policy)
                remember_outbound_policy(dtls, made, bytes(policy.key), policy.srtp_profile, window)
                return made
            return plain(policy)

        _aiortc_dtls.Session = session  # synchronous: only this handshake's sessions see it
        try:
            original()
        finally:
            _aiortc_dtls.Session = plain
        outbound_context_changed(dtls)

    dtls._setup_srtp = setup_srtp  # type: ignore[method-assign]


def use_outbound_context(dtls: RTCDtlsTransport, session: pylibsrtp.Session) -> None:
    """Give the leg a new outbound SRTP context, as a handshake does (the tests' DTLS restart)."""
    dtls._tx_srtp = session
    outbound_context_changed(dtls)


def outbound_context_changed(dtls: RTCDtlsTransport) -> None:
    """Tell the leg's outputs that ``dtls._tx_srtp`` is new: aiortc sets it only as the handshake
    ends (``check_aiortc`` verifies that), so the native fan-out need not look at it per copy."""
    for output in getattr(dtls, "_conference_outputs", ()):
        output._use_context(dtls._tx_srtp)


def remember_outbound_policy(
    dtls: RTCDtlsTransport, session: pylibsrtp.Session, key: bytes, profile: int, window: int
) -> None:
    """Note what the leg's outbound session was made with, so ``outbound_stream_session`` can make
    sessions of one SSRC each with the same key."""
    dtls._conference_tx_policy = (session, key, profile, window)  # type: ignore[attr-defined]


def outbound_stream_session(
    dtls: RTCDtlsTransport, context: pylibsrtp.Session, ssrc: int
) -> pylibsrtp.Session:
    """A session of its own for the outgoing stream ``ssrc`` with the key of the leg's outbound
    session ``context``: the same bytes on the wire, but libsrtp finds the stream at once instead of
    walking the leg's list of every SSRC it sent (a cache miss each, 2.6 % of the server's cycles
    at 50 endpoints). ``context`` itself when its key was not noted (``narrow_send_window``)."""
    noted = getattr(dtls, "_conference_tx_policy", None)
    if noted is None or noted[0] is not context:
        return context
    _, key, profile, window = noted
    policy = pylibsrtp.Policy(
        key=key, ssrc_type=pylibsrtp.Policy.SSRC_SPECIFIC, ssrc_value=ssrc, srtp_profile=profile
    )
    policy.allow_repeat_tx = True  # as aiortc's outbound policy: a NACK answer repeats an index
    policy.window_size = window
    return pylibsrtp.Session(policy)


def hook_incoming_rtp(dtls: RTCDtlsTransport, handler: RtpHandler) -> None:
    """Send every decrypted incoming RTP packet of this transport to ``handler(data, arrival_ms)``
    instead of aiortc's parser and receivers (RTCP still goes to aiortc)."""
    dtls._handle_rtp_data = handler  # type: ignore[method-assign]


TransportFeedbackHandler = Callable[[bytes, int], None]


def hook_transport_feedback(dtls: RTCDtlsTransport, handler: TransportFeedbackHandler) -> None:
    """Hand each transport-cc feedback packet (RTCP PT 205, FMT 15) in the leg's decrypted
    compound RTCP to ``handler(data, offset)``; the rest keeps aiortc's path. aiortc parses FMT 15
    as a NACK list (a garbage one) and keeps no raw bytes, so the packets are taken out before."""
    original = dtls._handle_rtcp_data

    async def handle_rtcp_data(data: bytes) -> None:
        pos, end, rest = 0, len(data), None
        while pos + 4 <= end:
            size = ((data[pos + 2] << 8) | data[pos + 3]) * 4 + 4
            if data[pos + 1] == 205 and data[pos] & 0x1F == 15 and pos + size <= end:
                handler(data, pos)
                if rest is None:
                    rest = bytearray(data[:pos])
            elif rest is not None:
                rest += data[pos : pos + size]
            pos += size
        if rest is None:
            await original(data)
        elif rest:
            await original(bytes(rest))

    dtls._handle_rtcp_data = handle_rtcp_data  # type: ignore[method-assign]


class SrtpDatagramHook:
    """Takes a leg's SRTP packets straight from its UDP sockets: unprotect with the leg's SRTP
    context and hand the RTP packet to ``on_rtp`` in the same callback.

    aiortc's way costs, per packet, aioice's attempt to parse it as STUN (a raised ValueError), an
    asyncio.Queue hop, a task wake-up and two coroutine frames before the DTLS transport unprotects
    it. RTCP, STUN and DTLS keep aiortc's path, and so does everything that arrives before the DTLS
    handshake has produced the SRTP keys. Only aioice's own host/reflexive sockets are hooked: data
    relayed through TURN arrives wrapped and takes aiortc's path (``hook_incoming_rtp``).

    With ``on_parsed`` and the native receive side built (``_fastrecv``), one native call per
    datagram unprotects it, reads the kernel's receive time, parses the header and notes the
    packet in ``transport_cc`` (when set), then ``on_parsed(packet, header)`` gets it; ``on_rtp``
    is the pure-Python path, which does the same in Python (the reference)."""

    __slots__ = (
        "_dtls",
        "_native",
        "_on_parsed",
        "_on_rtp",
        "_stamp",
        "arrival_us",
        "handler_errors",
        "kernel_timestamps",
        "packets",
        "protocols",
        "transport_cc",
        "unprotect_errors",
    )

    def __init__(
        self,
        dtls: RTCDtlsTransport,
        on_rtp: Callable[[bytes], None],
        native: bool = False,
        on_parsed: Callable[[bytes, Any], None] | None = None,
    ) -> None:
        self._dtls = dtls
        self._on_rtp = on_rtp
        # Unprotect through _fastpath (the same libsrtp session) instead of pylibsrtp's wrapper.
        self._native = native and native_send_available()
        self._on_parsed = on_parsed if self._native and native_receive_available() else None
        self.packets = 0
        self.unprotect_errors = 0
        self.handler_errors = 0
        self.protocols = 0
        # With kernel_timestamps, arrival_us is when the kernel received the datagram being handed
        # to on_rtp (SIOCGSTAMP, wall clock): transport-cc must not see the event loop's delays.
        self.kernel_timestamps = False
        self.arrival_us = 0
        self._stamp = bytearray(16)
        self.transport_cc: Any = None  # the leg's twcc.TransportCcReceiver (the native path notes packets)

    @property
    def native_receive(self) -> bool:
        """Whether datagrams take the native receive call (``_fastrecv.rtp_in``)."""
        return self._on_parsed is not None

    def install(self) -> int:
        """Hook every gathered socket of the leg not hooked yet; returns how many are hooked."""
        for protocol in self._dtls.transport._connection._protocols:
            if type(protocol) is aioice.ice.StunProtocol and "datagram_received" not in vars(protocol):
                sock = protocol.transport.get_extra_info("socket") if protocol.transport else None
                fd = sock.fileno() if sock is not None else -1
                wrap = self._wrap_native if self._on_parsed is not None else self._wrap
                protocol.datagram_received = wrap(protocol.datagram_received, fd)  # type: ignore[method-assign]
                self.protocols += 1
        return self.protocols

    def _wrap_native(self, original: Callable[[Any, Any], None], fd: int) -> Callable[[Any, Any], None]:
        dtls = self._dtls
        on_parsed = self._on_parsed
        assert on_parsed is not None
        srtp_error = pylibsrtp.Error
        rtp_in = _fastrecv.rtp_in
        session: list[Any] = [None, 0]  # the rx session the handle is of, the handle

        def datagram_received(data: bytes, addr: Any) -> None:
            if len(data) > 12 and 127 < data[0] < 192 and not 191 < data[1] < 209:
                srtp = dtls._rx_srtp
                if srtp is not None:
                    if srtp is not session[0]:
                        session[0], session[1] = srtp, srtp_session_handle(srtp)
                    stamped = self.kernel_timestamps and fd >= 0
                    try:
                        packet, header, arrival = rtp_in(
                            _SRTP_UNPROTECT, session[1], data, fd if stamped else -1, self.transport_cc
                        )
                    except srtp_error:
                        self.unprotect_errors += 1
                        return
                    self.packets += 1
                    if stamped:
                        if arrival < 0:
                            self.kernel_timestamps = False  # not Linux: the caller's clock it is
                        else:
                            self.arrival_us = arrival
                    try:
                        on_parsed(packet, header)
                    except Exception:
                        self.handler_errors += 1
                    return
            original(data, addr)

        return datagram_received

    def _wrap(self, original: Callable[[Any, Any], None], fd: int) -> Callable[[Any, Any], None]:
        dtls = self._dtls
        on_rtp = self._on_rtp
        srtp_error = pylibsrtp.Error
        stamp = self._stamp
        ioctl = fcntl.ioctl
        unpack = _TIMEVAL.unpack_from
        native_unprotect = _fastpath.unprotect if self._native else None
        session: list[Any] = [None, 0]  # the rx session the handle is of, the handle

        def datagram_received(data: bytes, addr: Any) -> None:
            # SRTP first byte 128-191; RTCP as aiortc tells it (second byte 192-208) keeps its path.
            if len(data) > 12 and 127 < data[0] < 192 and not 191 < data[1] < 209:
                srtp = dtls._rx_srtp
                if srtp is not None:
                    try:
                        if native_unprotect is None:
                            packet = srtp.unprotect(data)
                        else:
                            if srtp is not session[0]:
                                session[0], session[1] = srtp, srtp_session_handle(srtp)
                            packet = native_unprotect(_SRTP_UNPROTECT, session[1], data)
                    except srtp_error:
                        self.unprotect_errors += 1
                        return
                    self.packets += 1
                    if self.kernel_timestamps and fd >= 0:
                        try:
                            ioctl(fd, _SIOCGSTAMP, stamp, True)
                            seconds, micros = unpack(stamp)
                            self.arrival_us = seconds * 1_000_000 + micros
                        except OSError:
                            self.kernel_timestamps = False  # not Linux: the caller's clock it is
                    try:
                        on_rtp(packet)
                    except Exception:
                        self.handler_errors += 1
                    return
            original(data, addr)

        return datagram_received


def hook_srtp_datagrams(
    dtls: RTCDtlsTransport,
    on_rtp: Callable[[bytes], None],
    native: bool = False,
    on_parsed: Callable[[bytes, Any], None] | None = None,
) -> SrtpDatagramHook:
    """Install a :class:`SrtpDatagramHook` on the leg's sockets (call after ICE gathering, i.e.
    once the local description is set); ``native``: unprotect through the native helper, and with
    ``on_parsed`` take the whole receive step natively (``SrtpDatagramHook``)."""
    hook = SrtpDatagramHook(dtls, on_rtp, native, on_parsed)
    hook.install()
    return hook


# --- outgoing RTP ---------------------------------------------------------------------------


class SilentTrack(MediaStreamTrack):
    """A track that never yields: an RTCRtpSender fed with it never encodes or sends anything, while
    keeping its SSRC, mid and RTCP; the forwarder (or a raw test publisher) sends its packets."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def recv(self) -> Any:
        await self._never
        raise RuntimeError("unreachable")

    def stop(self) -> None:
        if not self._never.done():
            self._never.cancel()
        super().stop()


def sender_ssrc(sender: RTCRtpSender) -> int:
    """The SSRC aiortc picked for this sender (and signalled in the SDP)."""
    return sender._ssrc  # type: ignore[no-any-return]


def sender_rtx_ssrc(sender: RTCRtpSender) -> int:
    """The SSRC aiortc picked for this sender's RTX stream (``a=ssrc-group:FID`` in the SDP)."""
    return sender._rtx_ssrc  # type: ignore[no-any-return]


# --- the native send -------------------------------------------------------------------------

# The native send calls the very libsrtp copy pylibsrtp loaded, with the session pylibsrtp created
# (``Session._srtp``, an ``srtp_t *``): the SRTP state stays one. Written for pylibsrtp 1.0.0, whose
# ``Session.protect`` is ``srtp_protect(ctx, buffer, &len)`` on a 1500-byte buffer; any other
# version (or a build without the extension) runs the pure-Python path.
NATIVE_PYLIBSRTP = "1.0.0"


# The extension's interface these sources are written for is native.NATIVE_API (_fastpath.API):
# an in-place build left from older sources (e.g. a worktree not rebuilt after a pull) runs the
# pure-Python path instead.


def _native_protect() -> int:
    """The address of libsrtp's srtp_protect for the native send; 0 if it cannot be used."""
    if _fastpath is None or version("pylibsrtp") != NATIVE_PYLIBSRTP:
        return 0
    if getattr(_fastpath, "API", 1) != NATIVE_API:
        return 0
    if "_srtp" not in pylibsrtp.Session.__init__.__code__.co_names:
        return 0
    wanted = "<ctype 'srtp_err_status_t(*)(struct srtp_ctx_t_ *, void *, int *)'>"
    functions = (_srtp_lib.srtp_protect, _srtp_lib.srtp_unprotect, _srtp_lib.srtp_protect_rtcp)
    if any(str(_srtp_ffi.typeof(f)) != wanted for f in functions):
        return 0
    _fastpath.set_error(pylibsrtp.Error)
    if _fastrecv is not None:
        _fastrecv.set_error(pylibsrtp.Error)
    return int(_srtp_ffi.cast("uintptr_t", _srtp_ffi.addressof(_srtp_lib, "srtp_protect")))


_SRTP_PROTECT = _native_protect()
if _SRTP_PROTECT:
    # The rewriter's fast path in C works on StreamRewriter's own slots (their offsets, once).
    from ..downlink_estimate import SentPackets
    from .rewriter import MAX_SEQUENCE_STEP, StreamRewriter

    _fastpath.bind_rewriter(StreamRewriter, MAX_SEQUENCE_STEP, SentPackets)
_SRTP_UNPROTECT = (
    int(_srtp_ffi.cast("uintptr_t", _srtp_ffi.addressof(_srtp_lib, "srtp_unprotect"))) if _SRTP_PROTECT else 0
)
# srtp_protect_rtcp has srtp_protect's signature: the native send carries the leg's RTCP too.
_SRTCP_PROTECT = (
    int(_srtp_ffi.cast("uintptr_t", _srtp_ffi.addressof(_srtp_lib, "srtp_protect_rtcp")))
    if _SRTP_PROTECT
    else 0
)
# The longest RTCP packet the native send takes: its buffer less the SRTCP index (4 bytes).
_SRTCP_MAX = int(_fastpath.MAX_PACKET) - 4 if _SRTP_PROTECT else 0

# Outgoing SSRCs of one leg with an SRTP session of their own; a leg sends a few dozen at most
# (its slots, their RTX); beyond this the leg's own session protects them.
MAX_STREAM_SESSIONS = 256


def native_send_available() -> bool:
    """Whether the native send was built and fits the installed pylibsrtp."""
    return _SRTP_PROTECT != 0


def native_copies() -> int:
    """Copies the native fan-out sent itself since the process started (0 without it)."""
    return int(_fastpath.counters()["fast_copies"]) if _SRTP_PROTECT else 0


def srtp_session_handle(session: pylibsrtp.Session) -> int:
    """The ``srtp_t`` behind a pylibsrtp session, for the native send."""
    return int(_srtp_ffi.cast("uintptr_t", session._srtp[0]))


class _PythonLegState:
    """LegOutput's counters; ``_fastpath.LegState`` holds them in C (native.py)."""

    __slots__ = ("octets", "packets", "send_errors")


class LegOutput(state_base("LegState", _PythonLegState)):  # type: ignore[misc]
    """Protect with the leg's SRTP context and send on the nominated ICE pair, synchronously.

    Skips aiortc's ``_send_rtp`` (two coroutine frames and an is_rtcp check per packet). The
    nominated pair's socket and address are resolved once per pair (``_route``); each packet only
    checks that the pair is still the nominated one.

    With ``native`` (and the extension built, ``native_send_available``), ``send_parts`` joins a
    rewritten header and the source's payload, protects and sends in one native call
    (``_fastpath.send_rtp``) on the pair's own socket; ``send`` is the pure-Python path (pylibsrtp's
    ``protect`` and the transport's ``sendto``). Both give the same datagrams. Pairs the native
    send cannot take (relayed through TURN, an address it cannot encode) use ``send``.

    Each outgoing SSRC is protected on an SRTP session of its own (``outbound_stream_session``, the
    leg's key; ``_streams`` maps SSRC to its ``srtp_t``), up to ``MAX_STREAM_SESSIONS``; further
    SSRCs, and the RTCP, stay on the leg's session. An SSRC never moves between sessions while the
    context lasts, so its rollover counter stays one."""

    __slots__ = (
        "_addr",
        "_connection",
        "_dtls",
        "_fd",
        "_handle",
        "_nominated",
        "_pair",
        "_sockaddr",
        "_srtp",
        "_stream_sessions",
        "_streams",
        "_transport",
        "native",
    )

    def __init__(self, dtls: RTCDtlsTransport, native: bool = False) -> None:
        self._dtls = dtls
        self._connection: aioice.ice.Connection = dtls.transport._connection
        # aioice's dict of nominated pairs (changed in place, never rebound: check_aiortc).
        self._nominated: dict[int, Any] = {} if self._connection is None else self._connection._nominated
        self._pair: Any = None
        self._transport: Any = None
        self._addr: Any = None
        # Where the native send goes: the pair's socket and the remote address as a sockaddr.
        self._fd = -1
        self._sockaddr: bytes | None = None
        self._srtp: pylibsrtp.Session | None = None
        self._handle = 0
        self._stream_sessions: dict[int, pylibsrtp.Session] = {}
        self._streams: dict[int, int] = {}  # SSRC -> srtp_t of its own session (the native send)
        self.native = native and native_send_available()
        self.packets = 0
        self.octets = 0
        self.send_errors = 0  # native sends the kernel refused (e.g. ICMP unreachable): dropped
        # A new outbound context (the handshake's) comes through outbound_context_changed.
        dtls._conference_outputs = [*getattr(dtls, "_conference_outputs", ()), self]  # type: ignore[attr-defined]
        if dtls._tx_srtp is not None:
            self._use_context(dtls._tx_srtp)

    def _route(self) -> Any:
        """The nominated pair's transport (cached; None while there is none or it is closing)."""
        pair = self._nominated.get(1)
        if pair is not self._pair:
            self._pair = pair
            self._transport = None if pair is None else pair.protocol.transport
            self._addr = None if pair is None else pair.remote_addr
            self._fd, self._sockaddr = self._native_route(pair)
        transport = self._transport
        if transport is None or transport.is_closing():
            return None
        return transport

    def _native_route(self, pair: Any) -> tuple[int, bytes | None]:
        """(socket fd, destination sockaddr) for the native send on ``pair``, or (-1, None)."""
        if not self.native or pair is None or type(pair.protocol) is not aioice.ice.StunProtocol:
            return -1, None  # TURN-relayed pairs wrap each datagram: the transport's sendto does
        sock = self._transport.get_extra_info("socket") if self._transport is not None else None
        if sock is None:
            return -1, None
        sockaddr = _fastpath.sockaddr(str(self._addr[0]), int(self._addr[1]))
        family = socket.AF_INET if sockaddr is not None and len(sockaddr) == 16 else socket.AF_INET6
        if sockaddr is None or sock.family != family:
            return -1, None
        return sock.fileno(), sockaddr

    def send_parts(self, head: bytes, data: bytes, start: int, end: int) -> bool:
        """Send the RTP packet ``head + data[start:end]`` (what ``StreamRewriter.rewrite_head``
        gives), natively when the leg allows; False (dropped) while the leg is not connected."""
        srtp = self._dtls._tx_srtp
        transport = self._transport
        if (
            srtp is not self._srtp
            or srtp is None
            or self._sockaddr is None
            or self._nominated.get(1) is not self._pair
            or transport.is_closing()
        ):
            return self._send_parts_checked(head, data, start, end)
        ssrc = int.from_bytes(head[8:12], "big")
        handle = self._streams.get(ssrc) or self._stream(ssrc)
        sent = _fastpath.send_rtp(_SRTP_PROTECT, handle, self._fd, self._sockaddr, head, data, start, end)
        if sent.__class__ is not int:
            # The socket's buffer is full: the transport queues the protected datagram, as it would.
            transport.sendto(sent, self._addr)
            sent = len(sent)
        elif sent < 0:
            self.send_errors += 1
            sent = 0
        self.packets += 1
        self.octets += sent
        return True

    def forward(
        self,
        rewriter: Any,
        data: bytes,
        header: Any,
        abs_send_time: int,
        audio_level: int | None,
        keyframe: bool,
        now: float,
    ) -> bool | None:
        """``rewriter.rewrite_head`` + ``send_parts`` in one native call when the packet takes the
        rewriter's fast path (``_fastpath.forward``); None if the rewriter sends nothing."""
        srtp = self._dtls._tx_srtp
        transport = self._transport
        if not (
            srtp is not self._srtp
            or srtp is None
            or self._sockaddr is None
            or self._nominated.get(1) is not self._pair
            or transport.is_closing()
        ):
            sent = _fastpath.forward(
                rewriter,
                data,
                header,
                abs_send_time,
                audio_level,
                now,
                _SRTP_PROTECT,
                self._streams.get(rewriter.ssrc) or self._stream(rewriter.ssrc),
                self._fd,
                self._sockaddr,
            )
            if sent is not None:
                if sent.__class__ is not int:
                    transport.sendto(sent, self._addr)
                    sent = len(sent)
                elif sent < 0:
                    self.send_errors += 1
                    sent = 0
                self.packets += 1
                self.octets += sent
                return True
        head = rewriter.rewrite_head(data, header, abs_send_time, audio_level, keyframe, now)
        if head is None:
            return None
        return self.send_parts(head, data, rewriter.tail, header[9])

    def _send_parts_checked(self, head: bytes, data: bytes, start: int, end: int) -> bool:
        """``send_parts`` when something changed (the SRTP context, the pair) or the native send
        cannot take this leg: re-resolve, then send natively or through ``send``."""
        srtp = self._dtls._tx_srtp
        if srtp is None:
            return False
        if srtp is not self._srtp:
            self._use_context(srtp)
        if self._route() is None:
            return False
        if self._sockaddr is None:
            return self.send(head + data[start:end])
        return self.send_parts(head, data, start, end)

    def send(self, data: bytes) -> bool:
        """Send one RTP packet; False (dropped) while the leg is not connected."""
        srtp = self._dtls._tx_srtp
        if srtp is None:
            return False
        transport = self._transport
        pair = self._nominated.get(1)
        if transport is None or pair is not self._pair or transport.is_closing():
            transport = self._route()
            if transport is None:
                return False
        if srtp is not self._srtp:
            self._use_context(srtp)
        session: pylibsrtp.Session = srtp
        if len(data) >= 12:
            ssrc = int.from_bytes(data[8:12], "big")
            if ssrc not in self._streams:
                self._stream(ssrc)  # an SSRC's first packet decides its session, on either path
            session = self._stream_sessions.get(ssrc, srtp)
        protected = session.protect(data)
        transport.sendto(protected, self._addr)
        self.packets += 1
        self.octets += len(protected)
        return True

    def _use_context(self, srtp: pylibsrtp.Session) -> None:
        """The leg's outbound SRTP context is (now) ``srtp``: its streams' sessions start afresh."""
        self._srtp = srtp
        self._handle = srtp_session_handle(srtp)
        self._stream_sessions = {}
        self._streams = {}

    def _stream(self, ssrc: int) -> int:
        """The ``srtp_t`` that protects ``ssrc``: its own session, made here on its first packet, or
        the leg's (its key unknown, or too many SSRCs); noted in ``_streams`` either way."""
        srtp = self._srtp
        if srtp is None:
            return self._handle
        session = srtp
        if len(self._stream_sessions) < MAX_STREAM_SESSIONS:
            session = outbound_stream_session(self._dtls, srtp, ssrc)
        if session is srtp:
            if len(self._streams) < 2 * MAX_STREAM_SESSIONS:  # beyond: the Python path finds it
                self._streams[ssrc] = self._handle
            return self._handle
        self._stream_sessions[ssrc] = session
        handle = self._streams[ssrc] = srtp_session_handle(session)
        return handle

    def send_rtcp(self, data: bytes) -> bool:
        """Send one (compound) RTCP packet of our own, e.g. feedback to a publisher; natively (the
        leg's session, libsrtp's srtp_protect_rtcp) when the leg's route allows."""
        srtp = self._dtls._tx_srtp
        transport = self._route()
        if srtp is None or transport is None:
            return False
        if srtp is not self._srtp:
            self._use_context(srtp)
        if self._sockaddr is None or len(data) > _SRTCP_MAX:
            transport.sendto(srtp.protect_rtcp(data), self._addr)
            return True
        sent = _fastpath.send_rtp(_SRTCP_PROTECT, self._handle, self._fd, self._sockaddr, data, b"", 0, 0)
        if sent.__class__ is not int:
            transport.sendto(sent, self._addr)
        elif sent < 0:
            self.send_errors += 1
        return True


if _SRTP_PROTECT:
    # Producer.receive's fan-out in C reads LegOutput's own slots (their offsets, once).
    _fastpath.bind_leg(LegOutput, _SRTP_PROTECT)
    from .consumer import DownTrack

    _fastpath.bind_track(DownTrack)


# --- RTCP on the send side ------------------------------------------------------------------


def intercept_sender(
    sender: RTCRtpSender,
    on_keyframe_request: Callable[[], None],
    on_nack: Callable[[int], None],
    on_remb: Callable[[int], None] | None = None,
    on_loss: Callable[[int, int, int], None] | None = None,
) -> None:
    """Route a subscriber's PLI/FIR and NACKs for this sender to the forwarder (aiortc would
    otherwise ask its encoder for a keyframe and resend from its own history), its REMB (the
    bitrate its receive-side estimator allows, bits per second) to ``on_remb`` and each of its
    receiver reports on this sender to ``on_loss(ssrc, extended highest sequence, cumulative lost)``."""

    async def retransmit(sequence_number: int) -> None:
        on_nack(sequence_number)

    sender._send_keyframe = on_keyframe_request  # type: ignore[method-assign]
    sender._retransmit = retransmit  # type: ignore[method-assign]
    if on_remb is None and on_loss is None:
        return
    handle = sender._handle_rtcp_packet

    async def handle_rtcp(packet: Any) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            if on_remb is not None:
                with contextlib.suppress(ValueError):
                    on_remb(unpack_remb_fci(packet.fci)[0])
            return
        if on_loss is not None and isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
            for report in packet.reports:
                if report.ssrc == sender._ssrc:
                    on_loss(report.ssrc, report.highest_sequence, report.packets_lost)
        await handle(packet)  # aiortc's: the round trip

    sender._handle_rtcp_packet = handle_rtcp  # type: ignore[method-assign]


def route_sender_reports(dtls: RTCDtlsTransport, ssrc: int, receiver: RTCRtpReceiver) -> None:
    """Let aiortc hand the sender reports of ``ssrc`` (a simulcast layer, which the answer does
    not list) to ``receiver``, so our receiver reports carry its LSR/DLSR (the publisher's round
    trip). aiortc learns SSRCs from the RTP it parses, which the forwarder's hook bypasses."""
    dtls._rtp_router.ssrc_table[ssrc] = receiver


class _LayerRtcp:
    """What aiortc's RTP router hands the RTCP naming an SSRC that no aiortc sender owns (a load
    endpoint's simulcast layer): PLI/FIR and NACK go to the callbacks with that SSRC."""

    def __init__(
        self, ssrc: int, on_keyframe_request: Callable[[int], None], on_nack: Callable[[int, int], None]
    ) -> None:
        self._ssrc = ssrc
        self.on_keyframe_request = on_keyframe_request
        self.on_nack = on_nack

    async def _handle_rtcp_packet(self, packet: Any) -> None:
        if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            for sequence in packet.lost:
                self.on_nack(sequence, self._ssrc)
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_FIR, RTCP_PSFB_PLI):
            self.on_keyframe_request(self._ssrc)


def route_layer_rtcp(
    dtls: RTCDtlsTransport,
    ssrc: int,
    on_keyframe_request: Callable[[int], None],
    on_nack: Callable[[int, int], None],
) -> None:
    """Let the keyframe requests and NACKs for ``ssrc``, a stream sent beside aiortc's senders (a
    load endpoint's simulcast layer), reach ``on_keyframe_request(ssrc)`` / ``on_nack(seq, ssrc)``."""
    dtls._rtp_router.senders[ssrc] = _LayerRtcp(ssrc, on_keyframe_request, on_nack)


def take_over_sender_reports(sender: RTCRtpSender) -> None:
    """Stop aiortc's per-sender RTCP loop (``_run_rtcp``) before it starts, keeping its BYE at the
    end: the leg sends the slot's sender reports itself (``sender_reports``), batched.

    aiortc's loop sends SR + SDES every 0.5-1.5 s from every sender, also from the many slots that
    carry nothing, each through its own coroutines, SRTCP protect and sendto: at 50 endpoints
    (~650 slots) that was 10-14 % of the server's CPU in a profile. Call before the answer is
    applied (``RTCRtpSender.send`` starts the loop)."""
    started, exited = (getattr(sender, name) for name in _SENDER_RTCP_EVENTS)

    async def run_rtcp() -> None:
        started.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.get_running_loop().create_future()  # until stop() cancels it
        await sender._send_rtcp([RtcpByePacket(sources=[sender._ssrc])])
        exited.set()

    sender._run_rtcp = run_rtcp  # type: ignore[method-assign]


# Sender reports (with one SDES CNAME chunk each) per compound RTCP packet: 15 x (28 + 44) bytes
# stays well inside one datagram and pylibsrtp's 1,348-byte limit for SRTCP.
REPORTS_PER_PACKET = 15


def sender_reports(reports: list[tuple[RTCRtpSender, int, int, int, float]]) -> list[bytes]:
    """Compound RTCP packets (SR ... SR, SDES) for ``(sender, packets, octets, rtp_timestamp,
    sent_at)`` of a leg's active slots, as aiortc's loop would send one by one (the RTP timestamp
    of the last packet sent and the wall time it left); each sender notes its report so aiortc's
    round trip from the endpoint's receiver reports goes on working."""
    out = []
    now = time.time()
    for first in range(0, len(reports), REPORTS_PER_PACKET):
        packets: list[Any] = []
        chunks = []
        for sender, count, octets, rtp_timestamp, sent_at in reports[first : first + REPORTS_PER_PACKET]:
            ntp = ntp_time(sent_at)
            update_sender_counters(sender, count, octets, rtp_timestamp, sent_at)
            setattr(sender, _SENDER_LSR[0], (ntp >> 16) & 0xFFFFFFFF)
            setattr(sender, _SENDER_LSR[1], now)
            info = RtcpSenderInfo(
                ntp_timestamp=ntp,
                rtp_timestamp=rtp_timestamp & 0xFFFFFFFF,
                packet_count=count & 0xFFFFFFFF,
                octet_count=octets & 0xFFFFFFFF,
            )
            packets.append(RtcpSrPacket(ssrc=sender._ssrc, sender_info=info))
            cname = getattr(sender, _SENDER_CNAME)
            if cname is not None:
                chunks.append(RtcpSourceInfo(ssrc=sender._ssrc, items=[(1, cname.encode())]))
        if chunks:
            packets.append(RtcpSdesPacket(chunks=chunks))
        out.append(b"".join(bytes(p) for p in packets))
    return out


def on_keyframe_request(sender: RTCRtpSender, callback: Callable[[], None]) -> None:
    """Point a sender's PLI/FIR handling at ``callback`` (a test publisher of pre-encoded media
    restarts its clip at the keyframe; aiortc would ask an encoder it does not use)."""
    sender._send_keyframe = callback  # type: ignore[method-assign]


EncodedFrameHook = Callable[[Any], Any]


def wrap_encoded_frames(sender: RTCRtpSender, edit: EncodedFrameHook) -> None:
    """Pass every encoded frame the sender is about to packetise through ``edit(frame)`` (which
    changes it in place), e.g. to set the audio level aiortc only writes for audio it encoded."""
    original = sender._next_encoded_frame

    async def next_encoded_frame(codec: Any) -> Any:
        frame = await original(codec)
        if frame is not None:
            edit(frame)
        return frame

    sender._next_encoded_frame = next_encoded_frame  # type: ignore[method-assign]


def ntp_time(at: float) -> int:
    """64-bit NTP timestamp of a time.time() value (what sender reports carry)."""
    seconds = int(at)
    return ((seconds + 2208988800) << 32) | int((at - seconds) * (1 << 32))


def update_sender_counters(
    sender: RTCRtpSender, packets: int, octets: int, rtp_timestamp: int, sent_at: float
) -> None:
    """Feed aiortc's sender-report builder: the RTP timestamp of the last packet sent and the
    wall-clock time it left, plus packet and payload-octet counts."""
    sender._RTCRtpSender__packet_count = packets  # type: ignore[attr-defined]
    sender._RTCRtpSender__octet_count = octets  # type: ignore[attr-defined]
    sender._RTCRtpSender__rtp_timestamp = rtp_timestamp  # type: ignore[attr-defined]
    sender._RTCRtpSender__ntp_timestamp = ntp_time(sent_at)  # type: ignore[attr-defined]


def sender_round_trip(sender: RTCRtpSender) -> float | None:
    """The round trip the endpoint's receiver reports of this sender's reports show (smoothed by
    aiortc), or None before one came."""
    rtt = getattr(sender, _SENDER_RTT, None)
    return rtt if isinstance(rtt, float) else None


def sender_counters(sender: RTCRtpSender) -> tuple[int, int, int, int]:
    """(packets, octets, rtp_timestamp, ntp_timestamp) as the next sender report will carry."""
    return (
        sender._RTCRtpSender__packet_count,  # type: ignore[attr-defined]
        sender._RTCRtpSender__octet_count,  # type: ignore[attr-defined]
        sender._RTCRtpSender__rtp_timestamp,  # type: ignore[attr-defined]
        sender._RTCRtpSender__ntp_timestamp,  # type: ignore[attr-defined]
    )


# --- the publisher's receiver ----------------------------------------------------------------


async def send_pli(receiver: RTCRtpReceiver, media_ssrc: int) -> None:
    """Ask the publisher of ``media_ssrc`` for a keyframe (RTCP PLI from this receiver)."""
    await receiver._send_rtcp_pli(media_ssrc)


def last_sender_report(receiver: RTCRtpReceiver, ssrc: int) -> tuple[int, float] | None:
    """(LSR, wall time it arrived) of the last RTCP sender report of ``ssrc`` that aiortc's receiver
    handled (RTCP still takes aiortc's path), for the LSR/DLSR of our receiver reports; None if
    none came yet."""
    lsr = getattr(receiver, _RECEIVER_LSR[0]).get(ssrc)
    if lsr is None:
        return None
    return lsr, getattr(receiver, _RECEIVER_LSR[1])[ssrc]


class DecodeCounter(queue.Queue):  # type: ignore[type-arg]
    """Stands in for a receiver's decoder queue: counts frames aiortc would have decoded, and
    drops them. Must stay 0 while the forwarding hook is in place."""

    def __init__(self) -> None:
        super().__init__()
        self.frames = 0

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is not None:
            self.frames += 1


def neutralise_decoder(receiver: RTCRtpReceiver) -> DecodeCounter:
    """Stop the receiver's decoder thread once aiortc has started it, and count (never decode)
    anything that would still reach it. Returns the counter."""
    counter = DecodeCounter()
    original = receiver.receive

    async def receive(parameters: Any) -> None:
        await original(parameters)
        getattr(receiver, _RECEIVER_STOP_DECODER)()
        receiver._RTCRtpReceiver__decoder_queue = counter  # type: ignore[attr-defined]

    receiver.receive = receive  # type: ignore[method-assign]
    return counter


def drop_bitrate_estimator(receiver: RTCRtpReceiver) -> None:
    """aiortc gives every video receiver a REMB estimator of 1,000 one-millisecond buckets (about
    95 KB of Python objects), fed only by its own receive path, which the server replaces
    (``hook_incoming_rtp``) and estimates with its own (``twcc``, ``rtcp``). At 50 endpoints with
    ~17 video m-lines each that was ~80 MB held for nothing (the soak, docs/performance.md)."""
    receiver._RTCRtpReceiver__remote_bitrate_estimator = None  # type: ignore[attr-defined]


def decoder_running(receiver: RTCRtpReceiver) -> bool:
    return receiver._RTCRtpReceiver__decoder_thread is not None  # type: ignore[attr-defined]


# --- UDP receive ------------------------------------------------------------------------------

# asyncio's datagram transport reads ONE datagram per readiness event: a loop that falls behind
# then drains each socket at its iteration rate and the kernel drops the rest. Reading what is
# queued (bounded, so one busy socket cannot starve the others) keeps up and saves an epoll round
# per packet. uvloop's transports are left alone.
# --- aioice's data queue ------------------------------------------------------------------------

# Datagrams that are not STUN go to aioice's Connection queue, unbounded, for the DTLS transport to
# read; before the leg connects nothing reads it, so anyone who learns the port could fill memory
# with junk. A DTLS flight is a handful of datagrams: more than this waiting is a flood, dropped.
MAX_QUEUED_DATAGRAMS = 256


class IceQueueGuard:
    """Counts what the bound on a leg's aioice queue dropped (``bound_ice_queue``)."""

    __slots__ = ("dropped", "queues")

    def __init__(self) -> None:
        self.dropped = 0
        self.queues: list[Any] = []

    def waiting(self) -> int:
        """Datagrams waiting in the leg's aioice queues now."""
        return sum(q.qsize() for q in self.queues)


def bound_ice_queue(pc: RTCPeerConnection, limit: int = MAX_QUEUED_DATAGRAMS) -> IceQueueGuard:
    """Drop non-STUN datagrams while ``limit`` already wait in the leg's aioice queue."""
    guard = IceQueueGuard()
    connections = {t.receiver.transport.transport._connection for t in pc.getTransceivers()}
    for connection in connections:
        queue = connection._queue
        guard.queues.append(queue)
        original = connection.data_received

        def data_received(data: bytes, component: int, queue: Any = queue, original: Any = original) -> None:
            if queue.qsize() >= limit:
                guard.dropped += 1
                return
            original(data, component)

        connection.data_received = data_received
    return guard


MAX_READS_PER_WAKEUP = 64


def drain_udp_reads(pc: RTCPeerConnection) -> int:
    """Make the peer connection's gathered UDP sockets read everything queued per wakeup.
    Call after the local description is set (sockets exist). Returns how many were changed."""
    changed = 0
    transports = {t.receiver.transport.transport for t in pc.getTransceivers()}
    for ice in transports:
        for protocol in ice._connection._protocols:
            transport = getattr(protocol, "transport", None)
            if isinstance(transport, _SelectorDatagramTransport) and not transport.is_closing():
                transport._loop._add_reader(transport._sock_fd, _drain, transport)
                changed += 1
    return changed


def _drain(transport: Any) -> None:
    if transport._conn_lost:
        return
    sock = transport._sock
    protocol = transport._protocol
    for _ in range(MAX_READS_PER_WAKEUP):
        try:
            data, addr = sock.recvfrom(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            protocol.error_received(exc)
            return
        protocol.datagram_received(data, addr)


def enlarge_receive_buffers(pc: RTCPeerConnection, size: int) -> int:
    """Ask for a ``size``-byte receive buffer on the peer connection's gathered UDP sockets (the
    kernel caps it at net.core.rmem_max); returns what the kernel granted (0: no socket).

    The default (~208 KB) holds well under a second of a busy leg: a process descheduled for a
    moment on a loaded machine would drop what was already on its way."""
    granted = 0
    transports = {t.receiver.transport.transport for t in pc.getTransceivers()}
    for ice in transports:
        for protocol in ice._connection._protocols:
            transport = getattr(protocol, "transport", None)
            sock = transport.get_extra_info("socket") if transport is not None else None
            if sock is None:
                continue
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
                granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            except OSError:
                continue
    return granted


# --- ICE host candidates ----------------------------------------------------------------------


def _address_allowed(address: str, interfaces: list[str]) -> bool:
    """``interfaces`` holds addresses or networks (CIDR); empty allows all."""
    if not interfaces:
        return True
    ip = ipaddress.ip_address(address)
    for item in interfaces:
        try:
            if ip in ipaddress.ip_network(item, strict=False):
                return True
        except ValueError:
            continue
    return False


def restrict_host_candidates(
    pc: RTCPeerConnection,
    *,
    interfaces: list[str] | None = None,
    port_min: int = 0,
    port_max: int = 0,
    announced_address: str | None = None,
) -> None:
    """Gather host candidates only on ``interfaces`` (addresses or CIDR networks), bound to a UDP
    port in [port_min, port_max] when set, and announce ``announced_address`` instead of the
    bound address (a server behind 1:1 NAT). Call before the offer is created. STUN/TURN
    candidates are still gathered by aioice on the chosen sockets."""
    if not interfaces and not port_min and not announced_address:
        return
    if port_min and (port_max < port_min or port_min < 1 or port_max > 65535):
        raise ValueError(f"bad RTC port range {port_min}-{port_max}")
    allowed = list(interfaces or [])
    gatherers = {t.receiver.transport.transport.iceGatherer for t in pc.getTransceivers()}
    for gatherer in gatherers:
        _patch_gatherer(gatherer, allowed, port_min, port_max, announced_address)


def _patch_gatherer(
    gatherer: RTCIceGatherer,
    interfaces: list[str],
    port_min: int,
    port_max: int,
    announced_address: str | None,
) -> None:
    connection: aioice.ice.Connection = gatherer._connection
    original = connection.get_component_candidates

    async def get_component_candidates(
        component: int, addresses: list[str], timeout: int = 5
    ) -> list[aioice.ice.Candidate]:
        chosen = [a for a in addresses if _address_allowed(a, interfaces)]
        if not port_min and not announced_address:
            return await original(component=component, addresses=chosen, timeout=timeout)
        loop = asyncio.get_running_loop()
        candidates: list[aioice.ice.Candidate] = []
        for address in chosen:
            protocol = await _bind_in_range(loop, connection, address, port_min, port_max)
            if protocol is None:
                continue
            bound = protocol.transport.get_extra_info("sockname")
            host = announced_address or bound[0]
            protocol.local_candidate = aioice.ice.Candidate(
                foundation=aioice.ice.candidate_foundation("host", "udp", host),
                component=component,
                transport="udp",
                priority=aioice.ice.candidate_priority(component, "host"),
                host=host,
                port=bound[1],
                type="host",
            )
            connection._protocols.append(protocol)
            candidates.append(protocol.local_candidate)
        return candidates

    connection.get_component_candidates = get_component_candidates  # type: ignore[method-assign]


async def _bind_in_range(
    loop: asyncio.AbstractEventLoop,
    connection: aioice.ice.Connection,
    address: str,
    port_min: int,
    port_max: int,
) -> aioice.ice.StunProtocol | None:
    if port_min:
        ports = list(range(port_min, port_max + 1))
        random.shuffle(ports)  # spread sessions over the range instead of racing for the first port
    else:
        ports = [0]
    for port in ports:
        try:
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: aioice.ice.StunProtocol(connection), local_addr=(address, port)
            )
        except OSError:
            continue
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, aioice.turn.UDP_SOCKET_BUFFER_SIZE)
        return protocol  # type: ignore[return-value]
    return None
