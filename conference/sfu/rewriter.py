"""``StreamRewriter``: one per down-track (one receive slot of one subscriber). ``switch(ssrc)`` starts
  a switch to another source: the current source keeps flowing until the new one's keyframe (video) or
  first packet (audio) arrives, where sequence numbers, timestamps and VP8 picture id / TL0PICIDX are
  rebased to continue the slot's stream (``switch()`` without an SSRC accepts the next keyframe of any
  source). ``resync()`` waits for the current source's next keyframe (a keyframe that could not be
  delivered); a source whose numbering jumps by more than ``MAX_SEQUENCE_STEP`` (it restarted) does
  the same by itself; ``wants_keyframe`` names the SSRC the slot waits for. ``detach()`` empties the
  slot. ``rewrite(data, header, abs_send_time, audio_level, keyframe, now)`` returns the packet to
  protect and send, or ``None`` to send nothing (another source, waiting for a keyframe,
  padding-only, too old). ``drop(header)`` accounts for a deliberately dropped packet of the current
  source so the output has no gap. ``source_sequence(out_seq)`` maps a NACKed sequence number back to
  the current source's (for ``PacketCache``); ``packets_sent``, ``octets_sent``, ``last_timestamp``,
  ``last_time`` and ``rtp_timestamp_at(now)`` feed sender reports.
- ``PacketCache``: per publisher stream, the last 1024 packets by sequence number, to answer NACKs.

Cost per packet (``python tests/bench_rtp.py``, this 2-core VM): rewrite of a 1200-byte VP8
packet 1.9-2.0 us, an Opus packet 1.3-1.5 us (once per subscriber). The hot path (``rewrite`` for
the newest packet of a settled source) allocates three objects: the packed header, the payload
slice and the result; everything else (switches, late packets, drops, padding, other VP8
descriptor forms) takes ``_rewrite_slow``.
"""

from __future__ import annotations

import random
import struct

from ..downlink_estimate import SentPackets
from .native import state_base
from .packet import PICTURE_ID_MASK, SEQ_MASK, TS_MASK, Codec, ExtensionMap, Kind, RtpHeader, _extension_block
from .payload import vp8_layout

# Rewritten VP8 descriptors: X and I set, 15-bit picture id (M=1), then TL0PICIDX and T/K if present.
_VP8_I = struct.Struct("!BBH")
_VP8_I1 = struct.Struct("!BBHB")  # with L or with T/K
_VP8_ILT = struct.Struct("!BBHBB")
_VP8_L = struct.Struct("!BBB")  # no picture id, L
_VP8_LT = struct.Struct("!BBBB")

_SEGMENTS_KEPT = 8  # earlier (valid_from, offset) pairs of the current source, for late packets
# A source whose sequence number moves further than this (either way) has restarted its stream (a
# publisher that reconnected with the same SSRC, a sender reset): the slot rebases on it instead of
# sending numbers the subscriber would take for ancient or wildly early packets.
MAX_SEQUENCE_STEP = 3000
# A late packet (a publisher's retransmission, reordering) or a NACK answer this many or more behind
# the slot's newest is not sent: the leg's SRTP send window (aiortc_glue.SEND_REPLAY_WINDOW) would
# refuse it, and it is past any playout time by then (256 packets: 0.85 s at 2.5 Mbit/s).
LATE_PACKET_WINDOW = 256


class _PythonState:
    """The rewriter's numbers that the native fan-out reads and writes on every copy, as plain slots:
    StreamRewriter's base without the native helper. With it the base is ``_fastpath.RewriterState``,
    which holds the same names as C integers in the object itself (no int object to chase or
    allocate per copy); Python code sees no difference."""

    __slots__ = (
        "_abs_mask",
        "_level_mask",
        "_level_shift",
        "_live",
        "_pid_offset",
        "_tag",
        "_vp8",
        "in_highest",
        "in_picture_id",
        "last_timestamp",
        "octets_sent",
        "packets_sent",
        "payload_type",
        "seq_offset",
        "ssrc",
        "tail",
        "ts_offset",
    )


class StreamRewriter(state_base("RewriterState", _PythonState)):  # type: ignore[misc]
    """One receive slot of one subscriber.

    Turns the packets of whichever source fills the slot into one continuous RTP stream with the
    slot's own SSRC, payload type, sequence numbers, timestamps and VP8 picture ids. The source's
    sequence numbers map through an offset (``out = in + seq_offset``) fixed when the source starts
    (a rebase) and decreased by one on every deliberate drop; late packets and retransmissions use the
    offset that applied when they were due.
    """

    # With the numbers of _PythonState (or RewriterState) from the base.
    __slots__ = (
        "_ext",
        "_mid",
        "_min_step",
        "_pack",
        "_pack_vp8",
        "_pending",
        "_pending_any",
        "_pending_codec",
        "_pending_payload_type",
        "_prefix",
        "_rebase_vp8",
        "_segments",
        "_suffix",
        "_tl0_offset",
        "_twcc",
        "base_out_sequence",
        "clock_rate",
        "codec",
        "in_valid_from",
        "kind",
        "last_time",
        "last_tl0picidx",
        "packets_dropped",
        "playout_delay",
        "source_ssrc",
    )

    def __init__(
        self,
        ssrc: int,
        payload_type: int,
        kind: Kind,
        clock_rate: int,
        codec: Codec,
        ext: ExtensionMap,
        mid: bytes,
        *,
        first_sequence: int | None = None,
        first_timestamp: int | None = None,
        first_picture_id: int | None = None,
    ) -> None:
        if kind not in ("audio", "video"):
            raise ValueError(f"kind must be audio or video, not {kind!r}")
        if codec not in ("vp8", "h264", "opus"):
            raise ValueError(f"unsupported codec {codec!r}")
        if not 0 <= payload_type <= 127 or not 0 <= ssrc <= TS_MASK or clock_rate <= 0:
            raise ValueError("payload type, SSRC or clock rate out of range")
        self.ssrc = ssrc
        self.payload_type = payload_type
        self.kind = kind
        self.clock_rate = clock_rate
        self.codec: str = codec
        self._vp8 = codec == "vp8"
        # A switch never moves the clock back and, for audio, never overlaps the previous frame.
        self._min_step = clock_rate // 50 if kind == "audio" else 1
        self._ext = ext
        self._mid = mid
        self.playout_delay: tuple[int, int] | None = None
        # The leg's transport-wide sequence (shared by its slots) once set_transport_cc gave it.
        self._twcc: SentPackets | None = None
        self.tail = 0  # where the payload begins in the packet the last rewrite_head took
        self._build_extensions()
        # The output stream so far ("last" values are what the next packet continues from).
        start_seq = random.getrandbits(16) if first_sequence is None else first_sequence
        self.last_timestamp = random.getrandbits(32) if first_timestamp is None else first_timestamp & TS_MASK
        start_pid = random.getrandbits(15) if first_picture_id is None else first_picture_id
        self.last_tl0picidx = random.getrandbits(8)
        self.last_time: float | None = None  # wall time of the newest packet sent; None: none yet
        self.packets_sent = 0
        self.octets_sent = 0
        self.packets_dropped = 0
        # The current source and how it maps onto the output.
        self.source_ssrc: int | None = None
        self._live = -1  # the source's SSRC while no switch is pending: the hot path's one check
        # last_sequence and last_picture_id derive from these: one store less per packet.
        self.seq_offset = (start_seq - 1) & SEQ_MASK
        self.ts_offset = 0
        self._pid_offset = (start_pid - 1) & PICTURE_ID_MASK
        self._tl0_offset = 0
        self._rebase_vp8 = False
        self._segments: list[tuple[int, int]] = []
        self.in_highest = 0  # newest source sequence number seen
        self.in_valid_from = 0  # oldest source sequence number seq_offset applies to
        self.base_out_sequence = 0  # first output sequence number of the current source
        self.in_picture_id = 0  # newest source picture id, unwrapped to 15 bits
        # A switch in progress.
        self._pending: int | None = None
        self._pending_any = False
        self._pending_codec: str | None = None
        self._pending_payload_type: int | None = None

    # -- control (rare) ---------------------------------------------------------------------------

    def _build_extensions(self) -> None:
        block = _extension_block(
            self._ext, self._mid, self.kind == "audio", self.playout_delay, self._twcc is not None
        )
        self._prefix = block.prefix
        self._suffix = block.suffix
        self._tag = block.tag
        self._abs_mask = block.abs_mask
        self._level_mask = block.level_mask
        self._level_shift = block.level_shift
        # RTP header + extension profile/length + variable word + mid and padding: one pack call;
        # the VP8 variant adds the descriptor browsers send (X, I with a 15-bit picture id).
        head = f"!BBHII4sQ{len(block.suffix)}s"
        self._pack = struct.Struct(head).pack
        self._pack_vp8 = struct.Struct(head + "BBH").pack

    @property
    def sends_playout_delay(self) -> bool:
        return bool(self._ext.playout_delay)

    def set_playout_delay(self, delay: tuple[int, int] | None) -> None:
        """The playout-delay element every packet carries from now on ((min, max) in 10 ms units;
        None: none). Only if the subscriber negotiated the extension."""
        if delay != self.playout_delay and self._ext.playout_delay:
            self.playout_delay = delay
            self._build_extensions()

    @property
    def sends_transport_cc(self) -> bool:
        return self._twcc is not None

    def set_transport_cc(self, sent: SentPackets | None) -> None:
        """Stamp every packet from now on with the leg's next transport-wide sequence number from
        ``sent`` (shared by the leg's slots) and note it there as sent; None: stop. Only if the
        subscriber negotiated the extension."""
        if sent is not self._twcc and (sent is None or self._ext.transport_cc):
            self._twcc = sent
            self._build_extensions()

    def switch(
        self, ssrc: int | None = None, *, codec: Codec | None = None, payload_type: int | None = None
    ) -> None:
        """Fill the slot from the stream ``ssrc`` from its next keyframe (video) or packet (audio).

        Until then the current source keeps flowing, so the slot never goes blank. Without ``ssrc``
        the slot takes the next keyframe of any source and sends nothing until then. ``codec`` and
        ``payload_type`` change the slot's codec at the rebase (the subscriber must have negotiated
        that payload type). Switching to the current source (same codec) again cancels a pending switch and
        never waits for a keyframe.
        """
        if codec is not None and codec not in ("vp8", "h264", "opus"):
            raise ValueError(f"unsupported codec {codec!r}")
        if payload_type is not None and not 0 <= payload_type <= 127:
            raise ValueError("payload type out of range")
        if (
            ssrc is not None
            and ssrc == self.source_ssrc
            and codec in (None, self.codec)
            and payload_type in (None, self.payload_type)
        ):
            self._pending = None
            self._pending_any = False
            self._settle()
            return
        self._pending = ssrc
        self._pending_any = ssrc is None
        self._live = -1
        self._pending_codec = codec
        self._pending_payload_type = payload_type

    def resync(self) -> None:
        """Send nothing more of the current source until its next keyframe (video; audio resumes at
        once), continuing the numbering from there. For when a packet the slot must start from (the
        keyframe after a switch) could not be delivered, e.g. the subscriber's leg was not connected."""
        if self.source_ssrc is None or self.switching:
            return  # nothing to resync, or a switch already waits for a keyframe
        self._pending = self.source_ssrc
        self._pending_any = False
        self._pending_codec = None
        self._pending_payload_type = None
        self._live = -1

    def detach(self) -> None:
        """Empty the slot: send nothing until the next ``switch``."""
        self.source_ssrc = None
        self._live = -1
        self._pending = None
        self._pending_any = False

    @property
    def last_sequence(self) -> int:
        """The newest sequence number sent (before anything is sent: the one before the first)."""
        return (self.in_highest + self.seq_offset) & SEQ_MASK

    @property
    def last_picture_id(self) -> int:
        """The newest VP8 picture id sent."""
        return (self.in_picture_id + self._pid_offset) & PICTURE_ID_MASK

    def _settle(self) -> None:
        # The fast path takes the source's packets once no switch is pending and the VP8 picture id
        # offset is known (it is fixed by the first packet the slow path rewrites).
        if self._pending is None and not self._pending_any and not self._rebase_vp8:
            self._live = -1 if self.source_ssrc is None else self.source_ssrc

    @property
    def switching(self) -> bool:
        """A switch waits for the new source's keyframe."""
        return self._pending is not None or self._pending_any

    @property
    def wants_keyframe(self) -> int | None:
        """The SSRC whose keyframe this video slot waits for (a switch, or a source that restarted its
        numbering), or None; the SFU asks that publisher for one. -1: any source's keyframe."""
        if self.kind != "video":
            return None
        if self._pending_any:
            return -1
        return self._pending

    def _admit(self, header: RtpHeader, keyframe: bool, now: float) -> bool:
        """A packet that is not plainly from the current source: rebase, keep, or reject it."""
        ssrc = header[4]
        if self._pending_any or ssrc == self._pending:
            if keyframe or self.kind == "audio":
                self._rebase(header, now)
                return True
            return False
        return ssrc == self.source_ssrc

    def _rebase(self, header: RtpHeader, now: float) -> None:
        seq = header[2]
        out_seq = (self.last_sequence + 1) & SEQ_MASK
        out_ts = self.last_timestamp
        if self.last_time is not None:
            step = int((now - self.last_time) * self.clock_rate)
            out_ts = (out_ts + max(step, self._min_step)) & TS_MASK
        self.seq_offset = (out_seq - seq) & SEQ_MASK
        self.ts_offset = (out_ts - header[3]) & TS_MASK
        self.in_highest = (seq - 1) & SEQ_MASK
        self.in_valid_from = seq
        self.base_out_sequence = out_seq
        self.source_ssrc = header[4]
        self._segments.clear()
        if self._pending_codec is not None:
            self.codec = self._pending_codec
            self._vp8 = self.codec == "vp8"
        self._rebase_vp8 = self._vp8
        if self._pending_payload_type is not None:
            self.payload_type = self._pending_payload_type
        self._pending = None
        self._pending_any = False
        self._pending_codec = None
        self._pending_payload_type = None
        self._live = -1
        self._settle()

    def drop(self, header: RtpHeader) -> None:
        """A packet of the current source that is deliberately not sent: close the gap it leaves."""
        if header[4] != self.source_ssrc or self.switching:
            return
        seq = header[2]
        delta = (seq - self.in_highest) & SEQ_MASK
        if delta == 0 or delta >= MAX_SEQUENCE_STEP:
            return  # an old packet (its number is accounted for) or a restart (the next packet rebases)
        self._skip(seq)

    def _skip(self, seq: int) -> None:
        # Packets up to ``seq`` keep the old offset (late ones still map right); newer ones shift.
        segments = self._segments
        segments.append((self.in_valid_from, self.seq_offset))
        if len(segments) > _SEGMENTS_KEPT:
            del segments[0]
        self.in_highest = seq
        self.seq_offset = (self.seq_offset - 1) & SEQ_MASK
        self.in_valid_from = (seq + 1) & SEQ_MASK
        self.packets_dropped += 1

    def _late_offset(self, seq: int) -> int | None:
        """The sequence offset that applied to an old packet of the current source, or None."""
        for valid_from, offset in reversed(self._segments):
            if (seq - valid_from) & SEQ_MASK < 0x8000:
                return offset
        return None

    # -- per packet -------------------------------------------------------------------------------

    def rewrite(
        self,
        data: bytes,
        header: RtpHeader,
        abs_send_time: int,
        audio_level: int | None,
        keyframe: bool,
        now: float,
    ) -> bytes | None:
        """The packet as this slot sends it, or None to send nothing.

        ``abs_send_time`` is ``abs_send_time(now)``; ``audio_level`` the publisher's level (None is
        sent as silence); ``keyframe`` whether the packet starts a keyframe (``is_keyframe``).
        """
        head = self.rewrite_head(data, header, abs_send_time, audio_level, keyframe, now)
        if head is None:
            return None
        return head + data[self.tail : header[9]]

    def rewrite_head(
        self,
        data: bytes,
        header: RtpHeader,
        abs_send_time: int,
        audio_level: int | None,
        keyframe: bool,
        now: float,
    ) -> bytes | None:
        """``rewrite`` in two parts, for an output that joins them itself (the native send): the
        rewritten header (with the VP8 descriptor) or None; the packet is that + ``data[self.tail:
        header.end]``. The payload is never copied here."""
        # Fast path: the newest packet of the settled source, Opus/H.264 or VP8 as browsers send it
        # (X and I with a 15-bit picture id only). Everything else takes _rewrite_slow.
        marker, _, seq, timestamp, ssrc, _, _, _, pos, end = header
        # (seq - highest - 1) & 0xFFFF < MAX_SEQUENCE_STEP: seq is a plausible step ahead of the newest
        if ssrc != self._live or (seq - self.in_highest - 1) & 0xFFFF >= MAX_SEQUENCE_STEP or end - pos < 5:
            return self._rewrite_slow(data, header, abs_send_time, audio_level, keyframe, now)
        out_seq = (seq + self.seq_offset) & 0xFFFF
        out_ts = (timestamp + self.ts_offset) & 0xFFFFFFFF
        if not self._vp8:
            word = self._tag | (abs_send_time & self._abs_mask)
            if self._level_mask:
                word |= (127 if audio_level is None else audio_level & 0x7F) << self._level_shift
            twcc = self._twcc
            if twcc is not None:
                word |= twcc.stamp(now, 24 + len(self._suffix) + end - pos)
            packet = self._pack(
                0x90,
                marker << 7 | self.payload_type,
                out_seq,
                out_ts,
                self.ssrc,
                self._prefix,
                word,
                self._suffix,
            )
            self.tail = pos
        elif data[pos] & 0x80 and data[pos + 1] == 0x80 and data[pos + 2] & 0x80:
            pid = ((data[pos + 2] & 0x7F) << 8) | data[pos + 3]
            out_pid = (pid + self._pid_offset) & 0x7FFF
            word = self._tag | (abs_send_time & self._abs_mask)
            twcc = self._twcc
            if twcc is not None:  # the descriptor stays 4 bytes: the packet is as long as non-VP8's
                word |= twcc.stamp(now, 24 + len(self._suffix) + end - pos)
            packet = self._pack_vp8(
                0x90,
                marker << 7 | self.payload_type,
                out_seq,
                out_ts,
                self.ssrc,
                self._prefix,
                word,
                self._suffix,
                data[pos],
                0x80,
                0x8000 | out_pid,
            )
            self.tail = pos + 4
            self.in_picture_id = pid
        else:
            return self._rewrite_slow(data, header, abs_send_time, audio_level, keyframe, now)
        self.in_highest = seq
        self.last_timestamp = out_ts
        self.last_time = now
        self.packets_sent += 1
        self.octets_sent += end - pos
        return packet

    def _rewrite_slow(
        self,
        data: bytes,
        header: RtpHeader,
        abs_send_time: int,
        audio_level: int | None,
        keyframe: bool,
        now: float,
    ) -> bytes | None:
        """Any packet: switches, late and retransmitted packets, padding, every VP8 descriptor form."""
        marker, _, seq, timestamp, ssrc, _, _, _, pos, end = header
        if (ssrc != self.source_ssrc or self.switching) and not self._admit(header, keyframe, now):
            return None
        if MAX_SEQUENCE_STEP < (seq - self.in_highest) & SEQ_MASK < 0x10000 - MAX_SEQUENCE_STEP:
            # The source restarted its numbering: continue the slot from here (video: from a keyframe).
            if self.kind == "audio" or keyframe:
                self._rebase(header, now)
            else:
                self._pending = ssrc
                self._live = -1
                return None
        offset = self.seq_offset
        newest = 0 < (seq - self.in_highest) & SEQ_MASK < 0x8000
        if not newest and (self.in_highest - seq) & SEQ_MASK >= LATE_PACKET_WINDOW:
            return None  # too late (see LATE_PACKET_WINDOW)
        if not newest and (seq - self.in_valid_from) & SEQ_MASK >= 0x8000:
            late = self._late_offset(seq)
            if late is None:
                return None  # from before this source started in the slot
            offset = late
        if pos >= end:  # padding only: nothing to forward, keep the numbering continuous
            if newest:
                self._skip(seq)
            return None
        out_seq = (seq + offset) & SEQ_MASK
        out_ts = (timestamp + self.ts_offset) & TS_MASK
        word = self._tag | (abs_send_time & self._abs_mask)
        if self._level_mask:
            word |= (127 if audio_level is None else audio_level & 0x7F) << self._level_shift
        twcc = self._twcc
        if twcc is not None:
            word |= twcc.next_seq  # taken (stamp) below once the packet is sure to be sent
        head = self._pack(
            0x90,
            marker << 7 | self.payload_type,
            out_seq,
            out_ts,
            self.ssrc,
            self._prefix,
            word,
            self._suffix,
        )
        if self._vp8 and data[pos] & 0x80:
            packet = self._vp8_rewrite(data, pos, end, head, newest)
            if packet is None:
                return None
        else:
            packet = head
            self.tail = pos
            if self._rebase_vp8:  # a VP8 source without picture ids: nothing to rebase
                self._rebase_vp8 = False
                self._settle()
        if newest:
            self.in_highest = seq
            self.last_timestamp = out_ts
            self.last_time = now
        if twcc is not None:
            twcc.stamp(now, len(packet) + end - self.tail)
        self.packets_sent += 1
        self.octets_sent += end - pos
        return packet

    def _vp8_rewrite(self, data: bytes, pos: int, end: int, head: bytes, newest: bool) -> bytes | None:
        """Rewrite the picture id (always sent in 15-bit form) and TL0PICIDX of an extended
        descriptor: the header and descriptor (the payload from ``self.tail``), None if the
        descriptor is truncated."""
        p, tl0, tk, q = vp8_layout(data, pos, end)
        pid = -1
        b1 = data[pos + 1] if end - pos > 1 else 0
        if q >= end:
            return None  # truncated descriptor or no VP8 data: not worth forwarding
        b0 = data[pos]
        rebase = self._rebase_vp8
        if rebase:
            self._rebase_vp8 = False
            self._settle()
        out_pid = 0
        if p >= 0:
            if p & 0x80:
                pid = ((p & 0x7F) << 8) | data[pos + 3]
            elif rebase:
                pid = p
            else:  # 7-bit form: unwrap against the newest picture id seen
                last = self.in_picture_id
                d = (p - last) & 0x7F
                pid = (last + d - (128 if d >= 64 else 0)) & PICTURE_ID_MASK
            if rebase:
                self._pid_offset = (self.last_picture_id + 1 - pid) & PICTURE_ID_MASK
            out_pid = 0x8000 | ((pid + self._pid_offset) & PICTURE_ID_MASK)
            if newest:
                self.in_picture_id = pid
        if tl0 >= 0:
            if rebase:
                self._tl0_offset = (self.last_tl0picidx + 1 - tl0) & 0xFF
            out_tl0 = (tl0 + self._tl0_offset) & 0xFF
            if newest:
                self.last_tl0picidx = out_tl0
            if tk >= 0:
                if p >= 0:
                    desc = _VP8_ILT.pack(b0, b1, out_pid, out_tl0, tk)
                else:
                    desc = _VP8_LT.pack(b0, b1, out_tl0, tk)
            elif p >= 0:
                desc = _VP8_I1.pack(b0, b1, out_pid, out_tl0)
            else:
                desc = _VP8_L.pack(b0, b1, out_tl0)
        elif p >= 0:
            desc = _VP8_I1.pack(b0, b1, out_pid, tk) if tk >= 0 else _VP8_I.pack(b0, b1, out_pid)
        else:
            self.tail = pos
            return head  # nothing to rewrite
        self.tail = q
        return head + desc

    # -- feedback and reports ---------------------------------------------------------------------

    def source_sequence(self, out_sequence: int) -> int | None:
        """The current source's sequence number behind a sent (e.g. NACKed) one, or None."""
        if self.source_ssrc is None or self.last_time is None:
            return None
        out_sequence &= SEQ_MASK
        if (out_sequence - self.base_out_sequence) & SEQ_MASK >= 0x8000:
            return None  # sent for an earlier source
        if (self.last_sequence - out_sequence) & SEQ_MASK >= 0x8000:
            return None  # not sent yet
        seq = (out_sequence - self.seq_offset) & SEQ_MASK
        if (seq - self.in_valid_from) & SEQ_MASK < 0x8000:
            return seq
        for valid_from, offset in reversed(self._segments):
            seq = (out_sequence - offset) & SEQ_MASK
            if (seq - valid_from) & SEQ_MASK < 0x8000:
                return seq
        return None

    def rtp_timestamp_at(self, now: float) -> int:
        """The slot's RTP clock at wall time ``now`` (for sender reports)."""
        if self.last_time is None:
            return self.last_timestamp
        return (self.last_timestamp + int((now - self.last_time) * self.clock_rate)) & TS_MASK
