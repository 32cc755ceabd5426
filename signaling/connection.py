"""One endpoint's WebSocket as the server writes to it: an outgoing queue bounded in messages and
bytes, so a slow or stalled reader never holds up the room nor costs more than a few MB."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from aiohttp import WSCloseCode, web

from conference.media import MediaSession

from .protocol import OUTGOING_QUEUE, close_reason
from .tokens import Claims

log = logging.getLogger(__name__)

SLOW_CLOSE_TIMEOUT_S = 5.0


class Connection:
    """One endpoint's WebSocket: an outgoing queue so a slow reader never holds up the room.

    The queue is bounded in messages and in bytes (``max_queued_bytes``): a client that does not
    read is closed with 1008 and its queue dropped, so it costs the server a few MB at most. The
    close frame waits for it at most ``SLOW_CLOSE_TIMEOUT_S``; then the TCP connection is aborted
    (a graceful close would wait forever for a peer that never reads)."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        claims: Claims,
        *,
        max_queued_bytes: int = 4 * 1024 * 1024,
        transport: asyncio.Transport | None = None,
    ) -> None:
        self.ws = ws
        self.claims = claims
        self.joined = False
        self.session: MediaSession | None = None
        self.renewer: asyncio.Task[None] | None = None  # hands out session credentials (screens)
        self._queue: asyncio.Queue[str | tuple[int, str]] = asyncio.Queue(maxsize=OUTGOING_QUEUE)
        self._queued_bytes = 0  # JSON text is ASCII (json.dumps escapes): characters are bytes
        self._max_queued_bytes = max_queued_bytes
        self._transport = transport
        self._closing = False
        self._closer: asyncio.Task[bool] | None = None  # kept so the task is not garbage-collected
        self._writer = asyncio.get_running_loop().create_task(self._write())

    @property
    def room(self) -> str:
        return self.claims.room

    @property
    def identity(self) -> str:
        return self.claims.identity

    def send(self, message: dict[str, Any]) -> None:
        self.send_text(json.dumps(message))

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    def send_text(self, text: str) -> None:
        if self._closing:
            return
        if self._queued_bytes + len(text) > self._max_queued_bytes or self._queue.full():
            log.warning("closing %s/%s: does not read its messages", self.room, self.identity)
            self._close_now(WSCloseCode.POLICY_VIOLATION, "does not read its messages")
            return
        self._queue.put_nowait(text)
        self._queued_bytes += len(text)

    def close(self, code: int, reason: str) -> None:
        """Close after what is already queued has been sent (e.g. ``replaced`` before 4409)."""
        if self._closing:
            return
        if self._queue.full():
            self._close_now(code, reason)
            return
        self._closing = True
        self._queue.put_nowait((code, reason))

    def _close_now(self, code: int, reason: str) -> None:
        """Drop what is queued and close; abort the connection if the close cannot get out."""
        self._closing = True
        self._writer.cancel()
        self._queue = asyncio.Queue(maxsize=1)  # let the queued messages' memory go now
        self._queued_bytes = 0
        self._closer = asyncio.get_running_loop().create_task(self._close_or_abort(code, reason))

    async def _close_or_abort(self, code: int, reason: str) -> bool:
        try:
            await asyncio.wait_for(
                self.ws.close(code=code, message=close_reason(reason)), SLOW_CLOSE_TIMEOUT_S
            )
            return True
        except (TimeoutError, ConnectionError, RuntimeError):
            if self._transport is not None:
                self._transport.abort()
            return False

    async def _write(self) -> None:
        try:
            while True:
                item = await self._queue.get()
                if isinstance(item, tuple):
                    await self._close_or_abort(*item)
                    return
                await self.ws.send_str(item)
                self._queued_bytes -= len(item)
        except (ConnectionError, RuntimeError):  # the peer went away: the reader notices too
            return

    async def finish(self, timeout: float = 2.0) -> None:
        """Wait for queued messages to go out (bounded), then stop the writer."""
        if not self._writer.done():
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._writer), timeout)
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer

    async def close_session(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            try:
                await session.close()
            except Exception:
                log.exception("closing media session of %s/%s", self.room, self.identity)
