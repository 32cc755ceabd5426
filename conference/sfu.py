"""The media backend: a selective forwarding unit on top of aiortc's transports.

Vocabulary (as in mediasoup / LiveKit): each endpoint has one ``Session`` (one BUNDLEd peer
connection). What an endpoint publishes arrives on a ``Producer`` (its microphone, its camera).
Each receive slot of a subscriber is a ``DownTrack``: a sendonly m-line negotiated once, filled by
whichever producer the program (video), the active speakers and the floor (audio) or the chair's
preview list put there. Switching a slot never renegotiates: the down-track's ``StreamRewriter``
(conference.rtp) rebases sequence numbers, timestamps and VP8 picture ids on the new source's
keyframe so the browser sees one continuous stream.

Packets are never decoded: the DTLS transport's decrypted-RTP entry point is hooked
(conference.aiortc_glue) so a publisher's packet is parsed once, cached for NACKs, handed to the
recorder, rewritten per down-track and protected/sent on each subscriber's leg, all synchronously
in the packet's callback.

Timing rules (why the numbers):
- keyframe requests go to a publisher at most once per ``PLI_INTERVAL`` (300 ms): many subscribers
  switching at once cost one keyframe, and a new subscriber still sees video well within a second;
  a switch still waiting after ``PENDING_RETRY`` (1 s) asks again;
- speakers are re-evaluated every ``TICK`` (200 ms) from the audio-level extension averaged over
  the tick (a publisher that sends none has its Opus decoded in the tick instead:
  ``conference.audiolevel``); a speaker starts above ``SPEAKING_ON`` and stops after
  ``SPEAKER_HOLD`` below ``SPEAKING_OFF``; in a full set of audio slots a newcomer replaces the
  quietest occupant only if louder by ``REPLACE_MARGIN`` dB (so voices do not flap); ``speakers``
  events go out at most every ``SPEAKERS_INTERVAL``.

Feedback to publishers (aiortc's receive path, which would send it, is bypassed): each producer
keeps RFC 3550 reception statistics (``rtp.ReceptionStats``) and sends a receiver report every
``REPORT_INTERVAL``; video producers also get a REMB with the ``publish_max_bitrate`` cap (the SFU
does not estimate bandwidth itself: the browser's own loss-based control works under that cap) and
a NACK as soon as a gap shows, asked again every 100 ms for up to 1 s; a retransmission arriving
late is forwarded like any late packet.

Our receiver reports carry LSR/DLSR from the publisher's last sender report (aiortc's receiver
still handles RTCP), so the publisher learns the round-trip time.

Not done yet (known limits): a switch happens on the new source's keyframe
even if the old source's current frame is incomplete (browsers drop such a frame; aiortc's jitter
buffer hands it to the decoder); no simulcast, no RTX, no transport-cc.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.rtcconfiguration import RTCBundlePolicy
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.sdp import candidate_from_sdp

from . import aiortc_glue as glue
from .audiolevel import OpusLevelMeter
from .media import DelayHistogram, Emit, MediaError, RecordingSink, SessionOptions, TrackSink
from .room import Event, RoomState
from .rtp import (
    URI_AUDIO_LEVEL,
    ExtensionMap,
    PacketCache,
    ReceptionStats,
    RtpHeader,
    StreamRewriter,
    abs_send_time,
    audio_level,
    is_keyframe,
    parse_header,
    rtcp_nack,
    rtcp_receiver_report,
    rtcp_remb,
)

logger = logging.getLogger(__name__)

Kind = Literal["audio", "video"]

PLI_INTERVAL = 0.3
PENDING_RETRY = 1.0
TICK = 0.2
SPEAKING_ON = 127 - 50  # loudness (127 - level): louder than -50 dBov starts a speaker
SPEAKING_OFF = 127 - 55
SPEAKER_HOLD = 1.0
REPLACE_MARGIN = 6.0
SCORE_ALPHA = 0.5  # weight of the newest tick in a producer's loudness score
SPEAKERS_INTERVAL = 0.4
REPORT_INTERVAL = 1.0  # receiver reports (and REMB) to each publisher
# Per leg socket: a keyframe burst or a moment without CPU must not overflow the kernel's buffer.
RECEIVE_BUFFER_BYTES = 1024 * 1024
MAX_ANNOUNCED_SPEAKERS = 4

# Codecs offered, in order of preference: VP8 first (every browser sends it), then H.264.
VIDEO_CODECS = ("video/VP8", "video/H264")
AUDIO_CODECS = ("audio/opus",)
_CODEC_NAMES = {"vp8": "vp8", "h264": "h264", "opus": "opus"}


# --- statistics -------------------------------------------------------------------------------


@dataclass(slots=True)
class Counters:
    packets_in: int = 0
    bytes_in: int = 0
    packets_forwarded: int = 0  # incoming packets sent to at least one subscriber
    packets_dropped_muted: int = 0
    keyframe_requests_relayed: int = 0  # subscriber PLI/FIR received
    keyframe_requests_sent: int = 0  # PLI sent to publishers
    nacks_received: int = 0
    nacks_answered: int = 0
    nacks_sent: int = 0  # sequence numbers asked for again from publishers
    reports_sent: int = 0  # RTCP RR (+REMB) sent to publishers
    levels_decoded: int = 0  # audio packets without a level extension, decoded to measure one
    delay: DelayHistogram = field(default_factory=DelayHistogram)
    # A video slot's wait from being given a new source to switching on its keyframe.
    switch_wait: DelayHistogram = field(default_factory=DelayHistogram)


# --- producers and down-tracks ------------------------------------------------------------------


class Producer:
    """One published track (an endpoint's microphone or camera) as it arrives at the server."""

    def __init__(
        self,
        session: Session,
        kind: Kind,
        receiver: RTCRtpReceiver,
        codecs: list[RTCRtpCodecParameters],
        extensions: dict[str, int],
        rtcp_ssrc: int = 0,
    ) -> None:
        self.session = session
        self.rtcp_ssrc = rtcp_ssrc  # our SSRC in the feedback we send the publisher
        self.identity = session.identity
        self.kind = kind
        self.receiver = receiver
        self.codecs = {c.payloadType: c for c in codecs}
        self.extensions = extensions
        self.level_ext = extensions.get(URI_AUDIO_LEVEL, 0)
        self.codec = ""  # of the packets actually arriving
        self.payload_type = -1
        self.clock_rate = 90_000 if kind == "video" else 48_000
        self.ssrc: int | None = None
        self.counters = session.backend.counters
        self.down_tracks: list[DownTrack] = []
        self.pending: list[DownTrack] = []  # waiting for this producer's next keyframe
        self.cache = PacketCache() if kind == "video" else None
        self.reception = ReceptionStats(self.clock_rate, track_missing=kind == "video")
        self.last_report = 0.0
        self.audible = True
        self.last_pli = -1e9
        self.deferred_pli: asyncio.TimerHandle | None = None
        self.keyframe_wanted = False
        self.packets = 0
        self.octets = 0
        self.last_packet_at = 0.0
        # Speaker detection: loudness (127 - level) summed over the current tick.
        self.level_sum = 0
        self.level_count = 0
        self.score = 0.0
        self.speaking = False
        self.quiet_since = 0.0
        # Created on the first audio packet without a level (a publisher that is not a browser).
        self.meter: OpusLevelMeter | None = None
        self.sink: TrackSink | None = None

    def __repr__(self) -> str:
        return f"Producer({self.identity}/{self.kind})"

    def receive(self, data: bytes, header: RtpHeader) -> None:
        """One decrypted packet from the publisher: the forwarding hot path."""
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
        gap = self.reception.add(header.sequence, header.timestamp, now)
        if gap is not None:
            self._send_nack(gap)
        level = None
        if self.cache is not None:
            keyframe = is_keyframe(self.codec, data, header)
            self.cache.put(header.sequence, data)
            if keyframe:
                self.keyframe_wanted = False
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
            if not self.audible:
                # Muted on the server: nothing leaves, not even to the recorder.
                counters.packets_dropped_muted += 1
                return
        if self.sink is not None:
            self.sink.write(now, data)
        tracks = self.down_tracks
        if not tracks:
            return
        ast = abs_send_time(now)
        sent = False
        for track in tracks:
            out = track.rewriter.rewrite(data, header, ast, level, keyframe, now)
            if out is None:
                continue
            if track.output.send(out):
                track.packets += 1
                sent = True
            elif self.cache is not None:
                # The subscriber's leg is not up yet: what it missed must restart from a keyframe,
                # or its decoder would begin on delta frames.
                track.rewriter.resync()
                self.request_keyframe()
        if sent:
            counters.packets_forwarded += 1
            counters.delay.add(time.perf_counter() - started)

    def _new_stream(self, header: RtpHeader) -> bool:
        codec = self.codecs.get(header.payload_type)
        if codec is None:
            return False
        name = codec.name.lower()
        if name not in _CODEC_NAMES:
            return False
        self.codec = name
        self.payload_type = header.payload_type
        self.clock_rate = codec.clockRate
        first = self.ssrc is None
        self.ssrc = header.ssrc
        self.reception = ReceptionStats(self.clock_rate, track_missing=self.kind == "video")
        if self.session.backend_closed:
            return False
        if self.sink is not None:
            # A new stream (SSRC, payload type or codec) is a new recorded track: the archive
            # describes each track by one codec and payload type.
            self.close_sink()
            room_sink = self.session.room_media.sink
            if room_sink is not None:
                self.open_sink(room_sink)
        if self.keyframe_wanted or first:
            self.request_keyframe(force=True)
        if first:
            self.session.room_media.producer_started(self)
        return True

    def _send_nack(self, lost: list[int]) -> None:
        if self.ssrc is None:
            return
        if self.session.output.send_rtcp(rtcp_nack(self.rtcp_ssrc, self.ssrc, lost)):
            self.counters.nacks_sent += len(lost)

    def feedback(self, now: float) -> None:
        """Per tick: NACKs still due; every REPORT_INTERVAL a receiver report, and for video a REMB
        with the room's bitrate cap (aiortc's receiver, which would send them, is bypassed)."""
        if self.ssrc is None:
            return
        due = self.reception.nacks_due(now) if self.reception.missing else None
        if due:
            self._send_nack(due)
        if now - self.last_report < REPORT_INTERVAL:
            return
        self.last_report = now
        lsr = dlsr = 0
        last = glue.last_sender_report(self.receiver, self.ssrc)
        if last is not None and 0 <= now - last[1] < 65536:
            lsr, dlsr = last[0], int((now - last[1]) * 65536)
        data = rtcp_receiver_report(self.rtcp_ssrc, [self.reception.report_block(self.ssrc, lsr, dlsr)])
        if self.kind == "video":
            data += rtcp_remb(self.rtcp_ssrc, self.session.backend.publish_max_bitrate, [self.ssrc])
        if self.session.output.send_rtcp(data):
            self.counters.reports_sent += 1

    def _switch_pending(self, ssrc: int) -> None:
        pending, self.pending = self.pending, []
        for track in pending:
            track.take_source(self, ssrc)

    def request_keyframe(self, force: bool = False) -> None:
        """Ask the publisher for a keyframe, at most once per PLI_INTERVAL: a request inside the
        interval is not lost but coalesced into one sent when the interval ends."""
        if self.kind != "video":
            return
        if self.ssrc is None:
            self.keyframe_wanted = True
            return
        now = time.monotonic()
        wait = self.last_pli + PLI_INTERVAL - now
        if force or wait <= 0:
            self._send_pli(now)
        elif self.deferred_pli is None:
            self.deferred_pli = asyncio.get_running_loop().call_later(wait, self._send_deferred_pli)

    def _send_deferred_pli(self) -> None:
        self.deferred_pli = None
        if not self.session.backend_closed:
            self._send_pli(time.monotonic())

    def _send_pli(self, now: float) -> None:
        if self.deferred_pli is not None:
            self.deferred_pli.cancel()
            self.deferred_pli = None
        self.last_pli = now
        self.counters.keyframe_requests_sent += 1
        task = asyncio.ensure_future(glue.send_pli(self.receiver, self.ssrc or 0))
        task.add_done_callback(_log_task_error)

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
            self.request_keyframe(force=True)  # the recording starts decodable

    def close_sink(self) -> None:
        sink, self.sink = self.sink, None
        if sink is not None:
            try:
                sink.close()
            except Exception:
                logger.exception("closing the recording of %s failed", self)

    def stop(self) -> None:
        """The publisher is gone: its down-tracks keep their wish and wait for a new producer."""
        if self.deferred_pli is not None:
            self.deferred_pli.cancel()
            self.deferred_pli = None
        for track in [*self.down_tracks, *self.pending]:
            track.lose_source(self)
        self.down_tracks.clear()
        self.pending.clear()
        self.close_sink()


def _log_task_error(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.debug("RTCP send failed: %s", task.exception())


class DownTrack:
    """One receive slot of one subscriber (a sendonly m-line with its own SSRC)."""

    def __init__(self, session: Session, kind: Kind, role: str, index: int, transceiver: RTCRtpTransceiver):
        self.session = session
        self.kind = kind
        self.role = role  # "video" (program slot), "audio" or "preview"
        self.index = index
        self.transceiver = transceiver
        self.sender: RTCRtpSender = transceiver.sender
        self.output: glue.LegOutput = session.output
        self.rewriter: StreamRewriter = None  # type: ignore[assignment]  # set once negotiated
        self.codecs: dict[str, RTCRtpCodecParameters] = {}
        self.payload_types: dict[int, RTCRtpCodecParameters] = {}
        self.want: str | None = None  # identity that should fill the slot
        self.source: Producer | None = None
        self.waiting: Producer | None = None  # switching to this one on its next keyframe
        self.waiting_since = 0.0
        self.packets = 0
        glue.intercept_sender(self.sender, self.on_keyframe_request, self.on_nack)

    @property
    def mid(self) -> str:
        return self.transceiver.mid or ""

    def negotiated(self) -> bool:
        codecs = [c for c in glue.negotiated_codecs(self.transceiver) if c.name.lower() in _CODEC_NAMES]
        if not codecs:
            return False
        # First of each name wins (the subscriber's preference); exact payload types kept apart.
        self.codecs = {}
        for c in codecs:
            self.codecs.setdefault(c.name.lower(), c)
        self.payload_types = {c.payloadType: c for c in codecs}
        first = codecs[0]
        ids = {e.uri: e.id for e in glue.negotiated_extensions(self.transceiver)}
        self.rewriter = StreamRewriter(
            glue.sender_ssrc(self.sender),
            first.payloadType,
            self.kind,
            first.clockRate,
            first.name.lower(),  # type: ignore[arg-type]
            ExtensionMap.from_uris(ids),
            self.mid.encode(),
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
                self.source.down_tracks.remove(self)
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
            producer.pending.append(self)
            producer.request_keyframe()
        return changed

    def _cancel_wait(self) -> None:
        if self.waiting is not None:
            if self in self.waiting.pending:
                self.waiting.pending.remove(self)
            self.waiting = None

    def take_source(self, producer: Producer, ssrc: int) -> None:
        """Switch now (a video slot calls this on the new source's keyframe packet)."""
        if self.source is not None and self.source is not producer:
            self.source.down_tracks.remove(self)
        if self.waiting is producer:
            self.session.backend.counters.switch_wait.add(time.monotonic() - self.waiting_since)
        self.waiting = None
        # The publisher's own payload type if the subscriber negotiated it with the same codec
        # (e.g. the same H.264 profile), else the subscriber's first of that codec.
        same = self.payload_types.get(producer.payload_type)
        codec = (
            same if same is not None and same.name.lower() == producer.codec else self.codecs[producer.codec]
        )
        # Rebased on this very packet (a keyframe, or any audio packet): the codec may change too.
        self.rewriter.switch(ssrc, codec=producer.codec, payload_type=codec.payloadType)  # type: ignore[arg-type]
        if self.source is not producer:
            self.source = producer
            producer.down_tracks.append(self)

    def lose_source(self, producer: Producer) -> None:
        if self.source is producer:
            self.source = None
            self.rewriter.detach()
        if self.waiting is producer:
            self.waiting = None

    def on_keyframe_request(self) -> None:
        """The subscriber sent PLI/FIR for this slot: relay it to whoever feeds (or will feed) it."""
        self.session.backend.counters.keyframe_requests_relayed += 1
        producer = self.waiting or self.source
        if producer is not None:
            producer.request_keyframe()

    def on_nack(self, sequence: int) -> None:
        counters = self.session.backend.counters
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
        if out is not None and self.output.send(out):
            counters.nacks_answered += 1

    def update_sender_report(self) -> None:
        rewriter = self.rewriter
        if rewriter is None or not rewriter.packets_sent or rewriter.last_time is None:
            return
        glue.update_sender_counters(
            self.sender,
            rewriter.packets_sent,
            rewriter.octets_sent,
            rewriter.last_timestamp,
            rewriter.last_time,
        )


# --- sessions ------------------------------------------------------------------------------------


class Session:
    """One endpoint's peer connection: its producers and its receive slots."""

    def __init__(self, backend: SfuBackend, room_media: RoomMedia, identity: str, options: SessionOptions):
        self.backend = backend
        self.room_media = room_media
        self.identity = identity
        self.options = options
        self.pc = RTCPeerConnection(
            RTCConfiguration(iceServers=backend.ice_servers, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )
        self.output: glue.LegOutput = None  # type: ignore[assignment]
        self.datagram_hook: glue.SrtpDatagramHook | None = None
        self.publish: dict[Kind, RTCRtpTransceiver] = {}
        self.producers: dict[Kind, Producer] = {}
        self.video: list[DownTrack] = []
        self.audio: list[DownTrack] = []
        self.previews: list[DownTrack] = []
        self.decode_counters: list[glue.DecodeCounter] = []
        self.offer: dict[str, Any] | None = None
        self.answer_refused: str | None = None  # why the last answer could not be applied
        self.ready = False
        self.closed = False
        self.last_slots_message: dict[str, Any] | None = None
        self.preview_order: dict[str, int] = {}  # identity -> preview slot index

    @property
    def backend_closed(self) -> bool:
        return self.closed or self.backend.closed

    def __repr__(self) -> str:
        return f"Session({self.room_media.room}/{self.identity})"

    async def create_offer(self) -> dict[str, Any]:
        if self.offer is not None:
            return self.offer
        if self.closed:
            raise MediaError("conflict", "the media session is closed")
        options = self.options
        pc = self.pc
        if options.publish_audio:
            self.publish["audio"] = self._transceiver("audio", "recvonly")
        if options.publish_video:
            self.publish["video"] = self._transceiver("video", "recvonly")
        slot_tracks: list[tuple[list[DownTrack], Kind, str, int]] = [
            (self.video, "video", "video", max(0, options.video_slots)),
            (self.audio, "audio", "audio", max(0, options.audio_slots)),
        ]
        if options.previews:
            slot_tracks.append(
                (self.previews, "video", "preview", self.backend.preview_slots(self.room_media))
            )
        if not self.publish and not any(n for *_, n in slot_tracks):
            raise MediaError("bad_request", "the session neither publishes nor receives anything")
        slot_transceivers = [
            (tracks, kind, role, [self._transceiver(kind, "sendonly") for _ in range(count)])
            for tracks, kind, role, count in slot_tracks
        ]
        # Max-bundle: every m-line shares the first transceiver's transport.
        dtls = glue.leg_transport(pc)
        self.output = glue.LegOutput(dtls)
        for tracks, kind, role, transceivers in slot_transceivers:
            tracks.extend(DownTrack(self, kind, role, i, t) for i, t in enumerate(transceivers))
        for transceiver in self.publish.values():
            self.decode_counters.append(glue.neutralise_decoder(transceiver.receiver))
        glue.hook_incoming_rtp(dtls, self._on_rtp)
        backend = self.backend
        glue.restrict_host_candidates(
            pc,
            interfaces=backend.rtc_interfaces,
            port_min=backend.rtc_port_min,
            port_max=backend.rtc_port_max,
            announced_address=backend.rtc_announced_address,
        )
        await pc.setLocalDescription(await pc.createOffer())
        glue.drain_udp_reads(pc)
        glue.enlarge_receive_buffers(pc, RECEIVE_BUFFER_BYTES)
        # SRTP straight from the sockets to the forwarder (the hot path); _on_rtp stays for the rest.
        self.datagram_hook = glue.hook_srtp_datagrams(dtls, self.on_rtp_packet)
        sdp = _add_fir_feedback(pc.localDescription.sdp)
        self.offer = {
            "sdp": sdp,
            "type": "offer",
            "slots": {
                "publish": {kind: t.mid for kind, t in self.publish.items()},
                "video": [t.mid for t in self.video],
                "audio": [t.mid for t in self.audio],
                "previews": [t.mid for t in self.previews],
            },
        }
        return self.offer

    def _transceiver(self, kind: Kind, direction: str) -> RTCRtpTransceiver:
        if direction == "sendonly":
            transceiver = self.pc.addTransceiver(glue.SilentTrack(kind), direction="sendonly")
        else:
            transceiver = self.pc.addTransceiver(kind, direction=direction)
        wanted = VIDEO_CODECS if kind == "video" else AUDIO_CODECS
        capabilities = RTCRtpReceiver.getCapabilities(kind)
        assert capabilities is not None
        # Order by preference and leave RTX out: retransmissions are answered on the main SSRC.
        transceiver.setCodecPreferences(
            [c for mime in wanted for c in capabilities.codecs if c.mimeType.lower() == mime.lower()]
        )
        return transceiver

    async def set_answer(self, sdp: str) -> None:
        if self.offer is None:
            raise MediaError("conflict", "no offer to answer: create the offer first")
        if self.closed:
            raise MediaError("conflict", "the media session is closed")
        if self.ready:
            raise MediaError("conflict", "the offer was already answered")
        if not isinstance(sdp, str) or not sdp.strip():
            raise MediaError("bad_sdp", "the answer SDP is empty")
        try:
            answer = RTCSessionDescription(sdp=glue.parseable_sdp(sdp), type="answer")
            await self.pc.setRemoteDescription(answer)
        except Exception as exc:
            self.answer_refused = str(exc)
            raise MediaError("bad_sdp", f"cannot apply the answer: {exc}") from None
        for track in [*self.video, *self.audio, *self.previews]:
            if not track.negotiated():
                logger.info("%s: slot %s negotiated no codec we forward", self, track.mid)
        for kind, transceiver in self.publish.items():
            codecs = glue.negotiated_codecs(transceiver)
            if not codecs or transceiver.currentDirection not in ("recvonly", "sendrecv"):
                continue
            extensions = {e.uri: e.id for e in glue.negotiated_extensions(transceiver)}
            self.producers[kind] = Producer(
                self, kind, transceiver.receiver, codecs, extensions, glue.sender_ssrc(transceiver.sender)
            )
        self.video = [t for t in self.video if t.rewriter is not None]
        self.audio = [t for t in self.audio if t.rewriter is not None]
        self.previews = [t for t in self.previews if t.rewriter is not None]
        self.ready = True
        self.room_media.session_ready(self)

    async def add_candidate(self, candidate: dict[str, Any]) -> None:
        if self.closed:
            return
        if not self.ready:
            # aiortc would only log a warning and drop it: without an applied answer there is no
            # remote ICE session to add it to, so the client must hear that it was not used.
            refused = self.answer_refused
            why = f"the answer was refused ({refused})" if refused else "no answer yet"
            raise MediaError("conflict", f"candidate not used: {why}; send a valid answer first")
        text = candidate.get("candidate") if isinstance(candidate, dict) else None
        if not text:
            return  # end of candidates: aiortc needs no signal
        if not isinstance(text, str):
            raise MediaError("bad_request", "candidate must be a string")
        try:
            parsed = candidate_from_sdp(text.removeprefix("candidate:"))
        except (ValueError, IndexError, AssertionError):
            raise MediaError("bad_request", f"cannot parse ICE candidate {text!r}") from None
        parsed.sdpMid = candidate.get("sdpMid")
        parsed.sdpMLineIndex = candidate.get("sdpMLineIndex")
        if parsed.sdpMid is None and parsed.sdpMLineIndex is None:
            parsed.sdpMLineIndex = 0
        try:
            await self.pc.addIceCandidate(parsed)
        except Exception as exc:
            raise MediaError("bad_request", f"cannot add ICE candidate: {exc}") from None

    async def _on_rtp(self, data: bytes, arrival_time_ms: int) -> None:
        self.on_rtp_packet(data)

    def on_rtp_packet(self, data: bytes) -> None:
        """One decrypted RTP packet from this endpoint: route it to its producer."""
        header = parse_header(data)
        if header is None:
            return
        producers = self.producers
        if not producers:
            return
        video = producers.get("video")
        if video is not None and header.payload_type in video.codecs:
            video.receive(data, header)
            return
        audio = producers.get("audio")
        if audio is not None and header.payload_type in audio.codecs:
            audio.receive(data, header)

    def down_tracks(self) -> list[DownTrack]:
        return [*self.video, *self.audio, *self.previews]

    def decoded_frames(self) -> int:
        return sum(c.frames for c in self.decode_counters)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.room_media.session_closed(self)
        for producer in self.producers.values():
            producer.stop()
        for track in self.down_tracks():
            if track.rewriter is not None:
                track.set_want(None, None)
        try:
            await self.pc.close()
        except Exception:
            logger.exception("closing %s failed", self)


def _add_fir_feedback(sdp: str) -> str:
    """aiortc offers nack, nack pli and goog-remb for video; add ccm fir (its senders handle FIR
    like PLI, and some endpoints only send FIR)."""
    lines = sdp.split("\r\n")
    out: list[str] = []
    for line in lines:
        out.append(line)
        if line.startswith("a=rtcp-fb:") and line.endswith(" nack pli"):
            pt = line[len("a=rtcp-fb:") :].split(" ", 1)[0]
            out.append(f"a=rtcp-fb:{pt} ccm fir")
    return "\r\n".join(out)


# --- rooms -----------------------------------------------------------------------------------------


class RoomMedia:
    """The media side of one room: its sessions, producers, speakers and program."""

    def __init__(self, backend: SfuBackend, room: str, state: RoomState):
        self.backend = backend
        self.room = room
        self.state = state
        self.sessions: dict[str, Session] = {}
        self.sink: RecordingSink | None = None
        self.speakers: list[str] = []  # loudest first
        self.announced: list[str] = []
        self.last_announce = 0.0

    # producers of the room
    def producer(self, identity: str | None, kind: Kind) -> Producer | None:
        if identity is None:
            return None
        session = self.sessions.get(identity)
        if session is None or session.closed:
            return None
        producer = session.producers.get(kind)
        if producer is None or producer.ssrc is None:
            return None
        return producer

    def producers(self, kind: Kind) -> list[Producer]:
        out = []
        for session in self.sessions.values():
            producer = session.producers.get(kind)
            if producer is not None and producer.ssrc is not None:
                out.append(producer)
        return out

    def session_ready(self, session: Session) -> None:
        self.assign_all()

    def session_closed(self, session: Session) -> None:
        if self.sessions.get(session.identity) is session:
            del self.sessions[session.identity]
        self.assign_all(skip=session)

    def producer_started(self, producer: Producer) -> None:
        """A publisher's first packet: bind every slot that wants it (a reconnect lands here too)."""
        self.update_audibility()
        if self.sink is not None:
            producer.open_sink(self.sink)
        self.assign_all()

    def update_audibility(self) -> None:
        for session in self.sessions.values():
            producer = session.producers.get("audio")
            if producer is None:
                continue
            p = self.state.participants.get(session.identity)
            # Muted by the chair or by themselves, or no longer in the room: dropped on the server.
            producer.audible = p is not None and not (p.muted or p.self_muted)
            if not producer.audible:
                producer.speaking = False
                producer.score = 0.0

    # slot assignment
    def assign_all(self, skip: Session | None = None) -> None:
        self.update_audibility()
        for session in list(self.sessions.values()):
            if session is skip or not session.ready or session.closed:
                continue
            self.assign_video(session)
            self.assign_audio(session)
            self.push_slots(session)

    def assign_video(self, session: Session) -> None:
        program = self.state.program.slots
        for i, track in enumerate(session.video):
            identity = program[i] if i < len(program) else None
            track.set_want(identity, self.producer(identity, "video"))
        if session.previews:
            self._assign_previews(session)

    def _assign_previews(self, session: Session) -> None:
        """The chair's previews: every other endpoint that publishes video, each in a slot it keeps
        while it is in the room (so the console's tiles do not jump around)."""
        present = {
            identity
            for identity, p in self.state.participants.items()
            if p.publish_video or self.producer(identity, "video") is not None
        }
        present.discard(session.identity)
        order = session.preview_order
        for identity in list(order):
            if identity not in present:
                del order[identity]
        used = set(order.values())
        free = (i for i in range(len(session.previews)) if i not in used)
        for identity in sorted(present - set(order)):
            index = next(free, None)
            if index is None:
                break  # more endpoints than preview slots: the rest wait for a free slot
            order[identity] = index
        occupant = {index: identity for identity, index in order.items()}
        for track in session.previews:
            identity = occupant.get(track.index)
            track.set_want(identity, self.producer(identity, "video"))

    def assign_audio(self, session: Session) -> None:
        if not session.audio:
            return
        own = session.identity
        floor = self.state.floor
        wanted: list[str] = []
        if floor is not None and floor != own:
            producer = self.producer(floor, "audio")
            if producer is not None and producer.audible:
                wanted.append(floor)
        for identity in self.speakers:
            producer = self.producer(identity, "audio")
            if identity not in (own, floor) and producer is not None and producer.audible:
                wanted.append(identity)
        current = [t.want for t in session.audio]
        keep = {identity for identity in current if identity in wanted}
        newcomers = [identity for identity in wanted if identity not in keep]
        # Free slots first; then a newcomer may displace the quietest non-floor occupant.
        plan: list[str | None] = [c if c in keep else None for c in current]
        for identity in newcomers:
            if None in plan:
                plan[plan.index(None)] = identity
                continue
            challenger = self.producer(identity, "audio")
            if challenger is None:
                continue
            weakest_i, weakest_score = -1, 1e9
            for i, occupant in enumerate(plan):
                if occupant is None or occupant == floor:
                    continue
                producer = self.producer(occupant, "audio")
                score = producer.score if producer is not None else -1.0
                if score < weakest_score:
                    weakest_i, weakest_score = i, score
            louder = challenger.score > weakest_score + REPLACE_MARGIN
            if weakest_i >= 0 and (identity == floor or louder):
                plan[weakest_i] = identity
        for track, identity in zip(session.audio, plan, strict=True):
            track.set_want(identity, self.producer(identity, "audio"))

    def push_slots(self, session: Session) -> None:
        if not session.audio and not session.previews:
            return
        message = {
            "type": "slots",
            "audio": [{"mid": t.mid, "identity": t.want} for t in session.audio],
            "previews": [{"mid": t.mid, "identity": t.want} for t in session.previews],
        }
        if message != session.last_slots_message:
            session.last_slots_message = message
            self.backend.emit(self.room, session.identity, message)

    # speakers
    def tick(self, now: float) -> None:
        changed = self._update_speakers(now)
        if changed:
            for session in list(self.sessions.values()):
                if session.ready and not session.closed:
                    self.assign_audio(session)
                    self.push_slots(session)
        announced = self.speakers[:MAX_ANNOUNCED_SPEAKERS]
        if announced != self.announced and now - self.last_announce >= SPEAKERS_INTERVAL:
            self.announced = announced
            self.last_announce = now
            self.backend.emit(self.room, None, {"type": "speakers", "speakers": announced})
            if self.sink is not None:
                try:
                    self.sink.speakers(time.time(), announced)
                except Exception:
                    logger.exception("recorder rejected a speakers update")
        wall = time.time()
        for kind in ("audio", "video"):
            for producer in self.producers(kind):  # type: ignore[arg-type]
                producer.feedback(wall)
        retry_before = time.monotonic() - PENDING_RETRY
        for producer in self.producers("video"):
            if producer.pending and producer.last_pli <= retry_before:
                producer.request_keyframe()
        for session in self.sessions.values():
            for track in session.down_tracks():
                source = track.source
                if source is not None:
                    track.update_sender_report()
                    # A slot restarting on its source's keyframe (its leg was not up when the last
                    # one passed) keeps asking until one gets through.
                    if (
                        source.kind == "video"
                        and source.last_pli <= retry_before
                        and track.rewriter.wants_keyframe is not None
                    ):
                        source.request_keyframe()

    def _update_speakers(self, now: float) -> bool:
        previous = list(self.speakers)
        speaking: list[Producer] = []
        for producer in self.producers("audio"):
            meter = producer.meter
            if meter is not None:
                if producer.audible:
                    levels = meter.measure()
                    producer.level_sum += sum(127 - level for level in levels)
                    producer.level_count += len(levels)
                    self.backend.counters.levels_decoded += len(levels)
                else:
                    meter.discard()
            # No packets this tick (DTX, or gone) counts as silence.
            loudness = producer.level_sum / producer.level_count if producer.level_count else 0.0
            producer.level_sum = producer.level_count = 0
            producer.score = SCORE_ALPHA * loudness + (1 - SCORE_ALPHA) * producer.score
            if not producer.audible:
                producer.speaking = False
                continue
            if producer.score >= SPEAKING_ON:
                producer.speaking = True
                producer.quiet_since = 0.0
            elif producer.speaking and producer.score < SPEAKING_OFF:
                if not producer.quiet_since:
                    producer.quiet_since = now
                elif now - producer.quiet_since >= SPEAKER_HOLD:
                    producer.speaking = False
            if producer.speaking:
                speaking.append(producer)
        # Order: keep the previous order among continuing speakers unless one is clearly louder.
        speaking.sort(key=lambda p: -p.score)
        self.speakers = [p.identity for p in speaking]
        return set(previous) != set(self.speakers) or previous != self.speakers


# --- the backend --------------------------------------------------------------------------------------


class SfuBackend:
    """``conference.media.MediaBackend`` forwarding raw RTP between aiortc peer connections."""

    def __init__(
        self,
        *,
        ice_servers: list[RTCIceServer] | None = None,
        rtc_port_min: int = 0,
        rtc_port_max: int = 0,
        rtc_interfaces: list[str] | None = None,
        rtc_announced_address: str | None = None,
        max_previews: int | None = None,
        publish_max_bitrate: int = 1_500_000,
    ) -> None:
        glue.check_aiortc()
        self.publish_max_bitrate = publish_max_bitrate
        # Never None: aiortc would fall back to Google's public STUN server.
        self.ice_servers: list[RTCIceServer] = list(ice_servers or [])
        self.rtc_port_min = rtc_port_min
        self.rtc_port_max = rtc_port_max
        self.rtc_interfaces = list(rtc_interfaces or [])
        self.rtc_announced_address = rtc_announced_address
        self.max_previews = max_previews
        self.rooms: dict[str, RoomMedia] = {}
        self.counters = Counters()
        self._emit: Emit | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.closed = False

    def set_emitter(self, emit: Emit) -> None:
        self._emit = emit

    def emit(self, room: str, identity: str | None, message: dict[str, Any]) -> None:
        if self._emit is None:
            return
        try:
            self._emit(room, identity, message)
        except Exception:
            logger.exception("emitting %s to %s/%s failed", message.get("type"), room, identity)

    def preview_slots(self, room_media: RoomMedia) -> int:
        """One per other endpoint the room can hold (``max_previews`` caps it)."""
        count = max(0, room_media.state.max_endpoints - 1)
        if self.max_previews is not None:
            count = min(count, self.max_previews)
        return count

    def _room(self, room: str, state: RoomState) -> RoomMedia:
        media = self.rooms.get(room)
        if media is None:
            media = self.rooms[room] = RoomMedia(self, room, state)
        return media

    async def open_session(
        self, room: str, identity: str, options: SessionOptions, state: RoomState
    ) -> Session:
        if self.closed:
            raise MediaError("unavailable", "the media backend is shut down")
        if not 0 <= options.video_slots <= 9 or not 0 <= options.audio_slots <= 8:
            raise MediaError("bad_request", "video_slots must be 0..9 and audio_slots 0..8")
        room_media = self._room(room, state)
        room_media.state = state
        old = room_media.sessions.get(identity)
        if old is not None:
            await old.close()
        session = Session(self, room_media, identity, options)
        room_media.sessions[identity] = session
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick_loop())
        return session

    async def room_changed(self, room: str, events: list[Event], state: RoomState) -> None:
        room_media = self.rooms.get(room)
        if room_media is None:
            return
        room_media.state = state
        for event in events:
            if event.get("kind") == "participant_left":
                session = room_media.sessions.get(event.get("identity", ""))
                if session is not None:
                    await session.close()
        room_media.assign_all()

    def set_recorder(self, room: str, sink: RecordingSink | None) -> None:
        room_media = self.rooms.get(room)
        if room_media is None:
            if sink is None:
                return
            room_media = self._room(room, RoomState(room=room))
        room_media.sink = sink
        if sink is not None:
            try:
                sink.speakers(time.time(), list(room_media.announced))  # who speaks as recording starts
            except Exception:
                logger.exception("recorder rejected a speakers update")
        for kind in ("audio", "video"):
            for producer in room_media.producers(kind):  # type: ignore[arg-type]
                producer.close_sink()
                if sink is not None:
                    producer.open_sink(sink)

    async def _tick_loop(self) -> None:
        while not self.closed:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            for room_media in list(self.rooms.values()):
                try:
                    room_media.tick(now)
                except Exception:
                    logger.exception("media tick of room %s failed", room_media.room)

    def stats(self) -> dict[str, Any]:
        c = self.counters
        sessions: dict[str, Any] = {}
        producers = down_tracks = decoded = packets_out = bytes_out = from_sockets = unprotect_errors = 0
        for room_media in self.rooms.values():
            for session in room_media.sessions.values():
                decoded += session.decoded_frames()
                if session.datagram_hook is not None:
                    from_sockets += session.datagram_hook.packets
                    unprotect_errors += session.datagram_hook.unprotect_errors
                producers += sum(1 for p in session.producers.values() if p.ssrc is not None)
                tracks = session.down_tracks()
                down_tracks += sum(1 for t in tracks if t.source is not None)
                if session.output is not None:
                    packets_out += session.output.packets
                    bytes_out += session.output.octets
                sessions[f"{room_media.room}/{session.identity}"] = {
                    "packets_out": session.output.packets if session.output else 0,
                    "bytes_out": session.output.octets if session.output else 0,
                    "packets_in": sum(p.packets for p in session.producers.values()),
                    "slots": {
                        t.mid: {"identity": t.source.identity if t.source else None, "packets": t.packets}
                        for t in tracks
                    },
                }
        delay = c.delay
        return {
            "backend": "sfu",
            "rooms": len(self.rooms),
            "sessions": len(sessions),
            "producers": producers,
            "down_tracks": down_tracks,
            "packets_in": c.packets_in,
            "bytes_in": c.bytes_in,
            "packets_out": packets_out,
            "bytes_out": bytes_out,
            "packets_forwarded": c.packets_forwarded,
            # Incoming RTP taken straight from the sockets (the rest went through aiortc's path).
            "packets_from_sockets": from_sockets,
            "srtp_unprotect_errors": unprotect_errors,
            "packets_dropped_muted": c.packets_dropped_muted,
            "keyframe_requests_relayed": c.keyframe_requests_relayed,
            "keyframe_requests_sent": c.keyframe_requests_sent,
            "nacks_received": c.nacks_received,
            "nacks_answered": c.nacks_answered,
            "nacks_sent": c.nacks_sent,
            "reports_sent": c.reports_sent,
            "levels_decoded": c.levels_decoded,
            "decoded_frames": decoded,
            "forward_delay_us": {
                "count": delay.total,
                "p50": delay.percentile(50),
                "p90": delay.percentile(90),
                "p99": delay.percentile(99),
                "max": delay.max_us if delay.total else None,
                "histogram": delay.snapshot(),
                # Measured from the hook's entry (after UDP receive and SRTP unprotect) to the last
                # subscriber's sendto: the server's own forwarding work per incoming packet.
                "measured_from": "rtp hook entry",
            },
            "switch_wait_us": {
                # A video slot given a new source, until the source's keyframe switched it.
                "count": c.switch_wait.total,
                "p50": c.switch_wait.percentile(50),
                "p95": c.switch_wait.percentile(95),
                "histogram": c.switch_wait.snapshot(),
            },
            "per_session": sessions,
        }

    async def close(self) -> None:
        self.closed = True
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        for room_media in list(self.rooms.values()):
            for session in list(room_media.sessions.values()):
                await session.close()
            for kind in ("audio", "video"):
                for producer in room_media.producers(kind):  # type: ignore[arg-type]
                    producer.close_sink()
        self.rooms.clear()


def _ice_servers(settings: Any) -> list[RTCIceServer]:
    servers = []
    for entry in getattr(settings, "ice_servers", None) or []:
        if isinstance(entry, RTCIceServer):
            servers.append(entry)
        elif isinstance(entry, dict):
            servers.append(
                RTCIceServer(
                    urls=entry["urls"], username=entry.get("username"), credential=entry.get("credential")
                )
            )
        else:
            raise ValueError(f"bad ice server entry {entry!r}")
    return servers


def create_backend(settings: Any = None) -> SfuBackend:
    """The default media backend, configured from ``conference.config.Settings``."""
    return SfuBackend(
        ice_servers=_ice_servers(settings),
        rtc_port_min=getattr(settings, "rtc_port_min", None) or 0,
        rtc_port_max=getattr(settings, "rtc_port_max", None) or 0,
        rtc_interfaces=list(getattr(settings, "rtc_interfaces", None) or []),
        rtc_announced_address=getattr(settings, "rtc_announced_address", None),
        max_previews=getattr(settings, "max_previews", None),
        publish_max_bitrate=getattr(settings, "publish_max_bitrate", None) or 1_500_000,
    )
