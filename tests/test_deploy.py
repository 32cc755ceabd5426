"""docs/deploy.md as it is written: its systemd unit passes ``systemd-analyze verify`` and names only
flags ``conference serve`` has, and its nginx site, run by Debian's nginx in front of a real
``conference serve`` (TLS with a certificate made here, on loopback), carries the pages, the API,
the WebSocket join and Server-Sent Events."""

from __future__ import annotations

import asyncio
import re
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
from browser_util import (
    ADMIN_KEY,
    free_port,
    nginx_process,
    self_signed_certificate,
    server_process,
    system_tool,
)
from conftest import SignalingClient

DOC = Path(__file__).resolve().parent.parent / "docs" / "deploy.md"


def _block(after: str, lang: str) -> str:
    """The first ``lang`` code block after the line containing ``after``."""
    text = DOC.read_text()
    start = text.index(after)
    match = re.search(rf"```{lang}\n(.*?)```", text[start:], re.S)
    assert match, f"no {lang} block after {after!r} in docs/deploy.md"
    return match.group(1)


def test_the_documented_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = system_tool("systemd-analyze", "systemd")
    unit = _block("conference.service", "ini")
    exec_line = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    words = exec_line.removeprefix("ExecStart=").split()
    assert words[0].endswith("/bin/conference") and words[1] == "serve"
    # Every flag the unit passes is one `conference serve` has.
    help_text = subprocess.run(
        [sys.executable, "-m", "signaling", "serve", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in (w for w in words if w.startswith("--")):
        assert flag in help_text, flag
    # Verified with this machine's executable in place of /opt/conference (otherwise as written).
    local = unit.replace(words[0], str(Path(sys.executable).with_name("conference")))
    path = tmp_path / "conference.service"
    path.write_text(local)
    result = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "conference.service" not in result.stderr, result.stderr  # no warning about the unit itself


def _nginx_conf(directory: Path, site: str) -> str:
    names = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    temp = "\n".join(f"    {name}_temp_path {directory / name};" for name in names)
    return (
        f"worker_processes 1;\nuser root;\npid {directory}/nginx.pid;\n"
        f"error_log {directory}/error.log warn;\nevents {{ worker_connections 256; }}\n"
        f"http {{\n    access_log off;\n{temp}\n{site}\n}}\n"
    )


async def test_the_documented_nginx_site_carries_pages_socket_api_and_events(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path / "tls", "127.0.0.1")
    async with server_process(tmp_path / "data", media=False) as server:
        origin_port = int(server.url.rsplit(":", 1)[1])
        port = free_port()
        site = _block("## nginx in front", "nginx")
        site = site.replace("listen 443 ssl http2;", f"listen 127.0.0.1:{port} ssl http2;")
        site = re.sub(r"ssl_certificate\s+\S+;", f"ssl_certificate {cert};", site)
        site = re.sub(r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {key};", site)
        site = site.replace("http://127.0.0.1:8080", f"http://127.0.0.1:{origin_port}")
        with nginx_process(tmp_path / "nginx", _nginx_conf(tmp_path / "nginx", site), port):
            base = f"https://127.0.0.1:{port}"
            tls = ssl.create_default_context(cafile=str(cert))
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls)) as http:
                async with http.get(f"{base}/healthz") as r:
                    assert r.status == 200 and (await r.json())["status"] == "ok"
                async with http.get(f"{base}/venue") as r:
                    assert r.status == 200 and "<html" in (await r.text()).lower()
                admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
                async with http.post(f"{base}/api/rooms", json={"room": "council"}, headers=admin) as r:
                    assert r.status == 201
                # The WebSocket through the proxy: a venue joins and gets the room.
                token = server.token("council", "hall-a", "venue", "第一分会场")
                ws = await http.ws_connect(f"wss://127.0.0.1:{port}/ws", params={"token": token})
                client = SignalingClient(ws)
                joined = await client.ok("join")
                assert joined["room"]["room"] == "council"
                # Server-Sent Events arrive through it unbuffered: the public page's stream.
                async with http.get(f"{base}/api/rooms/council/public", headers=admin) as r:
                    public = await r.json()
                code = public["url"].rstrip("/").rsplit("/", 1)[-1]
                async with http.get(f"{base}/w/{code}/events", timeout=aiohttp.ClientTimeout(total=15)) as r:
                    assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
                    first = await asyncio.wait_for(r.content.readline(), 10)
                    assert first.strip(), first
                await ws.close()
