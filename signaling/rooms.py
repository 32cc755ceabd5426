"""The rooms as the server runs them: connections, permissions, commands, reconnects.

``Rooms`` sits between the transports (the WebSocket in ``signaling.ws`` and the REST API in
``signaling.app``) and the room store. It checks every command against the sender's role, runs
it on the store, and fans the store's events out to the room's sockets, the media backend and the
recorder. Room state itself lives only in the store, so with the Redis store several processes
share rooms; what is kept here is per process: open sockets, media sessions, grace timers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import WSCloseCode

from conference import agenda, roster, speaking
from conference import room as room_commands
from conference.comments import ACTIONS as COMMENT_ACTIONS
from conference.config import Settings
from conference.layouts import MAX_SLOTS, catalogue_json
from conference.media import MediaBackend, NullMedia, SessionOptions
from conference.placement import Load, LocalPlacement, NodeInfo, Placement
from conference.roles import Permission, Role, can, permissions, publishes, sends_no_media
from conference.room import CommandError, Event, Participant, Removed, RoomState
from conference.store import RoomStore

from . import dialin, plain_media
from .connection import Connection
from .protocol import MAX_AUDIO_SLOTS, PROTOCOL_VERSION, error
from .recording import RecordingControl
from .tokens import Claims, TokenError, resolve_secret
from .turn import ice_servers_for

log = logging.getLogger(__name__)

P = Permission
CLOSE_REPLACED = 4409
CLOSE_REMOVED = 4410
CLOSE_MOVED = 4307  # after a `moved` error or message: the room is hosted on another node


class Moved(CommandError):
    """The room lives on another node: the client goes there (docs/protocol.md, "Several nodes")."""

    def __init__(self, node: str, url: str) -> None:
        super().__init__("moved", f"room is hosted on node {node}: connect to {url}")
        self.node = node
        self.url = url


# Commands that change the room, and the permission each needs. `None`: any publisher.
COMMAND_PERMISSIONS: dict[str, Permission | None] = {
    "set_program": P.SET_PROGRAM,
    "set_title": P.SET_PROGRAM,
    "mute": P.MUTE,
    "request_unmute": P.MUTE,
    "remove": P.REMOVE,
    "grant_floor": P.FLOOR_CONTROL,
    "revoke_floor": P.FLOOR_CONTROL,
    "extend_floor": P.FLOOR_CONTROL,
    "set_floor_limits": P.FLOOR_CONTROL,
    "start_recording": P.RECORDING_CONTROL,
    "stop_recording": P.RECORDING_CONTROL,
    "start_broadcast": P.BROADCAST_CONTROL,
    "stop_broadcast": P.BROADCAST_CONTROL,
    "set_dial_in": P.DIAL_IN,
    "set_agenda": P.AGENDA,
    "next_item": P.AGENDA,
    "goto_item": P.AGENDA,
    "save_preset": P.AGENDA,
    "delete_preset": P.AGENDA,
    "allow_guests": P.ROSTER,
    "raise_hand": P.REQUEST_FLOOR,
    "lower_hand": P.REQUEST_FLOOR,
    "release_floor": P.REQUEST_FLOOR,
    "self_mute": None,
    "publish": None,
    # The public's comments (signaling.comments, run through Rooms.extensions).
    **dict.fromkeys(COMMENT_ACTIONS, P.MODERATE_COMMENTS),
    # The clip player's (signaling.clip_control, through Rooms.extensions).
    "play_clip": P.SET_PROGRAM,
    "pause_clip": P.SET_PROGRAM,
    "seek_clip": P.SET_PROGRAM,
    "stop_clip": P.SET_PROGRAM,
}
# The ones that act on the sender itself: only a participant in the room can send them.
SELF_COMMANDS = frozenset({"raise_hand", "lower_hand", "release_floor", "self_mute", "publish"})


@dataclass(frozen=True, slots=True)
class Actor:
    """Who sends a command: a participant's token, or the admin key (identity None)."""

    identity: str | None
    role: Role | None
    issued_at: int | None = None  # of the token: refused once the identity is removed after it

    @classmethod
    def from_claims(cls, claims: Claims) -> Actor:
        return cls(claims.identity, claims.role, claims.issued_at)

    def may(self, command: str) -> bool:
        if self.role is None:  # the admin key: every room command except the self ones
            return command not in SELF_COMMANDS
        needed = COMMAND_PERMISSIONS[command]
        return publishes(self.role) if needed is None else can(self.role, needed)


def command_function(actor: Actor, command: str, msg: dict[str, Any]) -> Callable[[RoomState], list[Event]]:
    """The pure room command for a request (recording and remove are handled by the caller)."""
    by = actor.identity
    me = actor.identity or ""
    match command:
        case "set_program":
            return lambda s: room_commands.set_program(s, msg["layout"], list(msg["slots"]), by=by)
        case "set_title":
            return lambda s: room_commands.set_title(s, msg["title"], by=by)
        case "mute":
            return lambda s: room_commands.mute(s, msg["identity"], msg["muted"], by=by)
        case "request_unmute":
            return lambda s: room_commands.request_unmute(s, msg["identity"], by=by)
        case "remove":
            return lambda s: room_commands.remove(s, msg["identity"])
        case "grant_floor":
            return lambda s: room_commands.grant_floor(
                s, msg.get("identity"), by=by, limit_s=msg.get("limit_s")
            )
        case "revoke_floor":
            return lambda s: room_commands.revoke_floor(s, by=by)
        case "extend_floor":
            return lambda s: speaking.extend_floor(s, msg["by_s"], by=by)
        case "set_floor_limits":
            return lambda s: speaking.set_floor_limits(
                s,
                msg.get("default_s"),
                msg.get("action", "none"),
                msg.get("grace_s", 10),
                by=by,
                by_kind=msg.get("by_kind"),
            )
        case "raise_hand":
            return lambda s: room_commands.raise_hand(s, me)
        case "lower_hand":
            return lambda s: room_commands.lower_hand(s, me)
        case "release_floor":
            return lambda s: room_commands.release_floor(s, me)
        case "self_mute":
            return lambda s: room_commands.self_mute(s, me, msg["muted"])
        case "publish":
            return lambda s: room_commands.update_publishing(s, me, msg["audio"], msg["video"])
        case "start_broadcast":
            return lambda s: room_commands.start_broadcast(s, by=by)
        case "stop_broadcast":
            return lambda s: room_commands.stop_broadcast(s, by=by)
        case "set_dial_in":  # prepared by signaling.dialin: hashes, never the PINs
            return lambda s: room_commands.set_dial_in(
                s, msg["meeting_id"], msg["pin_hash"], msg.get("members")
            )
        # The running order (conference.agenda, conference.roster; docs/protocol.md).
        case "set_agenda":
            return lambda s: agenda.set_agenda(s, msg["items"], by=by)
        case "next_item":
            return lambda s: agenda.next_item(s, bool(msg.get("take")), by=by)
        case "goto_item":
            return lambda s: agenda.goto_item(s, msg["index"], bool(msg.get("take")), by=by)
        case "save_preset":
            preset = {"layout": msg["layout"], "slots": msg.get("slots", [])}
            return lambda s: agenda.save_preset(s, msg["name"], preset, by=by)
        case "delete_preset":
            return lambda s: agenda.delete_preset(s, msg["name"], by=by)
        case "allow_guests":
            return lambda s: roster.set_allow_guests(s, msg["allowed"], by=by)
    raise CommandError("unknown_type", f"unknown command {command!r}")


class Rooms:
    def __init__(
        self,
        settings: Settings,
        store: RoomStore,
        media: MediaBackend,
        recording: RecordingControl,
    ) -> None:
        self.settings = settings
        self.store = store
        self.media = media
        self.recording = recording
        self.connections: dict[str, dict[str, Connection]] = {}  # joined, by room and identity
        self.sockets: set[Connection] = set()  # every open socket, joined or not
        # The last `speakers` message per room: the media core announces only changes, so an
        # endpoint joining while someone speaks would otherwise show nobody speaking.
        self.last_speakers: dict[str, dict[str, Any]] = {}
        self._grace: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        # Commands another module carries out (room, actor, message) -> result, checked here first.
        self.extensions: dict[str, Callable[[str, Actor, dict[str, Any]], Awaitable[dict[str, Any]]]] = {}
        self.shutting_down = False
        self.started_at = time.time()
        # Which node hosts each room (conference.placement); one process: every room here.
        self.placement: Placement = LocalPlacement(settings.node_id or "local", settings.public_url)
        self._taking_up: dict[str, asyncio.Task[None]] = {}
        store.subscribe(self._on_events)
        media.set_emitter(self.emit)

    # --- fan-out ---------------------------------------------------------------------------

    def emit(self, room: str, identity: str | None, message: dict[str, Any]) -> None:
        """For the media backend: send to one participant, or to everyone in the room."""
        message = {"v": PROTOCOL_VERSION, **message}
        conns = self.connections.get(room, {})
        if identity is None and message.get("type") == "speakers":
            self.last_speakers[room] = message
        if identity is None:
            text = json.dumps(message)
            for conn in list(conns.values()):
                conn.send_text(text)
        elif (conn := conns.get(identity)) is not None:
            conn.send(message)

    async def _on_events(self, room: str, events: list[Event], state: RoomState) -> None:
        # Queue to the sockets first, before any await, so every socket sees events in version order.
        conns = self.connections.get(room, {})
        for event in events:
            text = json.dumps({"v": PROTOCOL_VERSION, "type": "event", "event": event})
            for conn in list(conns.values()):
                conn.send_text(text)
        for event in events:
            if event["kind"] == "participant_left":
                await self._detach(room, event["identity"], event.get("reason", "left"))
        try:
            await self.media.room_changed(room, events, state)
        except Exception:
            log.exception("media backend failed on events of room %s", room)
        await self.recording.on_events(room, events, state)
        if not state.participants:
            self.last_speakers.pop(room, None)
        if state.recording.active and not state.participants:
            self._spawn(self._stop_recording_quietly(room))

    async def _detach(self, room: str, identity: str, reason: str) -> None:
        """A participant left the room (maybe decided in another process): drop its socket here."""
        conn = self.connections.get(room, {}).get(identity)
        if conn is None:
            return
        del self.connections[room][identity]
        conn.joined = False
        await conn.close_session()
        if reason == "removed":
            conn.send({"v": PROTOCOL_VERSION, "type": "removed", "reason": "removed by the chair"})
            conn.close(CLOSE_REMOVED, "removed by the chair")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _stop_recording_quietly(self, room: str) -> None:
        # The last participant left: a recording of an empty room would grow forever.
        with contextlib.suppress(CommandError):
            await self.recording.stop(room)

    # --- join, leave, disconnect -------------------------------------------------------------

    # --- nodes (conference.placement) ---------------------------------------------------------

    def load(self) -> Load:
        """What the placement announces for this node."""
        busy = tuple(room for room, conns in self.connections.items() if conns)
        return Load(endpoints=self.connection_count(), rooms=len(busy), busy=busy)

    async def _host(self, room: str) -> None:
        """Before the first join of a room on this node: the room may come from a node that died,
        whose participants the store still lists as connected and whose recording is running
        nowhere. They are picked up as after a restart (signaling.restore): places kept for the
        grace, the recording goes on here as its next part. Joins wait for it (one task a room)."""
        if not self.placement.multi_node or self.connections.get(room):
            return  # a room with connections here has been taken up (taking up again is harmless)
        task = self._taking_up.get(room)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._take_up(room))
            self._taking_up[room] = task
            task.add_done_callback(lambda _t: self._taking_up.pop(room, None))
        await asyncio.shield(task)

    async def _take_up(self, room: str) -> None:
        state = await self.store.get(room)
        if state is None:
            return
        here = self.connections.get(room, {})
        stale = [i for i, p in state.participants.items() if p.connected and i not in here]
        service = self.recording.service
        orphaned = (
            state.recording.active
            and state.recording.recording_id is not None
            and (service is None or not service.active(state.recording.recording_id))
        )
        if not stale and not orphaned:
            return
        from .restore import restore_room  # it imports this module

        log.info("room %s taken up on this node (%d stale participants)", room, len(stale))
        await restore_room(self, room, next_part=True)

    async def hand_over(self, room: str, host: NodeInfo | None) -> None:
        """Another node holds the room now (this one's lease lapsed): send its sockets there; a
        recording this node was writing goes on there as its next part (this part closed here)."""
        service = self.recording.service
        if service is not None and await service.hand_over(room) is not None:
            self.media.set_recorder(room, None)
        for conn in list(self.connections.get(room, {}).values()):
            if host is not None:
                conn.send({"v": PROTOCOL_VERSION, "type": "moved", "node": host.node_id, "url": host.url})
            conn.close(CLOSE_MOVED, "the room moved to another node")

    async def nodes_json(self) -> list[str]:
        if not self.placement.multi_node:
            return []
        return [n.url for n in await self.placement.nodes()]

    async def join(self, conn: Connection, msg: dict[str, Any]) -> dict[str, Any]:
        if conn.joined:
            raise CommandError("already_joined", "this connection has already joined")
        claims = conn.claims
        placed = await self.placement.place(claims.room)
        if not placed.here:
            raise Moved(placed.node_id, placed.url)
        await self._host(claims.room)
        role = claims.role
        plain_media.plain_offer(self, claims, msg)  # a plain-RTP join refused here changes nothing
        default_device = "phone" if role is Role.MEMBER else "venue"
        device = msg.get("device", default_device)
        wants = msg.get("publish", {})
        # A member on a phone starts with the camera off; venues and the chair send both.
        publish_audio = bool(wants.get("audio", True)) and can(role, P.PUBLISH_AUDIO)
        publish_video = bool(wants.get("video", role is not Role.MEMBER)) and can(role, P.PUBLISH_VIDEO)
        await self.store.create(
            claims.room,
            max_endpoints=self.settings.max_endpoints,
            auto_record=self.settings.auto_record,
            exist_ok=True,
        )
        participant = Participant(
            identity=claims.identity,
            name=claims.name,
            role=role,
            device=device,
            publish_audio=publish_audio,
            publish_video=publish_video,
            kind=claims.kind,
            sector=claims.sector,
        )

        def admit_and_join(s: RoomState) -> list[Event]:
            roster.admit(s, participant)  # the roster's say (or a guest mark, or a refusal)
            return room_commands.join(s, participant, issued_at=claims.issued_at)

        # Register before the join so this socket gets every event from the join on: no gap.
        room_conns = self.connections.setdefault(claims.room, {})
        old = room_conns.get(claims.identity)
        room_conns[claims.identity] = conn
        try:
            state, _ = await self.store.update(claims.room, admit_and_join)
        except BaseException:
            if room_conns.get(claims.identity) is conn:
                if old is not None:
                    room_conns[claims.identity] = old
                else:
                    del room_conns[claims.identity]
            raise
        conn.joined = True
        grace = self._grace.pop((claims.room, claims.identity), None)
        if grace is not None:
            grace.cancel()
        if old is not None and old is not conn:
            old.joined = False
            old.send({"v": PROTOCOL_VERSION, "type": "replaced"})
            old.close(CLOSE_REPLACED, "replaced by a newer connection")
            await old.close_session()
        if state.auto_record and not state.recording.active:
            with contextlib.suppress(CommandError):  # another join may have started it just now
                state, _ = await self.recording.start(claims.room)
        me = state.participants.get(claims.identity)
        log.info("joined as %s on a %s device", role, (me or participant).device)
        return {
            "protocol": PROTOCOL_VERSION,
            "you": me.to_json() if me else participant.to_json(),
            "permissions": sorted(str(p) for p in permissions(role)),
            # The server's clock, so a page shows the speaking timer's remaining time rightly.
            "server_time": time.time(),
            "room": state.client_json(),
            "ice_servers": ice_servers_for(self.settings, claims.identity),
            "ice_transport_policy": self.settings.ice_transport_policy,
            "layouts": catalogue_json(),
            # The public page's short link: venue screens show its QR code between sessions.
            "public_url": self.public_path(claims.room),
            # Several nodes: where to reconnect when this one is gone (its room moves to another).
            "node": self.placement.node_id,
            "nodes": await self.nodes_json(),
            "media": self.has_media and not sends_no_media(role),
            "limits": {
                "max_message_bytes": self.settings.ws_max_message_bytes,
                "rate": self.settings.ws_rate,
                "burst": self.settings.ws_burst,
                "max_endpoints": state.max_endpoints,
                "reconnect_grace_s": self.settings.reconnect_grace_s,
            },
        }

    def public_path(self, room: str) -> str:
        from .public import public_code  # it imports the application, which imports this module

        return f"/w/{public_code(resolve_secret(self.settings), room)}"

    @property
    def has_media(self) -> bool:
        return self.settings.media and type(self.media) is not NullMedia

    async def open_media(self, conn: Connection, msg: dict[str, Any]) -> None:
        """After the join reply: start the endpoint's media session and push the server's offer."""
        role = conn.claims.role
        if not self.has_media or sends_no_media(role) or not conn.joined:
            return
        if (plain := plain_media.plain_offer(self, conn.claims, msg)) is not None:
            await plain_media.open_plain(self, conn, plain)
            return
        device = msg.get("device", "phone" if role is Role.MEMBER else "venue")
        options = SessionOptions(
            device=device,
            # The m-lines cover everything the role may publish, so a phone can switch its camera
            # on later without renegotiating; what is actually sent is the `publish` state.
            publish_audio=can(role, P.PUBLISH_AUDIO),
            publish_video=can(role, P.PUBLISH_VIDEO),
            video_slots=min(MAX_SLOTS, msg.get("video_slots", 1 if device == "phone" else MAX_SLOTS)),
            audio_slots=min(MAX_AUDIO_SLOTS, msg.get("audio_slots", 3)),
            previews=can(role, P.RECEIVE_ALL_FEEDS),
        )
        state = await self.store.get(conn.room)
        if state is None:
            return
        await conn.close_session()
        session = await self.media.open_session(conn.room, conn.identity, options, state)
        if not conn.joined:  # replaced or removed while the session opened
            await session.close()
            return
        conn.session = session
        offer = await session.create_offer()
        if offer.get("sdp") is not None:
            conn.send({"v": PROTOCOL_VERSION, "type": "offer", **offer})
        if (speakers := self.last_speakers.get(conn.room)) is not None:
            conn.send(speakers)

    async def leave(self, conn: Connection) -> None:
        if not conn.joined:
            return
        conn.joined = False
        if self.connections.get(conn.room, {}).get(conn.identity) is conn:
            del self.connections[conn.room][conn.identity]
        await conn.close_session()
        log.info("left")
        with contextlib.suppress(CommandError):
            await self.store.update(conn.room, lambda s: room_commands.leave(s, conn.identity, "left"))

    async def disconnected(self, conn: Connection) -> None:
        """The socket closed without `leave`: keep the place for the grace period."""
        await conn.close_session()
        if not conn.joined or self.shutting_down:
            return
        conn.joined = False
        room, identity = conn.room, conn.identity
        if self.connections.get(room, {}).get(identity) is not conn:
            return  # already replaced by a newer connection
        del self.connections[room][identity]
        log.info("disconnected: the place is kept for %.0f s", self.settings.reconnect_grace_s)
        with contextlib.suppress(CommandError):
            await self.store.update(room, lambda s: room_commands.set_connected(s, identity, False))
        self.keep_place(room, identity)

    def keep_place(self, room: str, identity: str) -> None:
        """A disconnected participant keeps its place for the grace period, then leaves."""
        key = (room, identity)
        if (old := self._grace.pop(key, None)) is not None:
            old.cancel()
        self._grace[key] = asyncio.get_running_loop().create_task(self._expire(room, identity))

    async def _expire(self, room: str, identity: str) -> None:
        await asyncio.sleep(self.settings.reconnect_grace_s)
        self._grace.pop((room, identity), None)
        if identity in self.connections.get(room, {}):
            return

        def timeout(state: RoomState) -> list[Event]:
            p = state.participants.get(identity)
            # Back in another process, or already gone: nothing to do.
            if p is None or p.connected:
                return []
            return room_commands.leave(state, identity, "timeout")

        with contextlib.suppress(CommandError):
            await self.store.update(room, timeout)

    # --- commands ------------------------------------------------------------------------------

    async def command(self, room: str, actor: Actor, command: str, msg: dict[str, Any]) -> dict[str, Any]:
        if command not in COMMAND_PERMISSIONS:
            raise CommandError("unknown_type", f"unknown command {command!r}")
        if not actor.may(command):
            who = f"role {actor.role}" if actor.role else "the admin key"
            raise CommandError("forbidden", f"{who} may not {command.replace('_', ' ')}")
        current = await self.store.get(room)
        if current is None:
            raise CommandError("not_found", f"no room {room!r}")
        if (
            actor.identity is not None
            and actor.issued_at is not None
            and current.is_removed(actor.identity, actor.issued_at)
        ):
            raise Removed()
        if (extension := self.extensions.get(command)) is not None:
            return await extension(room, actor, msg)
        if command == "start_recording":
            state, recording_id = await self.recording.start(room)
            return {"version": state.version, "recording_id": recording_id}
        if command == "stop_recording":
            state, stopped_id = await self.recording.stop(room)
            return {"version": state.version, "recording_id": stopped_id}
        if command == "remove":
            target = msg["identity"]
            if target not in current.participants:
                raise CommandError("not_found", f"no participant {target!r} in room {room!r}")
        if command == "set_dial_in":
            msg = await dialin.prepare(self.store, resolve_secret(self.settings), room, msg)
        state, _ = await self.store.update(room, command_function(actor, command, msg))
        result: dict[str, Any] = {"version": state.version}
        if command == "set_program":
            result["program"] = state.program.to_json()
        elif command == "grant_floor":
            result["floor"] = state.floor
        if command in ("grant_floor", "extend_floor"):
            result["floor_timer"] = state.to_json()["floor_timer"]
        elif command == "set_floor_limits":
            result["floor_limits"] = state.to_json()["floor_limits"]
        elif command in ("raise_hand", "lower_hand"):
            result["floor_queue"] = state.floor_queue
        elif command == "set_dial_in":
            result["dial_in"] = state.dial_in.public_json()
        elif command in ("start_broadcast", "stop_broadcast"):
            result["broadcast"] = state.to_json()["broadcast"]
        elif command in ("next_item", "goto_item"):
            item = state.agenda[state.agenda_index or 0]
            preset = item.get("preset")
            result |= {
                "index": state.agenda_index,
                "title": item["title"],
                "program": state.program.to_json(),
            }
            result["next_program"] = None if preset is None else agenda.resolve(state, preset)
        return result

    async def sync(self, room: str, since: int) -> dict[str, Any]:
        state = await self.store.get(room)
        if state is None:
            raise CommandError("not_found", f"no room {room!r}")
        if since > state.version:
            return {"version": state.version, "room": state.client_json()}
        events = await self.store.events_since(room, since)
        if events is None:
            return {"version": state.version, "room": state.client_json()}
        return {"version": state.version, "events": events}

    # --- shutdown ------------------------------------------------------------------------------

    def connection_count(self) -> int:
        return sum(len(c) for c in self.connections.values())

    async def shutdown(self, reason: str = "server shutting down") -> None:
        """Tell every client, close every socket (1001), bounded by settings.shutdown_timeout_s."""
        self.shutting_down = True
        for task in list(self._grace.values()):
            task.cancel()
        self._grace.clear()
        conns = list(self.sockets)
        self.connections.clear()
        for conn in conns:
            conn.send({"v": PROTOCOL_VERSION, "type": "shutdown", "reason": reason})
            conn.close(WSCloseCode.GOING_AWAY, reason)
        timeout = max(0.5, self.settings.shutdown_timeout_s / 2)
        if conns:
            await asyncio.wait(
                [asyncio.ensure_future(c.finish(timeout)) for c in conns], timeout=timeout + 0.5
            )
        for conn in conns:
            await conn.close_session()
        for task in list(self._tasks):
            task.cancel()


def error_for(exc: CommandError | TokenError, request_id: Any = None) -> dict[str, Any]:
    if isinstance(exc, TokenError):
        return error(request_id, "unauthorized" if exc.status == 401 else "forbidden", exc.reason)
    return error(request_id, exc.code, exc.message)
