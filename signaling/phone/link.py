"""The gateway's side of the room: who the caller is (the server's dial-in directory), the caller's
place in the meeting (a `member` on a `phone` device over the signaling WebSocket), and the
audio boundary to the room's media.

``RoomAudio`` is the one interface the room's media plugs into: the gateway hands it the caller's
voice as Opus packets (20 ms, 48 kHz, encoded once) and it hands the gateway the Opus packets of
the room's audio slots (the loudest speakers, the same choice every endpoint gets). The plain-RTP
transport of the media core (issue 11) provides it; until then a call in the meeting carries
signaling only and ``SignalingLink.audio`` is None.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

log = logging.getLogger(__name__)


class DirectoryError(Exception):
    """The server could not be asked (down, refused the admin key): not the caller's fault."""


@dataclass(frozen=True, slots=True)
class Admission:
    room: str
    identity: str
    name: str
    token: str


class Directory:
    """Resolves meeting ID + PIN to a room and an identity: ``POST /api/dial-in`` (admin key)."""

    def __init__(self, server: str, admin_key: str, session: aiohttp.ClientSession) -> None:
        self.server = server.rstrip("/")
        self.admin_key = admin_key
        self.session = session

    async def resolve(self, meeting_id: str, pin: str, caller: str) -> Admission | None:
        body = {"meeting_id": meeting_id, "pin": pin, "caller": caller}
        headers = {"Authorization": f"Bearer {self.admin_key}"}
        try:
            async with self.session.post(
                f"{self.server}/api/dial-in",
                json=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=5),
            ) as response:
                if response.status == 404:
                    return None
                if response.status != 200:
                    raise DirectoryError(
                        f"dial-in lookup answered {response.status}: {await response.text()}"
                    )
                data = await response.json()
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            raise DirectoryError(f"dial-in lookup failed: {exc}") from None
        return Admission(data["room"], data["identity"], data["name"], data["token"])


class RoomAudio(Protocol):
    """The room's media for one caller (provided by the plain-RTP transport)."""

    def send(self, opus: bytes) -> None:
        """One 20 ms Opus packet of the caller's voice."""

    def set_receiver(self, receiver: Callable[[int, bytes], None]) -> None:
        """``receiver(slot, opus)`` for every packet of the room's audio slots."""

    async def close(self) -> None: ...


@dataclass(slots=True)
class MemberState:
    """What the room says about the caller, as the gateway follows it."""

    muted: bool = False  # by the chair
    self_muted: bool = False
    floor: bool = False
    hand_raised: bool = False

    @property
    def audible(self) -> bool:
        return not self.muted and not self.self_muted


class SignalingLink:
    """The caller in the meeting, over the signaling WebSocket with the token the server minted."""

    def __init__(self, server: str, admission: Admission, session: aiohttp.ClientSession) -> None:
        self.server = server.rstrip("/")
        self.admission = admission
        self.session = session
        self.state = MemberState()
        self.audio: RoomAudio | None = None
        # (kind, state) for "muted", "unmuted", "floor", "hand"; "ended" with the reason.
        self.on_change: Callable[[str, MemberState], None] = lambda kind, state: None
        self.on_end: Callable[[str], None] = lambda reason: None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0
        self._leaving = False

    async def join(self) -> None:
        url = self.server.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        self._ws = await self.session.ws_connect(f"{url}/ws?token={self.admission.token}", heartbeat=20)
        self._reader = asyncio.get_running_loop().create_task(self._read())
        result = await self.request(
            {
                "type": "join",
                "device": "phone",
                "publish": {"audio": True, "video": False},
                "video_slots": 0,
                "audio_slots": 3,
            }
        )
        you = result.get("you", {})
        self.state.muted = bool(you.get("muted"))
        self.state.self_muted = bool(you.get("self_muted"))
        self.state.hand_raised = you.get("hand_raised_at") is not None
        self.state.floor = result.get("room", {}).get("floor") == self.admission.identity

    async def request(self, message: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        if self._ws is None or self._ws.closed:
            raise ConnectionError("not connected to the meeting")
        self._next_id += 1
        rid = self._next_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        try:
            await self._ws.send_str(json.dumps({**message, "id": rid}))
            return await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(rid, None)

    async def raise_hand(self) -> None:
        await self.request({"type": "raise_hand"})

    async def set_self_muted(self, muted: bool) -> dict[str, Any]:
        return await self.request({"type": "self_mute", "muted": muted})

    async def _read(self) -> None:
        assert self._ws is not None
        reason = "the meeting connection closed"
        try:
            async for frame in self._ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    message = json.loads(frame.data)
                except ValueError:
                    continue
                kind = message.get("type")
                if kind in ("reply", "error") and message.get("id") in self._pending:
                    future = self._pending[message["id"]]
                    if not future.done():
                        if kind == "reply":
                            future.set_result(message.get("result") or {})
                        else:
                            future.set_exception(
                                RuntimeError(f"{message.get('code')}: {message.get('message')}")
                            )
                elif kind == "event":
                    self._event(message.get("event") or {})
                elif kind == "removed":
                    reason = "removed"
                elif kind == "shutdown":
                    reason = "server_shutdown"
                elif kind == "replaced":
                    reason = "replaced"
        except (aiohttp.ClientError, asyncio.CancelledError):
            pass
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError(reason))
            if not self._leaving:
                self.on_end(reason)

    def _event(self, event: dict[str, Any]) -> None:
        me = self.admission.identity
        kind = event.get("kind")
        if kind == "mute" and event.get("identity") == me:
            was = self.state.audible
            self.state.muted = bool(event.get("muted"))
            self.state.self_muted = bool(event.get("self_muted"))
            if was != self.state.audible:
                self.on_change("unmuted" if self.state.audible else "muted", self.state)
        elif kind == "unmute_requested" and event.get("identity") == me:
            self.state.muted = False
        elif kind == "hand" and event.get("identity") == me:
            self.state.hand_raised = bool(event.get("raised"))
            if self.state.hand_raised:
                self.on_change("hand", self.state)
        elif kind == "floor":
            had = self.state.floor
            self.state.floor = event.get("floor") == me
            if self.state.floor:
                self.state.muted = False
                self.state.hand_raised = False
            if self.state.floor and not had:
                self.on_change("floor", self.state)
        elif kind == "participant_left" and event.get("identity") == me and event.get("reason") == "removed":
            pass  # the `removed` message and the close follow

    async def leave(self) -> None:
        self._leaving = True
        if self.audio is not None:
            await self.audio.close()
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(Exception):
                await self.request({"type": "leave"}, timeout=3.0)
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
