"""Simulcast from publishers (RFC 8853 with RID, RFC 8851): the server's offer asks for three
layers on the publish video m-section, and the layers' packets are told apart by SSRC, learned
from the RID header extensions the packets carry.

The server makes every offer, and a browser answering an offer with ``a=rid:<id> recv`` lines and
``a=simulcast:recv q;h;f`` creates one encoding per RID (Chromium: a quarter, half and all of the
camera's resolution), answers ``a=simulcast:send q;h;f`` and sends each on an SSRC of its own,
marked with ``urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id`` (its RTX streams with the repaired
RID) until the server's receiver reports show it knows the SSRC. An endpoint that answers without
``a=simulcast`` (aiortc, GStreamer) publishes one stream as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .extmap import _mid, _sections, answered_extension, offer_extension
from .packet import RtpHeader, extension_value

if TYPE_CHECKING:
    from .producer import Producer

URI_RID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
URI_REPAIRED_RID = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
# Low to high: Chromium scales the answerer's encodings by 4, 2 and 1 in this order.
RIDS = ("q", "h", "f")


def offer_simulcast(sdp: str, mid: str) -> str:
    """``sdp`` (an offer) asking for the RIDS on m-section ``mid``: the two RID extensions,
    ``a=rid:<id> recv`` for each and ``a=simulcast:recv q;h;f``. Unchanged if no extension id is
    free."""
    edited, rid_id = offer_extension(sdp, {mid}, URI_RID)
    if not rid_id:
        return sdp
    edited, _ = offer_extension(edited, {mid}, URI_REPAIRED_RID)
    out: list[str] = []
    for n, section in enumerate(_sections(edited)):
        if n and _mid(section) == mid:
            while section and not section[-1]:
                section = section[:-1]
            section = [*section, *(f"a=rid:{rid} recv" for rid in RIDS), f"a=simulcast:recv {';'.join(RIDS)}"]
        out += section
    text = "\r\n".join(out)
    return text if text.endswith("\r\n") else text + "\r\n"


def answered_rids(sdp: str, mid: str) -> list[str]:
    """The RIDS the answer sends on m-section ``mid`` (``a=simulcast:send``; paused ``~`` ones and
    unknown ones left out), low to high; empty if it answered no simulcast."""
    for section in _sections(sdp)[1:]:
        if _mid(section) != mid:
            continue
        for line in section:
            line = line.strip()
            if line.startswith("a=simulcast:send "):
                sent = {alt.split(",")[0] for alt in line.split(" ", 2)[1].split(";")}
                return [rid for rid in RIDS if rid in sent]
    return []


class SimulcastLayers:
    """A simulcast publisher's video layers: which producer each incoming SSRC feeds."""

    def __init__(
        self, sdp: str, mid: str, layers: dict[str, Producer], on_ssrc: Callable[[int], None] | None = None
    ) -> None:
        """``on_ssrc`` hears each media SSRC learned (the transport routes its sender reports)."""
        self.on_ssrc = on_ssrc
        self.rid_ext = answered_extension(sdp, URI_RID).get(mid, 0)
        self.repaired_ext = answered_extension(sdp, URI_REPAIRED_RID).get(mid, 0)
        self.by_rid = layers
        self.producers = [layers[rid] for rid in RIDS if rid in layers]  # low to high
        self.by_ssrc: dict[int, Producer] = {}
        self.rtx_by_ssrc: dict[int, Producer] = {}

    def _learn(
        self, table: dict[int, Producer], data: bytes, header: RtpHeader, ext_id: int
    ) -> Producer | None:
        value = extension_value(data, header, ext_id)
        if value is None:
            return None
        producer = self.by_rid.get(value.decode("ascii", "replace"))
        if producer is None:
            return None
        # A layer's new SSRC replaces its old one: the table stays one entry per layer.
        for ssrc in [s for s, p in table.items() if p is producer]:
            del table[ssrc]
        table[header.ssrc] = producer
        return producer

    def layer_of(self, data: bytes, header: RtpHeader) -> Producer | None:
        """The layer a media packet belongs to (None: an SSRC not yet marked with its RID)."""
        producer = self.by_ssrc.get(header.ssrc)
        if producer is not None:
            return producer
        producer = self._learn(self.by_ssrc, data, header, self.rid_ext)
        if producer is not None and self.on_ssrc is not None:
            self.on_ssrc(header.ssrc)
        return producer

    def layer_of_repair(self, data: bytes, header: RtpHeader) -> Producer | None:
        """The layer an RTX packet repairs (marked with the repaired RID)."""
        producer = self.rtx_by_ssrc.get(header.ssrc)
        if producer is not None:
            return producer
        return self._learn(self.rtx_by_ssrc, data, header, self.repaired_ext)
