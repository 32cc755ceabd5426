"""What keeps the public's side usable under abuse: a signed cookie naming the browser, token-bucket
limits per address and per browser on comment posts and likes, and duplicate suppression. In this
process by default; shared by every process through Redis when ``redis_url`` is set (one Lua call
per check), so a flood spread over several servers meets the same limits.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from typing import Any

import redis.asyncio as aioredis

from conference.comment_store import CommentsUnavailable
from conference.redis_subscription import reachable

_reachable = reachable(CommentsUnavailable)

COOKIE = "visitor"
COOKIE_MAX_AGE = 365 * 24 * 3600
MAX_KEYS = 200_000  # buckets and duplicate marks kept in memory at most (oldest dropped)

# KEYS[1] the bucket; ARGV: rate, burst, now. Answers the wait in milliseconds (0: taken).
_BUCKET_LUA = """
local rate, burst, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 't', 'l')
local tokens, last = tonumber(b[1]) or burst, tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - last) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 't', tokens, 'l', now)
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return math.ceil(wait * 1000)
"""


def browser_cookie(secret: str, value: str | None) -> tuple[str, str | None]:
    """(the browser's id, a new cookie value to set or None). A missing or forged cookie gets a
    fresh id: the per-address limit still holds for clients that drop cookies."""
    if value:
        ident, _, mac = value.partition(".")
        if ident and hmac.compare_digest(mac, _mac(secret, ident)):
            return ident, None
    ident = secrets.token_urlsafe(12)
    return ident, f"{ident}.{_mac(secret, ident)}"


def _mac(secret: str, ident: str) -> str:
    digest = hmac.new(secret.encode(), b"visitor\0" + ident.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:18]).decode()


class Limits:
    """Token buckets and duplicate marks by key (``post:ip:1.2.3.4``, ``like:browser:abc``...)."""

    def __init__(self, redis_url: str | None = None, prefix: str = "conference") -> None:
        # Short timeouts: while Redis is away a post is refused in about a second (503), it does not hang.
        self._redis = (
            aioredis.from_url(
                redis_url, decode_responses=True, socket_connect_timeout=1.0, socket_timeout=2.0
            )
            if redis_url
            else None
        )
        self.redis = self._redis  # shared with signaling.audience's figures (one client)
        self._prefix = prefix
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._marks: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._script: Any = None

    @_reachable
    async def take(self, key: str, rate: float, burst: float) -> float:
        """0.0 when one more may go through, else the seconds to wait."""
        if self._redis is not None:
            if self._script is None:
                self._script = self._redis.register_script(_BUCKET_LUA)
            wait_ms = await self._script(
                keys=[f"{self._prefix}:limit:{key}"], args=[rate, burst, time.time()]
            )
            return int(wait_ms) / 1000
        now = time.monotonic()
        tokens, last = self._buckets.pop(key, (burst, now))
        tokens = min(burst, tokens + (now - last) * rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / rate
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > MAX_KEYS:
            self._buckets.popitem(last=False)
        return wait

    @_reachable
    async def first(self, key: str, value: str, ttl_s: float) -> str | None:
        """Mark ``key`` with ``value`` for ``ttl_s``; None if it was free, else the earlier value."""
        if self._redis is not None:
            full = f"{self._prefix}:dup:{key}"
            if await self._redis.set(full, value, nx=True, ex=max(1, int(ttl_s))):
                return None
            return await self._redis.get(full)
        now = time.monotonic()
        mark = self._marks.get(key)
        if mark is not None and now - mark[0] < ttl_s:
            return mark[1]
        self._marks.pop(key, None)
        self._marks[key] = (now, value)
        if len(self._marks) > MAX_KEYS:
            self._marks.popitem(last=False)
        return None

    @_reachable
    async def release(self, key: str) -> None:
        """Drop a mark (a post refused after it was marked)."""
        if self._redis is not None:
            await self._redis.delete(f"{self._prefix}:dup:{key}")
        else:
            self._marks.pop(key, None)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
