"""A down-track: one receive slot of one subscriber, filled by whichever producer the policy puts
there (as LiveKit's ``DownTrack``). Switching a slot never renegotiates: its ``StreamRewriter``
rebases sequence numbers, timestamps and VP8 picture ids on the new source's keyframe so the
subscriber sees one continuous stream.

A down-track knows its transport only through ``Output`` (send one RTP packet); the transport calls
``on_keyframe_request`` and ``on_nack`` when the subscriber sends PLI/FIR or NACK.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, Protocol

from .native import state_base
from .packet import FORWARDED_CODECS, CodecInfo, ExtensionMap, abs_send_time, parse_header, rtx_packet
from .rewriter import StreamRewriter
from .stats import Counters

if TYPE_CHECKING:
    from .producer import Producer

Kind = Literal["audio", "video"]
Role = Literal["video", "audio", "preview"]

# Playout delay (http://www.webrtc.org/experiments/rtp-hdrext/playout-delay) on video slots: the
# subscriber's buffer sized to its source's repair time (its publisher's round trip, not the
# subscriber's), so a retransmission lands before the frame is due. Bounded: a minimum of at most
# PLAYOUT_MIN_CAP_MS and a maximum of PLAYOUT_MAX_MS keep the meeting conversational; a publisher
# near the server (repair + margin under PLAYOUT_FLOOR_MS) gets no element: the browser sizes its own buffer.
# 450 ms covers one repair across a 300 +- 40 ms round trip (reordering allowance + round trip +
# jitter); at 300 a venue behind 150 +- 30 ms / 2 % froze 2.3-3.4 s a minute, at 450 1.3-2.0 s
# (median 1.6, docs/performance.md). A lower cap costs freezes, a higher one delay.
PLAYOUT_MAX_MS = 600
PLAYOUT_MIN_CAP_MS = 450
PLAYOUT_FLOOR_MS = 60  # a publisher on the LAN: 10 + 2 + 20 (the minimum retry) + 20 ms
PLAYOUT_MARGIN_MS = 20  # a frame's decode and render on top of the repair
PLAYOUT_HYSTERESIS = 2  # in 10 ms units: smaller changes are not worth a rebuilt extension block


def playout_delay_for(repair_s: float | None) -> tuple[int, int] | None:
    """(min, max) in the extension's 10 ms units for a source whose losses take ``repair_s`` to
    repair (None: unknown), or None for no element."""
    if repair_s is None:
        return None
    ms = repair_s * 1000 + PLAYOUT_MARGIN_MS
    if ms < PLAYOUT_FLOOR_MS:
        return None
    low = min(PLAYOUT_MIN_CAP_MS, -(-int(ms) // 10) * 10)
    return (low // 10, PLAYOUT_MAX_MS // 10)


class Output(Protocol):
    """Where a down-track's packets go: a WebRTC leg, a plain-RTP socket, Python code."""

    def send(self, data: bytes) -> bool:
        """Send one RTP packet; False if it could not be sent (the leg is not up yet)."""
        ...


# An output that also takes a packet in two parts, ``send_parts(head, data, start, end)`` for
# ``head + data[start:end]`` (the native send, ``aiortc_glue.LegOutput``), so the forwarder never
# joins them in Python.
SendParts = Callable[[bytes, bytes, int, int], bool]


class _PythonTrackState:
    """DownTrack's count of copies sent; ``_fastpath.TrackState`` holds it in C (native.py)."""

    __slots__ = ("packets",)


class DownTrack(state_base("TrackState", _PythonTrackState)):  # type: ignore[misc]
    """One receive slot (a sendonly m-line, a plain-RTP stream, an in-process sink)."""

    # Slots: the native fan-out reads output and rewriter where they are (bind_track).
    __slots__ = (
        "codecs",
        "counters",
        "forward",
        "index",
        "kind",
        "mid",
        "output",
        "payload_types",
        "retransmitted",
        "rewriter",
        "role",
        "rtx",
        "rtx_sequence",
        "rtx_ssrc",
        "send_parts",
        "source",
        "waiting",
        "waiting_since",
        "want",
    )

    def __init__(self, kind: Kind, role: Role, index: int, output: Output, counters: Counters) -> None:
        self.kind = kind
        self.role = role  # "video" (program slot), "audio" or "preview"
        self.index = index
        self.output = output
        # The output's two-part send when it sends natively (``LegOutput.native``), else None.
        self.send_parts: SendParts | None = (
            getattr(output, "send_parts", None) if getattr(output, "native", False) else None
        )
        # And its rewrite + send in one call (``LegOutput.forward``): None, True or False.
        self.forward: Callable[..., bool | None] | None = (
            getattr(output, "forward", None) if self.send_parts is not None else None
        )
        self.counters = counters
        self.mid = ""
        self.rewriter: StreamRewriter = None  # type: ignore[assignment]  # set by configure()
        self.codecs: dict[str, CodecInfo] = {}
        self.payload_types: dict[int, CodecInfo] = {}
        self.want: str | None = None  # identity that should fill the slot
        self.source: Producer | None = None
        self.waiting: Producer | None = None  # switching to this one on its next keyframe
        self.waiting_since = 0.0
        self.packets = 0
        self.retransmitted = 0  # NACKs answered (the rewriter counts them among its packets)
        # RTX toward the subscriber (configure): answered NACKs go out as their own stream, so the
        # subscriber's statistics see the loss and the repair apart.
        self.rtx: dict[int, int] = {}
        self.rtx_ssrc = 0
        self.rtx_sequence = random.getrandbits(16)

    def sent_through(self, highest: int) -> int | None:
        """The packets this slot sent with sequence numbers up to the subscriber's ``highest``
        (first sends: answered NACKs left out), for its receiver reports (``LossCounter``); those
        sent after ``highest`` are taken as in flight. None: not configured."""
        rewriter = self.rewriter
        if rewriter is None:
            return None
        in_flight = (rewriter.last_sequence - highest) & 0xFFFF
        if in_flight >= 0x8000:  # the report is ahead of what was sent: a restart
            return None
        return rewriter.packets_sent - self.retransmitted - in_flight

    @property
    def configured(self) -> bool:
        return self.rewriter is not None

    def configure(
        self,
        ssrc: int,
        codecs: list[CodecInfo],
        extensions: dict[str, int],
        mid: str = "",
        rtx: dict[int, int] | None = None,
        rtx_ssrc: int = 0,
    ) -> bool:
        """What was negotiated for this slot: its SSRC, codecs (the subscriber's preference first),
        header extension ids, and RTX (RFC 4588: payload type -> its RTX payload type, the RTX
        stream's SSRC) when the subscriber takes retransmissions as their own stream. False if no
        codec we forward was negotiated."""
        self.rtx = dict(rtx or {}) if rtx_ssrc else {}
        self.rtx_ssrc = rtx_ssrc
        codecs = [c for c in codecs if c.name in FORWARDED_CODECS]
        if not codecs:
            return False
        self.mid = mid
        # First of each name wins (the subscriber's preference); exact payload types kept apart.
        self.codecs = {}
        for c in codecs:
            self.codecs.setdefault(c.name, c)
        self.payload_types = {c.payload_type: c for c in codecs}
        first = codecs[0]
        self.retransmitted = 0  # counted with the rewriter's packets, which start again here
        self.rewriter = StreamRewriter(
            ssrc,
            first.payload_type,
            self.kind,
            first.clock_rate,
            first.name,  # type: ignore[arg-type]
            ExtensionMap.from_uris(extensions),
            mid.encode(),
        )
        return True

    def accepts(self, producer: Producer) -> bool:
        return producer.codec in self.codecs

    def set_want(self, identity: str | None, producer: Producer | None) -> bool:
        """Fill the slot with ``identity``'s producer (None: empty). True if the occupant changed."""
        changed = identity != self.want
        self.want = identity
        if producer is not None and not self.accepts(producer):
            producer = None  # e.g. H.264 publisher, VP8-only subscriber: the slot stays empty
        if producer is None:
            self._cancel_wait()
            if self.source is not None:
                self.source.remove_consumer(self)
                self.source = None
                self.rewriter.detach()
            return changed
        if producer is self.source:
            self._cancel_wait()
            return changed
        if self.kind == "audio":
            self.take_source(producer, producer.ssrc or 0)
            return changed
        if producer is not self.waiting:
            self._cancel_wait()
            self.waiting = producer
            self.waiting_since = time.monotonic()
            producer.add_waiting(self)
        return changed

    def _cancel_wait(self) -> None:
        if self.waiting is not None:
            self.waiting.remove_waiting(self)
            self.waiting = None

    def take_source(self, producer: Producer, ssrc: int) -> None:
        """Switch now (a video slot calls this on the new source's keyframe packet)."""
        if self.source is not None and self.source is not producer:
            self.source.remove_consumer(self)
        if self.waiting is producer:
            self.counters.switch_wait.add(time.monotonic() - self.waiting_since)
        self.waiting = None
        # The publisher's own payload type if the subscriber negotiated it with the same codec
        # (e.g. the same H.264 profile), else the subscriber's first of that codec.
        same = self.payload_types.get(producer.payload_type)
        codec = same if same is not None and same.name == producer.codec else self.codecs[producer.codec]
        # Rebased on this very packet (a keyframe, or any audio packet): the codec may change too.
        self.rewriter.switch(ssrc, codec=producer.codec, payload_type=codec.payload_type)  # type: ignore[arg-type]
        if self.source is not producer:
            self.source = producer
            producer.add_consumer(self)

    def lose_source(self, producer: Producer) -> None:
        if self.source is producer:
            self.source = None
            self.rewriter.detach()
        if self.waiting is producer:
            self.waiting = None

    def on_keyframe_request(self) -> None:
        """The subscriber sent PLI/FIR for this slot: relay it to whoever feeds (or will feed) it."""
        self.counters.keyframe_requests_relayed += 1
        producer = self.waiting or self.source
        if producer is not None:
            producer.request_keyframe()

    def on_nack(self, sequence: int) -> None:
        counters = self.counters
        counters.nacks_received += 1
        source = self.source
        if source is None or source.cache is None:
            return
        source_sequence = self.rewriter.source_sequence(sequence)
        if source_sequence is None:
            return
        data = source.cache.get(source_sequence)
        if data is None:
            return
        header = parse_header(data)
        if header is None:
            return
        now = time.time()
        out = self.rewriter.rewrite(data, header, abs_send_time(now), None, False, now)
        if out is None:
            return
        self.retransmitted += 1
        rtx_type = self.rtx.get(out[1] & 0x7F) if self.rtx else None
        if rtx_type is not None:
            rewritten = parse_header(out)
            if rewritten is None:
                return
            out = rtx_packet(out, rewritten, rtx_type, self.rtx_ssrc, self.rtx_sequence)
            self.rtx_sequence = (self.rtx_sequence + 1) & 0xFFFF
        if self.output.send(out):
            counters.nacks_answered += 1
            if rtx_type is not None:
                counters.nacks_answered_rtx += 1

    def update_playout_delay(self) -> None:
        """Per tick: the playout delay this slot's packets carry, from its source's repair time."""
        rewriter, source = self.rewriter, self.source
        if rewriter is None or not rewriter.sends_playout_delay or self.kind != "video":
            return
        nack = source.reception.nack if source is not None else None
        want = playout_delay_for(nack.repair_time() if nack is not None and nack.rtt_known else None)
        have = rewriter.playout_delay
        if (want is None) != (have is None) or (
            want is not None and have is not None and abs(want[0] - have[0]) >= PLAYOUT_HYSTERESIS
        ):
            rewriter.set_playout_delay(want)

    def close(self) -> None:
        if self.rewriter is not None:
            self.set_want(None, None)
