"""Meeting policy (conference.policy) on its own: slot and speaker decisions without a peer connection."""

from __future__ import annotations

from conference import policy
from conference.policy import Voice


def run_ticks(voice: Voice, loudness: float, ticks: int, start: float = 0.0) -> float:
    now = start
    for _ in range(ticks):
        now += policy.TICK
        policy.update_voice(voice, loudness, now)
    return now


def test_a_loud_voice_starts_speaking_and_a_breath_does_not_end_it() -> None:
    voice = Voice("a")
    now = run_ticks(voice, 127 - 30, 3)  # -30 dBov
    assert voice.speaking
    # Below SPEAKING_OFF for less than SPEAKER_HOLD: still speaking.
    now = run_ticks(voice, 0.0, 3, now)
    assert voice.speaking
    run_ticks(voice, 0.0, 10, now)
    assert not voice.speaking


def test_a_quiet_voice_never_speaks() -> None:
    voice = Voice("a")
    run_ticks(voice, 127 - 70, 20)  # -70 dBov: background noise
    assert not voice.speaking


def test_a_muted_voice_is_not_a_speaker_however_loud() -> None:
    voice = Voice("a", audible=False)
    run_ticks(voice, 127 - 20, 10)
    assert not voice.speaking
    assert policy.rank_speakers([voice]) == []


def test_speakers_are_ranked_loudest_first() -> None:
    quiet, loud = Voice("quiet"), Voice("loud")
    run_ticks(quiet, 127 - 45, 5)
    run_ticks(loud, 127 - 20, 5)
    assert policy.rank_speakers([quiet, loud]) == ["loud", "quiet"]


def test_program_sources_fill_a_screen_and_leave_the_rest_empty() -> None:
    assert policy.program_sources(["a", None, "b"], 4) == ["a", None, "b", None]
    assert policy.program_sources(["a", "b", "c"], 1) == ["a"]
    assert policy.program_sources([], 0) == []


def test_previews_keep_their_slots_while_others_come_and_go() -> None:
    order: dict[str, int] = {}
    assert policy.assign_previews(order, {"b", "a"}, 4) == {0: "a", 1: "b"}
    # "a" leaves, "c" joins: "b" keeps slot 1, "c" takes the free slot 0.
    assert policy.assign_previews(order, {"b", "c"}, 4) == {0: "c", 1: "b"}
    assert order == {"b": 1, "c": 0}


def test_more_endpoints_than_preview_slots_wait_for_a_free_one() -> None:
    order: dict[str, int] = {}
    assert policy.assign_previews(order, {"a", "b", "c"}, 2) == {0: "a", 1: "b"}
    assert policy.assign_previews(order, {"b", "c"}, 2) == {0: "c", 1: "b"}


def test_a_listener_hears_the_floor_first_and_never_itself() -> None:
    def audible(identity: str) -> bool:
        return identity != "muted"

    assert policy.wanted_voices("me", "floor", ["x", "me", "floor", "muted", "y"], audible) == [
        "floor",
        "x",
        "y",
    ]
    # The floor holder hears the speakers, not themself.
    assert policy.wanted_voices("floor", "floor", ["x"], audible) == ["x"]
    assert policy.wanted_voices("me", "muted", ["x"], audible) == ["x"]
    # A playing clip is wanted even in its quiet passages (not among the speakers), after the
    # floor holder, once; muted by the chair, it is not.
    assert policy.wanted_voices("me", "floor", ["x", "clip"], audible, ("clip",)) == ["floor", "clip", "x"]
    assert policy.wanted_voices("me", None, [], audible, ("clip",)) == ["clip"]
    assert policy.wanted_voices("me", None, ["x"], audible, ("muted",)) == ["x"]


def test_audio_slots_keep_their_voices_and_fill_free_slots_first() -> None:
    scores = {"a": 80.0, "b": 70.0, "c": 90.0}
    plan = policy.plan_audio_slots(["a", None, "b"], ["b", "a", "c"], None, scores.get)
    assert plan == ["a", "c", "b"]


def test_a_newcomer_displaces_the_quietest_only_when_clearly_louder() -> None:
    scores = {"a": 80.0, "b": 70.0, "c": 74.0}
    # c is louder than b by 4 dB: under REPLACE_MARGIN, nothing changes.
    assert policy.plan_audio_slots(["a", "b"], ["a", "b", "c"], None, scores.get) == ["a", "b"]
    scores["c"] = 70.0 + policy.REPLACE_MARGIN + 1
    assert policy.plan_audio_slots(["a", "b"], ["a", "b", "c"], None, scores.get) == ["a", "c"]


def test_the_floor_holder_always_gets_a_slot_and_is_never_displaced() -> None:
    scores = {"a": 90.0, "b": 90.0, "floor": 10.0, "loud": 120.0}
    plan = policy.plan_audio_slots(["a", "b"], ["floor", "a", "b"], "floor", scores.get)
    assert "floor" in plan
    plan = policy.plan_audio_slots(["floor", "a"], ["floor", "a", "loud"], "floor", scores.get)
    assert plan == ["floor", "loud"]


def test_a_voice_no_longer_wanted_frees_its_slot() -> None:
    scores = {"a": 80.0, "b": 70.0}
    assert policy.plan_audio_slots(["a", "b"], ["b"], None, scores.get) == [None, "b"]
