"""The ``conference`` command. Each subcommand lives in its own module, which provides
``configure(parser)`` and ``run(args) -> int``; a module that is not there yet is skipped."""

from __future__ import annotations

import argparse
import importlib
import sys

# (name, module, help)
SUBCOMMANDS: list[tuple[str, str, str]] = [
    ("serve", "signaling.serve", "run the conferencing server"),
    ("token", "signaling.tokens", "mint a signed access token for a room"),
    ("bench", "conference.bench", "benchmark the media core with N real endpoints"),
    ("render", "recorder.render", "render a recording to MP4 in a chosen layout"),
    ("recordings", "recorder.cli", "list, show or delete recordings"),
    ("phone", "signaling.phone.cli", "telephone dial-in gateway (SIP)"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conference", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name, help_text in SUBCOMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue  # not built yet
            raise
        sp = sub.add_parser(name, help=help_text, description=help_text)
        module.configure(sp)
        sp.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return int(args._run(args) or 0)
