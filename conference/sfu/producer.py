"""A producer: one published track (an endpoint's microphone or camera, a clip, a telephone call)
as it arrives at the server, and the hot path that forwards each of its packets to its consumers.

A producer knows its transport only through ``Upstream`` (send feedback, ask for a keyframe) and
its room only through ``ProducerListener`` (its first packet, the recording sink): consumers
register with it through ``add_consumer`` / ``add_waiting``, they do not edit its lists.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Literal, Protocol

from ..media import RecordingSink, TrackSink
from ..policy import Voice
from .audiolevel import OpusLevelMeter
from .keyframes import KeyFrameRequestManager
from .packet import URI_AUDIO_LEVEL, CodecInfo, RtpHeader, abs_send_time, audio_level
from .payload import is_keyframe, vp8_keyframe_width
from .reception import PacketCache, ReceptionStats
from .rtcp import rtcp_nack, rtcp_receiver_report, rtcp_remb
from .stats import Counters

try:  # the native fan-out (conference/sfu/_fastpath.c), when it was built
    from ._fastpath import fan_out as _native_fan_out
except ImportError:
    _native_fan_out = None

if TYPE_CHECKING:
    from .consumer import DownTrack

logger = logging.getLogger(__name__)

Kind = Literal["audio", "video"]

REPORT_INTERVAL = 1.0  # receiver reports (and REMB) to each publisher
# A negotiated track carries one stream at a time; a browser changes its SSRC rarely (a new camera
# on some browsers, a renegotiation). Every change costs a keyframe request and, while recording,
# a track file; so a track may carry at most MAX_STREAMS distinct (SSRC, payload type) streams,
# and change stream at most STREAM_CHANGE_BURST times at once, then once per
# STREAM_CHANGE_REFILL_S. Packets of a refused stream are dropped; the current stream goes on.
MAX_STREAMS = 8
STREAM_CHANGE_BURST = 4
STREAM_CHANGE_REFILL_S = 5.0
# A simulcast layer with no packet for this long is not arriving (the browser stopped it: its
# uplink estimate fell, or the camera is too small for it): its subscribers move to another layer.
LAYER_SILENT_S = 1.0
# A layer that (re)starts is offered to slots once it has been arriving this long: a browser whose
# uplink estimate hovers at a layer's threshold stops and starts it every few seconds, and each
# move of a slot onto it and off again costs a keyframe and often a freeze (seen behind a 150 +-
# 30 ms / 2 % link: 10 switches in 30 s). Moving off a layer that stopped is at once.
LAYER_RESUME_S = 5.0
# A layer that stops again within LAYER_STABLE_S of (re)starting is flapping: its next resume
# waits twice as long, up to LAYER_RESUME_MAX_S (behind 150 +- 30 ms / 2 % Chromium paused its
# 640 layer every 5-10 s: each pause a switch down with a freeze while the lower layer's keyframe
# crossed the link).
LAYER_STABLE_S = 30.0
LAYER_RESUME_MAX_S = 40.0
BITRATE_WINDOW_S = 1.0


class Upstream(Protocol):
    """The transport a producer's packets arrive on, as the producer needs it."""

    @property
    def closed(self) -> bool: ...

    def send_rtcp(self, data: bytes) -> bool:
        """Send RTCP to the publisher; False if the transport cannot (not connected yet)."""
        ...

    def send_pli(self, media_ssrc: int) -> None:
        """Ask the publisher for a keyframe of ``media_ssrc``."""
        ...

    def last_sender_report(self, ssrc: int) -> tuple[int, float] | None:
        """(NTP middle 32 bits, time.time() of arrival) of the publisher's last sender report."""
        ...

    def round_trip(self) -> float | None:
        """The transport's round trip from RTCP (seconds), if it has one."""
        ...


class ProducerListener(Protocol):
    """The room a producer belongs to, as the producer needs it (``Router``)."""

    @property
    def sink(self) -> RecordingSink | None: ...

    def producer_started(self, producer: Producer) -> None: ...


class Producer:
    """One incoming stream: reception statistics, NACKs, keyframe requests, recording, forwarding."""

    def __init__(
        self,
        identity: str,
        kind: Kind,
        codecs: list[CodecInfo],
        extensions: dict[str, int],
        upstream: Upstream,
        listener: ProducerListener,
        counters: Counters,
        *,
        rtcp_ssrc: int = 0,
        max_bitrate: int = 0,
    ) -> None:
        self.identity = identity
        self.kind = kind
        self.upstream = upstream
        self.listener = listener
        self.counters = counters
        self.rtcp_ssrc = rtcp_ssrc  # our SSRC in the feedback we send the publisher
        self.max_bitrate = max_bitrate  # REMB cap for video (0: none sent)
        self.codecs = {c.payload_type: c for c in codecs}
        self.extensions = extensions
        self.level_ext = extensions.get(URI_AUDIO_LEVEL, 0)
        self.codec = ""  # of the packets actually arriving
        self.payload_type = -1
        self.clock_rate = 90_000 if kind == "video" else 48_000
        self.ssrc: int | None = None
        self.down_tracks: list[DownTrack] = []
        self.pending: list[DownTrack] = []  # waiting for this producer's next keyframe
        self.cache = PacketCache() if kind == "video" else None
        self.reception = ReceptionStats(self.clock_rate, track_missing=kind == "video")
        self.last_report = 0.0
        self.keyframes = KeyFrameRequestManager(self._send_pli)
        self._nack_timer: asyncio.TimerHandle | None = None
        self._nack_timer_at = float("inf")
        self.keyframe_wanted = False
        # A recording opened since the last keyframe: its track must start decodable, so the tick
        # asks again while none comes (Chromium ignores a PLI within 300 ms of the last one).
        self.sink_wants_keyframe = False
        self.packets = 0
        self.octets = 0
        self.last_packet_at = 0.0
        self._steady_from = 0.0  # when the layer started arriving (0: it is not)
        self._resume_s = LAYER_RESUME_S  # how long it must arrive before it is offered again
        # Speaker detection: loudness (127 - level) summed over the current tick.
        self.voice = Voice(identity)
        self.level_sum = 0
        self.level_count = 0
        # Created on the first audio packet without a level (a publisher that is not a browser).
        self.meter: OpusLevelMeter | None = None
        self.sink: TrackSink | None = None
        # Recorded tracks by stream: a stream that comes back writes on in its own file.
        self._sinks: dict[tuple[int, int], TrackSink] = {}
        self._streams: set[tuple[int, int]] = set()
        self._changes = float(STREAM_CHANGE_BURST)
        self._changes_at = time.monotonic()
        # Simulcast (``simulcast.SimulcastLayers``): this producer's layer (0 = lowest; -1: the
        # publisher sends one stream), the group of its layers low to high, and what the layer
        # choice (``conference.layer_choice``) needs: its width from its keyframes, its bitrate.
        self.layer = -1
        self.group: list[Producer] | None = None
        self.width = 0
        self.bitrate = 0
        self._rate_octets = 0
        self._rate_at = 0.0

    def __repr__(self) -> str:
        return f"Producer({self.identity}/{self.kind})"

    @property
    def audible(self) -> bool:
        return self.voice.audible

    def set_audible(self, audible: bool) -> None:
        """Muted on the server (by the chair or themselves): nothing of it leaves, not even to the
        recorder."""
        self.voice.audible = audible
        if not audible:
            self.voice.silence()

    # consumers
    def add_consumer(self, track: DownTrack) -> None:
        if track not in self.down_tracks:
            self.down_tracks.append(track)

    def remove_consumer(self, track: DownTrack) -> None:
        if track in self.down_tracks:
            self.down_tracks.remove(track)

    def add_waiting(self, track: DownTrack) -> None:
        """``track`` switches to this producer on its next keyframe."""
        if track not in self.pending:
            self.pending.append(track)
        self.request_keyframe(switch=True)

    def remove_waiting(self, track: DownTrack) -> None:
        if track in self.pending:
            self.pending.remove(track)

    # the hot path
    def receive(self, data: bytes, header: RtpHeader) -> None:
        """One decrypted packet from the publisher."""
        started = time.perf_counter()
        counters = self.counters
        counters.packets_in += 1
        counters.bytes_in += len(data)
        self.packets += 1
        self.octets += len(data)
        if (header.payload_type != self.payload_type or header.ssrc != self.ssrc) and not self._new_stream(
            header
        ):
            return
        now = time.time()
        self.last_packet_at = now
        if self.reception.add(header.sequence, header.timestamp, now):
            self._arm_nack_timer(now)
        level = None
        if self.cache is not None:
            keyframe = is_keyframe(self.codec, data, header)
            self.cache.put(header.sequence, data)
            if keyframe:
                self.keyframe_wanted = self.sink_wants_keyframe = False
                answer = self.keyframes.received()
                if answer is not None:
                    counters.keyframe_answer.add(answer)
                if self.layer >= 0 and self.codec == "vp8":
                    self.width = (
                        vp8_keyframe_width(data, header.payload_offset, header.payload_end) or self.width
                    )
                nack = self.reception.nack
                if nack is not None and nack.missing:
                    nack.keyframe(header.sequence)
                if self.pending:
                    self._switch_pending(header.ssrc)
        else:
            keyframe = True
            if self.level_ext:
                level = audio_level(data, header, self.level_ext)
            if level is not None:
                self.level_sum += 127 - level
                self.level_count += 1
            else:
                # No audio-level extension: the level is measured from the Opus in the next tick.
                meter = self.meter
                if meter is None:
                    meter = self.meter = OpusLevelMeter()
                level = meter.add(data, header)
            if not self.voice.audible:
                counters.packets_dropped_muted += 1
                return
        if self.sink is not None:
            self.sink.write(now, data)
        tracks = self.down_tracks
        if not tracks:
            return
        ast = abs_send_time(now)
        if tracks[0].forward is not None and _native_fan_out is not None:
            # The native send: the whole loop in one call (tracks it cannot take come back to
            # _forward_one, the reference).
            sent = _native_fan_out(tracks, data, header, ast, level, keyframe, now, self._forward_one)
        else:
            sent = 0
            forward_one = self._forward_one
            for track in tracks:
                sent += forward_one(track, data, header, ast, level, keyframe, now)
        if sent:
            counters.packets_forwarded += 1
            counters.delay.add(time.perf_counter() - started)

    def _forward_one(
        self,
        track: DownTrack,
        data: bytes,
        header: RtpHeader,
        ast: int,
        level: int | None,
        keyframe: bool,
        now: float,
    ) -> bool:
        """One consumer's copy of a packet: rewrite, protect, send; True if it went out."""
        rewriter = track.rewriter
        forward = track.forward
        if forward is not None:  # the native send: rewrite, protect and send in one call
            ok = forward(rewriter, data, header, ast, level, keyframe, now)
            if ok is None:
                return False
        else:
            head = rewriter.rewrite_head(data, header, ast, level, keyframe, now)
            if head is None:
                return False
            # What rewriter.rewrite() gives, without its extra call.
            ok = track.output.send(head + data[rewriter.tail : header[9]])
        if ok:
            track.packets += 1
            return True
        if self.cache is not None:
            # The subscriber's leg is not up yet: what it missed must restart from a keyframe,
            # or its decoder would begin on delta frames.
            track.rewriter.resync()
            self.request_keyframe()
        return False

    def _stream_allowed(self, key: tuple[int, int]) -> bool:
        """Whether the track may switch to stream ``key`` now (see MAX_STREAMS)."""
        if key not in self._streams and len(self._streams) >= MAX_STREAMS:
            return False
        if self.ssrc is None:
            return True  # the first stream is not a change
        now = time.monotonic()
        self._changes = min(
            STREAM_CHANGE_BURST, self._changes + (now - self._changes_at) / STREAM_CHANGE_REFILL_S
        )
        self._changes_at = now
        if self._changes < 1.0:
            return False
        self._changes -= 1.0
        return True

    def _new_stream(self, header: RtpHeader) -> bool:
        codec = self.codecs.get(header.payload_type)
        if codec is None:
            return False
        key = (header.ssrc, header.payload_type)
        if not self._stream_allowed(key):
            self.counters.stream_changes_refused += 1
            return False
        self._streams.add(key)
        old_key = (self.ssrc, self.payload_type) if self.ssrc is not None else None
        self.codec = codec.name
        self.payload_type = header.payload_type
        self.clock_rate = codec.clock_rate
        first = self.ssrc is None
        self.ssrc = header.ssrc
        self.reception = ReceptionStats(self.clock_rate, track_missing=self.kind == "video")
        self._cancel_nack_timer()
        if self.upstream.closed:
            return False
        if self.sink is not None:
            # A new stream (SSRC, payload type or codec) is a recorded track of its own (the archive
            # describes each track by one codec and payload type); one that comes back goes on in
            # its file, so the files stay within MAX_STREAMS.
            if old_key is not None:
                self._sinks[old_key] = self.sink
            self.sink = self._sinks.get(key)
            room_sink = self.listener.sink
            if self.sink is None and room_sink is not None:
                self.open_sink(room_sink)
        if self.keyframe_wanted or first:
            self.request_keyframe(force=True)
        if first:
            self.listener.producer_started(self)
        return True

    def arriving(self, now: float) -> bool:
        """Whether packets arrive (``now``: time.time())."""
        return self.ssrc is not None and now - self.last_packet_at < LAYER_SILENT_S

    def steady(self, now: float) -> bool:
        """Whether packets have arrived without a pause for LAYER_RESUME_S, longer for a layer that
        keeps stopping (asked every tick by the layer choice, so a pause of LAYER_SILENT_S is seen)."""
        if not self.arriving(now):
            if self._steady_from:
                # How long it was offered before it stopped (nothing if it stopped before that).
                offered = now - self._steady_from - self._resume_s
                stable = offered >= LAYER_STABLE_S
                self._resume_s = LAYER_RESUME_S if stable else min(LAYER_RESUME_MAX_S, 2 * self._resume_s)
                self._steady_from = 0.0
            return False
        if not self._steady_from:
            self._steady_from = now
        return now - self._steady_from >= self._resume_s

    def _measure_bitrate(self, now: float) -> None:
        elapsed = now - self._rate_at
        if elapsed >= BITRATE_WINDOW_S:
            if self._rate_at:
                self.bitrate = int((self.octets - self._rate_octets) * 8 / elapsed)
            self._rate_octets, self._rate_at = self.octets, now

    # feedback to the publisher
    def _send_nack(self, lost: list[int]) -> None:
        if self.ssrc is None:
            return
        if self.upstream.send_rtcp(rtcp_nack(self.rtcp_ssrc, self.ssrc, lost)):
            self.counters.nacks_sent += len(lost)

    def _arm_nack_timer(self, now: float) -> None:
        """NACKs run on their own timer (``nack.NackScheduler``), not the room's tick."""
        nack = self.reception.nack
        if nack is None or nack.next_due >= self._nack_timer_at:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a benchmark): the tick polls
        if self._nack_timer is not None:
            self._nack_timer.cancel()
        self._nack_timer_at = nack.next_due
        self._nack_timer = loop.call_later(max(0.0, nack.next_due - now), self._nack_due)

    def _cancel_nack_timer(self) -> None:
        if self._nack_timer is not None:
            self._nack_timer.cancel()
            self._nack_timer = None
        self._nack_timer_at = float("inf")

    def _nack_due(self) -> None:
        self._nack_timer = None
        self._nack_timer_at = float("inf")
        self.poll_nacks(time.time())

    def poll_nacks(self, now: float) -> None:
        """Ask for what is due; a packet given up (repair cannot succeed) costs a keyframe."""
        nack = self.reception.nack
        if nack is None or self.ssrc is None or self.upstream.closed:
            return
        if nack.next_due <= now:
            due, given_up = nack.poll(now)
            if due:
                self._send_nack(due)
            if given_up:
                self.counters.nacks_given_up += given_up
                self.request_keyframe()
        if nack.next_due != float("inf"):
            self._arm_nack_timer(now)

    def feedback(self, now: float) -> None:
        """Per tick: the transport's round trip for the NACK timer (and NACKs due, should the
        timer have had no loop); every REPORT_INTERVAL a receiver report, and for video a REMB
        with the room's bitrate cap."""
        if self.ssrc is None:
            return
        if self.kind == "video":
            self._measure_bitrate(now)  # for the layer choice's bandwidth sums
        nack = self.reception.nack
        if nack is not None:
            rtt = self.upstream.round_trip()
            if rtt is not None:
                nack.set_round_trip(rtt)
            self.poll_nacks(now)
        if now - self.last_report < REPORT_INTERVAL:
            return
        self.last_report = now
        lsr = dlsr = 0
        last = self.upstream.last_sender_report(self.ssrc)
        if last is not None and 0 <= now - last[1] < 65536:
            lsr, dlsr = last[0], int((now - last[1]) * 65536)
        data = rtcp_receiver_report(self.rtcp_ssrc, [self.reception.report_block(self.ssrc, lsr, dlsr)])
        if self.kind == "video" and self.max_bitrate:
            data += rtcp_remb(self.rtcp_ssrc, self.max_bitrate, [self.ssrc])
        if self.upstream.send_rtcp(data):
            self.counters.reports_sent += 1

    def _switch_pending(self, ssrc: int) -> None:
        pending, self.pending = self.pending, []
        for track in pending:
            track.take_source(self, ssrc)

    def request_keyframe(self, force: bool = False, switch: bool = False) -> None:
        """Ask the publisher for a keyframe (coalesced, ``KeyFrameRequestManager``); ``switch``: a
        slot waits for it to change source."""
        if self.kind != "video":
            return
        if self.ssrc is None:
            self.keyframe_wanted = True
            return
        self.keyframes.request(force, switch)

    def _send_pli(self) -> None:
        if self.upstream.closed:
            return
        self.counters.keyframe_requests_sent += 1
        self.upstream.send_pli(self.ssrc or 0)

    # speaker detection (per tick)
    def tick_loudness(self) -> float:
        """The tick's mean loudness (0: nothing arrived), measuring undecoded Opus if needed."""
        meter = self.meter
        if meter is not None:
            if self.voice.audible:
                levels = meter.measure()
                self.level_sum += sum(127 - level for level in levels)
                self.level_count += len(levels)
                self.counters.levels_decoded += len(levels)
            else:
                meter.discard()
        loudness = self.level_sum / self.level_count if self.level_count else 0.0
        self.level_sum = self.level_count = 0
        return loudness

    # recording
    def open_sink(self, sink: RecordingSink) -> None:
        if self.sink is not None or self.ssrc is None:
            return
        try:
            self.sink = sink.open_track(
                self.identity,
                self.kind,
                self.codec,
                self.clock_rate,
                self.payload_type,
                self.ssrc,
                dict(self.extensions),
            )
        except Exception:
            logger.exception("recorder refused track %s", self)
        if self.kind == "video":
            self.sink_wants_keyframe = True
            self.request_keyframe(force=True)  # the recording starts decodable

    def close_sink(self) -> None:
        sinks = {id(s): s for s in (self.sink, *self._sinks.values()) if s is not None}
        self.sink = None
        self._sinks.clear()
        for sink in sinks.values():
            try:
                sink.close()
            except Exception:
                logger.exception("closing the recording of %s failed", self)

    def stop(self) -> None:
        """The publisher is gone: its down-tracks keep their wish and wait for a new producer."""
        self.keyframes.stop()
        self._cancel_nack_timer()
        for track in [*self.down_tracks, *self.pending]:
            track.lose_source(self)
        self.down_tracks.clear()
        self.pending.clear()
        self.close_sink()
