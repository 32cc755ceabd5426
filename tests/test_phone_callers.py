"""The benchmark's lightweight callers (tests/phone_callers.py) against the real gateway: two SIP
calls from one process enter the meeting ID and PIN by RFC 4733 events (typing over the prompts,
as callers who know them do), are in the room, and RTP flows both ways on the 20 ms clock; each
hears the other's tone through the room; BYE ends them."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from dataclasses import replace

import aiohttp
import numpy as np
import pytest
from phone_callers import Callers

from signaling.app import build_media
from signaling.phone.call import CallContext
from signaling.phone.gateway import Gateway
from signaling.phone.ivr import Throttle
from signaling.phone.link import Directory
from signaling.phone.prompts import ensure_prompts

KEY = "test-admin-key-not-for-production-0123456789"
ADMIN = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    if shutil.which("espeak-ng") is None:
        message = "espeak-ng is not installed (tests/run.sh installs Debian's package)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return ensure_prompts(tmp_path_factory.mktemp("prompts"))


async def test_two_callers_dial_in_and_media_flows_both_ways(signaling_server, settings, prompts) -> None:  # type: ignore[no-untyped-def]
    media_settings = replace(settings, media=True)
    server = await signaling_server(media_settings, media=build_media(media_settings))
    url = str(server.make_url("")).rstrip("/")
    async with aiohttp.ClientSession(headers=ADMIN) as http, aiohttp.ClientSession() as plain:
        async with http.post(f"{url}/api/rooms", json={"room": "council"}) as response:
            assert response.status == 201
        async with http.post(
            f"{url}/api/rooms/council/commands", json={"type": "set_dial_in", "pin": "4321"}
        ) as response:
            meeting_id = (await response.json())["dial_in"]["meeting_id"]
        gateway = Gateway(
            CallContext(url, Directory(url, KEY, plain), plain, prompts, Throttle()), host="127.0.0.1", port=0
        )
        await gateway.start()
        callers = Callers(("127.0.0.1", gateway.port), 2)
        await callers.open()
        try:
            await asyncio.wait_for(callers.dial_in(meeting_id, "4321", barge_in=True), 40)
            names: set[str] = set()
            for _ in range(100):
                async with http.get(f"{url}/api/rooms/council") as response:
                    names = {
                        p["name"] for p in (await response.json())["participants"] if p["device"] == "phone"
                    }
                if len(names) == 2:
                    break
                await asyncio.sleep(0.1)
            assert names == {"电话 139****0000", "电话 139****0001"}
            audible = [c.received_audible for c in callers.calls]
            before, t0 = callers.counts(), time.monotonic()
            await asyncio.sleep(2.0)
            after, elapsed = callers.counts(), time.monotonic() - t0
            for (s0, r0), (s1, r1) in zip(before, after, strict=True):
                assert 40 <= (s1 - s0) / elapsed <= 60  # the 20 ms clock, both ways
                assert 40 <= (r1 - r0) / elapsed <= 60
            # Each hears the other's tone in the room's mix (the prompts have ended).
            assert all(c.received_audible - a >= 50 for c, a in zip(callers.calls, audible, strict=True))
            await callers.hang_up()
            for _ in range(50):
                async with http.get(f"{url}/api/rooms/council") as response:
                    if not any(p["device"] == "phone" for p in (await response.json())["participants"]):
                        break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the callers stayed in the room after BYE")
        finally:
            await callers.close()
            await gateway.close()


def test_tone_frames_are_the_tone() -> None:
    from phone_callers import silent, tone_frames

    from signaling.phone.codecs import G711

    frames = tone_frames()
    assert len(frames) == 50 and all(len(f) == 160 for f in frames)
    pcm = np.concatenate([G711("pcmu").decode_narrow(f) for f in frames]).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(pcm))
    assert abs(spectrum.argmax() * 8000 / len(pcm) - 1000) < 2
    assert not silent(frames[0]) and silent(bytes([0xFF]) * 160)
