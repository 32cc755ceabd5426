"""The WebRTC transport: one endpoint's BUNDLEd aiortc peer connection (mediasoup's
``WebRtcTransport``). The server offers, the endpoint answers; every m-line is negotiated once at
join (publish, program slots, audio slots, the chair's previews) and never renegotiated.

Packets are never decoded: the DTLS transport's decrypted-RTP entry point is hooked
(``aiortc_glue``) so a publisher's packet goes straight to its producer, and a down-track's packets
are protected and sent on the leg synchronously (``aiortc_glue.LegOutput``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from typing import TYPE_CHECKING, Any

from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.rtcconfiguration import RTCBundlePolicy
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.sdp import candidate_from_sdp

from ..downlink_estimate import DownlinkEstimate, SentPackets
from ..layer_choice import LossCounter
from ..media import MediaError, SessionOptions
from ..sdp_bounds import SdpBounds, SdpTooComplex, check_sdp
from . import aiortc_glue as glue
from .consumer import DownTrack, Role
from .extmap import answered_extension, offer_extension
from .packet import (
    FORWARDED_CODECS,
    URI_PLAYOUT_DELAY,
    URI_TRANSPORT_CC,
    CodecInfo,
    RtpHeader,
    parse_header,
    rtx_original,
)
from .producer import Producer
from .rtcp import rtcp_pli
from .simulcast import RIDS, SimulcastLayers, answered_rids, offer_simulcast
from .transport import Kind, Transport
from .twcc import INTERVAL_S, TransportCcReceiver, answered_transport_cc, offer_transport_cc, parse_feedback

if TYPE_CHECKING:
    from .router import Router

logger = logging.getLogger(__name__)

AUDIO_CODECS = ("audio/opus",)
# Per leg socket: a keyframe burst or a moment without CPU must not overflow the kernel's buffer.
RECEIVE_BUFFER_BYTES = 1024 * 1024
SENDER_REPORT_INTERVAL = 1.0  # the slots' RTCP sender reports (aiortc's loop: 0.5-1.5 s)
# A simulcast publisher's REMB cap: the room's cap (publish_max_bitrate) is what one stream may
# use; the two lower layers add about half of it (Chromium: 150 + 500 kbit/s beside 720p).
SIMULCAST_CAP_FACTOR = 1.5
# A subscriber's REMB older than this is no estimate (Chromium sends one every second or so); so
# is a send-side estimate whose last transport-cc feedback is that old.
ESTIMATE_STALE_S = 5.0
# How long the leg's round trip (from its slots' receiver reports, which come about once a second)
# is taken as known: its producers ask every tick.
ROUND_TRIP_REFRESH_S = 0.1


def codec_info(codecs: list[RTCRtpCodecParameters]) -> list[CodecInfo]:
    out = []
    for c in codecs:
        name = c.name.lower()
        if name in FORWARDED_CODECS:
            out.append(CodecInfo(name, c.payloadType, c.clockRate))
    return out


class Session(Transport):
    """One endpoint's peer connection: its producers and its receive slots."""

    kind = "webrtc"

    def __init__(self, router: Router, identity: str, options: SessionOptions) -> None:
        super().__init__(router, identity)
        backend = router.backend
        self.options = options
        self.pc = RTCPeerConnection(
            RTCConfiguration(iceServers=backend.ice_servers, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )
        self.output: glue.LegOutput = None  # type: ignore[assignment]
        self.datagram_hook: glue.SrtpDatagramHook | None = None
        self._round_trip: tuple[float, float | None] | None = None  # (when looked up, value)
        self.ice_queue_guard: glue.IceQueueGuard | None = None
        self.publish: dict[Kind, RTCRtpTransceiver] = {}
        self.transceivers: dict[DownTrack, RTCRtpTransceiver] = {}
        self.decode_counters: list[glue.DecodeCounter] = []
        self.offer: dict[str, Any] | None = None
        self.answer_refused: str | None = None  # why the last answer could not be applied
        # Transport-wide congestion control feedback, when the endpoint accepted it (browsers do).
        self.transport_cc: TransportCcReceiver | None = None
        self.rtx: dict[int, int] = {}  # the publisher's RTX payload type -> the one it repairs
        # The publisher's simulcast layers when it answered simulcast (browsers do), else None.
        self.layers: SimulcastLayers | None = None
        self.layer_payload_types: frozenset[int] = frozenset()
        # The endpoint's REMB on what it receives (its receive-side estimate) and when it came.
        self.remb: int | None = None
        self.remb_at = 0.0
        self.losses = LossCounter()  # its receiver reports on the video slots
        # Transport-cc from the endpoint on what it receives, when its answer kept the extension on
        # a slot (browsers do, aiortc does not): what the leg's slots sent by transport-wide
        # sequence number (``sent``, stamped by their rewriters) and the estimate its feedback
        # feeds (started at the first feedback once a video slot carries something).
        self.sent: SentPackets | None = None
        self.estimate: DownlinkEstimate | None = None
        self.estimate_at = 0.0
        self.feedback_in = 0
        self.feedback_refused = 0
        self._feedback_timer: asyncio.TimerHandle | None = None
        # Sender reports of the slots, every SENDER_REPORT_INTERVAL, from slots that sent since
        # their last one (packets sent when it was reported, by slot).
        self._report_timer: asyncio.TimerHandle | None = None
        self._reported: dict[DownTrack, int] = {}

    # Upstream, for this session's producers
    def send_rtcp(self, data: bytes) -> bool:
        return self.output is not None and self.output.send_rtcp(data)

    def send_pli(self, media_ssrc: int) -> None:
        transceiver = self.publish.get("video")
        if transceiver is None:
            return
        # At once, on the leg, as NACKs go: aiortc's way is a task (four coroutine hops) that runs
        # only after the take that asked for it has reassigned every endpoint's slots, and after
        # whatever else the loop has ready (a take's keyframe wait p50 41 -> ... ms, docs/performance.md).
        if self.send_rtcp(rtcp_pli(glue.sender_ssrc(transceiver.sender), media_ssrc)):
            return
        task = asyncio.ensure_future(glue.send_pli(transceiver.receiver, media_ssrc))
        task.add_done_callback(_log_task_error)

    def last_sender_report(self, ssrc: int) -> tuple[int, float] | None:
        for transceiver in self.publish.values():
            last = glue.last_sender_report(transceiver.receiver, ssrc)
            if last is not None:
                return last
        return None

    def _on_remb(self, bitrate: int) -> None:
        self.remb = bitrate
        self.remb_at = time.time()

    def _on_loss(self, track: DownTrack, ssrc: int, highest: int, lost: int) -> None:
        self.losses.report(ssrc, highest, lost, time.time(), track.sent_through(highest))

    def downlink_estimate(self, now: float) -> int | None:
        return self.remb if self.remb is not None and now - self.remb_at < ESTIMATE_STALE_S else None

    def send_side_estimate(self) -> int | None:
        estimate = self.estimate
        now = time.time()
        if estimate is None or now - self.estimate_at >= ESTIMATE_STALE_S:
            return None
        # Followed up to what the slots are sent now, as on each feedback: the layer choice reads
        # it right after a slot switched up (to a layer the feedback has not covered yet).
        return estimate.follow(self._slots_sending(), int(now * 1e6))

    def _slots_sending(self) -> int:
        """What the leg's slots are being sent (bit/s): their sources' rates."""
        return sum(t.source.bitrate for t in self.down_tracks() if t.source is not None)

    def _on_transport_feedback(self, data: bytes, offset: int) -> None:
        """One transport-cc feedback packet from the endpoint about what its slots were sent."""
        sent = self.sent
        if sent is None:
            return
        try:
            _, reports = parse_feedback(data, offset)
        except ValueError as exc:
            self.feedback_refused += 1
            logger.debug("%s: transport feedback refused: %s", self, exc)
            return
        self.feedback_in += 1
        packets = []
        for seq, arrival_us in reports:
            noted = sent.get(seq)
            if noted is not None:  # else older than the ring, or never sent (a gap of our own)
                packets.append((noted[0], arrival_us, noted[1]))
        if not packets:
            return
        now = time.time()
        now_us = int(now * 1e6)
        sending = self._slots_sending()
        estimate = self.estimate
        if estimate is None:
            # Started at what the slots are sent (not a low probe value), once video flows: a venue
            # on a clear link keeps its layers, and only what the feedback shows lowers it.
            if not any(t.source is not None for t in (*self.video, *self.previews)):
                return
            estimate = self.estimate = DownlinkEstimate(start_bps=max(DownlinkEstimate().min_bps, sending))
        # The leg sends what the layer choice picked and does not probe: the estimate follows that
        # up while the feedback shows no congestion (``DownlinkEstimate.follow``).
        estimate.follow(sending, now_us)
        estimate.feedback(now_us, packets)
        self.estimate_at = now

    def take_loss(self) -> float | None:
        return self.losses.take(time.time())

    def round_trip(self) -> float | None:
        """The smallest round trip the endpoint's receiver reports show on any of its slots (one
        BUNDLEd transport: they share the path); None if it receives nothing yet. Looked up at
        most every ROUND_TRIP_REFRESH_S: each of the endpoint's producers asks every tick, and a
        chair has some 60 slots to look through."""
        now = time.monotonic()
        cached = self._round_trip
        if cached is not None and now - cached[0] < ROUND_TRIP_REFRESH_S:
            return cached[1]
        best = None
        for transceiver in self.transceivers.values():
            rtt = glue.sender_round_trip(transceiver.sender)
            if rtt is not None and (best is None or rtt < best):
                best = rtt
        self._round_trip = (now, best)
        return best

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
        slot_tracks: list[tuple[list[DownTrack], Kind, Role, int]] = [
            (self.video, "video", "video", max(0, options.video_slots)),
            (self.audio, "audio", "audio", max(0, options.audio_slots)),
        ]
        if options.previews:
            slot_tracks.append((self.previews, "video", "preview", self.router.preview_slots()))
        if not self.publish and not any(n for *_, n in slot_tracks):
            raise MediaError("bad_request", "the session neither publishes nor receives anything")
        slot_transceivers = [
            (tracks, kind, role, [self._transceiver(kind, "sendonly") for _ in range(count)])
            for tracks, kind, role, count in slot_tracks
        ]
        # Max-bundle: every m-line shares the first transceiver's transport.
        dtls = glue.leg_transport(pc)
        glue.narrow_send_window(dtls)  # before the handshake makes the sessions
        self.output = glue.LegOutput(dtls, native=self.router.backend.native_send)
        counters = self.router.backend.counters
        for tracks, kind, role, transceivers in slot_transceivers:
            for i, transceiver in enumerate(transceivers):
                track = DownTrack(kind, role, i, self.output, counters)
                sender = transceiver.sender
                video = kind == "video"
                glue.intercept_sender(
                    sender,
                    track.on_keyframe_request,
                    track.on_nack,
                    self._on_remb if video else None,
                    functools.partial(self._on_loss, track) if video else None,
                )
                glue.take_over_sender_reports(sender)  # the leg's own, batched: _send_sender_reports
                self.transceivers[track] = transceiver
                tracks.append(track)
        for transceiver in self.publish.values():
            self.decode_counters.append(glue.neutralise_decoder(transceiver.receiver))
        glue.hook_incoming_rtp(dtls, self._on_rtp)
        glue.hook_transport_feedback(dtls, self._on_transport_feedback)
        backend = self.router.backend
        glue.restrict_host_candidates(
            pc,
            interfaces=backend.rtc_interfaces,
            port_min=backend.rtc_port_min,
            port_max=backend.rtc_port_max,
            announced_address=backend.rtc_announced_address,
        )
        await pc.setLocalDescription(await pc.createOffer())
        glue.drain_udp_reads(pc)
        self.ice_queue_guard = glue.bound_ice_queue(pc)
        glue.enlarge_receive_buffers(pc, RECEIVE_BUFFER_BYTES)
        # RFC 7675's consent, not aioice's 0.5 s one: a venue whose answers come late keeps its leg.
        glue.lenient_consent(pc)
        # SRTP straight from the sockets to the forwarder (the hot path); _on_rtp stays for the rest.
        self.datagram_hook = glue.hook_srtp_datagrams(
            dtls, self.on_rtp_packet, backend.native_send, self.on_parsed_rtp
        )
        sdp = _add_fir_feedback(pc.localDescription.sdp)
        # Transport-cc, one id (BUNDLE): on the publishers' m-sections (their browser's estimate,
        # TransportCcReceiver) and, where the layer choice acts on it (setting send_side_bwe), on the
        # slots' (the server's estimate of the endpoint's downlink, ``sent``/``estimate``). Off, the
        # slots are not stamped and send no feedback: at 50 endpoints that feedback (~800 packets/s
        # to unprotect, parse and estimate from) was 15-20 % of the server's CPU, for a figure only.
        twcc_mids = self._publish_mids()
        if self.router.backend.send_side_bwe:
            twcc_mids |= {t.mid for t in self.transceivers.values() if t.mid is not None}
        if twcc_mids:
            sdp, _ = offer_transport_cc(sdp, twcc_mids)
        publish_video = self.publish.get("video")
        if publish_video is not None and publish_video.mid is not None and self.router.backend.simulcast:
            sdp = offer_simulcast(sdp, publish_video.mid)
        video_slots = {self.transceivers[t].mid for t in (*self.video, *self.previews)}
        if video_slots:
            sdp, _ = offer_extension(sdp, {m for m in video_slots if m is not None}, URI_PLAYOUT_DELAY)
        self.offer = {
            "sdp": sdp,
            "type": "offer",
            "slots": {
                "publish": {kind: t.mid for kind, t in self.publish.items()},
                "video": [self.transceivers[t].mid for t in self.video],
                "audio": [self.transceivers[t].mid for t in self.audio],
                "previews": [self.transceivers[t].mid for t in self.previews],
            },
        }
        return self.offer

    def _transceiver(self, kind: Kind, direction: str) -> RTCRtpTransceiver:
        if direction == "sendonly":
            transceiver = self.pc.addTransceiver(glue.SilentTrack(kind), direction="sendonly")
        else:
            transceiver = self.pc.addTransceiver(kind, direction=direction)
        glue.drop_bitrate_estimator(transceiver.receiver)
        # Video: the setting video_codecs (VP8 first by default: every browser sends it, then H.264).
        wanted = self.router.backend.video_codecs if kind == "video" else AUDIO_CODECS
        capabilities = RTCRtpReceiver.getCapabilities(kind)
        assert capabilities is not None
        preferences = [
            c for mime in wanted for c in capabilities.codecs if c.mimeType.lower() == mime.lower()
        ]
        if kind == "video" and (direction == "recvonly" or self.router.backend.subscriber_rtx):
            # Publishers retransmit on RTX (RFC 4588): the repair is its own stream, so it does not
            # hide loss, and a browser can probe its uplink with RTX padding (transport-cc needs
            # that to find the rate on a lossy link). Slots answer a subscriber's NACK from the
            # cache on the main SSRC, or on the slot's RTX stream with the setting subscriber_rtx.
            preferences += [c for c in capabilities.codecs if c.mimeType.lower() == "video/rtx"]
        transceiver.setCodecPreferences(preferences)
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
        try:  # before any parsing: the parser's cost grows faster than the SDP (conference.sdp_bounds)
            check_sdp(sdp, SdpBounds.for_answer_to(self.offer["sdp"]))
        except SdpTooComplex as exc:
            self.answer_refused = str(exc)
            raise MediaError("bad_sdp", f"answer refused: {exc}") from None
        try:
            answer = RTCSessionDescription(sdp=glue.parseable_sdp(sdp), type="answer")
            await self.pc.setRemoteDescription(answer)
        except Exception as exc:
            self.answer_refused = str(exc)
            raise MediaError("bad_sdp", f"cannot apply the answer: {exc}") from None
        playout_delay = answered_extension(sdp, URI_PLAYOUT_DELAY)
        slot_twcc = answered_extension(sdp, URI_TRANSPORT_CC)
        for track, transceiver in self.transceivers.items():
            ids = {e.uri: e.id for e in glue.negotiated_extensions(transceiver)}
            if track.kind == "video" and transceiver.mid in playout_delay:
                ids[URI_PLAYOUT_DELAY] = playout_delay[transceiver.mid]
            if transceiver.mid in slot_twcc:
                ids[URI_TRANSPORT_CC] = slot_twcc[transceiver.mid]
            negotiated = glue.negotiated_codecs(transceiver)
            codecs = codec_info(negotiated)
            rtx = {apt: pt for pt, apt in rtx_payload_types(negotiated).items()}
            rtx_ssrc = glue.sender_rtx_ssrc(transceiver.sender) if rtx else 0
            sender_ssrc = glue.sender_ssrc(transceiver.sender)
            if not track.configure(sender_ssrc, codecs, ids, transceiver.mid or "", rtx, rtx_ssrc):
                logger.info("%s: slot %s negotiated no codec we forward", self, transceiver.mid)
        backend = self.router.backend
        for kind, transceiver in self.publish.items():
            codecs = codec_info(glue.negotiated_codecs(transceiver))
            if not codecs or transceiver.currentDirection not in ("recvonly", "sendrecv"):
                continue
            extensions = {e.uri: e.id for e in glue.negotiated_extensions(transceiver)}
            rids = answered_rids(sdp, transceiver.mid or "") if kind == "video" and backend.simulcast else []
            if kind == "video":
                self.rtx = rtx_payload_types(glue.negotiated_codecs(transceiver))
            cap = backend.publish_max_bitrate
            make = functools.partial(
                Producer,
                self.identity,
                kind,
                codecs,
                extensions,
                self,
                self.router,
                backend.counters,
                rtcp_ssrc=glue.sender_ssrc(transceiver.sender),
            )
            if len(rids) < 2:
                self.producers[kind] = make(max_bitrate=cap)
                continue
            # One producer per layer; only the lowest (always sent) carries the REMB cap.
            layers = {
                rid: make(max_bitrate=int(cap * SIMULCAST_CAP_FACTOR) if n == 0 else 0)
                for n, rid in enumerate(rids)
            }
            receiver, dtls = transceiver.receiver, glue.leg_transport(self.pc)
            self.layers = SimulcastLayers(
                sdp,
                transceiver.mid or "",
                layers,
                functools.partial(glue.route_sender_reports, dtls, receiver=receiver),
            )
            group = self.layers.producers
            for rid, producer in layers.items():
                producer.layer = RIDS.index(rid)
                producer.group = group
            self.video_layers = group
            self.producers[kind] = group[0]
            self.layer_payload_types = frozenset(c.payload_type for c in codecs)
        self.video = [t for t in self.video if t.configured]
        self.audio = [t for t in self.audio if t.configured]
        self.previews = [t for t in self.previews if t.configured]
        stamped = [t for t in self.down_tracks() if self.transceivers[t].mid in slot_twcc]
        if stamped:
            # One transport-wide numbering for the leg: every stamped slot draws from it.
            self.sent = SentPackets(random.getrandbits(16))
            for track in stamped:
                track.rewriter.set_transport_cc(self.sent)
        ext_id = answered_transport_cc(sdp, self._publish_mids()) if self.producers else 0
        if ext_id:
            self.transport_cc = TransportCcReceiver(ext_id, native=self.router.backend.native_send)
            if self.datagram_hook is not None:
                self.datagram_hook.kernel_timestamps = True
                self.datagram_hook.transport_cc = self.transport_cc
            self._feedback_timer = asyncio.get_running_loop().call_later(INTERVAL_S, self._send_feedback)
        # The first report after 0.5-1.5 s, as aiortc's own loop: the legs of a meeting do not all
        # report in the same tick.
        loop = asyncio.get_running_loop()
        self._report_timer = loop.call_later(0.5 + random.random(), self._send_sender_reports)
        self.ready = True
        self.router.transport_ready(self)

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
        self.on_rtp_packet(data, from_socket=False)  # aiortc's path (TURN)

    def on_rtp_packet(self, data: bytes, from_socket: bool = True) -> None:
        """One decrypted RTP packet from this endpoint (the pure-Python receive path)."""
        header = parse_header(data)
        if header is not None:
            transport_cc = self.transport_cc
            if transport_cc is not None:
                hook = self.datagram_hook
                if from_socket and hook is not None and hook.kernel_timestamps:
                    transport_cc.add(data, header, hook.arrival_us)
                else:
                    transport_cc.add(data, header, int(time.time() * 1e6))
            self.on_parsed_rtp(data, header)

    def on_parsed_rtp(self, data: bytes, header: RtpHeader | None) -> None:
        """One decrypted RTP packet whose header is parsed and whose arrival transport-cc noted
        (the native receive path, ``glue.SrtpDatagramHook``); ``header`` None: not RTP."""
        if header is None:
            return
        if header.payload_type in self.rtx:
            self._on_rtx(data, header)
            return
        layers = self.layers
        if layers is not None and header.payload_type in self.layer_payload_types:
            producer = layers.layer_of(data, header)
            if producer is not None:  # an SSRC not marked with its RID yet is dropped
                producer.receive(data, header)
            return
        self.route(data, header)

    def _on_rtx(self, data: bytes, header: RtpHeader) -> None:
        """A retransmission (or RTX padding, a bandwidth probe): the original packet goes on to the
        producer only if it is still missing there (probes resend packets that arrived)."""
        layers = self.layers
        video = layers.layer_of_repair(data, header) if layers is not None else self.producers.get("video")
        if video is None or video.ssrc is None:
            return
        nack = video.reception.nack
        original = rtx_original(data, header, self.rtx[header.payload_type], video.ssrc)
        if original is None or nack is None:
            return
        packet, original_header = original
        # This publisher repairs on RTX: from now on a late original on the main stream is only
        # reordered, and the round trip is timed on what comes in here.
        nack.repairs_on_rtx = True
        if nack.repaired(original_header.sequence, time.time()):
            if layers is not None:
                video.receive(packet, original_header)
            else:
                self.route(packet, original_header)

    def _send_sender_reports(self) -> None:
        """RTCP SR (+ SDES CNAME) for every slot that sent since its last report, in as few
        compound packets as fit (``glue.sender_reports``); idle slots send none (RFC 3550 6.4:
        only active senders do)."""
        if self.closed:
            self._report_timer = None
            return
        loop = asyncio.get_running_loop()
        self._report_timer = loop.call_later(SENDER_REPORT_INTERVAL, self._send_sender_reports)
        reported = self._reported
        active = []
        for track, transceiver in self.transceivers.items():
            rewriter = track.rewriter
            if rewriter is None or rewriter.last_time is None:
                continue
            sent = rewriter.packets_sent
            if not sent or reported.get(track) == sent:
                continue
            reported[track] = sent
            active.append(
                (transceiver.sender, sent, rewriter.octets_sent, rewriter.last_timestamp, rewriter.last_time)
            )
        if active:
            for packet in glue.sender_reports(active):
                self.send_rtcp(packet)

    def _publish_mids(self) -> set[str]:
        return {t.mid for t in self.publish.values() if t.mid is not None}

    def _send_feedback(self) -> None:
        """Every INTERVAL_S: transport-cc feedback for what arrived since the last one."""
        transport_cc = self.transport_cc
        if transport_cc is None or self.closed:
            self._feedback_timer = None
            return
        self._feedback_timer = asyncio.get_running_loop().call_later(INTERVAL_S, self._send_feedback)
        video, audio = self.producers.get("video"), self.producers.get("audio")
        source = video if video is not None and video.ssrc is not None else audio
        if source is None or source.ssrc is None:
            return
        for packet in transport_cc.feedback(source.rtcp_ssrc, source.ssrc):
            if self.send_rtcp(packet):
                self.router.backend.counters.transport_cc_feedback += 1

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        sent, estimate = self.sent, self.estimate
        # Transport-cc from the endpoint on what it receives (None: its answer did not keep it).
        out["transport_cc_out"] = (
            None
            if sent is None
            else {
                "stamped": sent.stamped,
                "feedback": self.feedback_in,
                "refused": self.feedback_refused,
                "acked_bitrate": (
                    None if estimate is None or estimate.acked_bps is None else int(estimate.acked_bps)
                ),
                "loss": None if estimate is None else round(estimate.loss, 4),
                "delay_based": None if estimate is None else int(estimate.delay_bps),
                "loss_based": None if estimate is None else int(estimate.loss_bps),
                "overuse_cuts": None if estimate is None else estimate.overuse_cuts,
                "loss_cuts": None if estimate is None else estimate.loss_cuts,
            }
        )
        return out

    def packets_out(self) -> tuple[int, int]:
        if self.output is None:
            return (0, 0)
        return (self.output.packets, self.output.octets)

    def decoded_frames(self) -> int:
        return sum(c.frames for c in self.decode_counters)

    async def close(self) -> None:
        if self._closed:
            return
        for timer in (self._feedback_timer, self._report_timer):
            if timer is not None:
                timer.cancel()
        self._feedback_timer = self._report_timer = None
        self._close_media()
        try:
            await self.pc.close()
        except Exception:
            logger.exception("closing %s failed", self)


def rtx_payload_types(codecs: list[RTCRtpCodecParameters]) -> dict[int, int]:
    """RTX payload type -> the payload type it retransmits (its ``apt``)."""
    out = {}
    for c in codecs:
        apt = c.parameters.get("apt") if c.name.lower() == "rtx" else None
        if apt is not None:
            out[c.payloadType] = int(apt)
    return out


def _log_task_error(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.debug("RTCP send failed: %s", task.exception())


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
