"""Real aiortc endpoints for the SFU tests (no signaling): each publishes a solid-colour VP8 camera
and an Opus tone of its own pitch, receives the server's slots, and decodes what arrives so a test
can tell whose feed fills which slot (by colour) and whose voice (by pitch)."""

from __future__ import annotations

import asyncio
import fractions
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcconfiguration import RTCBundlePolicy

from conference.media import SessionOptions
from conference.roles import Role
from conference.room import Participant, join
from conference.sfu import SfuBackend
from conference.sfu import aiortc_glue as glue
from conference.store import MemoryRoomStore

WIDTH, HEIGHT, FPS = 160, 96, 10
SAMPLE_RATE, FRAME_SAMPLES = 48_000, 960

# Colours far apart in RGB so a VP8 round trip cannot confuse them.
COLOURS: list[tuple[int, int, int]] = [
    (230, 30, 30),
    (30, 200, 30),
    (30, 30, 230),
    (230, 230, 30),
    (30, 220, 220),
    (220, 30, 220),
    (240, 240, 240),
    (20, 20, 20),
    (240, 140, 20),
    (120, 60, 180),
]
TONES = [400 + 150 * i for i in range(10)]  # Hz


class ColourTrack(MediaStreamTrack):
    """A camera showing one solid colour."""

    kind = "video"

    def __init__(self, colour: tuple[int, int, int]) -> None:
        super().__init__()
        self.colour = colour
        self._frame = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
        self._frame[:, :] = colour
        self._start: float | None = None
        self._count = 0

    async def recv(self) -> av.VideoFrame:
        if self._start is None:
            self._start = time.monotonic()
        self._count += 1
        wait = self._start + self._count / FPS - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        frame = av.VideoFrame.from_ndarray(self._frame, format="rgb24")
        frame.pts = self._count * (90_000 // FPS)
        frame.time_base = fractions.Fraction(1, 90_000)
        return frame


class KeyframeTrack(MediaStreamTrack):
    """A camera showing one solid colour as one pre-encoded VP8 keyframe, repeated: no encoding at
    run time (aiortc's sender only packetises an av.Packet), so many endpoints fit in one process."""

    kind = "video"

    def __init__(self, colour: tuple[int, int, int]) -> None:
        super().__init__()
        codec = av.CodecContext.create("libvpx", "w")
        codec.width, codec.height, codec.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        codec.time_base = fractions.Fraction(1, 90_000)
        image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
        image[:, :] = colour
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
        frame.pts = 0
        encoded = [*codec.encode(frame), *codec.encode(None)]
        self._keyframe = bytes(encoded[0])
        self._start: float | None = None
        self._count = 0

    async def recv(self) -> av.Packet:
        if self._start is None:
            self._start = time.monotonic()
        self._count += 1
        wait = self._start + self._count / FPS - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        packet = av.Packet(self._keyframe)
        packet.pts = self._count * (90_000 // FPS)
        packet.time_base = fractions.Fraction(1, 90_000)
        return packet


class ToneTrack(MediaStreamTrack):
    """A microphone playing a sine tone (or silence while ``speaking`` is False)."""

    kind = "audio"

    def __init__(self, frequency: float, speaking: bool = True) -> None:
        super().__init__()
        self.frequency = frequency
        self.speaking = speaking
        self._start: float | None = None
        self._count = 0

    async def recv(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._count * FRAME_SAMPLES / SAMPLE_RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        t = (np.arange(FRAME_SAMPLES) + self._count * FRAME_SAMPLES) / SAMPLE_RATE
        amplitude = 8000 if self.speaking else 0
        samples = (amplitude * np.sin(2 * np.pi * self.frequency * t)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._count * FRAME_SAMPLES
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self._count += 1
        return frame


def nearest_colour(rgb: tuple[float, float, float]) -> int:
    distances = [sum((a - b) ** 2 for a, b in zip(rgb, c, strict=True)) for c in COLOURS]
    return int(np.argmin(distances))


class Received:
    """What one receive slot of an endpoint has decoded."""

    def __init__(self, mid: str, kind: str) -> None:
        self.mid = mid
        self.kind = kind
        self.frames = 0
        self.colours: deque[int] = deque(maxlen=50)  # video: nearest colour index per frame
        self.samples: deque[np.ndarray] = deque(maxlen=15)  # audio: the last 300 ms
        self.last_at = 0.0
        self.sizes: set[tuple[int, int]] = set()

    @property
    def colour(self) -> int | None:
        return self.colours[-1] if self.colours else None

    def pitch(self) -> float | None:
        """Dominant frequency of the last 300 ms, None when silent."""
        if not self.samples:
            return None
        signal = np.concatenate(list(self.samples)).astype(np.float64)
        if np.abs(signal).max() < 500:
            return None
        spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal))))
        return float(np.argmax(spectrum) * SAMPLE_RATE / len(signal))


class Endpoint:
    """A participant's browser stand-in: one aiortc peer connection to the SFU."""

    def __init__(
        self,
        identity: str,
        index: int,
        *,
        publish: bool = True,
        speaking: bool = False,
        keyframes_only: bool = False,
        video_codec: str | None = None,
    ):
        self.identity = identity
        self.video_codec = video_codec
        self.index = index
        self.publish = publish
        # max-bundle: with aiortc's default (balanced) policy, the 2nd and later video m-lines of an
        # offer stay on a transport that BUNDLE then stops, and never receive.
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
        colour = COLOURS[index % len(COLOURS)]
        self.video_track: MediaStreamTrack = KeyframeTrack(colour) if keyframes_only else ColourTrack(colour)
        self.audio_track = ToneTrack(TONES[index % len(TONES)], speaking=speaking)
        self.received: dict[str, Received] = {}
        self.slots: dict[str, Any] = {}
        self.messages: list[dict[str, Any]] = []
        self._readers: list[asyncio.Task[None]] = []
        self.session: Any = None

    async def connect(self, session: Any, wait_receivers: bool = True) -> None:
        self.session = session
        offer = await session.create_offer()
        self.slots = offer["slots"]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
        publish = self.slots.get("publish", {})
        for transceiver in self.pc.getTransceivers():
            if self.publish and transceiver.mid == publish.get("video"):
                transceiver.sender.replaceTrack(self.video_track)
                transceiver.direction = "sendonly"
                if self.video_codec:
                    # What a browser that prefers this codec answers (setCodecPreferences would
                    # only apply to aiortc's next offer, not to this answer).
                    wanted = f"video/{self.video_codec}"
                    transceiver._codecs = [c for c in transceiver._codecs if c.mimeType == wanted]
            elif self.publish and transceiver.mid == publish.get("audio"):
                transceiver.sender.replaceTrack(self.audio_track)
                transceiver.direction = "sendonly"
            elif transceiver.receiver.track is not None:
                received = Received(transceiver.mid, transceiver.kind)
                self.received[transceiver.mid] = received
                self._readers.append(asyncio.create_task(self._read(transceiver.receiver.track, received)))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        # Read every queued datagram per wakeup: a busy test process must not drop media.
        glue.drain_udp_reads(self.pc)
        await session.set_answer(self.pc.localDescription.sdp)
        # aiortc starts its receivers one by one after DTLS connects; packets for a receiver not
        # started yet are dropped, so a slot's first keyframe could be lost: wait for all of them.
        if wait_receivers:
            await self.receivers_started()

    async def receivers_started(self) -> None:
        receivers = [t.receiver for t in self.pc.getTransceivers() if t.mid in self.received]
        start = time.monotonic()
        while not all(getattr(r, "_RTCRtpReceiver__started", True) for r in receivers):
            if time.monotonic() - start > 20:
                raise AssertionError(f"{self.identity}: receivers did not start")
            await asyncio.sleep(0.05)

    async def _read(self, track: MediaStreamTrack, received: Received) -> None:
        try:
            while True:
                frame = await track.recv()
                received.frames += 1
                received.last_at = time.monotonic()
                if received.kind == "video":
                    received.sizes.add((frame.width, frame.height))
                    rgb = frame.to_ndarray(format="rgb24")
                    centre = rgb[
                        rgb.shape[0] // 4 : 3 * rgb.shape[0] // 4, rgb.shape[1] // 4 : 3 * rgb.shape[1] // 4
                    ]
                    received.colours.append(nearest_colour(tuple(centre.reshape(-1, 3).mean(axis=0))))
                else:
                    # Packed s16: keep the first channel only.
                    channels = len(frame.layout.channels)
                    received.samples.append(frame.to_ndarray().reshape(-1)[::channels])
        except (MediaStreamError, asyncio.CancelledError):
            pass

    def decoder_threads(self) -> set[int]:
        """Thread ids of this endpoint's decoders (to tell its decode errors from others')."""
        out = set()
        for transceiver in self.pc.getTransceivers():
            thread = getattr(transceiver.receiver, "_RTCRtpReceiver__decoder_thread", None)
            if thread is not None and thread.ident is not None:
                out.add(thread.ident)
        return out

    def video(self, i: int) -> Received:
        return self.received[self.slots["video"][i]]

    def audio_slots(self) -> list[Received]:
        return [self.received[mid] for mid in self.slots["audio"]]

    def heard(self, max_age: float = 0.3) -> set[int]:
        """Indices of the endpoints whose tone is heard in any audio slot right now."""
        out = set()
        for received in self.audio_slots():
            if time.monotonic() - received.last_at > max_age:
                continue
            pitch = received.pitch()
            if pitch is None:
                continue
            nearest = int(np.argmin([abs(pitch - t) for t in TONES]))
            if abs(TONES[nearest] - pitch) < 40:
                out.add(nearest)
        return out

    async def close(self) -> None:
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        await self.pc.close()


class Meeting:
    """A room in a MemoryRoomStore with the SFU listening to its events."""

    def __init__(
        self, max_endpoints: int = 12, max_previews: int | None = 12, send_side_bwe: bool = False
    ) -> None:
        self.store = MemoryRoomStore()
        self.backend = SfuBackend(max_previews=max_previews, send_side_bwe=send_side_bwe)
        self.messages: list[tuple[str, str | None, dict[str, Any]]] = []
        self.backend.set_emitter(lambda room, who, msg: self.messages.append((room, who, msg)))
        self.store.subscribe(self.backend.room_changed)
        self.max_endpoints = max_endpoints
        self.room = "hall"
        self.endpoints: dict[str, Endpoint] = {}

    async def start(self) -> None:
        await self.store.create(self.room, max_endpoints=self.max_endpoints)

    async def command(self, command: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        await self.store.update(self.room, lambda s: command(s, *args, **kwargs))

    async def add(
        self,
        identity: str,
        index: int,
        *,
        role: Role = Role.VENUE,
        video_slots: int = 9,
        audio_slots: int = 3,
        previews: bool = False,
        publish: bool = True,
        speaking: bool = False,
        video_codec: str | None = None,
    ) -> Endpoint:
        participant = Participant(identity, identity, role, publish_audio=publish, publish_video=publish)
        state, _ = await self.store.update(self.room, lambda s: join(s, participant))
        options = SessionOptions(
            publish_audio=publish,
            publish_video=publish,
            video_slots=video_slots,
            audio_slots=audio_slots,
            previews=previews,
        )
        session = await self.backend.open_session(self.room, identity, options, state)
        endpoint = Endpoint(identity, index, publish=publish, speaking=speaking, video_codec=video_codec)
        await endpoint.connect(session)
        self.endpoints[identity] = endpoint
        return endpoint

    async def add_in_pool(
        self,
        pool: EndpointPool,
        identity: str,
        index: int,
        *,
        role: Role = Role.VENUE,
        video_slots: int = 9,
        audio_slots: int = 3,
        previews: bool = False,
        speaking: bool = False,
    ) -> dict[str, Any]:
        """Join an endpoint that runs in ``pool``'s process; returns the offer's slots."""
        participant = Participant(identity, identity, role, publish_audio=True, publish_video=True)
        state, _ = await self.store.update(self.room, lambda s: join(s, participant))
        options = SessionOptions(video_slots=video_slots, audio_slots=audio_slots, previews=previews)
        session = await self.backend.open_session(self.room, identity, options, state)
        offer = await session.create_offer()
        answer = await pool.call("answer", identity, index, speaking, True, offer)
        await session.set_answer(answer)
        return offer["slots"]

    def decoder_threads(self) -> set[int]:
        return {ident for e in self.endpoints.values() for ident in e.decoder_threads()}

    def slot_messages(self, identity: str) -> list[dict[str, Any]]:
        return [m for _, who, m in self.messages if who == identity and m["type"] == "slots"]

    async def close(self) -> None:
        for endpoint in self.endpoints.values():
            await endpoint.close()
        await self.backend.close()


async def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll until ``predicate()``; returns the seconds it took, fails the test on timeout."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


# --- endpoints in a separate process -----------------------------------------------------------
#
# Ten endpoints encode, decode and packetise in threads that compete for the GIL with the event
# loop; in the server's process that starves the forwarding loop (asyncio reads one datagram per
# socket per loop iteration, so a slow loop drops packets in the kernel). A pool runs the endpoints
# in a child process so the test measures the server, not the clients' CPU.


class _Offered:
    """Stands in for a media session inside the pool: replays the offer, keeps the answer."""

    def __init__(self, offer: dict[str, Any]) -> None:
        self.offer = offer
        self.answer: str | None = None

    async def create_offer(self) -> dict[str, Any]:
        return self.offer

    async def set_answer(self, sdp: str) -> None:
        self.answer = sdp


def _observe(endpoint: Endpoint) -> dict[str, Any]:
    return {
        "slots": endpoint.slots,
        "received": {
            mid: {"colour": r.colour, "frames": r.frames, "kind": r.kind}
            for mid, r in endpoint.received.items()
        },
        # A loaded pool process paces its microphones unevenly: judge over the last 2 s.
        "heard": sorted(endpoint.heard(max_age=2.0)),
    }


async def _pool_serve(conn: Any) -> None:
    loop = asyncio.get_running_loop()
    endpoints: dict[str, Endpoint] = {}
    while True:
        command, *args = await loop.run_in_executor(None, conn.recv)
        try:
            if command == "answer":
                identity, index, speaking, publish, offer = args
                endpoint = Endpoint(identity, index, publish=publish, speaking=speaking, keyframes_only=True)
                session = _Offered(offer)
                # The server applies the answer after this returns: cannot wait for receivers here.
                await endpoint.connect(session, wait_receivers=False)
                endpoints[identity] = endpoint
                conn.send(("ok", session.answer))
            elif command == "observe":
                conn.send(("ok", {identity: _observe(e) for identity, e in endpoints.items()}))
            elif command == "speaking":
                identity, speaking = args
                endpoints[identity].audio_track.speaking = speaking
                conn.send(("ok", None))
            elif command == "close":
                await asyncio.gather(*(e.close() for e in endpoints.values()), return_exceptions=True)
                conn.send(("ok", None))
                return
            else:
                conn.send(("error", f"unknown command {command}"))
        except Exception as exc:  # reported to the test, which fails with it
            conn.send(("error", repr(exc)))


def _pool_main(conn: Any) -> None:
    import sys

    # Many decoder threads per process: hand the GIL over more often so the event loop (which
    # paces the microphones) is not starved between decodes.
    sys.setswitchinterval(0.0005)
    asyncio.run(_pool_serve(conn))


class EndpointPool:
    """Endpoints in a child process, driven over a pipe."""

    def __init__(self) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_pool_main, args=(child,), daemon=True)
        self._process.start()
        self._lock = asyncio.Lock()

    async def call(self, *message: Any, timeout: float = 60) -> Any:
        loop = asyncio.get_running_loop()
        async with self._lock:
            self._conn.send(message)
            if not await loop.run_in_executor(None, self._conn.poll, timeout):
                raise AssertionError(f"endpoint pool did not answer {message[0]!r} in {timeout} s")
            status, result = self._conn.recv()
        if status != "ok":
            raise AssertionError(f"endpoint pool failed {message[0]!r}: {result}")
        return result

    async def close(self) -> None:
        if self._process.is_alive():
            try:
                await self.call("close", timeout=30)
            finally:
                self._process.join(5)
                if self._process.is_alive():
                    self._process.kill()
                    self._process.join(5)
