"""The keyframe request manager (conference/sfu/keyframes.py): requests coalesced while one is
outstanding, answered by the keyframe that comes, and the next take after an answered request not
held back by the interval."""

from __future__ import annotations

import asyncio

from conference.sfu.keyframes import PLI_INTERVAL, PLI_MIN_GAP, SWITCH_RETRY, KeyFrameRequestManager


async def test_requests_while_one_is_outstanding_cost_one_keyframe_and_a_retry_after_the_interval() -> None:
    sent: list[float] = []
    loop = asyncio.get_running_loop()
    manager = KeyFrameRequestManager(lambda: sent.append(loop.time()))
    manager.request()
    for _ in range(20):  # twenty subscribers switching to the camera at once
        manager.request()
    assert len(sent) == 1
    await asyncio.sleep(PLI_INTERVAL + 0.1)
    # No keyframe came: the deferred request goes out once at the interval's end (the first was lost).
    assert len(sent) == 2 and sent[1] - sent[0] >= PLI_INTERVAL - 0.01
    manager.stop()


async def test_a_keyframe_answers_the_deferred_request_and_the_next_take_goes_out_at_once() -> None:
    sent: list[float] = []
    loop = asyncio.get_running_loop()
    manager = KeyFrameRequestManager(lambda: sent.append(loop.time()))
    manager.request()
    manager.request()  # deferred: one is outstanding
    await asyncio.sleep(0.02)
    manager.received()  # the keyframe: every waiting slot switches on it
    await asyncio.sleep(PLI_INTERVAL + 0.05)
    assert len(sent) == 1, "the deferred request was answered by the keyframe"
    # Another take of the same camera, well inside the old interval of the last request's time but
    # after its keyframe: asked for at once, not PLI_INTERVAL after the last request.
    manager.request()
    assert len(sent) == 2
    manager.request()  # outstanding again: coalesced
    assert len(sent) == 2
    manager.stop()


async def test_answered_requests_are_still_spaced_by_the_minimum_gap() -> None:
    sent: list[float] = []
    loop = asyncio.get_running_loop()
    manager = KeyFrameRequestManager(lambda: sent.append(loop.time()))
    manager.request()
    manager.received()  # answered at once (a keyframe that happened to be on its way)
    manager.request()
    assert len(sent) == 1, "a second request within PLI_MIN_GAP waits"
    await asyncio.sleep(PLI_MIN_GAP + 0.05)
    assert len(sent) == 2 and sent[1] - sent[0] >= PLI_MIN_GAP - 0.01
    # Forced requests (a recording that must start decodable) are never held back.
    manager.request(force=True)
    assert len(sent) == 3
    manager.stop()


async def test_a_switch_waits_only_the_switch_retry_behind_an_unanswered_request() -> None:
    """A take must not wait out the 300 ms interval behind a request nobody answered (lost, or a
    browser that ignored it): a switch asks again once that request is SWITCH_RETRY old."""
    sent: list[float] = []
    loop = asyncio.get_running_loop()
    manager = KeyFrameRequestManager(lambda: sent.append(loop.time()))
    manager.request()  # e.g. a subscriber's PLI, relayed: never answered
    manager.request()  # an ordinary request behind it: deferred to the interval's end
    manager.request(switch=True)  # a take inside SWITCH_RETRY: brought forward to SWITCH_RETRY
    assert len(sent) == 1
    await asyncio.sleep(SWITCH_RETRY + 0.05)
    assert len(sent) == 2 and SWITCH_RETRY - 0.01 <= sent[1] - sent[0] < PLI_INTERVAL - 0.05
    await asyncio.sleep(PLI_INTERVAL)
    assert len(sent) == 2, "the deferred ordinary request went out with the switch's"
    manager.stop()
    # Once an unanswered request is SWITCH_RETRY old, a switch asks at once; an ordinary request
    # still waits the interval.
    sent.clear()
    manager = KeyFrameRequestManager(lambda: sent.append(loop.time()))
    manager.request()
    await asyncio.sleep(SWITCH_RETRY + 0.02)
    manager.request()
    assert len(sent) == 1
    manager.request(switch=True)
    assert len(sent) == 2
    manager.stop()


async def test_a_take_after_a_relayed_pli_asks_the_publisher_again() -> None:
    """Through the producer: the slot that waits to switch asks with switch=True."""
    from types import SimpleNamespace

    from conference.sfu.consumer import DownTrack
    from conference.sfu.packet import CodecInfo
    from conference.sfu.producer import Producer
    from conference.sfu.stats import Counters

    plis: list[float] = []
    loop = asyncio.get_running_loop()
    upstream = SimpleNamespace(closed=False, send_pli=lambda ssrc: plis.append(loop.time()))
    listener = SimpleNamespace(sink=None, producer_started=lambda p: None)
    vp8 = CodecInfo("vp8", 96, 90_000)
    counters = Counters()
    producer = Producer("cam", "video", [vp8], {}, upstream, listener, counters)  # type: ignore[arg-type]
    producer.ssrc = 1234
    producer.request_keyframe()  # a subscriber's PLI, relayed; no keyframe comes
    await asyncio.sleep(SWITCH_RETRY + 0.01)
    slot = DownTrack("video", "video", 0, SimpleNamespace(send=lambda d: True), counters)
    slot.configure(5000, [vp8], {}, "0")
    producer.codec = "vp8"
    slot.set_want("cam", producer)  # the take
    assert len(plis) == 2, "the take's request went out at once"
    producer.keyframes.stop()


async def test_the_answer_time_runs_from_the_first_request_after_the_last_keyframe() -> None:
    manager = KeyFrameRequestManager(lambda: None)
    assert manager.received() is None, "a keyframe nobody asked for answers nothing"
    manager.request()
    await asyncio.sleep(0.03)
    manager.request(force=True)  # a second request before the keyframe: still timed from the first
    await asyncio.sleep(0.03)
    answer = manager.received()
    assert answer is not None and 0.05 <= answer < 0.5
    assert manager.received() is None, "the next packet of the same keyframe answers nothing"
    manager.stop()
