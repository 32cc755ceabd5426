"""Audio codecs of a telephone call: G.711 (PCMU, PCMA; ITU-T G.711 by lookup table), Opus (libopus
through PyAV), and the 8 kHz <-> 48 kHz resampling between the caller's codec and the gateway's
internal 48 kHz mono, 20 ms frames (the room's Opus rate).
"""

from __future__ import annotations

from typing import Protocol

import av
import numpy as np

RATE = 48000
FRAME = 960  # 20 ms at 48 kHz: the gateway's frame everywhere
Pcm = np.ndarray  # int16, mono, FRAME samples


def _ulaw_tables() -> tuple[np.ndarray, np.ndarray]:
    codes = np.arange(256, dtype=np.int32)
    u = ~codes & 0xFF
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    decode = np.where(u & 0x80, -magnitude, magnitude).astype(np.int16)
    # Encoding as the reference (Sun's g711.c, 14-bit magnitude, bias 0x21, clip 8159).
    samples = np.arange(-32768, 32768, dtype=np.int32) >> 2
    mask = np.where(samples < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(samples), 8159) + 0x21
    seg = np.searchsorted(np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF]), mag)
    uval = np.where(seg >= 8, 0x7F, (np.minimum(seg, 7) << 4) | ((mag >> (seg + 1)) & 0x0F))
    encode = ((uval ^ mask) & 0xFF).astype(np.uint8)
    return decode, encode


def _alaw_tables() -> tuple[np.ndarray, np.ndarray]:
    codes = np.arange(256, dtype=np.int32) ^ 0x55
    t = (codes & 0x0F) << 4
    seg = (codes & 0x70) >> 4
    t = np.where(seg == 0, t + 8, t + 0x108)
    t = np.where(seg > 1, t << np.maximum(seg - 1, 0), t)
    decode = np.where(codes & 0x80, t, -t).astype(np.int16)
    samples = np.arange(-32768, 32768, dtype=np.int32) >> 3
    mask = np.where(samples >= 0, 0xD5, 0x55)
    pcm = np.where(samples >= 0, samples, -samples - 1)
    seg_end = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])
    segment = np.searchsorted(seg_end, pcm)  # first segment whose end >= pcm
    shift = np.where(segment < 2, 1, segment)
    aval = np.where(segment >= 8, 0x7F, (np.minimum(segment, 7) << 4) | ((pcm >> shift) & 0x0F))
    encode = ((aval ^ mask) & 0xFF).astype(np.uint8)
    return decode, encode


ULAW_DECODE, ULAW_ENCODE = _ulaw_tables()
ALAW_DECODE, ALAW_ENCODE = _alaw_tables()


def _lowpass(taps: int, cutoff: float) -> np.ndarray:
    """Windowed-sinc low-pass at ``cutoff`` (a fraction of the 48 kHz rate), unity DC gain."""
    n = np.arange(taps) - (taps - 1) / 2
    h = np.sinc(2 * cutoff * n) * np.blackman(taps)
    return (h / h.sum()).astype(np.float32)


# 3.6 kHz at 48 kHz: the telephone band, and below 4 kHz so 8 kHz decimation does not alias.
_TAPS = _lowpass(120, 3600 / RATE)
_REVERSED = _TAPS[::-1].copy()
# Polyphase form of the same filter for 1:6 interpolation: phase p uses taps p, p+6, ...
_PHASES = (_TAPS.reshape(-1, 6).T[:, ::-1] * 6).T.copy()  # (20, 6)
_window = np.lib.stride_tricks.sliding_window_view


class Resampler:
    """Exact 6:1 rate change (polyphase: only the samples kept are computed) with a carried
    filter history, so 20 ms in is 20 ms out."""

    def __init__(self) -> None:
        self._hist48 = np.zeros(len(_TAPS) - 1, dtype=np.float32)
        self._hist8 = np.zeros(_PHASES.shape[0] - 1, dtype=np.float32)

    def down(self, pcm48: Pcm) -> np.ndarray:
        """48 kHz int16 -> 8 kHz int16."""
        joined = np.concatenate((self._hist48, pcm48.astype(np.float32)))
        self._hist48 = joined[-(len(_TAPS) - 1) :]
        out = np.ascontiguousarray(_window(joined, len(_TAPS))[5::6]) @ _REVERSED
        return np.clip(out, -32768, 32767).astype(np.int16)

    def up(self, pcm8: np.ndarray) -> Pcm:
        """8 kHz int16 -> 48 kHz int16."""
        joined = np.concatenate((self._hist8, pcm8.astype(np.float32)))
        self._hist8 = joined[-(_PHASES.shape[0] - 1) :]
        out = (_window(joined, _PHASES.shape[0]) @ _PHASES).reshape(-1)
        return np.clip(out, -32768, 32767).astype(np.int16)


class CallCodec(Protocol):
    """The caller's codec seen from the gateway: payloads in, 48 kHz frames out, and back."""

    name: str
    clock_rate: int
    samples_per_packet: int  # RTP timestamp step of one 20 ms packet

    def decode(self, payload: bytes) -> Pcm: ...

    def encode(self, pcm: Pcm) -> bytes: ...


class G711:
    clock_rate = 8000
    samples_per_packet = 160

    def __init__(self, name: str) -> None:
        self.name = name
        alaw = name == "pcma"
        self._decode_table = ALAW_DECODE if alaw else ULAW_DECODE
        self._encode_table = ALAW_ENCODE if alaw else ULAW_ENCODE
        self._up = Resampler()
        self._down = Resampler()

    def decode_narrow(self, payload: bytes) -> np.ndarray:
        return self._decode_table[np.frombuffer(payload, dtype=np.uint8)]

    def decode(self, payload: bytes) -> Pcm:
        return self._up.up(self.decode_narrow(payload))

    def encode(self, pcm: Pcm) -> bytes:
        narrow = self._down.down(pcm)
        return self._encode_table[narrow.astype(np.int32) + 32768].tobytes()


class OpusEncoder:
    """libopus at 48 kHz mono, 20 ms frames, voice-tuned."""

    def __init__(self, bitrate: int = 32000) -> None:
        self._ctx = av.CodecContext.create("libopus", "w")
        self._ctx.sample_rate = RATE
        self._ctx.layout = "mono"
        self._ctx.format = "s16"
        self._ctx.bit_rate = bitrate
        self._ctx.options = {"application": "voip", "frame_duration": "20"}
        self._pts = 0

    def encode(self, pcm: Pcm) -> bytes:
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._pts
        self._pts += len(pcm)
        return b"".join(bytes(p) for p in self._ctx.encode(frame))


class OpusDecoder:
    def __init__(self) -> None:
        self._ctx = av.CodecContext.create("libopus", "r")
        self._ctx.sample_rate = RATE
        self._ctx.layout = "mono"

    def decode(self, payload: bytes) -> Pcm:
        out: list[np.ndarray] = []
        for frame in self._ctx.decode(av.Packet(payload)):
            data = frame.to_ndarray()
            if data.dtype != np.int16:  # libopus decodes to float (fltp) or s16 depending on build
                data = np.clip(data * 32767, -32768, 32767).astype(np.int16)
            out.append(data.reshape(-1) if data.shape[0] == 1 else data.mean(axis=0).astype(np.int16))
        pcm = np.concatenate(out) if out else np.zeros(0, dtype=np.int16)
        if len(pcm) < FRAME:
            pcm = np.concatenate((pcm, np.zeros(FRAME - len(pcm), dtype=np.int16)))
        return pcm[:FRAME]


class Opus:
    name = "opus"
    clock_rate = 48000
    samples_per_packet = FRAME

    def __init__(self) -> None:
        self._decoder = OpusDecoder()
        self._encoder = OpusEncoder()

    def decode(self, payload: bytes) -> Pcm:
        return self._decoder.decode(payload)

    def encode(self, pcm: Pcm) -> bytes:
        return self._encoder.encode(pcm)


def call_codec(name: str) -> CallCodec:
    if name in ("pcmu", "pcma"):
        return G711(name)
    if name == "opus":
        return Opus()
    raise ValueError(f"unsupported codec {name!r}")
