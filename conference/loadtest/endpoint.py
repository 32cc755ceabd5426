"""A Python test endpoint: joins a meeting through the real signaling protocol, publishes
pre-encoded media, and counts (and optionally decodes) what it receives.

Tests and the benchmark (``conference bench``) use it as a venue, a member on a phone or the chair.

Publishing: the endpoint's camera and microphone are :mod:`conference.loadtest.testmedia` loops, so it spends
no CPU encoding. With ``raw_media`` (the benchmark's load processes) a :class:`RawPublisher` sends
them as ready-made RTP on the leg; otherwise aiortc's senders packetise them, and two per-sender
hooks make pre-encoded media behave like a browser's:
- a keyframe request (PLI/FIR from the server) reaches ``RTCRtpSender._send_keyframe``, which with
  pre-encoded media would do nothing: it is pointed at the track, which restarts its loop at the
  keyframe;
- aiortc only writes the audio-level header extension for audio it encoded itself: the encoded-frame
  step is wrapped so every Opus packet carries the track's level, as browsers send it.

Receiving: aiortc's own receive path costs ~100 us per packet and decodes every stream in a thread;
a load generator receiving thousands of packets per second cannot afford that. The endpoint takes
SRTP packets straight from its sockets (``aiortc_glue.hook_srtp_datagrams``, the same hook the
server uses) and counts packets and bytes per receive slot (by SSRC, from the server's offer),
handing nothing to aiortc's receivers. Video is decoded by the endpoint itself (a small VP8 depacketiser and
one PyAV decoder per slot), in one of three modes:
- ``all``: every frame of every video slot is decoded (and audio too): exact decoded-frame counts;
- ``probe`` (the default): a slot is decoded only from a join or a change of its source until a
  frame of the expected source decodes, which times joins and switches at a small cost;
- ``none``: count only.
Each test video encodes its endpoint index in its colour, so a decoded frame tells whose feed it is.
A slot decoder that waits for a keyframe for more than ``KEYFRAME_WAIT_S`` asks for one with a PLI
(``RTCRtpReceiver._send_rtcp_pli``), as a browser's decoder does.

Every private aiortc name the endpoint relies on is reached through :mod:`conference.sfu.aiortc_glue`
and checked there (:func:`check_aiortc_hooks` runs its check before the first peer connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
import av
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.rtcconfiguration import RTCBundlePolicy

from conference.loadtest.publisher import (
    LAYER_RIDS,
    RawPublisher,
    RawStream,
)
from conference.loadtest.soak import SequenceTally
from conference.loadtest.testmedia import (
    MediaParams,
    PreEncodedAudioTrack,
    PreEncodedVideoTrack,
    identify_frame,
    load_clip,
    load_layers,
)
from conference.sfu import aiortc_glue as glue
from conference.sfu import payload as rtp_payload
from conference.sfu.extmap import accept_extension, answered_extension
from conference.sfu.packet import URI_AUDIO_LEVEL, URI_MID, parse_header
from conference.sfu.twcc import INTERVAL_S as FEEDBACK_INTERVAL_S
from conference.sfu.twcc import URI_TRANSPORT_CC, TransportCcReceiver

URI_RID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"

DecodeMode = Literal["all", "probe", "none"]

# Receive buffer asked for each UDP socket (the kernel caps it at net.core.rmem_max). A chair receives
# ~3,000 packets/s: the default buffer (~208 KB) holds 60 ms of that, so a load process descheduled
# briefly on a busy machine would drop packets the server did send, and the benchmark would blame
# the server.
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024
# A decoder that lost its place waits this long for a keyframe before asking for one.
KEYFRAME_WAIT_S = 0.3


MAX_MOVES = 3  # `moved` answers followed by one join (a room moves once; more is a loop)


class EndpointError(Exception):
    """The endpoint could not join or negotiate (the server's error code and message)."""

    def __init__(self, code: str, message: str, url: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.url = url  # of `moved`: the node hosting the room


def check_aiortc_hooks() -> None:
    """Fail loudly (``aiortc_glue.GlueError``) if an aiortc upgrade moved a private name the endpoint
    relies on."""
    glue.check_aiortc()


def vp8_payload(payload: bytes) -> tuple[bool, bool, bytes] | None:
    """(starts a frame, is a keyframe start, VP8 data) of an RFC 7741 payload, read with the core's
    parser; None if malformed or empty."""
    try:
        descriptor, data = rtp_payload.vp8_payload(payload)
    except ValueError:
        return None
    if not data:
        return None
    start = descriptor.start and descriptor.partition_id == 0
    return start, start and not data[0] & 0x01, data


@dataclass(slots=True)
class ReceiveSlot:
    """One receive slot (a sendonly m-line of the server): counters and the decoder state."""

    mid: str
    kind: str  # "audio" | "video"
    role: str  # "video" (program slot), "audio", "preview", "publish"
    index: int
    ssrcs: set[int] = field(default_factory=set)
    identity: str | None = None  # the source the slot should show now
    packets: int = 0
    octets: int = 0
    first_packet_at: float | None = None
    # Video decoding.
    decoding: bool = False
    decoder: Any = None
    synced: bool = False  # inside a frame sequence that started at a keyframe
    waiting_since: float | None = None  # decoding but waiting for a keyframe since (monotonic)
    last_keyframe_request: float = 0.0
    frame_ts: int | None = None
    frame_parts: list[bytes] = field(default_factory=list)
    next_seq: int | None = None
    frames_decoded: int = 0
    frames_lost: int = 0
    decode_errors: int = 0
    last_seen_index: int | None = None
    last_width: int = 0  # of the frame decoded last (a simulcast layer switch changes it)
    # A join or a change of source waiting for its first decoded frame: (since, expected identity).
    pending_since: float | None = None
    pending_expect: str | None = None

    def counters(self) -> dict[str, Any]:
        return {
            "mid": self.mid,
            "kind": self.kind,
            "role": self.role,
            "index": self.index,
            "identity": self.identity,
            "packets": self.packets,
            "octets": self.octets,
            "frames_decoded": self.frames_decoded,
            "frames_lost": self.frames_lost,
            "decode_errors": self.decode_errors,
            "last_seen_index": self.last_seen_index,
            "last_width": self.last_width,
        }


@dataclass(slots=True)
class EndpointConfig:
    url: str  # http(s)://host:port of the server
    token: str
    identity: str
    index: int  # selects the test media (its colour and tone)
    device: str = "venue"
    publish_audio: bool = True
    publish_video: bool = True
    video_slots: int | None = None  # None: the server's default for the device
    audio_slots: int | None = None
    speaking: bool = False
    decode: DecodeMode = "probe"
    media: MediaParams = field(default_factory=MediaParams)
    cache_dir: Path | None = None
    # identity -> test media index of every endpoint, to tell a decoded frame's source.
    palette: dict[str, int] = field(default_factory=dict)
    join_timeout: float = 20.0
    # Receive slots accept VP8 only (what test endpoints publish): keeps a chair's 60-m-line answer small.
    receive_vp8_only: bool = True
    # Publish ready-made RTP (RawPublisher) instead of going through aiortc's senders: what the
    # benchmark's load processes use so 50 endpoints fit beside the server on one machine.
    raw_media: bool = False
    # Number every published packet for transport-wide congestion control when the server offers it
    # (raw media only), as browsers do: the server's transport-cc receiver and feedback then run.
    transport_cc: bool = True
    # Publish three simulcast layers (raw media only) when the server's offer asks for them, as a
    # browser does: three SSRCs, each packet marked with its RID. False: one stream.
    simulcast: bool = True


def parse_offer_slots(sdp: str) -> dict[str, dict[str, Any]]:
    """mid -> {"kind", "ssrcs", "rtx", "mid_ext"} from an SDP (a=mid, a=ssrc, a=ssrc-group:FID, a=extmap)."""
    sections: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    for line in sdp.splitlines():
        if line.startswith("m="):
            current = {"kind": line[2:].split(" ", 1)[0], "ssrcs": set(), "rtx": set(), "mid_ext": 0}
        elif current is None:
            continue
        elif line.startswith("a=mid:"):
            sections[line[6:].strip()] = current
        elif line.startswith("a=ssrc-group:FID "):
            parts = line.split()
            current["rtx"].update(int(s) for s in parts[2:])
        elif line.startswith("a=ssrc:"):
            current["ssrcs"].add(int(line[7:].split(" ", 1)[0]))
        elif line.startswith("a=extmap:") and "sdes:mid" in line:
            current["mid_ext"] = int(line[9:].split(" ", 1)[0].split("/")[0])
    for section in sections.values():
        section["ssrcs"] -= section["rtx"]
    return sections


def offered_simulcast(sdp: str, mid: str) -> list[str]:
    """The RIDs the offer asks m-section ``mid`` to send (``a=simulcast:recv``), in its order."""
    current = None
    for line in sdp.splitlines():
        if line.startswith("m="):
            current = None
        elif line.startswith("a=mid:"):
            current = line[6:].strip()
        elif current == mid and line.startswith("a=simulcast:recv "):
            return [alt.split(",")[0].lstrip("~") for alt in line.split(" ", 2)[1].split(";")]
    return []


def answer_simulcast(answer: str, offer: str, mid: str, rids: list[str]) -> tuple[str, int]:
    """``answer`` sending ``rids`` on m-section ``mid`` as a browser answers the server's simulcast
    offer: the RID extension under the offer's id, ``a=rid:<id> send`` each, ``a=simulcast:send``.
    Returns the answer and the RID extension's id (0: the offer had none: answered unchanged)."""
    answer = accept_extension(answer, offer, {mid}, URI_RID)
    rid_ext = answered_extension(answer, URI_RID).get(mid, 0)
    if not rid_ext or not rids:
        return answer, 0
    lines = answer.split("\r\n")
    start = lines.index(f"a=mid:{mid}")
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("m=")), len(lines))
    while end > start and not lines[end - 1]:
        end -= 1
    added = [*(f"a=rid:{rid} send" for rid in rids), f"a=simulcast:send {';'.join(rids)}"]
    return "\r\n".join(lines[:end] + added + lines[end:]), rid_ext


def compact_answer(sdp: str) -> str:
    """Drop aiortc's sha-384/sha-512 fingerprints, keeping sha-256 in every m-section.

    aiortc writes three fingerprints per m-section: a chair's answer (60+ m-lines) would exceed the
    signaling message limit on fingerprints alone. One supported algorithm is all DTLS needs."""
    lines = sdp.split("\r\n")
    kept = [line for line in lines if not line.startswith(("a=fingerprint:sha-384", "a=fingerprint:sha-512"))]
    return "\r\n".join(kept)


def keep_only_vp8(sdp: str, mids: set[str]) -> str:
    """The offer with only VP8 (and its RTX) left in the video m-sections of ``mids``."""
    sections: list[list[str]] = [[]]
    for line in sdp.split("\r\n"):
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    out = sections[0]
    for section in sections[1:]:
        mid = next((line[6:] for line in section if line.startswith("a=mid:")), None)
        if not section[0].startswith("m=video") or mid not in mids:
            out.extend(section)
            continue
        vp8 = {line[9:].split()[0] for line in section if line.startswith("a=rtpmap:") and " VP8/" in line}
        rtx = {
            line[7:].split()[0]
            for line in section
            if line.startswith("a=fmtp:") and any(f"apt={pt}" in line.split()[1].split(";") for pt in vp8)
        }
        keep = vp8 | rtx
        if not vp8:
            out.extend(section)
            continue
        head = section[0].split()
        out.append(" ".join(head[:3] + [pt for pt in head[3:] if pt in keep]))
        for line in section[1:]:
            codec_line = line.startswith(("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:"))
            if codec_line and line.split(":", 1)[1].split()[0] not in keep:
                continue
            out.append(line)
    return "\r\n".join(out)


class Endpoint:
    """One test participant. ``await join()``, then read ``report()``; ``await close()`` at the end."""

    def __init__(self, config: EndpointConfig) -> None:
        self.config = config
        self.identity = config.identity
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.pc: RTCPeerConnection | None = None
        self.video_track: PreEncodedVideoTrack | None = None
        self.audio_track: PreEncodedAudioTrack | None = None
        self.join_result: dict[str, Any] = {}
        self.program: dict[str, Any] = {"layout": "single", "slots": [None]}
        self.version = 0
        self.speakers: list[str] = []
        self.events: list[dict[str, Any]] = []
        self.slots: dict[str, ReceiveSlot] = {}
        self.video_slots: list[ReceiveSlot] = []
        self.audio_slots: list[ReceiveSlot] = []
        self.preview_slots: list[ReceiveSlot] = []
        self._by_ssrc: dict[int, ReceiveSlot] = {}
        # Per received stream: the sequence numbers that arrived (the soak's interval delivery).
        self.tallies: dict[int, SequenceTally] = {}
        self._mid_ext_id = 0  # the server's id of the mid header extension
        self.unknown_packets = 0
        self.handler_errors = 0
        self.ws_opened_at: float | None = None
        self.first_frame_at: float | None = None
        self.switch_times: list[float] = []  # seconds from a program change to the new source's frame
        self.closed_reason: str | None = None
        self.node_url = config.url
        self._ids = itertools.count(1)
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._offer: asyncio.Future[dict[str, Any]] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._audio_decoder: Any = None
        self.audio_frames_decoded = 0
        self.first_frame_event = asyncio.Event()
        self._receivers: dict[str, Any] = {}  # mid -> RTCRtpReceiver, for keyframe requests
        self._background: set[asyncio.Future[None]] = set()
        self.keyframe_requests_sent = 0
        self.receive_buffer = 0
        self.raw: RawPublisher | None = None
        self.simulcast_layers = 0  # layers published (0: no raw video, 1: one stream)
        self.datagram_hooks: list[glue.SrtpDatagramHook] = []
        # Transport-cc on what the endpoint receives, when the server offers it on the receive
        # slots: arrivals noted per packet, feedback sent every FEEDBACK_INTERVAL_S as browsers do.
        self.receive_cc: TransportCcReceiver | None = None
        self._receive_cc_hook: glue.SrtpDatagramHook | None = None
        self._feedback_timer: asyncio.TimerHandle | None = None
        self._feedback_ssrc = 0
        self._output: glue.LegOutput | None = None
        self.transport_cc_feedback_sent = 0

    # --- signaling ------------------------------------------------------------------------

    async def join(self) -> dict[str, Any]:
        """Open the socket, join, negotiate media; returns the join result. A join answered
        ``moved`` (the room lives on another node) is made again there, as a page does:
        ``self.node_url`` is where the endpoint ended up."""
        cfg = self.config
        check_aiortc_hooks()
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, connect=cfg.join_timeout)
        )
        self.ws_opened_at = time.time()
        self.node_url = cfg.url
        for _ in range(MAX_MOVES):
            try:
                return await self._join_at(self.node_url)
            except EndpointError as exc:
                if exc.code != "moved" or not exc.url:
                    raise
                self.node_url = exc.url
                await self._drop_socket()
        raise EndpointError("moved", f"sent on more than {MAX_MOVES} times")

    async def _drop_socket(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
        self.closed_reason = None

    async def _join_at(self, url: str) -> dict[str, Any]:
        cfg = self.config
        assert self.session is not None
        ws_url = url.replace("http", "ws", 1).rstrip("/") + "/ws"
        self.ws = await self.session.ws_connect(ws_url, params={"token": cfg.token}, heartbeat=None)
        loop = asyncio.get_running_loop()
        self._offer = loop.create_future()
        self._reader = asyncio.create_task(self._read_messages(), name=f"endpoint-{self.identity}-ws")
        request: dict[str, Any] = {
            "device": cfg.device,
            "publish": {"audio": cfg.publish_audio, "video": cfg.publish_video},
        }
        if cfg.video_slots is not None:
            request["video_slots"] = cfg.video_slots
        if cfg.audio_slots is not None:
            request["audio_slots"] = cfg.audio_slots
        result = await asyncio.wait_for(self.request("join", **request), cfg.join_timeout)
        self.join_result = result
        room = result.get("room") or {}
        self.version = int(room.get("version", 0))
        self.program = room.get("program") or self.program
        if result.get("media", True):
            offer = await asyncio.wait_for(self._offer, cfg.join_timeout)
            answer = await self._negotiate(offer)
            limit = int((result.get("limits") or {}).get("max_message_bytes") or 0)
            size = len(json.dumps({"type": "answer", "id": 0, "sdp": answer}).encode())
            if limit and size > limit:
                raise EndpointError("too_large", f"the answer is {size} bytes; the server takes {limit}")
            await asyncio.wait_for(self.request("answer", sdp=answer), cfg.join_timeout)
        return result

    async def request(self, type_: str, **fields: Any) -> dict[str, Any]:
        """Send a command and wait for its reply; raises EndpointError on an error reply."""
        assert self.ws is not None
        request_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[request_id] = future
        try:
            await self.ws.send_str(json.dumps({"type": type_, "id": request_id, **fields}))
            return await asyncio.wait_for(future, self.config.join_timeout)
        finally:
            self._replies.pop(request_id, None)

    async def set_program(self, layout: str, slots: list[str | None]) -> dict[str, Any]:
        return await self.request("set_program", layout=layout, slots=slots)

    async def _read_messages(self) -> None:
        assert self.ws is not None
        try:
            async for msg in self.ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                self._on_message(json.loads(msg.data))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            code = self.ws.close_code
            self.closed_reason = self.closed_reason or (f"closed {code}" if code else "closed")
            error = EndpointError("closed", self.closed_reason)
            pending = [*self._replies.values(), *([self._offer] if self._offer is not None else [])]
            for future in pending:
                if not future.done():
                    future.set_exception(error)
                    future.exception()  # nobody may be waiting: do not log it as never retrieved

    def _on_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind in ("reply", "error"):
            future = self._replies.get(message.get("id"))  # type: ignore[arg-type]
            if future is None or future.done():
                return
            if kind == "reply":
                future.set_result(message.get("result") or {})
            else:
                future.set_exception(
                    EndpointError(message.get("code", "?"), message.get("message", ""), message.get("url"))
                )
        elif kind == "offer":
            if self._offer is not None and not self._offer.done():
                self._offer.set_result(message)
        elif kind == "event":
            self._on_event(message["event"])
        elif kind == "slots":
            self._on_slots(message)
        elif kind == "speakers":
            self.speakers = list(message.get("speakers") or [])
        elif kind in ("removed", "replaced", "shutdown", "moved"):
            self.closed_reason = kind

    def _on_event(self, event: dict[str, Any]) -> None:
        version = int(event.get("version", 0))
        if version and version <= self.version:
            return  # already in the snapshot
        self.version = max(self.version, version)
        self.events.append(event)
        if event.get("kind") == "program":
            self.program = event["program"]
            self._program_changed(float(event.get("at") or time.time()))

    def _program_changed(self, at: float) -> None:
        slots = self.program.get("slots") or []
        for slot in self.video_slots:
            identity = slots[slot.index] if slot.index < len(slots) else None
            if identity != slot.identity:
                slot.identity = identity
                self._expect(slot, identity, at)

    def _on_slots(self, message: dict[str, Any]) -> None:
        now = time.time()
        for entry in message.get("audio") or []:
            slot = self.slots.get(entry.get("mid"))
            if slot is not None:
                slot.identity = entry.get("identity")
        for entry in message.get("previews") or []:
            slot = self.slots.get(entry.get("mid"))
            if slot is not None and slot.identity != entry.get("identity"):
                slot.identity = entry.get("identity")
                self._expect(slot, slot.identity, None if slot.first_packet_at is None else now)

    def _expect(self, slot: ReceiveSlot, identity: str | None, since: float | None) -> None:
        """The slot's source changed: time its first decoded frame (``since`` None: a join)."""
        if identity is None:
            slot.pending_since = slot.pending_expect = None
            return
        slot.pending_since = since
        slot.pending_expect = identity
        if self.config.decode != "none" and slot.kind == "video":
            if not slot.decoding:
                slot.waiting_since = None
            slot.decoding = True

    # --- media ----------------------------------------------------------------------------

    async def _negotiate(self, offer: dict[str, Any]) -> str:
        cfg = self.config
        slots_map = offer.get("slots") or {}
        sdp = offer["sdp"]
        sections = parse_offer_slots(sdp)
        if cfg.receive_vp8_only:
            receive_mids = {m for role in ("video", "previews") for m in slots_map.get(role) or []}
            sdp = keep_only_vp8(sdp, receive_mids)
        # The server BUNDLEs every m-line on one transport: one socket pair, one SRTP context.
        self.pc = pc = RTCPeerConnection(
            RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        transceivers = {t.mid: t for t in pc.getTransceivers()}
        clip = None
        publish = slots_map.get("publish") or {}
        if (cfg.publish_audio or cfg.publish_video) and publish:
            clip = await asyncio.get_running_loop().run_in_executor(
                None, load_clip, cfg.index, cfg.media, cfg.cache_dir
            )
        video_mid, audio_mid = publish.get("video"), publish.get("audio")
        raw_publish: dict[str, RTCRtpTransceiver] = {}
        if clip is not None and cfg.publish_video and video_mid in transceivers:
            transceiver = transceivers[video_mid]
            caps = RTCRtpSender.getCapabilities("video")
            transceiver.setCodecPreferences(
                [c for c in caps.codecs if c.mimeType in ("video/VP8", "video/rtx")]
            )
            transceiver.direction = "sendonly"
            if cfg.raw_media:
                transceiver.sender.replaceTrack(glue.SilentTrack("video"))
                raw_publish["video"] = transceiver
                glue.intercept_sender(transceiver.sender, self._raw_keyframe_request, self._raw_nack)
            else:
                self.video_track = PreEncodedVideoTrack(clip)
                transceiver.sender.replaceTrack(self.video_track)
                glue.on_keyframe_request(transceiver.sender, self.video_track.request_keyframe)
        if clip is not None and cfg.publish_audio and audio_mid in transceivers:
            transceiver = transceivers[audio_mid]
            transceiver.direction = "sendonly"
            if cfg.raw_media:
                transceiver.sender.replaceTrack(glue.SilentTrack("audio"))
                raw_publish["audio"] = transceiver
            else:
                self.audio_track = PreEncodedAudioTrack(clip, speaking=cfg.speaking)
                transceiver.sender.replaceTrack(self.audio_track)
                _carry_audio_level(transceiver.sender, self.audio_track)
        for role in ("video", "audio", "previews"):
            for i, mid in enumerate(slots_map.get(role) or []):
                section = sections.get(mid)
                if section is None:
                    continue
                slot = ReceiveSlot(mid, section["kind"], role.rstrip("s"), i, set(section["ssrcs"]))
                self.slots[mid] = slot
                {"video": self.video_slots, "audio": self.audio_slots, "previews": self.preview_slots}[
                    role
                ].append(slot)
                for ssrc in slot.ssrcs:
                    self._by_ssrc[ssrc] = slot
                if section["mid_ext"]:
                    self._mid_ext_id = section["mid_ext"]
        for t in pc.getTransceivers():
            if t.mid not in (video_mid, audio_mid) and t.mid in self.slots:
                t.direction = "recvonly"
                self._receivers[t.mid] = t.receiver
        # Video slot i shows program slot i from the start.
        slots = self.program.get("slots") or []
        for slot in self.video_slots:
            slot.identity = slots[slot.index] if slot.index < len(slots) else None
            self._expect(slot, slot.identity, None)
        for slot in self.preview_slots:
            self._expect(slot, slot.identity, None)
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
        self.receive_buffer = glue.enlarge_receive_buffers(pc, RECEIVE_BUFFER_BYTES)
        glue.lenient_consent(pc)  # a busy load process must not hang up on itself
        # One transport when the server BUNDLEs (it does); hook each in case it does not.
        for dtls in {id(t.receiver.transport): t.receiver.transport for t in pc.getTransceivers()}.values():
            if dtls is not None:
                glue.hook_incoming_rtp(dtls, self._handle_rtp_data)
                self.datagram_hooks.append(glue.hook_srtp_datagrams(dtls, self._on_rtp_packet))
        answer_sdp = compact_answer(pc.localDescription.sdp)
        self._output = output = glue.LegOutput(glue.leg_transport(pc))
        transport_cc = 0
        if clip is not None and raw_publish and cfg.transport_cc:
            mids = {t.mid for t in raw_publish.values() if t.mid}
            answer_sdp = accept_extension(answer_sdp, sdp, mids, URI_TRANSPORT_CC, "transport-cc")
            accepted = answered_extension(answer_sdp, URI_TRANSPORT_CC)
            transport_cc = next((accepted[m] for m in mids if m in accepted), 0)
        if cfg.transport_cc and self.slots:
            answer_sdp = self._answer_receive_cc(answer_sdp, sdp, pc)
        if clip is not None and raw_publish:
            video = _raw_stream(raw_publish.get("video"), "vp8")
            simulcast: list[tuple[RawStream, Any]] | None = None
            rid_ext = 0
            rids = offered_simulcast(sdp, video_mid) if video is not None and cfg.simulcast else []
            if video is not None and rids == list(LAYER_RIDS):
                answer_sdp, rid_ext = answer_simulcast(answer_sdp, sdp, video_mid, rids)
            if rid_ext and video is not None:
                layers = await asyncio.get_running_loop().run_in_executor(
                    None, load_layers, cfg.index, cfg.media, cfg.cache_dir
                )
                taken = {glue.sender_ssrc(t.sender) for t in pc.getTransceivers()}
                simulcast = []
                for layer_clip in layers:
                    ssrc = _fresh_ssrc(taken)
                    stream = RawStream(ssrc, video.payload_type, video.mid_ext, video.mid)
                    simulcast.append((stream, layer_clip))
                    glue.route_layer_rtcp(
                        glue.leg_transport(pc), ssrc, self._raw_keyframe_request, self._raw_layer_nack
                    )
            self.raw = RawPublisher(
                clip,
                output,
                video,
                _raw_stream(raw_publish.get("audio"), "opus"),
                speaking=cfg.speaking,
                transport_cc=transport_cc,
                simulcast=simulcast,
                rid_ext=rid_ext,
            )
            self.simulcast_layers = len(self.raw.layers)
            self.raw.start()
        return answer_sdp

    def _answer_receive_cc(self, answer_sdp: str, offer_sdp: str, pc: RTCPeerConnection) -> str:
        """Accept transport-cc on the receive slots where the server offers it and start the
        feedback; without the offer (a server that does not stamp what it sends) nothing runs."""
        mids = set(self.slots)
        answer_sdp = accept_extension(answer_sdp, offer_sdp, mids, URI_TRANSPORT_CC, "transport-cc")
        accepted = answered_extension(answer_sdp, URI_TRANSPORT_CC)
        ext_id = next((accepted[m] for m in sorted(mids) if m in accepted), 0)
        if not ext_id or not self.datagram_hooks:
            return answer_sdp
        # The kernel's receive time, not the load process's loop: a busy endpoint must not look
        # like a congested link to the server's estimator.
        self._receive_cc_hook = hook = self.datagram_hooks[0]
        hook.kernel_timestamps = True
        self.receive_cc = TransportCcReceiver(ext_id, native=True)
        transceivers = pc.getTransceivers()
        self._feedback_ssrc = glue.sender_ssrc(transceivers[0].sender) if transceivers else 0
        loop = asyncio.get_running_loop()
        self._feedback_timer = loop.call_later(FEEDBACK_INTERVAL_S, self._send_feedback)
        return answer_sdp

    def _send_feedback(self) -> None:
        receiver, output = self.receive_cc, self._output
        if receiver is None or output is None:
            return
        media_ssrc = next(iter(self._by_ssrc), 0)
        for packet in receiver.feedback(self._feedback_ssrc, media_ssrc):
            if output.send_rtcp(packet):
                self.transport_cc_feedback_sent += 1
        self._feedback_timer = asyncio.get_running_loop().call_later(FEEDBACK_INTERVAL_S, self._send_feedback)

    def _raw_keyframe_request(self, ssrc: int | None = None) -> None:
        if self.raw is not None:
            self.raw.request_keyframe(ssrc)

    def _raw_nack(self, sequence: int) -> None:
        if self.raw is not None:
            self.raw.retransmit(sequence)

    def _raw_layer_nack(self, sequence: int, ssrc: int) -> None:
        if self.raw is not None:
            self.raw.retransmit(sequence, ssrc)

    def _slot_for_unknown_ssrc(self, data: bytes, ssrc: int) -> ReceiveSlot | None:
        """A packet whose SSRC the offer did not list: find its slot from the mid extension once."""
        if not self._mid_ext_id or not data[0] & 0x10:
            return None
        pos = 12 + 4 * (data[0] & 0x0F)
        if len(data) < pos + 4 or data[pos : pos + 2] != b"\xbe\xde":
            return None
        end = pos + 4 + 4 * ((data[pos + 2] << 8) | data[pos + 3])
        pos += 4
        while pos < end and pos < len(data):
            byte = data[pos]
            if byte == 0:
                pos += 1
                continue
            ext_id, length = byte >> 4, (byte & 0x0F) + 1
            if ext_id == self._mid_ext_id:
                slot = self.slots.get(data[pos + 1 : pos + 1 + length].decode("ascii", "replace"))
                if slot is not None:
                    self._by_ssrc[ssrc] = slot
                    slot.ssrcs.add(ssrc)
                return slot
            pos += 1 + length
        return None

    async def _handle_rtp_data(self, data: bytes, arrival_time_ms: int) -> None:
        self._on_rtp_packet(data)

    def _on_rtp_packet(self, data: bytes) -> None:
        # Replaces aiortc's receive path for this endpoint: count, maybe decode, hand nothing on.
        try:
            if len(data) < 12:
                return
            ssrc = (data[8] << 24) | (data[9] << 16) | (data[10] << 8) | data[11]
            slot = self._by_ssrc.get(ssrc)
            if slot is None:
                slot = self._slot_for_unknown_ssrc(data, ssrc)
                if slot is None:
                    self.unknown_packets += 1
                    return
            slot.packets += 1
            slot.octets += len(data)
            receive_cc = self.receive_cc
            if receive_cc is not None:
                header = parse_header(data)
                hook = self._receive_cc_hook
                if header is not None and hook is not None:
                    receive_cc.add(data, header, hook.arrival_us or int(time.time() * 1e6))
            tally = self.tallies.get(ssrc)
            if tally is None:
                tally = self.tallies[ssrc] = SequenceTally()
            tally.add((data[2] << 8) | data[3])
            if slot.first_packet_at is None:
                slot.first_packet_at = time.time()
            if slot.decoding:
                self._decode_video(slot, data)
            elif slot.kind == "audio" and self.config.decode == "all":
                self._decode_audio(data)
        except Exception:
            self.handler_errors += 1

    def _decode_audio(self, data: bytes) -> None:
        header = parse_header(data)
        if header is None:
            return
        if self._audio_decoder is None:
            self._audio_decoder = av.CodecContext.create("libopus", "r")
        with contextlib.suppress(av.FFmpegError):
            packet = av.Packet(data[header.payload_offset : header.payload_end])
            self.audio_frames_decoded += len(self._audio_decoder.decode(packet))

    def _decode_video(self, slot: ReceiveSlot, data: bytes) -> None:
        header = parse_header(data)
        if header is None:
            return
        seq, timestamp = header.sequence, header.timestamp
        parsed = vp8_payload(data[header.payload_offset : header.payload_end])
        if parsed is None:
            return
        start, keyframe, chunk = parsed
        in_order = slot.next_seq is None or seq == slot.next_seq
        slot.next_seq = (seq + 1) & 0xFFFF
        if start:
            if slot.frame_parts or not in_order:  # a frame (or its tail) went missing
                slot.frames_lost += 1
                slot.synced = False
            slot.frame_parts = []
            slot.frame_ts = timestamp
            if keyframe:
                slot.synced = True
                slot.waiting_since = None
            elif not slot.synced:
                self._wait_for_keyframe(slot)
                return
        elif not in_order or timestamp != slot.frame_ts or not slot.frame_parts:
            if slot.frame_parts:
                slot.frames_lost += 1
            slot.frame_parts = []
            slot.synced = False  # a hole: wait for the next keyframe
            return
        if not slot.synced:
            return
        slot.frame_parts.append(chunk)
        if data[1] & 0x80:  # marker: the frame is complete
            frame_data = b"".join(slot.frame_parts)
            slot.frame_parts = []
            self._decode_frame(slot, frame_data)

    def _wait_for_keyframe(self, slot: ReceiveSlot) -> None:
        """Like a browser whose decoder cannot go on: ask for a keyframe if none comes soon.

        Behind the SFU a switch starts on a keyframe, so this stays quiet there; a relay that keeps
        one encoder per slot sends none by itself."""
        now = time.monotonic()
        if slot.waiting_since is None:
            slot.waiting_since = now
            return
        if now - slot.waiting_since < KEYFRAME_WAIT_S or now - slot.last_keyframe_request < 1.0:
            return
        slot.last_keyframe_request = now
        receiver = self._receivers.get(slot.mid)
        ssrc = next(iter(slot.ssrcs), None)
        if receiver is not None and ssrc is not None:
            self.keyframe_requests_sent += 1
            task = asyncio.ensure_future(glue.send_pli(receiver, ssrc))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _decode_frame(self, slot: ReceiveSlot, frame_data: bytes) -> None:
        if slot.decoder is None:
            slot.decoder = av.CodecContext.create("libvpx", "r")
        try:
            frames = slot.decoder.decode(av.Packet(frame_data))
        except av.FFmpegError:
            slot.decode_errors += 1
            slot.synced = False
            return
        for frame in frames:
            slot.frames_decoded += 1
            slot.last_width = frame.width
            now = time.time()
            if self.first_frame_at is None:
                self.first_frame_at = now
                self.first_frame_event.set()
            if slot.pending_expect is None and self.config.decode != "all":
                slot.decoding = False
                slot.next_seq = None
                continue
            if slot.pending_expect is None and slot.frames_decoded % 25:
                continue  # in "all" mode, check whose feed it is once a second
            seen = identify_frame(frame)
            slot.last_seen_index = seen
            expected = self.config.palette.get(slot.pending_expect or "")
            if slot.pending_expect is not None and (expected is None or seen == expected):
                if slot.pending_since is not None:
                    self.switch_times.append(now - slot.pending_since)
                slot.pending_since = slot.pending_expect = None
                if self.config.decode != "all":
                    slot.decoding = False
                    slot.synced = False
                    slot.frame_parts = []
                    slot.next_seq = None  # the next probe starts afresh, not with a "gap"

    # --- results --------------------------------------------------------------------------

    @property
    def join_time(self) -> float | None:
        """Seconds from opening the socket to the first decoded video frame."""
        if self.first_frame_at is None or self.ws_opened_at is None:
            return None
        return self.first_frame_at - self.ws_opened_at

    def report(self) -> dict[str, Any]:
        return {
            "identity": self.identity,
            "join_s": self.join_time,
            "switch_s": list(self.switch_times),
            "pending_switches": sum(
                1 for s in self.slots.values() if s.pending_expect is not None and s.pending_since is not None
            ),
            "slots": [s.counters() for s in self.slots.values()],
            "unknown_packets": self.unknown_packets,
            "handler_errors": self.handler_errors,
            "audio_frames_decoded": self.audio_frames_decoded,
            "video_frames_sent": self._published("frames_sent"),
            "keyframe_requests": self._published("keyframe_requests"),
            "keyframe_requests_sent": self.keyframe_requests_sent,
            "receive_buffer": self.receive_buffer,
            "audio_frames_sent": self.raw.audio_frames_sent
            if self.raw is not None
            else (self.audio_track.frames_sent if self.audio_track else 0),
            "srtp_from_sockets": sum(h.packets for h in self.datagram_hooks),
            "srtp_unprotect_errors": sum(h.unprotect_errors for h in self.datagram_hooks),
            "connection_state": self.pc.connectionState if self.pc is not None else None,
            "ice_state": self.pc.iceConnectionState if self.pc is not None else None,
            "retransmissions": self.raw.retransmissions if self.raw is not None else 0,
            "simulcast_layers": self.simulcast_layers,
            "transport_cc_received": self.receive_cc.packets if self.receive_cc is not None else 0,
            "transport_cc_feedback_sent": self.transport_cc_feedback_sent,
            "speakers": list(self.speakers),
            "closed_reason": self.closed_reason,
        }

    def _published(self, counter: str) -> int:
        source = self.raw if self.raw is not None else self.video_track
        return int(getattr(source, counter)) if source is not None else 0

    def pause_media(self) -> None:
        """Stop publishing camera and microphone (the benchmark's drain before counting)."""
        if self.raw is not None:
            self.raw.pause()
        for track in (self.video_track, self.audio_track):
            if track is not None:
                track.pause()

    async def close(self, leave: bool = True) -> None:
        if self.raw is not None:
            self.raw.pause()
        if self._feedback_timer is not None:
            self._feedback_timer.cancel()
            self._feedback_timer = None
        if leave and self.ws is not None and not self.ws.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.request("leave"), 2.0)
        if self.pc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.pc.close(), 5.0)
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self.session is not None:
            await self.session.close()


def _carry_audio_level(sender: RTCRtpSender, track: PreEncodedAudioTrack) -> None:
    """Make aiortc put the track's level in each Opus packet's audio-level extension, like a browser."""

    def set_level(frame: Any) -> None:
        # aiortc writes -audio_level into the extension (it holds dBov, negative).
        frame.audio_level = -track.level

    glue.wrap_encoded_frames(sender, set_level)


def _fresh_ssrc(taken: set[int]) -> int:
    """A random SSRC not in ``taken`` (added to it)."""
    while True:
        ssrc = random.getrandbits(32)
        if ssrc and ssrc not in taken:
            taken.add(ssrc)
            return ssrc


def _raw_stream(transceiver: RTCRtpTransceiver | None, codec: str) -> RawStream | None:
    """The RTP identity of a raw-published stream: aiortc's SSRC, the negotiated payload type and
    header-extension ids of the transceiver."""
    if transceiver is None or transceiver.currentDirection not in ("sendonly", "sendrecv"):
        return None
    codecs = glue.negotiated_codecs(transceiver)
    payload_type = next((c.payloadType for c in codecs if c.name.lower() == codec), None)
    if payload_type is None:
        return None
    ids = {e.uri: e.id for e in glue.negotiated_extensions(transceiver)}
    return RawStream(
        ssrc=glue.sender_ssrc(transceiver.sender),
        payload_type=payload_type,
        mid_ext=ids.get(URI_MID, 0),
        mid=(transceiver.mid or "").encode(),
        level_ext=ids.get(URI_AUDIO_LEVEL, 0),
    )
