"""One telephone call after it is answered: the IVR (meeting ID, PIN), then the caller in the
meeting. Media runs on the gateway's 20 ms clock (``tick``): prompts, tones and the room's mix
go out in the caller's codec; the caller's audio comes in, DTMF is picked out, and the voice
goes to the room encoded once to Opus."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import numpy as np

from conference.sfu.audiolevel import dbov_level

from .codecs import G711, CallCodec, OpusEncoder, Pcm, call_codec
from .dtmf import Goertzel, Rfc4733
from .ivr import Check, HangUp, Ivr, Prompt, Throttle
from .link import (
    Admission,
    Directory,
    DirectoryError,
    MemberState,
    PlainRoomAudio,
    RoomAudio,
    SignalingLink,
)
from .mixer import SILENCE, Mixer, overlay
from .prompts import TONES, frames
from .rtp import RtpPacket, RtpStream
from .sdp import Negotiated

log = logging.getLogger(__name__)
IVR_TIMEOUT_S = 120.0


@dataclass(slots=True)
class CallContext:
    """What every call of one gateway shares."""

    server: str
    directory: Directory
    session: aiohttp.ClientSession
    prompts: dict[str, np.ndarray]
    throttle: Throttle
    rtp_timeout_s: float = 15.0
    # How long a caller whose meeting connection dropped (the server restarting) waits in the call
    # while the gateway joins again; then "the meeting connection has ended" and BYE.
    rejoin_s: float = 30.0
    # The room's media for an admitted caller (None: the caller is in the meeting by signaling only).
    audio_factory: Callable[[Admission], RoomAudio | None] = field(default=lambda admission: PlainRoomAudio())


class Call:
    def __init__(
        self,
        ctx: CallContext,
        negotiated: Negotiated,
        rtp: RtpStream,
        caller: str,
        source_key: str,
        hang_up: Callable[[Call, str], None],
    ) -> None:
        self.ctx = ctx
        self.negotiated = negotiated
        self.rtp = rtp
        self.caller = caller
        self.source_key = source_key
        self._hang_up = hang_up
        self.codec: CallCodec = call_codec(negotiated.codec.name)
        self.payload_type = negotiated.codec.payload_type
        self.dtmf_pt = negotiated.dtmf.payload_type if negotiated.dtmf else None
        self._rfc4733 = Rfc4733()
        self._inband: Goertzel | None = Goertzel()  # until the first RFC 4733 event
        self.ivr = Ivr()
        self.digits: list[str] = []  # every key the caller pressed, in order
        self.link: SignalingLink | None = None
        self.admission: Admission | None = None
        self.rejoins = 0  # times the caller was taken back into the meeting after losing it
        self.mixer: Mixer | None = None
        self._uplink: OpusEncoder | None = None
        self._playback: deque[Pcm] = deque()
        self._hang_up_after_playback: str | None = None
        self._star = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.started = time.monotonic()
        self.ended: str | None = None
        self.end_reason: str | None = None
        rtp.on_packet = self._on_packet

    # --- the 20 ms clock ---------------------------------------------------------------------

    def tick(self) -> None:
        if self.ended:
            return
        now = time.monotonic()
        if now - self.rtp.last_received > self.ctx.rtp_timeout_s:
            self.end("rtp_timeout")
            return
        if self.link is None and now - self.started > IVR_TIMEOUT_S:
            self.end("ivr_timeout", "goodbye")
            return
        room = self.mixer.mix() if self.mixer is not None else None
        if self._playback:
            frame = overlay(room, self._playback.popleft())
        else:
            frame = room if room is not None else SILENCE
            if self._hang_up_after_playback is not None:
                reason, self._hang_up_after_playback = self._hang_up_after_playback, None
                self.end(reason)
                return
        self.rtp.send(self.payload_type, self.codec.encode(frame), self.codec.samples_per_packet)

    def play(self, name: str, barge_in: bool = True) -> None:
        """A prompt replaces what is playing (the caller may type over it)."""
        self._playback.clear()
        self._playback.extend(frames(self.ctx.prompts[name]))

    def tone(self, name: str) -> None:
        self._playback.extend(frames(TONES[name]))

    # --- what the caller sends ---------------------------------------------------------------

    def _on_packet(self, packet: RtpPacket) -> None:
        if self.ended:
            return
        if packet.payload_type == self.dtmf_pt:
            key = self._rfc4733.packet(packet.payload, packet.timestamp)
            self._inband = None
            if key is not None:
                self._digit(key)
            return
        if packet.payload_type != self.payload_type:
            return
        try:
            pcm = self.codec.decode(packet.payload)
        except Exception:  # a corrupt payload is one lost packet, not a lost call
            return
        if self._inband is not None and isinstance(self.codec, G711):
            key = self._inband.block(self.codec.decode_narrow(packet.payload))
            if key is not None:
                self._digit(key)
        self.audio_from_caller(pcm)

    def audio_from_caller(self, pcm: Pcm) -> None:
        link = self.link
        if link is None or link.audio is None or self._uplink is None or not link.state.audible:
            return
        link.audio.send(self._uplink.encode(pcm), dbov_level(pcm.astype(np.float32) / 32768.0))

    def _digit(self, key: str) -> None:
        self.digits.append(key)
        if self.link is None:
            action = self.ivr.digit(key)
            if action is not None:
                self._playback.clear()  # barge-in: a key stops the prompt
                self._act(action)
            elif key != "#":
                self._playback.clear()
            return
        if key == "*":
            self._star = True
            return
        star, self._star = self._star, False
        if star and key == "1":
            self._spawn(self._command(self.link.raise_hand()))
        elif star and key == "6":
            self._spawn(self._toggle_mute())

    def _act(self, action: Prompt | Check | HangUp) -> None:
        if isinstance(action, Prompt):
            self.play(action.name)
        elif isinstance(action, HangUp):
            self.end_after(action.prompt, "wrong_pin")
        else:
            self._spawn(self._check(action))

    # --- the dialogue with the server --------------------------------------------------------

    async def _check(self, check: Check) -> None:
        try:
            admission = await self.ctx.directory.resolve(check.meeting_id, check.pin, self.caller)
        except DirectoryError as exc:
            log.warning("phone: %s", exc)
            self.end_after("unavailable", "server_unavailable")
            return
        if self.ended:
            return
        if admission is None:
            self.ctx.throttle.failure(self.source_key)
            self._act(self.ivr.refused())
            return
        self.ivr.admitted()
        self.admission = admission
        try:
            link = await self._join(admission)
        except Exception as exc:
            log.warning("phone: joining %s failed: %s", admission.room, exc)
            self.end_after("unavailable", "join_failed")
            return
        if self.ended:
            await link.leave()
            return
        self._adopt(link)
        log.info("phone: %s joined %s as %s", self.caller, admission.room, admission.identity)

    async def _join(self, admission: Admission) -> SignalingLink:
        """The caller in the meeting: the signaling link and, when the server has media for it, the
        room's audio with its mixer. Raises when the join fails (nothing is left open then)."""
        link = SignalingLink(self.ctx.server, admission, self.ctx.session)
        link.on_change = self._room_changed
        link.on_end = lambda reason: self._room_ended(link, reason)
        audio = self.ctx.audio_factory(admission)
        try:
            answer = await link.join(await audio.open() if audio is not None else None)
        except BaseException:
            if audio is not None:
                await audio.close()
            await link.leave()
            raise
        if audio is not None and answer is None:  # the server has no media for the caller
            await audio.close()
            audio = None
        if audio is not None:
            assert answer is not None
            audio.connect(answer)
            mixer = self.mixer = Mixer(admission.identity)
            self._uplink = OpusEncoder()
            audio.set_receiver(mixer.packet)

            def occupants(slots: list[dict[str, object]], audio: RoomAudio = audio) -> None:
                for entry in slots:
                    index = audio.slot_of(str(entry.get("mid")))
                    if index is not None:
                        identity = entry.get("identity")
                        mixer.set_occupant(index, identity if isinstance(identity, str) else None)

            link.on_slots = occupants
            occupants(link.slots)
            link.audio = audio
        return link

    def _adopt(self, link: SignalingLink) -> None:
        """``link`` is the caller's place in the meeting now; told so, with the muted tone if muted."""
        self.link = link
        self.play("joined")
        if not link.state.audible:
            self.tone("muted")
        if not link.connected:  # it dropped while joining: its end was not this call's yet
            self._room_ended(link, "the meeting connection closed")

    def _room_changed(self, kind: str, state: MemberState) -> None:
        if kind in TONES:
            self.tone(kind)

    def _room_ended(self, link: SignalingLink, reason: str) -> None:
        if self.ended or link is not self.link:
            return  # a link being replaced or given up: not the caller's meeting connection
        if reason in ("removed", "replaced") or self.admission is None:
            self.end_after("ended", f"room_{reason}")
            return
        # The server went away (a restart, a dropped connection): the call stays up, the caller is
        # told, and the gateway joins again with the same admission (the server kept the caller's
        # place for its reconnect grace: mutes, hand, floor).
        self._spawn(self._rejoin(link, reason))

    async def _rejoin(self, lost: SignalingLink, reason: str) -> None:
        assert self.admission is not None
        log.info("phone: %s lost the meeting (%s): joining again", self.caller, reason)
        self.play("reconnecting")
        self.mixer = None  # the room's audio went with the connection
        await lost.leave()
        deadline = time.monotonic() + self.ctx.rejoin_s
        delay = 0.25
        while not self.ended:
            try:
                link = await self._join(self.admission)
            except RuntimeError as exc:  # the server answered and refused: joining again will not help
                if not str(exc).startswith(("unavailable:", "internal:")):
                    log.warning("phone: %s cannot join again: %s", self.caller, exc)
                    break
            except Exception as exc:
                if isinstance(exc, aiohttp.WSServerHandshakeError) and exc.status in (401, 403, 404):
                    log.warning("phone: %s cannot join again: %s", self.caller, exc)
                    break
                log.debug("phone: %s not back yet: %s", self.caller, exc)
            else:
                if self.ended:
                    await link.leave()
                    return
                self.rejoins += 1
                self._adopt(link)
                log.info("phone: %s is back in %s", self.caller, self.admission.room)
                return
            if time.monotonic() + delay > deadline:
                break
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)
        if not self.ended:
            self.end_after("ended", "room_gone")

    async def _toggle_mute(self) -> None:
        link = self.link
        if link is None:
            return
        try:
            await link.set_self_muted(not link.state.self_muted)
        except Exception:  # e.g. the chair has muted the caller: the tone says "still muted"
            self.tone("muted")

    async def _command(self, coro: object) -> None:
        try:
            await coro  # type: ignore[misc]
        except Exception as exc:
            log.info("phone: command for %s refused: %s", self.caller, exc)

    def _spawn(self, coro: object) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- the end -------------------------------------------------------------------------------

    def end_after(self, prompt: str, reason: str) -> None:
        """Say ``prompt``, then hang up."""
        self.play(prompt)
        self._hang_up_after_playback = reason

    def end(self, reason: str) -> None:
        """Hang up now (sends BYE through the gateway)."""
        if self.ended:
            return
        self.ended = self.end_reason = reason
        self._hang_up(self, reason)

    async def close(self, reason: str) -> None:
        """The call is over (either side): release the media and leave the meeting."""
        self.ended = self.ended or reason
        self.end_reason = self.end_reason or reason
        self.rtp.close()
        for task in list(self._tasks):
            task.cancel()
        if self.link is not None:
            link, self.link = self.link, None
            await link.leave()
