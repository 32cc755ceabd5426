"""The clip player on its own, with a clip transcoded here: packets paced by their timestamps,
audio and video on one clock (so the sender reports derived from them agree), numbering that runs
on across pause and seek, a seek that starts at a keyframe, and keyframe requests answered by the
next keyframe when it is near or by restarting at the last one."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from clip_util import make_film

from conference.clip_file import PreparedClip
from conference.clip_player import AUDIO_PT, VIDEO_PT, ClipPlayer
from conference.sfu.packet import parse_header
from conference.sfu.payload import vp8_descriptor, vp8_is_keyframe
from recorder.clips import transcode


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PreparedClip]:
    directory = tmp_path_factory.mktemp("clip")
    make_film(directory / "film.mp4", seconds=4)
    transcode(directory / "film.mp4", directory)
    clip = PreparedClip.load(directory / "packets.bin")
    yield clip
    clip.close()


class Sent:
    """The player's output: every packet, with when it was sent (monotonic)."""

    def __init__(self) -> None:
        self.packets: list[tuple[float, bytes]] = []

    def __call__(self, data: bytes) -> bool:
        self.packets.append((time.monotonic(), data))
        return True

    def of(self, payload_type: int, since: float = 0.0) -> list[tuple[float, object, bytes]]:
        out = []
        for at, data in self.packets:
            header = parse_header(data)
            assert header is not None
            if header.payload_type == payload_type and at >= since:
                out.append((at, header, data[header.payload_offset : header.payload_end]))
        return out


def frame_starts(video: list[tuple[float, object, bytes]]) -> list[tuple[float, int, bool, int]]:
    """(sent at, RTP timestamp, keyframe, picture id) of each frame's first packet."""
    out = []
    for at, header, payload in video:
        descriptor = vp8_descriptor(payload)
        if descriptor.start and descriptor.partition_id == 0:
            out.append((at, header.timestamp, vp8_is_keyframe(payload), descriptor.picture_id))
    return out


async def test_packets_are_paced_on_one_clock_and_numbered_on_across_pause_and_seek(prepared) -> None:
    sent = Sent()
    player = ClipPlayer(prepared, sent)
    started = time.monotonic()
    player.play()
    await asyncio.sleep(1.5)
    player.pause()
    paused_at = time.monotonic()
    count = len(sent.packets)
    await asyncio.sleep(0.5)
    assert len(sent.packets) == count, "nothing is sent while paused"
    player.seek(3.0)
    player.play()
    await asyncio.sleep(0.6)
    player.stop()

    video, audio = sent.of(VIDEO_PT), sent.of(AUDIO_PT)
    for packets in (video, audio):
        sequences = [h.sequence for _, h, _ in packets]
        assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(sequences))
    # Paced: the first run sent as much audio (20 ms frames) as it played, not a burst (a loaded
    # machine may oversleep; what counts is the time that really passed).
    first_run = [p for p in audio if p[0] < paused_at]
    assert abs(len(first_run) - (paused_at - started) / 0.02) <= 4, (len(first_run), paused_at - started)
    # Audio and video timestamps follow the wall clock from one origin: a packet's timestamp, read
    # in seconds from the stream's first, matches when it was sent (within a frame's pacing).
    for packets, clock in ((video, 90_000), (audio, 48_000)):
        t0, h0, _ = packets[0]
        for at, header, _ in packets:
            media = ((header.timestamp - h0.timestamp) & 0xFFFFFFFF) / clock
            # Never early (a packet goes at its time, give or take the 10 ms tick); late only by
            # the loop's scheduling on a loaded machine.
            assert -0.03 < (at - t0) - media < 0.3, (clock, media, at - t0)
    assert abs(video[0][0] - audio[0][0]) < 0.05
    # After the seek the video starts at the keyframe of second 3, its picture ids running on.
    starts = frame_starts(video)
    resumed = [s for s in starts if s[0] > paused_at]
    assert resumed[0][2], "the seek starts at a keyframe"
    before = [s for s in starts if s[0] < paused_at]
    assert resumed[0][3] == (before[-1][3] + 1) & 0x7FFF
    assert player.position_s == 0.0 and not player.playing


async def within_second(player: ClipPlayer, low: float, high: float) -> float:
    """Wait until the clip is between ``low`` and ``high`` into one of its seconds (keyframes come
    every second); a loaded machine that jumps past the window catches the next one."""
    deadline = time.monotonic() + 10
    while True:
        position = player.position_s
        if low <= position % 1.0 < high and position < player.clip.duration_s - 1:
            return position
        assert time.monotonic() < deadline, position
        await asyncio.sleep(0.005)


async def test_a_keyframe_request_gets_the_next_keyframe_or_a_restart_at_the_last(prepared) -> None:
    sent = Sent()
    player = ClipPlayer(prepared, sent)
    player.play()
    # Just started: the first keyframe is the next packet, nothing to do.
    player.keyframe_wanted()
    assert player.keyframe_restarts == 0
    # The next keyframe under half a second away: it is waited for.
    await within_second(player, 0.6, 0.95)
    player.keyframe_wanted()
    assert player.keyframe_restarts == 0
    # Further: the clip restarts at the last keyframe (the second's start).
    position = await within_second(player, 0.15, 0.4)
    asked = time.monotonic()
    player.keyframe_wanted()
    assert player.keyframe_restarts == 1
    assert player.position_s == pytest.approx(float(int(position)), abs=0.05), position
    await asyncio.sleep(0.3)
    player.stop()
    after = frame_starts(sent.of(VIDEO_PT, since=asked))
    assert after and after[0][2], "the first frame after the request is a keyframe"
    # The restart does not take the timestamps back: they go on with the wall clock.
    stamps = [s[1] for s in frame_starts(sent.of(VIDEO_PT))]
    assert all(((b - a) & 0xFFFFFFFF) < 0x80000000 for a, b in itertools.pairwise(stamps))


def test_a_damaged_prepared_file_is_refused(tmp_path: Path, prepared) -> None:
    from conference.clip_file import ClipFileError

    bad = tmp_path / "packets.bin"
    bad.write_bytes(b"PCL1\x00\x00\x00\x02{}" + b"\x01\x03\x00\x00\x00\x00\xff\xff")
    with pytest.raises(ClipFileError):
        PreparedClip.load(bad)
    bad.write_bytes(b"not a clip at all")
    with pytest.raises(ClipFileError):
        PreparedClip.load(bad)
