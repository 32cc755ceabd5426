"""``conference bench``: a meeting of N real endpoints against the server, measured.

The benchmark starts ``conference serve`` in its own process (or uses ``--url``), spreads N test
endpoints (:mod:`conference.loadtest.endpoint`: one chair, the rest venues and members) over a few worker
processes, has the chair change the program every few seconds, and reports in JSON and as a table.

Phases (each bounded in time):
1. server up (``/healthz``), workers up (their pre-encoded media loaded);
2. the chair joins and puts itself on the program, then everyone joins (join time: socket open to
   the first decoded video frame);
3. the chair fills the program (``--layout``, 4 slots by default); a short settling pause;
4. the measured window (``--duration``): server CPU from ``/proc/<pid>/stat`` (utime+stime) and packet
   counters from ``GET /api/stats`` at both ends; the chair changes the program every
   ``--switch-every`` seconds (switch time: the program event's server time to the new source's first
   decoded frame at each subscriber);
5. every endpoint pauses its camera and microphone, in-flight packets drain, and delivery is counted:
   per subscriber and slot, packets received over packets the server says it sent.

Worker processes (``python -m conference.loadtest.worker``) speak JSON lines: the parent
writes commands on their stdin, they answer on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from conference.loadtest import memory, soak
from conference.loadtest.report import build_report, format_table, layout_size

ENDPOINTS_PER_WORKER = 13


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoints", type=int, default=10, help="endpoints in the meeting (default 10)")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds (default 20)")
    parser.add_argument("--json", metavar="FILE", help="also write the report to FILE")
    parser.add_argument("--url", help="use a running server instead of starting one (needs --admin-key)")
    parser.add_argument("--admin-key", help="the running server's admin key (with --url)")
    parser.add_argument("--server-pid", type=int, help="the running server's pid, to measure its CPU")
    parser.add_argument(
        "--workers", type=int, help=f"load processes (default: one per {ENDPOINTS_PER_WORKER})"
    )
    parser.add_argument(
        "--backend",
        default="sfu",
        help="media backend of the started server: sfu, or relay_baseline (aiortc's decode/encode relay)",
    )
    parser.add_argument("--layout", default="grid-2x2", help="program layout (default grid-2x2)")
    parser.add_argument("--switch-every", type=float, default=4.0, help="seconds between program changes")
    parser.add_argument(
        "--decode-sample",
        type=int,
        default=2,
        help="endpoints that decode every frame they receive (the others decode only at joins/switches)",
    )
    parser.add_argument("--speakers", type=int, default=3, help="endpoints whose microphones carry a voice")
    parser.add_argument(
        "--server-loop",
        default="uvloop",
        choices=["uvloop", "asyncio"],
        help="event loop of the started server (default uvloop)",
    )
    parser.add_argument(
        "--no-simulcast",
        action="store_true",
        help="load endpoints publish one video stream instead of answering the server's simulcast offer "
        "with three layers (q/h/f: a quarter, half and all of the clip's size, each its own SSRC and RID)",
    )
    parser.add_argument(
        "--load-nice",
        type=int,
        default=0,
        help="niceness of the load processes (0: as the server): on a machine shared by the server and "
        "its load, a higher value lets the server run first, as it would on cores of its own",
    )
    parser.add_argument("--room", default="bench")
    parser.add_argument("--record", action="store_true", help="record the meeting (server auto_record)")
    parser.add_argument(
        "--live",
        action="store_true",
        help="broadcast the meeting (the live-stream compositor, docs/live.md) and measure its CPU",
    )
    parser.add_argument(
        "--churn",
        type=int,
        default=0,
        help="endpoints that leave and join again every --churn-every seconds (the soak: 5)",
    )
    parser.add_argument("--churn-every", type=float, default=60.0, help="seconds between churns (default 60)")
    parser.add_argument(
        "--interval",
        type=float,
        default=60.0,
        help="seconds per delivery interval reported (default 60)",
    )
    parser.add_argument(
        "--render",
        action="store_true",
        help="with --record: after everyone left, wait for the recording's render and report it",
    )
    parser.add_argument(
        "--memory",
        action="store_true",
        help="the server's memory at the window's start, 30 s in, its end and after leaving, and what "
        "grew (GET /api/debug/memory: each reading walks the server's objects, a short pause of its loop)",
    )
    parser.add_argument(
        "--tracemalloc",
        type=int,
        default=0,
        metavar="FRAMES",
        help="with a started server: trace its allocations (serve --tracemalloc; slows it) and report the "
        "allocation sites that grew; implies --memory",
    )
    parser.add_argument("--data-dir", help="the started server's data directory (default: a temporary one)")
    parser.add_argument("--cache-dir", help="pre-encoded media cache (default ~/.cache/conference-testmedia)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds between joins and the window")
    parser.add_argument("--join-timeout", type=float, help="seconds for all joins (default 30 + N)")
    parser.add_argument("--quiet", action="store_true", help="no table, only the JSON file / stdout JSON")
    parser.add_argument(
        "--details", action="store_true", help="include every endpoint's own report in the JSON"
    )


def run(args: argparse.Namespace) -> int:
    problems = _check_args(args)
    if problems:
        print(f"conference bench: {problems}", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(Bench(args).run())
    except BenchError as exc:
        print(f"conference bench: {exc}", file=sys.stderr)
        return 1
    text = json.dumps(report, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    if args.quiet:
        if not args.json:
            print(text)
    else:
        print(format_table(report))
    return 0


def _check_args(args: argparse.Namespace) -> str | None:
    if args.endpoints < 2:
        return "--endpoints must be at least 2 (a chair and one more)"
    if not 0 < args.duration <= 3600:
        return "--duration must be in (0, 3600] seconds"
    if args.switch_every <= 0:
        return "--switch-every must be positive"
    if args.url and not args.admin_key:
        return "--url needs --admin-key (tokens are minted through POST /api/tokens)"
    if args.churn < 0 or args.churn >= args.endpoints:
        return "--churn must be between 0 and the number of endpoints less one (never the chair)"
    if args.churn_every <= 0 or args.interval <= 0:
        return "--churn-every and --interval must be positive"
    if args.render and not args.record:
        return "--render needs --record"
    if args.tracemalloc < 0 or (args.tracemalloc and args.url):
        return "--tracemalloc needs a started server (not --url) and a positive number of frames"
    if args.workers is not None and args.workers < 1:
        return "--workers must be at least 1"
    if args.server_pid is not None:
        if not args.url:
            return "--server-pid is only for a server given with --url (a started one is measured anyway)"
        return _check_server_pid(args.server_pid)
    return None


def _check_server_pid(pid: int) -> str | None:
    """The CPU figures would be meaningless for another process: it must be a running server."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return f"--server-pid {pid}: no such process"
    words = [w.decode(errors="replace") for w in cmdline if w]
    # `conference serve ...` or `python -m signaling serve ...` (the same server).
    launcher = any(w.endswith("conference") for w in words) or "signaling" in words
    if "serve" not in words or not launcher:
        return f"--server-pid {pid} is not a `conference serve` process: {' '.join(words)[:200]}"
    return None


class BenchError(Exception):
    pass


class _Churner:
    """``--churn``: N endpoints (never the chair), taken in turn, leave and join again; each churn
    runs in the background of the window and its rejoin time is reported."""

    def __init__(self, bench: Bench, pool: list[str], count: int) -> None:
        self.bench = bench
        self.pool = pool
        self.count = count
        self.turn = 0
        self.tasks: list[asyncio.Task[list[dict[str, Any]]]] = []
        self.busy: set[str] = set()  # leaving or joining again now

    async def start(self) -> None:
        chosen = {self.pool[(self.turn + k) % len(self.pool)] for k in range(min(self.count, len(self.pool)))}
        self.turn += self.count
        self.busy |= chosen
        involved = []
        for worker in self.bench.workers:
            mine = [e["identity"] for e in worker.endpoints if e["identity"] in chosen]
            if mine:
                await worker.send({"cmd": "churn", "identities": mine})
                involved.append(worker)
        timeout = 30.0 + 10 * self.count
        self.tasks.append(asyncio.create_task(self._collect(involved, timeout, chosen)))

    async def _collect(self, workers: list[Worker], timeout: float, chosen: set[str]) -> list[dict[str, Any]]:
        try:
            return list(await asyncio.gather(*(w.expect("churned", timeout) for w in workers)))
        finally:
            self.busy -= chosen

    async def wait(self) -> None:
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def figures(self) -> dict[str, Any]:
        done = [m for t in self.tasks if t.done() and not t.exception() for m in t.result()]
        seconds = [m["seconds"] for m in done]
        return {
            "churns": len(self.tasks),
            "endpoints_rejoined": sum(len(m["identities"]) - len(m["failed"]) for m in done),
            "rejoin_failed": {k: v for m in done for k, v in m["failed"].items()},
            "worker_churn_s_max": max(seconds) if seconds else None,
        }


# --- the parent ------------------------------------------------------------------------------


@dataclass(slots=True)
class Worker:
    number: int
    process: asyncio.subprocess.Process
    endpoints: list[dict[str, Any]]
    log: list[str] = field(default_factory=list)
    # One reader per worker sorts its answers by kind, so that a churn in progress and the chair's
    # program change can each wait for their own answer.
    inbox: dict[str, asyncio.Queue[dict[str, Any] | None]] = field(default_factory=dict)
    ended: str | None = None
    reader: asyncio.Task[None] | None = None

    def start_reading(self) -> None:
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            await self._read_lines()
        except Exception as exc:  # a reader that dies must say so, not leave every wait to time out
            self._end(f"worker {self.number}: reading its answers failed: {type(exc).__name__}: {exc}")

    async def _read_lines(self) -> None:
        assert self.process.stdout is not None
        while True:
            line = await self.process.stdout.readline()
            if not line:
                self._end(f"worker {self.number} exited (code {await self.process.wait()})")
                return
            try:
                message = json.loads(line)
            except ValueError:
                self.log.append(line.decode(errors="replace").rstrip())
                continue
            if message.get("event") == "error":
                self._end(f"worker {self.number}: {message.get('message')}")
                return
            self._queue(str(message.get("event"))).put_nowait(message)

    def _end(self, why: str) -> None:
        self.ended = why
        for queue in self.inbox.values():
            queue.put_nowait(None)

    def _queue(self, event: str) -> asyncio.Queue[dict[str, Any] | None]:
        return self.inbox.setdefault(event, asyncio.Queue())

    async def send(self, command: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        await self.process.stdin.drain()

    async def expect(self, event: str, timeout: float) -> dict[str, Any]:
        """The next answer of this kind from the worker."""
        queue = self._queue(event)
        if self.ended is not None and queue.empty():
            raise BenchError(self.ended)
        try:
            message = await asyncio.wait_for(queue.get(), timeout)
        except TimeoutError:
            raise BenchError(f"worker {self.number}: no {event!r} within {timeout:.0f} s") from None
        if message is None:
            raise BenchError(self.ended or f"worker {self.number} ended")
        return message


def _live_figures(first: dict[str, Any], last: dict[str, Any]) -> dict[str, Any]:
    wall = float(last.get("wall_s", 0)) - float(first.get("wall_s", 0))
    if not first or not last or wall <= 0:
        return {"measured": False}
    return {
        "measured": True,
        "cores": round((last["cpu_s"] - first["cpu_s"]) / wall, 3),
        "fps_out": round((last["frames"] - first["frames"]) / wall, 1),
        "late_frames": last["late_frames"] - first["late_frames"],
        "restarts": last.get("restarts", 0),
        "window_s": round(wall, 1),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _process_cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # After the command name: state is field 3, utime 14 and stime 15 (1-based, man proc).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.n = args.endpoints
        self.server: asyncio.subprocess.Process | None = None
        self.server_pid: int | None = args.server_pid
        self.url: str = args.url.rstrip("/") if args.url else ""
        self.admin_key: str = args.admin_key or secrets.token_urlsafe(24)
        self.secret = secrets.token_urlsafe(32)
        self.workers: list[Worker] = []
        self.http: aiohttp.ClientSession | None = None
        self._tmp: str | None = None
        self.program_changes: list[dict[str, Any]] = []
        self.program_failures: list[str] = []  # changes the room refused or that failed

    # -- plan --

    def plan(self) -> list[dict[str, Any]]:
        """Who joins: one chair, then venues, every fourth a member (on a 4-slot phone)."""
        endpoints = []
        for i in range(self.n):
            if i == 0:
                identity, role, device, slots = "chair", "chair", "venue", None
            elif i % 4 == 3:
                identity, role, device, slots = f"member-{i:02d}", "member", "phone", 4
            else:
                identity, role, device, slots = f"venue-{i:02d}", "venue", "venue", None
            endpoints.append(
                {
                    "identity": identity,
                    "index": i,
                    "role": role,
                    "device": device,
                    "video_slots": slots,
                    "speaking": 1 <= i <= self.args.speakers,
                    "decode": "all" if 1 <= i <= self.args.decode_sample else "probe",
                }
            )
        return endpoints

    # -- server --

    async def start_server(self) -> None:
        args = self.args
        data_dir = args.data_dir or tempfile.mkdtemp(prefix="conference-bench-")
        if not args.data_dir:
            self._tmp = data_dir
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        port = _free_port()
        command = [
            sys.executable,
            "-m",
            "signaling",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            # "=" form: a generated value may start with "-", which argparse would take for an option.
            f"--secret={self.secret}",
            f"--admin-key={self.admin_key}",
            "--max-endpoints",
            str(max(50, self.n)),
            "--media-backend",
            args.backend,
            "--log-level",
            "WARNING",
            "--event-loop",
            args.server_loop,
        ]
        if args.record:
            command.append("--auto-record")
        if args.tracemalloc:
            command.append(f"--tracemalloc={args.tracemalloc}")
        log = open(Path(data_dir) / "bench-server.log", "wb")  # noqa: SIM115 - the child owns it
        self.server = await asyncio.create_subprocess_exec(
            *command, stdout=log, stderr=asyncio.subprocess.STDOUT, cwd=os.getcwd()
        )
        log.close()
        self.server_pid = self.server.pid
        self.url = f"http://127.0.0.1:{port}"
        assert self.http is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.server.returncode is not None:
                break
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with self.http.get(f"{self.url}/healthz") as response:
                    if response.status == 200:
                        health = await response.json()
                        if not health.get("media", True):
                            raise BenchError("the server runs without media")
                        return
            await asyncio.sleep(0.2)
        tail = (Path(data_dir) / "bench-server.log").read_text(errors="replace")[-2000:]
        raise BenchError(f"the server did not come up:\n{tail}")

    async def stop_server(self) -> None:
        if self.server is None or self.server.returncode is not None:
            return
        self.server.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.server.wait(), 10)
        except TimeoutError:
            self.server.kill()
            await self.server.wait()

    async def server_stats(self) -> dict[str, Any]:
        assert self.http is not None
        headers = {"Authorization": f"Bearer {self.admin_key}"}
        async with self.http.get(f"{self.url}/api/stats", headers=headers) as response:
            if response.status != 200:
                raise BenchError(f"GET /api/stats: HTTP {response.status}")
            return dict(await response.json())

    async def stats(self) -> dict[str, Any]:
        data = await self.server_stats()
        media = dict(data.get("media") or {})
        # The recorder's own figures ride along (the archive threads' CPU for --record).
        media["recorder"] = data.get("recorder") or {}
        return media

    async def token(self, identity: str, role: str) -> str:
        """A token from the server's own REST API (the load generator never holds the secret's
        code path: it is a client like any other); a 429 (rate limit) is waited out."""
        assert self.http is not None
        body = {"room": self.args.room, "identity": identity, "name": identity, "role": role, "ttl": 3600}
        headers = {"Authorization": f"Bearer {self.admin_key}"}
        for _ in range(50):
            async with self.http.post(f"{self.url}/api/tokens", json=body, headers=headers) as response:
                if response.status == 429:
                    await asyncio.sleep(min(5.0, float(response.headers.get("Retry-After", "0.5") or 0.5)))
                    continue
                if response.status != 201:
                    raise BenchError(f"POST /api/tokens: HTTP {response.status}: {await response.text()}")
                return str((await response.json())["token"])
        raise BenchError("POST /api/tokens: still rate limited after 50 tries")

    # -- workers --

    async def start_workers(self, endpoints: list[dict[str, Any]]) -> None:
        count = self.args.workers or max(1, math.ceil(len(endpoints) / ENDPOINTS_PER_WORKER))
        groups: list[list[dict[str, Any]]] = [[] for _ in range(min(count, len(endpoints)))]
        for i, endpoint in enumerate(endpoints):
            groups[i % len(groups)].append(endpoint)
        palette = {e["identity"]: e["index"] for e in endpoints}
        for number, group in enumerate(groups):
            for endpoint in group:
                endpoint["token"] = await self.token(endpoint["identity"], endpoint["role"])
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "conference.loadtest.worker",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                cwd=os.getcwd(),
                # A long run's report is one JSON line of every endpoint's switch times: more than
                # the 64 KiB a stream reader takes by default (a 10-minute soak lost its report).
                limit=64 * 2**20,
                preexec_fn=(lambda: os.nice(nice)) if (nice := self.args.load_nice) else None,
            )
            worker = Worker(number, process, group)
            worker.start_reading()
            spec = {
                "url": self.url,
                "endpoints": group,
                "palette": palette,
                "cache_dir": self.args.cache_dir,
                "join_timeout": 20.0,
                "simulcast": not self.args.no_simulcast,
            }
            await worker.send(spec)
            self.workers.append(worker)
        # Media is encoded on first use (then cached): allow for that here, not in join times.
        await asyncio.gather(*(w.expect("ready", 120 + 30 * len(w.endpoints)) for w in self.workers))

    async def stop_workers(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(Exception):
                await worker.send({"cmd": "stop"})
        for worker in self.workers:
            try:
                await asyncio.wait_for(worker.process.wait(), 15)
            except TimeoutError:
                worker.process.kill()
                await worker.process.wait()
            if worker.reader is not None:
                worker.reader.cancel()

    async def command_all(self, command: dict[str, Any], event: str, timeout: float) -> list[dict[str, Any]]:
        for worker in self.workers:
            await worker.send(command)
        return list(await asyncio.gather(*(w.expect(event, timeout) for w in self.workers)))

    async def set_program(self, slots: list[str | None]) -> dict[str, Any]:
        chair_worker = self.workers[0]
        await chair_worker.send({"cmd": "program", "layout": self.args.layout, "slots": slots})
        message = await chair_worker.expect("program", 30)
        if "error" in message:
            self.program_failures.append(message["error"])
            return message
        self.program_changes.append(message)
        return message

    # -- the run --

    async def run(self) -> dict[str, Any]:
        args = self.args
        endpoints = self.plan()
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        try:
            if not args.url:
                await self.start_server()
            await self.start_workers(endpoints)
            return await self._meeting(endpoints)
        finally:
            await self.stop_workers()
            await self.stop_server()
            await self.http.close()
            if self._tmp:
                shutil.rmtree(self._tmp, ignore_errors=True)

    async def _meeting(self, endpoints: list[dict[str, Any]]) -> dict[str, Any]:
        args = self.args
        join_timeout = args.join_timeout or 30 + self.n
        # The chair first, on the program alone, so every later join has video to see at once.
        await self.workers[0].send({"cmd": "join_chair", "layout": args.layout})
        await self.workers[0].expect("chair_joined", 30)
        joined = await self.command_all({"cmd": "join"}, "joined", join_timeout)
        failed = {k: v for j in joined for k, v in j["failed"].items()}
        if len(failed) == self.n:
            raise BenchError(f"no endpoint could join: {failed}")
        pool = [e["identity"] for e in endpoints if e["identity"] not in failed]
        size = layout_size(args.layout)
        rotation = 0

        churner = _Churner(self, [i for i in pool if i != "chair"], args.churn)

        def next_program() -> list[str | None]:
            nonlocal rotation
            rotation += 1
            # Not an endpoint that is leaving or joining again: the room refuses absent sources.
            present = [i for i in pool if i not in churner.busy] or pool
            filled = [present[(rotation + j) % len(present)] for j in range(min(size, len(present)))]
            return filled + [None] * (size - len(filled))

        await self.set_program(next_program())
        if args.live:
            await self._start_live()
        await asyncio.sleep(args.settle)

        # The measured window: program changes, churns and interval samples, each when it is due.
        live0 = await self._live() if args.live else {}
        stats0, cpu0, marks0 = await self.stats(), self._server_cpu(), await self._mark()
        t0 = time.monotonic()
        end = t0 + args.duration
        samples = [await self._sample(t0, 0)]
        probe = None
        if args.memory or args.tracemalloc:
            assert self.http is not None
            probe = memory.MemoryProbe(self.http, self.url, self.admin_key)
            await probe.point("start", time.monotonic() - t0)
        due = {"program": t0 + args.switch_every, "sample": t0 + args.interval}
        if probe is not None and args.duration > memory.EARLY_S + 5:
            due["memory"] = t0 + memory.EARLY_S
        if args.churn:
            due["churn"] = t0 + args.churn_every / 2  # mid-interval: the interval's sessions settle first
        while True:
            kind, at = min(due.items(), key=lambda item: item[1])
            if at >= end - 0.05:
                break
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            if kind == "program":
                due["program"] += args.switch_every
                # No change in the window's last seconds: its switches would be cut off by the drain.
                if time.monotonic() < end - min(args.switch_every, 3.0):
                    await self.set_program(next_program())
            elif kind == "churn":
                due["churn"] += args.churn_every
                await churner.start()
            elif kind == "memory":
                del due["memory"]
                assert probe is not None
                await probe.point("early", time.monotonic() - t0)
            else:
                due["sample"] += args.interval
                samples.append(await self._sample(t0, len(samples)))
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        cpu1, marks1 = self._server_cpu(), await self._mark()
        stats1 = await self.stats()
        live1 = await self._live() if args.live else {}
        window = time.monotonic() - t0
        rss = _peak_rss_mb(self.server_pid) if self.server_pid else None
        if probe is not None:
            await probe.point("end", time.monotonic() - t0, keep=False)
            await probe.compare("end", "early" if "early" in probe.points else "start")
        await churner.wait()

        # Drain: nobody sends, whatever is in flight arrives, then count delivery.
        await self.command_all({"cmd": "pause"}, "paused", 15)
        await asyncio.sleep(1.5)
        stats2 = await self.stats()
        # The last interval ends after the drain: nothing is in flight, its count is exact.
        samples.append(await self._sample(t0, len(samples)))
        reports = await self.command_all({"cmd": "report"}, "report", 30)
        results = [r for rep in reports for r in rep["endpoints"]]
        report = build_report(
            args=vars(args),
            endpoints=self.n,
            window=window,
            stats0=stats0,
            stats1=stats1,
            stats_final=stats2,
            cpu=(cpu0, cpu1),
            rss_mb=rss,
            results=results,
            failed=failed,
            worker_cpu=(marks0, marks1),
            program_changes=len(self.program_changes),
        )
        if args.live:
            report["live"] = _live_figures(live0, live1)
        # By sequence number, counted after the drain (soak.py): exact per interval.
        sent = soak.sent_by_stream([sample.sent for sample in samples])
        merged = soak.merge_intervals(
            await self.command_all({"cmd": "intervals", "sent": sent}, "intervals", 60)
        )
        report["intervals"] = soak.sequence_delivery([s.at_s for s in samples], merged)
        if args.details:
            report["intervals_by_subscriber"] = {str(k): v for k, v in sorted(merged.items())}
        report["churn"] = churner.figures()
        report["program_changes_failed"] = {
            "count": len(self.program_failures),
            "first": self.program_failures[:3],
        }
        report["server_process"] = {
            "window_start": soak.resources(samples[0].process),
            "window_end": soak.resources(samples[-1].process),
        }
        await self.command_all({"cmd": "leave"}, "left", 30)
        report["server_process"]["after_leaving"] = await self._settled_resources(samples[0].process)
        if probe is not None:
            collected = await probe.collect()
            await probe.point("left", time.monotonic() - t0, keep=False)
            probe.points["left"]["collect"] = collected
            await probe.compare("left", "early" if "early" in probe.points else "start")
            await probe.trim("left")
            report["memory"] = probe.figures()
        if args.render:
            report["render"] = await self._render()
        return report

    async def _sample(self, t0: float, tick: int) -> soak.Sample:
        """A tick of the interval delivery (the workers note each stream's highest sequence number)
        and the server process's resources."""
        at_s = time.monotonic() - t0  # when the workers are told: they mark as they read it
        await self.command_all({"cmd": "tick", "tick": tick}, "ticked", 15)
        data = await self.server_stats()
        return soak.Sample(
            at_s=at_s,
            process=data.get("process") or {},
            sent=soak.server_streams(data.get("media") or {}),
        )

    async def _settled_resources(self, during: dict[str, Any]) -> dict[str, Any]:
        """The server's resources once everyone has left: tasks and descriptors of the sessions go
        away within a few seconds (polled for up to 20 s, the last reading taken)."""
        figures: dict[str, Any] = {}
        for _ in range(40):
            figures = soak.resources((await self.server_stats()).get("process") or {})
            if (figures.get("tasks") or 0) <= 10:
                break
            await asyncio.sleep(0.5)
        figures["tasks_during"] = during.get("tasks")
        return figures

    async def _render(self) -> dict[str, Any]:
        """Everyone has left, so the recording stopped and its default render started: wait for it
        (bounded by the recording's length) and report it."""
        assert self.http is not None
        headers = {"Authorization": f"Bearer {self.admin_key}"}
        started = time.monotonic()
        deadline = started + 120 + 3 * self.args.duration
        recording: dict[str, Any] = {}
        while time.monotonic() < deadline:
            async with self.http.get(f"{self.url}/api/recordings", headers=headers) as response:
                listed = await response.json() if response.status == 200 else []
            mine = [r for r in listed if r.get("room") == self.args.room]
            if mine:
                rid = mine[-1]["id"]
                async with self.http.get(f"{self.url}/api/recordings/{rid}", headers=headers) as response:
                    recording = await response.json() if response.status == 200 else {}
                states = [j.get("state") for j in recording.get("renders") or []]
                if states and all(state in ("done", "failed") for state in states):
                    return soak.render_figures(recording, started, time.monotonic())
            await asyncio.sleep(2.0)
        return soak.render_figures(recording, started, None)

    async def _start_live(self) -> None:
        """start_broadcast as the chair would, then wait for the compositor's first figures."""
        assert self.http is not None
        headers = {"Authorization": f"Bearer {self.admin_key}"}
        url = f"{self.url}/api/rooms/{self.args.room}/commands"
        async with self.http.post(url, json={"type": "start_broadcast"}, headers=headers) as response:
            if response.status != 200:
                raise BenchError(f"start_broadcast: HTTP {response.status}: {await response.text()}")
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            if (await self._live()).get("wall_s", 0) > 5:
                return
            await asyncio.sleep(1)
        raise BenchError("the live-stream compositor did not report within 40 s")

    async def _live(self) -> dict[str, Any]:
        """The room's compositor figures from /api/stats (its CPU is its own process's)."""
        assert self.http is not None
        headers = {"Authorization": f"Bearer {self.admin_key}"}
        async with self.http.get(f"{self.url}/api/stats", headers=headers) as response:
            data = await response.json() if response.status == 200 else {}
        return dict((data.get("live") or {}).get(self.args.room) or {})

    def _server_cpu(self) -> float | None:
        return _process_cpu_seconds(self.server_pid) if self.server_pid else None

    async def _mark(self) -> float:
        marks = await self.command_all({"cmd": "mark"}, "mark", 10)
        return sum(m["cpu_s"] for m in marks)
