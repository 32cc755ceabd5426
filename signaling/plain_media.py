"""A participant whose media is plain RTP instead of WebRTC: a telephone gateway's caller.

The gateway joins over the same WebSocket as any endpoint, with ``"transport": "plain"`` and a
plain-RTP offer (``conference.sfu.plain.PlainOffer``: where it listens, the Opus it sends, how many
audio slots it receives). The server opens ``SfuBackend.open_plain`` instead of a WebRTC session,
pushes the answer as a ``transport`` message (its UDP port and each slot's SSRC) and sends no offer;
the participant and its media session share the socket's lifetime. A plain transport sends UDP to an
address the client names, so only a token minted for a gateway (``gateway`` claim, set by
``POST /api/dial-in`` under the admin key) may ask for one; the media core also refuses an address
that is not on this machine.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

from conference.media import MediaError
from conference.roles import Permission, can
from conference.room import CommandError
from conference.sfu.plain import PlainOffer, PlainTransport

from .protocol import PROTOCOL_VERSION
from .tokens import Claims

if TYPE_CHECKING:
    from .rooms import Connection, Rooms


def plain_offer(rooms: Rooms, claims: Claims, msg: dict[str, Any]) -> PlainOffer | None:
    """The join's plain-RTP offer, None for a WebRTC join; refused before anything changes."""
    if msg.get("transport") != "plain":
        return None
    if not claims.gateway:
        raise CommandError(
            "forbidden",
            "only a telephone gateway's credential (minted with the admin key) may join with a"
            " plain-RTP transport",
        )
    if not rooms.has_media or not hasattr(rooms.media, "open_plain"):
        raise MediaError(
            "unavailable",
            "this server runs without media (signaling only): no plain-RTP transport; join without"
            " `transport` to take part by signaling",
        )
    offer = PlainOffer.from_json(msg["plain"])
    host = ipaddress.ip_address(offer.address[0])
    if not host.is_loopback and str(host) != getattr(rooms.media, "plain_rtp_host", None):
        raise MediaError("bad_request", "a plain-RTP participant must listen on this machine")
    # What the role may not publish gets no producer (as a WebRTC offer gets no publish m-line).
    for kind, permission in (("audio", Permission.PUBLISH_AUDIO), ("video", Permission.PUBLISH_VIDEO)):
        if not can(claims.role, permission):
            offer.publish.pop(kind, None)  # type: ignore[call-overload]
    return offer


class PlainSession:
    """The connection's media session when it is plain RTP: nothing to negotiate, closed with it."""

    def __init__(self, transport: PlainTransport) -> None:
        self.transport = transport

    async def create_offer(self) -> dict[str, Any]:
        return {"sdp": None, "slots": {}}

    async def set_answer(self, sdp: str) -> None:
        raise MediaError("conflict", "a plain-RTP session negotiates no SDP: there is no offer to answer")

    async def add_candidate(self, candidate: dict[str, Any]) -> None:
        raise MediaError("conflict", "a plain-RTP session has no ICE candidates")

    async def close(self) -> None:
        await self.transport.close()


async def open_plain(rooms: Rooms, conn: Connection, offer: PlainOffer) -> None:
    """After the join reply: the plain transport, and its answer pushed as ``transport``."""
    state = await rooms.store.get(conn.room)
    if state is None:
        return
    await conn.close_session()
    transport: PlainTransport = await rooms.media.open_plain(  # type: ignore[attr-defined]
        conn.room, conn.identity, state, offer
    )
    if not conn.joined:  # replaced or removed while the transport opened
        await transport.close()
        return
    conn.session = PlainSession(transport)
    answer = transport.answer()
    conn.send({"v": PROTOCOL_VERSION, **answer, "type": "transport"})
    if (speakers := rooms.last_speakers.get(conn.room)) is not None:
        conn.send(speakers)
