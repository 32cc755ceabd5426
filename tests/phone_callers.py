"""N telephone callers in one Python process: real SIP calls over UDP to the dial-in gateway.

    python tests/phone_callers.py --sip 127.0.0.1:5060 --meeting-id 123456 --pin 4321 [--calls 10]

Each call sends an INVITE offering PCMU and telephone-event, takes the 100/180/200, ACKs, waits
for the welcome prompt to end, enters the meeting ID and `#` as RFC 4733 events, waits for the PIN
prompt to end, enters the PIN and `#`, and from the start sends a 1 kHz tone (pre-encoded PCMU
frames) on one 20 ms clock shared by every call; the clock is scheduled on absolute times, so a
late wake-up sends the frames that are due rather than losing them. What each call receives is
counted; ``hang_up`` sends BYE. The SIP messages are built and parsed with the gateway's own
``signaling.phone.message``; nothing is mocked. Used by tests/bench_phone.py (``--callers
python``): baresip takes a process per call, too many for a 2-core machine with a meeting beside.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from signaling.phone.codecs import G711  # noqa: E402
from signaling.phone.dtmf import EVENTS  # noqa: E402
from signaling.phone.message import (  # noqa: E402
    SipParseError,
    SipRequest,
    SipResponse,
    new_branch,
    new_tag,
    parse,
    response_to,
    uri_of,
)
from signaling.phone.rtp import parse_rtp  # noqa: E402
from signaling.phone.sdp import parse_offer  # noqa: E402

PCMU, EVENT_PT = 0, 101
SAMPLES = 160  # 20 ms at 8 kHz
_PCMU = G711("pcmu")
_RTP = struct.Struct("!BBHII")


def tone_frames(freq: float = 1000.0, level: float = 8000.0) -> list[bytes]:
    """One second of a tone as 50 PCMU payloads (1 kHz: a whole number of periods per frame)."""
    t = np.arange(8000) / 8000
    pcm = (level * np.sin(2 * np.pi * freq * t)).astype(np.int16)
    # The gateway's own u-law table (signaling.phone.codecs); the frames are encoded once.
    table = _PCMU._encode_table
    return [table[pcm[i * SAMPLES : (i + 1) * SAMPLES].astype(np.int32) + 32768].tobytes() for i in range(50)]


def silent(payload: bytes) -> bool:
    return int(np.abs(_PCMU.decode_narrow(payload).astype(np.int32)).max()) < 200


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, on_data) -> None:  # type: ignore[no-untyped-def]
        self.on_data = on_data

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        self.on_data(data, addr)


@dataclass
class Call:
    user: str
    rtp_port: int = 0
    call_id: str = field(default_factory=lambda: secrets.token_hex(8) + "@callers")
    tag: str = field(default_factory=new_tag)
    remote_tag: str = ""
    remote_target: str = ""
    remote_rtp: tuple[str, int] | None = None
    state: str = "calling"  # calling -> confirmed -> ended
    established: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    responses: dict[str, asyncio.Future[SipResponse]] = field(default_factory=dict)
    transport: asyncio.DatagramTransport | None = None
    ssrc: int = field(default_factory=lambda: secrets.randbits(32))
    seq: int = field(default_factory=lambda: secrets.randbits(16))
    ts: int = field(default_factory=lambda: secrets.randbits(32))
    sent: int = 0
    received: int = 0
    received_audible: int = 0
    last_audible: float = 0.0
    first_audible: float = 0.0
    # What the next frames carry: a telephone-event payload, or None for a frame of the tone.
    events: list[bytes | None] = field(default_factory=list)
    event_ts: int = 0
    ended_by: str = ""

    def on_rtp(self, data: bytes, addr: tuple[str, int]) -> None:
        packet = parse_rtp(data)
        if packet is None:
            return
        self.received += 1
        if packet.payload_type == PCMU and not silent(packet.payload):
            now = time.monotonic()
            self.received_audible += 1
            self.last_audible = now
            self.first_audible = self.first_audible or now

    def send_frame(self, frame: bytes) -> None:
        """The next 20 ms: a queued telephone-event packet (the tone is suppressed meanwhile) or
        the tone's ``frame``."""
        if self.transport is None or self.remote_rtp is None:
            return
        payload = self.events.pop(0) if self.events else None
        if payload is not None:
            first = (
                int.from_bytes(payload[2:4], "big") == SAMPLES and not payload[1] & 0x80
            )  # the event's first packet
            if first:
                self.event_ts = self.ts
            header = _RTP.pack(0x80, (0x80 if first else 0) | EVENT_PT, self.seq, self.event_ts, self.ssrc)
        else:
            header = _RTP.pack(0x80, PCMU, self.seq, self.ts, self.ssrc)
            payload = frame
        self.seq = (self.seq + 1) & 0xFFFF
        self.ts = (self.ts + SAMPLES) & 0xFFFFFFFF
        self.transport.sendto(header + payload, self.remote_rtp)
        self.sent += 1

    def press(self, key: str, frames: int = 5, gap: int = 5) -> None:
        """Queue one key: ``frames`` x 20 ms of event (its end packet three times, RFC 4733
        §2.5.1.4), then ``gap`` frames of the tone before the next key."""
        code = EVENTS.index(key)
        self.events += [struct.pack("!BBH", code, 10, SAMPLES * (i + 1)) for i in range(frames - 1)]
        self.events += [struct.pack("!BBH", code, 0x80 | 10, SAMPLES * frames)] * 3
        self.events += [None] * gap


class Callers:
    """N calls to one gateway from one SIP socket; their RTP on one 20 ms clock."""

    def __init__(self, gateway: tuple[str, int], calls: int, user_prefix: str = "1390000") -> None:
        self.gateway = gateway
        self.calls = [Call(user=f"{user_prefix}{i:04d}") for i in range(calls)]
        self._by_id = {c.call_id: c for c in self.calls}
        self._sip: asyncio.DatagramTransport | None = None
        self.sip_port = 0
        self._frames = tone_frames()
        self._clock: asyncio.Task[None] | None = None
        self.late_wakeups = 0

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self._sip, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self._sip_data), local_addr=("127.0.0.1", 0)
        )
        self.sip_port = self._sip.get_extra_info("sockname")[1]
        for call in self.calls:
            call.transport, _ = await loop.create_datagram_endpoint(
                lambda call=call: _Datagrams(call.on_rtp), local_addr=("127.0.0.1", 0)
            )
            call.rtp_port = call.transport.get_extra_info("sockname")[1]
        self._clock = loop.create_task(self._run_clock())

    # --- SIP ---------------------------------------------------------------------------------

    def _sip_data(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            message = parse(data)
        except SipParseError:
            return
        call = self._by_id.get(message.call_id)
        if call is None:
            return
        if isinstance(message, SipResponse):
            number, method = message.cseq
            if method == "INVITE" and message.status == 200:
                self._confirm(call, message)  # also the 200's retransmissions: ACK each
            if message.status >= 200:
                future = call.responses.get(f"{number} {method}")
                if future is not None and not future.done():
                    future.set_result(message)
            return
        if message.method == "BYE":
            self._send(response_to(message, 200))
            call.ended_by = call.ended_by or "gateway"
            call.state = "ended"
            call.ended.set()
        elif message.method not in ("ACK",):
            self._send(response_to(message, 200 if message.method in ("OPTIONS", "INFO") else 405))

    def _confirm(self, call: Call, response: SipResponse) -> None:
        call.remote_tag = response.to_tag or ""
        contact = response.headers.get("contact")
        call.remote_target = uri_of(contact) if contact else f"sip:dialin@{self.gateway[0]}:{self.gateway[1]}"
        if call.remote_rtp is None:
            answer = parse_offer(response.body.decode())
            call.remote_rtp = (answer.address, answer.port)
        ack = self._request(call, "ACK", 1, call.remote_target)
        self._send(ack)
        if call.state == "calling":
            call.state = "confirmed"
            call.established.set()

    def _request(self, call: Call, method: str, cseq: int, uri: str) -> SipRequest:
        request = SipRequest(method=method, uri=uri)
        h = request.headers
        h.add("via", f"SIP/2.0/UDP 127.0.0.1:{self.sip_port};branch={new_branch()};rport")
        h.add("max-forwards", "70")
        h.add("from", f"<sip:{call.user}@127.0.0.1>;tag={call.tag}")
        to = f"<sip:dialin@{self.gateway[0]}:{self.gateway[1]}>"
        h.add("to", f"{to};tag={call.remote_tag}" if call.remote_tag else to)
        h.add("call-id", call.call_id)
        h.add("cseq", f"{cseq} {method}")
        h.add("contact", f"<sip:{call.user}@127.0.0.1:{self.sip_port}>")
        return request

    def _send(self, message: SipRequest | SipResponse) -> None:
        assert self._sip is not None
        self._sip.sendto(message.encode(), self.gateway)

    async def _transaction(self, call: Call, request: SipRequest, timeout: float = 16.0) -> SipResponse:
        """Send with RFC 3261 timer A/E retransmissions until a final response (bounded)."""
        number, method = request.cseq
        future: asyncio.Future[SipResponse] = asyncio.get_running_loop().create_future()
        call.responses[f"{number} {method}"] = future
        interval, deadline = 0.5, time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self._send(request)
                with contextlib.suppress(asyncio.TimeoutError):
                    return await asyncio.wait_for(asyncio.shield(future), interval)
                interval = min(interval * 2, 4.0)
            raise TimeoutError(f"{call.user}: no final response to {method}")
        finally:
            call.responses.pop(f"{number} {method}", None)

    async def dial(self, call: Call) -> None:
        request = self._request(call, "INVITE", 1, f"sip:dialin@{self.gateway[0]}:{self.gateway[1]}")
        request.headers.add("content-type", "application/sdp")
        request.body = (
            "v=0\r\n"
            f"o=- {secrets.randbits(31)} 1 IN IP4 127.0.0.1\r\n"
            "s=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {call.rtp_port} RTP/AVP {PCMU} {EVENT_PT}\r\n"
            f"a=rtpmap:{PCMU} PCMU/8000\r\na=rtpmap:{EVENT_PT} telephone-event/8000\r\n"
            f"a=fmtp:{EVENT_PT} 0-15\r\na=ptime:20\r\na=sendrecv\r\n"
        ).encode()
        response = await self._transaction(call, request)
        if response.status != 200:
            raise RuntimeError(f"{call.user}: INVITE answered {response.status} {response.reason}")

    async def wait_prompt(self, call: Call, barge_in: bool, timeout: float = 40.0) -> bool:
        """Until the gateway plays a prompt (``barge_in``: typing over it stops it) or until it has
        played one and 300 ms of silence followed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if call.first_audible and (barge_in or time.monotonic() - call.last_audible > 0.3):
                return True
            await asyncio.sleep(0.05)
        return False

    async def _keys(self, call: Call, keys: str) -> None:
        for key in keys:
            call.press(key)
        while call.events:
            await asyncio.sleep(0.02)
        call.first_audible = 0.0  # the next prompt

    async def enter(self, call: Call, meeting_id: str, pin: str, barge_in: bool = False) -> None:
        """The meeting ID and `#` after the welcome prompt, the PIN and `#` after the PIN prompt."""
        await self.wait_prompt(call, barge_in)
        await self._keys(call, f"{meeting_id}#")
        await self.wait_prompt(call, barge_in)
        await self._keys(call, f"{pin}#")

    async def dial_in(self, meeting_id: str, pin: str, barge_in: bool = False) -> None:
        await asyncio.gather(*(self.dial(c) for c in self.calls))
        await asyncio.gather(*(self.enter(c, meeting_id, pin, barge_in) for c in self.calls))

    async def hang_up(self) -> None:
        async def bye(call: Call) -> None:
            if call.state != "confirmed":
                return
            call.state = "ended"
            call.ended_by = "caller"
            with contextlib.suppress(TimeoutError):
                await self._transaction(call, self._request(call, "BYE", 2, call.remote_target), 8.0)

        await asyncio.gather(*(bye(c) for c in self.calls))

    # --- media -------------------------------------------------------------------------------

    async def _run_clock(self) -> None:
        loop = asyncio.get_running_loop()
        start, n = loop.time(), 0
        while True:
            n += 1
            delay = start + n * 0.02 - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.02:
                self.late_wakeups += 1
            # Every frame due by now (at most a second's worth after a long stall).
            due = min(int((loop.time() - start) / 0.02), n + 49)
            while n <= due:
                frame = self._frames[n % 50]
                for call in self.calls:
                    if call.state == "confirmed":
                        call.send_frame(frame)
                n += 1
            n -= 1

    def counts(self) -> list[tuple[int, int]]:
        """(sent, received) RTP packets per call so far."""
        return [(c.sent, c.received) for c in self.calls]

    async def close(self) -> None:
        if self._clock is not None:
            self._clock.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._clock
        for call in self.calls:
            if call.transport is not None:
                call.transport.close()
        if self._sip is not None:
            self._sip.close()


async def run(args: argparse.Namespace) -> int:
    host, _, port = args.sip.rpartition(":")
    callers = Callers((host, int(port)), args.calls)
    await callers.open()
    try:
        await callers.dial_in(args.meeting_id, args.pin)
        before, t0 = callers.counts(), time.monotonic()
        await asyncio.sleep(args.seconds)
        after, elapsed = callers.counts(), time.monotonic() - t0
        for call, (s0, r0), (s1, r1) in zip(callers.calls, before, after, strict=True):
            print(
                f"{call.user}: {(s1 - s0) / elapsed:.1f} packets/s sent, {(r1 - r0) / elapsed:.1f} received"
            )
        await callers.hang_up()
    finally:
        await callers.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sip", required=True, help="the gateway's HOST:PORT (UDP)")
    parser.add_argument("--meeting-id", required=True)
    parser.add_argument("--pin", required=True)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=20.0)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
