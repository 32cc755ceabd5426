"""The WebSocket endpoint ``/ws``: authenticate, then read, check and dispatch messages.

Every message is answered (a reply or an error with a code); only an authentication failure
closes the socket. See docs/protocol.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from typing import Any

from aiohttp import WSMsgType, web

from conference.media import MediaError
from conference.room import CommandError, Removed
from conference.store import StoreUnavailable

from . import logs, screens
from .admission import REMOVED_REASON, check_not_removed
from .guard import CLOSE_THROTTLED, GUARD_KEY, MAX_UNJOINED_PER_TOKEN
from .protocol import ProtocolError, TokenBucket, close_reason, error, parse_message, reply
from .rooms import CLOSE_MOVED, Actor, Connection, Moved, Rooms
from .tokens import TokenError, check_room, resolve_secret, verify_token

log = logging.getLogger(__name__)

# aiohttp's own guard: far above the protocol limit, so an oversized message gets a `too_large`
# reply from us instead of the socket being dropped by the library.
HARD_FRAME_LIMIT = 1 << 20


def _request_id_of(raw: str) -> Any:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    rid = data.get("id") if isinstance(data, dict) else None
    return rid if isinstance(rid, str | int) and not isinstance(rid, bool) else None


async def websocket_handler(request: web.Request, rooms: Rooms, secret: str) -> web.WebSocketResponse:
    settings = rooms.settings
    ws = web.WebSocketResponse(
        max_msg_size=max(HARD_FRAME_LIMIT, settings.ws_max_message_bytes), heartbeat=20
    )
    await ws.prepare(request)
    guard = request.app[GUARD_KEY]
    if (wait := guard.throttled(request)) > 0:
        reason = f"too many refused tokens from this address: retry in {math.ceil(wait)} s"
        await ws.close(code=CLOSE_THROTTLED, message=close_reason(reason))
        return ws
    try:
        claims = verify_token(secret, request.query.get("token"))
    except TokenError as exc:
        if exc.guess:
            guard.failed(request)
        await ws.close(code=exc.close_code, message=close_reason(exc.reason))
        return ws
    try:
        if "room" in request.query:
            check_room(claims, request.query["room"])
        await check_not_removed(rooms.store, claims)
    except TokenError as exc:
        await ws.close(code=exc.close_code, message=close_reason(exc.reason))
        return ws
    except StoreUnavailable as exc:  # Redis away: "try again later", the page reconnects by itself
        await ws.close(code=1013, message=close_reason(exc.message))
        return ws
    unjoined = sum(1 for c in rooms.sockets if c.claims == claims and not c.joined)
    if unjoined >= MAX_UNJOINED_PER_TOKEN:
        reason = f"{unjoined} connections with this token have not joined: join or close them"
        await ws.close(code=CLOSE_THROTTLED, message=close_reason(reason))
        return ws
    if rooms.shutting_down:
        await ws.close(code=1001, message=b"server shutting down")
        return ws
    logs.set_context(claims.room, claims.identity)  # every line this socket's handling logs names them
    conn = Connection(ws, claims, max_queued_bytes=settings.ws_max_queued_bytes, transport=request.transport)
    rooms.sockets.add(conn)
    bucket = TokenBucket(settings.ws_rate, settings.ws_burst)
    try:
        async for frame in ws:
            if frame.type == WSMsgType.TEXT:
                wait = bucket.take()
                if wait > 0:
                    conn.send(
                        error(
                            _request_id_of(frame.data)
                            if len(frame.data) <= settings.ws_max_message_bytes
                            else None,
                            "rate_limited",
                            f"more than {settings.ws_rate:g} messages a second",
                            retry_after=round(wait, 3),
                        )
                    )
                    continue
                await handle_message(rooms, conn, frame.data)
            elif frame.type == WSMsgType.BINARY:
                conn.send(error(None, "bad_json", "binary frames are not accepted: send JSON text"))
            elif frame.type == WSMsgType.ERROR:
                break
    finally:
        rooms.sockets.discard(conn)
        # Shielded: the handler is cancelled when its peer goes away (handler_cancellation), and
        # the place must still be kept, which may wait for the room store's write.
        await asyncio.shield(_gone(rooms, conn))
    return ws


async def _gone(rooms: Rooms, conn: Connection) -> None:
    if conn.renewer is not None:
        conn.renewer.cancel()
    await rooms.disconnected(conn)
    await conn.finish(timeout=1.0)


async def handle_message(rooms: Rooms, conn: Connection, raw: str) -> None:
    rid: Any = None
    try:
        msg = parse_message(raw, rooms.settings.ws_max_message_bytes)
        rid = msg.get("id")
        type_ = msg["type"]
        if type_ == "join":
            result = await rooms.join(conn, msg)
            conn.send(reply(rid, result))
            if conn.renewer is None or conn.renewer.done():
                secret, ttl = resolve_secret(rooms.settings), rooms.settings.session_ttl_s
                conn.renewer = asyncio.get_running_loop().create_task(
                    screens.hand_out_sessions(conn, secret, ttl)
                )
            await open_media(rooms, conn, msg)
            return
        conn.send(reply(rid, await dispatch(rooms, conn, type_, msg)))
    except ProtocolError as exc:
        conn.send(error(exc.request_id, exc.code, exc.message, **exc.extra))
    except Moved as exc:
        # The room lives on another node: the client opens a socket there and joins again.
        conn.send(error(rid, exc.code, exc.message, node=exc.node, url=exc.url))
        conn.close(CLOSE_MOVED, f"the room is hosted on node {exc.node}")
    except Removed as exc:
        # Removed after this socket opened (1a): refused as at connect, and the socket goes.
        conn.send(error(rid, exc.code, exc.message))
        conn.close(4403, REMOVED_REASON)
    except (CommandError, MediaError) as exc:
        conn.send(error(rid, exc.code, exc.message))
    except Exception:
        log.exception("internal error handling a message from %s/%s", conn.room, conn.identity)
        conn.send(error(rid, "internal", "internal server error; the room goes on"))


async def open_media(rooms: Rooms, conn: Connection, msg: dict[str, Any]) -> None:
    """After the join reply: a failure here is pushed with id null (the join itself succeeded)."""
    try:
        await rooms.open_media(conn, msg)
    except MediaError as exc:
        conn.send(error(None, exc.code, f"media session could not start: {exc.message}"))
    except Exception:
        log.exception("media session of %s/%s could not start", conn.room, conn.identity)
        conn.send(error(None, "internal", "media session could not start; signaling goes on"))


async def dispatch(rooms: Rooms, conn: Connection, type_: str, msg: dict[str, Any]) -> dict[str, Any]:
    if type_ == "ping":
        return {"pong": True, "time": time.time()}
    if type_ == "leave":
        await rooms.leave(conn)
        return {}
    if not conn.joined:
        raise CommandError("not_joined", f"send join before {type_}")
    if type_ == "sync":
        return await rooms.sync(conn.room, msg["since"])
    if type_ in ("answer", "candidate"):
        if conn.session is None:
            raise CommandError("conflict", "no media session: there is no offer to answer")
        try:
            if type_ == "answer":
                await conn.session.set_answer(msg["sdp"])
            else:
                await conn.session.add_candidate(msg["candidate"])
        except MediaError:
            raise
        except Exception as exc:  # aiortc raises ValueError & co. on SDP it cannot apply
            raise MediaError("bad_sdp", f"{type_} could not be applied: {exc}") from None
        return {}
    if type_ in screens.SCREEN_COMMANDS:
        secret = resolve_secret(rooms.settings)
        return await screens.command(rooms, secret, conn.room, Actor.from_claims(conn.claims), type_, msg)
    return await rooms.command(conn.room, Actor.from_claims(conn.claims), type_, msg)
