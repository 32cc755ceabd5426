"""Following one Redis pub/sub channel in a way that survives Redis going away (a restart, a dropped
connection): the room store's events and the comment store's changes both come this way.

The subscription has a connection of its own, without a read timeout (it waits for messages as long
as it takes; a health check finds a dead connection instead), so commands on the store's own
connection keep their short timeouts. When Redis goes away it subscribes again with a backoff, and
each time it is subscribed it first runs ``on_subscribed``: Redis hands a message only to whoever
listens at that moment, so what was published meanwhile is read back from the store's own logs there.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

# What "Redis cannot be reached" looks like from the client library.
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
FIRST_BACKOFF_S = 0.2
MAX_BACKOFF_S = 2.0

Handler = Callable[[dict[str, Any]], Awaitable[None]]
Method = Callable[..., Awaitable[Any]]


def reachable(unavailable: Callable[[], Exception]) -> Callable[[Method], Method]:
    """A decorator: Redis being away raises ``unavailable()`` (one clear error, 503 at the routes),
    not whatever the client library raised."""

    def decorate(method: Method) -> Method:
        @functools.wraps(method)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return await method(*args, **kwargs)
            except UNREACHABLE:
                raise unavailable() from None

        return wrapper

    return decorate


class RedisSubscription:
    """``on_message(data)`` for every JSON message on ``channel``, in order; ``on_subscribed()`` each
    time the subscription is (again) in place, before the messages that follow it."""

    def __init__(
        self,
        url: str,
        channel: str,
        on_message: Handler,
        *,
        on_subscribed: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._redis = aioredis.from_url(
            url, decode_responses=True, socket_connect_timeout=1.0, health_check_interval=5
        )
        self.channel = channel
        self._on_message = on_message
        self._on_subscribed = on_subscribed
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()  # set while the subscription is in place

    def run(self) -> None:
        """Start following (in the background) unless it already does."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def start(self, timeout_s: float = 5.0) -> bool:
        """Start following and wait until subscribed (what is published from then on arrives); False
        if Redis did not answer within ``timeout_s`` (it keeps trying in the background)."""
        self.run()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.subscribed.wait(), timeout_s)
        return self.subscribed.is_set()

    async def _run(self) -> None:
        backoff = FIRST_BACKOFF_S
        while True:
            try:
                await self._follow()
                backoff = FIRST_BACKOFF_S
            except asyncio.CancelledError:
                raise
            except UNREACHABLE as exc:
                log.warning(
                    "redis unreachable (%s): subscribing to %s again in %.1f s", exc, self.channel, backoff
                )
            except Exception:  # whatever else went wrong, the subscription must come back
                log.exception("subscription to %s failed: subscribing again in %.1f s", self.channel, backoff)
            self.subscribed.clear()
            await asyncio.sleep(backoff)
            backoff = min(MAX_BACKOFF_S, backoff * 2)

    async def _follow(self) -> None:
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(self.channel)
            log.info("following %s on redis", self.channel)
            self.subscribed.set()
            if self._on_subscribed is not None:
                await self._on_subscribed()
            async for message in pubsub.listen():
                if message.get("type") != "message":
                    continue
                try:
                    await self._on_message(json.loads(message["data"]))
                except UNREACHABLE:
                    raise  # the handler reads Redis too: subscribe again, catching up
                except Exception:  # one bad message must not stop the ones after it
                    log.exception("bad message on %s", self.channel)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        self.subscribed.clear()
        await self._redis.aclose()
