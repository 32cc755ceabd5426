"""Synthetic meetings for tests and render benchmarks, written through the real archive writer.

Each participant sends a solid-colour VP8 picture and a sine tone in Opus, encoded and packetised
by aiortc's own encoders into real RTP packets, with arrival times on a synthetic clock; the
timeline holds the same events the room commands produce.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.opus import OpusEncoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.rtp import RtpPacket

from recorder.archive import RecordingWriter, make_private_dir, recording_dir

VIDEO_PT, AUDIO_PT = 96, 111


@dataclass(slots=True)
class Speaker:
    identity: str
    name: str
    colour: tuple[int, int, int]  # RGB
    tone_hz: float | None = 440.0
    role: str = "venue"
    video: bool = True
    joins_at: float = 0.0
    leaves_at: float | None = None
    codec: str = "VP8"  # or "H264", as Safari publishes


@dataclass(slots=True)
class Script:
    """What happens in the synthetic meeting, in seconds from the start of the recording."""

    people: list[Speaker]
    duration: float
    programs: list[tuple[float, str, list[str | None]]] = field(default_factory=list)
    floors: list[tuple[float, str | None]] = field(default_factory=list)
    mutes: list[tuple[float, str, bool]] = field(default_factory=list)
    speakers: list[tuple[float, list[str]]] = field(default_factory=list)
    fps: int = 15
    size: tuple[int, int] = (320, 180)
    keyframe_interval: float = 1.0
    first_program: tuple[str, list[str | None]] = ("single", [None])
    # Add moving noise to the lower quarter of each picture (for render benchmarks).
    textured: bool = False
    # Any other room events, as the room's reducer takes them: (seconds, event without "at").
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)


def _participant_json(p: Speaker, at: float) -> dict[str, Any]:
    return {
        "identity": p.identity,
        "name": p.name,
        "role": p.role,
        "device": "venue",
        "publish_audio": p.tone_hz is not None,
        "publish_video": p.video,
        "muted": False,
        "self_muted": False,
        "unmute_requested": False,
        "hand_raised_at": None,
        "connected": True,
        "joined_at": at,
    }


def _colour_frame(rgb: tuple[int, int, int], size: tuple[int, int]) -> av.VideoFrame:
    arr = np.empty((size[1], size[0], 3), dtype=np.uint8)
    arr[:] = rgb
    return av.VideoFrame.from_ndarray(arr, format="rgb24").reformat(format="yuv420p")


def _textured_frame(base: av.VideoFrame, noise: np.ndarray, n: int) -> av.VideoFrame:
    """The colour with a moving band of low-contrast noise in its bottom quarter: costs bits like a
    camera picture does, while the upper part stays a solid colour to recognise."""
    planes = [np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width] for p in base.planes]
    y = planes[0].copy()
    rows = y.shape[0] // 4
    offset = (n * 7) % (noise.shape[0] - rows)
    y[-rows:] = noise[offset : offset + rows, : y.shape[1]]
    frame = av.VideoFrame(base.width, base.height, "yuv420p")
    for plane, source in zip(frame.planes, (y, planes[1], planes[2]), strict=True):
        np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width] = source
    return frame


class _Sender:
    def __init__(self, writer: RecordingWriter, person: Speaker, number: int, script: Script) -> None:
        self.person = person
        self.script = script
        self.video = None
        self.audio = None
        if person.video:
            self.video = writer.open_track(
                person.identity, "video", person.codec, 90000, VIDEO_PT, 1000 + number, {}
            )
            self.encoder = H264Encoder() if person.codec == "H264" else Vp8Encoder()
            self.picture = _colour_frame(person.colour, script.size)
            rng = np.random.default_rng(number)
            noise = rng.integers(0, 256, (script.size[1], script.size[0]), dtype=np.uint8)
            self.noise = (noise // 3 + 90).astype(np.uint8)
            self.vseq = 0
            self.frames = 0
            self.next_frame = person.joins_at
        if person.tone_hz is not None:
            self.audio = writer.open_track(
                person.identity, "audio", "opus", 48000, AUDIO_PT, 2000 + number, {}
            )
            self.opus = OpusEncoder()
            self.aseq = 0
            self.phase = 0


def write_meeting(
    data_dir: str | os.PathLike[str],
    recording_id: str,
    script: Script,
    started_at: float | None = None,
    room: str = "assembly",
    finalise: bool = True,
) -> RecordingWriter:
    """Write ``script`` as recording ``recording_id``; returns the (closed) writer."""
    started_at = time.time() if started_at is None else started_at
    directory = recording_dir(data_dir, recording_id)
    make_private_dir(directory.parent)
    writer = RecordingWriter(directory, recording_id, room, started_at=started_at, flush_interval=60.0)
    layout, slots = script.first_program
    present = [p for p in script.people if p.joins_at <= 0]
    writer.add_entry(
        {
            "kind": "snapshot",
            "at": started_at,
            "state": {
                "room": room,
                "program": {"layout": layout, "slots": slots},
                "participants": [_participant_json(p, started_at) for p in present],
                "floor": None,
            },
        }
    )
    for p in script.people:
        if p.joins_at > 0:
            writer.add_entry(
                {
                    "kind": "participant_joined",
                    "at": started_at + p.joins_at,
                    "participant": _participant_json(p, started_at + p.joins_at),
                }
            )
        if p.leaves_at is not None:
            writer.add_entry(
                {"kind": "participant_left", "at": started_at + p.leaves_at, "identity": p.identity}
            )
    for at, layout, slots in script.programs:
        writer.add_entry(
            {"kind": "program", "at": started_at + at, "program": {"layout": layout, "slots": slots}}
        )
    for at, identity in script.floors:
        writer.add_entry({"kind": "floor", "at": started_at + at, "floor": identity, "floor_queue": []})
    for at, identity, muted in script.mutes:
        writer.add_entry(
            {"kind": "mute", "at": started_at + at, "identity": identity, "muted": muted, "self_muted": False}
        )
    for at, ids in script.speakers:
        writer.speakers(started_at + at, ids)
    for at, event in script.events:
        writer.add_entry({**event, "at": started_at + at})

    senders = [_Sender(writer, p, i, script) for i, p in enumerate(script.people)]
    key_every = max(1, round(script.keyframe_interval * script.fps))
    # Step through the meeting in 20 ms ticks (one Opus frame), sending video when a frame is due,
    # and flush once a second so the track files hold one chunk per second, as a live room would.
    ticks = round(script.duration / 0.02)
    next_flush = 1.0
    for tick in range(ticks):
        t = tick * 0.02
        for i, s in enumerate(senders):
            p = s.person
            if t < p.joins_at or (p.leaves_at is not None and t >= p.leaves_at):
                continue
            if s.video is not None and t + 1e-9 >= s.next_frame:
                n = s.frames
                frame = _textured_frame(s.picture, s.noise, n) if script.textured else s.picture
                frame.pts = round(s.next_frame * 90000)
                frame.time_base = Fraction(1, 90000)
                # aiortc marks a forced keyframe on the frame object itself: clear it, or every later
                # frame of the reused picture would be a keyframe too.
                frame.pict_type = av.video.frame.PictureType.NONE
                payloads, timestamp = s.encoder.encode(frame, force_keyframe=n % key_every == 0)
                # A little deterministic network jitter on the arrival times.
                arrival = started_at + s.next_frame + 0.002 * ((n * 7 + i) % 5)
                for j, payload in enumerate(payloads):
                    packet = RtpPacket(
                        payload_type=VIDEO_PT,
                        marker=int(j == len(payloads) - 1),
                        sequence_number=s.vseq & 0xFFFF,
                        timestamp=timestamp & 0xFFFFFFFF,
                        ssrc=1000 + i,
                        payload=payload,
                    )
                    s.vseq += 1
                    s.video.write(arrival, packet.serialize())
                s.frames += 1
                s.next_frame = p.joins_at + s.frames / script.fps
            if s.audio is not None:
                assert p.tone_hz is not None
                idx = np.arange(960) + s.phase
                s.phase += 960
                wave = (0.3 * 32767 * np.sin(2 * math.pi * p.tone_hz * idx / 48000)).astype(np.int16)
                frame = av.AudioFrame.from_ndarray(
                    np.repeat(wave, 2).reshape(1, -1), format="s16", layout="stereo"
                )
                frame.sample_rate = 48000
                frame.pts = round(t * 48000)
                frame.time_base = Fraction(1, 48000)
                payloads, timestamp = s.opus.encode(frame)
                arrival = started_at + t + 0.001 * ((tick * 3 + i) % 4)
                for payload in payloads:
                    packet = RtpPacket(
                        payload_type=AUDIO_PT,
                        marker=0,
                        sequence_number=s.aseq & 0xFFFF,
                        timestamp=(timestamp + 12345) & 0xFFFFFFFF,
                        ssrc=2000 + i,
                        payload=payload,
                    )
                    s.aseq += 1
                    s.audio.write(arrival, packet.serialize())
        if t + 0.02 >= next_flush:
            writer.flush()
            next_flush += 1.0
    if finalise:
        writer.close(stopped_at=started_at + script.duration)
    else:
        writer.flush()
    return writer


def write_meeting_dir(data_dir: str | os.PathLike[str], recording_id: str, script: Script, **kw: Any) -> Path:
    write_meeting(data_dir, recording_id, script, **kw)
    return recording_dir(data_dir, recording_id)
