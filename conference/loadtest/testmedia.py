"""Pre-encoded media for test endpoints and the load generator.

Each test endpoint publishes a short loop of VP8 video and Opus audio that was encoded once with
PyAV and cached on disk, so publishing costs no encoding CPU at run time: the tracks return
``av.Packet`` objects, which aiortc's ``RTCRtpSender`` only packetises (``encoder.pack``), never
re-encodes.

The video of endpoint ``index`` is a solid colour that encodes the index in its Y, U and V levels,
above a band of scrolling noise that makes the encoder spend a realistic bitrate (~500 kbit/s at
640x360, 25 fps). A subscriber that decodes a frame reads the chroma back with
:func:`identify_frame` and so knows whose feed it is looking at.

Keyframes: the loop starts with the only keyframe (every ``loop_frames / fps`` seconds, 2.4 s by
default). When a keyframe is requested (PLI/FIR reaching the endpoint's sender), the video track
jumps back to the start of the loop, so the very next frame it sends is a keyframe. Switch and join
times therefore measure the server, not a keyframe interval.

Audio: 20 ms Opus frames of a tone whose pitch depends on the index while the endpoint "speaks",
and of silence otherwise; the track reports an RFC 6464 level for each frame (-dBov, 127 = silence)
which the endpoint puts in the audio-level header extension, as browsers do.
"""

from __future__ import annotations

import asyncio
import fractions
import hashlib
import os
import struct
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

VIDEO_CLOCK = 90_000
AUDIO_RATE = 48_000
AUDIO_FRAME_SAMPLES = 960  # 20 ms
SPEAKING_LEVEL = 30  # -30 dBov: a normal voice
SILENT_LEVEL = 127

# Colour code: index -> (Y, U, V) levels, 6 per plane, 28 apart. Under CBR pressure libvpx lets a flat
# area drift by up to ~7 levels between frames, so the codes must be far apart.
_CODE_BASE = 44
_CODE_STEP = 28
_CODES = 6
MAX_INDEX = _CODES**3 - 1
# Rows at the bottom of the picture filled with scrolling noise (keeps the encoder busy).
_NOISE_ROWS = 104

_MAGIC = b"TMC1"


@dataclass(frozen=True, slots=True)
class MediaParams:
    width: int = 640
    height: int = 360
    fps: int = 25
    video_bitrate: int = 500_000
    loop_frames: int = 60  # 2.4 s at 25 fps, starting with the loop's only keyframe
    audio_frames: int = 50  # 1 s of Opus
    audio_bitrate: int = 32_000

    def cache_key(self, index: int) -> str:
        digest = hashlib.sha1(repr(sorted(asdict(self).items())).encode()).hexdigest()[:12]
        return f"clip-{digest}-{index:03d}.bin"


@dataclass(slots=True)
class EncodedClip:
    """One endpoint's media: VP8 frames (the first is the keyframe) and Opus frames."""

    index: int
    params: MediaParams
    video: list[bytes]
    keyframes: list[bool]
    tone: list[bytes]
    silence: list[bytes]

    @property
    def video_bitrate(self) -> float:
        return sum(map(len, self.video)) * 8 * self.params.fps / len(self.video)


def colour_for(index: int) -> tuple[int, int, int]:
    """The (Y, U, V) levels of endpoint ``index``'s video."""
    if not 0 <= index <= MAX_INDEX:
        raise ValueError(f"endpoint index {index} out of range 0..{MAX_INDEX}")
    digits = (index % _CODES, (index // _CODES) % _CODES, index // (_CODES * _CODES))
    return tuple(_CODE_BASE + _CODE_STEP * d for d in digits)  # type: ignore[return-value]


def identify_frame(frame: av.VideoFrame) -> int | None:
    """The endpoint index a decoded test frame shows, or None if it is not a test frame."""
    if frame.format.name != "yuv420p":
        frame = frame.reformat(format="yuv420p")
    index = 0
    for weight, plane in zip((1, _CODES, _CODES * _CODES), frame.planes, strict=True):
        arr = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
        # A block well inside the solid top part, away from the noise band.
        block = arr[plane.height // 8 : plane.height // 3, plane.width // 8 : plane.width // 3]
        code = (float(block.mean()) - _CODE_BASE) / _CODE_STEP
        nearest = round(code)
        if abs(code - nearest) > 0.4 or not 0 <= nearest < _CODES:
            return None
        index += weight * nearest
    return index


def _video_frame(index: int, n: int, params: MediaParams, noise: np.ndarray) -> av.VideoFrame:
    w, h = params.width, params.height
    y_val, u_val, v_val = colour_for(index)
    y = np.full((h, w), y_val, np.uint8)
    rows = min(_NOISE_ROWS, h // 3)
    offset = (n * 7) % (noise.shape[0] - rows)
    y[h - rows :, :] = noise[offset : offset + rows, :w]
    frame = av.VideoFrame(w, h, "yuv420p")
    for plane, value in zip(frame.planes, (y, u_val, v_val), strict=True):
        data = np.full((plane.height, plane.line_size), value, np.uint8) if isinstance(value, int) else None
        if data is None:
            data = np.zeros((plane.height, plane.line_size), np.uint8)
            data[:, :w] = value
        plane.update(data.tobytes())
    frame.pts = n
    return frame


def _encode_video(index: int, params: MediaParams) -> tuple[list[bytes], list[bool]]:
    rng = np.random.default_rng(index)
    # Low-contrast noise: enough detail to cost bits, not so much that keyframes get huge.
    noise = (rng.integers(0, 256, (params.height * 2, params.width), dtype=np.uint8) // 3 + 90).astype(
        np.uint8
    )
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height = params.width, params.height
    codec.pix_fmt = "yuv420p"
    codec.time_base = fractions.Fraction(1, params.fps)
    codec.framerate = params.fps
    codec.bit_rate = params.video_bitrate
    codec.gop_size = params.loop_frames  # one keyframe, at the start of the loop
    rate = str(params.video_bitrate)
    codec.options = {
        "deadline": "realtime",
        "cpu-used": "8",
        "lag-in-frames": "0",
        "minrate": rate,
        "maxrate": rate,
        "bufsize": rate,
        "undershoot-pct": "95",
        "overshoot-pct": "15",
    }
    frames: list[bytes] = []
    keys: list[bool] = []
    for n in range(params.loop_frames):
        for packet in codec.encode(_video_frame(index, n, params, noise)):
            frames.append(bytes(packet))
            keys.append(bool(packet.is_keyframe))
    for packet in codec.encode(None):
        frames.append(bytes(packet))
        keys.append(bool(packet.is_keyframe))
    if not frames or not keys[0]:
        raise RuntimeError("libvpx did not start the loop with a keyframe")
    return frames, keys


def _encode_audio(index: int, params: MediaParams, silent: bool) -> list[bytes]:
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = AUDIO_RATE
    codec.layout = "stereo"
    codec.format = "s16"
    codec.bit_rate = params.audio_bitrate
    codec.time_base = fractions.Fraction(1, AUDIO_RATE)
    codec.options = {"application": "voip"}
    # Pitch per endpoint, a whole number of cycles per 20 ms so the loop joins without a click.
    freq = 250 + 50 * (index % 20)
    out: list[bytes] = []
    total = params.audio_frames + 4  # the encoder delays its first frames; keep exactly audio_frames
    t = np.arange(AUDIO_FRAME_SAMPLES) / AUDIO_RATE
    wave = np.zeros_like(t) if silent else 0.1 * np.sin(2 * np.pi * freq * t)
    pcm = (wave * 32767).astype(np.int16)
    stereo = np.ascontiguousarray(np.repeat(pcm, 2).reshape(1, -1))
    for n in range(total):
        frame = av.AudioFrame.from_ndarray(stereo, format="s16", layout="stereo")
        frame.sample_rate = AUDIO_RATE
        frame.pts = n * AUDIO_FRAME_SAMPLES
        out.extend(bytes(p) for p in codec.encode(frame))
    out.extend(bytes(p) for p in codec.encode(None))
    return out[-params.audio_frames :]


def _write_clip(path: Path, clip: EncodedClip) -> None:
    chunks = [_MAGIC, struct.pack("!III", len(clip.video), len(clip.tone), len(clip.silence))]
    for data, key in zip(clip.video, clip.keyframes, strict=True):
        chunks.append(struct.pack("!BI", int(key), len(data)))
        chunks.append(data)
    for data in (*clip.tone, *clip.silence):
        chunks.append(struct.pack("!I", len(data)))
        chunks.append(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Several worker processes may build the same clip: write aside, then rename atomically.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".clip-")
    with os.fdopen(fd, "wb") as f:
        f.write(b"".join(chunks))
    os.replace(tmp, path)


def _read_clip(path: Path, index: int, params: MediaParams) -> EncodedClip | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    if raw[:4] != _MAGIC:
        return None
    n_video, n_tone, n_silence = struct.unpack_from("!III", raw, 4)
    pos = 16
    video, keys = [], []
    for _ in range(n_video):
        key, length = struct.unpack_from("!BI", raw, pos)
        pos += 5
        video.append(raw[pos : pos + length])
        keys.append(bool(key))
        pos += length
    audio = []
    for _ in range(n_tone + n_silence):
        (length,) = struct.unpack_from("!I", raw, pos)
        pos += 4
        audio.append(raw[pos : pos + length])
        pos += length
    if pos != len(raw):
        return None  # truncated or foreign: rebuild
    return EncodedClip(index, params, video, keys, audio[:n_tone], audio[n_tone:])


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "conference-testmedia"


# Simulcast layers of a camera, low to high, as Chromium makes them: a quarter, half and all of the
# camera's width and height (the top layer is the camera's own clip), at about the bitrate share
# libwebrtc gives 160x90 / 320x180 / 640x360 layers (~50 / ~150 / ~500 kbit/s).
SIMULCAST_SCALES = ((4, 0.1), (2, 0.3), (1, 1.0))


def layer_params(params: MediaParams) -> list[MediaParams]:
    """The MediaParams of each simulcast layer of ``params``, low to high (the last is ``params``)."""
    layers = []
    for divisor, share in SIMULCAST_SCALES:
        if divisor == 1:
            layers.append(params)
            continue
        # VP8 needs even sizes; the colour code needs a few rows above the noise band.
        width = max(16, params.width // divisor // 2 * 2)
        height = max(16, params.height // divisor // 2 * 2)
        layers.append(
            replace(params, width=width, height=height, video_bitrate=int(params.video_bitrate * share))
        )
    return layers


def load_layers(
    index: int, params: MediaParams | None = None, cache_dir: Path | None = None
) -> list[EncodedClip]:
    """The endpoint's clip for each simulcast layer, low to high, each encoded once and cached like
    :func:`load_clip` (the top one is ``load_clip(index, params)``)."""
    return [load_clip(index, p, cache_dir) for p in layer_params(params or MediaParams())]


def load_clip(index: int, params: MediaParams | None = None, cache_dir: Path | None = None) -> EncodedClip:
    """The endpoint's pre-encoded media, encoded on first use and cached under ``cache_dir``."""
    params = params or MediaParams()
    colour_for(index)  # validates the index
    path = (cache_dir or default_cache_dir()) / params.cache_key(index)
    clip = _read_clip(path, index, params)
    if clip is None:
        video, keys = _encode_video(index, params)
        clip = EncodedClip(
            index,
            params,
            video,
            keys,
            _encode_audio(index, params, silent=False),
            _encode_audio(index, params, silent=True),
        )
        _write_clip(path, clip)
    return clip


class _Pacer:
    """Real-time pacing for one track; after a long stall it resynchronises instead of bursting."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.start: float | None = None
        self.count = 0

    def reset(self) -> None:
        self.start, self.count = None, 0

    async def wait(self) -> None:
        now = time.monotonic()
        if self.start is None:
            self.start = now
        due = self.start + self.count * self.interval
        if now - due > 0.5:
            self.start, self.count, due = now, 0, now
        self.count += 1
        if due > now:
            await asyncio.sleep(due - now)


class _PausableTrack(MediaStreamTrack):
    """A track the load generator can pause (sends nothing) to let in-flight packets drain."""

    _pacer: _Pacer

    def __init__(self) -> None:
        super().__init__()
        self._running = asyncio.Event()
        self._running.set()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    async def _ready(self) -> None:
        if self.readyState != "live":
            raise MediaStreamError
        if not self._running.is_set():
            await self._running.wait()
            self._pacer.reset()  # start afresh, no burst to catch up
        await self._pacer.wait()


class PreEncodedVideoTrack(_PausableTrack):
    """Loops the clip's VP8 frames in real time as ``av.Packet`` (aiortc packetises, never encodes)."""

    kind = "video"

    def __init__(self, clip: EncodedClip) -> None:
        super().__init__()
        self.clip = clip
        self._pacer = _Pacer(1 / clip.params.fps)
        self._time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self._step = VIDEO_CLOCK // clip.params.fps
        self._position = 0
        self._pts = 0
        self.frames_sent = 0
        self.keyframes_sent = 0
        self.keyframe_requests = 0

    def request_keyframe(self) -> None:
        """Make the next frame a keyframe: restart the loop at its keyframe."""
        self.keyframe_requests += 1
        self._position = 0

    async def recv(self) -> av.Packet:
        await self._ready()
        clip = self.clip
        i = self._position
        self._position = (i + 1) % len(clip.video)
        packet = av.Packet(clip.video[i])
        packet.pts = self._pts
        packet.time_base = self._time_base
        self._pts += self._step
        self.frames_sent += 1
        self.keyframes_sent += clip.keyframes[i]
        return packet


class PreEncodedAudioTrack(_PausableTrack):
    """Loops the clip's Opus frames in real time; ``speaking`` picks tone or silence."""

    kind = "audio"

    def __init__(self, clip: EncodedClip, speaking: bool = False) -> None:
        super().__init__()
        self.clip = clip
        self.speaking = speaking
        self.level = SILENT_LEVEL  # RFC 6464 level of the frame returned last
        self._pacer = _Pacer(AUDIO_FRAME_SAMPLES / AUDIO_RATE)
        self._time_base = fractions.Fraction(1, AUDIO_RATE)
        self._position = 0
        self._pts = 0
        self.frames_sent = 0

    async def recv(self) -> av.Packet:
        await self._ready()
        frames = self.clip.tone if self.speaking else self.clip.silence
        self.level = SPEAKING_LEVEL if self.speaking else SILENT_LEVEL
        i = self._position
        self._position = (i + 1) % len(frames)
        packet = av.Packet(frames[i])
        packet.pts = self._pts
        packet.time_base = self._time_base
        self._pts += AUDIO_FRAME_SAMPLES
        self.frames_sent += 1
        return packet
