"""``conference phone``: the telephone dial-in gateway (its own process; see docs/phone.md)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

from .message import split_hostport

# The gateway's own modules (PyAV, numpy, aiohttp) load in serve(): every other `conference`
# command builds this parser too and should not pay for them.


def hostport(text: str) -> tuple[str, int]:
    try:
        host, port = split_hostport(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return host, 5060 if port is None else port


def network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def on_this_machine(url: str) -> bool:
    """Whether the server at ``url`` runs here: its plain-RTP transport (the callers' audio) is
    bound to this machine's addresses. An address is ours if a socket can bind to it."""
    host = urlsplit(url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    except OSError:
        return False
    for family, kind, _, _, address in infos:
        with contextlib.suppress(OSError), socket.socket(family, kind) as probe:
            probe.bind((address[0], 0))
            return True
    return False


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server", required=True, help="the conference server's URL, e.g. http://127.0.0.1:8080"
    )
    parser.add_argument(
        "--admin-key",
        default=os.environ.get("CONFERENCE_ADMIN_KEY"),
        help="the server's admin key (default: $CONFERENCE_ADMIN_KEY)",
    )
    parser.add_argument(
        "--sip-listen",
        type=hostport,
        default=("127.0.0.1", 5060),
        metavar="HOST:PORT",
        help="SIP address, UDP and TCP (default 127.0.0.1:5060; port 0 picks one)",
    )
    parser.add_argument(
        "--sip-allow",
        type=network,
        action="append",
        metavar="CIDR",
        help="accept calls from these addresses (repeatable; default loopback only)",
    )
    parser.add_argument(
        "--public-address", help="the address put in Contact and SDP (default: the listen host)"
    )
    parser.add_argument("--register", metavar="HOST[:PORT]", help="register with this trunk or PBX registrar")
    parser.add_argument("--register-user", help="user name at the registrar")
    parser.add_argument(
        "--register-password",
        default=os.environ.get("CONFERENCE_SIP_PASSWORD"),
        help="password at the registrar (default: $CONFERENCE_SIP_PASSWORD)",
    )
    parser.add_argument("--register-domain", help="the AOR's domain (default: the registrar's host)")
    parser.add_argument("--register-transport", choices=["udp", "tcp"], default="udp")
    parser.add_argument("--register-expires", type=int, default=300)
    parser.add_argument(
        "--prompts-dir",
        type=Path,
        default=Path(os.environ.get("CONFERENCE_DATA_DIR", "data")) / "phone-prompts",
        help="where the spoken prompts are cached (made at first run)",
    )
    parser.add_argument("--rtp-timeout", type=float, default=15.0, help="seconds without RTP that end a call")
    parser.add_argument(
        "--rejoin",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds a call waits for the server to come back (a restart) before it ends",
    )
    parser.add_argument(
        "--max-tries",
        type=int,
        default=6,
        help="failed PIN tries per caller and source within 15 minutes before calls are refused",
    )


async def serve(args: argparse.Namespace, ready: asyncio.Event | None = None) -> int:
    import aiohttp

    from .call import CallContext
    from .gateway import LOOPBACK, Gateway
    from .ivr import Throttle
    from .link import Directory
    from .prompts import PromptError, ensure_prompts
    from .register import Account

    try:
        prompts = ensure_prompts(args.prompts_dir)
    except PromptError as exc:
        print(f"conference phone: {exc}", file=sys.stderr)
        return 2
    account = None
    if args.register:
        if not args.register_user or args.register_password is None:
            print(
                "conference phone: --register needs --register-user and --register-password", file=sys.stderr
            )
            return 2
        account = Account(
            args.register,
            args.register_user,
            args.register_password,
            args.register_domain,
            args.register_transport.upper(),
            args.register_expires,
        )
    async with aiohttp.ClientSession() as session:
        ctx = CallContext(
            server=args.server,
            directory=Directory(args.server, args.admin_key, session),
            session=session,
            prompts=prompts,
            throttle=Throttle(limit=args.max_tries),
            rtp_timeout_s=args.rtp_timeout,
            rejoin_s=args.rejoin,
        )
        if not on_this_machine(args.server):
            print(
                "conference phone: the server is on another machine: callers take part by signaling"
                " only (their audio needs the gateway beside the server: plain RTP on this machine)",
                file=sys.stderr,
            )
            ctx.audio_factory = lambda admission: None
        gateway = Gateway(
            ctx,
            host=args.sip_listen[0],
            port=args.sip_listen[1],
            allow=tuple(args.sip_allow) if args.sip_allow else LOOPBACK,
            public_host=args.public_address,
            account=account,
        )
        await gateway.start()
        print(f"conference phone: SIP on {gateway.transport.host}:{gateway.port} (UDP and TCP)", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        if ready is not None:
            ready.set()
        await stop.wait()
        await gateway.close()
    return 0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not args.admin_key:
        print("conference phone: --admin-key (or $CONFERENCE_ADMIN_KEY) is required", file=sys.stderr)
        return 2
    return asyncio.run(serve(args))
