"""Who may act: the removal check every path shares (WebSocket, REST, recordings API).

A chair's removal is kept in the room state (``RoomState.removed``: identity -> when), so it lives
wherever the room lives: shared between processes by the Redis store, kept across a restart by a
durable store. A token of a removed identity issued up to the removal is refused everywhere; a
token issued afterwards (deliberately minted again) admits it. See docs/protocol.md.
"""

from __future__ import annotations

from conference.room import REMOVAL_KEPT_S, RoomState
from conference.screen_links import link_refused
from conference.store import RoomStore

from .tokens import MAX_TTL_S, Claims, TokenError

# An entry must outlive every token it could refuse.
assert REMOVAL_KEPT_S >= MAX_TTL_S

REMOVED_REASON = "removed from the room"
LINK_REVOKED_REASON = "screen link revoked"


def removed_from(state: RoomState | None, claims: Claims) -> bool:
    # A revoked screen link counts as a removal of everything issued under it (signaling.screens).
    if link_refused(state, claims.link):
        return True
    return state is not None and state.is_removed(claims.identity, claims.issued_at)


async def check_not_removed(store: RoomStore, claims: Claims) -> None:
    """TokenError(403) when the token's identity was removed from its room after it was issued."""
    state = await store.get(claims.room)
    if link_refused(state, claims.link):
        raise TokenError(403, LINK_REVOKED_REASON)
    if removed_from(state, claims):
        raise TokenError(403, REMOVED_REASON)
