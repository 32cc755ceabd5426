"""The SFU at the size the tests can afford here: ten real aiortc endpoints and a chair with previews.

The endpoints run in child processes (see test_sfu_support.EndpointPool) so the server's event loop
is not starved by the clients' encoders and decoders."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from test_sfu_support import EndpointPool, Meeting

from conference.roles import Role
from conference.room import set_program

pytestmark = pytest.mark.media


async def test_ten_endpoints_and_a_chair_with_previews() -> None:
    """Ten endpoints (in their own process, see EndpointPool): everyone decodes the program and the
    speaker; the chair also previews every other endpoint; a program change reaches all ten."""
    meeting = Meeting(max_endpoints=12, max_previews=11)
    await meeting.start()
    # The chair receives 13 videos: alone in its process; the venues three to a process.
    pools = [EndpointPool() for _ in range(4)]
    try:
        slots = {"chair": await meeting.add_in_pool(pools[0], "chair", 9, role=Role.CHAIR, previews=True)}
        for i in range(9):
            slots[f"v{i}"] = await meeting.add_in_pool(pools[1 + i // 3], f"v{i}", i, speaking=(i == 1))

        async def observe() -> dict[str, Any]:
            seen: dict[str, Any] = {}
            for pool in pools:
                seen.update(await pool.call("observe"))
            return seen

        async def program_everywhere(program: list[str], colours: list[int], what: str) -> float:
            await meeting.command(set_program, "grid-2x2", program)
            start = time.monotonic()
            seen: dict[str, object] = {}

            async def check() -> bool:
                seen.update(await observe())
                return all(
                    [seen[who]["received"][slots[who]["video"][i]]["colour"] for i in range(4)] == colours
                    for who in slots
                )

            while not await check():
                if time.monotonic() - start > 20:
                    wrong = {
                        who: [seen[who]["received"][slots[who]["video"][i]]["colour"] for i in range(4)]
                        for who in slots
                    }
                    per_session = meeting.backend.stats()["per_session"]
                    server = {
                        who: [per_session[f"hall/{who}"]["slots"][slots[who]["video"][i]] for i in range(4)]
                        for who in slots
                    }
                    raise AssertionError(f"{what}: want {colours} everywhere, got {wrong}; server: {server}")
                await asyncio.sleep(0.2)
            return time.monotonic() - start

        await program_everywhere(["v0", "v3", "v5", "chair"], [0, 3, 5, 9], "first program")
        await program_everywhere(["v2", "chair", "v7", "v8"], [2, 9, 7, 8], "program change")

        seen = await observe()
        # The chair previews every other endpoint, each in the slot its slots message names.
        previews = meeting.slot_messages("chair")[-1]["previews"]
        by_identity = {p["identity"]: p["mid"] for p in previews if p["identity"]}
        assert set(by_identity) == {f"v{i}" for i in range(9)}

        def preview_colours() -> dict[str, object]:
            return {who: seen["chair"]["received"][mid]["colour"] for who, mid in by_identity.items()}

        deadline = time.monotonic() + 15
        while preview_colours() != {f"v{i}": i for i in range(9)} and time.monotonic() < deadline:
            await asyncio.sleep(0.3)
            seen = await observe()
        assert preview_colours() == {f"v{i}": i for i in range(9)}
        # Everyone but the speaker hears v1; v1 hears nobody (never its own voice).
        deadline = time.monotonic() + 15
        want = {who: [] if who == "v1" else [1] for who in slots}
        while {who: seen[who]["heard"] for who in slots} != want and time.monotonic() < deadline:
            await asyncio.sleep(0.3)
            seen = await observe()
        room = meeting.backend.rooms["hall"]
        assert {who: seen[who]["heard"] for who in slots} == want, (
            room.speakers,
            {who: [(t.want, t.packets) for t in room.transports[who].audio] for who in slots},
            {p.identity: (p.packets, round(p.voice.score, 1)) for p in room.producers("audio")},
        )
        stats = meeting.backend.stats()
        assert stats["decoded_frames"] == 0
        assert stats["sessions"] == 10 and stats["producers"] == 20
    finally:
        await asyncio.gather(*(pool.close() for pool in pools))
        await meeting.close()
