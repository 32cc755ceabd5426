"""What one slot's RTCP sender report costs the server, aiortc's way against the leg's batched one.

aiortc's per-sender loop (``RTCRtpSender._run_rtcp``) wakes every 0.5-1.5 s per slot, builds SR +
SDES and sends them through ``_send_rtcp`` (serialise, the DTLS transport's ``_send_rtp`` coroutine,
SRTCP protect, aioice's send coroutines, sendto). The session now sends one compound packet of up to
15 slots' SR + SDES (``aiortc_glue.sender_reports`` + ``LegOutput.send_rtcp``) from the slots that
sent since their last report. Both are timed here on a real aiortc leg (process CPU, best of 5),
the loop's own wake-up (a timer and a task step per slot and report) not included:

    python tests/bench_sender_reports.py --reports 3000
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from aiortc.rtp import RtcpSdesPacket, RtcpSenderInfo, RtcpSourceInfo, RtcpSrPacket
from test_aiortc_glue import Pair
from test_sfu_support import wait_for

from conference.sfu import aiortc_glue as glue


async def run(reports: int, repeats: int) -> None:
    pair = Pair()
    try:
        await pair.connect()
        await wait_for(lambda: pair.dtls._tx_srtp is not None, 10, "the leg's SRTP keys")
        sender = pair.outbound.sender
        ssrc = glue.sender_ssrc(sender)
        cname = b"0b4d2b1e-2f3a-4c5d-8e9f-0a1b2c3d4e5f"

        async def aiortc_way() -> float:
            started = time.process_time()
            for n in range(reports):
                info = RtcpSenderInfo(
                    ntp_timestamp=glue.ntp_time(time.time()),
                    rtp_timestamp=n,
                    packet_count=n,
                    octet_count=n * 1000,
                )
                await sender._send_rtcp(
                    [
                        RtcpSrPacket(ssrc=ssrc, sender_info=info),
                        RtcpSdesPacket(chunks=[RtcpSourceInfo(ssrc=ssrc, items=[(1, cname)])]),
                    ]
                )
            return (time.process_time() - started) / reports

        def batched() -> float:
            batch = [(sender, 10, 1000, 5, time.time())] * glue.REPORTS_PER_PACKET
            rounds = max(1, reports // len(batch))
            started = time.process_time()
            for _ in range(rounds):
                for packet in glue.sender_reports(batch):
                    pair.output.send_rtcp(packet)
            return (time.process_time() - started) / (rounds * len(batch))

        a = min([await aiortc_way() for _ in range(repeats)])
        b = min(batched() for _ in range(repeats))
        print(
            f"per slot report: aiortc's loop {a * 1e6:.1f} us, the leg's batch of "
            f"{glue.REPORTS_PER_PACKET} {b * 1e6:.1f} us"
        )
    finally:
        await pair.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reports", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(run(args.reports, args.repeats))


if __name__ == "__main__":
    main()
