"""Transport-wide congestion control feedback towards publishers
(draft-holmer-rmcat-transport-wide-cc-extensions-01), so a browser's own send-side estimator
(Google congestion control) sees its uplink: every packet carries a transport-wide sequence number
(header extension), the server notes when each arrived and sends back, every ``INTERVAL_S``, an
RTCP transport feedback (PT 205, FMT 15) with each packet's arrival delta or its loss.

- ``TransportCcReceiver.add`` runs per incoming packet: one extension lookup, a clock read and a
  list store into a preallocated ring; no allocation beyond the time value.
- ``encode_feedback`` builds the packet exactly as libwebrtc's ``rtcp::TransportFeedback`` does
  (same chunk choice: run-length when every status is the same, else 2-bit vectors of 7 or 1-bit
  vectors of 14; deltas in 250 us units, 1 byte when 0..255, else 2 signed; reference time in
  64 ms units; padding with the P bit and a count byte), checked against packets captured from
  Chrome (``tests/test_twcc.py``).
- ``offer_transport_cc`` / ``answered_transport_cc``: the SDP lines (aiortc does not know the
  extension: it is added to the publish m-sections of our offer, and read back from the answer).
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Sequence

from .extmap import answered_extension, offer_extension
from .packet import URI_TRANSPORT_CC, RtpHeader, find_extension

try:  # the native receive side (conference/sfu/_fastrecv.c), when it was built
    from . import _fastrecv
except ImportError:
    _fastrecv = None  # type: ignore[assignment]

INTERVAL_S = 0.05  # feedback every 50 ms while packets arrive (libwebrtc adapts 50-250 ms)
MAX_STATUS_PER_PACKET = 1000  # sequence numbers one feedback packet covers at most
# Arrival times kept: a feedback interval (100 ms) is a few dozen packets of one endpoint, so 4,096
# covers a stall of seconds. Typed arrays: a list held two int objects per slot, ~1 MB per publisher
# once full (50 MB of a 50-endpoint meeting's RSS, filling over its first minutes).
_RING = 1 << 12
REREPORT_WINDOW = 1000  # a packet this far behind the reported ones is not reported again

_HEAD = struct.Struct("!BBHIIHHI")  # RTCP header, sender SSRC, media SSRC, base, count, ref|fb count
_DELTA_US = 250
_REFERENCE_US = 64_000  # 256 deltas
_REFERENCE_WRAP_US = _REFERENCE_US << 24
_MAX_RUN = 0x1FFF
NOT_RECEIVED, SMALL, LARGE = 0, 1, 2


class _Chunks:
    """libwebrtc's ``LastChunk``: status symbols collected until they no longer fit one chunk."""

    __slots__ = ("all_same", "has_large", "size", "symbols")

    def __init__(self) -> None:
        self.symbols: list[int] = []
        self.size = 0
        self.all_same = True
        self.has_large = False

    def can_add(self, symbol: int) -> bool:
        if self.size < 7:
            return True
        if self.size < 14 and not self.has_large and symbol != LARGE:
            return True
        return self.size < _MAX_RUN and self.all_same and self.symbols[0] == symbol

    def add(self, symbol: int) -> None:
        if self.size < 14:
            self.symbols.append(symbol)
        self.size += 1
        self.all_same = self.all_same and symbol == self.symbols[0]
        self.has_large = self.has_large or symbol == LARGE

    def emit(self) -> int:
        """A full chunk; what a 2-bit vector leaves over stays for the next one."""
        if self.all_same:
            chunk = self._run_length()
            self.__init__()  # type: ignore[misc]
            return chunk
        if self.size == 14:
            chunk = self._one_bit()
            self.__init__()  # type: ignore[misc]
            return chunk
        chunk = self._two_bit(7)
        rest = self.symbols[7:]
        self.__init__()  # type: ignore[misc]
        for symbol in rest:
            self.add(symbol)
        return chunk

    def last(self) -> int:
        if self.all_same:
            return self._run_length()
        if self.size <= 7:
            return self._two_bit(self.size)
        return self._one_bit()

    def _run_length(self) -> int:
        return (self.symbols[0] << 13) | self.size

    def _one_bit(self) -> int:
        chunk = 0x8000
        for i, symbol in enumerate(self.symbols):
            chunk |= symbol << (13 - i)
        return chunk

    def _two_bit(self, size: int) -> int:
        chunk = 0xC000
        for i in range(size):
            chunk |= self.symbols[i] << (2 * (6 - i))
        return chunk


def encode_feedback(
    sender_ssrc: int,
    media_ssrc: int,
    base_seq: int,
    feedback_count: int,
    arrivals_us: Sequence[int | None],
) -> tuple[bytes, int]:
    """One transport feedback packet for sequence numbers ``base_seq``, ``base_seq + 1``, ...:
    ``arrivals_us[i]`` is when ``base_seq + i`` arrived (microseconds, any epoch) or None if it did
    not; at least one must have arrived (the reference time is the first arrival's, as
    libwebrtc's ``RemoteEstimatorProxy`` sets it). Returns (packet, how many entries it covers): fewer
    than given when a delta does not fit 16 bits or MAX_STATUS_PER_PACKET is reached (the rest goes
    in the next packet, from its first arrived entry)."""
    first = next((t for t in arrivals_us if t is not None), None)
    if first is None:
        raise ValueError("a feedback packet reports at least one packet that arrived")
    reference = (first % _REFERENCE_WRAP_US) // _REFERENCE_US
    last_us = first - (first % _REFERENCE_WRAP_US) + reference * _REFERENCE_US
    chunks = _Chunks()
    encoded: list[int] = []
    deltas = bytearray()
    covered = 0
    for arrival in arrivals_us[:MAX_STATUS_PER_PACKET]:
        if arrival is None:
            symbol = NOT_RECEIVED
        else:
            full = arrival - last_us
            full += _DELTA_US // 2 if full >= 0 else -(_DELTA_US // 2)
            delta = full // _DELTA_US if full >= 0 else -(-full // _DELTA_US)  # C++ division
            if not -0x8000 <= delta <= 0x7FFF:
                break
            symbol = SMALL if 0 <= delta <= 0xFF else LARGE
        if not chunks.can_add(symbol):
            encoded.append(chunks.emit())
        chunks.add(symbol)
        covered += 1
        if arrival is not None:
            if symbol == SMALL:
                deltas.append(delta)
            else:
                deltas += struct.pack("!h", delta)
            last_us += delta * _DELTA_US
    encoded.append(chunks.last())
    body = struct.pack(f"!{len(encoded)}H", *encoded) + bytes(deltas)
    padding = -len(body) % 4
    if padding:
        body += bytes(padding - 1) + bytes((padding,))
    words = (20 + len(body)) // 4 - 1
    head = _HEAD.pack(
        (0xA0 if padding else 0x80) | 15,
        205,
        words,
        sender_ssrc,
        media_ssrc,
        base_seq & 0xFFFF,
        covered,
        ((reference & 0xFFFFFF) << 8) | (feedback_count & 0xFF),
    )
    return head + body, covered


class TransportCcReceiver:
    """Arrival times of one transport's packets by transport-wide sequence number, and the
    feedback packets that report them (``feedback``, every INTERVAL_S)."""

    __slots__ = (
        "_arrivals",
        "_count",
        "_highest",
        "_native",
        "_seqs",
        "_start",
        "ext_id",
        "feedback_sent",
        "packets",
    )

    def __init__(self, ext_id: int, native: bool = False) -> None:
        """``native``: build the feedback with ``_fastrecv.twcc_feedback`` (same bytes) when built."""
        self.ext_id = ext_id
        self._native = native and native_receive_available()
        self._arrivals = array("q", bytes(8 * _RING))
        self._seqs = array("q", [-1]) * _RING  # which sequence number each arrival slot holds
        self._highest = -1  # unwrapped (offset by 2^16 so a packet just before the first stays >= 0)
        self._start = -1  # the first sequence number not reported yet
        self._count = 0  # feedback packet count (8 bits on the wire)
        self.packets = 0
        self.feedback_sent = 0

    def add(self, data: bytes, header: RtpHeader, arrival_us: int) -> None:
        """Per incoming packet: note when (microseconds, one clock for the whole transport; best the
        kernel's receive time) its transport-wide sequence number arrived."""
        if not header.ext_length:
            return
        pos, size = find_extension(data, header, self.ext_id)
        if size != 2:
            return
        seq = (data[pos] << 8) | data[pos + 1]
        highest = self._highest
        if highest < 0:
            highest = self._highest = self._start = seq + 0x10000
            unwrapped = highest
        else:
            delta = (seq - highest) & 0xFFFF
            if delta < 0x8000:
                unwrapped = self._highest = highest + delta
            else:
                unwrapped = highest + delta - 0x10000
                if unwrapped < self._start:
                    # Reported lost already (reordering): report again from it, as libwebrtc's
                    # RemoteEstimatorProxy does, or the sender's estimator counts it lost.
                    if self._start - unwrapped > REREPORT_WINDOW:
                        return
                    self._start = unwrapped
        i = unwrapped & (_RING - 1)
        self._arrivals[i] = arrival_us
        self._seqs[i] = unwrapped
        self.packets += 1

    def feedback(self, sender_ssrc: int, media_ssrc: int) -> list[bytes]:
        """The feedback packets for what arrived since the last call (none if nothing did)."""
        if self._native:
            packets, self._count = _fastrecv.twcc_feedback(self, sender_ssrc, media_ssrc, self._count)
            self.feedback_sent += len(packets)
            return packets
        highest, start = self._highest, self._start
        if highest < 0 or start > highest:
            return []
        if highest - start >= _RING:
            start = highest - _RING + 1  # a stall longer than the ring: report what it still holds
        arrivals, seqs = self._arrivals, self._seqs
        mask = _RING - 1
        window: list[int | None] = []
        for seq in range(start, highest + 1):
            i = seq & mask
            window.append(arrivals[i] if seqs[i] == seq else None)
        self._start = highest + 1
        packets = []
        offset = 0
        while offset < len(window) and any(t is not None for t in window[offset:]):
            packet, covered = encode_feedback(
                sender_ssrc, media_ssrc, start + offset, self._count, window[offset:]
            )
            self._count = (self._count + 1) & 0xFF
            packets.append(packet)
            offset += covered
        self.feedback_sent += len(packets)
        return packets


# The extension's interface this module is written for: a build left from older sources is not used.
NATIVE_RECEIVE_API = 1


def _bind_native() -> bool:
    if _fastrecv is None or getattr(_fastrecv, "API", 0) != NATIVE_RECEIVE_API:
        return False
    _fastrecv.bind(RtpHeader, TransportCcReceiver, _RING, REREPORT_WINDOW)
    return True


_NATIVE_RECEIVE = _bind_native()


def native_receive_available() -> bool:
    """Whether the native receive side (``_fastrecv``) was built and bound."""
    return _NATIVE_RECEIVE


# --- SDP ----------------------------------------------------------------------------------------


def offer_transport_cc(sdp: str, mids: set[str]) -> tuple[str, int]:
    """Our offer with the transport-cc extension and ``a=rtcp-fb:<pt> transport-cc`` added to the
    m-sections ``mids`` (what endpoints publish); returns (sdp, the extension id)."""
    return offer_extension(sdp, mids, URI_TRANSPORT_CC, "transport-cc")


def answered_transport_cc(sdp: str, mids: set[str]) -> int:
    """The transport-cc extension id the answer accepted in any of the m-sections ``mids`` (0:
    none: the endpoint does not do transport-cc and gets REMB only)."""
    return next((i for mid, i in answered_extension(sdp, URI_TRANSPORT_CC).items() if mid in mids), 0)


# --- feedback from subscribers ------------------------------------------------------------------


def parse_feedback(packet: bytes | memoryview, offset: int = 0) -> tuple[int, list[tuple[int, int | None]]]:
    """The inverse of ``encode_feedback`` for one transport feedback packet at ``offset`` (what a
    subscriber sends about the server's packets): (feedback count, [(sequence number, arrival in
    microseconds on the subscriber's clock, or None: not received)]). Raises ValueError on a
    malformed packet (clear error, nothing half-read is returned)."""
    if len(packet) - offset < 20:
        raise ValueError("transport feedback shorter than its 20-byte header")
    first, pt, words, _sender, _media, base, count, ref_fb = _HEAD.unpack_from(packet, offset)
    if first >> 6 != 2 or first & 0x1F != 15 or pt != 205:
        raise ValueError("not a transport feedback packet (PT 205, FMT 15)")
    end = offset + (words + 1) * 4
    if end > len(packet):
        raise ValueError("transport feedback longer than the datagram")
    if first & 0x20:
        end -= packet[end - 1]
    reference = ref_fb >> 8
    if reference & 0x800000:
        reference -= 1 << 24
    pos = offset + 20
    symbols: list[int] = []
    while len(symbols) < count:
        if pos + 2 > end:
            raise ValueError("transport feedback chunks end before its status count")
        chunk = (packet[pos] << 8) | packet[pos + 1]
        pos += 2
        if not chunk & 0x8000:
            symbols += [(chunk >> 13) & 3] * min(chunk & 0x1FFF, count - len(symbols))
        elif not chunk & 0x4000:
            symbols += [(chunk >> (13 - i)) & 1 for i in range(14)]
        else:
            symbols += [(chunk >> (2 * (6 - i))) & 3 for i in range(7)]
    t = reference * _REFERENCE_US
    out: list[tuple[int, int | None]] = []
    for i in range(count):
        symbol = symbols[i]
        seq = (base + i) & 0xFFFF
        if symbol == NOT_RECEIVED:
            out.append((seq, None))
            continue
        if symbol == SMALL:
            if pos + 1 > end:
                raise ValueError("transport feedback deltas end early")
            delta = packet[pos]
            pos += 1
        elif symbol == LARGE:
            if pos + 2 > end:
                raise ValueError("transport feedback deltas end early")
            delta = ((packet[pos] << 8) | packet[pos + 1]) - ((packet[pos] & 0x80) << 9)
            pos += 2
        else:
            raise ValueError("transport feedback status symbol 3 is reserved")
        t += delta * _DELTA_US
        out.append((seq, t))
    return ref_fb & 0xFF, out
