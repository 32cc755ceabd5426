"""Rendered recordings in words (issue 13): tile captions with display names in a CJK font at a size
proportional to the tile, and chapter titles in the recording's language with display names."""

from __future__ import annotations

import av
import numpy as np
import pytest

from conference.layouts import LAYOUTS
from recorder import titles
from recorder.compose import Compositor

NAMES = {"m-7": "王委员", "hall-a": "第一分会场"}


class Names:
    def name(self, identity: str) -> str:
        return NAMES.get(identity, identity)


def grey_frame() -> av.VideoFrame:
    frame = av.VideoFrame.from_ndarray(np.full((180, 320, 3), 128, dtype=np.uint8), format="rgb24")
    return frame.reformat(format="yuv420p")


@pytest.mark.skipif(titles._font_path() is None, reason="no CJK font or Pillow")
def test_captions_are_display_names_in_a_cjk_font_sized_by_the_tile() -> None:
    pip = LAYOUTS["pip"]
    frame = grey_frame()
    compositor = Compositor(1280, 720, captions=True)
    picture = compositor.draw(
        (pip.slots, ["hall-a", "m-7"]), Names(), {"hall-a": (1, frame), "m-7": (1, frame)}
    )
    y = picture.to_ndarray(format="gray")
    for rect, identity in zip(pip.slots, ["hall-a", "m-7"], strict=True):
        x, top, w, h = rect.to_pixels(1280, 720)
        margin = max(4, titles.caption_px(h) // 3)
        mask = titles.caption_mask(NAMES[identity], identity, h, w - 3 * margin)
        mh, mw = mask.shape
        # The caption rendered alone is what the frame shows, at the bottom left of its tile.
        region = y[top + h - mh - margin : top + h - margin, x + margin : x + margin + mw] > 200
        assert (region == mask).mean() > 0.97, identity
        # A CJK glyph's height, in proportion to the tile: the inset's is no longer 6 px.
        assert mh >= 0.6 * titles.caption_px(h), (identity, mh)
    main, inset = (titles.caption_px(r.to_pixels(1280, 720)[3]) for r in pip.slots)
    assert main == 50 and inset == 13
    # Not the identity in the bitmap font: the name's mask is a different picture.
    alone = titles.caption_mask("王委员", "m-7", 180, 1000)
    assert alone.shape != titles.text_mask("m-7", 1).shape


def test_a_long_name_is_shortened_to_its_tile() -> None:
    mask = titles.caption_mask("第十二届委员会第三次全体会议特邀专家代表", "e-1", 180, 120)
    assert mask.shape[1] <= 120


def test_titles_in_the_recordings_language_with_display_names() -> None:
    zh = titles.program_title("pip", ["王委员", "第一分会场"], "zh-CN")
    assert zh == "画面：画中画（王委员、第一分会场）"  # noqa: RUF001
    assert titles.program_title("pip", ["Alice"], "en") == "Program: Picture in picture (Alice)"
    assert titles.floor_title("王委员", "zh") == "发言：王委员"  # noqa: RUF001
    assert titles.floor_title("Bob", "en-GB") == "Floor: Bob"
    assert titles.recording_language({}) == "zh-CN" and titles.recording_language({"language": "en"}) == "en"
    # Every layout of the catalogue has its name in both languages.
    for language in ("zh-CN", "en"):
        assert set(titles.LAYOUT_NAMES[language]) == set(LAYOUTS)


def test_the_mix_is_limited_under_full_scale_with_headroom() -> None:
    from recorder.mixing import CEILING, Limiter

    rate = 48000
    t = np.arange(rate) / rate
    # Four speakers at once: their sum peaks near 1.6, far above full scale.
    loud = sum(0.4 * np.sin(2 * np.pi * hz * t) for hz in (220, 330, 440, 550)).astype(np.float32)
    quiet = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    limiter = Limiter(rate)
    out = np.concatenate([limiter.process(block) for block in np.split(np.concatenate([loud, quiet]), 100)])
    assert np.abs(loud).max() > 1.4
    assert np.abs(out).max() <= CEILING + 1e-6 < 1.0
    # Speech under the ceiling passes untouched once the limiter has recovered (50 ms).
    tail = out[rate + 4800 :]
    assert np.allclose(tail, quiet[4800:], atol=1e-6)
