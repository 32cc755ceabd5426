"""The load endpoints' publisher: an endpoint's pre-encoded clip sent as ready-made RTP (packetised
once, each header written with ``struct``), as cheap per packet as Python allows, so that 50 of
them fit on this machine beside the server (docs/performance.md). Used by the load endpoint
(``conference.loadtest.endpoint``) over a WebRTC leg and by tests over the in-process transport.
"""

from __future__ import annotations

import asyncio
import random
import struct
from dataclasses import dataclass, field
from typing import Any

from conference.loadtest.testmedia import (
    AUDIO_FRAME_SAMPLES,
    AUDIO_RATE,
    SILENT_LEVEL,
    SPEAKING_LEVEL,
    VIDEO_CLOCK,
    EncodedClip,
)

_RTP_HEADER = struct.Struct("!BBHII")
VP8_MAX_PAYLOAD = 1200  # bytes of VP8 data per packet (the descriptor and headers come on top)
HISTORY_SIZE = 512  # video packets kept for NACKs: ~5 s at 500 kbit/s
AUDIO_TICK_S = AUDIO_FRAME_SAMPLES / AUDIO_RATE  # 20 ms: one Opus frame


def vp8_chunks(frame: bytes, size: int = VP8_MAX_PAYLOAD) -> list[bytes]:
    """A VP8 frame cut into equal-ish packet payloads of at most ``size`` bytes (RFC 7741 §4)."""
    count = max(1, -(-len(frame) // size))
    step = -(-len(frame) // count)
    return [frame[i : i + step] for i in range(0, len(frame), step)] or [b""]


def extension_block(elements: list[tuple[int, bytes]]) -> bytes:
    """An RFC 8285 one-byte-header extension block (0xBEDE) of (id, value) elements, padded."""
    body = b"".join(bytes([(ext_id << 4) | (len(value) - 1)]) + value for ext_id, value in elements if ext_id)
    if not body:
        return b""
    body += b"\0" * (-len(body) % 4)
    return struct.pack("!HH", 0xBEDE, len(body) // 4) + body


@dataclass(slots=True)
class RawStream:
    """One published stream of a RawPublisher: what its RTP headers carry."""

    ssrc: int
    payload_type: int
    mid_ext: int
    mid: bytes
    level_ext: int = 0
    sequence: int = field(default_factory=lambda: random.getrandbits(16))
    timestamp: int = field(default_factory=lambda: random.getrandbits(32))
    packets: int = 0


# The RIDs a simulcast publisher's layers carry, low to high (the server's offer asks for these).
LAYER_RIDS = ("q", "h", "f")


class VideoLayer:
    """One published video stream of a RawPublisher (the only one, or one simulcast layer): its
    clip packetised once, its position in the loop, its VP8 picture ids and its NACK history."""

    __slots__ = ("elements", "ext", "frames", "history", "keyframes", "picture_id", "position", "stream")

    def __init__(self, stream: RawStream, clip: EncodedClip, elements: list[tuple[int, bytes]]) -> None:
        self.stream = stream
        self.frames = [vp8_chunks(frame) for frame in clip.video]
        self.keyframes = clip.keyframes
        self.position = 0
        self.picture_id = random.getrandbits(15)
        # mid (and RID, on every packet: libwebrtc sends it until the server's reports show it
        # knows the SSRC; always is the simple form of that) and, per packet, transport-cc.
        self.elements = elements
        self.ext = extension_block(elements)
        self.history: list[bytes | None] = [None] * HISTORY_SIZE  # packets by sequence number


class RawPublisher:
    """Publishes an endpoint's pre-encoded clip as ready-made RTP: packetised once, each packet's
    header written with ``struct``, protected and sent by the leg's ``LegOutput`` in one call.

    aiortc's sender path (a task per track, the packetiser, per-packet coroutines, SRTP and aioice's
    send) costs ~60 us a packet; this costs a fifth of it. aiortc's senders stay in place with a
    track that never yields (they keep the SSRC, the mid and RTCP); a keyframe request (PLI/FIR)
    restarts the clip at its keyframe as an encoder would make one."""

    def __init__(
        self,
        clip: EncodedClip,
        output: Any,  # aiortc_glue.LegOutput
        video: RawStream | None,
        audio: RawStream | None,
        speaking: bool = False,
        transport_cc: int = 0,
        simulcast: list[tuple[RawStream, EncodedClip]] | None = None,
        rid_ext: int = 0,
    ) -> None:
        """``simulcast``: instead of ``video``, one (stream, clip) per layer, low to high, each
        packet marked with its layer's RID (extension ``rid_ext``) as a browser marks them."""
        self.clip = clip
        # Transport-wide sequence numbers (the extension's id; 0: none), one counter over every
        # stream of the leg, as a browser's sender numbers its packets for the server's feedback.
        self.transport_cc = transport_cc
        self.transport_sequence = random.getrandbits(16)
        self.output = output
        self.audio = audio
        self.speaking = speaking
        self.audio_position = 0
        self.video_step = VIDEO_CLOCK // clip.params.fps
        self.video_every = max(1, round(1 / clip.params.fps / AUDIO_TICK_S))  # 2 ticks at 25 fps
        if simulcast:
            self.layers = [
                VideoLayer(stream, layer_clip, [(stream.mid_ext, stream.mid), (rid_ext, rid.encode())])
                for (stream, layer_clip), rid in zip(simulcast, LAYER_RIDS, strict=False)
            ]
        elif video is not None:
            self.layers = [VideoLayer(video, clip, [(video.mid_ext, video.mid)])]
        else:
            self.layers = []
        self._by_ssrc = {layer.stream.ssrc: layer for layer in self.layers}
        self.video = self.layers[-1].stream if self.layers else None
        # The audio extension block per level (speaking or silent), built once, not per packet
        # (with transport-cc each packet's block carries its own number: built per packet).
        self.audio_elements = (
            {
                level: [(audio.mid_ext, audio.mid), (audio.level_ext, bytes([level]))]
                for level in (SPEAKING_LEVEL, SILENT_LEVEL)
            }
            if audio
            else {}
        )
        self.audio_ext = {level: extension_block(e) for level, e in self.audio_elements.items()}
        self.retransmissions = 0
        self.tick_count = 0
        self.frames_sent = 0
        self.keyframes_sent = 0
        self.keyframe_requests = 0
        self.audio_frames_sent = 0
        self.running = False
        self._handle: asyncio.TimerHandle | None = None
        self._next = 0.0

    def _numbered(self, elements: list[tuple[int, bytes]]) -> bytes:
        """An extension block of ``elements`` plus the next transport-wide sequence number."""
        number = self.transport_sequence
        self.transport_sequence = (number + 1) & 0xFFFF
        return extension_block([*elements, (self.transport_cc, number.to_bytes(2, "big"))])

    @property
    def level(self) -> int:
        return SPEAKING_LEVEL if self.speaking else SILENT_LEVEL

    def request_keyframe(self, ssrc: int | None = None) -> None:
        """A PLI/FIR: the layer it names (every layer when ``ssrc`` is None) restarts at its
        keyframe, as an encoder makes one for that encoding only."""
        self.keyframe_requests += 1
        for layer in self.layers:
            if ssrc is None or layer.stream.ssrc == ssrc:
                layer.position = 0

    def retransmit(self, sequence: int, ssrc: int | None = None) -> None:
        """A NACK from the server: resend the video packet if it is still in the history (as a
        browser without RTX does, on the same SSRC and sequence number)."""
        layer = self._by_ssrc.get(ssrc) if ssrc is not None else (self.layers[-1] if self.layers else None)
        if layer is None:
            return
        packet = layer.history[sequence % HISTORY_SIZE]
        if packet is not None and (packet[2] << 8 | packet[3]) == sequence and self.output.send(packet):
            self.retransmissions += 1

    def start(self) -> None:
        if self.running:
            return
        self.running = True
        loop = asyncio.get_running_loop()
        # Publishers of one load process start at different phases, as real ones would.
        self._next = loop.time() + random.uniform(0, AUDIO_TICK_S)
        self._handle = loop.call_at(self._next, self._tick)

    def pause(self) -> None:
        self.running = False
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        if not self.running:
            return
        loop = asyncio.get_running_loop()
        self._next += AUDIO_TICK_S
        now = loop.time()
        if self._next < now - 0.2:  # descheduled for long: do not burst to catch up
            self._next = now + AUDIO_TICK_S
        self._handle = loop.call_at(self._next, self._tick)
        if self.audio is not None:
            self._send_audio(self.audio)
        if self.layers and self.tick_count % self.video_every == 0:
            sent = False
            for layer in self.layers:
                sent = self._send_video(layer) or sent
            if sent:
                self.frames_sent += 1  # one camera frame, in every layer
        self.tick_count += 1

    def _send_audio(self, stream: RawStream) -> None:
        frames = self.clip.tone if self.speaking else self.clip.silence
        i = self.audio_position
        self.audio_position = (i + 1) % len(frames)
        ext = (
            self._numbered(self.audio_elements[self.level])
            if self.transport_cc
            else self.audio_ext[self.level]
        )
        head = _RTP_HEADER.pack(
            0x90 if ext else 0x80, stream.payload_type, stream.sequence, stream.timestamp, stream.ssrc
        )
        if self.output.send(head + ext + frames[i]):
            stream.packets += 1
            self.audio_frames_sent += 1
        stream.sequence = (stream.sequence + 1) & 0xFFFF
        stream.timestamp = (stream.timestamp + AUDIO_FRAME_SAMPLES) & 0xFFFFFFFF

    def _send_video(self, layer: VideoLayer) -> bool:
        stream = layer.stream
        i = layer.position
        layer.position = (i + 1) % len(layer.frames)
        chunks = layer.frames[i]
        pid = layer.picture_id
        layer.picture_id = (pid + 1) & 0x7FFF
        ext = layer.ext
        first = 0x90 if ext else 0x80
        send = self.output.send
        history = layer.history
        last = len(chunks) - 1
        sent = False
        for n, chunk in enumerate(chunks):
            head = _RTP_HEADER.pack(
                first,
                stream.payload_type | (0x80 if n == last else 0),
                stream.sequence,
                stream.timestamp,
                stream.ssrc,
            )
            # RFC 7741 descriptor: X, S on the frame's first packet, PID 0; I; 15-bit picture id.
            descriptor = bytes((0x90 if n == 0 else 0x80, 0x80, 0x80 | (pid >> 8), pid & 0xFF))
            if self.transport_cc:
                ext = self._numbered(layer.elements)
            packet = head + ext + descriptor + chunk
            history[stream.sequence % HISTORY_SIZE] = packet
            if send(packet):
                stream.packets += 1
                sent = True
            stream.sequence = (stream.sequence + 1) & 0xFFFF
        stream.timestamp = (stream.timestamp + self.video_step) & 0xFFFFFFFF
        if sent:
            self.keyframes_sent += layer.keyframes[i]
        return sent
