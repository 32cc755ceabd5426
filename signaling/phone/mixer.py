"""The caller's ear: the room's audio slots (up to three speakers, Opus) decoded and summed, minus
the caller's own voice. A telephone hears one mixed stream; the room's endpoints get the slots
forwarded as they are, so this is the only place the gateway mixes."""

from __future__ import annotations

from collections import deque

import numpy as np

from .codecs import FRAME, OpusDecoder, Pcm

MAX_SLOTS = 3
MAX_QUEUE = 5  # 100 ms: a slot that runs ahead loses its oldest audio, the delay stays bounded


class Mixer:
    def __init__(self, own_identity: str, slots: int = MAX_SLOTS) -> None:
        self.own_identity = own_identity
        self._decoders = [OpusDecoder() for _ in range(slots)]
        self._queues: list[deque[Pcm]] = [deque(maxlen=MAX_QUEUE) for _ in range(slots)]
        self._occupants: list[str | None] = [None] * slots

    def set_occupant(self, slot: int, identity: str | None) -> None:
        if 0 <= slot < len(self._occupants) and self._occupants[slot] != identity:
            self._occupants[slot] = identity
            self._queues[slot].clear()

    def packet(self, slot: int, opus: bytes) -> None:
        if not 0 <= slot < len(self._queues) or self._occupants[slot] == self.own_identity:
            return  # the caller does not hear themself (nor a slot that does not exist)
        self._queues[slot].append(self._decoders[slot].decode(opus))

    def pcm(self, slot: int, pcm: Pcm) -> None:
        """A decoded 20 ms frame for a slot (the same path as ``packet`` after decoding)."""
        if 0 <= slot < len(self._queues) and self._occupants[slot] != self.own_identity:
            self._queues[slot].append(pcm)

    def mix(self) -> Pcm | None:
        """The next 20 ms of the room, or None when nobody is heard."""
        frames = [q.popleft() for q in self._queues if q]
        if not frames:
            return None
        if len(frames) == 1:
            return frames[0]
        total = np.sum(np.stack(frames).astype(np.int32), axis=0)
        return np.clip(total, -32768, 32767).astype(np.int16)


def overlay(base: Pcm | None, extra: Pcm) -> Pcm:
    if base is None:
        return extra
    return np.clip(base.astype(np.int32) + extra, -32768, 32767).astype(np.int16)


SILENCE = np.zeros(FRAME, dtype=np.int16)
