"""What a long ``conference bench`` run adds to the short one: delivery per interval (a minute by
default) rather than once at the end, the server process's resources at the window's start and end
and after everyone left, and the recording rendered end to end (``--render``).

Interval delivery is counted from sequence numbers, not from counters read on two sides at slightly
different moments (that skew made a minute read up to 0.8 % above or below its truth). The server
numbers each receive slot's packets without gaps (``StreamRewriter``: a switch of source continues
the numbering, a deliberate drop takes no number) and says, in ``GET /api/stats``, each slot's SSRC
and the last number it sent. At every tick of the benchmark the bench reads those; each subscriber
keeps a bitmap of the numbers it received per stream (``SequenceTally``). Interval k expects the
numbers the server gave out between its readings at ticks k-1 and k, and receives those of them
that arrived, whenever they arrived: a late packet or a retransmission counts in its own interval, a
duplicate once, a subscriber that stopped receiving altogether counts all it missed. The workers
count after the drain, so nothing is in flight: each packet sent is in exactly one interval, and no
interval can read above 1.0. A packet lost on its way in to the server and never repaired leaves a
gap in the slot's numbering and counts as lost too: the figure is end to end.

Sessions that start or end inside an interval (``--churn``) count there: a new one from the packets
the server had sent it by its first reading, one that ended up to the last number its subscriber
received (the packets in flight as it closed are the only ones not seen).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Sample:
    """One tick of the window: when it was, the server process's resources and what the server had
    sent on every stream then (``server_streams``)."""

    at_s: float
    process: dict[str, Any] = field(default_factory=dict)
    sent: dict[str, dict[int, tuple[int, int]]] = field(default_factory=dict)


class SequenceTally:
    """The sequence numbers one subscriber received on one stream (one SSRC), for interval delivery.

    ``add`` runs for every packet of the load generator: a few integer operations and a bit set in
    a bytearray (an hour of a 100-packet/s stream is 45 KB)."""

    __slots__ = ("bits", "closed_in", "first", "highest", "marks")

    def __init__(self) -> None:
        self.first = -1  # extended sequence number of the first packet (-1: none yet)
        self.highest = -1
        self.bits = bytearray()
        self.marks: list[tuple[int, int]] = []  # (tick, highest extended number seen by then)
        self.closed_in: int | None = None  # the interval in which the session ended

    def add(self, seq: int) -> None:
        highest = self.highest
        if self.first < 0:
            self.first = highest = self.highest = seq
        else:
            # Extend the 16-bit number to the one nearest the highest so far (RFC 3550, A.1).
            delta = (seq - highest) & 0xFFFF
            seq = highest + delta if delta < 0x8000 else highest + delta - 0x10000
        index = seq - self.first
        if index < 0:  # older than the first packet seen: reordered before the stream was known
            return
        bits = self.bits
        byte = index >> 3
        if byte >= len(bits):
            bits.extend(bytes(byte - len(bits) + 1024))
        bits[byte] |= 1 << (index & 7)
        if seq > highest:
            self.highest = seq

    def mark(self, tick: int) -> None:
        """The benchmark's tick ``tick``: what arrived so far ends interval ``tick``'s numbers."""
        if self.first >= 0:
            self.marks.append((tick, self.highest))

    def close(self, interval: int) -> None:
        """The session ended inside interval ``interval`` (after tick ``interval - 1``)."""
        self.closed_in = interval

    def received_between(self, after: int, upto: int) -> int:
        """How many numbers in (after, upto] arrived."""
        if self.first < 0:
            return 0
        lo, hi = max(0, after + 1 - self.first), upto + 1 - self.first  # bit indexes [lo, hi)
        if hi <= lo:
            return 0
        first_byte, last_byte = lo >> 3, (hi - 1) >> 3
        chunk = int.from_bytes(self.bits[first_byte : last_byte + 1], "little")
        chunk >>= lo & 7
        return (chunk & ((1 << (hi - lo)) - 1)).bit_count()

    def intervals(self, sent: list[tuple[int, int, int]] | None = None) -> dict[int, tuple[int, int]]:
        """Interval -> (expected, received); interval k runs from tick k-1 to tick k.

        ``sent``: the server's (tick, last sequence number sent, packets sent) on this stream at
        each tick it had it: interval k expects the numbers the server gave out between its ticks,
        so a subscriber that received nothing at all still counts what it missed. Before the
        server's first tick: its packets sent until then (a session that began in that interval);
        after its last: up to this subscriber's highest, in ``closed_in`` (a session that ended).
        Without ``sent`` the subscriber's own marks bound the intervals."""
        out: dict[int, tuple[int, int]] = {}

        def count(tick: int, after: int, upto: int) -> None:
            expected, received = out.get(tick, (0, 0))
            out[tick] = (expected + upto - after, received + self.received_between(after, upto))

        previous: int | None = None
        if sent:
            marks = dict(self.marks)
            ext = last_raw = 0
            for tick, last_sequence, packets in sent:
                if previous is None:
                    # The 16-bit number extended to the one nearest what this subscriber had then.
                    anchor = marks.get(tick, self.first if self.first >= 0 else last_sequence)
                    ext = anchor + ((last_sequence - anchor + 0x8000) & 0xFFFF) - 0x8000
                    previous = ext - packets
                    if self.first >= 0:
                        previous = min(previous, self.first - 1)
                else:
                    ext += (last_sequence - last_raw) & 0xFFFF
                last_raw = last_sequence
                if ext > previous:
                    count(tick, previous, ext)
                    previous = ext
        elif self.first >= 0:
            previous = self.first - 1
            for tick, highest in self.marks:
                if highest > previous:
                    count(tick, previous, highest)
                    previous = highest
        if self.closed_in is not None and previous is not None and self.highest > previous:
            count(self.closed_in, previous, self.highest)
        elif self.closed_in is not None and previous is None and self.first >= 0:
            count(self.closed_in, self.first - 1, self.highest)  # began and ended between two ticks
        return out


def server_streams(media_stats: dict[str, Any]) -> dict[str, dict[int, tuple[int, int]]]:
    """What the server had sent at a tick: identity -> SSRC -> (last sequence number, packets),
    from ``GET /api/stats`` → media → per_session → slots."""
    out: dict[str, dict[int, tuple[int, int]]] = {}
    for key, session in (media_stats.get("per_session") or {}).items():
        streams = out.setdefault(key.split("/", 1)[-1], {})
        for slot in (session.get("slots") or {}).values():
            if slot.get("ssrc") is not None and slot.get("last_sequence") is not None:
                streams[int(slot["ssrc"])] = (int(slot["last_sequence"]), int(slot.get("packets") or 0))
    return out


def sent_by_stream(
    ticks: list[dict[str, dict[int, tuple[int, int]]]],
) -> dict[str, dict[str, list[list[int]]]]:
    """The server's figures of every tick regrouped for the workers: identity -> SSRC (a string, for
    JSON) -> [[tick, last sequence number, packets], ...]."""
    out: dict[str, dict[str, list[list[int]]]] = {}
    for tick, streams in enumerate(ticks):
        for identity, by_ssrc in streams.items():
            for ssrc, (last_sequence, packets) in by_ssrc.items():
                out.setdefault(identity, {}).setdefault(str(ssrc), []).append([tick, last_sequence, packets])
    return out


def session_intervals(
    sessions: list[tuple[str, dict[int, SequenceTally]]], sent: dict[str, dict[str, list[list[int]]]]
) -> dict[int, dict[str, list[int]]]:
    """A worker's answer: its subscribers' sessions (identity, SSRC -> tally; old and current) counted
    against what the server sent: interval -> identity -> [expected, received]. A stream the server
    sent that a subscriber never received a packet of counts too (all of it lost)."""
    sums: dict[int, dict[str, list[int]]] = {}
    seen: set[tuple[str, int]] = set()

    def add(identity: str, figures: dict[int, tuple[int, int]]) -> None:
        for tick, (expected, received) in figures.items():
            pair = sums.setdefault(tick, {}).setdefault(identity, [0, 0])
            pair[0] += expected
            pair[1] += received

    for identity, tallies in sessions:
        streams = sent.get(identity) or {}
        for ssrc, tally in tallies.items():
            seen.add((identity, ssrc))
            ranges = streams.get(str(ssrc))
            add(identity, tally.intervals([(t, q, p) for t, q, p in ranges] if ranges else None))
    for identity in {identity for identity, _ in sessions}:
        for ssrc, ranges in (sent.get(identity) or {}).items():
            if (identity, int(ssrc)) not in seen:
                add(identity, SequenceTally().intervals([(t, q, p) for t, q, p in ranges]))
    return sums


def merge_intervals(per_worker: list[dict[str, Any]]) -> dict[int, dict[str, list[int]]]:
    """The workers' ``intervals`` answers (``{"intervals": {k: {identity: [expected, received]}}}``)
    merged: interval -> identity -> [expected, received]."""
    out: dict[int, dict[str, list[int]]] = {}
    for message in per_worker:
        for tick, by_identity in (message.get("intervals") or {}).items():
            merged = out.setdefault(int(tick), {})
            for identity, (expected, received) in by_identity.items():
                sums = merged.setdefault(identity, [0, 0])
                sums[0] += int(expected)
                sums[1] += int(received)
    return out


def sequence_delivery(ticks_at: list[float], merged: dict[int, dict[str, list[int]]]) -> list[dict[str, Any]]:
    """Per interval (between ticks k-1 and k, k >= 1): packets expected and received by sequence
    number, the ratio and the subscriber that received the smallest share."""
    figures = []
    for k in range(1, len(ticks_at)):
        by_identity = merged.get(k, {})
        expected = sum(e for e, _ in by_identity.values())
        received = sum(r for _, r in by_identity.values())
        worst = min(((r / e, identity) for identity, (e, r) in by_identity.items() if e), default=None)
        figures.append(
            {
                "from_s": round(ticks_at[k - 1], 1),
                "to_s": round(ticks_at[k], 1),
                "packets_expected": expected,
                "packets_received": received,
                "delivery_ratio": None if not expected else round(received / expected, 5),
                "worst_subscriber": None
                if worst is None
                else {"identity": worst[1], "ratio": round(worst[0], 5)},
                "subscribers": len(by_identity),
            }
        )
    return figures


def resources(process: dict[str, Any]) -> dict[str, Any]:
    """The figures of ``GET /api/stats`` → process that the soak reports."""
    return {
        k: process.get(k) for k in ("rss_mb", "fds", "tasks", "threads", "python_threads", "pool_threads")
    }


def render_figures(recording: dict[str, Any], started: float, finished: float | None) -> dict[str, Any]:
    """The recording and its default render as ``GET /api/recordings/{id}`` shows them."""
    renders = recording.get("renders") or []
    job = renders[0] if renders else {}
    return {
        "recording_id": recording.get("id"),
        "recording_s": recording.get("duration_s"),
        "size_bytes": recording.get("size_bytes"),
        "tracks": len(recording.get("tracks") or []),
        "render_state": job.get("state"),
        "render_s": None if finished is None else round(finished - started, 1),
        "render_bytes": job.get("size_bytes") or job.get("bytes"),
        "render_error": job.get("error"),
    }
