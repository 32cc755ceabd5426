"""The clip player ("VCR"): a prepared clip (``conference.clip_file``) played into a meeting as
ready-made RTP through the in-process transport, paced by the clip's own timestamps. No encoder
runs: each packet is a header (``struct``), for video a 4-byte VP8 descriptor, and the stored payload.

RTP timestamps follow the wall clock from the first play (a pause or a seek does not make them jump
back), audio and video from one origin, so the sender reports the media core derives from what it
forwards (timestamp and time of the last packet) agree between the two and lip sync holds. Sequence
numbers and VP8 picture ids run on across pauses and seeks. Play and seek start at a keyframe; a
keyframe request (a new screen, a loss) is answered by the next keyframe when it is due within half a
second, else by restarting at the last one (the clip steps back less than half a second).
"""

from __future__ import annotations

import asyncio
import random
import struct
from collections.abc import Callable

from .clip_file import AUDIO, AUDIO_CLOCK, FRAME_END, FRAME_START, VIDEO, VIDEO_CLOCK, PreparedClip

_RTP_HEADER = struct.Struct("!BBHII")
AUDIO_LEVEL_EXT = 1  # the header extension id of the audio level in the clip's audio packets
# RFC 8285 one-byte block with the audio level (RFC 6464) element, per level: built once.
_LEVEL_BLOCKS = [struct.pack("!HHBBH", 0xBEDE, 1, AUDIO_LEVEL_EXT << 4, level, 0) for level in range(128)]
TICK_S = 0.01  # how often due packets go out: video frames land within 10 ms of their time
KEYFRAME_WAIT_S = 0.5
VIDEO_PT, AUDIO_PT = 96, 111


class ClipPlayer:
    """Plays ``clip`` through ``send`` (a direct transport's). ``on_end`` is called when the clip
    has played to its end (the picture then holds, as after a pause)."""

    def __init__(
        self,
        clip: PreparedClip,
        send: Callable[[bytes], bool],
        on_end: Callable[[], None] | None = None,
        video_pt: int = VIDEO_PT,
        audio_pt: int = AUDIO_PT,
    ) -> None:
        self.clip = clip
        self.send = send
        self.on_end = on_end
        self.payload_types = (video_pt, audio_pt)
        self.ssrcs = (random.getrandbits(32), random.getrandbits(32))
        self.sequences = [random.getrandbits(16), random.getrandbits(16)]
        self.rtp_base = (random.getrandbits(32), random.getrandbits(32))
        self.picture_id = random.getrandbits(15)
        self.record = 0  # the next record to send
        self.playing = False
        self.packets_sent = 0
        self.keyframe_restarts = 0
        self._origin: float | None = None  # loop time of the first play: RTP time zero
        self._segment_wall = 0.0  # loop time when the current run started
        self._segment_clip = 0.0  # clip time at that moment
        self._position = 0.0  # clip time while paused
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- control -------------------------------------------------------------------------------

    @property
    def position_s(self) -> float:
        """Where the clip is (seconds from its start)."""
        if not self.playing or self._loop is None:
            return self._position
        return min(self.clip.duration_s, self._segment_clip + self._loop.time() - self._segment_wall)

    @property
    def remaining_s(self) -> float:
        return max(0.0, self.clip.duration_s - self.position_s)

    def play(self) -> None:
        """Start, or go on after a pause, at the keyframe at or before the position."""
        if self.playing:
            return
        loop = self._loop = asyncio.get_running_loop()
        now = loop.time()
        if self._origin is None:
            self._origin = now
        if self._position >= self.clip.duration_s:
            self._position = 0.0  # played to the end: play again from the start
        self._start_at(self.clip.keyframe_at_or_before(self._position), now)
        self.playing = True
        self._handle = loop.call_soon(self._tick)

    def pause(self) -> None:
        """Stop sending: every screen holds the last picture."""
        if not self.playing:
            return
        self._position = self.position_s
        self.playing = False
        self._cancel()

    def seek(self, at_s: float) -> None:
        """Go to ``at_s`` (from the keyframe at or before it), playing or paused as before."""
        at_s = min(max(0.0, at_s), self.clip.duration_s)
        if self.playing and self._loop is not None:
            record = self.clip.keyframe_at_or_before(at_s)
            self._start_at(record, self._loop.time())
        else:
            self._position = at_s

    def stop(self) -> None:
        self.pause()
        self._position = 0.0
        self.record = 0

    def keyframe_wanted(self) -> None:
        """A subscriber needs a keyframe: the next if it is near, else the last one again."""
        if not self.playing or self._loop is None:
            return
        clip = self.clip
        upcoming = clip.next_keyframe_after(self.record - 1)
        now = self.position_s
        if upcoming is not None and clip.times[upcoming] - now <= KEYFRAME_WAIT_S:
            return
        self.keyframe_restarts += 1
        self._start_at(clip.keyframe_at_or_before(now), self._loop.time())

    # --- pacing --------------------------------------------------------------------------------

    def _start_at(self, record: int, now: float) -> None:
        self.record = record
        self._segment_wall = now
        self._segment_clip = self.clip.times[record]
        self._position = self._segment_clip

    def _cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        loop = self._loop
        if not self.playing or loop is None:
            return
        now = loop.time()
        clip = self.clip
        times, kinds, flags, timestamps = clip.times, clip.kinds, clip.flags, clip.timestamps
        levels = clip.levels
        due = self._segment_clip + now - self._segment_wall
        # RTP time zero is the first play; a run started at clip time c at wall time w sends clip
        # time t at RTP time (w - origin) + (t - c).
        shift = self._segment_wall - (self._origin or now) - self._segment_clip
        i, end = self.record, len(times)
        send, pack = self.send, _RTP_HEADER.pack
        while i < end and times[i] <= due:
            kind = kinds[i]
            flag = flags[i]
            clock = VIDEO_CLOCK if kind == VIDEO else AUDIO_CLOCK
            rtp_time = (self.rtp_base[kind] + timestamps[i] + round(shift * clock)) & 0xFFFFFFFF
            sequence = self.sequences[kind]
            self.sequences[kind] = (sequence + 1) & 0xFFFF
            if kind == VIDEO:
                marker = 0x80 if flag & FRAME_END else 0
                pid = self.picture_id
                start = flag & FRAME_START
                # RFC 7741 descriptor: X, S on a frame's first packet, PID 0; I; 15-bit picture id.
                descriptor = bytes((0x90 if start else 0x80, 0x80, 0x80 | (pid >> 8), pid & 0xFF))
                if flag & FRAME_END:
                    self.picture_id = (pid + 1) & 0x7FFF
                head = pack(0x80, self.payload_types[VIDEO] | marker, sequence, rtp_time, self.ssrcs[VIDEO])
                packet = head + descriptor + clip.payload(i)
            else:
                head = pack(0x90, self.payload_types[AUDIO], sequence, rtp_time, self.ssrcs[AUDIO])
                packet = head + _LEVEL_BLOCKS[levels[i]] + clip.payload(i)
            if send(packet):
                self.packets_sent += 1
            i += 1
        self.record = i
        if i >= end:
            self._position = clip.duration_s
            self.playing = False
            self._handle = None
            if self.on_end is not None:
                self.on_end()
            return
        # Wake for the next packet's time, at most a tick away (a seek may come meanwhile).
        wait = min(TICK_S, max(0.0, times[i] - due))
        self._handle = loop.call_at(now + wait, self._tick)


__all__ = ["AUDIO", "VIDEO", "ClipPlayer"]
