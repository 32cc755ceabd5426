"""``conference recordings list|show|speaking-time|delete|purge``: the archive from the command line."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from typing import Any

from conference.config import ConfigError, add_settings_arguments, settings_from_args

from .archive import ArchiveError, Recording, list_recordings, recording_dir, writer_alive
from .jobs import list_jobs
from .replay import chapters_of
from .service import purge
from .speaking_levels import speaking_time
from .speaking_sheets import to_csv, to_xlsx


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser("list", help="list recordings, newest first")
    p.add_argument("--room", help="only this room's recordings")
    p.add_argument("--date", help="only recordings started on this UTC date (YYYY-MM-DD)")
    p.add_argument("--json", action="store_true", help="print a JSON array")
    add_settings_arguments(p, server=False)
    p = sub.add_parser("show", help="metadata, participants, chapters and renders of one recording")
    p.add_argument("recording", metavar="RECORDING")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_settings_arguments(p, server=False)
    p = sub.add_parser(
        "speaking-time", help="who spoke how long (floor and voiced time), as in the clerk's report"
    )
    p.add_argument("recording", metavar="RECORDING")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the figures as JSON")
    out.add_argument("--csv", action="store_true", help="print the CSV (docs/recordings.md)")
    out.add_argument("--xlsx", metavar="FILE", help="write the Excel workbook to FILE")
    p.add_argument("--lang", choices=("zh-CN", "en"), default="zh-CN", help="the workbook's headings")
    add_settings_arguments(p, server=False)

    p = sub.add_parser("delete", help="delete a recording and its renders")
    p.add_argument("recording", metavar="RECORDING", nargs="+")
    p.add_argument("--force", action="store_true", help="also a recording that is not finished")
    add_settings_arguments(p, server=False)
    p = sub.add_parser("purge", help="delete finished recordings older than the retention period")
    p.add_argument("--older-than", type=float, metavar="DAYS", help="default: recording_retention_days")
    add_settings_arguments(p, server=False)


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


def _duration(seconds: float) -> str:
    h, rem = divmod(round(seconds), 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


def _show(rec: Recording, data_dir: Any) -> dict[str, Any]:
    return {
        **rec.summary(),
        "interrupted": bool(rec.meta.get("interrupted")),
        "participants": rec.participants(),
        "tracks": [{"identity": t.identity, "kind": t.media, "codec": t.codec} for t in rec.tracks],
        "chapters": [
            {"t": round(c.at, 3), "title": c.title} for c in chapters_of(rec, rec.started_at, rec.stopped_at)
        ],
        "renders": list_jobs(data_dir, rec.id),
        "path": str(rec.directory),
    }


def _speaking_time(args: argparse.Namespace, data_dir: Any) -> int:
    try:
        rec = Recording(recording_dir(data_dir, args.recording))
    except ArchiveError as exc:
        print(f"conference recordings: no recording {args.recording!r} ({exc})", file=sys.stderr)
        return 2
    data = speaking_time(rec)
    if args.json:
        print(json.dumps(data, indent=1, ensure_ascii=False))
    elif args.csv:
        sys.stdout.write(to_csv(data))
    elif args.xlsx:
        with open(args.xlsx, "wb") as f:
            f.write(to_xlsx(data, args.lang))
        print(f"wrote {args.xlsx}")
    else:
        print(f"{'WHO':<28} {'SECTOR':<16} {'FLOOR':>9} {'VOICED':>9}  TURNS")
        for p in data["by_person"]:
            sector = p["sector"] or "-"
            print(
                f"{p['name'][:28]:<28} {sector[:16]:<16} {_duration(p['floor_s']):>9} "
                f"{_duration(p['voiced_s']):>9}  {p['turns']}"
            )
        total = data["total"]
        print(f"{'total':<45} {_duration(total['floor_s']):>9} {_duration(total['voiced_s']):>9}")
    return 0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        print(f"conference recordings: {exc}", file=sys.stderr)
        return 2
    data_dir = settings.data_dir
    if args.action == "list":
        if args.date:
            try:
                time.strptime(args.date, "%Y-%m-%d")
            except ValueError:
                print(f"conference recordings: bad date {args.date!r}: expected YYYY-MM-DD", file=sys.stderr)
                return 2
        items = [
            r
            for r in list_recordings(data_dir, args.room)
            if not args.date or time.strftime("%Y-%m-%d", time.gmtime(r.started_at)) == args.date
        ]
        if args.json:
            print(
                json.dumps([{**r.summary(), "participants": len(r.participants())} for r in items], indent=1)
            )
            return 0
        if not items:
            print(f"no recordings in {data_dir}")
            return 0
        print(f"{'ID':<40} {'ROOM':<16} {'STARTED (UTC)':<20} {'DURATION':>9}  STATE")
        for r in items:
            state = "finished" if r.complete else "recording/interrupted"
            print(f"{r.id:<40} {r.room:<16} {_when(r.started_at):<20} {_duration(r.duration):>9}  {state}")
        return 0
    if args.action == "show":
        try:
            rec = Recording(recording_dir(data_dir, args.recording))
        except ArchiveError as exc:
            print(f"conference recordings: no recording {args.recording!r} ({exc})", file=sys.stderr)
            return 2
        info = _show(rec, data_dir)
        if args.json:
            print(json.dumps(info, indent=1))
            return 0
        print(f"{rec.id}  room {rec.room}")
        print(f"  {_when(rec.started_at)} - {_when(rec.stopped_at)} UTC ({_duration(rec.duration)})")
        print("  participants: " + ", ".join(f"{p['name']} ({p['role']})" for p in info["participants"]))
        print(f"  tracks: {len(info['tracks'])}")
        for c in info["chapters"]:
            print(f"  {_duration(c['t'])}  {c['title']}")
        for job in info["renders"]:
            print(f"  render {job['id']}: {job.get('state')} {round(100 * (job.get('progress') or 0))}%")
        return 0
    if args.action == "speaking-time":
        return _speaking_time(args, data_dir)
    if args.action == "delete":
        code = 0
        for recording_id in args.recording:
            try:
                directory = recording_dir(data_dir, recording_id)
                Recording(directory)
            except ArchiveError as exc:
                print(f"conference recordings: no recording {recording_id!r} ({exc})", file=sys.stderr)
                code = 2
                continue
            if not Recording(directory).complete and not args.force:
                state = (
                    "is still recording"
                    if writer_alive(directory)
                    else ("was interrupted and not yet recovered by the server (it is at its next start)")
                )
                print(
                    f"conference recordings: {recording_id} {state}; use --force to delete it anyway",
                    file=sys.stderr,
                )
                code = 2
                continue
            shutil.rmtree(directory)
            print(f"deleted {recording_id}")
        return code
    days = args.older_than if args.older_than is not None else settings.recording_retention_days
    if not days or days <= 0:
        print("conference recordings: no retention period (give --older-than DAYS)", file=sys.stderr)
        return 2
    for recording_id in purge(data_dir, days):
        print(f"deleted {recording_id}")
    return 0
