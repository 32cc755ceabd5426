"""The server's side of telephone dial-in: the chair's ``set_dial_in`` (meeting ID, PINs kept as
keyed hashes) and the lookup the gateway makes (``POST /api/dial-in`` with the admin key) that
turns a meeting ID and PIN into a room, an identity and a member token for a `phone` device."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from typing import Any

from conference.room import CommandError, RoomState
from conference.store import RoomStore

from .tokens import DEFAULT_TTL_S, mint_token

MEETING_ID_DIGITS = 9
# A roster member the chair removed cannot dial back in with their PIN for one meeting day (the
# default token lifetime): the gateway mints a fresh token per call, so the token rule alone
# (tokens issued before the removal are refused) would let them straight back in.
DIAL_IN_REMOVAL_S = DEFAULT_TTL_S
_DIGITS = re.compile(r"[0-9]{1,20}")  # fullmatch: `$` lets a trailing newline through
_CALLER = re.compile(r"\+?[0-9A-Za-z._-]{0,32}")


def pin_hash(secret: str, room: str, pin: str) -> str:
    """Keyed with the server's secret: a copy of the room state does not reveal short PINs."""
    return hmac.new(secret.encode(), f"dial-in|{room}|{pin}".encode(), hashlib.sha256).hexdigest()


def mask_number(caller: str) -> str:
    """138****1234: enough to tell callers apart, not enough to call them back."""
    digits = "".join(ch for ch in caller if ch.isdigit())
    if len(digits) >= 8:
        return digits[:3] + "*" * (len(digits) - 7) + digits[-4:]
    if len(digits) >= 3:
        return "*" * (len(digits) - 2) + digits[-2:]
    return "****"


async def _rooms(store: RoomStore) -> list[RoomState]:
    states = []
    for name in await store.list_rooms():
        state = await store.get(name)
        if state is not None:
            states.append(state)
    return states


async def prepare(store: RoomStore, secret: str, room: str, msg: dict[str, Any]) -> dict[str, Any]:
    """The ``set_dial_in`` message with a meeting ID (kept, or a new unique one) and hashes."""
    state = await store.get(room)
    if state is None:
        raise CommandError("not_found", f"no room {room!r}")
    meeting_id = state.dial_in.meeting_id
    if meeting_id is None:
        taken = {s.dial_in.meeting_id for s in await _rooms(store)}
        while meeting_id is None or meeting_id in taken:
            meeting_id = str(
                secrets.randbelow(9 * 10 ** (MEETING_ID_DIGITS - 1)) + 10 ** (MEETING_ID_DIGITS - 1)
            )
    members = msg.get("members")
    hashed = None
    if members is not None:
        pins = [m["pin"] for m in members] + ([msg["pin"]] if msg.get("pin") else [])
        if len(set(pins)) != len(pins):
            raise CommandError("bad_request", "every PIN of a room must be different")
        hashed = [
            {"identity": m["identity"], "name": m["name"], "pin_hash": pin_hash(secret, room, m["pin"])}
            for m in members
        ]
    room_pin = msg.get("pin")
    return {
        **msg,
        "meeting_id": meeting_id,
        "pin_hash": pin_hash(secret, room, room_pin) if room_pin else None,
        "members": hashed,
    }


async def resolve(store: RoomStore, secret: str, data: dict[str, Any]) -> dict[str, Any] | None:
    """Room, identity, name and token for a meeting ID and PIN, or None when nothing matches."""
    meeting_id, pin, caller = data.get("meeting_id"), data.get("pin"), data.get("caller", "")
    if not isinstance(meeting_id, str) or not _DIGITS.fullmatch(meeting_id):
        raise ValueError("meeting_id must be digits")
    if not isinstance(pin, str) or not _DIGITS.fullmatch(pin):
        raise ValueError("pin must be digits")
    if not isinstance(caller, str) or not _CALLER.fullmatch(caller):
        raise ValueError("caller must be a telephone number or SIP user name")
    for state in await _rooms(store):
        if state.dial_in.meeting_id != meeting_id:
            continue
        given = pin_hash(secret, state.room, pin)
        for member in state.dial_in.members:
            if hmac.compare_digest(member["pin_hash"], given):
                removed_at = state.removed.get(member["identity"])
                if removed_at is not None and time.time() - removed_at < DIAL_IN_REMOVAL_S:
                    raise PermissionError("removed from the room")
                return _admission(secret, state.room, member["identity"], member["name"])
        if state.dial_in.pin_hash is not None and hmac.compare_digest(state.dial_in.pin_hash, given):
            tail = "".join(ch for ch in caller if ch.isdigit())[-4:] or "anon"
            identity = f"tel-{tail}-{secrets.token_hex(3)}"
            return _admission(secret, state.room, identity, f"电话 {mask_number(caller)}")
        return None
    return None


def _admission(secret: str, room: str, identity: str, name: str) -> dict[str, Any]:
    # `gateway`: only the admin key's gateway may open a plain-RTP session for its caller.
    token = mint_token(secret, room, identity, name, "member", DEFAULT_TTL_S, gateway=True)
    return {"room": room, "identity": identity, "name": name, "token": token}
