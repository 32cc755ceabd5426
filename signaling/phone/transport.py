"""SIP over UDP and TCP on one address (RFC 3261 §18).

Each message that arrives is handed to ``on_data(data, peer)`` as bytes; parsing and answers are
the user agent's. Over TCP, messages are framed by Content-Length and answers go back on the
connection the request came on; a connection that sends something unframeable is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from .message import MAX_MESSAGE

log = logging.getLogger(__name__)
TCP_IDLE_S = 300.0  # an idle TCP connection is closed (RFC 5626 keep-alives would keep it)
MAX_TCP_CONNECTIONS = 256


@dataclass(frozen=True, slots=True)
class Peer:
    """Where a message came from and where its answers go."""

    transport: str  # "UDP" or "TCP"
    host: str
    port: int

    @property
    def addr(self) -> tuple[str, int]:
        return (self.host, self.port)


OnData = Callable[[bytes, Peer], None]


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, owner: SipTransport) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        if data.strip():  # CRLF keep-alives carry nothing
            self.owner.on_data(data, Peer("UDP", addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        log.debug("SIP UDP error: %s", exc)


class SipTransport:
    def __init__(self, on_data: OnData) -> None:
        self.on_data = on_data
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._streams: dict[tuple[str, int], asyncio.StreamWriter] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.host = ""
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        """Listen on UDP and TCP at host:port (port 0: one free port for both)."""
        loop = asyncio.get_running_loop()
        for _ in range(20):  # port 0: the UDP port the OS picks may be taken on TCP; try again
            udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), local_addr=(host, port))
            bound = udp.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(self._serve, host, bound, limit=MAX_MESSAGE)
            except OSError:
                udp.close()
                if port:
                    raise
                continue
            self._udp = udp
            self.host, self.port = host, bound
            return
        raise OSError(f"no port free on {host} for both UDP and TCP")

    def send(self, peer: Peer, data: bytes) -> None:
        if peer.transport == "UDP":
            if self._udp is not None:
                self._udp.sendto(data, peer.addr)
            return
        writer = self._streams.get(peer.addr)
        if writer is not None and not writer.is_closing():
            writer.write(data)
            return
        self._spawn(self._connect_and_send(peer, data))

    async def _connect_and_send(self, peer: Peer, data: bytes) -> None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(peer.host, peer.port, limit=MAX_MESSAGE), 5.0
            )
        except (TimeoutError, OSError) as exc:
            log.warning("SIP TCP connection to %s:%d failed: %s", peer.host, peer.port, exc)
            return
        writer.write(data)
        await self._read_stream(reader, writer, peer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = writer.get_extra_info("peername")[:2]
        if len(self._streams) >= MAX_TCP_CONNECTIONS:
            writer.close()
            return
        await self._read_stream(reader, writer, Peer("TCP", host, port))

    async def _read_stream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer
    ) -> None:
        self._streams[peer.addr] = writer
        try:
            while True:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TCP_IDLE_S)
                if not head.strip():
                    continue  # keep-alive
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() in (b"content-length", b"l"):
                        value = value.strip()
                        if not value.isdigit() or int(value) > MAX_MESSAGE:
                            raise ValueError("bad Content-Length")
                        length = int(value)
                body = await reader.readexactly(length) if length else b""
                self.on_data(head.lstrip(b"\r\n") + body, peer)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        except ValueError:  # unframeable: close the connection
            pass
        finally:
            if self._streams.get(peer.addr) is writer:
                del self._streams[peer.addr]
            writer.close()

    def _spawn(self, coro: object) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        for writer in list(self._streams.values()):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tcp is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tcp.wait_closed(), 2.0)
