"""The one reducer (conference.events): a room rebuilt from a snapshot and the events after it is
the live room, whatever the commands were (so every command changes the room only through its
events, and the events carry all their effect needs); the recorder's replay applies the same events.
The rules themselves (a granted floor lifts the chair's mute, ...) are tested in test_room.py."""

from __future__ import annotations

import random
from typing import Any

from conference import agenda, clip_cue, comments, events, roster, speaking
from conference import room as r
from conference.roles import Role
from conference.room import CommandError, Participant, RoomState
from recorder.replay import MeetingState

PEOPLE = ["chair", "hall-a", "hall-b", "member-c", "member-d"]
FILM = {"id": "0123456789abcdef", "name": "pilot district.mp4", "duration_s": 60.0, "has_audio": True}


def _comment(rng: random.Random, **fields: Any) -> comments.Comment:
    return comments.Comment(rng.randint(1, 3), "council", "public", "张三", "何时开工", "approved", **fields)


ROSTER = [
    roster.RosterEntry("hall-a", "第一分会场", "venue", "venue"),
    roster.RosterEntry("member-c", "王委员", sector="教育界"),
]
AGENDA = [
    {"title": "开幕", "preset": {"layout": "single", "slots": ["hall-a"]}},
    {"title": "短片", "kind": "film", "clip": "c1"},
    {"title": "答复", "preset": {"layout": "grid-2x2", "slots": ["hall-b", "member-c", "@floor"]}},
]


def random_command(rng: random.Random, state: RoomState, now: float) -> Any:
    who = rng.choice(PEOPLE)
    other = rng.choice([*PEOPLE, None])
    choices = [
        lambda: r.join(
            state,
            Participant(who, who.title(), Role.CHAIR if who == "chair" else Role.VENUE, publish_audio=True),
            now=now,
        ),
        lambda: r.leave(state, who),
        lambda: r.remove(state, who, now=now),
        lambda: r.set_connected(state, who, rng.random() < 0.5),
        lambda: r.update_publishing(state, who, rng.random() < 0.5, rng.random() < 0.5),
        lambda: r.set_program(state, rng.choice(["single", "pip", "grid-2x2"]), [who, other]),
        lambda: r.set_title(state, rng.choice(["", "第三次会议", "Budget"])),
        lambda: r.mute(state, who, rng.random() < 0.5),
        lambda: r.request_unmute(state, who),
        lambda: r.self_mute(state, who, rng.random() < 0.5),
        lambda: r.raise_hand(state, who, now=now),
        lambda: r.lower_hand(state, who),
        lambda: r.grant_floor(state, None if rng.random() < 0.3 else who),
        lambda: r.grant_floor(state, who, limit_s=rng.choice([None, 30, 90]), now=now),
        lambda: speaking.set_floor_limits(state, rng.choice([None, 60]), rng.choice(speaking.ACTIONS), 5),
        lambda: speaking.extend_floor(state, 30),
        lambda: speaking.time_up(
            state, who, state.floor_timer.granted_at if state.floor_timer else 0, now + 500
        ),
        lambda: r.revoke_floor(state),
        lambda: r.release_floor(state, who),
        lambda: r.start_recording(state, f"rec-{int(now)}", now=now),
        lambda: r.stop_recording(state),
        lambda: r.start_broadcast(state, now=now),
        lambda: r.stop_broadcast(state, now=now),
        lambda: r.set_public(state, topic=rng.choice(["", "transport"]), starts_at=now + 60),
        lambda: comments.show_on_screen(state, rng.choice([None, _comment(rng)])),
        lambda: comments.answered(state, _comment(rng, answered_by=rng.choice(["交通局", "Li"]))),
        lambda: comments.set_moderation(state, rng.random() < 0.5),
        lambda: clip_cue.play_clip(state, FILM, rng.choice([0, 1]), rng.random() * 60, now=now),
        lambda: clip_cue.clip_moved(state, rng.random() < 0.5, rng.random() * 60, now=now),
        lambda: clip_cue.stop_clip(state),
        lambda: clip_cue.clip_gone(state),
        lambda: roster.set_roster(state, rng.choice([[], ROSTER]), allow_guests=rng.random() < 0.5),
        lambda: roster.set_allow_guests(state, rng.random() < 0.5),
        lambda: agenda.set_agenda(state, rng.choice([AGENDA, AGENDA[:1], []])),
        lambda: agenda.next_item(state, take=rng.random() < 0.5, now=now),
        lambda: agenda.goto_item(state, rng.randrange(3), take=rng.random() < 0.5, now=now),
        lambda: agenda.save_preset(
            state, rng.choice(["a", "b"]), {"layout": "pip", "slots": [who, "@floor"]}
        ),
        lambda: agenda.delete_preset(state, rng.choice(["a", "b"])),
    ]
    return rng.choice(choices)()


def test_a_room_rebuilt_from_its_events_is_the_live_room() -> None:
    seen: set[str] = set()
    for seed in range(20):
        rng = random.Random(seed)
        live = RoomState(room="council")
        snapshot = live.to_json()
        log: list[dict[str, Any]] = []
        for step in range(150):
            try:
                log += random_command(rng, live, 1_700_000_000.0 + step)
            except CommandError:
                continue  # refused: nothing changed, nothing to replay
        rebuilt = RoomState.from_json(snapshot)
        for event in log:
            events.apply(rebuilt, event)
        live_json, rebuilt_json = live.to_json(), rebuilt.to_json()
        live_json.pop("version"), rebuilt_json.pop("version")  # the store's counter, not a room fact
        assert rebuilt_json == live_json, f"seed {seed}"
        seen.update(e["kind"] for e in log)
    # The sequences exercised every kind of change a command makes.
    assert seen >= set(events._HANDLERS) - {"participant_rejoined", "dial_in"}, seen


def test_the_recorder_replays_with_the_same_reducer() -> None:
    live = RoomState(room="council")
    replay = MeetingState()
    replay.apply({"kind": "snapshot", "state": live.to_json()})
    log: list[dict[str, Any]] = []
    for identity, name in (("hall-a", "第一分会场"), ("hall-b", "第二分会场")):
        log += r.join(live, Participant(identity, name, Role.VENUE, publish_audio=True, publish_video=True))
    log += r.set_program(live, "pip", ["hall-a", "hall-b"])
    log += r.mute(live, "hall-b", True)
    log += r.raise_hand(live, "hall-b", now=5.0)
    log += r.grant_floor(live, "hall-b")  # lifts the chair's mute
    log += r.leave(live, "hall-a")
    for event in log:
        replay.apply(event)
    assert replay.slots == live.program.slots == [None, "hall-b"]
    assert replay.floor == "hall-b" and replay.audible("hall-b")
    assert list(replay.present) == ["hall-b"]
    assert replay.name("hall-a") == "第一分会场"  # who left keeps a name for the captions


def test_a_damaged_timeline_entry_is_skipped_not_fatal() -> None:
    replay = MeetingState()
    replay.apply({"kind": "snapshot", "state": {"room": "old", "participants": [], "program": {}}})
    replay.apply({"kind": "mute", "identity": "nobody", "muted": True, "self_muted": False})
    replay.apply({"kind": "program", "program": {"layout": "no-such-layout", "slots": []}})
    assert replay.layout == "single"
