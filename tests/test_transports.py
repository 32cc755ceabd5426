"""Sources and sinks that are not browsers: the in-process (direct) and plain-RTP transports go
through the same forwarding path as a browser's WebRTC session."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from test_sfu_support import COLOURS, HEIGHT, WIDTH, Meeting, nearest_colour, wait_for

from conference.loadtest.publisher import RawPublisher, RawStream
from conference.loadtest.testmedia import EncodedClip, MediaParams
from conference.media import MediaError
from conference.roles import Role
from conference.room import Participant, join, set_program
from conference.sfu.packet import CodecInfo, parse_header
from conference.sfu.payload import vp8_descriptor
from conference.sfu.plain import PlainOffer

pytestmark = pytest.mark.media

VP8 = CodecInfo("vp8", 96, 90_000)


def colour_clip(index: int, frames: int = 50, fps: int = 25) -> EncodedClip:
    """A VP8 clip of one solid test colour whose first frame is its only keyframe."""
    encoder = av.CodecContext.create("libvpx", "w")
    encoder.width, encoder.height = WIDTH, HEIGHT
    encoder.pix_fmt = "yuv420p"
    encoder.framerate = fps  # type: ignore[assignment]
    encoder.bit_rate = 200_000
    encoder.gop_size = frames * 10
    image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    image[:, :] = COLOURS[index]
    video: list[bytes] = []
    for n in range(frames):
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
        frame.pts = n
        video.extend(bytes(p) for p in encoder.encode(frame))
    video.extend(bytes(p) for p in encoder.encode(None))
    keyframes = [(v[0] & 1) == 0 for v in video]
    assert keyframes[0] and not any(keyframes[1:])
    params = MediaParams(width=WIDTH, height=HEIGHT, fps=fps, loop_frames=len(video))
    return EncodedClip(index, params, video, keyframes, [], [])


async def join_participant(meeting: Meeting, identity: str, publish_video: bool) -> Any:
    participant = Participant(
        identity, identity, Role.VENUE, publish_audio=False, publish_video=publish_video
    )
    state, _ = await meeting.store.update(meeting.room, lambda s: join(s, participant))
    return state


def vp8_frames(packets: list[bytes]) -> list[bytes]:
    """Whole VP8 frames of a slot's packets (in order, marker bit ends a frame)."""
    frames, parts = [], []
    for data in packets:
        header = parse_header(data)
        assert header is not None
        payload = data[header.payload_offset : header.payload_end]
        descriptor = vp8_descriptor(payload)
        if descriptor.start and descriptor.partition_id == 0:
            parts = []
        parts.append(payload[descriptor.header_size :])
        if header.marker:
            frames.append(b"".join(parts))
            parts = []
    return frames


async def test_a_clip_fed_in_process_fills_a_program_slot_and_hears_keyframe_requests(
    meeting: Meeting,
) -> None:
    viewer = await meeting.add("expert-b", 1, publish=False)
    state = await join_participant(meeting, "clip", publish_video=True)
    requests: list[str] = []
    publisher: RawPublisher | None = None

    def keyframe_wanted(kind: str) -> None:
        requests.append(kind)
        if publisher is not None:
            publisher.request_keyframe()  # restart at the clip's keyframe, as an encoder would

    transport = await meeting.backend.open_direct(
        meeting.room, "clip", state, publish={"video": [VP8]}, on_keyframe_request=keyframe_wanted
    )
    stream = RawStream(ssrc=random.getrandbits(32), payload_type=VP8.payload_type, mid_ext=0, mid=b"")
    publisher = RawPublisher(colour_clip(5), transport, stream, None)
    transport.start()
    publisher.start()
    await meeting.command(set_program, "single", ["clip"])
    await wait_for(lambda: viewer.video(0).colour == 5, 15, "the viewer decodes the clip's colour")
    assert transport.producers["video"].packets > 0
    assert requests and set(requests) == {"video"}  # the switch asked the feeder for a keyframe

    # A subscriber's PLI reaches the feeder (coalesced, so at most one per 300 ms).
    await asyncio.sleep(0.5)
    before = len(requests)
    receiver = next(t.receiver for t in viewer.pc.getTransceivers() if t.mid == viewer.slots["video"][0])
    slot = meeting.backend.rooms[meeting.room].transports["expert-b"].video[0]
    await receiver._send_rtcp_pli(slot.rewriter.ssrc)
    await wait_for(lambda: len(requests) > before, 5, "the feeder hears the subscriber's keyframe request")
    publisher.pause()


async def test_a_direct_consumer_receives_a_venue_camera(meeting: Meeting) -> None:
    await meeting.add("hall-a", 2)
    state = await join_participant(meeting, "monitor", publish_video=False)
    received: list[bytes] = []
    transport = await meeting.backend.open_direct(
        meeting.room, "monitor", state, video_slots=1, on_packet=lambda track, data: received.append(data)
    )
    transport.start()
    await meeting.command(set_program, "single", ["hall-a"])

    def decoded_colours() -> list[int]:
        decoder = av.CodecContext.create("vp8", "r")
        colours = []
        for frame in vp8_frames(list(received)):
            for picture in decoder.decode(av.Packet(frame)):
                rgb = picture.to_ndarray(format="rgb24")
                colours.append(nearest_colour(tuple(rgb.reshape(-1, 3).mean(axis=0))))
        return colours

    await wait_for(lambda: len(received) > 30, 15, "the direct consumer gets the venue's packets")
    colours = decoded_colours()
    assert colours and colours[-1] == 2, colours
    ssrcs = {parse_header(p).ssrc for p in received}  # type: ignore[union-attr]
    assert ssrcs == {transport.video[0].rewriter.ssrc}  # rewritten to the slot's own stream


async def test_a_plain_rtp_worker_in_another_process_decodes_a_venue_camera() -> None:
    meeting = Meeting()
    await meeting.start()
    worker = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("plain_worker.py")), "--seconds", "25"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    try:
        await meeting.add("hall-a", 3)
        await meeting.command(set_program, "single", ["hall-a"])
        assert worker.stdout is not None and worker.stdin is not None
        port = json.loads(await asyncio.to_thread(worker.stdout.readline))["port"]
        state = await join_participant(meeting, "stream-worker", publish_video=False)
        counters = meeting.backend.counters
        relayed, answered = counters.keyframe_requests_relayed, counters.nacks_answered
        offer = PlainOffer.from_json({"address": ["127.0.0.1", port], "video_slots": 1})
        transport = await meeting.backend.open_plain(meeting.room, "stream-worker", state, offer)
        answer = transport.answer()
        assert answer["address"][0] == "127.0.0.1" and answer["rtcp_mux"]
        worker.stdin.write(json.dumps(answer) + "\n")
        worker.stdin.flush()
        colours: list[int] = []
        retransmitted = False
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline and not (colours and colours[-1] == 3 and retransmitted):
            line = await asyncio.to_thread(worker.stdout.readline)
            if not line:
                break
            message = json.loads(line)
            if "colour" in message:
                colours.append(nearest_colour(tuple(message["colour"])))
            retransmitted = retransmitted or "retransmitted" in message
        assert colours and colours[-1] == 3, colours
        assert retransmitted, "the worker's NACK was not answered"
        assert counters.keyframe_requests_relayed > relayed  # its PLI reached the publisher's producer
        assert counters.nacks_answered > answered
    finally:
        worker.kill()
        worker.wait()
        await meeting.close()


async def test_a_plain_transport_ignores_other_senders_and_serves_only_this_machine(meeting: Meeting) -> None:
    state = await join_participant(meeting, "worker", publish_video=True)
    with pytest.raises(MediaError) as refused:
        await meeting.backend.open_plain(
            meeting.room, "worker", state, PlainOffer.from_json({"address": ["192.0.2.7", 5004]})
        )
    assert refused.value.code == "bad_request"
    for bad in ({"address": ["127.0.0.1"]}, {"address": ["nowhere", 1]}, {"address": ["127.0.0.1", 0]}):
        with pytest.raises(MediaError):
            PlainOffer.from_json(bad)
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    offer = PlainOffer.from_json(
        {
            "address": ["127.0.0.1", listener.getsockname()[1]],
            "publish": {"video": [{"name": "VP8", "payload_type": 96, "clock_rate": 90000}]},
        }
    )
    transport = await meeting.backend.open_plain(meeting.room, "worker", state, offer)
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    packet = (
        bytes([0x80, 96, 0, 1]) + (1234).to_bytes(4, "big") + (99).to_bytes(4, "big") + b"\x90\x80\x01\x10"
    )
    for _ in range(5):
        stranger.sendto(packet, tuple(transport.answer()["address"]))
    await wait_for(lambda: transport.dropped_foreign == 5, 5, "the stranger's datagrams are dropped")
    assert transport.producers["video"].packets == 0
    stranger.close()
    listener.close()
