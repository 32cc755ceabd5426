"""The layout catalogue: every layout's slots as normalised rectangles.

One source of truth for the chair console, the venue screens (served as JSON at
``/api/layouts``) and the recorder's compositor. Slot 0 is always the main slot.
Rectangles are ``(x, y, w, h)`` in [0, 1], origin top-left, for a 16:9 canvas;
later slots are drawn above earlier ones (``pip``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rect:
    x: float
    y: float
    w: float
    h: float

    def to_pixels(self, width: int, height: int) -> tuple[int, int, int, int]:
        """Pixel box (x, y, w, h) with even sizes, as video encoders want."""
        x = round(self.x * width) & ~1
        y = round(self.y * height) & ~1
        w = min(round(self.w * width), width - x) & ~1
        h = min(round(self.h * height), height - y) & ~1
        return x, y, w, h


@dataclass(frozen=True, slots=True)
class Layout:
    name: str
    slots: tuple[Rect, ...]

    @property
    def size(self) -> int:
        return len(self.slots)

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "slots": [{"x": r.x, "y": r.y, "w": r.w, "h": r.h} for r in self.slots],
        }


def _grid(cols: int, rows: int) -> tuple[Rect, ...]:
    w, h = 1 / cols, 1 / rows
    return tuple(Rect(c * w, r * h, w, h) for r in range(rows) for c in range(cols))


def _speaker_1_plus_5() -> tuple[Rect, ...]:
    # One large tile (2/3 x 2/3) top-left, five small ones around it along the right and bottom.
    third = 1 / 3
    big = Rect(0.0, 0.0, 2 * third, 2 * third)
    right = [Rect(2 * third, 0.0, third, third), Rect(2 * third, third, third, third)]
    bottom = [Rect(c * third, 2 * third, third, third) for c in range(3)]
    return (big, *right, *bottom)


LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout("single", (Rect(0.0, 0.0, 1.0, 1.0),)),
        Layout("pip", (Rect(0.0, 0.0, 1.0, 1.0), Rect(0.72, 0.70, 0.25, 0.25))),
        Layout("side-by-side", (Rect(0.0, 0.25, 0.5, 0.5), Rect(0.5, 0.25, 0.5, 0.5))),
        Layout("grid-2x2", _grid(2, 2)),
        Layout("grid-3x3", _grid(3, 3)),
        Layout("speaker-1+5", _speaker_1_plus_5()),
    )
}

DEFAULT_LAYOUT = "single"

# Every subscriber negotiates this many video receive slots once, so no program change renegotiates.
MAX_SLOTS = max(layout.size for layout in LAYOUTS.values())


class UnknownLayout(ValueError):
    pass


def get_layout(name: str) -> Layout:
    try:
        return LAYOUTS[name]
    except KeyError:
        raise UnknownLayout(f"unknown layout {name!r}; known: {', '.join(LAYOUTS)}") from None


def catalogue_json() -> list[dict[str, object]]:
    return [layout.to_json() for layout in LAYOUTS.values()]
