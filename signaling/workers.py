"""``conference serve --workers N``: N worker processes behind one listening port (issue 17).

A Python process forwards media on one core; a machine with more cores runs one worker per core.
Every worker is a node of its own (docs/architecture.md, "Rooms placed on nodes") sharing the
Redis placement, and listens on the one public port with ``SO_REUSEPORT`` (the kernel spreads new
connections over the workers) and on a port of its own, ``port + 1 + index``, which it advertises:
a join that the kernel gave to a worker not hosting the room is answered ``moved`` to the host's own
port, as between nodes on separate machines. The room store must be shared by the workers, so
``--workers`` needs ``--redis-url`` (the SQLite store is one process's; memory is nobody else's).

This module is the supervisor: it starts the workers (the same command line with ``--worker-index``
and each worker's node id, advertised URL, media ports and metrics address), passes SIGTERM/SIGINT
on to them, and starts a worker that died again after a second, as systemd would restart a node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from urllib.parse import urlsplit, urlunsplit

from conference.config import ConfigError, Settings
from conference.placement import default_node_id

log = logging.getLogger("conference")

RESTART_DELAY_S = 1.0


def worker_port(settings: Settings, index: int) -> int:
    """The port worker ``index`` listens on alone (and advertises), besides the shared one."""
    return settings.port + 1 + index


def check(settings: Settings, workers: int) -> None:
    if workers < 1:
        raise ConfigError("--workers must be at least 1")
    if not settings.redis_url:
        raise ConfigError(
            "--workers needs --redis-url: the workers are nodes sharing the rooms through Redis "
            "(the SQLite and memory stores belong to one process)"
        )
    if settings.port == 0:
        raise ConfigError("--workers needs a fixed --port (the workers' own ports follow it)")
    low, high = settings.rtc_port_min, settings.rtc_port_max
    if low is not None and high is not None and high - low + 1 < workers:
        raise ConfigError("--rtc-ports has fewer ports than --workers")


def worker_arguments(settings: Settings, workers: int, index: int, base_id: str) -> list[str]:
    """What worker ``index`` gets on top of the supervisor's own command line (the last wins)."""
    own = worker_port(settings, index)
    args = ["--worker-index", str(index), "--node-id", f"{base_id}-w{index}"]
    if settings.advertise_url:
        parts = urlsplit(settings.advertise_url)
        netloc = f"{parts.hostname}:{own}" if parts.hostname else parts.netloc
        args += ["--advertise-url", urlunsplit(parts._replace(netloc=netloc))]
    else:
        scheme = "https" if settings.tls else "http"
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
        args += ["--advertise-url", f"{scheme}://{host}:{own}"]
    if settings.rtc_port_min is not None and settings.rtc_port_max is not None:
        # The media ports split in N slices: two workers must not bind the same UDP port.
        span = (settings.rtc_port_max - settings.rtc_port_min + 1) // workers
        low = settings.rtc_port_min + index * span
        args += ["--rtc-ports", f"{low}-{low + span - 1}"]
    if settings.metrics_listen:
        host, _, port_text = settings.metrics_listen.rpartition(":")
        args += ["--metrics-listen", f"{host}:{int(port_text) + index}"]
    return args


async def supervise(settings: Settings, workers: int, argv: list[str]) -> int:
    """Run ``workers`` workers until SIGTERM/SIGINT; returns when all of them stopped."""
    base_id = settings.node_id or default_node_id()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    procs: dict[int, asyncio.subprocess.Process] = {}

    async def start(index: int) -> None:
        command = [
            sys.executable,
            "-m",
            "signaling",
            *argv,
            *worker_arguments(settings, workers, index, base_id),
        ]
        procs[index] = await asyncio.create_subprocess_exec(*command, preexec_fn=_die_with_parent)
        print(f"conference: worker {index} (pid {procs[index].pid}) on port {worker_port(settings, index)}")

    async def keep(index: int) -> None:
        while True:
            await start(index)
            started = time.monotonic()
            code = await procs[index].wait()
            if stop.is_set():
                return
            log.error(
                "worker %d exited with %s after %.0f s: starting it again",
                index,
                code,
                time.monotonic() - started,
            )
            await asyncio.sleep(RESTART_DELAY_S)
            if stop.is_set():
                return

    keepers = [asyncio.create_task(keep(i)) for i in range(workers)]
    print(f"conference: {workers} workers on {settings.host}:{settings.port} (SO_REUSEPORT)", flush=True)
    await stop.wait()
    for proc in procs.values():
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(
            asyncio.gather(*keepers, return_exceptions=True), settings.shutdown_timeout_s + 5
        )
    except TimeoutError:
        for proc in procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
    return 0


def _die_with_parent() -> None:
    """In the worker, before exec: SIGTERM when the supervisor dies (even by SIGKILL), so no worker
    is left holding the port and its rooms with nobody to stop it (Linux's PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
