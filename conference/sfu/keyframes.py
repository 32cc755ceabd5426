"""Keyframe requests to one publisher stream, coalesced (as mediasoup's ``KeyFrameRequestManager``).

Many subscribers switching to one camera at once must cost the publisher one keyframe, not one
each: while a request is outstanding (no keyframe has come since it went out) another goes out at
most ``PLI_INTERVAL`` after it (300 ms: the first one may have been lost); a request inside the
interval is not lost but deferred to its end, and a keyframe that arrives first answers it (every
waiting slot switches on whichever keyframe comes next). Once the keyframe has come, the next
request goes out at once (at most one per ``PLI_MIN_GAP``): a take right after another switch to
the same camera, or after its recording started, does not wait out the interval.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

PLI_INTERVAL = 0.3
PLI_MIN_GAP = 0.05  # between two answered requests: a publisher never sends keyframes back to back
# A switch (or a slot restarting on a keyframe) still waiting after this long asks again.
PENDING_RETRY = 1.0


class KeyFrameRequestManager:
    """``request()`` when someone needs a keyframe; ``send`` is called when one must be asked for."""

    __slots__ = ("_deferred", "_send", "answered", "last_sent")

    def __init__(self, send: Callable[[], None]) -> None:
        self._send = send
        self._deferred: asyncio.TimerHandle | None = None
        self.last_sent = -1e9  # time.monotonic() of the last request sent
        self.answered = True  # a keyframe came after the last request

    def request(self, force: bool = False) -> None:
        now = time.monotonic()
        wait = self.last_sent + (PLI_MIN_GAP if self.answered else PLI_INTERVAL) - now
        if force or wait <= 0:
            self._fire(now)
        elif self._deferred is None:
            self._deferred = asyncio.get_running_loop().call_later(wait, self._fire_deferred)

    def received(self) -> None:
        """A keyframe arrived: it answers every request made before it, a deferred one too."""
        self.answered = True
        self.stop()

    def overdue(self, now: float) -> bool:
        """Nothing was asked for in the last ``PENDING_RETRY`` seconds (``now``: time.monotonic())."""
        return self.last_sent <= now - PENDING_RETRY

    def stop(self) -> None:
        if self._deferred is not None:
            self._deferred.cancel()
            self._deferred = None

    def _fire_deferred(self) -> None:
        self._deferred = None
        self._fire(time.monotonic())

    def _fire(self, now: float) -> None:
        self.stop()
        self.last_sent = now
        self.answered = False
        self._send()
