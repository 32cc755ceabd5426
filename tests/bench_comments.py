"""Benchmark of the public's side: viewers with an event stream each, posting likes and comments
(not collected by pytest).

    python tests/bench_comments.py [--viewers 1000] [--seconds 20] [--abusers 50] [--venues 4]
    python tests/bench_comments.py --url URL --admin-key KEY --server-pid PID --room R   # beside a meeting

One server (the default SQLite stores in a temporary data directory) in this process, with a small
meeting in its media core (``--venues`` publishers fed in-process, as in tests/bench_live.py, and
one screen receiving the 2x2 program; 0: signaling only); the crowd in a child process so the
clients do not share the server's loop. A first phase measures the meeting alone. Every
simulated viewer opens ``GET /w/{code}/events`` and stays on it. Two phases of ``--seconds``:

- realistic: each viewer taps likes in bursts (a POST of 1-5 every 3-10 s) and a few post a
  comment (one in 20 viewers, once);
- abusive: the same viewers, plus ``--abusers`` clients behind one address posting comments and
  likes as fast as they get answers (refused with 429 by the limits).

A prober posts one like every 2 s and notes the total the server answered; each viewer notes when
its stream first shows a total at least that: the push delay. Viewers' addresses are distinct
X-Forwarded-For values (the server trusts the header here, as behind a proxy); all traffic goes to
127.0.0.1. Prints the server's CPU, its loop's lag (what a packet in the media core would wait),
requests answered and refused, and the push delays; docs/performance.md has the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

ADMIN = "a" * 40


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))] if ordered else 0.0


# --- the crowd (child process) -------------------------------------------------------------------


async def crowd(base: str, code: str, viewers: int, seconds: float, abusers: int) -> dict[str, Any]:
    import aiohttp

    stats: dict[str, Any] = {"status": {}, "delays": [], "events": 0, "streams": 0, "stream_errors": 0}
    seen_at: list[list[tuple[int, float]]] = [[] for _ in range(viewers)]  # per viewer: (likes, when)
    probes: list[tuple[int, float]] = []
    until = time.monotonic() + seconds

    def count(status: int) -> None:
        stats["status"][str(status)] = stats["status"].get(str(status), 0) + 1

    async def stream(http: aiohttp.ClientSession, i: int, ready: asyncio.Event) -> None:
        headers = {"X-Forwarded-For": f"10.{i // 250}.{i % 250}.7"}
        try:
            async with http.get(
                f"{base}/w/{code}/events", params={"viewer": f"bench-viewer-{i:05d}"}, headers=headers
            ) as resp:
                stats["streams"] += 1
                ready.set()
                event = ""
                while time.monotonic() < until + 3:
                    line = await asyncio.wait_for(resp.content.readline(), until + 3 - time.monotonic())
                    if not line:
                        break
                    text = line.decode().strip()
                    if text.startswith("event:"):
                        event = text[6:].strip()
                    elif text.startswith("data:") and event in ("likes", "hello"):
                        stats["events"] += 1
                        likes = json.loads(text[5:]).get("likes")
                        if isinstance(likes, int):
                            seen_at[i].append((likes, time.monotonic()))
        except TimeoutError:
            pass  # the phase is over
        except aiohttp.ClientError:
            stats["stream_errors"] += 1
        finally:
            ready.set()

    async def viewer(http: aiohttp.ClientSession, i: int) -> None:
        headers = {"X-Forwarded-For": f"10.{i // 250}.{i % 250}.7"}
        comment_at = time.monotonic() + random.uniform(0, seconds) if i % 20 == 0 else None
        while time.monotonic() < until:
            await asyncio.sleep(random.uniform(3, 10))
            if time.monotonic() >= until:
                break
            try:
                async with http.post(
                    f"{base}/w/{code}/likes", json={"count": random.randint(1, 5)}, headers=headers
                ) as resp:
                    count(resp.status)
                if comment_at is not None and time.monotonic() >= comment_at:
                    comment_at = None
                    body = {"nickname": f"viewer {i}", "text": f"question {i}: when does the bus return?"}
                    async with http.post(f"{base}/w/{code}/comments", json=body, headers=headers) as resp:
                        count(resp.status)
            except aiohttp.ClientError:
                count(0)

    async def abuser(http: aiohttp.ClientSession, n: int) -> None:
        headers = {"X-Forwarded-For": "198.51.100.66"}
        k = 0
        while time.monotonic() < until:
            k += 1
            try:
                body = {"nickname": "spam", "text": f"buy now {n}-{k}"}
                async with http.post(f"{base}/w/{code}/comments", json=body, headers=headers) as resp:
                    count(resp.status)
                async with http.post(f"{base}/w/{code}/likes", json={"count": 50}, headers=headers) as resp:
                    count(resp.status)
            except aiohttp.ClientError:
                count(0)

    async def prober(http: aiohttp.ClientSession) -> None:
        while time.monotonic() < until - 2:
            await asyncio.sleep(2)
            async with http.post(
                f"{base}/w/{code}/likes", json={"count": 1}, headers={"X-Forwarded-For": "192.0.2.1"}
            ) as resp:
                if resp.status == 200:
                    probes.append(((await resp.json())["likes"], time.monotonic()))

    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        readies = [asyncio.Event() for _ in range(viewers)]
        streams = [asyncio.create_task(stream(http, i, readies[i])) for i in range(viewers)]
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 60)
        until = time.monotonic() + seconds
        await asyncio.gather(
            *(viewer(http, i) for i in range(viewers)),
            *(abuser(http, n) for n in range(abusers)),
            prober(http),
        )
        await asyncio.gather(*streams)
    for total, sent in probes:
        for seen in seen_at:
            when = next((t for likes, t in seen if likes >= total), None)
            stats["delays"].append(float("inf") if when is None else max(0.0, when - sent))
    stats["probes"] = len(probes)
    return stats


# --- the server (this process) ---------------------------------------------------------------------


async def loop_lag(samples: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(0.005)
        samples.append(time.perf_counter() - started - 0.005)


async def meeting_of(venues: int) -> tuple[Any, list[Any], dict[str, int]]:
    """``venues`` in-process publishers (the live benchmark's clips) and one screen receiving the
    program: the media core forwards while the public side is under load."""
    from bench_live import publish
    from test_sfu_support import Meeting

    from conference.roles import Role
    from conference.room import Participant, join, set_program

    meeting = Meeting(max_endpoints=venues + 2)
    await meeting.start()
    publishers = await publish(meeting, venues)
    received = {"packets": 0}
    screen = Participant("screen", "screen", Role.VIEWER)
    state, _ = await meeting.store.update(meeting.room, lambda s: join(s, screen))
    transport = await meeting.backend.open_direct(
        meeting.room,
        "screen",
        state,
        video_slots=4,
        audio_slots=3,
        on_packet=lambda *a: received.__setitem__("packets", received["packets"] + 1),
    )
    transport.start()
    await meeting.command(set_program, "grid-2x2", [f"hall-{i}" for i in range(min(4, venues))])
    return meeting, publishers, received


async def run(viewers: int, seconds: float, abusers: int, venues: int, data_dir: Path) -> None:
    import aiohttp
    from aiohttp import web
    from browser_util import free_port

    from conference.config import Settings
    from conference.sfu.stats import window_percentile
    from signaling.app import create_app

    settings = Settings(
        data_dir=data_dir, secret="b" * 40, admin_key=ADMIN, media=venues > 0, trust_forwarded_for=True
    )
    meeting: Any = None
    publishers: list[Any] = []
    received = {"packets": 0}
    if venues:
        meeting, publishers, received = await meeting_of(venues)
        app = create_app(settings, media=meeting.backend, store=meeting.store)
    else:
        app = create_app(settings)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {ADMIN}"}
    try:
        room = meeting.room if meeting is not None else "council"
        async with aiohttp.ClientSession() as http:
            await http.post(f"{base}/api/rooms", json={"room": room}, headers=auth)
            async with http.get(f"{base}/api/rooms/{room}/public", headers=auth) as resp:
                code = (await resp.json())["code"]
        phases = [("realistic", 0), ("abusive", abusers)]
        if venues:
            phases.insert(0, ("meeting alone", -1))
        for phase, bad in phases:
            before = meeting.backend.stats()["forward_delay_us"]["histogram"] if meeting else {}
            packets0 = received["packets"]
            samples: list[float] = []
            stop = asyncio.Event()
            sampler = asyncio.create_task(loop_lag(samples, stop))
            cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
            if bad < 0:  # the meeting without the public
                await asyncio.sleep(seconds)
                out = json.dumps({"status": {}, "delays": [], "streams": 0, "stream_errors": 0, "probes": 0})
            else:
                child = await asyncio.create_subprocess_exec(
                    sys.executable, __file__, "--crowd", base, code, str(viewers), str(seconds), str(bad),
                    stdout=asyncio.subprocess.PIPE,
                )  # fmt: skip
                out = (await child.communicate())[0].decode()
            cpu1, wall1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
            stop.set()
            await sampler
            result = json.loads(out.strip().splitlines()[-1])
            media = ""
            if meeting is not None:
                after = meeting.backend.stats()["forward_delay_us"]["histogram"]
                media = (
                    f"; meeting: forwarding p99 {window_percentile(before, after, 99)} us, "
                    f"screen got {(received['packets'] - packets0) / (wall1 - wall0):.0f} packets/s"
                )
            cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
            delays = [d for d in result["delays"] if d != float("inf")]
            missed = len(result["delays"]) - len(delays)
            statuses = result["status"]
            answered = sum(statuses.values())
            lag = f"loop lag p99 {pct(samples, 0.99) * 1000:.1f} ms, max {max(samples) * 1000:.0f} ms"
            cores = f"server CPU {cpu / (wall1 - wall0):.2f} core"
            if bad < 0:
                print(f"{phase}: {cores}; {lag}{media}", flush=True)
                continue
            print(
                f"{phase}: {viewers} viewers ({result['streams']} streams, "
                f"{result['stream_errors']} broken), "
                f"{bad} abusers; {answered / seconds:.0f} posts/s answered "
                f"({', '.join(f'{k}: {v}' for k, v in sorted(statuses.items()))}); "
                f"{cores} (incl. stream set-up); {lag}; "
                f"likes pushed to every viewer: p50 {pct(delays, 0.5):.2f} s, p99 {pct(delays, 0.99):.2f} s, "
                f"max {max(delays, default=0):.2f} s over {result['probes']} probes x {viewers} viewers"
                f" ({missed} not seen){media}",
                flush=True,
            )
    finally:
        for publisher in publishers:
            publisher.pause()
        await runner.cleanup()
        if meeting is not None:
            await meeting.close()


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def beside(url: str, admin_key: str, server_pid: int, room: str, viewers: int, seconds: float,
                 abusers: int, wait_endpoints: int, wait_settle: float) -> None:  # fmt: skip
    """The crowd against a server already running a meeting (``conference bench --url``): the
    public page of that meeting's room. The server's CPU is read from /proc: a phase of the meeting
    alone first, so the public side's share is the difference. The meeting's own figures
    (delivery, forwarding delay) are in the report of the ``conference bench`` beside."""
    import aiohttp

    auth = {"Authorization": f"Bearer {admin_key}"}
    async with aiohttp.ClientSession(headers=auth) as http:
        for _ in range(1200):  # bounded: ten minutes
            async with http.get(f"{url}/api/stats") as resp:
                sessions = (await resp.json())["media"].get("per_session") or {}
            if sum(1 for key in sessions if key.split("/", 1)[0] == room) >= wait_endpoints:
                break
            await asyncio.sleep(0.5)
        else:
            raise SystemExit(f"the meeting in {room} never reached {wait_endpoints} endpoints")
        print(f"the meeting: {wait_endpoints} endpoints in; {wait_settle:.0f} s more", flush=True)
        await asyncio.sleep(wait_settle)
        async with http.get(f"{url}/api/rooms/{room}/public") as resp:
            code = (await resp.json())["code"]
    alone = None
    for phase, bad in (("meeting alone", -1), ("realistic", 0), ("abusive", abusers)):
        cpu0, wall0 = process_cpu_seconds(server_pid), time.monotonic()
        if bad < 0:
            await asyncio.sleep(seconds)
            result: dict[str, Any] = {}
        else:
            child = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--crowd", url, code, str(viewers), str(seconds), str(bad),
                stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            result = json.loads((await child.communicate())[0].decode().strip().splitlines()[-1])
        cores = (process_cpu_seconds(server_pid) - cpu0) / (time.monotonic() - wall0)
        if bad < 0:
            alone = cores
            print(f"{phase}: server CPU {cores:.3f} core ({time.strftime('%H:%M:%S')})", flush=True)
            continue
        delays = [d for d in result["delays"] if d != float("inf")]
        statuses = result["status"]
        print(
            f"{phase}: {viewers} viewers ({result['streams']} streams, {result['stream_errors']} broken), "
            f"{bad} abusers; {sum(statuses.values()) / seconds:.0f} posts/s answered "
            f"({', '.join(f'{k}: {v}' for k, v in sorted(statuses.items()))}); server CPU {cores:.3f} core "
            f"(the public side {cores - (alone or 0):+.3f}, incl. stream set-up); likes pushed to every "
            f"viewer: p50 {pct(delays, 0.5):.2f} s, p99 {pct(delays, 0.99):.2f} s, max "
            f"{max(delays, default=0):.2f} s over {result['probes']} probes x {viewers} viewers "
            f"({len(result['delays']) - len(delays)} not seen) ({time.strftime('%H:%M:%S')})",
            flush=True,
        )


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--viewers", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--abusers", type=int, default=50)
    parser.add_argument("--venues", type=int, default=4, help="in-process publishers of a meeting (0: none)")
    parser.add_argument("--crowd", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--url", help="a running server with a meeting (conference bench --url) instead")
    parser.add_argument("--admin-key", default=ADMIN, help="with --url: the server's admin key")
    parser.add_argument("--server-pid", type=int, help="with --url: the server's pid (its CPU)")
    parser.add_argument("--room", default="bench", help="with --url: the meeting's room")
    parser.add_argument(
        "--wait-endpoints", type=int, default=0, help="with --url: wait for N endpoints in --room"
    )
    parser.add_argument("--wait-settle", type=float, default=0.0, help="then S seconds more")
    args = parser.parse_args()
    if args.crowd:
        base, code, viewers, seconds, abusers = args.crowd
        print(json.dumps(await crowd(base, code, int(viewers), float(seconds), int(abusers))))
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 8192)), hard))
    if args.url:
        if args.server_pid is None:
            raise SystemExit("--url needs --server-pid")
        await beside(
            args.url, args.admin_key, args.server_pid, args.room, args.viewers, args.seconds,
            args.abusers, args.wait_endpoints, args.wait_settle,
        )  # fmt: skip
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 8192)), hard))
    print(f"public side: load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        await run(args.viewers, args.seconds, args.abusers, args.venues, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
