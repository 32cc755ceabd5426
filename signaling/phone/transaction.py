"""SIP transactions (RFC 3261 §17) for a user agent that answers INVITEs and sends REGISTER/BYE.

Server side: a retransmitted request is answered with the last response again and never reaches
the call logic twice; over UDP an INVITE's final response is retransmitted (timer G, and for a
2xx as RFC 3261 §13.3.1.4 asks) until its ACK arrives or timer H gives up. Client side: a
non-INVITE request is retransmitted over UDP (timer E) until a final response or timer F.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from .message import SipRequest, SipResponse
from .transport import Peer

T1 = 0.5
T2 = 4.0
Send = Callable[[Peer, bytes], None]


class ServerTransaction:
    def __init__(
        self,
        layer: TransactionLayer,
        request: SipRequest,
        peer: Peer,
        key: tuple[str, str],
    ) -> None:
        self.layer = layer
        self.request = request
        self.peer = peer
        self.key = key
        self.response: SipResponse | None = None
        self._encoded = b""
        self._timer: asyncio.Task[None] | None = None
        # Called when an INVITE's final response was never acknowledged (timer H).
        self.on_timeout: Callable[[], None] | None = None

    @property
    def is_invite(self) -> bool:
        return self.request.method == "INVITE"

    def respond(self, response: SipResponse) -> None:
        if self.response is not None and self.response.status >= 200:
            return  # a final response was already given
        self.response = response
        self._encoded = response.encode()
        self.layer.send(self.peer, self._encoded)
        if response.status < 200:
            return
        if self.is_invite:
            if self.peer.transport == "UDP":
                self._start(self._retransmit())
            else:
                self._start(self._expire(64 * self.layer.t1, timed_out=response.status < 300))
        else:
            # Timer J: absorb retransmissions of the request for a while, then forget it.
            self._start(self._expire(64 * self.layer.t1 if self.peer.transport == "UDP" else 0.0))

    def retransmitted(self) -> None:
        """The same request again: repeat the last response (or nothing, while none was sent)."""
        if self._encoded:
            self.layer.send(self.peer, self._encoded)

    def acknowledged(self) -> None:
        """ACK for the final response: stop retransmitting; keep absorbing ACKs for timer I."""
        if self._timer is not None:
            self._timer.cancel()
        self._start(self._expire(4.0 if self.peer.transport == "UDP" else 0.0))

    def _start(self, coro: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]

    async def _retransmit(self) -> None:
        interval = self.layer.t1
        waited = 0.0
        while waited < 64 * self.layer.t1:
            await asyncio.sleep(interval)
            waited += interval
            self.layer.send(self.peer, self._encoded)
            interval = min(2 * interval, T2)
        self.layer.forget(self)
        if self.on_timeout is not None:
            self.on_timeout()

    async def _expire(self, after: float, timed_out: bool = False) -> None:
        await asyncio.sleep(after)
        self.layer.forget(self)
        if timed_out and self.on_timeout is not None:
            self.on_timeout()

    def cancel_timers(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


class ClientTransaction:
    def __init__(self, layer: TransactionLayer, request: SipRequest, peer: Peer) -> None:
        self.layer = layer
        self.request = request
        self.peer = peer
        self.branch = request.top_via.branch
        self.result: asyncio.Future[SipResponse] = asyncio.get_running_loop().create_future()
        self._proceeding = False

    async def run(self) -> SipResponse:
        data = self.request.encode()
        self.layer.send(self.peer, data)
        interval = self.layer.t1
        deadline = asyncio.get_running_loop().time() + 64 * self.layer.t1
        try:
            while True:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    raise TimeoutError(f"no final response to {self.request.method}")
                wait = min(interval, remaining) if self.peer.transport == "UDP" else remaining
                with contextlib.suppress(asyncio.TimeoutError):
                    return await asyncio.wait_for(asyncio.shield(self.result), wait)
                if self.peer.transport == "UDP":
                    self.layer.send(self.peer, data)
                    interval = T2 if self._proceeding else min(2 * interval, T2)
        finally:
            self.layer.clients.pop(self.branch, None)

    def received(self, response: SipResponse) -> None:
        if response.status < 200:
            self._proceeding = True
        elif not self.result.done():
            self.result.set_result(response)


class TransactionLayer:
    def __init__(self, send: Send, t1: float = T1) -> None:
        self.send = send
        self.t1 = t1
        self.servers: dict[tuple[str, str], ServerTransaction] = {}
        self.clients: dict[str, ClientTransaction] = {}

    @staticmethod
    def server_key(request: SipRequest, peer: Peer) -> tuple[str, str]:
        via = request.top_via
        # RFC 3261 §17.2.3: the branch (magic cookie) identifies the transaction; an ACK to a
        # non-2xx belongs to its INVITE's transaction. Older peers without the cookie: Call-ID.
        method = "INVITE" if request.method == "ACK" else request.method
        branch = via.branch if via.branch.startswith("z9hG4bK") else f"{request.call_id}|{request.cseq[0]}"
        return (f"{branch}|{via.host}:{via.port}|{peer.transport}", method)

    def find_server(self, request: SipRequest, peer: Peer) -> ServerTransaction | None:
        return self.servers.get(self.server_key(request, peer))

    def new_server(self, request: SipRequest, peer: Peer) -> ServerTransaction:
        key = self.server_key(request, peer)
        txn = ServerTransaction(self, request, peer, key)
        self.servers[key] = txn
        return txn

    def forget(self, txn: ServerTransaction) -> None:
        if self.servers.get(txn.key) is txn:
            del self.servers[txn.key]

    async def request(self, request: SipRequest, peer: Peer) -> SipResponse:
        """Send a non-INVITE request; its final response, or TimeoutError (timer F)."""
        txn = ClientTransaction(self, request, peer)
        self.clients[txn.branch] = txn
        return await txn.run()

    def response_received(self, response: SipResponse) -> bool:
        txn = self.clients.get(response.top_via.branch)
        if txn is None:
            return False
        txn.received(response)
        return True

    def close(self) -> None:
        for txn in list(self.servers.values()):
            txn.cancel_timers()
        self.servers.clear()
        for client in list(self.clients.values()):
            if not client.result.done():
                client.result.cancel()
