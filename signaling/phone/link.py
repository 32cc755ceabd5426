"""The gateway's side of the room: who the caller is (the server's dial-in directory), the caller's
place in the meeting (a `member` on a `phone` device over the signaling WebSocket), and the
audio boundary to the room's media.

``RoomAudio`` is the one interface the room's media plugs into: the gateway hands it the caller's
voice as Opus packets (20 ms, 48 kHz, encoded once) and it hands the gateway the Opus packets of
the room's audio slots (the loudest speakers, the same choice every endpoint gets).
``PlainRoomAudio`` is it over the media core's plain-RTP transport: the caller joins with
``"transport": "plain"`` and the offer of a UDP socket on the loopback, the server answers with its
port and the slots' SSRCs (docs/protocol.md, "A plain-RTP participant"). A server without media
refuses that; the call is then in the meeting by signaling only (``SignalingLink.audio`` is None).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from conference.sfu.packet import URI_AUDIO_LEVEL

from .rtp import parse_rtp

log = logging.getLogger(__name__)
_RTP = struct.Struct("!BBHII")
_LEVEL_EXT = struct.Struct("!HHBBxx")
LEVEL_EXT_ID = 1


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

    async def open(self) -> dict[str, Any]:
        """Get ready to receive; the media offer the join carries (``plain``)."""

    def connect(self, answer: dict[str, Any]) -> None:
        """The server's ``transport`` answer: where to send, which SSRC is which slot."""

    def slot_of(self, mid: str) -> int | None:
        """The index of the audio slot a ``slots`` message names."""

    def send(self, opus: bytes, level: int | None = None) -> None:
        """One 20 ms Opus packet of the caller's voice, with its RFC 6464 level when known."""

    def set_receiver(self, receiver: Callable[[int, bytes], None]) -> None:
        """``receiver(slot, opus)`` for every packet of the room's audio slots."""

    async def close(self) -> None: ...


OPUS_PT = 111
OPUS_STEP = 960  # RTP timestamp units (48 kHz) per 20 ms packet


class _Socket(asyncio.DatagramProtocol):
    def __init__(self, owner: PlainRoomAudio) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        self.owner._datagram(data, addr)


class PlainRoomAudio:
    """``RoomAudio`` over the server's plain-RTP transport: one UDP socket on this machine (RTP and
    RTCP multiplexed), the caller's Opus sent with our SSRC, sequence numbers and timestamps, the
    slots' streams told apart by the SSRCs of the answer. Only datagrams from the server's port
    are taken. The server measures the caller's loudness from the Opus itself (no audio-level
    extension needed), so the loudest-speaker choice can pick the caller like any endpoint."""

    def __init__(self, host: str = "127.0.0.1", slots: int = 3) -> None:
        self.host = host
        self.slots = slots
        self.ssrc = secrets.randbits(32)
        self.server: tuple[str, int] | None = None
        self.mids: list[str] = []
        self._slot_of_ssrc: dict[int, int] = {}
        self._payload_types: set[int] = set()
        self._receiver: Callable[[int, bytes], None] = lambda slot, opus: None
        self._socket: asyncio.DatagramTransport | None = None
        self._seq = secrets.randbits(16)
        self._ts0 = secrets.randbits(32)
        self._start: float | None = None
        self._last_frame = -1
        self.packets_in = self.packets_out = self.dropped_foreign = 0

    async def open(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        self._socket, _ = await loop.create_datagram_endpoint(
            lambda: _Socket(self), local_addr=(self.host, 0)
        )
        host, port = self._socket.get_extra_info("sockname")[:2]
        return {
            "address": [host, port],
            "publish": {"audio": [{"name": "opus", "payload_type": OPUS_PT, "clock_rate": 48000}]},
            "audio_slots": self.slots,
            # The caller's level goes with each packet (RFC 6464): the server hears who speaks
            # without decoding the gateway's Opus.
            "extensions": {URI_AUDIO_LEVEL: LEVEL_EXT_ID},
        }

    def connect(self, answer: dict[str, Any]) -> None:
        host, port = answer["address"]
        self.server = (str(host), int(port))
        audio = answer["slots"]["audio"]
        self.mids = [slot["mid"] for slot in audio]
        self._slot_of_ssrc = {int(slot["ssrc"]): i for i, slot in enumerate(audio)}
        self._payload_types = {
            int(c["payload_type"]) for slot in audio for c in slot["codecs"] if c["name"] == "opus"
        }

    def slot_of(self, mid: str) -> int | None:
        return self.mids.index(mid) if mid in self.mids else None

    def set_receiver(self, receiver: Callable[[int, bytes], None]) -> None:
        self._receiver = receiver

    def send(self, opus: bytes, level: int | None = None) -> None:
        """One 20 ms Opus packet; ``level``: its RFC 6464 audio level (0 loudest .. 127 silence)."""
        socket, server = self._socket, self.server
        if socket is None or server is None or socket.is_closing():
            return
        # Timestamps follow the clock, so a pause (the caller muted) is a gap, not time squeezed
        # out; the first packet after one carries the marker bit (RFC 3551: a talkspurt begins).
        now = time.monotonic()
        if self._start is None:
            self._start = now
        frame = max(self._last_frame + 1, round((now - self._start) / 0.02))
        marker = frame != self._last_frame + 1 or self._last_frame < 0
        self._last_frame = frame
        timestamp = (self._ts0 + frame * OPUS_STEP) & 0xFFFFFFFF
        first = 0x80 if level is None else 0x90  # X: a header extension follows
        header = _RTP.pack(first, (0x80 if marker else 0) | OPUS_PT, self._seq, timestamp, self.ssrc)
        if level is not None:  # one-byte profile, one word: the level element and two padding bytes
            header += _LEVEL_EXT.pack(0xBEDE, 1, LEVEL_EXT_ID << 4, min(127, max(0, level)))
        self._seq = (self._seq + 1) & 0xFFFF
        socket.sendto(header + opus, server)
        self.packets_out += 1

    def _datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        if addr[:2] != self.server:
            self.dropped_foreign += 1
            return
        packet = parse_rtp(data)  # None for RTCP: the server's reports need no answer here
        if packet is None or packet.payload_type not in self._payload_types:
            return
        slot = self._slot_of_ssrc.get(packet.ssrc)
        if slot is None:
            return
        self.packets_in += 1
        self._receiver(slot, packet.payload)

    async def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


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
        # The room's `slots` messages: [{"mid", "identity"}] for the audio slots.
        self.on_slots: Callable[[list[dict[str, Any]]], None] = lambda slots: None
        self.slots: list[dict[str, Any]] = []  # the last of them (one may come before `transport`)
        self._transport: asyncio.Future[dict[str, Any]] | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0
        self._leaving = False

    async def join(self, media: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Join the room; with ``media`` (a plain-RTP offer) also open the caller's media session
        and return the server's ``transport`` answer, or None when the server has no media for
        the caller (signaling only)."""
        url = self.server.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        self._ws = await self.session.ws_connect(f"{url}/ws?token={self.admission.token}", heartbeat=20)
        loop = asyncio.get_running_loop()
        self._reader = loop.create_task(self._read())
        message = {
            "type": "join",
            "device": "phone",
            "publish": {"audio": True, "video": False},
            "video_slots": 0,
            "audio_slots": 3,
        }
        if media is not None:
            self._transport = loop.create_future()
            try:
                result = await self.request({**message, "transport": "plain", "plain": media})
            except RuntimeError as exc:  # a server without media: the caller is there by signaling
                if not str(exc).startswith("unavailable:"):
                    raise
                log.info("phone: no media for %s (%s)", self.admission.identity, exc)
                media = self._transport = None
                result = await self.request(message)
        else:
            result = await self.request(message)
        self._follow(result)
        if media is None or self._transport is None:
            return None
        try:
            return await asyncio.wait_for(self._transport, 10.0)
        except (TimeoutError, RuntimeError, ConnectionError) as exc:
            log.warning("phone: no media session for %s: %s", self.admission.identity, exc)
            return None
        finally:
            self._transport = None

    @property
    def connected(self) -> bool:
        reader_done = self._reader is not None and self._reader.done()
        return self._ws is not None and not self._ws.closed and not reader_done

    def _follow(self, result: dict[str, Any]) -> None:
        you = result.get("you", {})
        self.state.muted = bool(you.get("muted"))
        self.state.self_muted = bool(you.get("self_muted"))
        self.state.hand_raised = you.get("hand_raised_at") is not None
        self.state.floor = result.get("room", {}).get("floor") == self.admission.identity

    def _closed(self, reason: str) -> Exception:
        """Why the meeting connection is gone: the server refused the token (4401/4403: expired, the
        caller removed meanwhile), where trying again will not help, or it just went away."""
        code = self._ws.close_code if self._ws is not None else None
        if code in (4401, 4403):
            return RuntimeError(f"forbidden: the server refused the caller ({code})")
        return ConnectionError(reason)

    async def request(self, message: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        if self._ws is None or self._ws.closed:
            raise self._closed("not connected to the meeting")
        self._next_id += 1
        rid = self._next_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        try:
            try:
                await self._ws.send_str(json.dumps({**message, "id": rid}))
            except ConnectionError:
                raise self._closed("not connected to the meeting") from None
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
                elif kind == "slots":
                    self.slots = message.get("audio") or []
                    self.on_slots(self.slots)
                elif kind == "transport" and self._transport is not None and not self._transport.done():
                    self._transport.set_result(message)
                elif kind == "error" and message.get("id") is None and self._transport is not None:
                    # After the join: the media session could not start (the join stands).
                    if not self._transport.done():
                        self._transport.set_exception(
                            RuntimeError(f"{message.get('code')}: {message.get('message')}")
                        )
                elif kind == "removed":
                    reason = "removed"
                elif kind == "shutdown":
                    reason = "server_shutdown"
                elif kind == "replaced":
                    reason = "replaced"
        except (aiohttp.ClientError, asyncio.CancelledError):
            pass
        finally:
            for future in [*self._pending.values(), self._transport]:
                if future is not None and not future.done():
                    future.set_exception(self._closed(reason))
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
