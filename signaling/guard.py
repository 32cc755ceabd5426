"""Throttles and limits that keep one client from costing the others: failed credentials per source
address, REST requests per credential, unjoined sockets per token, and the response headers of
the pages. Limits are documented in README.md ("Secrets and throttles").

Failed credentials: every refused admin key, forged token or tampered link from an address (not
an expired one: ``TokenError.guess``) takes one from that address's bucket (``FAILURE_BURST``,
refilled one per ``FAILURE_REFILL_S``). An empty bucket means 429 for every request from that
address that presents a credential, checked or not (a correct guess must not get through a
throttle), until it refills. Successes give nothing back, so valid requests cannot be interleaved
to keep guessing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import time
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from conference.config import Settings

FAILURE_BURST = 20  # refused credentials an address may present at once ...
FAILURE_REFILL_S = 3.0  # ... then one more every 3 s (20 a minute)
MAX_UNJOINED_PER_TOKEN = 4  # sockets open with one token that have not joined (a reload, a retry)
MAX_TRACKED = 10_000  # keys remembered per limiter: memory stays bounded under any flood
CLOSE_THROTTLED = 4429
SERVER_HEADER = "conference"


class KeyedBuckets:
    """Token buckets by key (an address, a credential), ``rate`` per second up to ``burst``."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last)

    def _tokens(self, key: str, now: float) -> float:
        tokens, last = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - last) * self.rate)

    def wait(self, key: str) -> float:
        """Seconds until ``key`` has a token (0.0: it has one now); takes nothing."""
        tokens = self._tokens(key, self._clock())
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def take(self, key: str) -> float:
        """Take a token: 0.0 when there was one, else the seconds until there is (nothing taken)."""
        now = self._clock()
        tokens = self._tokens(key, now)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate
        self._buckets.pop(key, None)  # re-inserted last: the dict's order is least recent first
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > MAX_TRACKED:
            self._prune(now)
        return 0.0

    def _prune(self, now: float) -> None:
        # Drop the keys that have refilled (they are as if never seen), then the least recent, down
        # to 90%: a flood of new keys then pays for a prune once per thousand, not on every request.
        for key in [k for k in self._buckets if self._tokens(k, now) >= self.burst]:
            del self._buckets[key]
        while len(self._buckets) > MAX_TRACKED * 9 // 10:
            del self._buckets[next(iter(self._buckets))]


def _credential_key(credential: str) -> str:
    return "c:" + hashlib.sha256(credential.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class Guard:
    """The server's throttles (one per application: ``app[GUARD_KEY]``)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.failures = KeyedBuckets(1.0 / FAILURE_REFILL_S, FAILURE_BURST)
        self.rest = KeyedBuckets(settings.rest_rate, settings.rest_burst)

    def source(self, request: web.BaseRequest) -> str:
        """The client's address; with ``trust_forwarded_for`` (behind a reverse proxy) the one the
        proxy appended to X-Forwarded-For, since every request then comes from the proxy."""
        if self.settings.trust_forwarded_for:
            forwarded = request.headers.get("X-Forwarded-For", "")
            last = forwarded.rsplit(",", 1)[-1].strip()
            if last:
                return last[:64]
        return request.remote or "unknown"

    def throttled(self, request: web.BaseRequest) -> float:
        """Seconds this address must wait before a credential of it is looked at again (0: none)."""
        return self.failures.wait(self.source(request))

    def failed(self, request: web.BaseRequest) -> None:
        """A credential from this address was refused (401)."""
        self.failures.take(self.source(request))

    def rest_wait(self, request: web.BaseRequest, credential: str | None) -> float:
        key = _credential_key(credential) if credential else "a:" + self.source(request)
        return self.rest.take(key)


GUARD_KEY = web.AppKey("guard", Guard)


def too_many(message: str, wait: float) -> web.HTTPTooManyRequests:
    retry = max(1, math.ceil(wait))
    body = json.dumps({"error": "rate_limited", "message": message, "retry_after": round(wait, 3)})
    return web.HTTPTooManyRequests(
        text=body, content_type="application/json", headers={"Retry-After": str(retry)}
    )


def check_throttle(request: web.Request) -> None:
    """429 while this address is throttled for refused credentials."""
    guard = request.config_dict.get(GUARD_KEY)
    if guard is not None and (wait := guard.throttled(request)) > 0:
        raise too_many("too many refused credentials from this address", wait)


# --- the pages' headers ------------------------------------------------------------------------

_INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.S | re.I)


def content_security_policy(page: Path) -> str:
    """The pages load their scripts and styles from /static only; a page's own inline scripts are
    allowed by hash (computed from the installed file), nothing else inline runs."""
    try:
        html = page.read_text(encoding="utf-8")
    except OSError:
        html = ""
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(m.group(1).encode()).digest()).decode()}'"
        for m in _INLINE_SCRIPT.finditer(html)
    )
    script_src = f"'self' {hashes}".strip()
    return "; ".join(
        [
            "default-src 'self'",
            f"script-src {script_src}",
            "style-src 'self'",
            "img-src 'self' data: blob:",
            "media-src 'self' blob: mediastream:",
            "connect-src 'self' ws: wss:",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


PAGE_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
}


async def on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Every response: no library version in ``Server``, no MIME sniffing."""
    response.headers["Server"] = SERVER_HEADER
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
