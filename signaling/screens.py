"""Endpoints that stay in the meeting for its whole length: session credentials and screen links.

**Session credentials.** A token is checked when a socket opens; a venue's screen that joined
with a day's token and loses its connection after the token expired would be refused at the
reconnect. So while an endpoint is joined the server hands it a short-lived token of its own
(``{"type": "session", "token", "expires_at"}``) right after the join and again every third of
``session_ttl_s``; the page reconnects with the newest one. It carries the same room, identity,
role (and screen link) as the token the endpoint joined with, so it admits exactly what that did,
and it is issued only to a connected, admitted endpoint: a removed one gets no more, and the ones
it has are older than its removal, hence refused.

**Screen links.** A chair (or the admin key) issues a long-lived link for one venue's screen
(REST ``POST /api/rooms/{room}/screen-links``, or the ``create_screen_link`` command) and may
revoke it (``DELETE .../screen-links/{id}``, ``revoke_screen_link``). The link's token names its
link id; revoking it refuses that token and every session credential issued under it, at once on
a connected screen too (closed with 4403 ``screen link revoked``). docs/protocol.md.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

from aiohttp import web

from conference.roles import Permission, can
from conference.room import CommandError, Event, RoomState
from conference.screen_links import add_screen_link, revoke_screen_link

from .admission import LINK_REVOKED_REASON
from .protocol import PROTOCOL_VERSION
from .rooms import Actor, Connection, Rooms
from .tokens import PAGE_FOR_ROLE, Claims, mint_token

log = logging.getLogger(__name__)

SCREEN_LINK_TTL_S = 30 * 24 * 3600  # default: a month of meetings
SCREEN_LINK_ROLES = ("venue", "viewer")
CLOSE_LINK_REVOKED = 4403
SCREEN_COMMANDS = frozenset({"create_screen_link", "revoke_screen_link"})


# --- session credentials -------------------------------------------------------------------------


def session_credential(secret: str, claims: Claims, ttl_s: int, now: int | None = None) -> dict[str, Any]:
    token = mint_token(
        secret,
        claims.room,
        claims.identity,
        claims.name,
        claims.role,
        ttl_s,
        claims.admin,
        now=now,
        gateway=claims.gateway,
        link=claims.link,
        kind=claims.kind,
        sector=claims.sector,
    )
    issued = int(time.time()) if now is None else now
    return {
        "v": PROTOCOL_VERSION,
        "type": "session",
        "token": token,
        "expires_at": issued + ttl_s,
        "ttl_s": ttl_s,  # so a client can count it on its own clock
    }


async def hand_out_sessions(conn: Connection, secret: str, ttl_s: int) -> None:
    """While ``conn`` is joined: a fresh session credential now and every ttl/3 (runs as a task)."""
    every = max(1.0, ttl_s / 3)
    while conn.joined:
        conn.send(session_credential(secret, conn.claims, ttl_s))
        await asyncio.sleep(every)


# --- screen links ---------------------------------------------------------------------------------


def _link_json(link: dict[str, Any]) -> dict[str, Any]:
    return {k: link[k] for k in ("id", "identity", "name", "role", "created_at", "expires_at", "revoked_at")}


async def create_link(
    rooms: Rooms, secret: str, room: str, actor: Actor, msg: dict[str, Any]
) -> dict[str, Any]:
    identity, name = msg["identity"], msg.get("name") or msg["identity"]
    role = msg.get("role", "venue")
    ttl = msg.get("ttl", SCREEN_LINK_TTL_S)
    link_id = secrets.token_urlsafe(9)
    now = int(time.time())
    try:  # checks identity, name, ttl as for any token, before the room changes
        token = mint_token(secret, room, identity, name, role, ttl, now=now, link=link_id)
    except ValueError as exc:
        raise CommandError("bad_request", str(exc)) from None
    settings = rooms.settings
    # A chair prepares tomorrow's screens today: the room need not exist yet.
    await rooms.store.create(
        room, max_endpoints=settings.max_endpoints, auto_record=settings.auto_record, exist_ok=True
    )
    state, _ = await rooms.store.update(
        room,
        lambda s: add_screen_link(s, link_id, identity, name.strip(), role, now + ttl, by=actor.identity),
    )
    page = PAGE_FOR_ROLE[state.screen_links[link_id]["role"]]  # type: ignore[index]
    return {
        "version": state.version,
        "link": _link_json(state.screen_links[link_id]),
        "token": token,
        "page": f"/{page}?token={token}",
    }


async def revoke_link(rooms: Rooms, room: str, actor: Actor, link_id: str) -> dict[str, Any]:
    state, _ = await rooms.store.update(room, lambda s: revoke_screen_link(s, link_id, by=actor.identity))
    return {"version": state.version, "link": _link_json(state.screen_links[link_id])}


def close_revoked(rooms: Rooms) -> Any:
    """A store listener: a revoked link's sockets (joined or not) close at once, in every process."""

    def listener(room: str, events: list[Event], state: RoomState) -> None:
        revoked = {e["link_id"] for e in events if e["kind"] == "screen_link_revoked"}
        if not revoked:
            return
        for conn in list(rooms.sockets):
            if conn.room == room and conn.claims.link in revoked:
                log.info("screen link of %s/%s revoked: closing its socket", room, conn.identity)
                conn.send({"v": PROTOCOL_VERSION, "type": "removed", "reason": LINK_REVOKED_REASON})
                conn.close(CLOSE_LINK_REVOKED, LINK_REVOKED_REASON)

    return listener


async def command(
    rooms: Rooms, secret: str, room: str, actor: Actor, type_: str, msg: dict[str, Any]
) -> dict[str, Any]:
    """``create_screen_link`` / ``revoke_screen_link`` over the socket (chair) or REST."""
    if not _may(actor):
        raise CommandError("forbidden", f"role {actor.role} may not {type_.replace('_', ' ')}")
    if type_ == "create_screen_link":
        return await create_link(rooms, secret, room, actor, msg)
    return await revoke_link(rooms, room, actor, msg["link_id"])


# --- REST ---------------------------------------------------------------------------------------


def setup(app: web.Application) -> None:
    from . import app as server

    rooms = app[server.ROOMS_KEY]
    rooms.store.subscribe(close_revoked(rooms))

    async def create(request: web.Request) -> web.Response:
        room = request.match_info["room"]
        actor, _ = await server.authorize(request, room)
        msg = server.validate_command({**await server.json_body(request), "type": "create_screen_link"})
        try:
            result = await command(rooms, request.app[server.SECRET_KEY], room, actor, msg["type"], msg)
        except CommandError as exc:
            raise server.command_error(exc) from None
        return web.json_response(result, status=201)

    async def listing(request: web.Request) -> web.Response:
        room = request.match_info["room"]
        actor, _ = await server.authorize(request, room)
        if actor.role is not None and not _may(actor):
            raise server.json_error(403, "forbidden", f"role {actor.role} may not list screen links")
        state = await rooms.store.get(room)
        if state is None:
            raise server.json_error(404, "not_found", f"no room {room!r}")
        return web.json_response({"links": [_link_json(link) for link in state.screen_links.values()]})

    async def revoke(request: web.Request) -> web.Response:
        room = request.match_info["room"]
        actor, _ = await server.authorize(request, room)
        msg = {"type": "revoke_screen_link", "link_id": request.match_info["link"]}
        if await rooms.store.get(room) is None:
            raise server.json_error(404, "not_found", f"no room {room!r}")
        try:
            result = await command(rooms, request.app[server.SECRET_KEY], room, actor, msg["type"], msg)
        except CommandError as exc:
            raise server.command_error(exc) from None
        return web.json_response(result)

    app.router.add_post("/api/rooms/{room}/screen-links", create)
    app.router.add_get("/api/rooms/{room}/screen-links", listing)
    app.router.add_delete("/api/rooms/{room}/screen-links/{link}", revoke)


def _may(actor: Actor) -> bool:
    """The chair's, or the admin key's (role None)."""
    return actor.role is None or can(actor.role, Permission.SCREEN_LINKS)
