"""``conference roster import|export|links ROOM``: a room's roster and its invitations from the
command line, through the running server's REST API with the admin key (signaling/running_order.py
is the one place that parses a roster and mints its invitations)."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

from conference.config import ConfigError, add_settings_arguments, settings_from_args

from .tokens import resolve_admin_key

TIMEOUT_S = 30


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser("import", help="replace the room's roster with a CSV file (UTF-8)")
    p.add_argument("room", metavar="ROOM")
    p.add_argument("file", metavar="FILE", help="the CSV (identity,name,role,kind,sector,organisation)")
    guests = p.add_mutually_exclusive_group()
    guests.add_argument("--allow-guests", action="store_true", default=None, help="people not on it may join")
    guests.add_argument("--no-guests", action="store_true", help="only the roster's people may join")
    p = sub.add_parser("export", help="print the room's roster as CSV")
    p.add_argument("room", metavar="ROOM")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of the standard output")
    p = sub.add_parser("links", help="print every roster entry's invitation link")
    p.add_argument("room", metavar="ROOM")
    p.add_argument(
        "--format",
        choices=["text", "csv", "html"],
        default="text",
        help="text: name, sector, kind and link a line (default); csv: a sheet; "
        "html: a printable page with QR codes",
    )
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of the standard output")
    for name in ("import", "export", "links"):
        sp = sub.choices[name]
        sp.add_argument("--server", metavar="URL", help="the server's address (default: from its settings)")
        add_settings_arguments(sp, server=True)


def _request(url: str, key: str, method: str = "GET", body: bytes | None = None) -> bytes:
    headers = {"Authorization": f"Bearer {key}"}
    if body is not None:
        headers["Content-Type"] = "text/csv"
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        return bytes(response.read())


def _write(data: bytes, output: str | None) -> None:
    if output:
        Path(output).write_bytes(data)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
        key = resolve_admin_key(settings, create=False)
    except ConfigError as exc:
        print(f"conference roster: {exc}", file=sys.stderr)
        return 2
    base = (args.server or settings.public_url).rstrip("/")
    room = f"{base}/api/rooms/{args.room}/roster"
    try:
        if args.action == "import":
            try:
                data = Path(args.file).read_bytes()
            except OSError as exc:
                print(f"conference roster: {args.file}: {exc.strerror}", file=sys.stderr)
                return 2
            query = (
                "?allow_guests=false" if args.no_guests else "?allow_guests=true" if args.allow_guests else ""
            )
            result = json.loads(_request(room + query, key, "PUT", data))
            print(f"{args.room}: {result['entries']} entries imported (room version {result['version']})")
        elif args.action == "export":
            _write(_request(room, key), args.output)
        elif args.format == "text":
            links = json.loads(_request(f"{room}/links", key))["links"]
            text = "".join(
                "\t".join([link["name"], link["sector"] or "-", link["kind"] or "-", link["url"]]) + "\n"
                for link in links
            )
            _write(text.encode("utf-8"), args.output)
        else:
            _write(_request(f"{room}/links?format={args.format}", key), args.output)
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("message", exc.reason)
        except ValueError:
            message = exc.reason
        print(f"conference roster: {message}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"conference roster: cannot reach the server at {base}: {exc}", file=sys.stderr)
        return 1
    return 0
