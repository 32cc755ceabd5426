"""The SFU with real aiortc endpoints: forwarding, program switches, audio, reconnects."""

from __future__ import annotations

import pytest
from test_sfu_support import Meeting, wait_for

from conference.room import set_program

pytestmark = pytest.mark.media


async def test_one_publisher_reaches_one_subscriber() -> None:
    meeting = Meeting()
    await meeting.start()
    try:
        a = await meeting.add("hall-a", 0)
        b = await meeting.add("expert-b", 1)
        await meeting.command(set_program, "side-by-side", ["hall-a", "expert-b"])
        await wait_for(lambda: b.video(0).colour == 0 and b.video(1).colour == 1, 10, "b sees a and itself")
        await wait_for(lambda: a.video(0).colour == 0 and a.video(1).colour == 1, 10, "a sees the program")
        stats = meeting.backend.stats()
        assert stats["decoded_frames"] == 0
        assert stats["packets_forwarded"] > 0
    finally:
        await meeting.close()
