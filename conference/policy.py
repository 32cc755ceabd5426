"""Meeting policy for the media core: who fills each program, preview and audio slot, and who is
the active speaker. Pure code: no peer connection, no clock of its own, no I/O; the router
(``conference.sfu.router``) feeds it what it measured and carries out what it decides.

Why the numbers: speakers are re-evaluated every ``TICK`` (200 ms) from the RFC 6464 audio level
averaged over the tick; a speaker starts above ``SPEAKING_ON`` and stops after ``SPEAKER_HOLD``
below ``SPEAKING_OFF`` (hysteresis, so a breath does not end a sentence); in a full set of audio
slots a newcomer replaces the quietest occupant only if louder by ``REPLACE_MARGIN`` dB, so voices
do not flap between slots; the floor holder is always heard and is never the one displaced.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

TICK = 0.2
SPEAKING_ON = 127 - 50  # loudness (127 - level): louder than -50 dBov starts a speaker
SPEAKING_OFF = 127 - 55
SPEAKER_HOLD = 1.0
REPLACE_MARGIN = 6.0
SCORE_ALPHA = 0.5  # weight of the newest tick in a voice's loudness score
MAX_ANNOUNCED_SPEAKERS = 4


@dataclass(slots=True)
class Voice:
    """One publisher's microphone as speaker detection sees it."""

    identity: str
    score: float = 0.0  # smoothed loudness, 127 - level (higher is louder)
    speaking: bool = False
    quiet_since: float = 0.0
    audible: bool = True  # false while muted by the chair or by themselves

    def silence(self) -> None:
        self.speaking = False
        self.score = 0.0


def update_voice(voice: Voice, loudness: float, now: float) -> None:
    """One tick of ``voice``: ``loudness`` is the tick's mean (0 when nothing arrived: DTX or gone)."""
    voice.score = SCORE_ALPHA * loudness + (1 - SCORE_ALPHA) * voice.score
    if not voice.audible:
        voice.speaking = False
        return
    if voice.score >= SPEAKING_ON:
        voice.speaking = True
        voice.quiet_since = 0.0
    elif voice.speaking and voice.score < SPEAKING_OFF:
        if not voice.quiet_since:
            voice.quiet_since = now
        elif now - voice.quiet_since >= SPEAKER_HOLD:
            voice.speaking = False


def rank_speakers(voices: Iterable[Voice]) -> list[str]:
    """Who is speaking, loudest first (a stable sort: equal scores keep the given order)."""
    speaking = [v for v in voices if v.speaking and v.audible]
    speaking.sort(key=lambda v: -v.score)
    return [v.identity for v in speaking]


def program_sources(program: Sequence[str | None], slots: int) -> list[str | None]:
    """The identity each of a screen's ``slots`` program slots shows (None: empty)."""
    return [program[i] if i < len(program) else None for i in range(slots)]


def assign_previews(order: dict[str, int], present: set[str], slots: int) -> dict[int, str]:
    """The chair's preview slots: every other endpoint that publishes video, each in a slot it keeps
    while it is in the room (so the console's tiles do not jump around). ``order`` (identity ->
    slot) is the console's memory and is updated in place; returns slot -> identity. Newcomers take
    the lowest free slots in identity order; with more endpoints than slots the rest wait."""
    for identity in list(order):
        if identity not in present:
            del order[identity]
    used = set(order.values())
    free = (i for i in range(slots) if i not in used)
    for identity in sorted(present - set(order)):
        index = next(free, None)
        if index is None:
            break
        order[identity] = index
    return {index: identity for identity, index in order.items()}


def wanted_voices(
    own: str,
    floor: str | None,
    speakers: Sequence[str],
    audible: Callable[[str], bool],
    always: Sequence[str] = (),
) -> list[str]:
    """The voices a listener should hear, most important first: the floor holder, the sources
    heard even when quiet (``always``: a film playing, whose soft passages must not lose their
    slot), then the speakers loudest first; never the listener's own voice, never an inaudible one."""
    wanted: list[str] = []
    if floor is not None and floor != own and audible(floor):
        wanted.append(floor)
    for identity in always:
        if identity not in (own, floor) and audible(identity):
            wanted.append(identity)
    for identity in speakers:
        if identity in always:
            continue
        if identity not in (own, floor) and audible(identity):
            wanted.append(identity)
    return wanted


def plan_audio_slots(
    current: Sequence[str | None],
    wanted: Sequence[str],
    floor: str | None,
    score: Callable[[str], float | None],
) -> list[str | None]:
    """Who each audio slot carries next. A wanted voice already in a slot keeps it; newcomers take
    free slots first, then may displace the quietest occupant that is not the floor holder, the
    floor holder always and anyone else only if louder by ``REPLACE_MARGIN``. ``score`` is a
    voice's current loudness score (None: no such producer)."""
    keep = {identity for identity in current if identity in wanted}
    plan: list[str | None] = [c if c in keep else None for c in current]
    for identity in wanted:
        if identity in keep:
            continue
        if None in plan:
            plan[plan.index(None)] = identity
            continue
        challenger = score(identity)
        if challenger is None:
            continue
        weakest_i, weakest_score = -1, 1e9
        for i, occupant in enumerate(plan):
            if occupant is None or occupant == floor:
                continue
            occupant_score = score(occupant)
            value = occupant_score if occupant_score is not None else -1.0
            if value < weakest_score:
                weakest_i, weakest_score = i, value
        if weakest_i >= 0 and (identity == floor or challenger > weakest_score + REPLACE_MARGIN):
            plan[weakest_i] = identity
    return plan
