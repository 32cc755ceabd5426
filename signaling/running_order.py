"""The running order over REST: the roster as CSV, its invitations, the agenda (docs/openapi.yaml).

- ``PUT /api/rooms/{room}/roster`` (``text/csv``, ``conference.roster``'s header; ``?allow_guests=``
  true/false optionally) replaces the roster as a whole, or refuses it naming the line;
  ``GET`` returns it as CSV.
- ``GET /api/rooms/{room}/roster/links?format=json|csv|html``: a per-person invitation for each
  entry, a link with a token valid until the end of the meeting's day (the day of the scheduled
  start, else today, in the server's time zone) carrying the entry's role, kind and sector; as a
  sheet (CSV, or a printable page with QR codes).
- ``PUT /api/rooms/{room}/agenda`` ``{"items": [...]}`` and ``GET``: the agenda, the current item
  and the program presets. The commands (``next_item``, ``goto_item``, ``save_preset``, ...) go
  through ``POST /api/rooms/{room}/commands`` like the others.

Roster and agenda may be prepared before the meeting: the room is created when missing. The chair
(or the admin key) only; a room's participants may read its agenda.
"""

from __future__ import annotations

import csv
import datetime
import html
import io
import time
from typing import Any

import segno
from aiohttp import web

from conference import agenda, roster
from conference.roles import Permission, Role
from conference.room import CommandError, RoomState

from .rooms import Rooms
from .tokens import MAX_TTL_S, PAGE_FOR_ROLE, mint_token

P = Permission
MIN_LINK_TTL_S = 60
LINK_COLUMNS = (*roster.COLUMNS, "url", "expires_at")
SHEET_HEADERS = {
    "Cache-Control": "no-store",  # every link is a credential
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
}


def meeting_day_end(state: RoomState, now: float) -> float:
    """The end (local midnight) of the meeting's day: the scheduled start's day, else today's."""
    day = datetime.date.fromtimestamp(state.starts_at or now)
    return datetime.datetime.combine(day + datetime.timedelta(days=1), datetime.time()).timestamp()


def invitations(state: RoomState, secret: str, base: str, now: float | None = None) -> list[dict[str, Any]]:
    """One invitation per roster entry: the entry, its page's URL with a token, when it expires."""
    now = time.time() if now is None else now
    end = meeting_day_end(state, now)
    if end - now < MIN_LINK_TTL_S:
        day = datetime.date.fromtimestamp(end - 1).isoformat()
        raise CommandError("conflict", f"the meeting's day ({day}) is over: set the scheduled start first")
    issued = int(now)
    ttl = min(int(end) - issued, MAX_TTL_S)
    links = []
    for entry in state.roster.values():
        token = mint_token(
            secret,
            state.room,
            entry["identity"],
            entry["name"],
            entry["role"],
            ttl,
            now=issued,
            kind=entry["kind"],
            sector=entry["sector"],
        )
        page = PAGE_FOR_ROLE[Role(entry["role"])]
        links.append({**entry, "url": f"{base}/{page}?token={token}", "expires_at": issued + ttl})
    return links


def links_csv(links: list[dict[str, Any]]) -> bytes:
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(LINK_COLUMNS)
    for link in links:
        writer.writerow([link[c] for c in LINK_COLUMNS])
    return out.getvalue().encode("utf-8-sig")


def links_html(state: RoomState, links: list[dict[str, Any]]) -> str:
    """A printable sheet: one card per person, with the QR code of their link (segno, inline SVG)."""
    title = html.escape(state.title or state.room)
    cards = []
    for link in links:
        qr = segno.make(link["url"], error="m").svg_inline(scale=3, border=2)
        details = " · ".join(html.escape(link[k]) for k in ("kind", "sector", "organisation") if link[k])
        cards.append(
            f'<section class="card" data-identity="{html.escape(link["identity"])}">{qr}'
            f"<div><h2>{html.escape(link['name'])}</h2><p>{details}</p>"
            f'<p class="url">{html.escape(link["url"])}</p></div></section>'
        )
    expires = time.strftime("%Y-%m-%d %H:%M", time.localtime(links[0]["expires_at"])) if links else ""
    return (
        '<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">'
        f"<title>{title} · 邀请 Invitations</title><style>"
        "body{font-family:sans-serif;margin:1cm}.card{display:flex;gap:1em;align-items:center;"
        "border:1px solid #999;padding:.5em;margin:.5em 0;break-inside:avoid}"
        ".card h2{margin:0 0 .2em}.url{font-size:8pt;word-break:break-all;color:#444}"
        "</style></head><body>"
        f"<h1>{title}</h1><p>有效期至 Valid until {expires}</p>{''.join(cards)}</body></html>"
    )


async def read_csv_body(request: web.Request) -> bytes:
    """The body, read up to one byte past the roster's limit (the app's JSON body limit is lower;
    the parser refuses a larger file naming the line it reached)."""
    chunks: list[bytes] = []
    size = 0
    while size <= roster.MAX_BYTES:
        chunk = await request.content.read(roster.MAX_BYTES + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def setup(app: web.Application) -> None:
    from . import app as server
    from .public import base_url

    rooms: Rooms = app[server.ROOMS_KEY]

    async def ensure_room(room: str) -> None:
        settings = rooms.settings
        await rooms.store.create(
            room, max_endpoints=settings.max_endpoints, auto_record=settings.auto_record, exist_ok=True
        )

    async def room_state(room: str) -> RoomState:
        state = await rooms.store.get(room)
        if state is None:
            raise server.json_error(404, "not_found", f"no room {room!r}")
        return state

    async def put_roster(request: web.Request) -> web.Response:
        room = request.match_info["room"]
        actor, _ = await server.authorize(request, room, P.ROSTER)
        if request.content_type not in ("text/csv", "application/csv", "text/plain"):
            raise server.json_error(400, "bad_request", "send the roster as text/csv (UTF-8)")
        guests = request.query.get("allow_guests")
        if guests not in (None, "true", "false"):
            raise server.json_error(400, "bad_request", "allow_guests is true or false")
        try:
            server.check_name("room", room)
            entries = roster.parse_csv(await read_csv_body(request))
        except ValueError as exc:
            raise server.json_error(400, "bad_request", str(exc)) from None
        except CommandError as exc:
            raise server.command_error(exc) from None
        allow = None if guests is None else guests == "true"
        await ensure_room(room)
        try:
            state, _ = await rooms.store.update(
                room, lambda s: roster.set_roster(s, entries, allow, by=actor.identity)
            )
        except CommandError as exc:
            raise server.command_error(exc) from None
        return web.json_response(
            {"version": state.version, "entries": len(state.roster), "allow_guests": state.allow_guests}
        )

    async def get_roster(request: web.Request) -> web.Response:
        room = request.match_info["room"]
        await server.authorize(request, room, P.ROSTER)
        state = await room_state(room)
        return web.Response(
            body=roster.to_csv(state.roster.values()),
            content_type="text/csv",
            charset="utf-8",
            headers={"Content-Disposition": f'attachment; filename="roster-{room}.csv"'},
        )

    async def get_links(request: web.Request) -> web.StreamResponse:
        room = request.match_info["room"]
        await server.authorize(request, room, P.ROSTER)
        form = request.query.get("format", "json")
        if form not in ("json", "csv", "html"):
            raise server.json_error(400, "bad_request", "format is json, csv or html")
        state = await room_state(room)
        try:
            links = invitations(state, request.app[server.SECRET_KEY], base_url(request))
        except CommandError as exc:
            raise server.command_error(exc) from None
        if form == "json":
            return web.json_response({"links": links}, headers={"Cache-Control": "no-store"})
        if form == "csv":
            disposition = {"Content-Disposition": f'attachment; filename="invitations-{room}.csv"'}
            return web.Response(
                body=links_csv(links),
                content_type="text/csv",
                charset="utf-8",
                headers=SHEET_HEADERS | disposition,
            )
        return web.Response(text=links_html(state, links), content_type="text/html", headers=SHEET_HEADERS)

    async def put_agenda(request: web.Request) -> web.Response:
        room = request.match_info["room"]
        actor, _ = await server.authorize(request, room, P.AGENDA)
        body = await server.json_body(request)
        if set(body) != {"items"}:
            raise server.json_error(400, "bad_request", 'the body is {"items": [...]}')
        msg = server.validate_command({"type": "set_agenda", "items": body["items"]})
        try:
            server.check_name("room", room)
        except ValueError as exc:
            raise server.json_error(400, "bad_request", str(exc)) from None
        await ensure_room(room)
        try:
            result = await rooms.command(room, actor, "set_agenda", msg)
        except CommandError as exc:
            raise server.command_error(exc) from None
        state = await room_state(room)
        return web.json_response({**result, **agenda.agenda_json(state)})

    async def get_agenda(request: web.Request) -> web.Response:
        room = request.match_info["room"]
        await server.authorize(request, room)
        state = await room_state(room)
        return web.json_response({"version": state.version, **agenda.agenda_json(state)})

    app.router.add_put("/api/rooms/{room}/roster", put_roster)
    app.router.add_get("/api/rooms/{room}/roster", get_roster)
    app.router.add_get("/api/rooms/{room}/roster/links", get_links)
    app.router.add_put("/api/rooms/{room}/agenda", put_agenda)
    app.router.add_get("/api/rooms/{room}/agenda", get_agenda)
