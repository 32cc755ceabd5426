"""What a rendered recording says in words: chapter titles (MP4 chapters, WebVTT, the clerk's
timeline) in the recording's language with the layouts' and people's display names, and tile
captions drawn with a real CJK font (WenQuanYi Micro Hei or Noto CJK, through Pillow's FreeType)
at a size proportional to the tile. Without Pillow or such a font the captions fall back to the
built-in bitmap font (names it cannot write become the identity)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .font import caption, fit_text, text_mask

DEFAULT_LANGUAGE = "zh-CN"
LANGUAGES = ("zh-CN", "en")  # what titles, chapters and captions can be written in

# The pages' names for the layouts (web/i18n.js, layouts.*), for titles outside a browser.
LAYOUT_NAMES: dict[str, dict[str, str]] = {
    "zh-CN": {
        "single": "单画面",
        "pip": "画中画",
        "side-by-side": "左右并列",
        "grid-2x2": "四分屏",
        "grid-3x3": "九分屏",
        "speaker-1+5": "一大五小",
    },
    "en": {
        "single": "Single",
        "pip": "Picture in picture",
        "side-by-side": "Side by side",
        "grid-2x2": "Grid 2×2",  # noqa: RUF001 (the pages' name)
        "grid-3x3": "Grid 3×3",  # noqa: RUF001
        "speaker-1+5": "Speaker 1+5",
    },
}
_WORDS = {
    "zh-CN": {
        "program": "画面：{layout}",  # noqa: RUF001
        "people": "（{names}）",  # noqa: RUF001
        "sep": "、",
        "floor": "发言：{name}",  # noqa: RUF001
        "item": "议程{n}：{title}",  # noqa: RUF001
        "gap": "录制中断 {s} 秒（服务器切换）",  # noqa: RUF001
    },
    "en": {
        "program": "Program: {layout}",
        "people": " ({names})",
        "sep": ", ",
        "floor": "Floor: {name}",
        "item": "Item {n}: {title}",
        "gap": "Recording interrupted: {s} s lost (server failover)",
    },
}

# Fonts that write Chinese, in order of preference (Debian's fonts-wqy-microhei, fonts-noto-cjk).
CJK_FONTS = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
)
# Caption height as a share of the tile's height (the pages' captions: 7 % of the slot).
CAPTION_SHARE = 0.07
MIN_CAPTION_PX = 12


def language_of(code: str | None) -> str:
    """``zh``, ``zh-CN``, ``zh-Hans`` → zh-CN; ``en``, ``en-GB`` → en; anything else the default."""
    if code and code.lower().startswith("en"):
        return "en"
    return DEFAULT_LANGUAGE


def recording_language(meta: dict[str, Any]) -> str:
    """The language a recording is titled in: its meta's ``language``, else the default (zh-CN)."""
    return language_of(str(meta.get("language") or DEFAULT_LANGUAGE))


def layout_name(layout: str, language: str) -> str:
    return LAYOUT_NAMES[language_of(language)].get(layout, layout)


def program_title(layout: str, names: list[str], language: str) -> str:
    words = _WORDS[language_of(language)]
    title = words["program"].format(layout=layout_name(layout, language))
    return title + (words["people"].format(names=words["sep"].join(names)) if names else "")


def floor_title(name: str, language: str) -> str:
    return _WORDS[language_of(language)]["floor"].format(name=name)


def item_title(index: int, title: str, language: str) -> str:
    """An agenda item's chapter: its number from 1 and its title."""
    return _WORDS[language_of(language)]["item"].format(n=index + 1, title=title)


# --- captions ------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _font_path() -> str | None:
    try:
        import PIL.ImageFont  # noqa: F401
    except ImportError:
        return None
    return next((path for path in CJK_FONTS if Path(path).is_file()), None)


def caption_px(tile_h: int) -> int:
    """The caption's text height for a tile ``tile_h`` pixels tall."""
    return max(MIN_CAPTION_PX, round(tile_h * CAPTION_SHARE))


@lru_cache(maxsize=512)
def _cjk_mask(text: str, px: int) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(str(_font_path()), px)
    left, top, right, bottom = font.getbbox(text)
    image = Image.new("L", (max(1, right - left), max(1, bottom - top)))
    ImageDraw.Draw(image).text((-left, -top), text, fill=255, font=font)
    return np.asarray(image) >= 96


def caption_mask(name: str, identity: str, tile_h: int, max_w: int) -> np.ndarray:
    """A boolean mask of a tile's caption: the display name in the CJK font, shortened with an
    ellipsis to ``max_w`` pixels; the bitmap font where no CJK font is installed."""
    if _font_path() is None:
        scale = max(1, min(4, tile_h // 120))
        return text_mask(fit_text(caption(name, identity), max_w, scale), scale)
    px = caption_px(tile_h)
    mask = _cjk_mask(name, px)
    text = name
    while mask.shape[1] > max_w and len(text) > 1:
        text = text[:-1]
        mask = _cjk_mask(text + "…", px)
    return mask


# --- the public's comment on the lower third ------------------------------------------------------

_COMMENT_WORDS = {
    "zh-CN": {"answered": "答复：{by}", "sep": " · "},  # noqa: RUF001
    "en": {"answered": "Answered: {by}", "sep": " · "},
}
LOWER_THIRD_SHARE = 0.045  # text height as a share of the picture's height
MAX_COMMENT_LINES = 2


def gap_title(seconds: float, language: str) -> str:
    """The slate shown for the seconds lost between two parts of a recording (a failover)."""
    return _WORDS[language_of(language)]["gap"].format(s=f"{seconds:.1f}")


def answered_title(by: str, language: str) -> str:
    """The chapter (and the caption's note) for a comment answered by ``by``."""
    return _COMMENT_WORDS[language_of(language)]["answered"].format(by=by)


def comment_lines(comment: dict[str, Any], language: str) -> tuple[str, str]:
    """(who, what) of the comment on screen: the name with the sector and who answered, then the text."""
    words = _COMMENT_WORDS[language_of(language)]
    who = str(comment.get("name") or "")
    if comment.get("sector"):
        who += words["sep"] + str(comment["sector"])
    if comment.get("answered_by"):
        who += words["sep"] + answered_title(str(comment["answered_by"]), language)
    return who, " ".join(str(comment.get("text") or "").split())


def line_mask(text: str, px: int, max_w: int) -> tuple[np.ndarray, str]:
    """The mask of the longest start of ``text`` that fits ``max_w`` (and what is left over)."""
    if _font_path() is None:
        scale = max(1, px // 7)
        fitted = fit_text(caption(text, ""), max_w, scale)
        return text_mask(fitted, scale), ""
    mask = _cjk_mask(text, px)
    if mask.shape[1] <= max_w:
        return mask, ""
    low, high = 1, len(text)  # the longest prefix that fits: ~log2(500) renders, cached by the caller
    while low < high:
        mid = (low + high + 1) // 2
        if _cjk_mask(text[:mid], px).shape[1] <= max_w:
            low = mid
        else:
            high = mid - 1
    return _cjk_mask(text[:low], px), text[low:]


@lru_cache(maxsize=8)
def lower_third_masks(who: str, what: str, height: int, max_w: int) -> tuple[np.ndarray, ...]:
    """The caption's lines as masks: who, then the text over at most MAX_COMMENT_LINES lines (the
    last one ending in an ellipsis when the text goes on). Cached: the same every frame."""
    px = max(MIN_CAPTION_PX, round(height * LOWER_THIRD_SHARE))
    masks = [line_mask(who, px, max_w)[0]] if who else []
    rest = what
    for line in range(MAX_COMMENT_LINES):
        if not rest:
            break
        mask, left = line_mask(rest, px, max_w)
        if left and line == MAX_COMMENT_LINES - 1 and _font_path() is not None:
            cut = rest[: len(rest) - len(left)]
            while cut and _cjk_mask(cut + "…", px).shape[1] > max_w:
                cut = cut[:-1]
            mask = _cjk_mask(cut + "…", px)
        masks.append(mask)
        rest = left.lstrip()
    return tuple(masks)


def cjk_font() -> str | None:
    """The CJK font the captions use (None without Pillow or such a font): also the poster's."""
    return _font_path()
