"""The SIP user agent of the dial-in gateway: answers INVITEs from allowed addresses, keeps the
dialogs, ends them with BYE, and runs every call's media on one 20 ms clock.

Requests handled: INVITE (new and re-INVITE), ACK, BYE, CANCEL, OPTIONS, INFO (DTMF relay);
anything else is 405. A message that does not parse gets 400 when it can be answered, and is
dropped otherwise; the gateway keeps serving either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from dataclasses import dataclass, field

from .call import Call, CallContext
from .message import (
    SipParseError,
    SipRequest,
    SipResponse,
    new_branch,
    new_tag,
    param,
    parse,
    response_to,
    uri_of,
    uri_user,
)
from .register import Account, Registration
from .rtp import RtpStream
from .sdp import NoCommonCodec, SdpError, build_answer, negotiate, parse_offer
from .transaction import T1, ServerTransaction, TransactionLayer
from .transport import Peer, SipTransport

log = logging.getLogger(__name__)
ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO"
TICK_S = 0.02
MAX_CALLS = 200
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK: tuple[Network, ...] = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


@dataclass(slots=True)
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: str  # the INVITE's To (without tag)
    remote_uri: str  # the INVITE's From (without tag)
    remote_target: str  # the caller's Contact URI
    route_set: list[str]
    peer: Peer
    invite: ServerTransaction
    answer_sdp: str
    call: Call | None = None
    local_cseq: int = 0
    sdp_version: int = field(default_factory=lambda: int(time.time()))
    confirmed: bool = False


class Gateway:
    def __init__(
        self,
        ctx: CallContext,
        *,
        host: str,
        port: int,
        allow: tuple[Network, ...] = LOOPBACK,
        public_host: str | None = None,
        account: Account | None = None,
        t1: float = T1,
    ) -> None:
        self.ctx = ctx
        self.listen = (host, port)
        self.allow = allow
        self.public_host = public_host or host
        self.account = account
        self.transport = SipTransport(self._data)
        self.transactions = TransactionLayer(self.transport.send, t1)
        self.dialogs: dict[str, Dialog] = {}
        self.registration: Registration | None = None
        self.finished: list[tuple[Call, str]] = []  # ended calls and why (bounded)
        self.counters = {"invites": 0, "refused": 0, "bad_requests": 0, "dropped": 0, "calls": 0}
        self._clock: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        return self.transport.port

    async def start(self) -> None:
        await self.transport.start(*self.listen)
        self._clock = asyncio.get_running_loop().create_task(self._run_clock())
        if self.account is not None:
            self.registration = Registration(
                self.account, self.public_host, self.port, self.transactions.request
            )
            self.registration.start()
        log.info("phone: SIP on %s:%d (UDP and TCP)", self.transport.host, self.port)

    async def close(self) -> None:
        if self.registration is not None:
            await self.registration.stop()
        byes = [self._send_bye(d) for d in self.dialogs.values() if d.call is not None]
        if byes:  # callers are told; one that does not answer does not hold up the shutdown
            await asyncio.wait([asyncio.ensure_future(b) for b in byes], timeout=1.0)
        for dialog in list(self.dialogs.values()):
            if dialog.call is not None:
                await dialog.call.close("gateway_stopped")
        self.dialogs.clear()
        if self._clock is not None:
            self._clock.cancel()
        for task in list(self._tasks):
            task.cancel()
        self.transactions.close()
        await self.transport.close()

    # --- the clock ---------------------------------------------------------------------------

    async def _run_clock(self) -> None:
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        while True:
            next_tick += TICK_S
            delay = next_tick - loop.time()
            if delay < -0.1:  # far behind (a stalled machine): skip ahead instead of bursting
                next_tick = loop.time()
                delay = 0.0
            await asyncio.sleep(max(0.0, delay))
            for dialog in list(self.dialogs.values()):
                if dialog.call is not None:
                    try:
                        dialog.call.tick()
                    except Exception:
                        log.exception("phone: media of call %s failed", dialog.call_id)
                        self._end_call(dialog.call, "internal_error")

    # --- incoming messages -------------------------------------------------------------------

    def _data(self, data: bytes, peer: Peer) -> None:
        try:
            message = parse(data)
        except SipParseError as exc:
            request = exc.request
            if request is not None and request.method != "ACK" and request.headers.get_all("via"):
                self.counters["bad_requests"] += 1
                self.transport.send(
                    peer, response_to(request, 400, f"Bad Request ({exc.reason[:60]})").encode()
                )
            else:
                self.counters["dropped"] += 1
            return
        try:
            if isinstance(message, SipResponse):
                self.transactions.response_received(message)
            else:
                self._request(message, peer)
        except (SipParseError, ValueError) as exc:
            self.counters["bad_requests"] += 1
            if isinstance(message, SipRequest) and message.method != "ACK":
                self.transport.send(
                    peer, response_to(message, 400, f"Bad Request ({str(exc)[:60]})").encode()
                )
        except Exception:
            log.exception("phone: handling a message from %s failed", peer)
            if isinstance(message, SipRequest) and message.method != "ACK":
                self.transport.send(peer, response_to(message, 500).encode())

    def allowed(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.allow)

    def _request(self, request: SipRequest, peer: Peer) -> None:
        existing = self.transactions.find_server(request, peer)
        if existing is not None:
            if request.method == "ACK":
                existing.acknowledged()
            else:
                existing.retransmitted()
            return
        if request.method == "ACK":
            self._ack(request)
            return
        txn = self.transactions.new_server(request, peer)
        if not self.allowed(peer.host):
            self.counters["refused"] += 1
            txn.respond(response_to(request, 403, "Forbidden (address not allowed)", new_tag()))
            return
        match request.method:
            case "INVITE":
                if request.to_tag:
                    self._reinvite(request, txn)
                else:
                    self._invite(request, txn, peer)
            case "BYE":
                self._bye(request, txn)
            case "CANCEL":
                self._cancel(request, txn, peer)
            case "OPTIONS":
                response = response_to(request, 200, to_tag=new_tag())
                response.headers.add("allow", ALLOW)
                response.headers.add("accept", "application/sdp")
                txn.respond(response)
            case "INFO":
                self._info(request, txn)
            case _:
                response = response_to(request, 405, to_tag=new_tag())
                response.headers.add("allow", ALLOW)
                txn.respond(response)

    def _dialog_of(self, request: SipRequest) -> Dialog | None:
        dialog = self.dialogs.get(request.call_id)
        if dialog is None or dialog.local_tag != request.to_tag or dialog.remote_tag != request.from_tag:
            return None
        return dialog

    # --- INVITE ------------------------------------------------------------------------------

    def _invite(self, request: SipRequest, txn: ServerTransaction, peer: Peer) -> None:
        self.counters["invites"] += 1
        tag = new_tag()
        caller = uri_user(uri_of(request.headers.get("from") or "")) or "anonymous"
        source_key = f"{peer.host}|{caller}"
        if (wait := self.ctx.throttle.blocked(source_key)) > 0:
            response = response_to(request, 403, "Forbidden (too many failed attempts)", tag)
            response.headers.add("retry-after", str(int(wait) + 1))
            txn.respond(response)
            return
        if len(self.dialogs) >= MAX_CALLS or request.call_id in self.dialogs:
            txn.respond(response_to(request, 486, to_tag=tag))
            return
        content_type = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
        if not request.body:
            # Only offers in the INVITE are supported (no offer in the 200, answer in the ACK).
            response = response_to(request, 488, "Not Acceptable Here (an SDP offer is required)", tag)
            txn.respond(response)
            return
        if content_type != "application/sdp":
            response = response_to(request, 415, to_tag=tag)
            response.headers.add("accept", "application/sdp")
            txn.respond(response)
            return
        try:
            offer = parse_offer(request.body.decode("utf-8"))
            negotiated = negotiate(offer)
        except NoCommonCodec as exc:
            response = response_to(request, 488, to_tag=tag)
            response.headers.add("warning", f'304 conference "{exc}"')
            txn.respond(response)
            return
        except (SdpError, UnicodeDecodeError) as exc:
            txn.respond(response_to(request, 400, f"Bad Request (SDP: {str(exc)[:60]})", tag))
            return
        contact = request.headers.get("contact")
        dialog = Dialog(
            call_id=request.call_id,
            local_tag=tag,
            remote_tag=request.from_tag or "",
            local_uri=request.headers.get("to") or "",
            remote_uri=request.headers.get("from") or "",
            remote_target=uri_of(contact) if contact else uri_of(request.headers.get("from") or ""),
            route_set=request.headers.get_all("record-route"),
            peer=peer,
            invite=txn,
            answer_sdp="",
        )
        self.dialogs[dialog.call_id] = dialog
        txn.respond(response_to(request, 100))
        self._spawn(self._answer(dialog, request, negotiated, caller, source_key))

    async def _answer(
        self, dialog: Dialog, request: SipRequest, negotiated, caller: str, source_key: str
    ) -> None:  # type: ignore[no-untyped-def]
        rtp = RtpStream(lambda packet: None)
        try:
            port = await rtp.open(self.transport.host)
        except OSError as exc:
            log.warning("phone: no RTP port: %s", exc)
            self.dialogs.pop(dialog.call_id, None)
            dialog.invite.respond(response_to(request, 503, to_tag=dialog.local_tag))
            return
        if self.dialogs.get(dialog.call_id) is not dialog:  # cancelled meanwhile
            rtp.close()
            return
        rtp.remote = negotiated.remote
        call = Call(self.ctx, negotiated, rtp, caller, source_key, self._end_call)
        dialog.call = call
        dialog.answer_sdp = build_answer(negotiated, self.public_host, port, dialog.sdp_version)
        response = response_to(request, 200, to_tag=dialog.local_tag)
        response.headers.add("contact", self._contact(dialog.peer))
        response.headers.add("allow", ALLOW)
        response.headers.add("content-type", "application/sdp")
        response.body = dialog.answer_sdp.encode()
        for route in dialog.route_set:
            response.headers.add("record-route", route)
        dialog.invite.on_timeout = lambda: self._end_call(call, "no_ack")
        dialog.invite.respond(response)
        self.counters["calls"] += 1
        call.play("welcome")
        log.info("phone: call %s from %s (%s)", dialog.call_id, caller, negotiated.codec.name)

    def _reinvite(self, request: SipRequest, txn: ServerTransaction) -> None:
        dialog = self._dialog_of(request)
        if dialog is None or dialog.call is None:
            txn.respond(response_to(request, 481))
            return
        if request.body:
            try:
                negotiated = negotiate(parse_offer(request.body.decode("utf-8")))
            except NoCommonCodec:
                txn.respond(response_to(request, 488))
                return
            except (SdpError, UnicodeDecodeError) as exc:
                txn.respond(response_to(request, 400, f"Bad Request (SDP: {str(exc)[:60]})"))
                return
            if negotiated.codec.name != dialog.call.negotiated.codec.name:
                txn.respond(response_to(request, 488))  # a codec change mid-call is not supported
                return
            dialog.call.rtp.remote = negotiated.remote
        dialog.sdp_version += 1
        lines = dialog.answer_sdp.split("\r\n")
        origin = lines[1].split(" ")
        origin[2] = str(dialog.sdp_version)  # o= session version: a changed answer
        lines[1] = " ".join(origin)
        dialog.answer_sdp = "\r\n".join(lines)
        response = response_to(request, 200)
        response.headers.add("contact", self._contact(dialog.peer))
        response.headers.add("content-type", "application/sdp")
        response.body = dialog.answer_sdp.encode()
        txn.respond(response)

    def _ack(self, request: SipRequest) -> None:
        """The ACK of a 2xx (its own transaction): the dialog is confirmed."""
        dialog = self._dialog_of(request)
        if dialog is not None and request.cseq[0] == dialog.invite.request.cseq[0]:
            dialog.confirmed = True
            dialog.invite.acknowledged()

    def _cancel(self, request: SipRequest, txn: ServerTransaction, peer: Peer) -> None:
        key = (txn.key[0], "INVITE")
        invite = self.transactions.servers.get(key)
        if invite is None:
            txn.respond(response_to(request, 481))
            return
        txn.respond(response_to(request, 200))
        if invite.response is None or invite.response.status < 200:
            dialog = self.dialogs.pop(invite.request.call_id, None)
            invite.respond(response_to(invite.request, 487, to_tag=dialog.local_tag if dialog else new_tag()))
            if dialog is not None and dialog.call is not None:
                self._spawn(dialog.call.close("cancelled"))

    def _bye(self, request: SipRequest, txn: ServerTransaction) -> None:
        dialog = self._dialog_of(request)
        if dialog is None:
            txn.respond(response_to(request, 481))
            return
        txn.respond(response_to(request, 200))
        self.dialogs.pop(dialog.call_id, None)
        dialog.invite.cancel_timers()
        if dialog.call is not None:
            self._finish(dialog.call, "caller_hung_up")

    def _info(self, request: SipRequest, txn: ServerTransaction) -> None:
        dialog = self._dialog_of(request)
        if dialog is None or dialog.call is None:
            txn.respond(response_to(request, 481))
            return
        content_type = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
        txn.respond(response_to(request, 200))
        if content_type in ("application/dtmf-relay", "application/dtmf"):
            text = request.body.decode("utf-8", "replace")
            signal = text.strip() if content_type == "application/dtmf" else ""
            for line in text.splitlines():
                name, _, value = line.partition("=")
                if name.strip().lower() == "signal":
                    signal = value.strip()
            if len(signal) == 1 and signal in "0123456789*#ABCD":
                dialog.call._digit(signal)

    # --- ending calls --------------------------------------------------------------------------

    def _contact(self, peer: Peer) -> str:
        transport = ";transport=tcp" if peer.transport == "TCP" else ""
        return f"<sip:conference@{self.public_host}:{self.port}{transport}>"

    def _end_call(self, call: Call, reason: str) -> None:
        """The gateway hangs up: BYE to the caller, then release the call."""
        for dialog in list(self.dialogs.values()):
            if dialog.call is call:
                self.dialogs.pop(dialog.call_id, None)
                dialog.invite.cancel_timers()
                self._spawn(self._send_bye(dialog))
        self._finish(call, reason)

    def _finish(self, call: Call, reason: str) -> None:
        self.finished.append((call, reason))
        del self.finished[:-100]
        self._spawn(call.close(reason))
        audio = call.link.audio if call.link is not None else None
        log.info(
            "phone: call from %s ended: %s (%.0f s; RTP from the caller %d, to the caller %d,"
            " from elsewhere %d; to the room %d, from the room %d)",
            call.caller,
            reason,
            time.monotonic() - call.started,
            call.rtp.packets_in,
            call.rtp.packets_out,
            call.rtp.dropped_wrong_source,
            getattr(audio, "packets_out", 0),
            getattr(audio, "packets_in", 0),
        )

    async def _send_bye(self, dialog: Dialog) -> None:
        dialog.local_cseq = max(dialog.local_cseq, dialog.invite.request.cseq[0]) + 1
        request = SipRequest(method="BYE", uri=dialog.remote_target)
        h = request.headers
        transport = dialog.peer.transport
        h.add("via", f"SIP/2.0/{transport} {self.public_host}:{self.port};branch={new_branch()};rport")
        h.add("max-forwards", "70")
        for route in dialog.route_set:  # a UAS uses the Record-Route in the order received
            h.add("route", route)
        h.add("from", f"{_untagged(dialog.local_uri)};tag={dialog.local_tag}")
        h.add("to", f"{_untagged(dialog.remote_uri)};tag={dialog.remote_tag}")
        h.add("call-id", dialog.call_id)
        h.add("cseq", f"{dialog.local_cseq} BYE")
        h.add("user-agent", "conference-phone")
        with contextlib.suppress(TimeoutError, OSError, asyncio.CancelledError):
            await self.transactions.request(request, dialog.peer)

    def _spawn(self, coro: object) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _untagged(name_addr: str) -> str:
    tag = param(name_addr, "tag")
    return name_addr.replace(f";tag={tag}", "") if tag else name_addr
