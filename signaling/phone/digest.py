"""HTTP digest authentication as SIP uses it (RFC 3261 §22, RFC 2617, RFC 8760): the client side,
answering a registrar's 401/407 challenge with MD5 or SHA-256, qop=auth or none."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from .message import split_list

ALGORITHMS = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


class DigestError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Challenge:
    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False

    @classmethod
    def parse(cls, header: str) -> Challenge:
        scheme, _, rest = header.strip().partition(" ")
        if scheme.lower() != "digest":
            raise DigestError(f"not a digest challenge: {scheme[:20]!r}")
        fields: dict[str, str] = {}
        for item in split_list(rest):
            key, _, value = item.partition("=")
            value = value.strip()
            if value.startswith('"') and value.endswith('"') and len(value) >= 2:
                value = value[1:-1].replace('\\"', '"')
            fields[key.strip().lower()] = value
        if "realm" not in fields or "nonce" not in fields:
            raise DigestError("challenge without realm or nonce")
        algorithm = fields.get("algorithm", "MD5").upper()
        if algorithm not in ALGORITHMS:
            raise DigestError(f"unsupported digest algorithm {algorithm!r}")
        qop = tuple(q.strip().lower() for q in fields.get("qop", "").split(",") if q.strip())
        if qop and "auth" not in qop:
            raise DigestError(f"unsupported qop {qop!r}")
        return cls(
            realm=fields["realm"],
            nonce=fields["nonce"],
            algorithm=algorithm,
            qop=qop,
            opaque=fields.get("opaque"),
            stale=fields.get("stale", "").lower() == "true",
        )


def _h(algorithm: str, text: str) -> str:
    return ALGORITHMS[algorithm](text.encode()).hexdigest()


def response(
    challenge: Challenge,
    method: str,
    uri: str,
    username: str,
    password: str,
    *,
    cnonce: str | None = None,
    nc: int = 1,
) -> tuple[str, str | None]:
    """(the response hash, the cnonce used or None without qop)."""
    alg = challenge.algorithm
    ha1 = _h(alg, f"{username}:{challenge.realm}:{password}")
    ha2 = _h(alg, f"{method}:{uri}")
    if "auth" in challenge.qop:
        cnonce = cnonce or secrets.token_hex(8)
        return _h(alg, f"{ha1}:{challenge.nonce}:{nc:08x}:{cnonce}:auth:{ha2}"), cnonce
    return _h(alg, f"{ha1}:{challenge.nonce}:{ha2}"), None


def authorization(
    challenge: Challenge, method: str, uri: str, username: str, password: str, nc: int = 1
) -> str:
    """The Authorization (or Proxy-Authorization) header value answering ``challenge``."""
    digest, cnonce = response(challenge, method, uri, username, password, nc=nc)
    parts = [
        f'username="{username}"',
        f'realm="{challenge.realm}"',
        f'nonce="{challenge.nonce}"',
        f'uri="{uri}"',
        f'response="{digest}"',
        f"algorithm={challenge.algorithm}",
    ]
    if cnonce is not None:
        parts += ["qop=auth", f"nc={nc:08x}", f'cnonce="{cnonce}"']
    if challenge.opaque is not None:
        parts.append(f'opaque="{challenge.opaque}"')
    return "Digest " + ", ".join(parts)
