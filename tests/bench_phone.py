"""CPU of the telephone gateway per call (not collected by pytest).

    python tests/bench_phone.py [--calls 10] [--duration 30]
    python tests/bench_phone.py --url URL --admin-key KEY --server-pid PID   # beside a running meeting
    python tests/bench_phone.py --callers python   # the callers in one Python process (phone_callers)

1. Real calls: runs `conference serve` (with its media core) and `conference phone` as their own
   processes, starts N baresip callers (Debian's package) on the loopback, each enters the meeting
   ID and PIN and stays in the meeting for --duration seconds, every caller playing a tone: each
   caller's voice goes to the room over its plain-RTP session, and each hears the three loudest of
   the others (three Opus slots decoded and mixed). Prints the gateway's and the server's CPU
   seconds per call-second over that window (from /proc), with the machine's load. With --url the
   calls go to a server already running (e.g. the one `conference bench --endpoints 50 --url ...`
   loads), in a room of their own (--room), beside that meeting. ``--callers python`` places the
   calls from this process instead (tests/phone_callers.py: real SIP and RTP, a pre-encoded tone,
   one 20 ms clock), light enough for ten calls beside the 50-endpoint meeting on two cores; then
   each call's packets/s both ways are printed too (a valid figure needs ~50 each way).
2. The media path of one call (caller G.711 in -> Opus to the room; three Opus slots in -> mix ->
   G.711 out), timed in process per 20 ms frame.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from phone_callers import Callers  # noqa: E402
from phone_util import Baresip, sine, write_wav  # noqa: E402

from signaling.phone.codecs import FRAME, G711, OpusEncoder  # noqa: E402
from signaling.phone.mixer import Mixer  # noqa: E402

ADMIN_KEY = "bench-admin-key-0123456789abcdef-0123456789"
CONFERENCE = str(Path(sys.executable).with_name("conference"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def wait_http(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            try:
                async with http.get(f"{url}/healthz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("server did not start")


async def wait_for_meeting(http: aiohttp.ClientSession, url: str, room: str, endpoints: int) -> None:
    """Until the server carries ``endpoints`` media sessions outside the callers' ``room`` (bounded:
    ten minutes)."""
    for _ in range(1200):
        async with http.get(f"{url}/api/stats") as r:
            sessions = (await r.json())["media"].get("per_session") or {}
        if sum(1 for key in sessions if key.split("/", 1)[0] != room) >= endpoints:
            return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"the meeting beside never reached {endpoints} endpoints")


class RunningServer:
    """A server this benchmark did not start (--url): measured by its pid, never stopped."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def terminate(self) -> None:
        pass

    def wait(self, timeout: float) -> None:
        pass


async def real_calls(
    calls: int,
    duration: float,
    url: str | None = None,
    admin_key: str = ADMIN_KEY,
    server_pid: int | None = None,
    room: str = "bench",
    wait_endpoints: int = 0,
    wait_settle: float = 0.0,
    callers: str = "baresip",
    json_path: Path | None = None,
) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-phone-"))
    sip_port = free_port()
    server: subprocess.Popen | RunningServer
    if url is None:
        http_port = free_port()
        url = f"http://127.0.0.1:{http_port}"
        server = subprocess.Popen(
            [
                CONFERENCE,
                "serve",
                "--port",
                str(http_port),
                "--data-dir",
                str(tmp / "data"),
                "--admin-key",
                admin_key,
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(tmp / "server.log", "w"),  # noqa: SIM115 (closed with the process)
        )
    else:
        if server_pid is None:
            raise SystemExit("--url needs --server-pid (the server's CPU is read from /proc)")
        server = RunningServer(server_pid)
    gateway = None
    phones: list[Baresip] = []
    light: Callers | None = None
    try:
        await wait_http(url)
        headers = {"Authorization": f"Bearer {admin_key}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            await http.post(f"{url}/api/rooms", json={"room": room})
            async with http.post(
                f"{url}/api/rooms/{room}/commands", json={"type": "set_dial_in", "pin": "4321"}
            ) as r:
                meeting_id = (await r.json())["dial_in"]["meeting_id"]
            gateway = subprocess.Popen(
                [
                    CONFERENCE,
                    "phone",
                    "--server",
                    url,
                    "--admin-key",
                    admin_key,
                    "--sip-listen",
                    f"127.0.0.1:{sip_port}",
                    "--prompts-dir",
                    str(tmp / "prompts"),
                ],
                stdout=open(tmp / "gateway.log", "w"),  # noqa: SIM115 (closed with the process)
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(600):
                if "SIP on" in (tmp / "gateway.log").read_text():
                    break
                if gateway.poll() is not None:
                    raise RuntimeError("gateway did not start: " + (tmp / "gateway.log").read_text())
                await asyncio.sleep(0.1)
            if callers == "python":
                light = Callers(("127.0.0.1", sip_port), calls, user_prefix="1380000")
                await light.open()
                # Each call waits for the welcome and the PIN prompts to end before its keys.
                await asyncio.wait_for(light.dial_in(meeting_id, "4321"), 120)
            else:
                source = tmp / "tone.wav"
                # baresip hangs up when its source file ends: long enough for the wait for a meeting too.
                write_wav(source, sine(1000, duration + (600 if wait_endpoints else 60), 8000), 8000)
                for i in range(calls):
                    phone = Baresip(tmp / f"phone{i}", source, user=f"1380000{i:04d}")
                    await phone.start()
                    phones.append(phone)
                for phone in phones:
                    await phone.dial(f"sip:dialin@127.0.0.1:{sip_port}")
                for phone in phones:
                    await phone.wait_event("CALL_ESTABLISHED", 20)
                await asyncio.gather(*(p.send_digits(f"{meeting_id}#4321#", 0.3) for p in phones))
            inside = 0
            for attempt in range(150):
                async with http.get(f"{url}/api/rooms/{room}") as r:
                    names = {p["name"] for p in (await r.json())["participants"]}
                inside = len(names)
                if inside == calls:
                    break
                if attempt % 25 == 24 and phones:
                    # A key lost on a loaded machine (baresip's last `#`): press it again, as a
                    # caller would.
                    for phone in phones:
                        if f"电话 138****{phone.user[-4:]}" not in names:
                            await phone.send_digits("#")
                await asyncio.sleep(0.2)
            if inside < calls:
                print(f"only {inside} of {calls} callers got in; measuring those (logs in {tmp})")
            await asyncio.sleep(6)  # the "joined" prompt ends
            if wait_endpoints:
                # Beside a meeting that joins after the callers (the PIN prompts run on a quiet
                # server): measure once its endpoints are in and its window has begun.
                await wait_for_meeting(http, url, room, wait_endpoints)
                print(
                    f"the meeting beside: {wait_endpoints} endpoints in; {wait_settle:.0f} s more", flush=True
                )
                await asyncio.sleep(wait_settle)
            print(f"load before: {os.getloadavg()}")
            before, t0 = cpu_seconds(gateway.pid), time.monotonic()
            server_before = cpu_seconds(server.pid)
            async with http.get(f"{url}/api/stats") as r:
                stats_before = (await r.json())["media"]
            counts_before = light.counts() if light is not None else []
            late_before = light.late_wakeups if light is not None else 0
            window_start = time.time()
            await asyncio.sleep(duration)
            used, elapsed = cpu_seconds(gateway.pid) - before, time.monotonic() - t0
            counts = light.counts() if light is not None else []
            server_used = cpu_seconds(server.pid) - server_before
            async with http.get(f"{url}/api/stats") as r:
                stats = (await r.json())["media"]
            print(f"load after:  {os.getloadavg()} (logs in {tmp})")
            print(
                f"real calls: {inside} calls in the meeting for {elapsed:.1f} s: gateway CPU {used:.2f} s = "
                f"{100 * used / elapsed:.1f} % of one core, "
                f"{100 * used / elapsed / max(1, inside):.2f} % per call; server CPU "
                f"{100 * server_used / elapsed:.1f} % of one core"
            )
            plain = [s for s in stats["per_session"].values() if s["transport"] == "plain"]
            plain_before = [s for s in stats_before["per_session"].values() if s["transport"] == "plain"]
            # The callers' own sessions only: a meeting running beside them (--url) has its own.
            packets_in = sum(s["packets_in"] for s in plain) - sum(s["packets_in"] for s in plain_before)
            packets_out = sum(s["packets_out"] for s in plain) - sum(s["packets_out"] for s in plain_before)
            # A gateway that keeps up sends 50 packets/s per audible caller: less means it was
            # starved of CPU (the figures above are then too low).
            print(
                f"server: {len(plain)} plain-RTP sessions, {packets_in / elapsed:.0f} packets/s in from them "
                f"(a gateway that keeps up: {50 * inside}), "
                f"{packets_out / elapsed:.0f} packets/s out, levels decoded "
                f"{stats['levels_decoded'] - stats_before['levels_decoded']}"
            )
            sent = [(s1 - s0) / elapsed for (s0, _), (s1, _) in zip(counts_before, counts, strict=True)]
            heard = [(r1 - r0) / elapsed for (_, r0), (_, r1) in zip(counts_before, counts, strict=True)]
            if light is not None:
                print(
                    f"callers (one process): packets/s per call sent {min(sent):.1f}-{max(sent):.1f}, "
                    f"received {min(heard):.1f}-{max(heard):.1f} (50 each way when all kept their "
                    f"clock); clock wake-ups over 20 ms late: {light.late_wakeups - late_before}"
                )
            if json_path is not None:
                report = {
                    "calls": calls,
                    "inside": inside,
                    "window_s": round(elapsed, 2),
                    "window_start": window_start,
                    "window_end": time.time(),
                    "gateway_cpu_s": round(used, 3),
                    "gateway_cores": round(used / elapsed, 4),
                    "gateway_cores_per_call": round(used / elapsed / max(1, inside), 5),
                    "server_cores": round(server_used / elapsed, 4),
                    "server_pps_in_from_callers": round(packets_in / elapsed, 1),
                    "server_pps_out_to_callers": round(packets_out / elapsed, 1),
                    "caller_pps_sent": [round(x, 1) for x in sent],
                    "caller_pps_received": [round(x, 1) for x in heard],
                    "load_after": os.getloadavg(),
                }
                json_path.write_text(json.dumps(report))
    finally:
        if light is not None:
            await light.hang_up()
            await light.close()
        for phone in phones:
            await phone.stop()
        for proc in (gateway, server):
            if proc is not None:
                proc.terminate()
                proc.wait(10)


def media_path(frames: int = 1500) -> None:
    """Per 20 ms of one call: decode G.711 + resample, Opus encode (to the room), three Opus slot
    decodes + mix, resample + G.711 encode (to the caller)."""
    g711 = G711("pcmu")
    uplink = OpusEncoder()
    mixer = Mixer("me")
    room = [OpusEncoder() for _ in range(3)]
    tone = sine(440, 1.0, 48000)
    slot_packets = [
        [enc.encode(tone[(i % 50) * FRAME : (i % 50 + 1) * FRAME]) for i in range(50)] for enc in room
    ]
    caller_packets = [g711.encode(tone[(i % 50) * FRAME : (i % 50 + 1) * FRAME]) for i in range(50)]
    start = time.process_time()
    for i in range(frames):
        pcm = g711.decode(caller_packets[i % 50])
        uplink.encode(pcm)
        for slot in range(3):
            mixer.packet(slot, slot_packets[slot][i % 50])
        mixed = mixer.mix()
        g711.encode(mixed if mixed is not None else np.zeros(FRAME, np.int16))
    per_frame = (time.process_time() - start) / frames
    share = 100 * per_frame / 0.02
    print(f"media path: {per_frame * 1e6:.0f} us CPU per 20 ms frame = {share:.2f} % of a core per call")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--url", help="call into this running server instead of starting one")
    parser.add_argument("--admin-key", default=ADMIN_KEY, help="the running server's admin key (with --url)")
    parser.add_argument("--server-pid", type=int, help="the running server's pid (with --url)")
    parser.add_argument("--room", default="bench-phone", help="the callers' room")
    parser.add_argument(
        "--wait-endpoints",
        type=int,
        default=0,
        help="with --url: once the callers are in, wait for a meeting of N endpoints in another room",
    )
    parser.add_argument(
        "--wait-settle", type=float, default=0.0, help="then wait S seconds more (its settle)"
    )
    parser.add_argument(
        "--callers",
        choices=("baresip", "python"),
        default="baresip",
        help="baresip processes, or all calls from this process (tests/phone_callers.py)",
    )
    parser.add_argument("--json", type=Path, help="write the calls' figures here")
    parser.add_argument("--skip-media-path", action="store_true", help="not the in-process timing")
    args = parser.parse_args()
    if not args.skip_media_path:
        media_path()
    asyncio.run(
        real_calls(
            args.calls,
            args.duration,
            args.url,
            args.admin_key,
            args.server_pid,
            args.room,
            args.wait_endpoints,
            args.wait_settle,
            args.callers,
            args.json,
        )
    )


if __name__ == "__main__":
    main()
