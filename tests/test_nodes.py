"""Rooms placed on nodes (issue 17): three ``conference serve`` processes and a redis-server of the
test's own. Venues of one room that reach different nodes are sent to the room's node (``moved``)
and see each other there (frames decoded from the other venue); GET /api/rooms/{room} names that
node on every node; a program change sent over REST to a node that does not host the room reaches
them all; the room's node killed (SIGKILL) mid-recording: the venues are back on another node with
their program within the failover time, and the recording goes on there as the second part of the
same recording; its render shows part 1, a slate for the seconds lost, then part 2. A drained
node takes no new room and gives its rooms up when their meetings end; ``--workers 2`` behind one
port are two nodes that meet any join on the room's worker."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from browser_util import ADMIN_KEY, SECRET, RunningServer, free_port, server_process
from test_redis_restart import redis_server

from conference.loadtest.endpoint import Endpoint, EndpointConfig, EndpointError
from conference.placement import NODE_TTL_S, LocalPlacement, NodeInfo, choose_node
from recorder.archive import Recording
from recorder.compose import SLATE
from recorder.render import RenderOptions, render
from signaling.tokens import mint_token

pytestmark = pytest.mark.media
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
PALETTE = {"hall-a": 1, "hall-b": 2}
# Failover budget: the lease (NODE_TTL_S), a join and ICE on a busy 2-core machine.
FAILOVER_BUDGET_S = NODE_TTL_S + 12


def test_the_least_loaded_node_takes_a_new_room() -> None:
    nodes = [
        NodeInfo("a", "http://a", endpoints=8, rooms=1),
        NodeInfo("b", "http://b", endpoints=2, rooms=3),
        NodeInfo("c", "http://c", endpoints=2, rooms=1, cpu=0.9),
        NodeInfo("d", "http://d", endpoints=0, rooms=0, draining=True),
    ]
    chosen = choose_node(nodes)
    assert chosen is not None and chosen.node_id == "c"  # fewest endpoints, then rooms; not draining
    assert choose_node([n for n in nodes if n.draining]) is None


async def test_one_process_places_every_room_on_itself() -> None:
    placement = LocalPlacement("here", "http://127.0.0.1:1")
    placed = await placement.place("council")
    assert placed.here and placed.node_id == "here"
    host = await placement.host_of("anything")
    assert host is not None and host.node_id == "here"


async def call(url: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, f"{url}{path}", json=body, headers=ADMIN) as r,
    ):
        return r.status, await r.json() if r.content_type == "application/json" else await r.text()


@contextlib.asynccontextmanager
async def cluster(tmp_path: Path, count: int = 3) -> AsyncIterator[list[RunningServer]]:
    """``count`` nodes, each with a data directory of its own whose ``recordings`` is one shared
    directory (``tmp_path/shared/recordings``), as docs/deploy.md describes: every part of a recording
    is where the render looks. The test renders itself (small and quick): no render on stop."""
    port = free_port()
    redis_url = f"redis://127.0.0.1:{port}/0"
    shared = tmp_path / "shared" / "recordings"
    shared.mkdir(parents=True)
    config = tmp_path / "nodes.toml"
    config.write_text("recording_auto_render = false\n")
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(redis_server(tmp_path / "redis", port))
        nodes = []
        for i in range(count):
            node_port = free_port()
            (tmp_path / f"node-{i}").mkdir()
            (tmp_path / f"node-{i}" / "recordings").symlink_to(shared, target_is_directory=True)
            args = ["--redis-url", redis_url, "--node-id", f"node-{i}", "--config", str(config)]
            args += ["--advertise-url", f"http://127.0.0.1:{node_port}"]
            nodes.append(
                await stack.enter_async_context(
                    server_process(tmp_path / f"node-{i}", media=True, extra_args=args, port=node_port)
                )
            )
        yield nodes


def venue(url: str, identity: str, room: str = "council") -> Endpoint:
    token = mint_token(SECRET, room, identity, identity, "venue", 3600)
    return Endpoint(
        EndpointConfig(url=url, token=token, identity=identity, index=PALETTE[identity], palette=PALETTE)
    )


def sees(endpoint: Endpoint, other: str) -> bool:
    """A frame decoded from ``other`` arrived in one of the endpoint's program slots."""
    return any(s.frames_decoded > 0 and s.last_seen_index == PALETTE[other] for s in endpoint.video_slots)


async def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def rejoin(identity: str, urls: list[str], deadline: float) -> Endpoint:
    """What a page does after its node went away: join again at the nodes it knows, in turn, until
    one takes it (a live node sends it on to wherever the room is placed now)."""
    attempt = 0
    while True:
        endpoint = venue(urls[attempt % len(urls)], identity)
        try:
            await endpoint.join()
            return endpoint
        except (EndpointError, aiohttp.ClientError, OSError, TimeoutError):
            await endpoint.close(leave=False)
            assert time.monotonic() < deadline, f"{identity} found no node to join"
            attempt += 1
            await asyncio.sleep(0.25)


async def test_venues_on_different_nodes_meet_on_the_rooms_node_and_survive_its_death(
    tmp_path: Path,
) -> None:
    program = {"layout": "side-by-side", "slots": ["hall-a", "hall-b"]}
    async with cluster(tmp_path) as nodes:
        urls = [n.url for n in nodes]
        a = venue(urls[0], "hall-a")
        b = venue(urls[1], "hall-b")
        venues = [a, b]
        try:
            await a.join()
            await b.join()
            # Both ended on one node, the room's, whatever node they reached first.
            assert a.node_url == b.node_url, (a.node_url, b.node_url)
            host_url = a.node_url
            statuses = [await call(u, "GET", "/api/rooms/council") for u in urls]
            assert {s for s, _ in statuses} == {200}
            named = {body["node"] for _, body in statuses}
            assert len(named) == 1 and None not in named, named
            host = named.pop()
            assert urls.index(host_url) == int(host.split("-")[1])
            status, listing = await call(urls[0], "GET", "/api/nodes")
            assert status == 200 and {n["node"] for n in listing["nodes"]} == {f"node-{i}" for i in range(3)}

            # The chair's program change sent to a node that does not host the room reaches both.
            other = next(u for u in urls if u != host_url)
            status, body = await call(other, "PUT", "/api/rooms/council/program", program)
            assert status == 200, body
            await wait_until(
                lambda: all(v.program["slots"] == program["slots"] for v in venues), 10, "program"
            )
            await wait_until(lambda: sees(a, "hall-b") and sees(b, "hall-a"), 20, "each other's frames")

            # A recording started through another node runs on the room's node.
            status, body = await call(
                other, "POST", "/api/rooms/council/commands", {"type": "start_recording"}
            )
            assert status == 200, body
            first_recording = body["recording_id"]
            await asyncio.sleep(2)

            # The room's node dies.
            dead = nodes[urls.index(host_url)]
            dead.process.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            await dead.process.wait()
            live = [u for u in urls if u != host_url]
            for v in venues:
                await v.close(leave=False)
            deadline = killed_at + FAILOVER_BUDGET_S
            venues = list(await asyncio.gather(*(rejoin(i, live, deadline) for i in ("hall-a", "hall-b"))))
            a, b = venues
            assert a.node_url == b.node_url and a.node_url in live
            # Back with their program, seeing each other again.
            assert a.program["slots"] == program["slots"] and b.program["slots"] == program["slots"]
            await wait_until(
                lambda: sees(a, "hall-b") and sees(b, "hall-a"),
                max(0.5, deadline - time.monotonic()),
                "each other's frames after the failover",
            )
            failover_s = time.monotonic() - killed_at
            print(f"failover: {failover_s:.2f} s from SIGKILL to frames decoded on the new node")
            status, room = await call(live[0], "GET", "/api/rooms/council")
            assert status == 200 and room["node"] != host, room
            assert {p["identity"] for p in room["participants"] if p["connected"]} == {"hall-a", "hall-b"}
            # The recording goes on: the same recording, its second part, written on the new node.
            assert room["recording"]["active"], room["recording"]
            assert room["recording"]["recording_id"] == first_recording
            assert room["recording"]["part"] == 2
            await asyncio.sleep(2)
            status, body = await call(
                live[0], "POST", "/api/rooms/council/commands", {"type": "stop_recording"}
            )
            assert status == 200, body
        finally:
            for v in venues:
                await v.close()
    # The render spans the gap: part 1 (the dead node's), a slate for the seconds lost, part 2.
    recording = Recording.open(tmp_path / "shared", first_recording)
    assert recording.complete and len(recording.parts) == 1
    ((lost_from, lost_until),) = recording.gaps
    lost_s = lost_until - lost_from
    print(f"recording: {lost_s:.2f} s lost between its parts (failover {failover_s:.2f} s)")
    # At most the failover, and the last flush interval (0.25 s) the dead node had not written.
    assert 0 < lost_s < failover_s + 0.3, (lost_s, failover_s)
    assert {t.identity for t in recording.tracks if t.media == "video"} == {"hall-a", "hall-b"}
    assert len(recording.tracks) >= 8  # audio and video of both venues in each part
    out = tmp_path / "render.mp4"
    options = RenderOptions(width=320, height=180, fps=10, vtt=False)
    result = await asyncio.to_thread(render, recording, out, options)
    assert abs(result.duration - recording.duration) < 0.2
    t0 = recording.started_at
    slate_at = (lost_from + lost_until) / 2 - t0
    before = lost_from - t0 - 0.5
    after = recording.duration - 0.5
    seen = _frame_colours(out, [before, slate_at, after])
    assert _is_slate(seen[0]) is False and _is_slate(seen[1]) is True and _is_slate(seen[2]) is False, seen


def _frame_colours(path: Path, times: list[float]) -> list[tuple[float, float, float]]:
    """Mean Y, U, V of the rendered frame nearest each time."""
    import av
    import numpy as np

    found: list[tuple[float, float, float]] = []
    with av.open(str(path)) as container:
        frames = [(float(f.time), f.to_ndarray(format="yuv420p")) for f in container.decode(video=0)]
    for t in times:
        _, planes = min(frames, key=lambda f: abs(f[0] - t))
        h = planes.shape[0] * 2 // 3
        y, chroma = planes[:h], planes[h:]
        u, v = chroma[: chroma.shape[0] // 2], chroma[chroma.shape[0] // 2 :]
        found.append((float(np.mean(y)), float(np.mean(u)), float(np.mean(v))))
    return found


def _is_slate(colour: tuple[float, float, float]) -> bool:
    y, u, v = colour
    return abs(u - SLATE[1]) < 6 and abs(v - SLATE[2]) < 6 and abs(y - SLATE[0]) < 25


def _free_ports(count: int) -> int:
    """A port with the ``count - 1`` ports after it free too (a worker's own ports follow it)."""
    import socket

    for _ in range(50):
        base = free_port()
        try:
            with contextlib.ExitStack() as stack:
                for port in range(base, base + count):
                    s = stack.enter_context(socket.socket())
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no run of free ports")


async def test_workers_behind_one_port_are_nodes_that_carry_a_join_to_the_rooms_worker_and_drain(
    tmp_path: Path,
) -> None:
    """``conference serve --workers 2``: the kernel spreads connections to the one port over both
    workers (SO_REUSEPORT), each a node of the Redis placement; venues joining through the port, or
    at the other worker's own port, all meet on the room's worker and see each other. The room's
    worker drained: a new room goes to the other, the meeting in progress stays, and once it ended
    its room is given up and its next meeting placed on the other worker."""
    redis_port = free_port()
    port = _free_ports(3)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(redis_server(tmp_path / "redis", redis_port))
        args = ["--workers", "2", "--redis-url", f"redis://127.0.0.1:{redis_port}/0", "--node-id", "box"]
        # Two workers importing at once on a busy 2-core machine: more than the usual 20 s.
        started = server_process(tmp_path / "box", media=True, extra_args=args, port=port, start_timeout=60)
        server = await stack.enter_async_context(started)
        own = {f"box-w{i}": f"http://127.0.0.1:{port + 1 + i}" for i in range(2)}
        answered: set[str] = set()
        deadline = time.monotonic() + 30
        while answered != set(own):  # a new connection each time: the kernel picks a worker
            assert time.monotonic() < deadline, answered
            with contextlib.suppress(aiohttp.ClientError):
                status, body = await call(server.url, "GET", "/api/nodes")
                if status == 200 and {n["node"] for n in body["nodes"]} == set(own):
                    answered.add(body["node"])
                    assert {n["node"]: n["url"] for n in body["nodes"]} == own
            await asyncio.sleep(0.1)
        a = venue(server.url, "hall-a")
        venues = [a]
        try:
            joined = await a.join()
            host = joined["node"]
            b = venue(next(url for node, url in own.items() if node != host), "hall-b")  # sent on
            venues.append(b)
            assert (await b.join())["node"] == host and b.node_url == own[host]
            program = {"layout": "side-by-side", "slots": ["hall-a", "hall-b"]}
            status, body = await call(server.url, "PUT", "/api/rooms/council/program", program)
            assert status == 200, body
            await wait_until(lambda: sees(a, "hall-b") and sees(b, "hall-a"), 20, "each other's frames")
            _, room = await call(server.url, "GET", "/api/rooms/council")
            assert room["node"] == host

            # Draining the room's worker (sent through the port: carried to the worker named).
            other = next(node for node in own if node != host)
            status, body = await call(server.url, "POST", f"/api/nodes/{host}/drain")
            assert status == 200 and body["draining"] is True and body["node"] == host, body
            status, body = await call(server.url, "POST", "/api/nodes/nobody/drain")
            assert status == 404, body
            status, text = await call(own[host], "GET", "/metrics")
            assert status == 200 and "conference_node_draining 1.0" in text
            # A new room is placed elsewhere, even by a join that reached the draining worker ...
            c = venue(own[host], "hall-a", room="committee")
            venues.append(c)
            await c.join()
            assert c.node_url == own[other]
            # ... while the meeting in progress goes on there: a venue joining it is sent there.
            await b.close()
            b = venue(own[other], "hall-b")
            venues.append(b)
            assert (await b.join())["node"] == host
            # The meeting ends: the draining worker gives the room up; the next meeting goes elsewhere.
            await a.close()
            await b.close()
            ended_at = time.monotonic()
            while True:
                status, listing = await call(own[other], "GET", "/api/nodes")
                rooms = {n["node"]: n["rooms"] for n in listing["nodes"]}[host]
                _, room = await call(own[other], "GET", "/api/rooms/council")
                if rooms == 0 and room["node"] is None:
                    break
                assert time.monotonic() < ended_at + 10, (rooms, room["node"])
                await asyncio.sleep(0.1)
            print(f"drain: room given up {time.monotonic() - ended_at:.2f} s after its meeting ended")
            a = venue(own[host], "hall-a")
            venues.append(a)
            assert (await a.join())["node"] == other
            status, body = await call(server.url, "DELETE", f"/api/nodes/{host}/drain")
            assert status == 200 and body["draining"] is False, body
        finally:
            for v in venues:
                await v.close()
        # SIGTERM to the supervisor stops both workers.
        server.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(server.process.wait(), 30) == 0
        for url in own.values():
            with pytest.raises(aiohttp.ClientError):
                await call(url, "GET", "/healthz")


def test_workers_need_a_shared_room_store(tmp_path: Path) -> None:
    """What ``serve --workers`` refuses before it starts anything (it prints the message, exit 2)."""
    from conference.config import ConfigError, Settings
    from signaling import workers

    with pytest.raises(ConfigError, match="--workers needs --redis-url"):
        workers.check(Settings(data_dir=tmp_path), 2)
    shared = Settings(data_dir=tmp_path, redis_url="redis://127.0.0.1:1/0", port=8080)
    shared.rtc_port_min, shared.rtc_port_max = 40000, 40099
    workers.check(shared, 2)
    args = workers.worker_arguments(shared, 2, 1, "box")
    assert args[args.index("--rtc-ports") + 1] == "40050-40099"  # its half of the media ports
    assert args[args.index("--advertise-url") + 1] == "http://127.0.0.1:8082"
