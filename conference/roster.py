"""The room's roster: who is expected at the meeting, prepared before it, and the one parser of its
CSV form. Each entry names an identity, a display name, a role (the token an invitation carries),
a kind (venue, member, expert, department, moderator, ...), a sector (the assembly's 界别, free
text such as "教育界") and an organisation.

The CSV (UTF-8, a BOM allowed, as Excel writes it) has a header naming its columns; ``identity``
and ``name`` are required, the others optional, in any order::

    identity,name,role,kind,sector,organisation
    hall-a,第一分会场,venue,venue,,市政府
    wang,王委员,member,member,教育界,第一中学

A file that is not such a CSV (another encoding, unknown or missing columns, a duplicate identity,
a field too long, too large a file) is refused as a whole with a message naming its line: a roster
is never half imported. Pure functions and commands on the room state, as in ``conference.room``.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from . import events as reducer
from .roles import Role
from .room import CommandError, Event, Participant, RoomState

COLUMNS = ("identity", "name", "role", "kind", "sector", "organisation")
REQUIRED = ("identity", "name")
MAX_BYTES = 256 * 1024  # ~2,000 entries of Chinese names and organisations: far beyond a meeting
MAX_ENTRIES = 1000  # the largest room (max_endpoints) many times over is never a roster
MAX_LENGTH = {"name": 100, "kind": 32, "sector": 64, "organisation": 120}
# As signaling.tokens.NAME_RE: an identity goes into tokens, recording ids and file names.
IDENTITY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
DEFAULT_ROLE = Role.MEMBER
# Roles an invitation may carry: a clerk works from recordings, not from a meeting's invitation.
INVITED_ROLES = tuple(str(r) for r in Role if r is not Role.CLERK)
# Roles admitted whether or not they are on the roster (the console, the clerk's page).
ALWAYS_ADMITTED = frozenset({Role.CHAIR, Role.CLERK})


class RosterError(CommandError):
    """A roster refused; ``line`` is the CSV line (1: the header) the message names."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__("bad_request", f"line {line}: {message}")
        self.line = line


@dataclass(frozen=True, slots=True)
class RosterEntry:
    identity: str
    name: str
    role: str = str(DEFAULT_ROLE)
    kind: str = ""
    sector: str = ""
    organisation: str = ""

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def _clean(value: str) -> str:
    return " ".join(value.split())  # one line: no line breaks or runs of spaces in a name


def entry_from_fields(fields: dict[str, str], line: int) -> RosterEntry:
    """One roster entry from its fields (CSV or JSON), checked; RosterError names ``line``."""
    values = {k: _clean(fields.get(k) or "") for k in COLUMNS}
    identity = values["identity"]
    if not IDENTITY_RE.fullmatch(identity):
        raise RosterError(
            line,
            f"identity {identity[:70]!r} must be 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
        )
    if not values["name"]:
        raise RosterError(line, f"{identity}: the name is empty")
    for key, limit in MAX_LENGTH.items():
        if len(values[key]) > limit:
            raise RosterError(line, f"{identity}: the {key} is longer than {limit} characters")
    role = values["role"].lower() or str(DEFAULT_ROLE)
    if role not in INVITED_ROLES:
        raise RosterError(line, f"{identity}: role {role[:40]!r} is not one of {', '.join(INVITED_ROLES)}")
    return RosterEntry(
        identity, values["name"], role, values["kind"], values["sector"], values["organisation"]
    )


def parse_csv(data: bytes) -> list[RosterEntry]:
    """The entries of a roster CSV, or RosterError naming the first bad line."""
    if len(data) > MAX_BYTES:
        line = data[:MAX_BYTES].count(b"\n") + 1
        raise RosterError(line, f"the roster is larger than {MAX_BYTES} bytes (the limit)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise RosterError(line, "not UTF-8 text (save the file as CSV UTF-8)") from None
    if "\x00" in text:
        raise RosterError(text[: text.index("\x00")].count("\n") + 1, "a NUL byte: not a text file")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None or not any(h.strip() for h in header):
            raise RosterError(1, f"no header: the first line names the columns ({','.join(COLUMNS)})")
        columns = [h.strip().lower() for h in header]
        unknown = [c for c in columns if c not in COLUMNS]
        if unknown:
            raise RosterError(1, f"unknown columns {unknown[:5]}; the columns are {','.join(COLUMNS)}")
        if len(set(columns)) != len(columns):
            raise RosterError(1, "a column is named twice")
        missing = [c for c in REQUIRED if c not in columns]
        if missing:
            raise RosterError(1, f"missing columns {missing}")
        entries: list[RosterEntry] = []
        first_line: dict[str, int] = {}
        for row in reader:
            line = reader.line_num
            if not any(field.strip() for field in row):
                continue  # a blank line (Excel leaves some at the end)
            if len(row) != len(columns):
                raise RosterError(line, f"{len(row)} fields where the header has {len(columns)}")
            entry = entry_from_fields(dict(zip(columns, row, strict=True)), line)
            if entry.identity in first_line:
                raise RosterError(
                    line, f"identity {entry.identity!r} again (first on line {first_line[entry.identity]})"
                )
            first_line[entry.identity] = line
            entries.append(entry)
            if len(entries) > MAX_ENTRIES:
                raise RosterError(line, f"more than {MAX_ENTRIES} entries")
    except csv.Error as exc:
        raise RosterError(reader.line_num or 1, f"not a CSV line ({exc})") from None
    return entries


def to_csv(entries: Iterable[RosterEntry | dict[str, Any]]) -> bytes:
    """The roster as CSV (UTF-8 with a BOM, so Excel reads the Chinese; ``parse_csv`` reads it back)."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for entry in entries:
        data = entry.to_json() if isinstance(entry, RosterEntry) else entry
        writer.writerow([data.get(c, "") for c in COLUMNS])
    return out.getvalue().encode("utf-8-sig")


# --- commands on the room state ----------------------------------------------------------------


def set_roster(
    state: RoomState, entries: list[RosterEntry], allow_guests: bool | None = None, by: str | None = None
) -> list[Event]:
    """Replace the roster as a whole (an import is all or nothing; checked by the parser)."""
    if len(entries) > MAX_ENTRIES:
        raise CommandError("bad_request", f"more than {MAX_ENTRIES} roster entries")
    if len({e.identity for e in entries}) != len(entries):
        raise CommandError("bad_request", "an identity is on the roster twice")
    event: Event = {
        "kind": "roster",
        "entries": [e.to_json() for e in entries],
        "allow_guests": state.allow_guests if allow_guests is None else bool(allow_guests),
        "by": by,
    }
    return reducer.apply_all(state, [event])


def set_allow_guests(state: RoomState, allowed: bool, by: str | None = None) -> list[Event]:
    """Whether someone not on the roster may still join (marked as a guest)."""
    if state.allow_guests == allowed:
        return []
    return reducer.apply_all(state, [{"kind": "guests", "allowed": bool(allowed), "by": by}])


def admit(state: RoomState, participant: Participant) -> None:
    """At a join: what the roster says of the participant (its kind, sector and organisation win
    over the token's, being newer), or a guest mark; refused when the room admits no guests."""
    entry = state.roster.get(participant.identity)
    if entry is not None:
        participant.kind = entry["kind"] or participant.kind
        participant.sector = entry["sector"] or participant.sector
        participant.organisation = entry["organisation"] or participant.organisation
        participant.guest = False
        return
    if participant.role in ALWAYS_ADMITTED or not state.roster:
        participant.guest = False
        return
    if not state.allow_guests:
        raise CommandError("forbidden", f"{participant.identity!r} is not on the roster of {state.room!r}")
    participant.guest = True
