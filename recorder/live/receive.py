"""The live compositor's receive side: one ``VideoSlot`` per program slot and one ``AudioSlot`` per
speaker slot of its plain-RTP transport (``conference.sfu.plain``), fed the datagrams of one UDP
socket on the loopback.

Video packets are gathered per frame (one RTP timestamp), frames are decoded in sequence order and
only once complete; a hole in the sequence numbers is NACKed at once (the server answers from its
packet cache), and a frame that stays missing makes the slot wait for the next keyframe, which it
asks for with a PLI. Audio is decoded to 48 kHz mono as it arrives and read out through a small
playout buffer, so a late packet neither stalls the mix nor piles up latency.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

import av
import numpy as np

from conference.sfu.packet import RtpHeader
from conference.sfu.payload import annexb_is_keyframe, h264_annexb, vp8_payload
from conference.sfu.rtcp import rtcp_nack, rtcp_pli

from ..compose import AUDIO_RATE, mono

log = logging.getLogger(__name__)

SEQ = 0xFFFF
# A frame with a packet missing this long is given up: the slot waits for a keyframe.
FRAME_WAIT_S = 0.3
PLI_INTERVAL_S = 1.0
# A slot that decoded nothing for this long shows the participant's name card.
STALE_VIDEO_S = 3.0
# Audio playout: start once this much is buffered, trim back to it when more than MAX piles up.
AUDIO_START = AUDIO_RATE * 60 // 1000
AUDIO_MAX = AUDIO_RATE * 250 // 1000

Send = Callable[[bytes], None]


def _newer(a: int, b: int) -> bool:
    """Sequence number ``a`` comes after ``b`` (mod 2^16)."""
    return a != b and ((a - b) & SEQ) < 0x8000


class _Frame:
    __slots__ = ("end", "first_arrival", "packets", "start")

    def __init__(self, now: float) -> None:
        self.packets: dict[int, bytes] = {}
        self.start: int | None = None  # sequence number of the frame's first packet
        self.end: int | None = None  # of its last (marker bit)
        self.first_arrival = now

    def complete(self) -> bool:
        if self.start is None or self.end is None:
            return False
        return len(self.packets) == ((self.end - self.start) & SEQ) + 1


class VideoSlot:
    """One program slot of the transport: reassembles, decodes, keeps the latest picture."""

    def __init__(self, index: int, ssrc: int, codecs: dict[int, str], send: Send, our_ssrc: int) -> None:
        self.index = index
        self.ssrc = ssrc
        self.codecs = codecs  # payload type -> "vp8" / "h264"
        self._send = send
        self._our_ssrc = our_ssrc
        self._frames: dict[int, _Frame] = {}  # by RTP timestamp
        self._highest: int | None = None
        self._last_end: int | None = None  # sequence number the last decoded frame ended on
        self._waiting_keyframe = True
        self._last_pli = 0.0
        self._decoder: av.CodecContext | None = None
        self._codec = ""
        self.picture: av.VideoFrame | None = None
        self.picture_serial = 0
        self.picture_at = 0.0
        self.frames_decoded = 0
        self.nacks_sent = 0
        self.plis_sent = 0

    def request_keyframe(self, now: float, force: bool = False) -> None:
        if force or now - self._last_pli >= PLI_INTERVAL_S:
            self._last_pli = now
            self.plis_sent += 1
            self._send(rtcp_pli(self._our_ssrc, self.ssrc))

    def current(self, now: float) -> av.VideoFrame | None:
        if self.picture is None or now - self.picture_at > STALE_VIDEO_S:
            return None
        return self.picture

    def packet(self, data: bytes, header: RtpHeader, now: float) -> None:
        seq = header.sequence
        if self._highest is None:
            self._highest = seq
        elif _newer(seq, self._highest):
            gap = (seq - self._highest) & SEQ
            if 1 < gap <= 64:
                lost = [(self._highest + i) & SEQ for i in range(1, gap)]
                self.nacks_sent += 1
                self._send(rtcp_nack(self._our_ssrc, self.ssrc, lost[:48]))
            self._highest = seq
        if self._last_end is not None and not _newer(seq, self._last_end):
            return  # a duplicate or a retransmission we no longer need
        payload = data[header.payload_offset : header.payload_end]
        frame = self._frames.get(header.timestamp)
        if frame is None:
            frame = self._frames[header.timestamp] = _Frame(now)
        codec = self.codecs.get(header.payload_type)
        if codec is None:
            return
        if not payload:  # padding between frames: it only uses up a sequence number
            frame.start = frame.end = seq
            frame.packets[seq] = b""
        else:
            try:
                if codec == "vp8":
                    descriptor, body = vp8_payload(payload)
                    first = descriptor.start and descriptor.partition_id == 0
                else:
                    first, body = h264_annexb(payload)
            except ValueError:
                return
            frame.packets[seq] = body
            if first and (frame.start is None or _newer(frame.start, seq)):
                frame.start = seq
            if header.marker:
                frame.end = seq
        self._codec_for(codec)
        self._drain(now)

    def _codec_for(self, codec: str) -> None:
        if codec != self._codec:
            self._codec = codec
            self._decoder = av.CodecContext.create(codec, "r")
            self._decoder.thread_count = 1
            self._waiting_keyframe = True

    def _drain(self, now: float) -> None:
        """Decode every complete frame that follows the last decoded one; give up stale holes."""
        while True:
            ready = [(ts, f) for ts, f in self._frames.items() if f.complete()]
            if not ready:
                break
            nxt = None
            for ts, f in ready:
                assert f.start is not None
                if self._last_end is None or f.start == (self._last_end + 1) & SEQ:
                    nxt = (ts, f)
                    break
            if nxt is None:
                # A hole before every complete frame: wait for the retransmission a while, then
                # restart at a keyframe (decoding across the hole would smear the picture).
                oldest = min(f.first_arrival for _, f in ready)
                if now - oldest < FRAME_WAIT_S:
                    break
                ready.sort(key=lambda item: item[1].first_arrival)
                ts, f = ready[0]
                self._waiting_keyframe = True
                self.request_keyframe(now)
                nxt = (ts, f)
            ts, f = nxt
            del self._frames[ts]
            self._last_end = f.end
            self._decode(f, now)
        # Frames that never completed (their first packet lost for good) are dropped after a while.
        for ts in [ts for ts, f in self._frames.items() if now - f.first_arrival > 2.0]:
            del self._frames[ts]

    def _decode(self, frame: _Frame, now: float) -> None:
        assert frame.start is not None and frame.end is not None
        parts = [frame.packets[(frame.start + i) & SEQ] for i in range(((frame.end - frame.start) & SEQ) + 1)]
        data = b"".join(parts)
        if not data or self._decoder is None:
            return
        key = (data[0] & 0x01) == 0 if self._codec == "vp8" else annexb_is_keyframe(data)
        if self._waiting_keyframe and not key:
            self.request_keyframe(now)
            return
        try:
            pictures = self._decoder.decode(av.Packet(data))
        except av.FFmpegError as exc:
            log.debug("slot %d: undecodable frame (%s)", self.index, exc)
            self._waiting_keyframe = True
            self.request_keyframe(now)
            return
        self._waiting_keyframe = False
        if pictures:
            self.picture = pictures[-1]
            self.picture_serial += 1
            self.picture_at = now
            self.frames_decoded += len(pictures)


class AudioSlot:
    """One speaker slot: Opus decoded on arrival into a playout buffer of mono samples."""

    def __init__(self, index: int, ssrc: int) -> None:
        self.index = index
        self.ssrc = ssrc
        self._decoder = av.CodecContext.create("libopus", "r")
        self._decoder.sample_rate = AUDIO_RATE
        self._decoder.layout = "mono"
        self._chunks: deque[np.ndarray] = deque()
        self._buffered = 0
        self._playing = False
        self._recent: deque[int] = deque(maxlen=64)
        self.packets = 0

    def packet(self, data: bytes, header: RtpHeader) -> None:
        if header.sequence in self._recent:
            return  # a retransmission or duplicate
        self._recent.append(header.sequence)
        payload = data[header.payload_offset : header.payload_end]
        if not payload:
            return
        try:
            frames = self._decoder.decode(av.Packet(payload))
        except av.FFmpegError:
            return
        self.packets += 1
        for frame in frames:
            samples = mono(frame)
            self._chunks.append(samples)
            self._buffered += samples.shape[0]
        if self._buffered > AUDIO_MAX:
            self._trim(AUDIO_START)

    def _trim(self, keep: int) -> None:
        while self._chunks and self._buffered - self._chunks[0].shape[0] >= keep:
            self._buffered -= self._chunks.popleft().shape[0]

    def read(self, count: int) -> np.ndarray | None:
        """The next ``count`` samples, or None while the slot is silent (nothing buffered)."""
        if not self._playing:
            if self._buffered < AUDIO_START:
                return None
            self._playing = True
        out = np.zeros(count, dtype=np.float32)
        filled = 0
        while filled < count and self._chunks:
            chunk = self._chunks[0]
            take = min(count - filled, chunk.shape[0])
            out[filled : filled + take] = chunk[:take]
            filled += take
            if take == chunk.shape[0]:
                self._chunks.popleft()
            else:
                self._chunks[0] = chunk[take:]
            self._buffered -= take
        if filled < count:
            self._playing = False  # ran dry: build the buffer up again before playing on
        return out
