"""Structured logs (signaling/logs.py): ``conference serve --log-format json`` writes one JSON object
per line with the node, and the room and identity a line is about; no token reaches the log."""

from __future__ import annotations

import json
import re
from pathlib import Path

import aiohttp
from browser_util import server_process
from conftest import SignalingClient


async def test_json_log_lines_name_node_room_and_identity_and_hold_no_token(tmp_path: Path) -> None:
    extra = ["--log-format", "json", "--log-level", "INFO", "--node-id", "node-a"]
    async with server_process(tmp_path / "data", media=False, extra_args=extra) as server:
        token = server.token("council", "hall-a", "venue", "第一分会场")
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(f"{server.url.replace('http', 'ws', 1)}/ws", params={"token": token})
            client = SignalingClient(ws)
            await client.ok("join")
            await client.ok("leave")
            await ws.close()
            admin = {"Authorization": "Bearer wrong-key"}
            async with http.get(f"{server.url}/api/rooms/council", headers=admin) as r:
                assert r.status == 401
        log_file = server.log_file
    assert log_file is not None
    text = log_file.read_text()
    assert token not in text  # neither the access log (?token=) nor any other line
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    # Nothing in the text format: every log record is a JSON line (the banner is stdout, not a log).
    assert not [
        line for line in text.splitlines() if re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ", line)
    ]
    assert lines and all(
        line["node"] == "node-a" and {"time", "level", "logger", "message"} <= set(line) for line in lines
    )
    joined = [line for line in lines if line["message"].startswith("joined as venue")]
    assert joined and joined[0]["room"] == "council" and joined[0]["identity"] == "hall-a", lines
    assert any(line["message"] == "left" and line["identity"] == "hall-a" for line in lines)
    access = [line for line in lines if "/ws?" in line["message"]]
    assert access and all("token=<redacted>" in line["message"] for line in access), access
    # A REST call about a room logs with the room's name.
    assert any("/api/rooms/council" in line["message"] and line["room"] == "council" for line in lines), lines
