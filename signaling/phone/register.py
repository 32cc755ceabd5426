"""Registration towards a SIP trunk or PBX (RFC 3261 §10): REGISTER with digest authentication,
refreshed before it expires, retried with a back-off when the registrar is away."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .digest import Challenge, DigestError, authorization
from .message import SipRequest, SipResponse, new_branch, new_tag, param, split_hostport
from .transport import Peer

log = logging.getLogger(__name__)
RETRY_S = (5.0, 15.0, 30.0, 60.0)


@dataclass(frozen=True, slots=True)
class Account:
    registrar: str  # host[:port] of the trunk's registrar
    user: str
    password: str
    domain: str | None = None  # the AOR's domain (default: the registrar's host)
    transport: str = "UDP"
    expires: int = 300

    @property
    def peer(self) -> Peer:
        host, port = split_hostport(self.registrar)
        return Peer(self.transport, host, port or 5060)

    @property
    def aor(self) -> str:
        return f"sip:{self.user}@{self.domain or self.peer.host}"


class Registration:
    """Keeps one binding registered; ``registered`` is set while it is."""

    def __init__(
        self,
        account: Account,
        contact_host: str,
        contact_port: int,
        send: Callable[[SipRequest, Peer], Awaitable[SipResponse]],
    ) -> None:
        self.account = account
        self.contact = (
            f"<sip:{account.user}@{contact_host}:{contact_port};transport={account.transport.lower()}>"
        )
        self.via_host = f"{contact_host}:{contact_port}"
        self._send = send
        self._call_id = secrets.token_hex(12)
        self._tag = new_tag()
        self._cseq = 0
        self.registered = asyncio.Event()
        self.expires_in: int | None = None
        self.last_status: int | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def _request(self, expires: int, auth: tuple[str, str] | None = None) -> SipRequest:
        self._cseq += 1
        account = self.account
        uri = f"sip:{account.domain or account.peer.host}"
        request = SipRequest(method="REGISTER", uri=uri)
        h = request.headers
        h.add("via", f"SIP/2.0/{account.transport} {self.via_host};branch={new_branch()};rport")
        h.add("max-forwards", "70")
        h.add("from", f"<{account.aor}>;tag={self._tag}")
        h.add("to", f"<{account.aor}>")
        h.add("call-id", self._call_id)
        h.add("cseq", f"{self._cseq} REGISTER")
        h.add("contact", self.contact)
        h.add("expires", str(expires))
        h.add("user-agent", "conference-phone")
        if auth is not None:
            h.add(*auth)
        return request

    async def register(self, expires: int) -> SipResponse:
        """One REGISTER, answering a digest challenge once (twice if the nonce was stale)."""
        response = await self._send(self._request(expires), self.account.peer)
        for _ in range(2):
            if response.status not in (401, 407):
                break
            header = "www-authenticate" if response.status == 401 else "proxy-authenticate"
            try:
                challenge = Challenge.parse(response.headers.get(header) or "")
            except DigestError as exc:
                log.warning("phone: registrar's challenge refused: %s", exc)
                break
            value = authorization(
                challenge,
                "REGISTER",
                f"sip:{self.account.domain or self.account.peer.host}",
                self.account.user,
                self.account.password,
            )
            name = "authorization" if response.status == 401 else "proxy-authorization"
            response = await self._send(self._request(expires, (name, value)), self.account.peer)
        self.last_status = response.status
        return response

    def _granted_expiry(self, response: SipResponse) -> int:
        for contact in response.headers.get_all("contact"):
            value = param(contact, "expires")
            if value and value.isdigit():
                return int(value)
        value = response.headers.get("expires")
        return int(value) if value and value.isdigit() else self.account.expires

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                response = await self.register(self.account.expires)
            except (TimeoutError, OSError) as exc:
                response = None
                log.warning("phone: REGISTER to %s: %s", self.account.registrar, exc)
            if response is not None and 200 <= response.status < 300:
                failures = 0
                self.expires_in = self._granted_expiry(response)
                self.registered.set()
                # Refresh well before the binding lapses (and never in a tight loop).
                await asyncio.sleep(max(1.0, min(self.expires_in * 0.8, self.expires_in - 5)))
                continue
            self.registered.clear()
            if response is not None:
                log.warning("phone: REGISTER to %s answered %d", self.account.registrar, response.status)
            await asyncio.sleep(RETRY_S[min(failures, len(RETRY_S) - 1)])
            failures += 1

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.registered.is_set():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.register(0), 3.0)
            self.registered.clear()
