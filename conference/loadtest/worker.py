"""A load process of ``conference bench`` (``python -m conference.loadtest.worker``): runs its share
of the test endpoints and speaks JSON lines with the parent: the first line on stdin is its spec,
then commands on stdin, answers on stdout."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from conference.loadtest.soak import SequenceTally, session_intervals


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def _read_command() -> dict[str, Any]:
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if not line:
        return {"cmd": "stop"}  # the parent went away
    return dict(json.loads(line))


async def _worker(spec: dict[str, Any]) -> None:
    from conference.loadtest.endpoint import Endpoint, EndpointConfig
    from conference.loadtest.testmedia import load_clip, load_layers

    cache_dir = Path(spec["cache_dir"]) if spec.get("cache_dir") else None
    endpoints: list[Endpoint] = []
    configs: dict[str, EndpointConfig] = {}
    # How often each endpoint has rejoined (--churn): counters restart with every new session.
    generation: dict[str, int] = {}
    decode_modes: dict[str, str] = {}
    for item in spec["endpoints"]:
        load_clip(item["index"], cache_dir=cache_dir)  # encode now (or read the cache), not at join
        if spec.get("simulcast", True):
            load_layers(item["index"], cache_dir=cache_dir)
        config = EndpointConfig(
            url=spec["url"],
            token=item["token"],
            identity=item["identity"],
            index=item["index"],
            device=item["device"],
            video_slots=item["video_slots"],
            speaking=item["speaking"],
            decode=item["decode"],
            raw_media=spec.get("raw_media", True),
            simulcast=spec.get("simulcast", True),
            cache_dir=cache_dir,
            palette=spec["palette"],
            join_timeout=spec["join_timeout"],
        )
        endpoints.append(Endpoint(config))
        configs[item["identity"]] = config
        generation[item["identity"]] = 0
        decode_modes[item["identity"]] = item["decode"]
    _emit({"event": "ready"})
    chair = next((e for e in endpoints if e.identity == "chair"), None)
    failed: dict[str, str] = {}
    started: set[str] = set()

    async def join(endpoint: Endpoint) -> None:
        started.add(endpoint.identity)
        try:
            await endpoint.join()
        except Exception as exc:
            failed[endpoint.identity] = f"{type(exc).__name__}: {exc}"

    background: set[asyncio.Task[None]] = set()
    # Interval delivery by sequence number (conference/loadtest/soak.py): the parent's ticks, and the
    # streams of sessions that ended (their numbers count in the intervals they were in).
    last_tick = -1
    retired: list[tuple[str, dict[int, SequenceTally]]] = []
    first_join: dict[str, float | None] = {}  # of endpoints that left and joined again

    async def churn(identities: list[str]) -> None:
        """Leave and join again with new sessions, as venues whose network dropped would."""
        started_at = time.monotonic()
        leaving = [e for e in endpoints if e.identity in set(identities)]
        for endpoint in leaving:
            first_join.setdefault(endpoint.identity, endpoint.join_time)
            await endpoint.close(leave=True)
            for tally in endpoint.tallies.values():
                tally.close(last_tick + 1)
            retired.append((endpoint.identity, endpoint.tallies))
            fresh = Endpoint(configs[endpoint.identity])
            endpoints[endpoints.index(endpoint)] = fresh
            generation[fresh.identity] += 1
            failed.pop(fresh.identity, None)
            await join(fresh)
        _emit(
            {
                "event": "churned",
                "identities": [e.identity for e in leaving],
                "failed": {e.identity: failed[e.identity] for e in leaving if e.identity in failed},
                "seconds": round(time.monotonic() - started_at, 2),
            }
        )

    try:
        while True:
            command = await _read_command()
            cmd = command.get("cmd")
            if cmd == "join_chair" and chair is not None:
                await join(chair)
                if chair.identity in failed:
                    _emit(
                        {"event": "error", "message": f"the chair could not join: {failed[chair.identity]}"}
                    )
                    return
                await chair.set_program(command["layout"], ["chair"])
                _emit({"event": "chair_joined"})
            elif cmd == "join":
                tasks = []
                for endpoint in endpoints:
                    if endpoint.identity not in started:
                        tasks.append(asyncio.create_task(join(endpoint)))
                        await asyncio.sleep(0.15)  # a steady trickle of joins, as in a real meeting
                await asyncio.gather(*tasks)
                _emit({"event": "joined", "failed": failed})
            elif cmd == "program" and chair is not None:
                sent = time.time()
                try:
                    result = await chair.set_program(command["layout"], command["slots"])
                except Exception as exc:  # reported and counted: one refused change does not end a soak
                    _emit({"event": "program", "sent": sent, "error": f"{type(exc).__name__}: {exc}"})
                    continue
                _emit({"event": "program", "sent": sent, "version": result.get("version")})
            elif cmd == "churn":
                # In the background: the chair's program changes go on meanwhile.
                task = asyncio.create_task(churn(command["identities"]))
                background.add(task)
                task.add_done_callback(background.discard)
            elif cmd == "tick":
                # The highest sequence number so far of every stream ends this interval (the
                # parent's per-interval delivery, conference/loadtest/soak.py).
                last_tick = int(command["tick"])
                for endpoint in endpoints:
                    for tally in endpoint.tallies.values():
                        tally.mark(last_tick)
                _emit({"event": "ticked", "tick": last_tick})
            elif cmd == "intervals":
                # After the drain: every stream's numbers per interval against what the server sent.
                sessions = retired + [(e.identity, e.tallies) for e in endpoints if e.identity not in failed]
                sums = session_intervals(sessions, command.get("sent") or {})
                _emit({"event": "intervals", "intervals": sums})
            elif cmd == "leave":
                await asyncio.gather(*(e.close(leave=True) for e in endpoints), return_exceptions=True)
                _emit({"event": "left"})
            elif cmd == "mark":
                times = os.times()
                _emit({"event": "mark", "cpu_s": times.user + times.system})
            elif cmd == "pause":
                for endpoint in endpoints:
                    endpoint.pause_media()
                _emit({"event": "paused"})
            elif cmd == "report":
                reports = []
                for endpoint in endpoints:
                    if endpoint.identity in failed:
                        continue
                    report = {**endpoint.report(), "decode": decode_modes[endpoint.identity]}
                    if endpoint.identity in first_join:  # it rejoined: the join figure is the first one
                        report["rejoin_s"], report["join_s"] = report["join_s"], first_join[endpoint.identity]
                    reports.append(report)
                _emit({"event": "report", "endpoints": reports})
            elif cmd == "stop":
                return
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await asyncio.gather(*(e.close() for e in endpoints), return_exceptions=True)


def _worker_entry() -> int:
    spec = json.loads(sys.stdin.readline())
    try:
        import uvloop  # receiving thousands of packets per second: the faster loop matters here too
    except ImportError:
        asyncio.run(_worker(spec))
    else:
        uvloop.run(_worker(spec))
    return 0


if __name__ == "__main__":
    sys.exit(_worker_entry())
