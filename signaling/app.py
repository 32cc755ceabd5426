"""The aiohttp application: pages, REST API, WebSocket, and the wiring of store, media, recorder.

REST errors are JSON ``{"error": CODE, "message": ...}`` with the protocol's codes; the API is
described in docs/openapi.yaml.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from conference import __version__, sfu
from conference.comments import ACTIONS as COMMENT_ACTIONS
from conference.config import Settings
from conference.layouts import catalogue_json
from conference.loadtest import relay_baseline
from conference.media import MediaBackend, NullMedia
from conference.placement import NodeInfo, Placement, create_placement
from conference.roles import Permission, Role, can
from conference.room import MAX_TITLE, CommandError, set_title
from conference.store import RoomExists, RoomStore, StoreUnavailable, create_store

from . import clip_control, clips, dialin, floor_timers, logs, metrics, running_order, screens, speaking
from .admission import check_not_removed
from .bodies import body_error
from .broadcast import Broadcasts
from .clerk import create_clerk_app
from .errors import STATUS_FOR_CODE, json_error
from .guard import (
    GUARD_KEY,
    PAGE_HEADERS,
    Guard,
    check_throttle,
    content_security_policy,
    on_response_prepare,
    too_many,
)
from .pages import compose_page
from .protocol import MESSAGES, SCHEMA, ProtocolError, parse_message
from .recording import RecordingControl
from .restore import restore_rooms
from .rooms import Actor, Rooms
from .tokens import (
    DEFAULT_TTL_S,
    PAGE_FOR_ROLE,
    Claims,
    TokenError,
    admin_key_matches,
    check_name,
    mint_token,
    resolve_admin_key,
    resolve_secret,
    verify_token,
)
from .ws import websocket_handler

log = logging.getLogger(__name__)

SETTINGS_KEY = web.AppKey("settings", Settings)
STORE_KEY = web.AppKey("store", RoomStore)
MEDIA_KEY = web.AppKey("media", MediaBackend)
ROOMS_KEY = web.AppKey("rooms", Rooms)
RECORDING_KEY = web.AppKey("recording", RecordingControl)
BROADCASTS_KEY = web.AppKey("broadcasts", Broadcasts)
SECRET_KEY = web.AppKey("secret", str)
ADMIN_KEY_KEY = web.AppKey("admin_key", str)
PLACEMENT_KEY = web.AppKey("placement", Placement)
# Set on a REST command one node carries to the room's node: that one runs it, whatever it thinks.
FORWARDED_HEADER = "X-Conference-Forwarded-By"

PAGES = {
    "/": "index.html",
    "/venue": "venue.html",
    "/phone": "phone.html",
    "/chair": "chair.html",
    "/clerk": "clerk.html",
    "/moderate": "moderate.html",
}
MAX_BODY = 64 * 1024
# Commands the REST API offers to integrations (the chair's; the others act on a live endpoint).
REST_COMMANDS = frozenset(
    {"set_program", "set_title", "mute", "request_unmute", "remove", "grant_floor", "revoke_floor"}
    | {"extend_floor", "set_floor_limits"}
    | {"start_recording", "stop_recording", "set_dial_in", "start_broadcast", "stop_broadcast"}
    | set(COMMENT_ACTIONS)
    | {"play_clip", "pause_clip", "seek_clip", "stop_clip"}
    | {"set_agenda", "next_item", "goto_item", "save_preset", "delete_preset", "allow_guests"}
)


def web_dir() -> Path:
    return Path(str(importlib.resources.files("web")))


# The media cores a server can run (setting ``media_backend``): the SFU, and aiortc's
# decode/re-encode relay that the benchmark compares it with.
MEDIA_BACKENDS: dict[str, Callable[[Settings], MediaBackend]] = {
    "sfu": sfu.create_backend,
    "relay_baseline": relay_baseline.create_backend,
}


def build_media(settings: Settings) -> MediaBackend:
    """The configured media backend, or NullMedia when media is off (signaling only)."""
    if not settings.media:
        return NullMedia()
    return MEDIA_BACKENDS[settings.media_backend](settings)


# --- errors and authorisation ------------------------------------------------------------------


def command_error(exc: CommandError) -> web.HTTPException:
    return json_error(STATUS_FOR_CODE.get(exc.code, 500), exc.code, exc.message)


def bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


async def authorize(
    request: web.Request, room: str | None = None, permission: Permission | None = None
) -> tuple[Actor, Claims | None]:
    """(actor, claims; None for the admin key). The admin key may do everything; a token acts only
    in its own room, only as its role allows, and not once its identity was removed from it."""
    token = bearer(request)
    if token is None:
        raise json_error(401, "unauthorized", "missing Authorization: Bearer <token or admin key>")
    check_throttle(request)
    if admin_key_matches(request.app[ADMIN_KEY_KEY], token):
        return Actor(None, None), None
    try:
        claims = verify_token(request.app[SECRET_KEY], token)
    except TokenError as exc:
        if exc.guess:
            request.app[GUARD_KEY].failed(request)
        raise json_error(401, "unauthorized", exc.reason) from None
    if room is not None and claims.room != room:
        raise json_error(403, "forbidden", "token is for another room")
    if permission is not None and not can(claims.role, permission):
        raise json_error(403, "forbidden", f"role {claims.role} may not do this")
    try:
        await check_not_removed(request.app[STORE_KEY], claims)
    except TokenError as exc:
        raise json_error(403, "forbidden", exc.reason) from None
    return Actor.from_claims(claims), claims


def require_admin(request: web.Request) -> None:
    given = bearer(request)
    if given is not None:
        check_throttle(request)
    if not admin_key_matches(request.app[ADMIN_KEY_KEY], given):
        if given is None:
            raise json_error(401, "unauthorized", "needs the admin key")
        try:
            verify_token(request.app[SECRET_KEY], given)
        except TokenError as exc:  # neither the admin key nor a token: a guess
            if exc.guess:
                request.app[GUARD_KEY].failed(request)
        raise json_error(403, "forbidden", "needs the admin key")


@web.middleware
async def rest_rate_limit(request: web.Request, handler: Any) -> web.StreamResponse:
    """Per credential (or address without one); the admin key (the operator's own integrations,
    such as the telephone gateway) is not limited."""
    if request.path.startswith("/api/"):
        given = bearer(request)
        config = request.config_dict  # the clerk API is a sub-application: keys of the root
        if given is None or not admin_key_matches(config[ADMIN_KEY_KEY], given):
            wait = config[GUARD_KEY].rest_wait(request, given)
            if wait > 0:
                settings = config[SETTINGS_KEY]
                raise too_many(f"more than {settings.rest_rate:g} requests a second", wait)
    return await handler(request)


async def json_body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise json_error(
            413,
            "too_large",
            f"body larger than {MAX_BODY} bytes",
            max_size=MAX_BODY,
            size=request.content_length,
        )
    try:
        data = await request.json()
    except (ValueError, RecursionError):  # RecursionError: nested too deeply for the parser
        raise json_error(400, "bad_json", "body is not valid JSON") from None
    if not isinstance(data, dict):
        raise json_error(400, "bad_json", "body must be a JSON object")
    return data


def validate_command(data: dict[str, Any]) -> dict[str, Any]:
    try:
        return parse_message(json.dumps(data), MAX_BODY)
    except ProtocolError as exc:
        raise json_error(400, exc.code, exc.message) from None


# --- handlers ----------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    rooms = request.app[ROOMS_KEY]
    return web.json_response(
        {
            "status": "shutting_down" if rooms.shutting_down else "ok",
            "version": __version__,
            "uptime_s": round(time.time() - rooms.started_at, 1),
            "connections": len(rooms.sockets),
            "media": rooms.has_media,
        }
    )


async def get_config(request: web.Request) -> web.Response:
    return web.json_response(request.app[SETTINGS_KEY].public_json())


async def get_layouts(request: web.Request) -> web.Response:
    return web.json_response(catalogue_json())


async def get_schema(request: web.Request) -> web.Response:
    return web.json_response(SCHEMA)


async def get_stats(request: web.Request) -> web.Response:
    require_admin(request)
    app = request.app
    store = app[STORE_KEY]
    rooms = app[ROOMS_KEY]
    recorder = app[RECORDING_KEY].service
    room_ids = await store.list_rooms()
    participants = 0
    for room in room_ids:
        state = await store.get(room)
        participants += len(state.participants) if state else 0
    return web.json_response(
        {
            "rooms": len(room_ids),
            "participants": participants,
            "connections": len(rooms.sockets),
            "media": app[MEDIA_KEY].stats(),
            "recorder": recorder.stats() if recorder is not None else None,
            "live": app[BROADCASTS_KEY].stats(),
            "process": process_stats(),
        }
    )


def process_stats() -> dict[str, Any]:
    """What the server process holds (Linux /proc): to see that a meeting gives back what it took
    (tests/test_leak.py, the soak in docs/performance.md)."""
    names = [t.name for t in threading.enumerate()]
    out: dict[str, Any] = {
        "tasks": len(asyncio.all_tasks()),
        "python_threads": len(names),
        # Idle workers of the loop's default executor (asyncio.to_thread) stay, up to its bound.
        "pool_threads": sum(name.startswith("asyncio_") for name in names),
    }
    with contextlib.suppress(OSError):
        out["fds"] = len(os.listdir("/proc/self/fd"))
        out["threads"] = len(os.listdir("/proc/self/task"))
        with open("/proc/self/statm") as statm:
            out["rss_mb"] = round(int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    return out


async def list_rooms(request: web.Request) -> web.Response:
    _, claims = await authorize(request)
    store = request.app[STORE_KEY]
    names = await store.list_rooms()
    if claims is not None:  # a token sees its own room only
        names = [n for n in names if n == claims.room]
    result = []
    for name in names:
        state = await store.get(name)
        if state is not None:
            result.append(
                {
                    "room": name,
                    "version": state.version,
                    "participants": len(state.participants),
                    "program": state.program.to_json(),
                    "recording": state.recording.active,
                }
            )
    return web.json_response({"rooms": result})


async def create_room(request: web.Request) -> web.Response:
    data = await json_body(request)
    room = data.get("room")
    try:
        check_name("room", room)  # type: ignore[arg-type]
    except ValueError as exc:
        raise json_error(400, "bad_request", str(exc)) from None
    unknown = set(data) - {"room", "title", "max_endpoints", "auto_record"}
    if unknown:
        raise json_error(400, "bad_request", f"unknown fields {sorted(unknown)}")
    settings = request.app[SETTINGS_KEY]
    max_endpoints = data.get("max_endpoints", settings.max_endpoints)
    auto_record = data.get("auto_record", settings.auto_record)
    if (
        isinstance(max_endpoints, bool)
        or not isinstance(max_endpoints, int)
        or not 1 <= max_endpoints <= 1000
    ):
        raise json_error(400, "bad_request", "max_endpoints must be an integer from 1 to 1000")
    if not isinstance(auto_record, bool):
        raise json_error(400, "bad_request", "auto_record must be true or false")
    title = data.get("title", "")
    if not isinstance(title, str) or len(title) > MAX_TITLE:
        raise json_error(400, "bad_request", f"title must be a string of at most {MAX_TITLE} characters")
    await authorize(request, room, Permission.SET_PROGRAM)
    try:
        state = await request.app[STORE_KEY].create(
            room, max_endpoints=max_endpoints, auto_record=auto_record
        )
    except RoomExists:
        raise json_error(409, "conflict", f"room {room!r} exists") from None
    if title:
        state, _ = await request.app[STORE_KEY].update(room, lambda s: set_title(s, title))
    return web.json_response(state.client_json(), status=201)


async def get_room(request: web.Request) -> web.Response:
    room = request.match_info["room"]
    await authorize(request, room)
    state = await request.app[STORE_KEY].get(room)
    if state is None:
        raise json_error(404, "not_found", f"no room {room!r}")
    host = await request.app[PLACEMENT_KEY].host_of(room)
    # `node`: the node hosting the room now, the same answer on every node (null: placed nowhere yet).
    return web.json_response({**state.client_json(), "node": host.node_id if host is not None else None})


async def get_nodes(request: web.Request) -> web.Response:
    """The live nodes and their load (one, this process, without Redis)."""
    require_admin(request)
    placement = request.app[PLACEMENT_KEY]
    return web.json_response(
        {"node": placement.node_id, "nodes": [n.to_json() for n in await placement.nodes()]}
    )


async def drain_node(request: web.Request) -> web.Response:
    """POST: the node stops taking new rooms and gives its rooms up as their meetings end (an
    upgrade: stop it once ``GET /api/nodes`` shows it with no rooms); DELETE: it takes rooms again.
    Sent to any node: carried to the node named."""
    require_admin(request)
    placement = request.app[PLACEMENT_KEY]
    node_id = request.match_info["node"]
    draining = request.method == "POST"
    if not placement.multi_node:
        raise json_error(409, "conflict", "one node without Redis: there is no other node to hand rooms to")
    if node_id != placement.node_id:
        if FORWARDED_HEADER in request.headers:
            raise json_error(404, "not_found", f"no live node {node_id!r}")
        target = next((n for n in await placement.nodes() if n.node_id == node_id), None)
        if target is None:
            raise json_error(404, "not_found", f"no live node {node_id!r}")
        return await _forward(request, target, request.method, f"/api/nodes/{node_id}/drain", None)
    await placement.set_draining(draining)
    me = next((n for n in await placement.nodes() if n.node_id == node_id), None)
    body = me.to_json() if me is not None else {"node": node_id, "draining": draining}
    return web.json_response({**body, "draining": draining})


async def _forward(
    request: web.Request, node: NodeInfo, method: str, path: str, msg: dict[str, Any] | None
) -> web.Response:
    """The request carried to ``node`` (its answer as it gave it), with the caller's credentials."""
    headers = {FORWARDED_HEADER: request.app[PLACEMENT_KEY].node_id}
    if (auth := request.headers.get("Authorization")) is not None:
        headers["Authorization"] = auth
    import aiohttp  # the client side, only for this

    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
            http.request(method, f"{node.url}{path}", json=msg, headers=headers) as response,
        ):
            body = await response.read()
            return web.Response(
                body=body, status=response.status, content_type=response.content_type or "application/json"
            )
    except (aiohttp.ClientError, TimeoutError) as exc:
        message = f"node {node.node_id} cannot be reached ({exc}): try again shortly"
        raise json_error(503, "unavailable", message) from None


async def forward_to_host(request: web.Request, room: str, msg: dict[str, Any]) -> web.Response | None:
    """A REST command for a room hosted on another node runs there, where its media is (recording,
    broadcast, clips act on the media core); None: it runs here."""
    placement = request.app[PLACEMENT_KEY]
    if not placement.multi_node or FORWARDED_HEADER in request.headers:
        return None
    host = await placement.host_of(room)
    if host is None or host.node_id == placement.node_id:
        return None
    return await _forward(request, host, "POST", f"/api/rooms/{room}/commands", msg)


async def run_command(request: web.Request, room: str, msg: dict[str, Any]) -> web.Response:
    actor, _ = await authorize(request, room)
    if msg["type"] not in REST_COMMANDS:
        raise json_error(400, "unknown_type", f"{msg['type']!r} is not available over REST")
    if (forwarded := await forward_to_host(request, room, msg)) is not None:
        return forwarded
    try:
        result = await request.app[ROOMS_KEY].command(room, actor, msg["type"], msg)
    except CommandError as exc:
        raise command_error(exc) from None
    return web.json_response(result)


async def put_program(request: web.Request) -> web.Response:
    room = request.match_info["room"]
    await authorize(request, room)  # before looking at the body: unauthenticated callers learn nothing
    body = await json_body(request)
    msg = validate_command({**body, "type": "set_program"})
    return await run_command(request, room, msg)


async def post_command(request: web.Request) -> web.Response:
    room = request.match_info["room"]
    await authorize(request, room)
    msg = validate_command(await json_body(request))
    return await run_command(request, room, msg)


async def post_token(request: web.Request) -> web.Response:
    require_admin(request)
    data = await json_body(request)
    problem = body_error("token", data)
    if problem is not None:
        raise json_error(400, "bad_request", problem)
    ttl = data.get("ttl", DEFAULT_TTL_S)
    if not isinstance(ttl, int):  # the schema's integer lets 60.0 through
        raise json_error(400, "bad_request", "ttl must be an integer number of seconds")
    try:
        token = mint_token(
            request.app[SECRET_KEY],
            data["room"],
            data["identity"],
            data["name"],
            data["role"],
            ttl,
            data.get("admin", False),
        )
    except (ValueError, TypeError) as exc:
        raise json_error(400, "bad_request", str(exc)) from None
    claims = verify_token(request.app[SECRET_KEY], token)
    page = PAGE_FOR_ROLE[Role(claims.role)]
    return web.json_response(
        {"token": token, "expires_at": claims.expires_at, "page": f"/{page}?token={token}"}, status=201
    )


async def post_dial_in(request: web.Request) -> web.Response:
    """The telephone gateway asks who a caller is: meeting ID + PIN -> room, identity, token."""
    require_admin(request)
    data = await json_body(request)
    try:
        admission = await dialin.resolve(request.app[STORE_KEY], request.app[SECRET_KEY], data)
    except ValueError as exc:
        raise json_error(400, "bad_request", str(exc)) from None
    except PermissionError as exc:
        raise json_error(403, "forbidden", str(exc)) from None
    if admission is None:
        raise json_error(404, "not_found", "no meeting with that ID and PIN")
    return web.json_response(admission)


def page_handler(filename: str) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        path = web_dir() / filename
        try:
            document = compose_page(web_dir(), filename)
        except OSError:
            raise web.HTTPNotFound(text=f"{filename} is not installed") from None
        # Pages are opened with ?token=...: never hand that URL to another site as a Referer.
        # Never framed (clickjacking of the chair's console), scripts only from /static.
        headers = {
            "Cache-Control": "no-cache",
            "Referrer-Policy": "no-referrer",
            "Content-Security-Policy": content_security_policy(path),
            **PAGE_HEADERS,
        }
        return web.Response(text=document, content_type="text/html", headers=headers)

    return handler


# --- the application ---


async def _recordings_going_on(store: RoomStore) -> set[str]:
    """With a store shared by several nodes: the recordings its rooms still record. A node that
    starts (systemd restarting the one that died) leaves their parts to the node that takes the room
    up, which goes on with the next part and renders the whole (rendering the part alone now would
    leave the whole unrendered: the same render job would already be done)."""
    if not getattr(store, "shared", False):
        return set()  # one process: its restart closes and renders them (signaling.restore)
    going_on = set()
    with contextlib.suppress(Exception):  # Redis away at start: recover as a single node would
        for name in await store.list_rooms():
            state = await store.get(name)
            if state is not None and state.recording.active and state.recording.recording_id:
                going_on.add(state.recording.recording_id)
    return going_on


def _lifecycle(
    store: RoomStore, media: MediaBackend, recording: RecordingControl, rooms: Rooms, broadcasts: Broadcasts
) -> Callable[[web.Application], AsyncIterator[None]]:
    """Start: the room store, the recorder (recovery of what a crash left, then retention), the
    rooms found in the store, their broadcasts. Stop, in reverse: broadcasts, the recorder, the media
    core, the store."""

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        start = getattr(store, "start", None)
        if start is not None:
            await start()
        service = recording.service
        retention: asyncio.Task[None] | None = None
        if service is not None:
            await service.recover(going_on=await _recordings_going_on(store))
            retention = asyncio.create_task(service.run_retention())
        await restore_rooms(rooms)
        await rooms.placement.start(rooms.load, rooms.hand_over)  # announced: joins may come
        await broadcasts.restore()
        yield
        try:
            await rooms.placement.close()  # its rooms are placed elsewhere at their next join
            await broadcasts.close()
            if retention is not None:
                retention.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await retention
            if service is not None:
                await service.close()
            await media.close()
        finally:
            await store.close()

    return lifecycle


@web.middleware
async def store_unavailable(request: web.Request, handler: Any) -> web.StreamResponse:
    """Redis away: every route answers 503 ``unavailable`` (nothing changed), none a 500."""
    try:
        return await handler(request)
    except StoreUnavailable as exc:
        raise json_error(503, exc.code, exc.message) from None


def create_app(
    settings: Settings, *, media: MediaBackend | None = None, store: RoomStore | None = None
) -> web.Application:
    app = web.Application(
        client_max_size=MAX_BODY, middlewares=[logs.room_context, store_unavailable, rest_rate_limit]
    )
    app[GUARD_KEY] = Guard(settings)
    app.on_response_prepare.append(on_response_prepare)
    store = store if store is not None else create_store(settings)
    media = media if media is not None else build_media(settings)
    recording = RecordingControl(settings, store, media)
    rooms = Rooms(settings, store, media, recording)
    rooms.placement = create_placement(settings, getattr(store, "prefix", "conference"))
    app[PLACEMENT_KEY] = rooms.placement
    broadcasts = Broadcasts(settings, store, media)
    app[BROADCASTS_KEY] = broadcasts
    app[SETTINGS_KEY] = settings
    app[STORE_KEY] = store
    app[MEDIA_KEY] = media
    app[RECORDING_KEY] = recording
    app[ROOMS_KEY] = rooms
    app[SECRET_KEY] = resolve_secret(settings)
    app[ADMIN_KEY_KEY] = resolve_admin_key(settings)

    async def ws(request: web.Request) -> web.WebSocketResponse:
        return await websocket_handler(request, rooms, request.app[SECRET_KEY])

    app.router.add_get("/ws", ws)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/config", get_config)
    app.router.add_get("/api/layouts", get_layouts)
    app.router.add_get("/api/protocol/schema", get_schema)
    app.router.add_get("/api/stats", get_stats)
    app.router.add_get("/api/nodes", get_nodes)
    app.router.add_post("/api/nodes/{node}/drain", drain_node)
    app.router.add_delete("/api/nodes/{node}/drain", drain_node)
    app.router.add_post("/api/tokens", post_token)
    app.router.add_get("/api/rooms", list_rooms)
    app.router.add_post("/api/rooms", create_room)
    app.router.add_get("/api/rooms/{room}", get_room)
    app.router.add_put("/api/rooms/{room}/program", put_program)
    app.router.add_post("/api/rooms/{room}/commands", post_command)
    app.router.add_post("/api/dial-in", post_dial_in)
    for route, filename in PAGES.items():
        app.router.add_get(route, page_handler(filename))
    app.router.add_static("/static", web_dir(), show_index=False, follow_symlinks=False)
    if recording.service is not None:
        clerk = create_clerk_app(
            recording.service, secret=app[SECRET_KEY], admin_key=app[ADMIN_KEY_KEY], store=store
        )
        app.add_subapp("/api/recordings", clerk)
    # They use this module's helpers: imported once they exist.
    from . import comments, debug_memory, heap_trim, live_link, public

    heap_trim.setup(app)
    debug_memory.setup(app)
    public.setup(app)
    live_link.setup(app)
    comments.setup(app)
    screens.setup(app)
    speaking.setup(app)
    deck = clip_control.ClipDeck(rooms, clips.setup(app))
    running_order.setup(app)

    app.cleanup_ctx.append(_lifecycle(store, media, recording, rooms, broadcasts))
    floor_timers.setup(app, store)
    metrics.setup(app)
    # Before the cleanup contexts end: clients are told and their sockets closed first.

    async def tell_clients(app: web.Application) -> None:
        await deck.close()
        await rooms.shutdown()

    app.on_shutdown.append(tell_clients)
    return app


assert set(MESSAGES) >= REST_COMMANDS
