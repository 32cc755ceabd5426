"""Issue 9, finding 6 (and the media parts of 9): a publisher cannot open a track file per packet.
A real server with the media core and the recorder; a real aiortc endpoint publishes over a
connected leg, then sends 600 video packets each with a fresh SSRC, as the issue's tester did."""

from __future__ import annotations

import asyncio
import random
import struct
import time
from dataclasses import replace

import pytest

from conference.loadtest.endpoint import Endpoint, EndpointConfig
from conference.sfu.producer import MAX_STREAMS
from recorder.archive import recording_dir
from signaling.app import MEDIA_KEY, build_media

pytestmark = pytest.mark.media


async def wait_until(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_fresh_ssrcs_do_not_open_a_track_file_each(signaling_server, connect, mint, settings) -> None:
    media_settings = replace(settings, media=True)
    server = await signaling_server(media_settings, media=build_media(media_settings))
    backend = server.app[MEDIA_KEY]
    chair = await connect(server, mint("council", "chair", "chair"))
    await chair.ok("join")
    url = str(server.make_url("")).rstrip("/")
    venue = Endpoint(
        EndpointConfig(
            url=url,
            token=mint("council", "hall-a", "venue"),
            identity="hall-a",
            index=0,
            decode="none",
            raw_media=True,
        )
    )
    await venue.join()
    try:
        await wait_until(lambda: backend.stats()["producers"] >= 2, 20, "the venue publishing")
        started = await chair.ok("start_recording")
        recording = recording_dir(settings.data_dir, started["recording_id"])
        tracks = recording / "tracks"
        await wait_until(lambda: len(list(tracks.glob("*.rtp"))) >= 2, 10, "the venue's tracks recorded")
        await asyncio.sleep(0.5)
        raw = venue.raw
        assert raw is not None and raw.video is not None
        requests_before = backend.stats()["keyframe_requests_sent"]
        # Marked as the venue's top layer (its mid and RID, as its own packets are): each packet
        # claims a fresh stream of that layer.
        video_ext = raw.layers[-1].ext
        sequence = random.getrandbits(16)
        for i in range(600):
            head = struct.pack(
                "!BBHII",
                0x90 if video_ext else 0x80,
                raw.video.payload_type,
                sequence,
                i * 3000,
                0x10000 + i,
            )
            sequence = (sequence + 1) & 0xFFFF
            assert raw.output.send(head + video_ext + bytes((0x90, 0x80, 0x80, i & 0xFF)) + b"\x00" * 40)
            if i % 50 == 49:
                await asyncio.sleep(0.01)  # the server's loop reads them as they come
        await asyncio.sleep(1.0)
        stats = backend.stats()
        refused = stats.get("stream_changes_refused", 0)
        await chair.ok("stop_recording")
        files = sorted(tracks.glob("*.rtp"))
        requests = stats["keyframe_requests_sent"] - requests_before
        print(
            f"\n600 fresh SSRCs: {len(files)} track files, {requests} keyframe requests,"
            f" {refused} packets refused"
        )
        # The venue's two tracks, plus at most MAX_STREAMS - 1 more streams on its video track.
        assert len(files) <= 2 + MAX_STREAMS - 1, len(files)
        assert requests <= 10
        assert refused >= 590
        # The honest video still arrived and was recorded after the flood (its file keeps growing).
        assert max(f.stat().st_size for f in files) > 10_000
    finally:
        await venue.close()


async def test_a_datagram_flood_at_an_unconnected_leg_is_bounded(
    signaling_server, connect, mint, settings
) -> None:
    """Junk (not STUN) at the ports of a leg that never connects: aioice queued every datagram for a
    reader that never comes; the glue now bounds that queue."""
    import socket

    from conference.sfu.aiortc_glue import MAX_QUEUED_DATAGRAMS

    media_settings = replace(settings, media=True)
    server = await signaling_server(media_settings, media=build_media(media_settings))
    backend = server.app[MEDIA_KEY]
    venue = await connect(server, mint("council", "hall-a", "venue"))
    await venue.ok("join")
    offer = await venue.wait_for(lambda m: m["type"] == "offer", timeout=20)
    # The server's host candidates: this machine's own addresses (aioice leaves out loopback).
    targets = {
        (fields[4], int(fields[5]))
        for fields in (line.split() for line in offer["sdp"].splitlines() if line.startswith("a=candidate:"))
        if fields[2].lower() == "udp" and fields[7] == "host" and fields[4].count(".") == 3
    }
    assert targets, "no IPv4 host candidate in the offer"
    session = backend.rooms["council"].transports["hall-a"]
    junk = b"\xff" + bytes(999)  # not STUN, not DTLS, not RTP
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for i in range(20_000):
            for target in targets:
                sock.sendto(junk, target)
            if i % 200 == 199:
                await asyncio.sleep(0.005)  # let the server read
    await asyncio.sleep(0.5)
    waiting = session.ice_queue_guard.waiting()
    dropped = backend.stats()["ice_datagrams_dropped"]
    print(
        f"\n20,000 junk datagrams per candidate: {waiting} queued ({waiting * len(junk) / 1e6:.1f} MB),"
        f" {dropped} dropped"
    )
    assert waiting <= MAX_QUEUED_DATAGRAMS
    assert dropped > 10_000
    await venue.ok("ping")  # signaling goes on


async def test_the_media_state_of_an_empty_room_is_dropped(signaling_server, connect, mint, settings) -> None:
    from conference.sfu.backend import EMPTY_ROOM_GRACE_S

    media_settings = replace(settings, media=True)
    server = await signaling_server(media_settings, media=build_media(media_settings))
    backend = server.app[MEDIA_KEY]
    for n in range(3):
        venue = await connect(server, mint(f"room-{n}", "hall-a", "venue"))
        await venue.ok("join")
        await venue.wait_for(lambda m: m["type"] == "offer", timeout=20)
        await venue.ok("leave")
    kept = await connect(server, mint("busy", "hall-b", "venue"))  # a room still in use stays
    await kept.ok("join")
    await kept.wait_for(lambda m: m["type"] == "offer", timeout=20)
    assert {"room-0", "room-1", "room-2", "busy"} <= set(backend.rooms)
    await wait_until(lambda: set(backend.rooms) == {"busy"}, EMPTY_ROOM_GRACE_S + 5, "empty rooms dropped")
    # A room used again gets its media state back.
    again = await connect(server, mint("room-0", "hall-a", "venue"))
    await again.ok("join")
    await again.wait_for(lambda m: m["type"] == "offer", timeout=20)
    assert "room-0" in backend.rooms
