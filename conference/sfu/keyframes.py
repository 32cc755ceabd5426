"""Keyframe requests to one publisher stream, coalesced (as mediasoup's ``KeyFrameRequestManager``).

Many subscribers switching to one camera at once must cost the publisher one keyframe, not one
each: a request goes out at most once per ``PLI_INTERVAL`` (300 ms, so a new subscriber still sees
video well within a second); a request inside the interval is not lost but deferred to its end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

PLI_INTERVAL = 0.3
# A switch (or a slot restarting on a keyframe) still waiting after this long asks again.
PENDING_RETRY = 1.0


class KeyFrameRequestManager:
    """``request()`` when someone needs a keyframe; ``send`` is called when one must be asked for."""

    __slots__ = ("_deferred", "_send", "last_sent")

    def __init__(self, send: Callable[[], None]) -> None:
        self._send = send
        self._deferred: asyncio.TimerHandle | None = None
        self.last_sent = -1e9  # time.monotonic() of the last request sent

    def request(self, force: bool = False) -> None:
        now = time.monotonic()
        wait = self.last_sent + PLI_INTERVAL - now
        if force or wait <= 0:
            self._fire(now)
        elif self._deferred is None:
            self._deferred = asyncio.get_running_loop().call_later(wait, self._fire_deferred)

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
        self._send()
