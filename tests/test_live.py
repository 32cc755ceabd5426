"""The public live stream end to end with real parts: aiortc venues with solid-colour cameras and
tones, the SFU, the compositor process (``conference live``) on a plain-RTP transport, and its HLS
output read back with PyAV (it decodes, timestamps grow, segments are at most 2.5 s, audio and video
are both there, the picture shows the venue the program shows, the sound is the speaker's tone)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import av
import numpy as np
import pytest
from test_sfu_support import TONES, Meeting, nearest_colour, wait_for

from conference.comments import Comment, show_on_screen
from conference.config import Settings
from conference.room import set_program, set_public, start_broadcast, stop_broadcast
from signaling import broadcast
from signaling.broadcast import Broadcasts, live_dir

pytestmark = pytest.mark.media


def playlist(directory: Path) -> str:
    path = directory / "index.m3u8"
    return path.read_text() if path.exists() else ""


def segments(text: str) -> list[tuple[float, str]]:
    return [(float(d), name) for d, name in re.findall(r"#EXTINF:([\d.]+),\s*\n(\S+)", text)]


def read_segment(path: Path) -> dict:
    """Decode one segment: the centre colour of its last picture, its timestamps, its audio."""
    with av.open(str(path)) as container:
        assert container.streams.video and container.streams.audio, "audio and video both present"
        video_pts, audio = [], []
        last = None
        for frame in container.decode(video=0, audio=0):
            if isinstance(frame, av.VideoFrame):
                video_pts.append(float(frame.pts * frame.time_base))
                last = frame
            else:
                audio.append(frame.to_ndarray().reshape(-1))
    assert last is not None, f"{path.name} has no picture"
    rgb = last.to_ndarray(format="rgb24")
    h, w = rgb.shape[:2]
    centre = rgb[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3].reshape(-1, 3).mean(axis=0)
    samples = np.concatenate(audio) if audio else np.zeros(0)
    bottom = rgb[h - h // 5 :, w // 20 : w - w // 20]
    return {
        "colour": nearest_colour(tuple(centre)),
        "pts": video_pts,
        "audio": samples,
        # The lower third: how much white writing (a comment on screen) and how dark behind it.
        "writing": int((bottom > 200).all(axis=2).sum()),
        "bottom_luma": float(np.median(bottom.mean(axis=2))),
    }


def pitch(samples: np.ndarray, rate: int = 48000) -> float | None:
    if samples.shape[0] < rate // 4 or float(np.sqrt(np.mean(samples**2))) < 0.01:
        return None
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.shape[0])))
    return float(np.argmax(spectrum) * rate / samples.shape[0])


async def newest_segment(directory: Path, after: set[str], timeout: float) -> str:
    names: list[str] = []

    def arrived() -> bool:
        names[:] = [n for _, n in segments(playlist(directory)) if n not in after]
        return bool(names)

    await wait_for(arrived, timeout, "a new segment in the playlist")
    return names[-1]


async def test_the_compositor_streams_the_program_as_hls_and_follows_it(tmp_path: Path) -> None:
    meeting = Meeting()
    await meeting.start()
    settings = Settings(data_dir=tmp_path, room_store="memory", live_size="320x180", live_fps=10)
    broadcasts = Broadcasts(settings, meeting.store, meeting.backend)
    directory = live_dir(settings, meeting.room)
    try:
        await meeting.add("hall-a", 2, speaking=True)
        await meeting.add("hall-b", 4)
        await meeting.command(set_program, "single", ["hall-a"])
        await meeting.command(start_broadcast)
        stream = broadcasts.streams[meeting.room]
        await wait_for(lambda: len(segments(playlist(directory))) >= 3, 40, "three segments")
        text = playlist(directory)
        assert "#EXT-X-INDEPENDENT-SEGMENTS" in text and "#EXT-X-ENDLIST" not in text
        listed = segments(text)
        assert all(d <= 2.5 for d, _ in listed), listed
        last = read_segment(directory / listed[-1][1])
        assert last["colour"] == 2, last["colour"]  # hall-a's blue fills the single slot
        heard = pitch(last["audio"])
        assert heard is not None and abs(heard - TONES[2]) < 40, heard  # and its tone is the sound
        pts = last["pts"]
        assert pts == sorted(pts) and pts[-1] - pts[0] <= 2.5

        # The chair's take: the stream follows within a segment or so.
        seen = {n for _, n in listed}
        await meeting.command(set_program, "single", ["hall-b"])
        taken = time.monotonic()
        colour = None
        while time.monotonic() - taken < 15 and colour != 4:
            name = await newest_segment(directory, seen, 10)
            seen.add(name)
            colour = read_segment(directory / name)["colour"]
        assert colour == 4, "the stream did not follow the program to hall-b"

        # The public's comment on the lower third, until it is taken off.
        comment = Comment(3, meeting.room, "public", "Li", "When will bus line 12 return?", "approved")
        await meeting.command(show_on_screen, comment)
        shown = read_segment(directory / await newest_segment(directory, seen, 10))
        for _ in range(3):
            if shown["writing"] > 50:
                break
            name = await newest_segment(directory, seen, 10)
            seen.add(name)
            shown = read_segment(directory / name)
        assert shown["writing"] > 50 and shown["colour"] == 4, shown["writing"]
        await meeting.command(show_on_screen, None)

        # A compositor that dies comes back on the same playlist, after a discontinuity.
        assert stream.channel is not None
        stream.channel.kill()
        await wait_for(lambda: stream.restarts == 1 and stream.channel is not None, 15, "a restart")
        await wait_for(lambda: "#EXT-X-DISCONTINUITY" in playlist(directory), 30, "the discontinuity")
        name = await newest_segment(directory, {n for _, n in segments(playlist(directory))}, 15)
        assert read_segment(directory / name)["colour"] == 4
        numbers = [int(re.sub(r"\D", "", n)) for _, n in segments(playlist(directory))]
        assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)

        # The stop: the closing slate (no venue colour), then the end of the playlist.
        await meeting.command(stop_broadcast)
        await wait_for(lambda: "#EXT-X-ENDLIST" in playlist(directory), 30, "the end of the playlist")
        await wait_for(lambda: meeting.room not in broadcasts.streams, 10, "the compositor gone")
        final = read_segment(directory / segments(playlist(directory))[-1][1])
        assert final["colour"] not in (2, 4)
        transports = meeting.backend.rooms[meeting.room].transports
        assert "~live" not in transports  # its plain-RTP transport closed with it
    finally:
        await broadcasts.close()
        await meeting.close()


async def test_a_worker_that_cannot_start_does_not_disturb_the_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    meeting = Meeting()
    await meeting.start()
    settings = Settings(data_dir=tmp_path, room_store="memory", live_size="320x180", live_fps=10)
    broadcasts = Broadcasts(settings, meeting.store, meeting.backend)
    monkeypatch.setattr(broadcast, "worker_command", lambda options, directory: ["/bin/false"])
    try:
        viewer = await meeting.add("hall-a", 1)
        await meeting.add("hall-b", 3)
        await meeting.command(set_program, "single", ["hall-b"])
        await meeting.command(start_broadcast)
        stream = broadcasts.streams[meeting.room]
        await wait_for(lambda: stream.restarts >= 1, 15, "the supervisor notices the dead worker")
        await wait_for(lambda: viewer.video(0).colour == 3, 15, "the meeting goes on")
        assert "~live" not in meeting.backend.rooms[meeting.room].transports
    finally:
        await broadcasts.close()
        await meeting.close()


async def test_a_server_restart_resumes_the_broadcast_on_its_playlist(tmp_path: Path) -> None:
    """The process restarts (here: a new Broadcasts on the same store and data directory, as the
    server's start does with the rooms it finds): the broadcast goes on after a discontinuity."""
    meeting = Meeting()
    await meeting.start()
    settings = Settings(data_dir=tmp_path, room_store="memory", live_size="320x180", live_fps=10)
    broadcasts = Broadcasts(settings, meeting.store, meeting.backend)
    directory = live_dir(settings, meeting.room)
    second = None
    try:
        await meeting.add("hall-a", 2)
        await meeting.command(set_program, "single", ["hall-a"])
        await meeting.command(start_broadcast)
        await wait_for(lambda: len(segments(playlist(directory))) >= 2, 40, "two segments")
        await broadcasts.close()  # the server stops: its compositor goes with it
        before = [n for _, n in segments(playlist(directory))]
        second = Broadcasts(settings, meeting.store, meeting.backend)
        await second.restore()
        assert meeting.room in second.streams
        await wait_for(
            lambda: any(n not in before for _, n in segments(playlist(directory))), 40, "a new segment"
        )
        text = playlist(directory)
        assert "#EXT-X-DISCONTINUITY" in text.split(before[-1])[1], text  # between old and new
        name = segments(text)[-1][1]
        assert read_segment(directory / name)["colour"] == 2
    finally:
        if second is not None:
            await second.close()
        await broadcasts.close()
        await meeting.close()


async def test_a_meeting_about_to_begin_streams_its_slate_and_the_broadcast_follows_on(
    tmp_path: Path,
) -> None:
    """A scheduled start and people in the room: the stream shows the slate before the chair starts
    the broadcast; the start turns the same playlist to the program (no new playlist, no gap)."""
    meeting = Meeting()
    await meeting.start()
    settings = Settings(data_dir=tmp_path, room_store="memory", live_size="320x180", live_fps=10)
    broadcasts = Broadcasts(settings, meeting.store, meeting.backend)
    directory = live_dir(settings, meeting.room)
    try:
        await meeting.command(set_public, starts_at=time.time() + 600)
        assert not broadcasts.streams  # nobody there yet
        await meeting.add("hall-a", 2)
        await meeting.command(set_program, "single", ["hall-a"])
        stream = broadcasts.streams[meeting.room]
        assert stream.standby
        await wait_for(lambda: len(segments(playlist(directory))) >= 2, 40, "slate segments")
        slate = segments(playlist(directory))
        assert read_segment(directory / slate[-1][1])["colour"] != 2  # the slate, not the venue
        await meeting.command(start_broadcast)
        assert broadcasts.streams[meeting.room] is stream and not stream.standby
        colour = None
        seen = {n for _, n in slate}
        deadline = time.monotonic() + 20
        while colour != 2 and time.monotonic() < deadline:
            name = await newest_segment(directory, seen, 10)
            seen.add(name)
            colour = read_segment(directory / name)["colour"]
        assert colour == 2, "the broadcast did not follow on from the slate"
        text = playlist(directory)
        number = lambda name: int(re.sub(r"\D", "", name))  # noqa: E731
        # The same playlist went on: numbering continues after the slate's, nothing was restarted.
        assert number(name) > max(number(n) for _, n in slate)
        assert "#EXT-X-DISCONTINUITY" not in text and stream.restarts == 0
    finally:
        await broadcasts.close()
        await meeting.close()


def test_what_the_compositor_is_told_and_when_a_meeting_streams_its_slate() -> None:
    from conference.roles import Role
    from conference.room import Participant, RoomState, join
    from signaling.broadcast import STANDBY_S, program_message, standby_wanted

    state = RoomState(room="council", title="Budget")
    join(state, Participant("hall-a", "第一分会场", Role.VENUE, publish_video=True), now=100.0)
    set_program(state, "pip", ["hall-a"])
    message = program_message(state)
    assert message["layout"] == "pip" and message["slots"] == ["hall-a", None]
    assert message["names"] == {"hall-a": "第一分会场"} and message["live"] is False
    assert message["title"] == "Budget" and message["starts_at"] is None
    start_broadcast(state, now=200.0)
    assert program_message(state)["live"] is True

    soon = RoomState(room="r", starts_at=10_000.0)
    assert not standby_wanted(soon, now=10_000.0)  # nobody there
    join(soon, Participant("hall-a", "A", Role.VENUE), now=1.0)
    assert standby_wanted(soon, now=10_000.0 - STANDBY_S)
    assert not standby_wanted(soon, now=10_000.0 - STANDBY_S - 1)  # too early
    start_broadcast(soon, now=10_000.0)
    assert not standby_wanted(soon, now=10_000.0)  # broadcasting
    stop_broadcast(soon, now=10_500.0)
    assert not standby_wanted(soon, now=10_600.0)  # over: no second slate


def test_the_slate_writes_the_meetings_chinese_title_and_topic() -> None:
    """The slate shows the title as the captions do, in the CJK font: two Chinese titles give two
    different cards (the bitmap font wrote only ASCII: both came out as the room id), and the
    title's pixels are the title's own mask."""
    from recorder.compose import Compositor
    from recorder.live.worker import Program, Slate
    from recorder.titles import _font_path, line_mask

    if _font_path() is None:
        pytest.fail("no CJK font installed (tests/run.sh installs one)")

    def card(title: str, topic: str = "") -> np.ndarray:
        program = Program()
        program.update({"room": "council", "title": title, "topic": topic, "starts_at": 1_800_000_000})
        frame = Slate(640, 360).draw(Compositor(640, 360, captions=True), program, time.time())
        return frame.to_ndarray(format="gray")

    first, second = card("第十二届委员会第三次会议"), card("城市交通专题协商会")
    rows = slice(360 // 4, 360 // 4 + 40)  # the title's band
    assert (np.abs(first[rows].astype(int) - second[rows].astype(int)) > 60).sum() > 200
    # The bright pixels of the title band are where the title's mask is, centred.
    mask, _ = line_mask("城市交通专题协商会", round(360 * 0.075), 640 - 32)
    band = second[360 // 4 : 360 // 4 + mask.shape[0]] > 128
    x = (640 - mask.shape[1]) // 2
    drawn = band[:, x : x + mask.shape[1]]
    assert mask.sum() > 100 and (drawn == mask).mean() > 0.97
    # The topic has its own line: a card with a topic differs below the title.
    assert (
        np.abs(card("城市交通专题协商会", "地铁票价")[200:].astype(int) - second[200:].astype(int)) > 60
    ).sum() > 50
