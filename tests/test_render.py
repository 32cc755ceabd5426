"""Render synthetic recordings (real VP8/Opus RTP through the archive writer) and check the MP4."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import av
import numpy as np
import pytest
from recording_script import Script, Speaker, write_meeting

from recorder import render as render_mod
from recorder.archive import Recording
from recorder.render import RenderError, RenderOptions, open_recording, render

RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)
W, H = 640, 360
TONES = {"a": 440.0, "b": 660.0, "c": 880.0, "d": 1100.0}


def people() -> list[Speaker]:
    return [
        Speaker("a", "Alice Chair", RED, TONES["a"], role="chair"),
        Speaker("b", "Branch North", GREEN, TONES["b"]),
        Speaker("c", "Dept of Education", BLUE, TONES["c"]),
        Speaker("d", "Expert Link", YELLOW, TONES["d"]),
    ]


@pytest.fixture(scope="module")
def meeting(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Script]:
    data = tmp_path_factory.mktemp("data")
    script = Script(
        people(),
        duration=8.0,
        first_program=("grid-2x2", ["a", "b", "c", "d"]),
        programs=[(3.0, "single", ["c"]), (5.0, "side-by-side", ["d", "a"])],
        floors=[(3.0, "c")],
        mutes=[(6.0, "b", True)],
        speakers=[(0.5, ["b"]), (4.0, ["c", "a"])],
    )
    write_meeting(data, "m1", script)
    return data, script


def frames_at(path: Path, times: list[float]) -> dict[float, np.ndarray]:
    """RGB pictures of the MP4 at the given times (the first frame at or after each)."""
    wanted = sorted(times)
    out: dict[float, np.ndarray] = {}
    with av.open(str(path)) as c:
        for frame in c.decode(video=0):
            while wanted and frame.time is not None and frame.time >= wanted[0] - 1e-6:
                out[wanted.pop(0)] = frame.to_ndarray(format="rgb24")
            if not wanted:
                break
    return out


def tile_colour(rgb: np.ndarray, rect: tuple[float, float, float, float]) -> np.ndarray:
    """Median colour of the middle of a tile given as fractions of the canvas."""
    h, w, _ = rgb.shape
    x, y, tw, th = rect
    cx, cy = int((x + tw / 2) * w), int((y + th / 2) * h)
    patch = rgb[cy - 8 : cy + 8, cx - 8 : cx + 8].reshape(-1, 3)
    return np.median(patch, axis=0)


def assert_colour(actual: np.ndarray, expected: tuple[int, int, int], what: str) -> None:
    assert np.abs(actual - np.array(expected)).max() < 40, f"{what}: got {actual}, expected {expected}"


def audio_of(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        chunks = [f.to_ndarray().mean(axis=0) for f in c.decode(audio=0)]
    return np.concatenate(chunks)


def tone_levels(samples: np.ndarray, start: float, end: float) -> dict[str, float]:
    part = samples[int(start * 48000) : int(end * 48000)]
    spectrum = np.abs(np.fft.rfft(part * np.hanning(part.shape[0])))
    freqs = np.fft.rfftfreq(part.shape[0], 1 / 48000)
    peaks = {k: float(spectrum[np.abs(freqs - f) < 8].max()) for k, f in TONES.items()}
    loudest = max(peaks.values())
    return {k: v / loudest for k, v in peaks.items()}


GRID = [(0, 0, 0.5, 0.5), (0.5, 0, 0.5, 0.5), (0, 0.5, 0.5, 0.5), (0.5, 0.5, 0.5, 0.5)]
FULL = (0, 0, 1, 1)
SIDE = [(0.0, 0.25, 0.5, 0.5), (0.5, 0.25, 0.5, 0.5)]


def test_program_render_follows_the_chair(meeting: tuple[Path, Script], tmp_path: Path) -> None:
    data, _script = meeting
    out = tmp_path / "program.mp4"
    seen: list[float] = []
    result = render(Recording.open(data, "m1"), out, RenderOptions(width=W, height=H), seen.append)
    assert seen and seen[-1] == 1.0 and seen == sorted(seen)

    # Each program change shows within one keyframe interval (1 s): checked 0.2 s after it.
    pics = frames_at(out, [1.0, 2.5, 3.2, 4.5, 5.2, 7.5])
    for t in (1.0, 2.5):
        for rect, colour in zip(GRID, (RED, GREEN, BLUE, YELLOW), strict=True):
            assert_colour(tile_colour(pics[t], rect), colour, f"grid tile at {t}s")
    for t in (3.2, 4.5):
        assert_colour(tile_colour(pics[t], FULL), BLUE, f"single at {t}s")
    for t in (5.2, 7.5):
        assert_colour(tile_colour(pics[t], SIDE[0]), YELLOW, f"left at {t}s")
        assert_colour(tile_colour(pics[t], SIDE[1]), RED, f"right at {t}s")
        # Outside the two tiles the canvas is black.
        assert pics[t][20, W // 2].max() < 40

    # Duration and chapters match the timeline.
    with av.open(str(out)) as c:
        assert abs(c.duration / 1e6 - 8.0) < 0.15
        chapters = c.chapters()
        assert c.streams.video[0].codec_context.name == "h264"
        assert c.streams.audio[0].codec_context.name == "aac"
    starts = [round(float(ch["start"] * ch["time_base"]), 2) for ch in chapters]
    titles = [ch["metadata"]["title"] for ch in chapters]
    assert starts == [0.0, 3.0, 5.0]
    assert titles[0] == "画面：四分屏（Alice Chair、Branch North、Dept of Education、Expert Link）"  # noqa: RUF001
    assert titles[1] == "发言：Dept of Education"  # the floor grant at the same moment as the program  # noqa: RUF001
    assert titles[2] == "画面：左右并列（Expert Link、Alice Chair）"  # noqa: RUF001
    assert [c.at for c in result.chapters] == [0.0, 3.0, 5.0]
    vtt = out.with_suffix(".vtt").read_text()
    assert vtt.startswith("WEBVTT")
    assert "00:00:03.000 --> 00:00:05.000\n发言：Dept of Education" in vtt  # noqa: RUF001
    assert "00:00:05.000 --> 00:00:08.000\n画面：左右并列" in vtt  # noqa: RUF001

    # Audio: all four tones while nobody is muted, the muted branch's tone gone after 6 s.
    samples = audio_of(out)
    assert abs(samples.shape[0] / 48000 - 8.0) < 0.1
    before = tone_levels(samples, 1.0, 5.5)
    after = tone_levels(samples, 6.3, 7.8)
    for k in TONES:
        assert before[k] > 0.3, f"tone of {k} missing before the mute: {before}"
    assert after["b"] < 0.001, f"muted tone still audible: {after}"
    for k in ("a", "c", "d"):
        assert after[k] > 0.3, f"tone of {k} missing after the mute: {after}"


def test_other_layouts_render_from_the_same_archive(meeting: tuple[Path, Script], tmp_path: Path) -> None:
    data, _ = meeting
    rec = Recording.open(data, "m1")

    out = tmp_path / "single.mp4"
    render(rec, out, RenderOptions(layout="single:d", width=W, height=H, captions=False))
    for t, pic in frames_at(out, [1.0, 4.0, 7.0]).items():
        assert_colour(tile_colour(pic, FULL), YELLOW, f"single:d at {t}")

    out = tmp_path / "grid.mp4"
    render(rec, out, RenderOptions(layout="grid", width=W, height=H))
    pic = frames_at(out, [4.0])[4.0]
    for rect, colour in zip(GRID, (RED, GREEN, BLUE, YELLOW), strict=True):
        assert_colour(tile_colour(pic, rect), colour, "automatic grid")

    # Speaker: the active speaker in the big tile (b from 0.5 s, c from 4 s).
    out = tmp_path / "speaker.mp4"
    render(rec, out, RenderOptions(layout="speaker", width=W, height=H))
    pics = frames_at(out, [2.0, 4.5])
    big = (0, 0, 2 / 3, 2 / 3)
    assert_colour(tile_colour(pics[2.0], big), GREEN, "speaker b")
    assert_colour(tile_colour(pics[4.5], big), BLUE, "speaker c")

    # A catalogue layout with a fixed assignment, and a time range.
    out = tmp_path / "fixed.mp4"
    result = render(rec, out, RenderOptions(layout="side-by-side:b,c", width=W, height=H, start=2.0, end=6.0))
    assert abs(result.duration - 4.0) < 0.05
    assert [round(c.at, 2) for c in result.chapters] == [0.0, 1.0, 3.0]
    pic = frames_at(out, [3.5])[3.5]
    assert_colour(tile_colour(pic, SIDE[0]), GREEN, "fixed left")
    assert_colour(tile_colour(pic, SIDE[1]), BLUE, "fixed right")


def test_many_speakers_at_once_are_mixed_under_full_scale(tmp_path: Path) -> None:
    """Six tones at 0.3 each add up to far above full scale: the program is mixed with headroom
    and a limiter (recorder/mixing.py), so the decoded render never clips."""
    colours = [RED, GREEN, BLUE, YELLOW, RED, GREEN]
    speakers = [Speaker(f"s{i}", f"Speaker {i}", colours[i], 310.0 + 170.0 * i) for i in range(6)]
    script = Script(speakers, duration=2.0, first_program=("grid-3x3", [p.identity for p in speakers]))
    write_meeting(tmp_path, "loud", script)
    out = tmp_path / "loud.mp4"
    render(Recording.open(tmp_path, "loud"), out, RenderOptions(width=W, height=H))
    samples = audio_of(out)
    peak = float(np.abs(samples[4800:]).max())
    # Clipped at full scale (before the limiter) this render peaked at 0.97 after AAC; limited, 0.92.
    assert 0.5 < peak < 0.95, f"the program mix peaks at {peak:.3f}"


def test_participant_without_video_gets_a_name_card(tmp_path: Path) -> None:
    script = Script(
        [Speaker("a", "Alice", RED, 440.0), Speaker("p", "Phone Member", (0, 0, 0), 660.0, video=False)],
        duration=2.0,
        first_program=("side-by-side", ["a", "p"]),
    )
    write_meeting(tmp_path, "cards", script)
    out = tmp_path / "cards.mp4"
    render(Recording.open(tmp_path, "cards"), out, RenderOptions(width=W, height=H))
    pic = frames_at(out, [1.0])[1.0]
    assert_colour(tile_colour(pic, SIDE[0]), RED, "video tile")
    x0, y0 = int(0.5 * W), int(0.25 * H)
    card = pic[y0 : y0 + H // 2, x0 : x0 + W // 2]
    # A grey card (not black) with white lettering in its middle.
    assert 25 < np.median(card) < 70
    middle = card[card.shape[0] // 2 - 12 : card.shape[0] // 2 + 12]
    assert (middle > 200).all(axis=2).sum() > 50


def test_the_comment_on_screen_and_its_answer_as_a_chapter(tmp_path: Path) -> None:
    comment = {"id": 7, "name": "张三", "sector": None, "text": "公交线路何时调整", "answered_by": None}
    script = Script(
        [Speaker("a", "Alice", RED, 440.0)],
        duration=4.0,
        first_program=("single", ["a"]),
        events=[
            (1.0, {"kind": "comment_on_screen", "comment": comment}),
            (
                2.0,
                {"kind": "comment_answered", "comment": 7, "by": "市交通局", "name": "张三", "text": "..."},
            ),
            (3.0, {"kind": "comment_on_screen", "comment": None}),
        ],
    )
    write_meeting(tmp_path, "asked", script)
    out = tmp_path / "asked.mp4"
    # No name captions: the white in the bottom band is the comment's alone.
    result = render(Recording.open(tmp_path, "asked"), out, RenderOptions(width=W, height=H, captions=False))
    assert [(round(c.at, 2), c.title) for c in result.chapters][1:] == [(2.0, "答复：市交通局")]  # noqa: RUF001
    with av.open(str(out)) as c:
        assert [ch["metadata"]["title"] for ch in c.chapters()][1] == "答复：市交通局"  # noqa: RUF001
    pics = frames_at(out, [0.5, 1.5, 2.5, 3.5])
    band = (slice(H - H // 6, H - 12), slice(8, W - 8))
    for t in (1.5, 2.5):  # a dark band across the red picture, white writing in it
        bottom = pics[t][band]
        assert np.median(bottom[..., 0]) < 110, t
        assert (bottom > 200).all(axis=2).sum() > 100, t
    for t in (0.5, 3.5):  # before it is shown, after it is taken off: the picture only
        assert_colour(tile_colour(pics[t], (0.1, 0.85, 0.8, 0.1)), RED, f"bottom at {t}s")
        assert (pics[t][band] > 200).all(axis=2).sum() == 0
    assert (pics[2.5][band] > 200).all(axis=2).sum() > (pics[1.5][band] > 200).all(axis=2).sum()  # 答复


def test_damaged_and_truncated_chunks_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    script = Script([Speaker("a", "Alice", RED, 440.0)], duration=6.0, first_program=("single", ["a"]))
    # One chunk a second per track.
    write_meeting(tmp_path, "bad", script)
    rec = Recording.open(tmp_path, "bad")
    video = next(t for t in rec.tracks if t.media == "video")
    path = rec.track_path(video.number)
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF  # damage one byte in the middle of the second chunk
    path.write_bytes(bytes(data[: len(data) - 100]))  # and cut the last chunk short
    caplog.set_level(logging.WARNING)
    out = tmp_path / "bad.mp4"
    render(rec, out, RenderOptions(width=W, height=H))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("damaged chunk" in w for w in warnings), warnings
    assert any("truncated chunk" in w for w in warnings), warnings
    with av.open(str(out)) as c:
        assert abs(c.duration / 1e6 - 6.0) < 0.15


def test_render_errors_are_clear(meeting: tuple[Path, Script], tmp_path: Path) -> None:
    data, _ = meeting
    rec = Recording.open(data, "m1")
    with pytest.raises(RenderError, match="unknown layout 'mosaic'"):
        render(rec, tmp_path / "x.mp4", RenderOptions(layout="mosaic"))
    with pytest.raises(RenderError, match="no participant 'zed'"):
        render(rec, tmp_path / "x.mp4", RenderOptions(layout="single:zed"))
    with pytest.raises(RenderError, match="empty time range"):
        render(rec, tmp_path / "x.mp4", RenderOptions(start=9.0))
    with pytest.raises(RenderError, match="no recording 'nope'"):
        open_recording(str(data), "nope")
    with pytest.raises(RenderError, match="invalid recording id"):
        open_recording(str(data), "../m1")
    assert not (tmp_path / "x.mp4").exists() and not (tmp_path / "x.mp4.part").exists()


def test_render_command(
    meeting: tuple[Path, Script], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from signaling.cli import main

    data, _ = meeting
    out = tmp_path / "cli.mp4"
    args = ["render", "m1", "--data-dir", str(data), "--layout", "grid", "--size", "320x180", "-o", str(out)]
    code = main(args)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "100.0%" in captured.err and "#" * 30 in captured.err  # the progress bar
    assert "3 chapters" in captured.out
    with av.open(str(out)) as c:
        assert (c.streams.video[0].width, c.streams.video[0].height) == (320, 180)

    assert main(["render", "m1", "--data-dir", str(data), "--layout", "bogus", "-o", str(out)]) == 2
    assert "unknown layout 'bogus'" in capsys.readouterr().err
    assert main(["render", "missing", "--data-dir", str(data)]) == 2
    assert "no recording 'missing'" in capsys.readouterr().err
    assert main(["render", "m1", "--data-dir", str(data), "--size", "big"]) == 2
    assert "bad size" in capsys.readouterr().err


def test_time_parsing() -> None:
    assert render_mod.parse_time("90") == 90.0
    assert render_mod.parse_time("1:30") == 90.0
    assert render_mod.parse_time("01:00:02.5") == 3602.5
    for bad in ("-3", "1::2", "abc", "nan"):
        with pytest.raises(RenderError):
            render_mod.parse_time(bad)


def test_h264_and_vp8_publishers_in_one_render(tmp_path: Path) -> None:
    script = Script(
        [Speaker("s", "Safari Phone", BLUE, 440.0, codec="H264"), Speaker("c", "Chrome Venue", RED, 660.0)],
        duration=3.0,
        first_program=("side-by-side", ["s", "c"]),
    )
    write_meeting(tmp_path, "mixed", script)
    rec = Recording.open(tmp_path, "mixed")
    assert sorted(t.codec for t in rec.tracks if t.media == "video") == ["H264", "VP8"]
    out = tmp_path / "mixed.mp4"
    render(rec, out, RenderOptions(width=W, height=H))
    for t, pic in frames_at(out, [1.0, 2.5]).items():
        assert_colour(tile_colour(pic, SIDE[0]), BLUE, f"H.264 tile at {t}")
        assert_colour(tile_colour(pic, SIDE[1]), RED, f"VP8 tile at {t}")


def test_lost_packets_freeze_the_picture_until_the_next_keyframe(tmp_path: Path) -> None:
    from aiortc.rtp import RtpPacket

    from recorder.archive import RecordingWriter, recording_dir
    from recorder.depacketize import video_frames

    script = Script([Speaker("a", "Alice", RED, None)], duration=3.0, first_program=("single", ["a"]))
    write_meeting(tmp_path / "src", "src", script)
    src = Recording.open(tmp_path / "src", "src")
    track = src.tracks[0]
    original = list(video_frames(src, track))
    assert not any(f.gap for f in original)

    # Copy the track, dropping one packet of the 20th frame and adding a padding packet (a bandwidth
    # probe, which uses up a sequence number) after the 5th.
    records = list(src.read_track(track.number))
    frame_ts = sorted({RtpPacket.parse(p).timestamp for _, p in records})
    lost_ts, padded_ts = frame_ts[20], frame_ts[5]
    writer = RecordingWriter(recording_dir(tmp_path, "lossy"), "lossy", "assembly", started_at=src.started_at)
    sink = writer.open_track("a", "video", "VP8", 90000, track.payload_type, track.ssrc, {})
    seq_shift, dropped = 0, False
    for arrival, raw in records:
        packet = RtpPacket.parse(raw)
        if packet.timestamp == lost_ts and not dropped:
            dropped = True
            continue
        packet.sequence_number = (packet.sequence_number + seq_shift) & 0xFFFF
        sink.write(arrival, packet.serialize())
        if packet.timestamp == padded_ts and packet.marker:
            seq_shift += 1
            probe = RtpPacket(
                payload_type=track.payload_type,
                sequence_number=(packet.sequence_number + 1) & 0xFFFF,
                timestamp=packet.timestamp,
                ssrc=track.ssrc,
                payload=b"",
            )
            sink.write(arrival, probe.serialize())
    writer.close(stopped_at=src.stopped_at)

    lossy = Recording.open(tmp_path, "lossy")
    frames = list(video_frames(lossy, lossy.tracks[0]))
    assert len(frames) == len(original) - 1  # the damaged frame is gone
    gaps = [i for i, f in enumerate(frames) if f.gap]
    assert gaps == [20]  # the frame after the loss, and not the one after the padding
    assert not frames[20].keyframe


def test_a_restarted_stream_keeps_its_timing(tmp_path: Path) -> None:
    """The publisher restarts mid-track (new SSRC, sequence numbers and timestamp base)."""
    from aiortc.rtp import RtpPacket

    from recorder.archive import RecordingWriter, recording_dir
    from recorder.depacketize import video_frames

    script = Script([Speaker("a", "Alice", GREEN, None)], duration=3.0, first_program=("single", ["a"]))
    write_meeting(tmp_path / "src", "src", script)
    src = Recording.open(tmp_path / "src", "src")
    track = src.tracks[0]
    writer = RecordingWriter(
        recording_dir(tmp_path, "restart"), "restart", "assembly", started_at=src.started_at
    )
    writer.add_entry(next(e for e in src.timeline if e["kind"] == "snapshot"))
    sink = writer.open_track("a", "video", "VP8", 90000, track.payload_type, track.ssrc, {})
    for arrival, raw in src.read_track(track.number):
        packet = RtpPacket.parse(raw)
        if arrival - src.started_at >= 1.5:
            packet.ssrc = 4242
            packet.sequence_number = (packet.sequence_number + 30000) & 0xFFFF
            packet.timestamp = (packet.timestamp + 3_000_000_000) & 0xFFFFFFFF
        sink.write(arrival, packet.serialize())
    writer.close(stopped_at=src.stopped_at)

    rec = Recording.open(tmp_path, "restart")
    frames = list(video_frames(rec, rec.tracks[0]))
    times = [f.at - rec.started_at for f in frames]
    assert len(frames) == 45
    assert all(0 < b - a < 0.2 for a, b in itertools.pairwise(times)), times
    restart = next(i for i, t in enumerate(times) if t >= 1.5)
    assert frames[restart].gap and not any(f.gap for f in frames[:restart])
    out = tmp_path / "restart.mp4"
    render(rec, out, RenderOptions(width=W, height=H))
    for t, pic in frames_at(out, [1.0, 2.8]).items():
        assert_colour(tile_colour(pic, FULL), GREEN, f"at {t}")


def test_captions_fall_back_to_the_identity_for_names_the_font_cannot_write() -> None:
    from recorder.font import caption, text_mask

    assert caption("第一分会场", "hall-a") == "hall-a"
    assert caption("Müller-Lüdenscheidt", "m1") == "Muller-Ludenscheidt"
    assert caption("Who?", "w") == "Who?"
    mask = text_mask("hall-a", 2)
    assert mask.shape == (14, (6 * 6 - 1) * 2) and mask.any() and not mask.all()
