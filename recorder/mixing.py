"""The program mix's level: several speakers summed can exceed full scale (a render peaked at 1.04
after AAC), which clips. The mix is kept under a ceiling with headroom (-1 dBFS) by a peak limiter:
the gain drops at once to what the loudest sample needs and recovers smoothly (50 ms from silence
to unity), so speech under the ceiling passes untouched."""

from __future__ import annotations

import numpy as np

CEILING = 10 ** (-1 / 20)  # -1 dBFS: room for the AAC encoder's overshoot
RELEASE_S = 0.05


class Limiter:
    """A sample-accurate peak limiter without look-ahead, vectorised per block."""

    def __init__(self, rate: int, ceiling: float = CEILING, release_s: float = RELEASE_S) -> None:
        self.ceiling = ceiling
        self.step = 1.0 / (release_s * rate)  # gain regained per sample
        self.gain = 1.0

    def process(self, block: np.ndarray) -> np.ndarray:
        """``block`` (float mono) with no sample above the ceiling.

        The gain is g[n] = min(1, needed[n], g[n-1] + step): the running minimum of
        needed[k] + (n - k) * step, computed for the whole block with one accumulate."""
        if block.size == 0:
            return block
        n = np.arange(block.size, dtype=np.float64)
        needed = np.minimum(1.0, self.ceiling / np.maximum(np.abs(block), 1e-12))
        lowest = np.minimum.accumulate(np.minimum(needed - n * self.step, self.gain + self.step))
        gain = np.minimum(1.0, lowest + n * self.step)
        self.gain = float(gain[-1])
        return (block * gain).astype(np.float32)
