"""The 50-endpoint meeting with a companion load on the same server (not collected by pytest).

    python tests/bench_beside.py phones [--endpoints 50] [--calls 10] [--callers python|baresip]
    python tests/bench_beside.py comments [--endpoints 50] [--viewers 1000]

Starts one ``conference serve`` (the default stores in a temporary data directory), then:

- ``phones``: ``tests/bench_phone.py --url`` places the calls first (their PIN prompts run on a
  quiet server), then ``conference bench --url`` joins the meeting; the calls' window (gateway and
  server CPU) starts once the meeting's endpoints are in and its own window has begun. The callers
  are one Python process by default (tests/phone_callers.py; ``--callers baresip``: a baresip
  process per call, too heavy for two cores with the meeting's load generator beside). Prints the
  gateway's CPU per call, each call's packets/s both ways, the meeting's delivery and delay p99,
  and whether the figure is valid (every call ~50 packets/s each way, delivery >= 99.5 %).
- ``comments``: ``conference bench --url`` joins the meeting, then ``tests/bench_comments.py --url``
  runs its phases (the meeting alone, realistic, abusive) on the meeting's public page inside the
  meeting's window.

Prints both reports; the meeting's delivery and forwarding delay are its figures with the companion
running. All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from bench_phone import free_port, wait_http  # noqa: E402

CONFERENCE = str(Path(sys.executable).with_name("conference"))
ADMIN_KEY = "beside-admin-key-0123456789abcdef-012345678"


async def participants(url: str, room: str) -> int:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with aiohttp.ClientSession(headers=headers) as http, http.get(f"{url}/api/rooms/{room}") as r:
        if r.status != 200:
            return 0
        return len((await r.json()).get("participants") or [])


async def run(args: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="bench-beside-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "CONFERENCE_TRUST_FORWARDED_FOR": "true"}  # the crowd's distinct addresses
    server = subprocess.Popen(
        [CONFERENCE, "serve", "--port", str(port), "--data-dir", str(tmp / "data"), "--admin-key", ADMIN_KEY],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / "server.log", "w"),  # noqa: SIM115 (closed with the process)
        env=env,
    )
    procs: list[asyncio.subprocess.Process] = []
    try:
        await wait_http(url)
        print(f"server pid {server.pid} at {url}; load {os.getloadavg()[0]:.1f}; logs in {tmp}", flush=True)
        common = ["--url", url, "--admin-key", ADMIN_KEY, "--server-pid", str(server.pid)]
        meeting_cmd = [
            CONFERENCE, "bench", *common, "--endpoints", str(args.endpoints), "--duration",
            str(args.duration), "--settle", str(args.settle), "--room", "bench", "--json",
            str(tmp / "meeting.json"),
        ]  # fmt: skip
        if args.companion == "phones":
            companion_cmd = [
                sys.executable, str(ROOT / "tests" / "bench_phone.py"), *common, "--calls", str(args.calls),
                "--duration", str(args.window), "--room", "bench-phone", "--wait-endpoints",
                str(args.endpoints), "--wait-settle", str(args.settle + 5), "--callers", args.callers,
                "--json", str(tmp / "calls.json"), "--skip-media-path",
            ]  # fmt: skip
            companion = await asyncio.create_subprocess_exec(*companion_cmd)
            procs.append(companion)
            for _ in range(360):  # the callers in before the meeting joins (bounded: three minutes)
                if await participants(url, "bench-phone") >= args.calls or companion.returncode is not None:
                    break
                await asyncio.sleep(0.5)
            print(f"callers in: {await participants(url, 'bench-phone')} of {args.calls}", flush=True)
            meeting = await asyncio.create_subprocess_exec(*meeting_cmd)
            procs.append(meeting)
        else:
            meeting = await asyncio.create_subprocess_exec(*meeting_cmd)
            procs.append(meeting)
            companion_cmd = [
                sys.executable, str(ROOT / "tests" / "bench_comments.py"), *common, "--room", "bench",
                "--viewers", str(args.viewers), "--seconds", str(args.window), "--abusers",
                str(args.abusers), "--wait-endpoints", str(args.endpoints), "--wait-settle",
                str(args.settle + 5),
            ]  # fmt: skip
            companion = await asyncio.create_subprocess_exec(*companion_cmd)
            procs.append(companion)
        companion_rc = await companion.wait()
        meeting_running = meeting.returncode is None  # the calls' window ended inside the meeting's
        meeting_rc = await meeting.wait()
        report = json.loads((tmp / "meeting.json").read_text()) if (tmp / "meeting.json").exists() else {}
        keys = ("joined", "server_cpu_cores", "pps_in", "pps_out", "delivery_ratio", "forward_delay_ms")
        print("the meeting beside:", json.dumps({k: report.get(k) for k in keys}), flush=True)
        if args.companion == "phones":
            verdict(tmp / "calls.json", report, meeting_running)
        print(f"finished {time.strftime('%H:%M:%S')}; companion rc {companion_rc}, meeting rc {meeting_rc}")
        return companion_rc or meeting_rc
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.terminate()
                await proc.wait()
        server.terminate()
        server.wait(20)


def verdict(calls_json: Path, meeting: dict[str, Any], meeting_running: bool) -> None:
    """The calls' figures beside the meeting's, and whether they are a valid per-call cost."""
    if not calls_json.exists():
        print("NOT VALID: the calls wrote no figures")
        return
    calls = json.loads(calls_json.read_text())
    sent, heard = calls["caller_pps_sent"], calls["caller_pps_received"]
    delivery = meeting.get("delivery_ratio")
    p99 = (meeting.get("forward_delay_ms") or {}).get("p99")
    print(
        f"{calls['inside']} of {calls['calls']} calls for {calls['window_s']} s: gateway "
        f"{100 * calls['gateway_cores']:.1f} % of one core = {100 * calls['gateway_cores_per_call']:.2f} % "
        f"per call; server {100 * calls['server_cores']:.1f} % of one core (the meeting's and the calls'); "
        f"server from/to the callers {calls['server_pps_in_from_callers']}/"
        f"{calls['server_pps_out_to_callers']} packets/s"
    )
    if sent:
        print(
            f"per call: sent {min(sent)}-{max(sent)} packets/s, received {min(heard)}-{max(heard)}; "
            f"the meeting: delivery {delivery}, forwarding delay p99 {p99} ms"
        )
    problems = []
    if calls["inside"] < calls["calls"]:
        problems.append(f"only {calls['inside']} of {calls['calls']} calls got in")
    if not sent or min(sent) < 47 or min(heard) < 47:
        problems.append("a call fell short of ~50 packets/s each way (or no per-call counts: baresip)")
    if delivery is None or delivery < 0.995:
        problems.append(f"the meeting's delivery {delivery} < 0.995")
    if not meeting_running:
        problems.append("the meeting's window ended before the calls' window did")
    print("VALID" if not problems else "NOT VALID: " + "; ".join(problems), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("companion", choices=("phones", "comments"))
    parser.add_argument("--endpoints", type=int, default=50)
    parser.add_argument("--settle", type=float, default=20.0, help="the meeting's settle before its window")
    parser.add_argument(
        "--window", type=float, default=30.0, help="the companion's measured seconds (per phase)"
    )
    parser.add_argument("--duration", type=float, help="the meeting's window (default: covers the companion)")
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--callers", choices=("python", "baresip"), default="python")
    parser.add_argument("--viewers", type=int, default=1000)
    parser.add_argument("--abusers", type=int, default=50)
    args = parser.parse_args()
    if args.duration is None:
        # phones: settle + the window + margin; comments: three phases, each with its streams' set-up.
        args.duration = args.window + 25 if args.companion == "phones" else 3 * (args.window + 15) + 10
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
