"""Signed access tokens (JWT, HS256) and the server's secrets; the ``conference token`` command.

A token admits one identity to one room in one role until it expires. The secret that signs
tokens and the admin key for the REST API are resolved the same way by every command: explicit
setting (flag, environment or config file), else a file in the data directory, generated on
first use so ``conference serve`` and ``conference token`` agree without any set-up.
"""

from __future__ import annotations

import argparse
import hmac
import os
import re
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from conference.config import (
    MIN_SECRET_BYTES,
    ConfigError,
    Settings,
    add_settings_arguments,
    settings_from_args,
)
from conference.roles import Role

ALGORITHM = "HS256"
DEFAULT_TTL_S = 12 * 3600  # one meeting day
MAX_TTL_S = 366 * 24 * 3600
# Room and identity names end up in recording ids and file names: keep them to a safe alphabet.
# fullmatch, not `$`: `$` also matches before a trailing newline ("council\n" would pass).
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SECRET_FILE = "secret"
ADMIN_KEY_FILE = "admin_key"


class TokenError(Exception):
    """A refused token: ``status`` is 401 (who are you?) or 403 (not here / not allowed)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason

    @property
    def close_code(self) -> int:
        return 4401 if self.status == 401 else 4403

    @property
    def guess(self) -> bool:
        """Whether this refusal counts against the sender's address (``signaling.guard``): a forged,
        malformed or tampered token does; an expired one (its signature held) or none at all does not,
        so a page left open past its token's expiry cannot lock out its neighbours behind one NAT."""
        return self.status == 401 and self.reason not in ("token expired", "missing token")


@dataclass(frozen=True, slots=True)
class Claims:
    room: str
    identity: str
    name: str
    role: Role
    issued_at: int
    expires_at: int
    admin: bool = False
    # Minted by the admin key for a telephone gateway's caller (POST /api/dial-in): may join with a
    # plain-RTP media session, which sends UDP to an address the client names.
    gateway: bool = False
    # The screen link (conference.screen_links) the token was issued under: a link's own token or
    # a session credential handed to a screen that joined with one. Revoking the link refuses both.
    link: str | None = None
    # An invitation from the roster (signaling.running_order): what the console shows of the person.
    kind: str = ""
    sector: str = ""


# The longest kind and sector a token carries (conference.roster's limits).
MAX_KIND, MAX_SECTOR = 32, 64


def check_name(kind: str, value: str) -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise ValueError(
            f"{kind} must be 1-64 characters of letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit; got {value!r}"
        )
    return value


def mint_token(
    secret: str,
    room: str,
    identity: str,
    name: str,
    role: Role | str,
    ttl: int = DEFAULT_TTL_S,
    admin: bool = False,
    *,
    gateway: bool = False,
    now: int | None = None,
    link: str | None = None,
    kind: str = "",
    sector: str = "",
) -> str:
    check_name("room", room)
    check_name("identity", identity)
    try:
        role = Role(role)
    except ValueError:
        raise ValueError(f"role must be one of {', '.join(Role)}; got {role!r}") from None
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise ValueError("name must be 1-100 characters")
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_TTL_S:
        raise ValueError(f"ttl must be an integer from 1 to {MAX_TTL_S} seconds; got {ttl!r}")
    if not isinstance(admin, bool):
        raise ValueError(f"admin must be true or false; got {admin!r}")
    if admin and role is not Role.CLERK:
        raise ValueError("admin (every room's recordings) is only for clerk tokens")
    if not isinstance(gateway, bool):
        raise ValueError(f"gateway must be true or false; got {gateway!r}")
    if gateway and role is not Role.MEMBER:
        raise ValueError("gateway (a telephone caller's plain-RTP media) is only for member tokens")
    for label, value, limit in (("kind", kind, MAX_KIND), ("sector", sector, MAX_SECTOR)):
        if not isinstance(value, str) or len(value) > limit:
            raise ValueError(f"{label} must be text of at most {limit} characters")
    issued = int(time.time()) if now is None else now
    payload: dict[str, Any] = {
        "room": room,
        "sub": identity,
        "name": name.strip(),
        "role": str(role),
        "iat": issued,
        "exp": issued + ttl,
    }
    if admin:
        payload["admin"] = True
    if gateway:
        payload["gateway"] = True
    if link is not None:
        payload["lnk"] = link
    if kind:
        payload["kind"] = kind
    if sector:
        payload["sector"] = sector
    return jwt.encode(payload, secret, algorithm=ALGORITHM)


def verify_token(secret: str, token: str | None) -> Claims:
    """The token's claims, or TokenError(401) saying what is wrong with it."""
    if not token:
        raise TokenError(401, "missing token")
    try:
        payload = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            options={"require": ["exp", "iat", "sub", "room", "role"]},
        )
    except jwt.ExpiredSignatureError:
        raise TokenError(401, "token expired") from None
    except jwt.InvalidSignatureError:
        raise TokenError(401, "invalid signature") from None
    except jwt.MissingRequiredClaimError as exc:
        raise TokenError(401, f"invalid claims: missing {exc.claim}") from None
    except jwt.DecodeError:
        raise TokenError(401, "malformed token") from None
    except jwt.InvalidTokenError as exc:
        raise TokenError(401, f"invalid claims: {exc}") from None
    try:
        role = Role(payload["role"])
        room = check_name("room", payload["room"])
        identity = check_name("identity", payload["sub"])
        name = payload.get("name") or identity
        if not isinstance(name, str):
            raise ValueError("name must be a string")
        admin = payload.get("admin", False)
        if not isinstance(admin, bool):
            raise ValueError("admin must be true or false")
        if admin and role is not Role.CLERK:  # minted before the rule: never an admin
            raise ValueError("admin is only for clerk tokens")
        gateway = payload.get("gateway", False)
        if not isinstance(gateway, bool) or (gateway and role is not Role.MEMBER):
            raise ValueError("gateway must be true or false, and only on member tokens")
        link = payload.get("lnk")
        if link is not None and (not isinstance(link, str) or not 1 <= len(link) <= 64):
            raise ValueError("lnk must be a link id")
        kind, sector = payload.get("kind", ""), payload.get("sector", "")
        if not isinstance(kind, str) or not isinstance(sector, str):
            raise ValueError("kind and sector must be text")
    except (ValueError, TypeError) as exc:
        raise TokenError(401, f"invalid claims: {exc}") from None
    return Claims(
        room=room,
        identity=identity,
        name=name[:100],
        role=role,
        issued_at=int(payload["iat"]),
        expires_at=int(payload["exp"]),
        admin=admin,
        gateway=gateway,
        link=link,
        kind=kind[:MAX_KIND],
        sector=sector[:MAX_SECTOR],
    )


def check_room(claims: Claims, room: str) -> None:
    if claims.room != room:
        raise TokenError(403, "token is for another room")


def admin_key_matches(expected: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


# --- secrets ---------------------------------------------------------------------------------


def _checked(value: str, where: str) -> str:
    if len(value.encode("utf-8")) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"{where} holds a secret shorter than {MIN_SECRET_BYTES} bytes: replace it with a longer"
            " one (e.g. `openssl rand -base64 32`)"
        )
    return value


def _read_file(path: Path, name: str) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {path}: {exc.strerror}") from None
    return _checked(value, str(path))


def _read_or_create(path: Path, create: bool) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        value = ""
    if value:
        return _checked(value, str(path))
    if not create:
        raise ConfigError(f"no secret given and {path} does not exist")
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    # O_EXCL: if two commands start at once, the second reads what the first wrote.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="utf-8").strip()
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(value + "\n")
    return value


def resolve_secret(settings: Settings, *, create: bool = True) -> str:
    """The token-signing secret: the setting, else ``secret_file``, else <data_dir>/secret
    (generated when missing). Settings refuse one shorter than 32 bytes; so do the files."""
    if settings.secret:
        return settings.secret
    if settings.secret_file is not None:
        return _read_file(settings.secret_file, "secret_file")
    return _read_or_create(settings.data_dir / SECRET_FILE, create)


def resolve_admin_key(settings: Settings, *, create: bool = True) -> str:
    if settings.admin_key:
        return settings.admin_key
    if settings.admin_key_file is not None:
        return _read_file(settings.admin_key_file, "admin_key_file")
    return _read_or_create(settings.data_dir / ADMIN_KEY_FILE, create)


# --- `conference token` ------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--room", required=True, help="room id")
    parser.add_argument("--role", required=True, choices=[str(r) for r in Role])
    parser.add_argument("--identity", required=True, help="unique id of the participant in the room")
    parser.add_argument("--name", required=True, help="display name")
    parser.add_argument("--ttl", type=int, default=DEFAULT_TTL_S, help="seconds (default 12 h)")
    parser.add_argument("--admin", action="store_true", help="clerk of every room's recordings")
    parser.add_argument("--url", action="store_true", help="print the page URL with the token instead")
    parser.add_argument(
        "--base-url",
        metavar="URL",
        help="with --url: the address people open (https://meet.example.org behind a proxy); "
        "default: built from the server's settings (host, port, TLS), as serve listens",
    )
    add_settings_arguments(parser, server=False)


PAGE_FOR_ROLE = {
    Role.CHAIR: "chair",
    Role.VENUE: "venue",
    Role.MEMBER: "phone",
    Role.CLERK: "clerk",
    Role.VIEWER: "venue",
    Role.MODERATOR: "moderate",
}


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
        secret = resolve_secret(settings)
        token = mint_token(secret, args.room, args.identity, args.name, args.role, args.ttl, args.admin)
    except (ConfigError, ValueError) as exc:
        print(f"conference token: {exc}", file=sys.stderr)
        return 2
    base = (args.base_url or settings.public_url).rstrip("/")
    if args.base_url and not args.base_url.startswith(("http://", "https://")):
        print("conference token: --base-url must start with http:// or https://", file=sys.stderr)
        return 2
    if args.url:
        print(f"{base}/{PAGE_FOR_ROLE[Role(args.role)]}?token={token}")
    else:
        print(token)
    return 0
