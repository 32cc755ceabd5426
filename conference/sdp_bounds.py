"""Bounds on an SDP answer, checked before it reaches aiortc's parser.

Media and signaling share one event loop, so parsing one client's SDP must cost the loop a few
milliseconds at most. aiortc parses ordinary lines in a few microseconds each, but ``a=ssrc`` lines
in quadratic time: 8,000 of them (228 KB, under the message limit) took a second and more, and
every other client's ping waited that long (issue 9, finding 3). The answer to our offer needs no
more m-sections than the offer has, about as many lines, and a few ``a=ssrc`` lines per sending
m-section (an SSRC with its RTX and FEC pair, each with cname/msid lines). The checks here are
string counts done in C, under a millisecond for the largest message the server accepts.
"""

from __future__ import annotations

from dataclasses import dataclass

# a=ssrc and a=ssrc-group lines: in the whole answer at most the larger of these two (Firefox puts
# a cname line even in receive-only m-sections; a sender has one SSRC, its RTX pair and a group).
MAX_SSRC_LINES = 64
SSRC_LINES_PER_OFFERED_SECTION = 4
MAX_SSRC_LINES_PER_SECTION = 16
SLACK_LINES = 64  # beyond twice the offer's lines (browsers add a few lines per m-section)
MAX_LINE_CHARS = 4096


class SdpTooComplex(ValueError):
    """The SDP exceeds a bound; the message says which."""


@dataclass(frozen=True, slots=True)
class SdpBounds:
    max_m_sections: int
    max_lines: int
    max_ssrc_lines: int = MAX_SSRC_LINES
    max_ssrc_lines_per_section: int = MAX_SSRC_LINES_PER_SECTION

    @classmethod
    def for_answer_to(cls, offer_sdp: str) -> SdpBounds:
        """What an answer to ``offer_sdp`` may contain."""
        sections = max(1, _count_sections(offer_sdp))
        return cls(
            max_m_sections=sections,
            max_lines=2 * _count_lines(offer_sdp) + SLACK_LINES,
            max_ssrc_lines=max(MAX_SSRC_LINES, SSRC_LINES_PER_OFFERED_SECTION * sections),
        )


def _count_lines(sdp: str) -> int:
    return sdp.count("\n") + (0 if sdp.endswith("\n") else 1)


def _count_sections(sdp: str) -> int:
    return sdp.count("\nm=") + (1 if sdp.startswith("m=") else 0)


def check_sdp(sdp: str, bounds: SdpBounds) -> None:
    """SdpTooComplex unless ``sdp`` fits ``bounds``."""
    lines = _count_lines(sdp)
    if lines > bounds.max_lines:
        raise SdpTooComplex(
            f"the SDP has {lines} lines; an answer to this offer has at most {bounds.max_lines}"
        )
    sections = _count_sections(sdp)
    if sections > bounds.max_m_sections:
        raise SdpTooComplex(f"the SDP has {sections} m-sections; the offer has {bounds.max_m_sections}")
    ssrc = sdp.count("\na=ssrc")
    if ssrc > bounds.max_ssrc_lines:
        raise SdpTooComplex(f"the SDP has {ssrc} a=ssrc lines; at most {bounds.max_ssrc_lines}")
    if ssrc > bounds.max_ssrc_lines_per_section:
        for number, section in enumerate(sdp.split("\nm=")[1:]):
            if section.count("\na=ssrc") > bounds.max_ssrc_lines_per_section:
                raise SdpTooComplex(
                    f"m-section {number} has more than {bounds.max_ssrc_lines_per_section} a=ssrc lines"
                )
    if len(sdp) > lines * MAX_LINE_CHARS and max(map(len, sdp.split("\n"))) > MAX_LINE_CHARS:
        raise SdpTooComplex(f"the SDP has a line longer than {MAX_LINE_CHARS} characters")
