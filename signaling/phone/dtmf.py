"""DTMF digits from a call: RFC 4733 telephone-events, and in-band tones (Goertzel) as the fallback
for callers whose equipment sends the keys as audio. A call uses in-band detection only until the
first RFC 4733 event arrives, so one key press is never counted twice."""

from __future__ import annotations

import numpy as np

EVENTS = "0123456789*#ABCD"
ROWS = (697.0, 770.0, 852.0, 941.0)
COLUMNS = (1209.0, 1336.0, 1477.0, 1633.0)
KEYPAD = ("123A", "456B", "789C", "*0#D")


class Rfc4733:
    """Digits from telephone-event payloads; each key press once, however often it is repeated."""

    def __init__(self) -> None:
        self._last: tuple[int, int] | None = None

    def packet(self, payload: bytes, timestamp: int) -> str | None:
        if len(payload) < 4 or payload[0] >= len(EVENTS):
            return None
        # Every packet of one event (start, updates, the three end packets) has the event's
        # start timestamp: report the digit on the first one seen. The key is part of what makes
        # an event: a phone whose audio clock stalls (baresip on a loaded machine) gives the next
        # key the same timestamp, and that key must not be lost.
        event = (timestamp, payload[0])
        if event == self._last:
            return None
        self._last = event
        return EVENTS[payload[0]]


class Goertzel:
    """In-band DTMF at 8 kHz in 20 ms blocks: a key counts after two blocks of the same tone pair
    and is reported once until the tones stop."""

    RATE = 8000
    BLOCK = 160

    def __init__(self) -> None:
        n = np.arange(self.BLOCK)
        window = np.hamming(self.BLOCK)
        freqs = ROWS + COLUMNS
        self._basis = np.exp(-2j * np.pi * np.outer(freqs, n) / self.RATE) * window
        # A sine of amplitude A gives |X|^2 = (A * sum(w) / 2)^2 and block energy N * A^2 / 2.
        self._scale = 2 * self.BLOCK / float(window.sum()) ** 2
        self._candidate: str | None = None
        self._count = 0
        self._reported = False

    def block(self, pcm8: np.ndarray) -> str | None:
        if len(pcm8) != self.BLOCK:
            return None
        x = pcm8.astype(np.float32)
        energy = float(np.dot(x, x))
        key: str | None = None
        if energy > self.BLOCK * 200.0**2:  # about -44 dBFS: quieter is no key press
            power = np.abs(self._basis @ x) ** 2
            rows, cols = power[:4], power[4:]
            r, c = int(rows.argmax()), int(cols.argmax())
            # Both tones clearly above the others in their group, and most of the block's energy.
            row_ok = rows[r] > 6 * np.partition(rows, -2)[-2]
            col_ok = cols[c] > 6 * np.partition(cols, -2)[-2]
            share = (rows[r] + cols[c]) * self._scale / energy  # ~1 for a clean tone pair
            if row_ok and col_ok and share > 0.5 and 0.1 < rows[r] / cols[c] < 10:
                key = KEYPAD[r][c]
        if key is None:
            self._candidate, self._count, self._reported = None, 0, False
            return None
        if key != self._candidate:
            self._candidate, self._count, self._reported = key, 1, False
            return None
        self._count += 1
        if self._count >= 2 and not self._reported:
            self._reported = True
            return key
        return None


def tone(key: str, rate: int, ms: int = 100, level: float = 8000.0) -> np.ndarray:
    """The DTMF tone pair of ``key`` (for tests and for callers' prompts)."""
    for r, row in enumerate(KEYPAD):
        if key in row:
            c = row.index(key)
            t = np.arange(rate * ms // 1000) / rate
            pcm = level * (np.sin(2 * np.pi * ROWS[r] * t) + np.sin(2 * np.pi * COLUMNS[c] * t)) / 2
            return pcm.astype(np.int16)
    raise ValueError(f"not a DTMF key: {key!r}")
