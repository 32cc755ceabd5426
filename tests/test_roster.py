"""The roster's CSV parser and its commands (conference/roster.py): UTF-8 Chinese names and sectors
round-trip; a malformed file is refused as a whole with a message naming its line."""

from __future__ import annotations

import pytest

from conference import room as r
from conference import roster
from conference.roles import Role
from conference.room import CommandError, Participant, RoomState
from conference.roster import RosterEntry, RosterError, parse_csv, to_csv

HEADER = "identity,name,role,kind,sector,organisation\n"
ROSTER = (
    HEADER
    + "hall-a,第一分会场,venue,venue,,市政府\n"
    + "wang,王委员,member,member,教育界,第一中学\n"
    + 'yang,杨主任,member,department,"医药卫生界","市疾病预防控制中心, 近视防控科"\n'
    + "li,李专家,,expert,体育界,\n"
)


def test_chinese_names_and_sectors_round_trip() -> None:
    entries = parse_csv(ROSTER.encode("utf-8"))
    assert [e.identity for e in entries] == ["hall-a", "wang", "yang", "li"]
    assert entries[2] == RosterEntry(
        "yang", "杨主任", "member", "department", "医药卫生界", "市疾病预防控制中心, 近视防控科"
    )
    assert entries[3].role == "member"  # the default role
    exported = to_csv(entries)
    assert exported.startswith(b"\xef\xbb\xbf")  # a BOM, so Excel reads the Chinese
    assert parse_csv(exported) == entries
    assert parse_csv(to_csv(parse_csv(exported))) == entries


def test_columns_in_any_order_optional_ones_missing_and_excel_leftovers() -> None:
    text = "\ufeffName,Identity,Sector\r\n王委员,wang,教育界\r\n\r\n,,\r\n"
    entries = parse_csv(text.encode("utf-8"))
    assert entries == [RosterEntry("wang", "王委员", "member", "", "教育界", "")]


@pytest.mark.parametrize(
    ("data", "line", "words"),
    [
        ("identity,name\nwang,王委员\n".encode("gbk"), 2, "not UTF-8"),
        (b"identity,name\nok,fine\nbad,\xff\xfe\n", 3, "not UTF-8"),
        (b"identity,nom\nwang,x\n", 1, "unknown columns"),
        (b"name,kind\nx,y\n", 1, "missing columns ['identity']"),
        (b"identity,name,name\n", 1, "named twice"),
        (b"", 1, "no header"),
        (HEADER.encode() + "wang,王委员,member\n".encode(), 2, "3 fields where the header has 6"),
        (
            b"identity,name\nwang,A\nli,B\n" + "wang,王委员\n".encode(),
            4,
            "identity 'wang' again (first on line 2)",
        ),
        (b"identity,name\nwang,A\n\xe7\x8e\x8b,B\n", 3, "identity"),
        (b"identity,name\nwang,\n", 2, "name is empty"),
        (b"identity,name,role\nwang,A,clerk\n", 2, "role 'clerk'"),
        (b"identity,name,role\nwang,A,king\n", 2, "role 'king'"),
        (b"identity,name,sector\nwang,A," + b"x" * 65 + b"\n", 2, "sector is longer than 64"),
        (b"identity,name\nwang,A\nli,B\x00\n", 3, "NUL"),
        (b'identity,name\nwang,A\nli,"B\nzhao,C\n', 4, "not a CSV line"),
    ],
)
def test_malformed_rosters_are_refused_naming_the_line(data: bytes, line: int, words: str) -> None:
    with pytest.raises(RosterError) as info:
        parse_csv(data)
    assert info.value.line == line, info.value.message
    assert info.value.message.startswith(f"line {line}: ")
    assert words in info.value.message


def test_ten_megabytes_of_junk_are_refused_naming_the_line_reached() -> None:
    junk = (b"identity,name\n" + b"\x8f\x00junk;" * 100 + b"\n") * 15000
    assert len(junk) > 10 * 2**20
    with pytest.raises(RosterError) as info:
        parse_csv(junk)
    reached = junk[: roster.MAX_BYTES].count(b"\n") + 1
    assert info.value.line == reached > 1
    assert (
        info.value.message
        == f"line {reached}: the roster is larger than {roster.MAX_BYTES} bytes (the limit)"
    )
    # Under the size limit, junk is refused for what it is, with its line.
    with pytest.raises(RosterError) as info:
        parse_csv(b"identity,name\nwang,A\n" + b"\x8f\x00junk" * 100)
    assert info.value.line == 3 and "not UTF-8" in info.value.message


def test_too_many_entries() -> None:
    rows = "".join(f"p{i},Person {i}\n" for i in range(roster.MAX_ENTRIES + 1))
    with pytest.raises(RosterError) as info:
        parse_csv(("identity,name\n" + rows).encode())
    assert info.value.line == roster.MAX_ENTRIES + 2


def _room() -> RoomState:
    state = RoomState(room="council")
    r.join(state, Participant("chair", "主持人", Role.CHAIR))
    r.join(state, Participant("wang", "王委员", Role.MEMBER))
    r.join(state, Participant("zhao", "赵先生", Role.MEMBER))
    return state


def test_the_roster_marks_who_is_present_and_admits_guests_only_when_allowed() -> None:
    state = _room()
    events = roster.set_roster(state, parse_csv(ROSTER.encode()), allow_guests=True, by="chair")
    assert [e["kind"] for e in events] == ["roster"] and len(events[0]["entries"]) == 4
    wang, zhao, chair = state.participants["wang"], state.participants["zhao"], state.participants["chair"]
    assert (wang.sector, wang.kind, wang.organisation, wang.guest) == ("教育界", "member", "第一中学", False)
    assert zhao.guest and not chair.guest  # the chair is never a guest

    # A join: the roster's word wins over the token's; someone not on it is a marked guest.
    yang = Participant("yang", "杨主任", Role.MEMBER, kind="member", sector="")
    roster.admit(state, yang)
    assert (yang.kind, yang.sector, yang.guest) == ("department", "医药卫生界", False)
    guest = Participant("visitor", "访客", Role.VIEWER, sector="新闻界")
    roster.admit(state, guest)
    assert guest.guest and guest.sector == "新闻界"

    roster.set_allow_guests(state, False)
    with pytest.raises(CommandError) as info:
        roster.admit(state, Participant("visitor", "访客", Role.VIEWER))
    assert info.value.code == "forbidden" and "not on the roster" in info.value.message
    roster.admit(state, Participant("chair2", "副主持", Role.CHAIR))  # the console always gets in
    assert roster.set_allow_guests(state, False) == []  # unchanged: no event

    roster.set_roster(state, [], by="chair")  # no roster: nobody is a guest
    assert not any(p.guest for p in state.participants.values())
