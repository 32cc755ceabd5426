"""The compositor the recorder's renders and the live stream share: a YUV 4:2:0 canvas, the
layout drawn onto it with name cards and captions, and decoded audio as float mono samples.

``recorder.render`` draws a recording's program afterwards; ``recorder.live`` draws the room's
current program as it happens. Both hand ``Compositor.draw`` an arrangement (rectangles and who
fills each) and the decoded pictures; only where the pictures come from differs.
"""

from __future__ import annotations

from typing import Any, Protocol

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from conference.layouts import Rect

from .font import caption, fit_text, text_mask
from .titles import DEFAULT_LANGUAGE, caption_mask, caption_px, comment_lines, line_mask, lower_third_masks

AUDIO_RATE = 48000
AAC_FRAME = 1024
# Black, and the dark grey of a name card, in limited-range YUV.
BLACK = (16, 128, 128)
CARD = (48, 128, 128)
MIN_SLATE_PX = 12
SLATE = (40, 150, 120)  # dark blue: the seconds a recording lost (between two parts)

Arrangement = tuple[tuple[Rect, ...], list[str | None]]
MAX_SCALERS = 64


class Names(Protocol):
    """Who is who: a participant's display name (the identity when it has none)."""

    def name(self, identity: str) -> str: ...


def mono(frame: av.AudioFrame) -> np.ndarray:
    """A decoded frame as float32 mono samples (read straight from the buffer: to_ndarray is slow)."""
    name = frame.format.name
    if len(frame.layout.channels) == 1 and name in ("s16", "s16p", "flt", "fltp"):
        dtype = np.int16 if name.startswith("s16") else np.float32
        samples = np.frombuffer(frame.planes[0], dtype=dtype)[: frame.samples].astype(np.float32)
        return samples * (1 / 32768.0) if dtype is np.int16 else samples
    data = frame.to_ndarray()
    if not frame.format.is_planar:
        data = data.reshape(-1, len(frame.layout.channels)).T
    mono = data.mean(axis=0).astype(np.float32)
    return mono * (1 / 32768.0) if name.startswith("s16") else mono


class Canvas:
    """A YUV 4:2:0 picture built in place and handed to the encoder."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.buffer = np.empty(width * height * 3 // 2, dtype=np.uint8)
        self.y = self.buffer[: width * height].reshape(height, width)
        quarter = width * height // 4
        self.u = self.buffer[width * height : width * height + quarter].reshape(height // 2, width // 2)
        self.v = self.buffer[width * height + quarter :].reshape(height // 2, width // 2)

    def fill(self, box: tuple[int, int, int, int], colour: tuple[int, int, int]) -> None:
        x, y, w, h = box
        self.y[y : y + h, x : x + w] = colour[0]
        self.u[y // 2 : (y + h) // 2, x // 2 : (x + w) // 2] = colour[1]
        self.v[y // 2 : (y + h) // 2, x // 2 : (x + w) // 2] = colour[2]

    def paste(self, x: int, y: int, planes: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        py, pu, pv = planes
        h, w = py.shape
        self.y[y : y + h, x : x + w] = py
        self.u[y // 2 : y // 2 + h // 2, x // 2 : x // 2 + w // 2] = pu
        self.v[y // 2 : y // 2 + h // 2, x // 2 : x // 2 + w // 2] = pv

    def text(self, x: int, y: int, mask: np.ndarray, box: tuple[int, int, int, int] | None = None) -> None:
        """Draw white text with a dark band behind it, clipped to ``box``."""
        bx, by, bw, bh = box or (0, 0, self.width, self.height)
        h, w = mask.shape
        pad = max(2, h // 4) & ~1
        x0, y0 = max(bx, x - pad) & ~1, max(by, y - pad) & ~1
        x1, y1 = min(bx + bw, x + w + pad), min(by + bh, y + h + pad)
        if x1 <= x0 or y1 <= y0:
            return
        region = self.y[y0:y1, x0:x1]
        region[:] = (region.astype(np.uint16) * 2 // 5).astype(np.uint8)
        self.u[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2] = 128
        self.v[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2] = 128
        mh, mw = min(h, y1 - y), min(w, x1 - x)
        if mh > 0 and mw > 0:
            self.y[y : y + mh, x : x + mw][mask[:mh, :mw]] = 235

    def frame(self) -> av.VideoFrame:
        # A fresh frame each time (the encoder may keep a reference), filled plane by plane: a tenth
        # of the cost of VideoFrame.from_ndarray.
        frame = av.VideoFrame(self.width, self.height, "yuv420p")
        for plane, source in zip(frame.planes, (self.y, self.u, self.v), strict=True):
            target = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
            target[:, : source.shape[1]] = source
        return frame


def _fit(src_w: int, src_h: int, box_w: int, box_h: int) -> tuple[int, int]:
    """Largest even size with the source's aspect inside the box."""
    scale = min(box_w / src_w, box_h / src_h)
    return max(2, round(src_w * scale) & ~1), max(2, round(src_h * scale) & ~1)


def _planes(frame: av.VideoFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    out = []
    for i, plane in enumerate(frame.planes):
        w = frame.width if i == 0 else frame.width // 2
        h = frame.height if i == 0 else frame.height // 2
        arr = np.frombuffer(plane, dtype=np.uint8).reshape(-1, plane.line_size)[:h, :w]
        out.append(arr)
    return out[0], out[1], out[2]


class Compositor:
    def __init__(self, width: int, height: int, captions: bool) -> None:
        self.canvas = Canvas(width, height)
        self.captions = captions
        self._scaled: dict[tuple[int, int, int, int], tuple[int, int, tuple[np.ndarray, ...]]] = {}
        # One scaler per (source size and format, tile size), kept: ``VideoFrame.reformat`` sets up
        # a new swscale context for every new frame, which cost 3.6 times the scaling itself.
        self._scalers: dict[tuple[int, int, str, int, int], VideoReformatter] = {}

    def _scaler(self, frame: av.VideoFrame, width: int, height: int) -> VideoReformatter:
        key = (frame.width, frame.height, frame.format.name, width, height)
        scaler = self._scalers.get(key)
        if scaler is None:
            if len(self._scalers) >= MAX_SCALERS:  # layouts and sources changed many times
                self._scalers.clear()
            scaler = self._scalers[key] = VideoReformatter()
        return scaler

    def _caption_scale(self, tile_h: int) -> int:
        return max(1, min(4, tile_h // 120))

    def draw(
        self,
        arrangement: Arrangement,
        state: Names,
        pictures: dict[str, tuple[int, av.VideoFrame] | None],
        comment: dict[str, Any] | None = None,
        language: str = DEFAULT_LANGUAGE,
    ) -> av.VideoFrame:
        """The program; ``comment``: the public's comment on the lower third (``RoomState.on_screen``)."""
        c = self.canvas
        c.fill((0, 0, c.width, c.height), BLACK)
        rects, slots = arrangement
        used: dict[tuple[int, int, int, int], tuple[int, int, tuple[np.ndarray, ...]]] = {}
        for rect, identity in zip(rects, slots, strict=False):
            if identity is None:
                continue
            box = rect.to_pixels(c.width, c.height)
            x, y, w, h = box
            if w < 4 or h < 4:
                continue
            picture = pictures.get(identity)
            if picture is None:
                c.fill(box, CARD)
                scale = max(1, min(6, h // 60))
                label = fit_text(caption(state.name(identity), identity), w - 8, scale)
                mask = text_mask(label, scale)
                c.text(x + (w - mask.shape[1]) // 2, y + (h - mask.shape[0]) // 2, mask, box)
                continue
            serial, frame = picture
            fw, fh = _fit(frame.width, frame.height, w, h)
            key = (id(frame), serial, fw, fh)
            scaled = self._scaled.get(key)
            if scaled is None:
                small = self._scaler(frame, fw, fh).reformat(frame, width=fw, height=fh, format="yuv420p")
                scaled = (fw, fh, _planes(small))
            used[key] = scaled
            ox, oy = (x + (w - fw) // 2) & ~1, (y + (h - fh) // 2) & ~1
            c.paste(ox, oy, scaled[2])  # type: ignore[arg-type]
            if self.captions:
                # The display name in a CJK font, its size proportional to the tile (recorder/titles.py).
                margin = max(4, caption_px(h) // 3)
                mask = caption_mask(state.name(identity), identity, h, w - 3 * margin)
                c.text(x + margin, y + h - mask.shape[0] - margin, mask, box)
        self._scaled = used
        if comment:
            self.lower_third(comment, language)
        return c.frame()

    def slate(self, text: str) -> av.VideoFrame:
        """A plain picture with one line of text in the middle: what a render shows for the
        seconds nothing was recorded (recorder.render, gaps between parts)."""
        c = self.canvas
        c.fill((0, 0, c.width, c.height), SLATE)
        margin = max(8, c.width // 20)
        mask, _ = line_mask(text, max(MIN_SLATE_PX, c.height // 18), c.width - 2 * margin)
        c.text((c.width - mask.shape[1]) // 2, (c.height - mask.shape[0]) // 2, mask)
        return c.frame()

    def lower_third(self, comment: dict[str, Any], language: str) -> None:
        """A dark band across the bottom with who wrote the comment (and who answered) and its text."""
        c = self.canvas
        margin = max(8, c.height // 40) & ~1
        masks = lower_third_masks(*comment_lines(comment, language), c.height, c.width - 2 * margin)
        if not masks:
            return
        gap = max(2, masks[0].shape[0] // 3)
        height = sum(m.shape[0] for m in masks) + gap * (len(masks) + 1)
        top = max(0, c.height - margin - height) & ~1
        band = c.y[top : c.height - margin // 2, :]
        band[:] = (band.astype(np.uint16) * 2 // 7).astype(np.uint8)
        c.u[top // 2 : (c.height - margin // 2) // 2, :] = 128
        c.v[top // 2 : (c.height - margin // 2) // 2, :] = 128
        y = top + gap
        for mask in masks:
            h, w = mask.shape
            c.y[y : y + h, margin : margin + w][mask] = 235
            y += h + gap
