"""The comments' pure policy (conference/comments.py): plain text cleaned and bounded, duplicates
folded, blocked words, who is approved at once, and what each moderator action may do."""

from __future__ import annotations

import pytest

from conference.comments import (
    Comment,
    blocked_word,
    clean_text,
    duplicate_key,
    initial_status,
    moderate,
    parse_blocked_words,
    sort_comments,
)
from conference.room import CommandError


def test_text_is_cleaned_and_bounded() -> None:
    # Control and direction-override characters go (they hide or reorder text); newlines stay in text.
    assert clean_text("  a\u202eb\u0000c\n\n\n\nd  ", "text", 500, multiline=True) == "abc\n\nd"
    assert clean_text("Li\nWei", "nickname", 40, multiline=False) == "Li Wei"
    assert clean_text("e\u0301", "text", 500, multiline=True) == "\u00e9"  # NFC: one character
    assert len(clean_text("字" * 500, "text", 500, multiline=True)) == 500
    for bad in ("", "   ", "\u200b\u200b", None, 5, ["a"]):
        with pytest.raises(CommandError) as err:
            clean_text(bad, "text", 500, multiline=True)
        assert err.value.code == "bad_request"
    with pytest.raises(CommandError, match="longer than 500"):
        clean_text("x" * 501, "text", 500, multiline=True)


def test_duplicates_and_blocked_words_ignore_case_spacing_and_punctuation() -> None:
    assert duplicate_key("When does it START?!") == duplicate_key("when does it start")
    wide = "".join(chr(0xFEE0 + ord(ch)) for ch in "Full") + "\u3000" + "width"
    assert duplicate_key(wide) == duplicate_key("full width")  # NFKC folds the wide forms
    blocked = parse_blocked_words(["Spam Word", "  ", "广告"])
    assert blocked == ("spamword", "广告")
    assert blocked_word("buy SPAM-word now", blocked) == "spamword"
    assert blocked_word("免费 广 告", blocked) == "广告"
    assert blocked_word("a fine question", blocked) is None


def test_who_is_approved_at_once() -> None:
    assert initial_status("public", moderation=True, held=None) == "pending"
    assert initial_status("public", moderation=False, held=None) == "approved"
    assert initial_status("member", moderation=True, held=None) == "approved"
    assert initial_status("public", moderation=False, held="blocked_word") == "pending"
    assert initial_status("member", moderation=False, held="blocked_word") == "pending"


def test_what_each_action_may_do() -> None:
    pending = Comment(1, "r", "public", "Li", "q?", "pending")
    rejected = Comment(2, "r", "public", "Li", "q?", "rejected")
    approved = Comment(3, "r", "public", "Li", "q?", "approved", held="blocked_word")
    assert moderate(pending, "approve_comment", who="mod") == {
        "status": "approved",
        "held": None,
        "moderated_by": "mod",
    }
    assert moderate(approved, "reject_comment")["status"] == "rejected"
    assert moderate(approved, "pin_comment")["pinned"] is True
    approved.pinned = True
    assert moderate(approved, "pin_comment")["pinned"] is False  # a second pin unpins
    for comment, action in (
        (pending, "pin_comment"),
        (rejected, "show_comment"),
        (rejected, "answer_comment"),
    ):
        with pytest.raises(CommandError) as err:
            moderate(comment, action, by="Dept")
        assert err.value.code == "conflict"
    answered = moderate(pending, "answer_comment", by="  市交通局 ")
    assert (
        answered["status"] == "approved" and answered["answered_by"] == "市交通局" and answered["answered_at"]
    )
    with pytest.raises(CommandError):
        moderate(pending, "answer_comment", by="x" * 101)
    assert moderate(pending, "show_comment") == {"status": "approved"}
    assert moderate(approved, "hide_comment") == {}


def test_order_pinned_first_then_by_time_or_likes() -> None:
    a = Comment(1, "r", "public", "A", "a", "approved", created_at=1.0, likes=9)
    b = Comment(2, "r", "public", "B", "b", "approved", created_at=2.0, likes=1)
    c = Comment(3, "r", "public", "C", "c", "approved", created_at=3.0, likes=5, pinned=True)
    assert [x.id for x in sort_comments([a, b, c], "time")] == [3, 2, 1]
    assert [x.id for x in sort_comments([a, b, c], "likes")] == [3, 1, 2]
    public = c.public_json()
    assert "browser" not in public and "held" not in public and "moderated_by" not in public
