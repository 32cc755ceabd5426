"""A built-in 5x7 bitmap font for name captions and chapter cards (no font files, no Pillow)."""

from __future__ import annotations

import unicodedata
from functools import lru_cache

import numpy as np

# The classic 5x7 font: five column bytes per character from ' ' to '~', bit 0 at the top.
_COLUMNS = bytes.fromhex(
    "0000000000"
    "00005f0000"
    "0007000700"
    "147f147f14"
    "242a7f2a12"
    "2313086462"
    "3649552250"
    "0005030000"
    "001c224100"
    "0041221c00"
    "082a1c2a08"
    "08083e0808"
    "0050300000"
    "0808080808"
    "0060600000"
    "2010080402"
    "3e5149453e"
    "00427f4000"
    "4261514946"
    "2141454b31"
    "1814127f10"
    "2745454539"
    "3c4a494930"
    "0171090503"
    "3649494936"
    "064949291e"
    "0036360000"
    "0056360000"
    "0814224100"
    "1414141414"
    "0041221408"
    "0201510906"
    "324979413e"
    "7e1111117e"
    "7f49494936"
    "3e41414122"
    "7f4141221c"
    "7f49494941"
    "7f09090101"
    "3e41415132"
    "7f0808087f"
    "00417f4100"
    "2040413f01"
    "7f08142241"
    "7f40404040"
    "7f0204027f"
    "7f0408107f"
    "3e4141413e"
    "7f09090906"
    "3e4151215e"
    "7f09192946"
    "4649494931"
    "01017f0101"
    "3f4040403f"
    "1f2040201f"
    "7f2018207f"
    "6314081463"
    "0304780403"
    "6151494543"
    "007f414100"
    "0204081020"
    "0041417f00"
    "0402010204"
    "4040404040"
    "0001020400"
    "2054545478"
    "7f48444438"
    "3844444420"
    "384444487f"
    "3854545418"
    "087e090102"
    "0c5252523e"
    "7f08040478"
    "00447d4000"
    "2040443d00"
    "007f102844"
    "00417f4000"
    "7c04180478"
    "7c08040478"
    "3844444438"
    "7c14141408"
    "081414187c"
    "7c08040408"
    "4854545420"
    "043f444020"
    "3c4040207c"
    "1c2040201c"
    "3c4030403c"
    "4428102844"
    "0c5050503c"
    "4464544c44"
    "0008364100"
    "00007f0000"
    "0041360800"
    "0201020402"
)
GLYPH_WIDTH, GLYPH_HEIGHT, ADVANCE = 5, 7, 6


def _glyph(code: int) -> np.ndarray:
    cols = _COLUMNS[(code - 32) * 5 : (code - 32) * 5 + 5]
    bits = np.array([[(c >> row) & 1 for c in cols] for row in range(GLYPH_HEIGHT)], dtype=bool)
    return bits


_GLYPHS = {code: _glyph(code) for code in range(32, 127)}


def _ascii(text: str) -> str:
    """Fold accents (Müller -> Muller); anything else outside ASCII becomes '?'."""
    folded = unicodedata.normalize("NFKD", text)
    out = []
    for ch in folded:
        if unicodedata.combining(ch):
            continue
        out.append(ch if 32 <= ord(ch) < 127 else "?")
    return "".join(out)


def caption(name: str, identity: str) -> str:
    """What a tile's caption says: the name if the built-in font can write it (accents folded), else
    the identity, which tokens keep to ASCII letters, digits and ``._-`` (a Chinese name would
    otherwise come out as a row of question marks)."""
    folded = _ascii(name)
    return identity if "?" in folded and "?" not in name else folded


@lru_cache(maxsize=512)
def text_mask(text: str, scale: int = 1) -> np.ndarray:
    """A boolean mask (height, width) of ``text`` rendered at an integer ``scale``."""
    text = _ascii(text) or " "
    mask = np.zeros((GLYPH_HEIGHT, ADVANCE * len(text) - 1), dtype=bool)
    for i, ch in enumerate(text):
        mask[:, i * ADVANCE : i * ADVANCE + GLYPH_WIDTH] = _GLYPHS[ord(ch)]
    if scale > 1:
        mask = mask.repeat(scale, axis=0).repeat(scale, axis=1)
    return mask


def fit_text(text: str, max_width: int, scale: int) -> str:
    """Shorten ``text`` with '..' so it fits ``max_width`` pixels at ``scale``."""
    text = _ascii(text)
    chars = max(1, (max_width // scale + 1) // ADVANCE)
    return text if len(text) <= chars else text[: max(1, chars - 2)] + ".."
