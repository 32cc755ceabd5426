"""``conference serve``: run the server until SIGTERM/SIGINT, then shut down within a few seconds."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sqlite3
import ssl
import sys
import tracemalloc

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from conference.config import ConfigError, Settings, add_settings_arguments, settings_from_args
from conference.placement import default_node_id
from conference.sqlite_store import StoreError

from . import logs, metrics, workers
from .app import create_app
from .tokens import ADMIN_KEY_FILE, resolve_admin_key, resolve_secret

log = logging.getLogger("conference")


def configure(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser, server=True)
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="json: one JSON object per line, with node, room and identity (docs/deploy.md)",
    )
    parser.add_argument(
        "--event-loop",
        default="uvloop",
        choices=["uvloop", "asyncio"],
        help="uvloop (default, when installed) or the standard asyncio loop, to compare them",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="N worker processes on the one port (SO_REUSEPORT), each a node with its own port "
        "(--port + 1 + index); needs --redis-url (docs/deploy.md)",
    )
    parser.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--tracemalloc",
        type=int,
        default=0,
        metavar="FRAMES",
        help="trace Python allocations (FRAMES deep; 0, the default: off) for GET /api/debug/memory; "
        "it slows every allocation, so for finding leaks only",
    )


def run(args: argparse.Namespace) -> int:
    logs.configure(args.log_level, args.log_format, socket.gethostname())
    try:
        settings = settings_from_args(args)
        if settings.redis_url and not settings.node_id:  # one of several: a name of its own
            settings.node_id = default_node_id()
        logs.configure(args.log_level, args.log_format, settings.node_id or socket.gethostname())
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        resolve_secret(settings)
        resolve_admin_key(settings)
    except (ConfigError, OSError) as exc:
        print(f"conference serve: {exc}", file=sys.stderr)
        return 2
    worker = args.worker_index
    if args.workers > 1 and worker is None:
        try:
            workers.check(settings, args.workers)
        except ConfigError as exc:
            print(f"conference serve: {exc}", file=sys.stderr)
            return 2
        return asyncio.run(workers.supervise(settings, args.workers, args._argv))
    if args.tracemalloc > 0:
        tracemalloc.start(args.tracemalloc)  # before the app exists: its allocations are traced too
    if args.event_loop == "asyncio":
        return asyncio.run(serve(settings, worker))
    try:
        import uvloop  # the media hot path runs measurably faster on it (docs/performance.md)
    except ImportError:
        return asyncio.run(serve(settings, worker))
    return uvloop.run(serve(settings, worker))


REDACTED_QUERY_KEYS = frozenset({"token", "sig"})


class AccessLog(AbstractAccessLogger):
    """aiohttp's access log without secrets: tokens travel in query strings (``/ws?token=``), and so
    do the signatures of recording links (``&sig=``, good for anyone until they expire)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        query = "&".join(
            f"{key}=<redacted>" if key in REDACTED_QUERY_KEYS else f"{key}={value}"
            for key, value in request.query.items()
        )
        target = f"{request.path}?{query}" if query else request.path
        self.logger.info(
            '%s "%s %s" %s %s %.3fs',
            request.remote,
            request.method,
            target,
            response.status,
            response.body_length,
            time,
        )


def _ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


def _banner(settings: Settings, port: int) -> str:
    scheme = "https" if settings.tls else "http"
    shown_host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    base = f"{scheme}://{shown_host}:{port}"
    if settings.secret:
        flags = "--secret-file <a file holding the same secret>"
    elif settings.secret_file is not None:
        flags = f"--secret-file {settings.secret_file}"
    else:
        flags = f"--data-dir {settings.data_dir}"
    if settings.admin_key:
        admin = "given by --admin-key/CONFERENCE_ADMIN_KEY/config"
    else:
        admin = f"in {settings.admin_key_file or settings.data_dir / ADMIN_KEY_FILE}"
    return "\n".join(
        [
            f"conference: serving on {base} (listening on {settings.host}:{port})",
            f"  pages: {base}/  {base}/chair  {base}/venue  {base}/phone  {base}/clerk",
            f"  admin key (REST API, Authorization: Bearer ...): {admin}",
            "  mint a token, e.g. for the chair:",
            f"    conference token {flags} --room council --role chair --identity chair --name Chair --url",
            f"  media: {'on' if settings.media else 'off (signaling only)'}; rooms: {_rooms_where(settings)}",
            *(
                [f"  node: {settings.node_id}, reached at {settings.advertise_url or base}"]
                if settings.redis_url
                else []
            ),
        ]
    )


def _rooms_where(settings: Settings) -> str:
    if settings.redis_url:
        return f"redis {settings.redis_url}"
    if settings.room_store == "memory":
        return "in memory (lost when the server stops)"
    return f"{settings.data_dir / 'rooms.sqlite3'} (kept across restarts)"


async def _open_metrics(app: web.Application, settings: Settings) -> web.AppRunner | bool | None:
    """``/metrics`` without the admin key on ``metrics_listen`` (None: not configured; False: it
    could not listen there)."""
    if not settings.metrics_listen:
        return None
    host, _, port_text = settings.metrics_listen.rpartition(":")
    runner = web.AppRunner(metrics.open_metrics_app(app), handle_signals=False, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host.strip("[]") or "127.0.0.1", int(port_text)).start()
    except (OSError, ValueError) as exc:
        print(f"conference serve: cannot serve metrics on {settings.metrics_listen}: {exc}", file=sys.stderr)
        await runner.cleanup()
        return False
    return runner


async def serve(settings: Settings, worker: int | None = None) -> int:
    """``worker``: one of ``--workers`` (signaling.workers): the shared port with SO_REUSEPORT,
    and the worker's own port, which it advertises."""
    try:
        ssl_context = _ssl_context(settings)
    except (OSError, ssl.SSLError) as exc:
        print(f"conference serve: cannot load TLS certificate/key: {exc}", file=sys.stderr)
        return 2
    # Handlers first: a SIGTERM arriving while the server starts must still shut it down cleanly.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = create_app(settings)
    runner = web.AppRunner(
        app, handle_signals=False, shutdown_timeout=settings.shutdown_timeout_s, access_log_class=AccessLog
    )
    try:
        await runner.setup()  # opens the room store: refused when another server holds it
    except (StoreError, OSError, sqlite3.Error) as exc:
        print(f"conference serve: cannot open the room store: {exc}", file=sys.stderr)
        return 2
    sites = [
        web.TCPSite(
            runner, settings.host, settings.port, ssl_context=ssl_context, reuse_port=worker is not None
        )
    ]
    if worker is not None:
        sites.append(
            web.TCPSite(runner, settings.host, workers.worker_port(settings, worker), ssl_context=ssl_context)
        )
    try:
        for site in sites:
            await site.start()
    except OSError as exc:
        print(f"conference serve: cannot listen on {settings.host}: {exc}", file=sys.stderr)
        await runner.cleanup()
        return 1
    port = settings.port
    if port == 0 and runner.addresses:
        port = runner.addresses[0][1]
    metrics_runner = await _open_metrics(app, settings)
    if metrics_runner is False:
        await runner.cleanup()
        return 1
    print(_banner(settings, port), flush=True)
    await stop.wait()
    if metrics_runner is not None:
        await metrics_runner.cleanup()
    print("conference: shutting down", flush=True)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
    # runner.cleanup() runs on_shutdown (clients told, sockets closed) then on_cleanup (media, store).
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(runner.cleanup(), settings.shutdown_timeout_s + 2)
    print("conference: stopped", flush=True)
    return 0
