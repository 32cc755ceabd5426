"""Several nodes (issue 17): figures printed, not collected by pytest.

    python tests/bench_nodes.py failover [--kills 5] [--endpoints 4]
    python tests/bench_nodes.py spread [--rooms 10] [--per-room 8] [--duration 20] [--loaders 4]

Both start a redis-server of their own and `conference serve` processes with `--redis-url`, each
with `--node-id` and `--advertise-url`, media on.

failover: three nodes; one room of N aiortc venues (decoding what they receive) that entered at
different nodes. Each round kills the room's node (SIGKILL), the venues join again at the live
nodes in turn every 0.25 s (as web/client.js does after its node went away: a live node sends them
to wherever the room is placed once the lease ran out), and the time from the kill to the last
venue's first decoded frame on the new node is the round's failover time. The killed node is then
started again (same port) for the next round. Prints each round and the p95.

spread: two nodes; R rooms of P venues each (raw pre-encoded media, as `conference bench`'s load
processes; program single, so every venue receives one video and three audio slots); venue j of a
room enters at node j % 2. Loader processes hold the venues. Prints where each room was placed,
each node's endpoints and rooms (GET /api/nodes) and each node's CPU over the window (/proc), with
the packets each venue received.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from browser_util import ADMIN_KEY, SECRET, RunningServer, free_port, server_process  # noqa: E402

from conference.loadtest.endpoint import Endpoint, EndpointConfig, EndpointError  # noqa: E402
from signaling.tokens import mint_token  # noqa: E402

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@contextlib.asynccontextmanager
async def redis_server(directory: Path) -> Any:
    port = free_port()
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed"
    directory.mkdir(parents=True, exist_ok=True)
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory), "--save", ""]
    proc = await asyncio.create_subprocess_exec(*args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                break
            await asyncio.sleep(0.1)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        await proc.wait()


class Node:
    def __init__(self, base: Path, index: int, redis_url: str) -> None:
        self.index = index
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data = base / f"node-{index}"
        self.redis_url = redis_url
        self.server: RunningServer | None = None
        self._stack: contextlib.AsyncExitStack | None = None

    async def start(self) -> None:
        self._stack = contextlib.AsyncExitStack()
        args = ["--redis-url", self.redis_url, "--node-id", f"node-{self.index}", "--advertise-url", self.url]
        self.server = await self._stack.enter_async_context(
            server_process(self.data, media=True, extra_args=args, port=self.port)
        )

    def kill(self) -> None:
        assert self.server is not None
        self.server.process.send_signal(signal.SIGKILL)

    async def stop(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
            self._stack = None

    def cpu_s(self) -> float:
        assert self.server is not None
        with open(f"/proc/{self.server.process.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def call(url: str, method: str, path: str, body: Any = None) -> Any:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, f"{url}{path}", json=body, headers=ADMIN) as r,
    ):
        assert r.status == 200, (method, path, r.status, await r.text())
        return await r.json()


def venue(url: str, room: str, identity: str, index: int, palette: dict[str, int], **kw: Any) -> Endpoint:
    token = mint_token(SECRET, room, identity, identity, "venue", 3600)
    config = EndpointConfig(url=url, token=token, identity=identity, index=index, palette=palette, **kw)
    return Endpoint(config)


# --- failover ------------------------------------------------------------------------------------


async def rejoin(make: Any, urls: list[str], deadline: float) -> Endpoint:
    attempt = 0
    while True:
        endpoint = make(urls[attempt % len(urls)])
        try:
            await endpoint.join()
            return endpoint
        except (EndpointError, aiohttp.ClientError, OSError, TimeoutError):
            await endpoint.close(leave=False)
            if time.monotonic() > deadline:
                raise
            attempt += 1
            await asyncio.sleep(0.25)


async def failover(args: argparse.Namespace, base: Path) -> None:
    identities = [f"hall-{i}" for i in range(args.endpoints)]
    palette = {identity: i + 1 for i, identity in enumerate(identities)}
    layout = "grid-2x2" if args.endpoints <= 4 else "grid-3x3"
    program = {"layout": layout, "slots": identities[: 4 if layout == "grid-2x2" else 9]}
    async with redis_server(base / "redis") as redis_url:
        nodes = [Node(base, i, redis_url) for i in range(3)]
        await asyncio.gather(*(n.start() for n in nodes))
        by_url = {n.url: n for n in nodes}

        def maker(identity: str) -> Any:
            return lambda url: venue(url, "council", identity, palette[identity], palette)

        venues = [maker(identity)(nodes[i % 3].url) for i, identity in enumerate(identities)]
        for v in venues:
            await v.join()
        await call(nodes[0].url, "PUT", "/api/rooms/council/program", program)
        await asyncio.sleep(3)
        rounds: list[dict[str, Any]] = []
        try:
            for k in range(args.kills):
                room = await call(
                    nodes[0].url if nodes[0].server else nodes[1].url, "GET", "/api/rooms/council"
                )
                host_id = room["node"]
                host = nodes[int(host_id.split("-")[1])]
                live = [n.url for n in nodes if n is not host]
                killed_at_wall = time.time()
                killed_at = time.monotonic()
                host.kill()
                await host.server.process.wait()  # type: ignore[union-attr]
                await asyncio.gather(*(v.close(leave=False) for v in venues))
                deadline = killed_at + 60
                venues = list(
                    await asyncio.gather(
                        *(
                            rejoin(maker(i), live[j % 2 :] + live[: j % 2], deadline)
                            for j, i in enumerate(identities)
                        )
                    )
                )
                joined_s = time.monotonic() - killed_at
                await asyncio.wait_for(
                    asyncio.gather(*(v.first_frame_event.wait() for v in venues)),
                    max(1.0, deadline - time.monotonic()),
                )
                first_frames = [v.first_frame_at - killed_at_wall for v in venues]  # type: ignore[operator]
                new_room = await call(live[0], "GET", "/api/rooms/council")
                result = {
                    "round": k + 1,
                    "killed": host_id,
                    "new_node": new_room["node"],
                    "joined_s": round(joined_s, 2),
                    "media_s": round(max(first_frames), 2),
                    "program_kept": all(v.program["slots"] == program["slots"] for v in venues),
                    "places_kept": sorted(p["identity"] for p in new_room["participants"])
                    == sorted(identities),
                    "ended_on": sorted({by_url[v.node_url].index for v in venues}),
                }
                rounds.append(result)
                print(json.dumps(result), flush=True)
                await host.stop()
                await host.start()  # back in the pool for the next round
                await asyncio.sleep(2)
        finally:
            for v in venues:
                await v.close()
            for n in nodes:
                await n.stop()
    media = sorted(r["media_s"] for r in rounds)
    p95 = media[min(len(media) - 1, round(0.95 * (len(media) - 1)))]
    print(
        f"failover over {len(rounds)} kills: media back after {statistics.median(media):.2f} s median, "
        f"{p95:.2f} s p95, {max(media):.2f} s max "
        f"(joins done {statistics.median([r['joined_s'] for r in rounds]):.2f} s median)"
    )


# --- spread ------------------------------------------------------------------------------------


async def load_process(spec: dict[str, Any]) -> None:
    """One loader: join its venues, report, hold them until told, report the counters."""
    palette = spec["palette"]
    venues = [
        venue(
            item["url"],
            item["room"],
            item["identity"],
            palette[item["identity"]],
            palette,
            raw_media=True,
            decode="none",
            video_slots=1,
            join_timeout=90.0,
        )
        for item in spec["endpoints"]
    ]
    failures = 0
    for v in venues:
        try:
            await v.join()
        except Exception as exc:  # counted and reported: the figures say how many joined
            failures += 1
            print(json.dumps({"join_failed": v.identity, "error": str(exc)}), file=sys.stderr, flush=True)
    print(json.dumps({"joined": len(venues) - failures}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    report = [
        {
            "identity": v.identity,
            "node": v.node_url,
            "packets": sum(s.packets for s in v.video_slots + v.audio_slots),
        }
        for v in venues
    ]
    print(json.dumps({"report": report}), flush=True)
    for v in venues:
        await v.close()


async def spread(args: argparse.Namespace, base: Path) -> None:
    rooms = [f"room-{r}" for r in range(args.rooms)]
    async with redis_server(base / "redis") as redis_url:
        nodes = [Node(base, i, redis_url) for i in range(2)]
        await asyncio.gather(*(n.start() for n in nodes))
        items = []
        palette: dict[str, int] = {}
        for r, room in enumerate(rooms):
            for j in range(args.per_room):
                identity = f"r{r}-v{j}"
                palette[identity] = j + 1
                items.append({"room": room, "identity": identity, "url": nodes[j % 2].url})
        loaders = []
        try:
            for k in range(args.loaders):
                spec = {"endpoints": items[k :: args.loaders], "palette": palette}
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    __file__,
                    "_load",
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    limit=1 << 24,
                )
                assert proc.stdin is not None
                proc.stdin.write((json.dumps(spec) + "\n").encode())
                await proc.stdin.drain()
                loaders.append(proc)
            started = time.monotonic()
            joined = 0
            for proc in loaders:
                assert proc.stdout is not None
                joined += json.loads(await proc.stdout.readline())["joined"]
            print(f"{joined} of {len(items)} venues joined in {time.monotonic() - started:.1f} s", flush=True)
            for room in rooms:  # one program per room: every venue shows its room's first venue
                await call(
                    nodes[0].url,
                    "PUT",
                    f"/api/rooms/{room}/program",
                    {"layout": "single", "slots": [f"{room.replace('room-', 'r')}-v0"]},
                )
            await asyncio.sleep(args.settle)
            cpu0 = [n.cpu_s() for n in nodes]
            t0 = time.monotonic()
            await asyncio.sleep(args.duration)
            cpu1 = [n.cpu_s() for n in nodes]
            wall = time.monotonic() - t0
            listing = await call(nodes[0].url, "GET", "/api/nodes")
            # The records themselves: each room's lease and how much of it is left.
            r = aioredis.from_url(redis_url, decode_responses=True)
            leases = {room: await r.pttl(f"conference:placement:{room}") for room in rooms}
            await r.aclose()
            placed = {}
            for room in rooms:
                placed[room] = (await call(nodes[1].url, "GET", f"/api/rooms/{room}"))["node"]
            reports: list[dict[str, Any]] = []
            for proc in loaders:
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write(b"report\n")
                await proc.stdin.drain()
                reports += json.loads(await proc.stdout.readline())["report"]
            for proc in loaders:
                await proc.wait()
        finally:
            for proc in loaders:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            for n in nodes:
                await n.stop()
    by_node: dict[str, list[str]] = {}
    for room, node in placed.items():
        by_node.setdefault(node, []).append(room)
    print(f"placement: {json.dumps(by_node)}")
    print(f"leases left (ms): min {min(leases.values())}, max {max(leases.values())} (-2: no placement)")
    for n, (c0, c1) in enumerate(zip(cpu0, cpu1, strict=True)):
        info = next((x for x in listing["nodes"] if x["node"] == f"node-{n}"), {})
        print(
            f"node-{n}: {info.get('rooms')} rooms, {info.get('endpoints')} endpoints, "
            f"CPU {(c1 - c0) / wall:.3f} cores over {wall:.0f} s"
        )
    node_of_url = {n.url: f"node-{n.index}" for n in nodes}
    wrong = [
        r["identity"]
        for r in reports
        if node_of_url.get(r["node"]) != placed[f"room-{r['identity'].split('-')[0][1:]}"]
    ]
    packets = sorted(r["packets"] for r in reports)
    print(
        f"venues on their room's node: {len(reports) - len(wrong)} of {len(reports)}; "
        f"packets received per venue min {packets[0]}, median {statistics.median(packets):.0f} since joining"
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_load":
        spec = json.loads(sys.stdin.readline())
        asyncio.run(load_process(spec))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    f = sub.add_parser("failover")
    f.add_argument("--kills", type=int, default=5)
    f.add_argument("--endpoints", type=int, default=4)
    s = sub.add_parser("spread")
    s.add_argument("--rooms", type=int, default=10)
    s.add_argument("--per-room", type=int, default=8)
    s.add_argument("--duration", type=float, default=20.0)
    s.add_argument("--settle", type=float, default=5.0)
    s.add_argument("--loaders", type=int, default=4)
    parser.add_argument("--dir", help="keep the nodes' data and logs here (default: a temporary directory)")
    args = parser.parse_args()
    run = failover if args.mode == "failover" else spread
    if args.dir:
        asyncio.run(run(args, Path(args.dir)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-nodes-") as tmp:
        asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    main()
