"""Screen links: a chair's long-lived, revocable link for one venue's screen.

A venue's screen runs all meeting (or all week) with nobody at it, so the link it is opened with
must outlive a day's token and must be revocable (the PC is replaced, the link was leaked). A
link is a token (``signaling.tokens``) that names its link id; the room state keeps what the
link is for and whether it was revoked, so a revoked link (and every session credential the
screen was handed under it) is refused on every path, in every process, after a restart. Pure
commands, as in ``conference.room``.
"""

from __future__ import annotations

import time
from typing import Any

from .room import CommandError, Event, RoomState

MAX_LINKS_PER_ROOM = 200  # every venue of a meeting, several times over


def add_screen_link(
    state: RoomState,
    link_id: str,
    identity: str,
    name: str,
    role: str,
    expires_at: int,
    now: float | None = None,
    by: str | None = None,
) -> list[Event]:
    now = time.time() if now is None else now
    # Expired links refuse themselves (their token has expired): forget them.
    state.screen_links = {i: link for i, link in state.screen_links.items() if link["expires_at"] > now}
    if link_id in state.screen_links:
        raise CommandError("conflict", f"screen link {link_id!r} exists")
    if len(state.screen_links) >= MAX_LINKS_PER_ROOM:
        raise CommandError(
            "conflict", f"room {state.room!r} has {MAX_LINKS_PER_ROOM} screen links: revoke some"
        )
    link: dict[str, Any] = {
        "id": link_id,
        "identity": identity,
        "name": name,
        "role": role,
        "created_at": now,
        "expires_at": expires_at,
        "revoked_at": None,
    }
    state.screen_links[link_id] = link
    return [{"kind": "screen_link", "link": dict(link), "by": by}]


def revoke_screen_link(
    state: RoomState, link_id: str, now: float | None = None, by: str | None = None
) -> list[Event]:
    link = state.screen_links.get(link_id)
    if link is None:
        raise CommandError("not_found", f"no screen link {link_id!r} in room {state.room!r}")
    if link["revoked_at"] is not None:
        return []
    link["revoked_at"] = time.time() if now is None else now
    return [{"kind": "screen_link_revoked", "link_id": link_id, "identity": link["identity"], "by": by}]


def link_refused(state: RoomState | None, link_id: str | None) -> bool:
    """Whether a token issued under screen link ``link_id`` (None: not a link) is refused: the
    link was revoked, or the room does not know it."""
    if link_id is None:
        return False
    link = None if state is None else state.screen_links.get(link_id)
    return link is None or link["revoked_at"] is not None
