"""The ``conference`` command (also ``python -m signaling``). Each subcommand lives in its own
module, which provides ``configure(parser)`` and ``run(args) -> int``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from types import ModuleType

from conference.loadtest import bench
from recorder import cli as recordings
from recorder import render

from . import live_remote, roster_cli, serve, tokens
from .phone import cli as phone

# (name, module, help)
SUBCOMMANDS: list[tuple[str, ModuleType, str]] = [
    ("serve", serve, "run the conferencing server"),
    ("token", tokens, "mint a signed access token for a room"),
    ("roster", roster_cli, "import or export a room's roster, print its invitation links"),
    ("bench", bench, "benchmark the media core with N real endpoints"),
    ("render", render, "render a recording to MP4 in a chosen layout"),
    ("recordings", recordings, "list, show or delete recordings"),
    ("phone", phone, "telephone dial-in gateway (SIP)"),
    (
        "live",
        live_remote,
        "the program compositor of a room's public HLS stream (started by the server, or on a machine"
        " of its own with --server)",
    ),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conference", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module, help_text in SUBCOMMANDS:
        sp = sub.add_parser(name, help=help_text, description=help_text)
        module.configure(sp)
        run: Callable[[argparse.Namespace], int] = module.run
        sp.set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args._argv = list(argv)  # `serve --workers` starts its workers with the same command line
    return int(args._run(args) or 0)
