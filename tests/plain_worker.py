"""A plain-RTP worker in its own process (tests/test_transports.py): receives one video slot from
the server over UDP on the loopback, asks for a keyframe (RTCP PLI) and one retransmission (RTCP
NACK), reassembles VP8 frames and decodes them with PyAV.

Protocol on stdin/stdout, JSON lines: prints {"port": P} once bound; reads the server's answer
({"address": [host, port], "slots": {"video": [{"ssrc": S, ...}]}}); then prints
{"colour": [r, g, b], "frames": n} for decoded frames and {"retransmitted": seq} when the NACKed
packet came again. Stops after ``--seconds`` (bounded) or on EOF.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import struct
import sys
import time

import av

from conference.sfu.packet import parse_header
from conference.sfu.payload import vp8_descriptor


def say(message: dict) -> None:
    print(json.dumps(message), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    say({"port": sock.getsockname()[1]})
    answer = json.loads(sys.stdin.readline())
    server = (answer["address"][0], int(answer["address"][1]))
    ssrc = int(answer["slots"]["video"][0]["ssrc"])
    our_ssrc = 0x5EED
    # RTCP PLI (RFC 4585 6.3.1): the first thing a decoder that joins late needs.
    sock.sendto(struct.pack("!BBHII", 0x81, 206, 2, our_ssrc, ssrc), server)
    decoder = av.CodecContext.create("vp8", "r")
    parts: list[bytes] = []
    frame_ts: int | None = None
    frames = 0
    nacked: int | None = None
    seen: set[int] = set()
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sock], [], [], 0.2)
        if not ready:
            continue
        data, addr = sock.recvfrom(65536)
        if addr != server or len(data) < 12 or 192 <= data[1] <= 223:
            continue
        header = parse_header(data)
        if header is None or header.ssrc != ssrc:
            continue
        if header.sequence in seen and header.sequence == nacked:
            say({"retransmitted": nacked})
            nacked = -1
        seen.add(header.sequence)
        if frames >= 5 and nacked is None:
            # Ask for a packet we already have: the server answers from its cache.
            nacked = header.sequence
            sock.sendto(struct.pack("!BBHIIHH", 0x81, 205, 3, our_ssrc, ssrc, nacked, 0), server)
        payload = data[header.payload_offset : header.payload_end]
        if frame_ts is not None and header.timestamp != frame_ts:
            parts = []
        descriptor = vp8_descriptor(payload)
        if descriptor.start and descriptor.partition_id == 0:
            parts = []
        frame_ts = header.timestamp
        parts.append(payload[descriptor.header_size :])
        if not header.marker:
            continue
        try:
            decoded = decoder.decode(av.Packet(b"".join(parts)))
        except av.FFmpegError:
            decoded = []
        parts = []
        for frame in decoded:
            frames += 1
            rgb = frame.to_ndarray(format="rgb24")
            h, w = rgb.shape[:2]
            centre = rgb[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].reshape(-1, 3).mean(axis=0)
            say({"colour": [round(float(c)) for c in centre], "frames": frames})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
