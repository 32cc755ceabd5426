"""When to ask a publisher to resend a missing video packet (RFC 4585 generic NACK), on its own
timer rather than the room's tick (as libwebrtc's ``NackRequester`` and mediasoup's
``NackGenerator`` do).

- A gap is not asked for at once: a packet that is only reordered arrives a moment later. The first
  request waits a *reordering allowance*: the longest recent reordering seen on this stream (a
  packet that turned up after it was missing and before it was asked for), at least
  ``REORDER_MIN_S``, at most half the round trip and ``REORDER_MAX_S``.
- A request is repeated only when its answer is overdue: after the publisher's round trip plus
  twice its variation (TCP's retransmission timer, RFC 6298, with a smaller multiplier: a late
  repair is a freeze), doubled after each further unanswered request up to 4x (an estimate that is too
  small, e.g. measured before the path got longer, still lets an answer come back). The round trip
  is measured on repairs: a packet asked for once gives a sample; one asked for several times
  (Karn: which request did it answer?) only bounds it (later than the last request: at least
  that; sooner than the first: at most that). The transport's RTCP round trip
  (``set_round_trip``) seeds it until repairs say more.
- A late original is not a repair. On a jittery link most packets that arrive after they were asked
  for were only reordered by more than the allowance; taken as repairs they teach a round trip of a
  few ms (and, since the allowance learns only from packets that come before their request, the
  allowance never grows past its minimum). With RTX (RFC 4588) the two are told apart for certain:
  repairs come in through ``repaired`` and anything else is an original (``repairs_on_rtx``).
  Without it, an arrival sooner after the first request than half the RTCP round trip is taken to
  be an original: no answer can come back that fast.
- A packet is given up after ``MAX_TRIES`` requests or ``MAX_AGE_S``, or when more than ``WINDOW``
  are missing; only then is a keyframe worth asking for (``poll`` reports how many were given up).
  A keyframe that arrives makes everything missing before it moot (``keyframe``).

Pure code on a clock it is given: unit-tested with a fake one (``tests/test_nack.py``).
"""

from __future__ import annotations

REORDER_MIN_S = 0.01
REORDER_MAX_S = 0.08
REORDER_HALF_LIFE_S = 4.0  # the reordering allowance forgets a burst of reordering this fast
DEFAULT_RTT_S = 0.1  # until the transport or a repair says otherwise
MIN_RETRY_S = 0.02
MAX_TRIES = 5
MAX_AGE_S = 1.5
WINDOW = 256  # sequence numbers missing at once; more is a burst a keyframe repairs better

# What ``arrived`` found the packet to be.
UNKNOWN = 0  # not missing: a duplicate, or one given up on already
REORDERED = 1  # missing, not asked for yet: it was only late
REPAIRED = 2  # asked for: a retransmission (or an original later than a request)

# The retry interval doubles per unanswered request from the third on, up to this factor: the second
# request follows the first after one interval (at 5 % loss each way a tenth of first requests or
# their answers are lost, and a repair within about one buffer of the first is no freeze), the
# doubling after it keeps an estimate that is too small from giving packets up early.
BACKOFF_MAX = 4
_DETECTED, _DUE, _ASKED, _TRIES, _FIRST_ASKED = range(5)


class NackScheduler:
    """The missing sequence numbers of one stream and when each is due to be asked for."""

    __slots__ = (
        "_dropped",
        "_reorder",
        "_reorder_at",
        "_rtcp_rtt",
        "_rtt_given",
        "given_up",
        "missing",
        "next_due",
        "repairs",
        "repairs_on_rtx",
        "requests",
        "rtt",
        "rtt_measured",
        "rttvar",
    )

    def __init__(self) -> None:
        # sequence -> [detected, due, last asked (0: never), tries, first asked]
        self.missing: dict[int, list[float]] = {}
        self.next_due = float("inf")
        self.rtt = DEFAULT_RTT_S
        self.rttvar = DEFAULT_RTT_S / 2
        self.rtt_measured = False  # from repairs (else the transport's RTCP round trip, or the default)
        self._rtt_given = False
        self._rtcp_rtt = 0.0
        # The publisher retransmits on RTX: only ``repaired`` is a repair (set by the session).
        self.repairs_on_rtx = False
        self._reorder = 0.0
        self._reorder_at = 0.0
        self.requests = 0  # sequence numbers asked for, retries included
        self.repairs = 0
        self.given_up = 0
        self._dropped = 0  # pushed out of the window since the last poll

    # -- what arrives ---------------------------------------------------------------------------

    def lost(self, first: int, count: int, now: float) -> None:
        """``count`` sequence numbers from ``first`` (mod 2^16) found missing at ``now``."""
        count = min(count, WINDOW)
        due = now + self.reorder_allowance(now)
        missing = self.missing
        for i in range(count):
            missing[(first + i) & 0xFFFF] = [now, due, 0.0, 0, 0.0]
        if len(missing) > WINDOW:
            for old in list(missing)[: len(missing) - WINDOW]:
                del missing[old]
                self._dropped += 1
            due = now  # poll soon: what was pushed out is given up
        if due < self.next_due:
            self.next_due = due

    def arrived(self, seq: int, now: float) -> int:
        """A packet older than the newest arrived: REORDERED, REPAIRED or UNKNOWN."""
        entry = self.missing.pop(seq, None)
        if entry is None:
            return UNKNOWN
        if (
            not entry[_TRIES]
            or self.repairs_on_rtx
            or now - entry[_FIRST_ASKED] < self._rtcp_rtt / 2  # too soon to be an answer
        ):
            late = now - entry[_DETECTED]
            if late > self._decayed_reorder(now):
                self._reorder, self._reorder_at = late, now
            return REORDERED
        self._repaired(entry, now)
        return REPAIRED

    def repaired(self, seq: int, now: float) -> bool:
        """A retransmission of ``seq`` (its RTX stream) arrived: True if it was still missing."""
        entry = self.missing.pop(seq, None)
        if entry is None:
            return False
        if entry[_TRIES]:  # else a probe that resent it before anyone asked: no round trip in it
            self._repaired(entry, now)
        return True

    def _repaired(self, entry: list[float], now: float) -> None:
        self.repairs += 1
        if entry[_TRIES] == 1:
            self._rtt_sample(now - entry[_ASKED])
        else:  # Karn: which request it answers is unknown, but the bounds are certain
            at_least, at_most = now - entry[_ASKED], now - entry[_FIRST_ASKED]
            if at_least > self.rtt:
                self._rtt_sample(at_least)
            elif at_most < self.rtt:
                self._rtt_sample(at_most)

    def keyframe(self, seq: int) -> None:
        """A keyframe starts at ``seq``: what is missing before it no longer matters."""
        missing = self.missing
        if missing:
            for old in [s for s in missing if 0 < (seq - s) & 0xFFFF < 0x8000]:
                del missing[old]

    def reset(self) -> None:
        """A new stream (SSRC) or a restart: nothing of the old one is missing any more."""
        self.missing.clear()
        self.next_due = float("inf")
        self._dropped = 0

    # -- the round trip ---------------------------------------------------------------------------

    def set_round_trip(self, rtt: float) -> None:
        """The transport's RTCP round trip: the estimate until repairs have been timed, and a floor
        after (a repair cannot come back sooner; ambiguous repairs can leave the estimate low)."""
        if not 0.0 < rtt < 10.0:
            return
        self._rtt_given = True
        self._rtcp_rtt = rtt
        if not self.rtt_measured:
            self.rtt = rtt
            self.rttvar = rtt / 2
        elif rtt > self.rtt:
            self.rttvar = max(self.rttvar, (rtt - self.rtt) / 2)
            self.rtt = rtt

    def _rtt_sample(self, sample: float) -> None:
        if sample <= 0.0:
            return
        if not self.rtt_measured:
            self.rtt_measured = True
            self.rtt, self.rttvar = sample, sample / 2
            return
        self.rttvar += (abs(self.rtt - sample) - self.rttvar) / 4  # RFC 6298 beta = 1/4
        self.rtt += (sample - self.rtt) / 8  # alpha = 1/8

    @property
    def rtt_known(self) -> bool:
        """Whether ``rtt`` was measured (repairs) or given (RTCP), not the default."""
        return self.rtt_measured or self._rtt_given

    def repair_time(self) -> float:
        """How long a lost packet takes to be repaired within two requests (what a subscriber's
        buffer should cover: at 5 % loss each way a tenth of first requests or their answers are
        lost too): the reordering allowance, the first round trip, then one retry interval."""
        return self.reorder_allowance(self._reorder_at) + self.rtt + self.retry_interval

    @property
    def retry_interval(self) -> float:
        return max(MIN_RETRY_S, self.rtt + 2 * self.rttvar)

    def _decayed_reorder(self, now: float) -> float:
        if not self._reorder:
            return 0.0
        return self._reorder * 0.5 ** ((now - self._reorder_at) / REORDER_HALF_LIFE_S)

    def reorder_allowance(self, now: float) -> float:
        cap = min(REORDER_MAX_S, max(REORDER_MIN_S, self.rtt / 2))
        return min(cap, max(REORDER_MIN_S, self._decayed_reorder(now) * 1.25))

    # -- the timer --------------------------------------------------------------------------------

    def poll(self, now: float) -> tuple[list[int], int]:
        """(the sequence numbers to ask for now, how many were given up now); sets ``next_due``."""
        due: list[int] = []
        given_up, self._dropped = self._dropped, 0
        next_due = float("inf")
        retry = self.retry_interval
        missing = self.missing
        for seq, entry in list(missing.items()):
            if now - entry[_DETECTED] > MAX_AGE_S or (entry[_TRIES] >= MAX_TRIES and now >= entry[_DUE]):
                del missing[seq]
                given_up += 1
                continue
            if now >= entry[_DUE]:
                if not entry[_TRIES]:
                    entry[_FIRST_ASKED] = now
                entry[_ASKED] = now
                entry[_TRIES] += 1
                entry[_DUE] = now + retry * min(BACKOFF_MAX, 1 << max(0, int(entry[_TRIES]) - 2))
                due.append(seq)
            if entry[_DUE] < next_due:
                next_due = entry[_DUE]
        self.next_due = next_due
        self.requests += len(due)
        self.given_up += given_up
        return due, given_up
