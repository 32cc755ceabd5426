"""TURN credentials per join (the "TURN REST API" of draft-uberti-behave-turn-rest, which coturn
implements as ``use-auth-secret``): the username is ``expiry:identity`` and the credential the
base64 HMAC-SHA1 of it under the secret the TURN server shares with us. Each joining endpoint gets
its own, valid for ``turn_ttl_s``; no page carries a fixed password, and a leaked one expires."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

from conference.config import Settings


def turn_credential(secret: str, identity: str, ttl_s: int, now: float | None = None) -> tuple[str, str]:
    expiry = int((time.time() if now is None else now) + ttl_s)
    username = f"{expiry}:{identity}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def ice_servers_for(settings: Settings, identity: str) -> list[dict[str, Any]]:
    """What a joining endpoint's peer connection uses: the configured servers, and the TURN server
    with this endpoint's own time-limited credential."""
    servers = [dict(s) for s in settings.ice_servers]
    if settings.turn_urls and settings.turn_secret:
        username, credential = turn_credential(settings.turn_secret, identity, settings.turn_ttl_s)
        servers.append({"urls": list(settings.turn_urls), "username": username, "credential": credential})
    return servers
