"""Header extensions aiortc does not know, negotiated by editing our offer's SDP and reading the
answer back (aiortc keeps only the extensions it implements, and would drop these from both):
transport-cc on what endpoints publish (``twcc``), playout-delay on what they receive."""

from __future__ import annotations

import re

_EXTMAP = re.compile(r"^a=extmap:(\d+)(?:/\w+)? (\S+)")


def _sections(sdp: str) -> list[list[str]]:
    sections: list[list[str]] = [[]]
    for line in sdp.replace("\r\n", "\n").split("\n"):
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    return sections


def _mid(section: list[str]) -> str | None:
    return next((line[6:].strip() for line in section if line.startswith("a=mid:")), None)


def _with_extension(section: list[str], ext_id: int, uri: str, feedback: str | None) -> list[str]:
    """One m-section with ``a=extmap:<ext_id> uri`` (after its last extmap, or after its mid) and
    ``a=rtcp-fb:<pt> feedback`` after each of its payload types' rtpmap if given."""
    edited: list[str] = []
    for line in section:
        edited.append(line)
        if feedback and line.startswith("a=rtpmap:"):
            edited.append(f"a=rtcp-fb:{line[9:].split(' ', 1)[0]} {feedback}")
    extmaps = [i for i, line in enumerate(edited) if line.startswith("a=extmap:")]
    at = (
        extmaps[-1] + 1
        if extmaps
        else next(i + 1 for i, line in enumerate(edited) if line.startswith("a=mid:"))
    )
    edited.insert(at, f"a=extmap:{ext_id} {uri}")
    return edited


def offer_extension(sdp: str, mids: set[str], uri: str, feedback: str | None = None) -> tuple[str, int]:
    """``sdp`` (an offer) with ``a=extmap:<id> uri`` added to the m-sections ``mids`` under an id
    no m-section uses (one-byte form, 1..14), and ``a=rtcp-fb:<pt> feedback`` for each of their
    payload types if given; returns (sdp, the id). Unchanged (id 0) if no id is free."""
    sections = _sections(sdp)
    used = {int(m.group(1)) for section in sections for line in section if (m := _EXTMAP.match(line))}
    ext_id = next((i for i in range(1, 15) if i not in used), 0)
    if not ext_id:
        return sdp, 0
    out = list(sections[0])
    for section in sections[1:]:
        if _mid(section) not in mids:
            out += section
            continue
        out += _with_extension(section, ext_id, uri, feedback)
    return "\r\n".join(out), ext_id


def answered_extension(sdp: str, uri: str) -> dict[str, int]:
    """mid -> the id the answer gives ``uri`` in that m-section (sections without it are absent)."""
    found: dict[str, int] = {}
    for section in _sections(sdp)[1:]:
        mid = _mid(section)
        for line in section:
            m = _EXTMAP.match(line.strip())
            if mid is not None and m and m.group(2) == uri:
                found[mid] = int(m.group(1))
    return found


def accept_extension(answer: str, offer: str, mids: set[str], uri: str, feedback: str | None = None) -> str:
    """``answer`` accepting ``uri`` in the m-sections ``mids`` where ``offer`` carried it, under the
    offer's id (and ``a=rtcp-fb:<pt> feedback`` for each payload type): what an endpoint whose stack
    does not know the extension answers when it implements it itself (the load endpoints)."""
    offered = answered_extension(offer, uri)
    out: list[str] = []
    for n, section in enumerate(_sections(answer)):
        mid = _mid(section) if n else None
        if mid not in mids or mid not in offered:
            out += section
            continue
        out += _with_extension(section, offered[mid], uri, feedback)
    return "\r\n".join(out)
