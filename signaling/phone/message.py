"""SIP messages (RFC 3261 §7): one parser and one serialiser for requests and responses.

Only what a gateway needs: the start line, headers (compact forms expanded, repeated and
comma-separated values kept in order), a body sized by Content-Length. Anything else is a
``SipParseError``; the caller answers 400 when the message is a request with a usable Via,
and drops it otherwise.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

MAX_MESSAGE = 64 * 1024
MAX_HEADERS = 100
SIP_VERSION = "SIP/2.0"
METHODS = frozenset({"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "INFO", "UPDATE", "PRACK"})
COMPACT = {
    "v": "via",
    "f": "from",
    "t": "to",
    "i": "call-id",
    "m": "contact",
    "l": "content-length",
    "c": "content-type",
    "k": "supported",
    "s": "subject",
    "e": "content-encoding",
}
# Headers whose value is a comma-separated list that may also be split over several lines.
LIST_HEADERS = frozenset({"via", "contact", "allow", "supported", "require", "route", "record-route"})
CANONICAL = {
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "www-authenticate": "WWW-Authenticate",
    "proxy-authenticate": "Proxy-Authenticate",
}
REASONS = {
    100: "Trying",
    180: "Ringing",
    183: "Session Progress",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    415: "Unsupported Media Type",
    420: "Bad Extension",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    500: "Server Internal Error",
    503: "Service Unavailable",
    603: "Decline",
}
_TOKEN = re.compile(r"^[A-Za-z0-9.!%*_+`'~-]+$")
_STATUS = re.compile(r"^SIP/2\.0 ([1-6][0-9][0-9]) (.*)$")


class SipParseError(ValueError):
    """A message that is not valid SIP. ``request`` is set when the start line was a request,
    so the caller can still answer 400 when the headers allow routing a response."""

    def __init__(self, reason: str, request: SipRequest | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.request = request


def canonical(name: str) -> str:
    name = name.lower()
    return CANONICAL.get(name) or "-".join(part.capitalize() for part in name.split("-"))


def split_list(value: str) -> list[str]:
    """Split a header value on commas outside quotes and angle brackets."""
    parts: list[str] = []
    depth = 0
    quoted = False
    start = 0
    for i, ch in enumerate(value):
        if ch == '"' and (i == 0 or value[i - 1] != "\\"):
            quoted = not quoted
        elif not quoted and ch == "<":
            depth += 1
        elif not quoted and ch == ">":
            depth = max(0, depth - 1)
        elif ch == "," and not quoted and depth == 0:
            parts.append(value[start:i].strip())
            start = i + 1
    parts.append(value[start:].strip())
    return [p for p in parts if p]


@dataclass(slots=True)
class Headers:
    """Headers in order; names compared case-insensitively, compact forms expanded."""

    items: list[tuple[str, str]] = field(default_factory=list)

    def get(self, name: str) -> str | None:
        key = name.lower()
        for n, v in self.items:
            if n == key:
                return v
        return None

    def get_all(self, name: str) -> list[str]:
        key = name.lower()
        return [v for n, v in self.items if n == key]

    def add(self, name: str, value: str) -> None:
        self.items.append((name.lower(), value))

    def set(self, name: str, value: str) -> None:
        key = name.lower()
        self.items = [(n, v) for n, v in self.items if n != key]
        self.items.append((key, value))

    def remove(self, name: str) -> None:
        key = name.lower()
        self.items = [(n, v) for n, v in self.items if n != key]


@dataclass(slots=True)
class SipMessage:
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    @property
    def call_id(self) -> str:
        return self.headers.get("call-id") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        number, _, method = (self.headers.get("cseq") or "").partition(" ")
        return int(number), method.strip().upper()

    @property
    def top_via(self) -> Via:
        return Via.parse(self.headers.get_all("via")[0])

    @property
    def from_tag(self) -> str | None:
        return param(self.headers.get("from") or "", "tag")

    @property
    def to_tag(self) -> str | None:
        return param(self.headers.get("to") or "", "tag")

    def _head_and_body(self, start: str) -> bytes:
        lines = [start]
        for name, value in self.headers.items:
            if name == "content-length":
                continue
            lines.append(f"{canonical(name)}: {value}")
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


@dataclass(slots=True)
class SipRequest(SipMessage):
    method: str = ""
    uri: str = ""

    def encode(self) -> bytes:
        return self._head_and_body(f"{self.method} {self.uri} {SIP_VERSION}")


@dataclass(slots=True)
class SipResponse(SipMessage):
    status: int = 200
    reason: str = "OK"

    def encode(self) -> bytes:
        return self._head_and_body(f"{SIP_VERSION} {self.status} {self.reason}")


@dataclass(frozen=True, slots=True)
class Via:
    transport: str
    host: str
    port: int | None
    params: dict[str, str | None]

    @property
    def branch(self) -> str:
        return self.params.get("branch") or ""

    @classmethod
    def parse(cls, value: str) -> Via:
        sent, _, rest = value.strip().partition(" ")
        protocol = sent.split("/")
        if len(protocol) != 3 or protocol[0].upper() != "SIP" or protocol[1] != "2.0":
            raise SipParseError(f"bad Via {value[:80]!r}")
        hostport, *params = [p.strip() for p in rest.split(";")]
        host, port = split_hostport(hostport)
        parsed: dict[str, str | None] = {}
        for p in params:
            k, eq, v = p.partition("=")
            parsed[k.strip().lower()] = v.strip() if eq else None
        return cls(protocol[2].upper(), host, port, parsed)


def split_hostport(hostport: str) -> tuple[str, int | None]:
    hostport = hostport.strip()
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = hostport.partition(":")
    if not host:
        raise SipParseError(f"bad host {hostport[:80]!r}")
    if not port_text:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise SipParseError(f"bad port {hostport[:80]!r}")
    return host, int(port_text)


def param(value: str, name: str) -> str | None:
    """A ``;name=value`` parameter of a name-addr header (outside the <URI>)."""
    tail = value.rsplit(">", 1)[-1] if ">" in value else value
    for part in tail.split(";")[1:]:
        k, _, v = part.partition("=")
        if k.strip().lower() == name:
            return v.strip()
    return None


def uri_of(name_addr: str) -> str:
    """The URI of a name-addr (``"Bob" <sip:bob@h>;tag=1``) or addr-spec header value."""
    if "<" in name_addr:
        return name_addr.split("<", 1)[1].split(">", 1)[0].strip()
    return name_addr.split(";", 1)[0].strip()


def uri_user(uri: str) -> str:
    """The user part of a sip: URI, '' when it has none."""
    _, _, rest = uri.partition(":")
    user, at, _ = rest.partition("@")
    return user.split(";", 1)[0] if at else ""


def new_tag() -> str:
    return secrets.token_hex(6)


def new_branch() -> str:
    return "z9hG4bK" + secrets.token_hex(8)


def parse(data: bytes) -> SipRequest | SipResponse:
    """One message from a datagram or a framed stream chunk."""
    if len(data) > MAX_MESSAGE:
        raise SipParseError("message too large")
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = data.partition(b"\n\n")  # tolerated: bare LF line ends
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise SipParseError("headers are not UTF-8") from None
    lines = text.replace("\r\n", "\n").split("\n")
    start = lines[0].strip()
    message: SipRequest | SipResponse
    if m := _STATUS.match(start):
        message = SipResponse(status=int(m.group(1)), reason=m.group(2))
    else:
        parts = start.split(" ")
        if len(parts) != 3 or parts[2] != SIP_VERSION or not _TOKEN.match(parts[0]) or ":" not in parts[1]:
            raise SipParseError(f"bad start line {start[:80]!r}")
        message = SipRequest(method=parts[0].upper(), uri=parts[1])
    request = message if isinstance(message, SipRequest) else None
    # Unfold continuation lines (RFC 3261 §7.3.1).
    raw: list[str] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and raw:
            raw[-1] += " " + line.strip()
        elif line.strip():
            raw.append(line)
    if len(raw) > MAX_HEADERS:
        raise SipParseError("too many headers", request)
    for line in raw:
        name, colon, value = line.partition(":")
        name = name.strip().lower()
        if not colon or not _TOKEN.match(name or "?"):
            raise SipParseError(f"bad header line {line[:80]!r}", request)
        name = COMPACT.get(name, name)
        value = value.strip()
        if name in LIST_HEADERS:
            for item in split_list(value):
                message.headers.add(name, item)
        else:
            message.headers.add(name, value)
    length_text = message.headers.get("content-length")
    if length_text is not None:
        if not length_text.isdigit() or int(length_text) > len(body):
            raise SipParseError("bad Content-Length", request)
        body = body[: int(length_text)]
    message.body = body
    check_required(message, request)
    return message


def check_required(message: SipRequest | SipResponse, request: SipRequest | None) -> None:
    if not message.headers.get("via"):
        raise SipParseError("missing Via", None)  # nowhere to send an answer
    for name in ("from", "to", "call-id", "cseq"):
        if not message.headers.get(name):
            raise SipParseError(f"missing {canonical(name)}", request)
    try:
        message.top_via  # noqa: B018 - parses and validates
    except SipParseError as exc:
        raise SipParseError(exc.reason, None) from None  # no usable Via: nowhere to answer
    number, _, method = (message.headers.get("cseq") or "").partition(" ")
    if not number.strip().isdigit() or int(number) >= 2**31 or not _TOKEN.match(method.strip() or "?"):
        raise SipParseError("bad CSeq", request)
    if request is not None and method.strip().upper() != request.method:
        raise SipParseError("CSeq method differs from the request method", request)


def response_to(
    request: SipRequest, status: int, reason: str | None = None, to_tag: str | None = None
) -> SipResponse:
    """A response with the request's Via, From, To (tagged when ``to_tag``), Call-ID and CSeq."""
    response = SipResponse(status=status, reason=reason or REASONS.get(status, "Unknown"))
    for via in request.headers.get_all("via"):
        response.headers.add("via", via)
    for name in ("from", "to", "call-id", "cseq"):
        value = request.headers.get(name) or ""
        if name == "to" and to_tag and param(value, "tag") is None:
            value = f"{value};tag={to_tag}"
        response.headers.add(name, value)
    return response
