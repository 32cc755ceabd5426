"""The dial-in dialogue as pure logic: meeting ID `#`, PIN `#`, three tries; and the throttle that
slows down a source that keeps failing. No I/O here, so both are unit-tested directly."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

MAX_DIGITS = 12


@dataclass(frozen=True, slots=True)
class Prompt:
    name: str  # a prompt of prompts.TEXTS


@dataclass(frozen=True, slots=True)
class Check:
    meeting_id: str
    pin: str


@dataclass(frozen=True, slots=True)
class HangUp:
    prompt: str


Action = Prompt | Check | HangUp


class Ivr:
    """Feed digits; get what to do next. ``*`` clears what was typed for the current field."""

    def __init__(self, max_tries: int = 3) -> None:
        self.max_tries = max_tries
        self.tries = 0
        self.field = "meeting_id"
        self.meeting_id = ""
        self._typed = ""

    def start(self) -> Action:
        return Prompt("welcome")

    def digit(self, key: str) -> Action | None:
        if self.field == "checking":
            return None
        if key == "*":
            self._typed = ""
            return None
        if key != "#":
            if key.isdigit() and len(self._typed) < MAX_DIGITS:
                self._typed += key
            return None
        typed, self._typed = self._typed, ""
        if self.field == "meeting_id":
            if not typed:
                return Prompt("welcome")
            self.meeting_id = typed
            self.field = "pin"
            return Prompt("pin")
        if not typed:  # `#` alone: ask again rather than ask the server about an empty PIN
            return Prompt("pin")
        self.field = "checking"
        return Check(self.meeting_id, typed)

    def refused(self) -> Action:
        """The server found no room for what was entered."""
        self.tries += 1
        self.meeting_id = ""
        if self.tries >= self.max_tries:
            self.field = "done"
            return HangUp("goodbye")
        self.field = "meeting_id"
        return Prompt("wrong")

    def admitted(self) -> None:
        self.field = "done"


class Throttle:
    """At most ``limit`` failed tries per source within ``window_s``; then the source is refused
    until its oldest failure leaves the window."""

    def __init__(self, limit: int = 6, window_s: float = 900.0, clock: object = time.monotonic) -> None:
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str) -> deque[float]:
        now = self._clock()  # type: ignore[operator]
        failures = self._failures.get(key)
        if failures is None:
            return deque()
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        if not failures:
            del self._failures[key]
        return failures

    def blocked(self, key: str) -> float:
        """0 when the source may try, else the seconds until it may."""
        failures = self._recent(key)
        if len(failures) < self.limit:
            return 0.0
        return failures[0] + self.window_s - self._clock()  # type: ignore[operator]

    def failure(self, key: str) -> None:
        self._recent(key)
        if len(self._failures) > 100_000:  # bounded memory under a flood of sources
            self._failures.pop(next(iter(self._failures)))
        self._failures.setdefault(key, deque()).append(self._clock())  # type: ignore[operator]
