"""The public's comments and their moderation: pure policy, no I/O.

A comment is plain text (at most ``MAX_TEXT`` characters) under a nickname (the public, identified
by a signed browser cookie) or a member's name (and sector, when known). What a visitor writes is
data, never markup: pages set it with ``textContent`` only, the compositor draws it as text.

Statuses: ``pending`` (waits for a moderator), ``approved`` (shown to the public), ``rejected``.
Members' comments are approved at once; the public's wait unless the room turns moderation off, and
one that contains a blocked word always waits (``held`` says why). Moderator actions
(``approve_comment`` ... ``answer_comment``) are ``moderate(comment, action, ...)``: they validate and
return the changed fields, which the comment store writes.
"""

from __future__ import annotations

import re
import time
import unicodedata
from dataclasses import asdict, dataclass
from typing import Any, Literal

from . import events as reducer
from .room import CommandError, Event, RoomState

MAX_TEXT = 500
MAX_NICKNAME = 40
MAX_BY = 100  # "answered by": a department, a member or an expert
Status = Literal["pending", "approved", "rejected"]
STATUSES = ("pending", "approved", "rejected")
AUTHOR_KINDS = ("public", "member")
ACTIONS = (
    "approve_comment",
    "reject_comment",
    "pin_comment",
    "show_comment",
    "hide_comment",
    "answer_comment",
)

# Control and format characters (except newline) are dropped: they hide text or reorder it.
_CONTROL = re.compile(r"[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


@dataclass(slots=True)
class Comment:
    id: int
    room: str
    author: str  # "public" or "member"
    name: str  # the nickname, or the member's name
    text: str
    status: str = "pending"
    created_at: float = 0.0
    browser: str = ""  # the public's browser id (signed cookie) or the member's identity; never shown
    sector: str | None = None
    reply_to: int | None = None
    held: str | None = None  # why it waits although moderation is off ("blocked_word")
    pinned: bool = False
    likes: int = 0
    answered_by: str | None = None
    answered_at: float | None = None
    moderated_by: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def public_json(self) -> dict[str, Any]:
        """What the public page sees: no browser id, no moderation details."""
        data = self.to_json()
        for key in ("browser", "held", "moderated_by", "room"):
            data.pop(key)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Comment:
        return cls(**{k: v for k, v in data.items() if k in _FIELDS})


_FIELDS = frozenset(Comment.__slots__)  # type: ignore[attr-defined]


def clean_text(value: Any, field: str, limit: int, *, multiline: bool) -> str:
    """``value`` as plain text: NFC, control characters dropped, trimmed; refused when empty or
    longer than ``limit`` characters (counted after cleaning)."""
    if not isinstance(value, str):
        raise CommandError("bad_request", f"{field} must be a string")
    text = _CONTROL.sub("", unicodedata.normalize("NFC", value))
    text = re.sub(r"\n{3,}", "\n\n", text) if multiline else text.replace("\n", " ")
    text = text.strip()
    if not text:
        raise CommandError("bad_request", f"{field} must not be empty")
    if len(text) > limit:
        raise CommandError("bad_request", f"{field} is longer than {limit} characters ({len(text)})")
    return text


def duplicate_key(text: str) -> str:
    """Two posts whose text differs only in case, spacing and punctuation count as the same."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return "".join(ch for ch in folded if ch.isalnum())


def parse_blocked_words(words: list[str]) -> tuple[str, ...]:
    return tuple(w for w in (duplicate_key(word) for word in words) if w)


def blocked_word(text: str, blocked: tuple[str, ...]) -> str | None:
    """The first blocked word ``text`` contains (compared as ``duplicate_key`` folds them), if any."""
    folded = duplicate_key(text)
    return next((word for word in blocked if word in folded), None)


def initial_status(author: str, *, moderation: bool, held: str | None) -> str:
    if held is not None:
        return "pending"
    if author == "member" or not moderation:
        return "approved"
    return "pending"


def moderate(
    comment: Comment, action: str, *, by: str | None = None, who: str | None = None
) -> dict[str, Any]:
    """The fields ``action`` changes on ``comment`` (``who``: the moderator's identity). Showing and
    hiding change the room's state instead (``conference.room.show_comment``): nothing here."""
    now = time.time()
    if action == "approve_comment":
        return {"status": "approved", "held": None, "moderated_by": who}
    if action == "reject_comment":
        return {"status": "rejected", "pinned": False, "moderated_by": who}
    if action == "pin_comment":
        if comment.status != "approved":
            raise CommandError("conflict", f"comment {comment.id} is {comment.status}: approve it first")
        return {"pinned": not comment.pinned, "moderated_by": who}
    if action == "answer_comment":
        if comment.status == "rejected":
            raise CommandError("conflict", f"comment {comment.id} was rejected")
        answered_by = clean_text(by, "by", MAX_BY, multiline=False)
        # Answering a question brings it to the public: it is approved with the answer.
        return {"status": "approved", "answered_by": answered_by, "answered_at": now, "moderated_by": who}
    if action in ("show_comment", "hide_comment"):
        if action == "show_comment" and comment.status == "rejected":
            raise CommandError("conflict", f"comment {comment.id} was rejected")
        return {"status": "approved"} if action == "show_comment" else {}
    raise CommandError("unknown_type", f"unknown moderation action {action!r}")


def sort_comments(comments: list[Comment], order: str) -> list[Comment]:
    """``time`` (newest first) or ``likes`` (most liked first, then newest); pinned ones first."""
    if order == "likes":
        return sorted(comments, key=lambda c: (not c.pinned, -c.likes, -c.created_at))
    return sorted(comments, key=lambda c: (not c.pinned, -c.created_at))


def on_screen_json(comment: Comment) -> dict[str, Any]:
    """What every screen needs of the comment on screen (the room state holds only this)."""
    return {
        "id": comment.id,
        "name": comment.name,
        "sector": comment.sector,
        "text": comment.text,
        "answered_by": comment.answered_by,
    }


# --- what the room holds of them (commands on the room state, applied by conference.events) ------


def show_on_screen(state: RoomState, comment: Comment | None, by: str | None = None) -> list[Event]:
    """Put ``comment`` on every screen's lower third (None: take the current one off)."""
    shown = None if comment is None else on_screen_json(comment)
    if shown == state.on_screen:
        return []
    event: Event = {"kind": "comment_on_screen", "comment": shown, "by": by}
    return reducer.apply_all(state, [event])


def answered(state: RoomState, comment: Comment, by: str | None = None) -> list[Event]:
    """The moment a department (or member, or expert) answered ``comment``: a chapter of the
    recording, named after who answered."""
    event: Event = {
        "kind": "comment_answered",
        "comment": comment.id,
        "by": comment.answered_by,
        "name": comment.name,
        "text": comment.text[:120],
        "moderator": by,
    }
    return reducer.apply_all(state, [event])


def set_moderation(state: RoomState, on: bool, by: str | None = None) -> list[Event]:
    if state.comment_moderation == on:
        return []
    return reducer.apply_all(state, [{"kind": "comment_moderation", "on": on, "by": by}])
