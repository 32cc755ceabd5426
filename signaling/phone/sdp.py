"""SDP offer/answer for one audio stream (RFC 4566, RFC 3264).

The gateway answers the first audio m-line with the best codec it supports (Opus, then PCMA, then
PCMU) and RFC 4733 telephone-event when offered (at the codec's clock rate if offered so, else the
one offered). No common codec is ``NoCommonCodec`` (the INVITE gets 488).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

# Static payload types (RFC 3551) the gateway speaks.
STATIC = {0: ("PCMU", 8000, 1), 8: ("PCMA", 8000, 1)}
SUPPORTED = ("opus", "pcma", "pcmu")
MAX_SDP = 16 * 1024


class SdpError(ValueError):
    pass


class NoCommonCodec(SdpError):
    pass


@dataclass(slots=True)
class Codec:
    payload_type: int
    name: str  # lower case: "pcmu", "pcma", "opus", "telephone-event"
    clock_rate: int
    channels: int = 1
    fmtp: str = ""


@dataclass(slots=True)
class AudioOffer:
    """What the remote side offers for its first audio stream."""

    address: str
    port: int
    codecs: list[Codec] = field(default_factory=list)
    direction: str = "sendrecv"
    ptime: int | None = None


def parse_offer(text: str) -> AudioOffer:
    if len(text) > MAX_SDP:
        raise SdpError("SDP too large")
    session_address: str | None = None
    media_address: str | None = None
    port: int | None = None
    payload_types: list[int] = []
    rtpmap: dict[int, tuple[str, int, int]] = {}
    fmtp: dict[int, str] = {}
    direction = "sendrecv"
    ptime: int | None = None
    in_audio = seen_audio = False
    lines = [line.strip() for line in text.replace("\r\n", "\n").split("\n") if line.strip()]
    if not lines or not lines[0].startswith("v=0"):
        raise SdpError("SDP must start with v=0")
    for line in lines:
        if len(line) < 2 or line[1] != "=":
            raise SdpError(f"bad SDP line {line[:60]!r}")
        kind, value = line[0], line[2:]
        if kind == "m":
            in_audio = False
            parts = value.split()
            if len(parts) < 4:
                raise SdpError(f"bad m-line {value[:60]!r}")
            if parts[0] == "audio" and not seen_audio:
                if not parts[1].isdigit() or int(parts[1]) > 65535:
                    raise SdpError("bad audio port")
                if "RTP/AVP" not in parts[2] or "SAVP" in parts[2]:
                    raise SdpError(f"unsupported media profile {parts[2]!r}")
                port = int(parts[1])
                try:
                    payload_types = [int(p) for p in parts[3:]]
                except ValueError:
                    raise SdpError("bad payload type") from None
                in_audio = seen_audio = True
        elif kind == "c":
            parts = value.split()
            if len(parts) < 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
                raise SdpError(f"bad c-line {value[:60]!r}")
            address = parts[2].split("/")[0]
            if in_audio:
                media_address = address
            elif not seen_audio:
                session_address = address
        elif kind == "a" and (in_audio or not seen_audio):
            name, _, arg = value.partition(":")
            if name in ("sendrecv", "sendonly", "recvonly", "inactive"):
                direction = name
            elif not in_audio:
                continue
            elif name == "rtpmap":
                pt_text, _, enc = arg.partition(" ")
                pieces = enc.split("/")
                if pt_text.isdigit() and len(pieces) >= 2 and pieces[1].isdigit():
                    channels = int(pieces[2]) if len(pieces) > 2 and pieces[2].isdigit() else 1
                    rtpmap[int(pt_text)] = (pieces[0].lower(), int(pieces[1]), channels)
            elif name == "fmtp":
                pt_text, _, params = arg.partition(" ")
                if pt_text.isdigit():
                    fmtp[int(pt_text)] = params.strip()
            elif name == "ptime" and arg.strip().isdigit():
                ptime = int(arg.strip())
    if port is None:
        raise SdpError("no audio stream offered")
    address = media_address or session_address
    if address is None:
        raise SdpError("no connection address")
    codecs: list[Codec] = []
    for pt in payload_types:
        if pt in rtpmap:
            name, rate, channels = rtpmap[pt]
        elif pt in STATIC:
            name, rate, channels = STATIC[pt][0].lower(), STATIC[pt][1], STATIC[pt][2]
        else:
            continue
        codecs.append(Codec(pt, name, rate, channels, fmtp.get(pt, "")))
    return AudioOffer(address, port, codecs, direction, ptime)


@dataclass(frozen=True, slots=True)
class Negotiated:
    codec: Codec
    dtmf: Codec | None
    remote: tuple[str, int]
    direction: str


def negotiate(offer: AudioOffer, prefer: tuple[str, ...] = SUPPORTED) -> Negotiated:
    usable = [c for c in offer.codecs if c.name in prefer and (c.name != "opus" or c.clock_rate == 48000)]
    usable = [c for c in usable if c.name == "opus" or c.clock_rate == 8000]
    if not usable or offer.port == 0:
        raise NoCommonCodec("none of " + ", ".join(prefer) + " offered")
    codec = min(usable, key=lambda c: prefer.index(c.name))
    # RFC 4733 asks for the codec's clock rate; many phones offer 8000 only, also with Opus.
    events = [c for c in offer.codecs if c.name == "telephone-event"]
    dtmf = next((c for c in events if c.clock_rate == codec.clock_rate), events[0] if events else None)
    answer_direction = {"sendonly": "recvonly", "recvonly": "sendonly"}.get(offer.direction, offer.direction)
    return Negotiated(codec, dtmf, (offer.address, offer.port), answer_direction)


def build_answer(negotiated: Negotiated, address: str, port: int, session_id: int | None = None) -> str:
    """The answer: one audio stream with the chosen codec (and telephone-event)."""
    sid = session_id if session_id is not None else int(time.time())
    codec, dtmf = negotiated.codec, negotiated.dtmf
    family = "IP6" if ":" in address else "IP4"
    pts = [codec.payload_type] + ([dtmf.payload_type] if dtmf else [])
    channels = "/2" if codec.name == "opus" else ""
    lines = [
        "v=0",
        f"o=conference {sid} {sid} IN {family} {address}",
        "s=conference",
        f"c=IN {family} {address}",
        "t=0 0",
        f"m=audio {port} RTP/AVP {' '.join(map(str, pts))}",
        f"a=rtpmap:{codec.payload_type} {codec.name.upper() if codec.name != 'opus' else 'opus'}"
        f"/{codec.clock_rate}{channels}",
    ]
    if codec.name == "opus":
        lines.append(f"a=fmtp:{codec.payload_type} useinbandfec=1;stereo=0;sprop-stereo=0")
    if dtmf:
        lines.append(f"a=rtpmap:{dtmf.payload_type} telephone-event/{dtmf.clock_rate}")
        lines.append(f"a=fmtp:{dtmf.payload_type} 0-16")
    lines += ["a=ptime:20", f"a={negotiated.direction}"]
    return "\r\n".join(lines) + "\r\n"
