"""The speaking-time routes on a real server (media off): who may read them, what a room that does
not record answers, and the sheets of a recording written through the real archive writer."""

from __future__ import annotations

import csv
import io
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import openpyxl
from aiohttp.test_utils import TestServer
from recording_script import Script, Speaker, write_meeting

from conference.config import Settings
from recorder.archive import Recording, recording_dir
from recorder.speaking_levels import CACHE_NAME
from signaling.speaking import recording_figures

ADMIN = "test-admin-key-not-for-production-0123456789"  # tests/conftest.py
STARTED = 1_790_000_000.0


async def call(server: TestServer, path: str, token: str | None) -> tuple[int, Any, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.get(server.make_url(path), headers=headers) as res:
        body = await res.read()
        ctype = res.headers.get("Content-Type", "")
        return res.status, (await res.json() if ctype.startswith("application/json") else body), ctype


async def test_running_figures_of_a_room(
    signaling_server: Callable[..., Awaitable[TestServer]], mint: Callable[..., str]
) -> None:
    server = await signaling_server()
    status, _, _ = await call(server, "/api/rooms/assembly/speaking-time", mint("assembly", "c", "chair"))
    assert status == 404  # no such room yet
    async with aiohttp.ClientSession() as http:
        create = {"Authorization": f"Bearer {ADMIN}"}
        async with http.post(server.make_url("/api/rooms"), json={"room": "assembly"}, headers=create) as res:
            assert res.status in (200, 201)
    status, data, _ = await call(server, "/api/rooms/assembly/speaking-time", mint("assembly", "c", "chair"))
    assert status == 200
    assert data["recording_id"] is None and data["speaking_time"] is None and data["floor"] is None
    status, data, _ = await call(server, "/api/rooms/assembly/speaking-time", mint("assembly", "v", "venue"))
    assert status == 403 and data["error"] == "forbidden"
    status, data, _ = await call(server, "/api/rooms/assembly/speaking-time", mint("other", "c", "chair"))
    assert status == 403
    status, data, _ = await call(server, "/api/rooms/assembly/speaking-time", None)
    assert status == 401


async def test_the_sheets_of_a_recording(
    settings: Settings, signaling_server: Callable[..., Awaitable[TestServer]], mint: Callable[..., str]
) -> None:
    script = Script(
        [
            Speaker("a", "Alice", (255, 0, 0), None, role="chair", video=False),
            Speaker("b", "鲍勃", (0, 255, 0), 660.0),
        ],
        duration=3.0,
        floors=[(0.5, "b"), (2.5, None)],
    )
    write_meeting(settings.data_dir, "assembly-1", script, started_at=STARTED, room="assembly")
    write_meeting(settings.data_dir, "other-1", script, started_at=STARTED, room="other")
    server = await signaling_server()
    clerk = mint("assembly", "clerk1", "clerk")
    # The sheets wait for the first count (in its own process), then the view has it at once.
    status, body, ctype = await call(server, "/api/recordings/assembly-1/speaking-time.csv", clerk)
    assert status == 200 and ctype.startswith("text/csv")
    assert (recording_dir(settings.data_dir, "assembly-1") / CACHE_NAME).is_file()  # counted once
    status, detail, _ = await call(server, "/api/recordings/assembly-1", clerk)
    assert status == 200
    people = {p["identity"]: p for p in detail["speaking_time"]["by_person"]}
    assert people["b"]["floor_s"] == 2.0 and people["b"]["turns"] == 1

    status, body, ctype = await call(server, "/api/recordings/assembly-1/speaking-time.csv", clerk)
    assert status == 200 and ctype.startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(body.decode("utf-8-sig"))))
    assert next(r for r in rows if r["identity"] == "b")["name"] == "鲍勃"
    assert float(next(r for r in rows if r["identity"] == "b")["floor_s"]) == 2.0
    status, body, _ = await call(server, "/api/recordings/assembly-1/speaking-time.xlsx", clerk)
    assert status == 200
    sheet = openpyxl.load_workbook(io.BytesIO(body)).worksheets[0]
    assert sheet.title == "按人员" and sheet["A1"].value == "标识"
    assert next(r[:2] for r in sheet.iter_rows(min_row=2, values_only=True)) == ("b", "鲍勃")

    for path in ("/api/recordings/other-1/speaking-time.csv", "/api/recordings/other-1/speaking-time.xlsx"):
        status, _, _ = await call(server, path, clerk)
        assert status == 403, path
    status, data, _ = await call(
        server, "/api/recordings/assembly-1/speaking-time.csv", mint("assembly", "v", "venue")
    )
    assert status == 403 and "may not see recordings" in data["message"]
    status, _, _ = await call(server, "/api/recordings/nothing-here/speaking-time.csv", clerk)
    assert status == 404


async def test_a_first_count_runs_once_in_a_thread_or_its_own_process_and_is_kept(
    settings: Settings, monkeypatch: Any
) -> None:
    """A short recording is counted in a thread; a longer one (here: any, the threshold set to 0)
    by ``python -m recorder.speaking_levels`` in a process of its own. Either way once, then cached."""
    from signaling import speaking

    script = Script([Speaker("b", "Bob", (0, 255, 0), 660.0, video=False)], duration=2.0, floors=[(0.5, "b")])
    for recording_id, small in (("assembly-2", True), ("assembly-4", False)):
        write_meeting(settings.data_dir, recording_id, script, started_at=STARTED, room="assembly")
        recording = Recording(recording_dir(settings.data_dir, recording_id))
        monkeypatch.setattr(speaking, "SMALL_AUDIO_BYTES", 1_000_000 if small else 0)
        # Not waiting: nothing yet, the count goes on.
        assert await recording_figures(recording, wait_s=0.0) is None
        figures = await recording_figures(recording, wait_s=30.0)
        assert figures is not None and figures["by_person"][0]["floor_s"] == 1.5, recording_id
        assert figures["by_person"][0]["voiced_s"] > 1.0
        assert (recording.directory / CACHE_NAME).is_file()
        assert not speaking._counting  # done, and forgotten


def test_the_command_line_prints_and_writes_the_same_figures(tmp_path: Any, capsys: Any) -> None:
    """``conference recordings speaking-time`` (the command's own entry point, in this process)."""
    from signaling.cli import main

    script = Script(
        [Speaker("b", "鲍勃", (0, 255, 0), 660.0, video=False)], duration=2.0, floors=[(0.5, "b")]
    )
    write_meeting(tmp_path, "assembly-3", script, started_at=STARTED, room="assembly")

    def cli(*args: str) -> tuple[int, str, str]:
        code = main(["recordings", "speaking-time", *args, "--data-dir", str(tmp_path)])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = cli("assembly-3")
    assert code == 0 and "鲍勃" in out and "0:00:02" in out  # 1.5 s of floor, as h:mm:ss
    code, out, _ = cli("assembly-3", "--csv")
    rows = list(csv.DictReader(io.StringIO(out.lstrip("\ufeff"))))
    assert float(next(r for r in rows if r["identity"] == "b")["floor_s"]) == 1.5
    assert cli("assembly-3", "--xlsx", str(tmp_path / "figures.xlsx"), "--lang", "en")[0] == 0
    sheet = openpyxl.load_workbook(tmp_path / "figures.xlsx")["By person"]
    assert next(sheet.iter_rows(min_row=2, values_only=True))[6] == 1.5
    code, _, err = cli("no-such-recording")
    assert code == 2 and "no recording" in err
