"""Which node hosts a room (issue 17): a room's media lives on exactly one server process.

Every node announces itself in Redis: a hash ``<prefix>:node:<id>`` (its URL and load: endpoints,
rooms, CPU) that expires ``NODE_TTL_S`` after its last heartbeat (one every ``BEAT_S``). A room is
placed when it is first needed: ``<prefix>:placement:<room>`` holds the hosting node's id, set by
one Lua script (atomic, so two nodes placing at once agree) with a lease the host renews at each
heartbeat. A placement whose node stopped beating is taken over by the next node that needs it, so
a node that dies (SIGKILL) loses its rooms within ``NODE_TTL_S``.

The policy (which node) is pure code (``choose_node``); ``LocalPlacement`` is the single-node
store's: every room on this process, no Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import redis
import redis.asyncio as aioredis

from .redis_subscription import UNREACHABLE
from .store import _reachable as reachable

log = logging.getLogger(__name__)

BEAT_S = 1.0
NODE_TTL_S = 3.0  # three missed beats: a loaded machine's late beat is not a death
# A room nobody is connected to on its node stays placed this long (a reconnecting venue comes back
# to the same node), then its lease is given up.
IDLE_RELEASE_S = 30.0
# The heartbeat runs in a thread (a busy loop is not a dead node); a loop silent this long is.
LOOP_STALL_S = 10.0
# A draining node gives a room up this soon after its last connection here left (the meeting
# ended): the next join places it on a node that takes rooms. Not at once: a join just placed here
# registers its connection a moment after the placement.
DRAIN_RELEASE_S = 2.0


@dataclass(slots=True)
class Load:
    endpoints: int
    rooms: int
    cpu: float = 0.0  # unused here: the placement measures its own process's CPU
    busy: tuple[str, ...] = ()  # rooms with connections on this node now (their leases are kept)


@dataclass(slots=True)
class NodeInfo:
    node_id: str
    url: str
    endpoints: int = 0
    rooms: int = 0
    cpu: float = 0.0
    draining: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node_id,
            "url": self.url,
            "endpoints": self.endpoints,
            "rooms": self.rooms,
            "cpu": round(self.cpu, 3),
            "draining": self.draining,
        }


@dataclass(frozen=True, slots=True)
class Placed:
    node_id: str
    url: str
    here: bool  # this node hosts the room
    previous: str | None = None  # a node that held the room before and stopped beating


def choose_node(nodes: list[NodeInfo], prefer: str | None = None) -> NodeInfo | None:
    """The least loaded live node that takes new rooms: fewest endpoints, then fewest rooms, then
    least CPU in half cores (a room's endpoints are its cost; an empty room costs nearly nothing
    until they come). On a tie ``prefer`` (the node the join reached: no redirect), then the id."""
    candidates = [n for n in nodes if not n.draining]
    if not candidates:
        return None
    # Half cores: the figure of one second is noisy, only a clear difference counts.
    return min(
        candidates, key=lambda n: (n.endpoints, n.rooms, int(n.cpu / 0.5), n.node_id != prefer, n.node_id)
    )


def default_node_id() -> str:
    """The host name and a short random suffix: several processes on one machine stay apart."""
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:4]}"


class Placement(Protocol):
    node_id: str
    url: str
    multi_node: bool

    async def place(self, room: str) -> Placed:
        """The node hosting ``room``, placing it (least loaded) when it is on no live node."""
        ...

    async def host_of(self, room: str) -> NodeInfo | None:
        """The live node hosting ``room``, or None when it is placed nowhere now."""
        ...

    async def nodes(self) -> list[NodeInfo]: ...

    def keep(self, room: str) -> None:
        """``room`` has connections here: keep its lease."""
        ...

    draining: bool

    async def set_draining(self, draining: bool) -> None:
        """Stop taking new rooms (or take them again); rooms here are given up as they end."""
        ...

    async def start(self, load: Callable[[], Load], lost: Callable[[str, NodeInfo | None], Any]) -> None: ...

    async def close(self) -> None: ...


class LocalPlacement:
    """One process (memory or SQLite store): every room lives here."""

    multi_node = False
    draining = False

    def __init__(self, node_id: str, url: str) -> None:
        self.node_id = node_id
        self.url = url
        self._load: Callable[[], Load] | None = None

    async def set_draining(self, draining: bool) -> None:
        raise ValueError("one node without Redis: there is no other node to hand rooms to")

    async def place(self, room: str) -> Placed:
        return Placed(self.node_id, self.url, True)

    async def host_of(self, room: str) -> NodeInfo | None:
        return NodeInfo(self.node_id, self.url)

    async def nodes(self) -> list[NodeInfo]:
        load = self._load() if self._load is not None else Load(0, 0, 0.0)
        return [NodeInfo(self.node_id, self.url, load.endpoints, load.rooms, load.cpu)]

    def keep(self, room: str) -> None:
        pass

    async def start(self, load: Callable[[], Load], lost: Callable[[str, NodeInfo | None], Any]) -> None:
        self._load = load

    async def close(self) -> None:
        pass


# Place a room: keep the current holder while its node beats, else take it for ARGV[1].
# KEYS[1] placement key, KEYS[2] the holder's node key prefix ("<prefix>:node:")
# ARGV[1] candidate node id, ARGV[2] lease ms, ARGV[3] room
_PLACE = """
local current = redis.call('GET', KEYS[1])
if current and redis.call('EXISTS', KEYS[2] .. current) == 1 then
  return {current, ''}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[2] .. ARGV[1] .. ':rooms', ARGV[3])
if redis.call('EXISTS', KEYS[2] .. ARGV[1]) == 1 then
  redis.call('HINCRBY', KEYS[2] .. ARGV[1], 'rooms', 1)
end
return {ARGV[1], current or ''}
"""

# Renew this node's leases; answer the rooms it no longer holds. KEYS[1] the node's room set,
# KEYS[2] placement key prefix; ARGV[1] node id, ARGV[2] lease ms, ARGV[3..] rooms to give up.
_RENEW = """
local lost = {}
local release = {}
for i = 3, #ARGV do release[ARGV[i]] = true end
for _, room in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = KEYS[2] .. room
  local holder = redis.call('GET', key)
  if not holder and not release[room] then
    -- lapsed while Redis was away (or this node's beats were late) and nobody took it: still here
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
  elseif holder ~= ARGV[1] then
    redis.call('SREM', KEYS[1], room)
    table.insert(lost, room)
  elseif release[room] then
    redis.call('DEL', key)
    redis.call('SREM', KEYS[1], room)
  else
    redis.call('PEXPIRE', key, ARGV[2])
  end
end
return {redis.call('SMEMBERS', KEYS[1]), lost}
"""


class RedisPlacement:
    """Nodes and room placements in Redis (the records are described in the module docstring)."""

    multi_node = True

    def __init__(self, redis_url: str, node_id: str, url: str, *, prefix: str = "conference") -> None:
        self.node_id = node_id
        self.url = url
        self.draining = False
        self._redis = aioredis.from_url(
            redis_url, decode_responses=True, socket_connect_timeout=1.0, socket_timeout=2.0
        )
        self._node_prefix = f"{prefix}:node:"
        self._placement_prefix = f"{prefix}:placement:"
        self._nodes_key = f"{prefix}:nodes"
        self._place = self._redis.register_script(_PLACE)
        self._renew = self._redis.register_script(_RENEW)
        # The heartbeat thread's own connection (redis-py's blocking client): see _run.
        self._sync = redis.Redis.from_url(
            redis_url, decode_responses=True, socket_connect_timeout=1.0, socket_timeout=2.0
        )
        self._sync_renew = self._sync.register_script(_RENEW)
        self._lock = threading.Lock()  # _active, _snapshot and _loop_seen: the loop's and the thread's
        self._active: dict[str, float] = {}  # room -> when it last had connections here
        self._snapshot = Load(0, 0)
        self._loop_seen = time.monotonic()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._handovers: set[asyncio.Task[None]] = set()
        self._cpu_mark = (time.monotonic(), time.process_time())
        self._load: Callable[[], Load] = lambda: Load(0, 0, 0.0)
        self._lost: Callable[[str, NodeInfo | None], Any] = lambda room, node: None
        self.last_beat_at = 0.0

    def _lease_ms(self) -> int:
        return int(NODE_TTL_S * 1000)

    @reachable
    async def place(self, room: str) -> Placed:
        current = await self._redis.get(self._placement_prefix + room)
        if current is not None:
            info = await self._node(current)
            if info is not None:
                if current == self.node_id:
                    self.keep(room)
                return Placed(info.node_id, info.url, current == self.node_id)
        chosen = choose_node(await self.nodes(), prefer=self.node_id) or NodeInfo(self.node_id, self.url)
        candidate = chosen.node_id
        for _ in range(2):
            holder, previous = await self._place(
                keys=[self._placement_prefix + room, self._node_prefix],
                args=[candidate, self._lease_ms(), room],
            )
            previous = None if previous in ("", self.node_id) else previous
            if holder == self.node_id:
                self.keep(room)
                return Placed(self.node_id, self.url, True, previous)
            info = await self._node(holder)
            if info is not None:
                log.info("room %s placed on node %s", room, holder)
                return Placed(info.node_id, info.url, False, previous)
            candidate = self.node_id  # the chosen node stopped beating just now: take the room here
        raise RuntimeError(f"room {room} could not be placed")

    @reachable
    async def host_of(self, room: str) -> NodeInfo | None:
        current = await self._redis.get(self._placement_prefix + room)
        return None if current is None else await self._node(current)

    async def _node(self, node_id: str) -> NodeInfo | None:
        raw = await self._redis.hgetall(self._node_prefix + node_id)
        return _node_info(node_id, raw) if raw.get("url") else None

    @reachable
    async def nodes(self) -> list[NodeInfo]:
        ids = sorted(await self._redis.smembers(self._nodes_key))
        out: list[NodeInfo] = []
        gone: list[str] = []
        async with self._redis.pipeline(transaction=False) as pipe:
            for node_id in ids:
                pipe.hgetall(self._node_prefix + node_id)
            records = await pipe.execute()
        for node_id, raw in zip(ids, records, strict=True):
            if raw.get("url"):
                out.append(_node_info(node_id, raw))
            else:
                gone.append(node_id)
        if gone:
            await self._redis.srem(self._nodes_key, *gone)
        return out

    def keep(self, room: str) -> None:
        with self._lock:
            self._active[room] = time.monotonic()

    @reachable
    async def set_draining(self, draining: bool) -> None:
        """Announced at once (not at the next beat), so a join arriving now is placed elsewhere."""
        self.draining = draining
        key = self._node_prefix + self.node_id
        if await self._redis.exists(key):
            await self._redis.hset(key, "draining", int(draining))
        log.warning(
            "node %s %s", self.node_id, "draining: no new rooms" if draining else "takes new rooms again"
        )

    async def start(self, load: Callable[[], Load], lost: Callable[[str, NodeInfo | None], Any]) -> None:
        self._load, self._lost = load, lost
        self._event_loop = asyncio.get_running_loop()
        self._cpu_mark = (time.monotonic(), time.process_time())  # not the start-up's imports
        self._refresh()
        await asyncio.to_thread(self._beat)  # announced before the first join can arrive
        self._thread = threading.Thread(target=self._run, name=f"node-heartbeat-{self.node_id}", daemon=True)
        self._thread.start()
        self._ticker = self._event_loop.create_task(self._tick())

    async def _tick(self) -> None:
        """On the event loop: what the heartbeat thread announces (the load), and that the loop
        still answers (a loop that stopped answering lets its rooms go)."""
        while True:
            self._refresh()
            await asyncio.sleep(BEAT_S / 2)

    def _refresh(self) -> None:
        load = self._load()
        now = time.monotonic()
        with self._lock:
            self._snapshot = load
            self._loop_seen = now
            for room in load.busy:
                self._active[room] = now

    def _run(self) -> None:
        """The heartbeat, in a thread of its own: a busy event loop (joins on a loaded machine)
        must not make a live node look dead; a loop that answers nothing for LOOP_STALL_S does."""
        while not self._stopping.wait(BEAT_S):
            if time.monotonic() - self._loop_seen > LOOP_STALL_S:
                log.error("event loop silent for %.0f s: no heartbeat", time.monotonic() - self._loop_seen)
                continue
            try:
                self._beat()
            except UNREACHABLE as exc:  # Redis away: the rooms go on here; leases resume when back
                log.warning("node heartbeat failed: %s", exc)
            except Exception:
                log.exception("node heartbeat failed")

    def _cpu(self) -> float:
        wall, cpu = time.monotonic(), time.process_time()
        (wall0, cpu0), self._cpu_mark = self._cpu_mark, (wall, cpu)
        return (cpu - cpu0) / (wall - wall0) if wall > wall0 else 0.0

    def _beat(self) -> None:
        """One heartbeat (in the heartbeat thread, with its own Redis connection)."""
        now = time.monotonic()
        # Draining: a room whose meeting ended here (nobody connected) is given up within seconds.
        release_after = DRAIN_RELEASE_S if self.draining else IDLE_RELEASE_S
        with self._lock:
            idle = [room for room, at in self._active.items() if now - at > release_after]
            load = self._snapshot
        rooms_key = f"{self._node_prefix}{self.node_id}:rooms"
        held, lost = self._sync_renew(
            keys=[rooms_key, self._placement_prefix], args=[self.node_id, self._lease_ms(), *idle]
        )
        with self._lock:
            for room in idle:
                self._active.pop(room, None)
            for room in held:  # placed here by another node: idle from now until its first join
                self._active.setdefault(room, now)
            for room in lost:
                self._active.pop(room, None)
        key = self._node_prefix + self.node_id
        with self._sync.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={
                    "url": self.url,
                    "endpoints": load.endpoints,
                    "rooms": len(held),
                    "cpu": round(self._cpu(), 3),
                    "draining": int(self.draining),
                    "pid": os.getpid(),
                },
            )
            pipe.pexpire(key, self._lease_ms())
            pipe.sadd(self._nodes_key, self.node_id)
            pipe.execute()
        gap = time.time() - self.last_beat_at if self.last_beat_at else 0.0
        if gap > 2 * BEAT_S:
            log.warning("node heartbeat %.1f s after the last one (expiry %.0f s)", gap, NODE_TTL_S)
        self.last_beat_at = time.time()
        if lost and self._event_loop is not None:
            self._event_loop.call_soon_threadsafe(self._hand_over, list(lost))

    def _hand_over(self, rooms: list[str]) -> None:
        task = asyncio.get_running_loop().create_task(self._lost_rooms(rooms))
        self._handovers.add(task)
        task.add_done_callback(self._handovers.discard)

    async def _lost_rooms(self, rooms: list[str]) -> None:
        """Another node took these rooms (this one's beats came too late): hand them over."""
        for room in rooms:
            try:
                host = await self.host_of(room)
                log.warning("room %s is no longer placed here (now on %s)", room, host and host.node_id)
                result = self._lost(room, host)
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("handing room %s over failed", room)

    async def close(self) -> None:
        self._stopping.set()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 2 * BEAT_S + 3)
        # A node that stops cleanly gives its rooms up at once: the next join places them elsewhere.
        with self._lock:
            active = list(self._active)
        with contextlib.suppress(*UNREACHABLE):
            await self._renew(
                keys=[f"{self._node_prefix}{self.node_id}:rooms", self._placement_prefix],
                args=[self.node_id, self._lease_ms(), *active],
            )
            await self._redis.delete(self._node_prefix + self.node_id)
            await self._redis.srem(self._nodes_key, self.node_id)
        await self._redis.aclose()
        self._sync.close()


def _node_info(node_id: str, raw: dict[str, str]) -> NodeInfo:
    return NodeInfo(
        node_id=node_id,
        url=raw["url"],
        endpoints=int(raw.get("endpoints") or 0),
        rooms=int(raw.get("rooms") or 0),
        cpu=float(raw.get("cpu") or 0.0),
        draining=raw.get("draining") == "1",
    )


def create_placement(settings: Any, prefix: str = "conference") -> Placement:
    """Redis placement when rooms are shared (``redis_url``), else every room on this process."""
    url = (settings.advertise_url or settings.public_url).rstrip("/")
    if settings.redis_url:
        return RedisPlacement(settings.redis_url, settings.node_id or default_node_id(), url, prefix=prefix)
    return LocalPlacement(settings.node_id or socket.gethostname(), url)
