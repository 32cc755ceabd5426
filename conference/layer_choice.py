"""Which simulcast layer each video slot of a subscriber receives: pure policy, no clock, no I/O.

A publisher's browser sends its camera in up to three layers (``q``, ``h``, ``f``: a quarter, half
and all of its resolution). Each subscriber's slot gets the smallest layer that still fills the
tile it is drawn in (as LiveKit's adaptive stream does with the sizes its clients report): a
``grid-3x3`` thumbnail gets ``q``, the program's full-screen slot ``f``. Then, if the subscriber's
estimated bandwidth cannot carry the sum of its slots, the largest tiles step down first, one layer
at a time, until it fits or every slot is on its lowest layer.

The tile's size comes from the program's layout (``conference.layouts``: fractions of a 16:9
canvas) and the width the subscriber's device shows it at (``SCREEN_WIDTH``): the server makes the
choice from what it knows of the room, so a venue screen needs to report nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .layouts import LAYOUTS

# The width a device draws the program canvas at (a venue's screen is a 720p or larger display; a
# phone upright shows the canvas across its width; the chair's previews are thumbnails).
SCREEN_WIDTH = {"venue": 1280, "phone": 390, "clip": 1280}
PREVIEW_WIDTH = 160  # the chair console's preview tiles: always the lowest layer
# A layer at least this fraction of the tile's width looks sharp enough once scaled up (a 320-wide
# layer in a 427-wide grid-3x3 tile): the layer above would cost 3-4 times the bits for little.
UPSCALE = 0.7
# Bits per second a layer of this width costs, when nothing was measured (Chromium's targets for
# 180p, 360p and 720p camera layers).
DEFAULT_BITRATES = ((320, 150_000), (640, 500_000), (1280, 1_500_000))


@dataclass(frozen=True, slots=True)
class Layer:
    """One layer of a publisher as the policy sees it: its width (0: not known yet) and the bits
    per second it arrives at (0: not measured). Only layers that are arriving are offered."""

    index: int
    width: int = 0
    bitrate: int = 0


def tile_width(layout: str, slot: int, screen_width: int) -> int:
    """The width in pixels slot ``slot`` of ``layout`` is drawn at on a screen ``screen_width``
    wide; 0 if the layout has no such slot (nothing is shown there)."""
    found = LAYOUTS.get(layout)
    if found is None or not 0 <= slot < found.size:
        return 0
    return round(found.slots[slot].w * screen_width)


def _width(layer: Layer, top: Layer) -> int:
    """A layer's width, or its size relative to the top layer's (each layer half the next)."""
    if layer.width:
        return layer.width
    top_width = top.width or DEFAULT_BITRATES[-1][0]
    return top_width >> max(0, top.index - layer.index)


def choose_layer(tile: int, layers: Sequence[Layer]) -> int | None:
    """The index of the smallest arriving layer at least ``UPSCALE`` of the tile's width, else the
    largest; None if no layer arrives. ``layers`` is ordered low to high."""
    if not layers:
        return None
    top = layers[-1]
    for layer in layers:
        if _width(layer, top) >= tile * UPSCALE:
            return layer.index
    return top.index


def _bitrate(layer: Layer, top: Layer) -> int:
    if layer.bitrate:
        return layer.bitrate
    width = _width(layer, top)
    return next((bits for w, bits in DEFAULT_BITRATES if width <= w), DEFAULT_BITRATES[-1][1])


def fit_bandwidth(
    choices: Sequence[int | None], layers: Sequence[Sequence[Layer]], estimate: int | None
) -> list[int | None]:
    """``choices`` (one per slot: the chosen layer index, None for an empty slot) stepped down
    until the layers' bitrates sum to at most ``estimate`` bits per second (None: no estimate, no
    change): the slot whose current layer costs the most steps down one arriving layer first (on a
    tie the later slot)."""
    out = list(choices)
    if estimate is None:
        return out
    by_index = [{layer.index: layer for layer in slot} for slot in layers]

    def cost(i: int) -> int:
        chosen = out[i]
        return _bitrate(by_index[i][chosen], layers[i][-1]) if chosen is not None else 0

    while sum(cost(i) for i in range(len(out))) > estimate:
        lower = [
            i
            for i, chosen in enumerate(out)
            if chosen is not None and any(layer.index < chosen for layer in layers[i])
        ]
        if not lower:
            break
        worst = max(lower, key=lambda i: (cost(i), i))  # on a tie the later slot: slot 0 is the main one
        current = out[worst]
        out[worst] = max(
            layer.index for layer in layers[worst] if current is not None and layer.index < current
        )
    return out


# The subscriber's downlink: its estimate (REMB from a browser's receive-side estimator) follows
# what it receives and reaches at most about 1.5 times that, so once the slots stepped down the
# estimate alone would never let them climb back; the budget is raised by itself after a hold
# (LiveKit probes with padding instead), and a raise the link cannot carry doubles the next hold.
LIMIT_MARGIN = 0.85  # an estimate this far under the budget is a real drop, not noise
RAISE_FACTOR = 1.5
HOLD_S = 8.0
MAX_HOLD_S = 60.0


# What tells a subscriber's downlink is full, while its slots are sent ``sending`` bit/s:
# - its REMB under LIMIT_MARGIN of that: a receive-side estimator (Chromium's AIMD) says at most
#   about 1.5 times what arrives and falls to 0.85 of it on overuse, so a REMB is a ceiling only
#   when it is under what is sent, never a sign that more would fit;
# - GCC's loss rule (draft-ietf-rmcat-gcc-02, 6): over LOSS_HIGH of its video lost, it takes about
#   ``sending * (1 - loss / 2)``.
# Otherwise the budget stands (its raises come after the hold). The router passes no REMB from
# browsers (``Router.choose_video``): Chromium's starts at 110-200 kbit/s on a clear link and rises
# only as more arrives, so as a limit it would hold a venue on its low layers.
# GCC's 10 % is of loss before repair; ``LossCounter`` gives it after the NACK answers (and without
# what the server never had), which reads lower on a full link: 5 % here. Behind 150 +- 30 ms a
# subscriber on a clean link read at most 2.9 % in a window (docs/performance.md).
LOSS_HIGH = 0.05


def congestion_estimate(
    sending: int,
    remb: int | None,
    loss: float | None,
    budget: int | None,
    send_side: int | None = None,
) -> int | None:
    """The estimate ``downlink_budget`` takes: the lowest congestion signal (``remb`` in bit/s,
    ``loss`` 0-1 of the subscriber's own loss; None: none since the last), else ``budget``.
    ``send_side``: the server's transport-cc estimate of the leg (``conference.downlink_estimate``);
    where there is one it replaces the loss rule (it holds its own loss bound and sees queues
    building before anything is lost), as a ceiling like a REMB: it too reaches at most about 1.5
    times what arrives."""
    if send_side is not None:
        return send_side if send_side < sending * LIMIT_MARGIN else budget
    signals = []
    if remb is not None and remb < sending * LIMIT_MARGIN:
        signals.append(remb)
    if loss is not None and loss > LOSS_HIGH:
        signals.append(int(sending * (1 - loss / 2)))
    return min(signals) if signals else budget


@dataclass(slots=True)
class Downlink:
    """What the layer choice keeps of one subscriber's downlink between decisions."""

    budget: int | None = None  # bits per second its slots may use; None: no limit
    changed_at: float = 0.0
    raised: bool = False  # the last change was a raise (a drop right after it: the link is full)
    hold: float = HOLD_S
    lossy: bool = False  # the last loss reading was over LOSS_HIGH


# One reading over LOSS_HIGH is not yet a full link: a lossy one (a venue's link with 2 % random
# loss) reads 6-10 % in some 100-packet windows, and each false drop cost two keyframes of a layer
# that other subscribers watch (measured behind 150 +- 30 ms / 2 %: 3-4 drops a minute, each a
# freeze of the other venue's picture, docs/performance.md). A full link goes on losing: the second
# reading over LOSS_HIGH in a row is acted on, or a first one over LOSS_SEVERE.
LOSS_SEVERE = 0.15


def confirmed_loss(link: Downlink, loss: float | None) -> float | None:
    """The loss reading ``congestion_estimate`` may act on (None: none yet); updates ``link``."""
    if loss is None:
        return None
    if loss <= LOSS_HIGH:
        link.lossy = False
        return loss
    confirmed = link.lossy or loss > LOSS_SEVERE
    link.lossy = True
    return loss if confirmed else None


def downlink_budget(link: Downlink, estimate: int | None, wanted: int, now: float) -> int | None:
    """The budget for a subscriber's slots, given its latest ``estimate`` (None: none) and what its
    tiles want (``wanted``, bits per second); updates ``link``."""
    if estimate is None or (link.budget is None and estimate >= wanted):
        link.budget, link.hold, link.raised = None, HOLD_S, False
        return None
    if link.budget is None or estimate < link.budget * LIMIT_MARGIN:
        if link.raised and now - link.changed_at < link.hold:
            link.hold = min(MAX_HOLD_S, link.hold * 2)
        link.budget, link.changed_at, link.raised = estimate, now, False
    elif now - link.changed_at >= link.hold:
        link.budget = int(max(link.budget, estimate) * RAISE_FACTOR)
        link.changed_at, link.raised = now, True
    # Lifted once all the tiles fit, but not within the hold of a drop: what the tiles want follows
    # the sources' measured rates, which wander around a budget just set (a lift a second after the
    # drop was a keyframe down and one back up).
    if (
        link.budget is not None
        and link.budget >= wanted
        and (link.raised or now - link.changed_at >= link.hold)
    ):
        link.budget = None
    return link.budget


# A subscriber's loss is taken over at least this many packets of its video slots: Chromium sends
# a receiver report with every NACK, so a report's own fraction lost is often 1 of 2 packets.
LOSS_MIN_PACKETS = 100
# A slot's count of what it sent goes back by the few packets taken as in flight that had not
# been sent (reordered upstream); by more, the slot was set up again and counts from 0.
SENT_SLACK = 64
LOSS_STALE_S = 5.0


class LossCounter:
    """A subscriber's loss on its video slots, from its receiver reports' cumulative counters
    (extended highest sequence, packets lost) per slot SSRC.

    A subscriber counts as lost whatever it did not get, also what the server never had: a gap in
    a publisher's stream until the repair comes in (behind 150 ms that is every upstream loss for
    a round trip, often over LOSS_HIGH of one report), or for good. Where the slot says how many
    packets it sent up to the report's highest (``sent``), the loss is taken against that: only
    what the server sent and the subscriber did not receive is its downlink's (as LiveKit's
    sender statistics do)."""

    __slots__ = ("_at", "_expected", "_lost", "_marks")

    def __init__(self) -> None:
        self._marks: dict[int, tuple[int, int, int | None]] = {}
        self._expected = 0
        self._lost = 0
        self._at = 0.0

    def report(self, ssrc: int, highest: int, lost: int, now: float, sent: int | None = None) -> None:
        """``sent``: the packets the slot sent up to ``highest``, first sends only (a count that
        only grows), or None where the slot cannot tell."""
        mark = self._marks.get(ssrc)
        self._marks[ssrc] = (highest, lost, sent)
        if mark is None:
            return
        expected = (highest - mark[0]) & 0xFFFFFFFF
        # Not a restart of the slot's numbering (nor of its count of what it sent); a report with
        # nothing new still counts (its repairs, what was sent), or the sums would lose it.
        restarted = sent is not None and mark[2] is not None and sent < mark[2] - SENT_SLACK
        if expected < 0x8000 and not restarted:
            lost_now = lost - mark[1]  # repairs that came late count back
            if sent is not None and mark[2] is not None:
                # Sent, less what arrived: the gaps the server forwarded are not the downlink's.
                # Always this way once the slot counts (a report's own figures are off by the few
                # packets in flight either way, which the next report settles: the sums stay true).
                received = expected - lost_now
                expected = sent - mark[2]
                lost_now = expected - received
            if not self._expected:
                self._at = now
            self._expected += expected
            self._lost += lost_now

    def take(self, now: float) -> float | None:
        """The fraction lost (0-1) since the last answer, once LOSS_MIN_PACKETS were expected;
        None until then, or when they were counted too long ago to tell about now."""
        if self._expected < LOSS_MIN_PACKETS:
            return None
        expected, lost = self._expected, self._lost
        self._expected = self._lost = 0
        if now - self._at > LOSS_STALE_S:
            return None
        return max(0.0, lost / expected)
