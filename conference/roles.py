"""Meeting roles and what each may do. Enforced by the server on every request."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    CHAIR = "chair"
    VENUE = "venue"
    MEMBER = "member"
    CLERK = "clerk"
    VIEWER = "viewer"
    MODERATOR = "moderator"  # the committee's staff: the public's comments (the chair may do the same)


class Permission(StrEnum):
    PUBLISH_AUDIO = "publish_audio"
    PUBLISH_VIDEO = "publish_video"
    RECEIVE_PROGRAM = "receive_program"
    RECEIVE_ALL_FEEDS = "receive_all_feeds"  # the chair's preview of every endpoint
    SET_PROGRAM = "set_program"
    MUTE = "mute"  # mute others, ask them to unmute
    REMOVE = "remove"
    FLOOR_CONTROL = "floor_control"  # grant / revoke the floor
    REQUEST_FLOOR = "request_floor"  # raise / lower one's own hand
    RECORDING_CONTROL = "recording_control"
    BROADCAST_CONTROL = "broadcast_control"  # the public live stream, and what its page shows
    DIAL_IN = "dial_in"  # set the telephone dial-in PIN
    SCREEN_LINKS = "screen_links"  # issue and revoke long-lived links for venue screens
    ROSTER = "roster"  # import and export the roster, its invitations, whether guests may join
    AGENDA = "agenda"  # edit the agenda, advance through it, save program presets
    LIST_RECORDINGS = "list_recordings"
    DOWNLOAD_RECORDINGS = "download_recordings"
    MODERATE_COMMENTS = "moderate_comments"  # approve, reject, pin, answer, put on screen


P = Permission

ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.CHAIR: frozenset(P),
    Role.VENUE: frozenset({P.PUBLISH_AUDIO, P.PUBLISH_VIDEO, P.RECEIVE_PROGRAM, P.REQUEST_FLOOR}),
    # Camera optional on a phone: allowed, but the page starts with it off.
    Role.MEMBER: frozenset({P.PUBLISH_AUDIO, P.PUBLISH_VIDEO, P.RECEIVE_PROGRAM, P.REQUEST_FLOOR}),
    Role.CLERK: frozenset({P.LIST_RECORDINGS, P.DOWNLOAD_RECORDINGS}),
    Role.VIEWER: frozenset({P.RECEIVE_PROGRAM}),
    Role.MODERATOR: frozenset({P.MODERATE_COMMENTS}),
}


def permissions(role: Role) -> frozenset[Permission]:
    return ROLE_PERMISSIONS[role]


def can(role: Role, permission: Permission) -> bool:
    return permission in ROLE_PERMISSIONS[role]


def publishes(role: Role) -> bool:
    perms = ROLE_PERMISSIONS[role]
    return P.PUBLISH_AUDIO in perms or P.PUBLISH_VIDEO in perms


def sends_no_media(role: Role) -> bool:
    """Roles whose pages neither publish nor receive media (the clerk's, the moderator's)."""
    return role in (Role.CLERK, Role.MODERATOR)
