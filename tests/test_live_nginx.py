"""The live stream behind Debian's nginx with ``proxy_cache`` (the configuration docs/live.md
recommends), started by the test: the public page plays through it in Chromium, and a bounded crowd
of simulated viewers (playlist polls and segment fetches, as hls.js makes them) costs the server at
most two requests per segment, whatever their number."""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from browser_util import PHONE, chromium_args, ensure_chromium, eventually, free_port, log, nginx_process
from live_util import ROOM, meeting, rest
from test_sfu_support import nearest_colour

from signaling.public import SITE_KEY

__all__ = ["meeting"]  # the fixture, from live_util
pytestmark = [pytest.mark.browser, pytest.mark.media, pytest.mark.realtime]

NGINX = Path("/usr/sbin/nginx")
VIEWERS = 150
WATCH_S = 12.0

CONFIG = """
worker_processes 1;
user root;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 2048; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    proxy_cache_path {dir}/cache levels=1:2 keys_zone=live:10m max_size=200m inactive=10m use_temp_path=off;
    server {{
        listen 127.0.0.1:{port};
        location /live/ {{
            proxy_pass {origin};
            proxy_cache live;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 5s;
            proxy_cache_valid 200 1s;
            proxy_cache_valid 404 1s;
            proxy_cache_use_stale updating error timeout;
            proxy_cache_background_update on;
            add_header X-Cache-Status $upstream_cache_status;
        }}
        location / {{
            proxy_pass {origin};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header Host $http_host;
        }}
    }}
}}
"""


@contextlib.contextmanager
def nginx(directory: Path, origin: str) -> Iterator[str]:
    port = free_port()
    with nginx_process(directory, CONFIG.format(dir=directory, port=port, origin=origin), port):
        yield f"http://127.0.0.1:{port}"


async def viewer(http: aiohttp.ClientSession, base: str, until: float, stats: Counter[str]) -> None:
    """One hls.js-like player: polls the playlist about once a target duration (jittered), fetches
    each segment it has not had yet, starting three from the live edge."""
    had: set[str] = set()
    await asyncio.sleep(random.uniform(0, 2))
    while time.monotonic() < until:
        async with http.get(f"{base}/live/{ROOM}/index.m3u8") as resp:
            stats[f"playlist {resp.status}"] += 1
            text = await resp.text()
        names = re.findall(r"^(seg-\d+\.ts)$", text, re.M)
        wanted = [n for n in names[-3:] if n not in had] if not had else [n for n in names if n not in had]
        for name in wanted:
            async with http.get(f"{base}/live/{ROOM}/{name}") as resp:
                body = await resp.read()
                stats[f"segment {resp.status}"] += 1
                stats[f"cache {resp.headers.get('X-Cache-Status')}"] += 1
                assert resp.status != 200 or body[:1] == b"G", "not an MPEG-TS segment"
            had.add(name)
        await asyncio.sleep(random.uniform(1.5, 2.0))


async def test_through_nginx_the_page_plays_and_the_origin_serves_a_segment_at_most_twice(
    meeting, tmp_path: Path
) -> None:
    chromium = ensure_chromium()
    assert chromium is not None, "chromium is not installed"
    from playwright.async_api import async_playwright

    url = meeting["url"]
    site = meeting["app"][SITE_KEY]
    async with aiohttp.ClientSession() as http:
        await rest(http, url, "PUT", f"/api/rooms/{ROOM}/program", {"layout": "single", "slots": ["hall-a"]})
        public = await rest(http, url, "GET", f"/api/rooms/{ROOM}/public")
        await rest(http, url, "POST", f"/api/rooms/{ROOM}/commands", {"type": "start_broadcast"})
        with nginx(tmp_path / "nginx", url) as front:
            async with async_playwright() as p:
                browser = await p.chromium.launch(executable_path=str(chromium), args=chromium_args())
                try:
                    page = await browser.new_page(viewport=PHONE)
                    console: list[str] = []
                    page.on("console", lambda m: console.append(m.text))
                    page.on("requestfailed", lambda r: console.append(f"failed {r.url} {r.failure}"))
                    page.on(
                        "response",
                        lambda r: console.append(f"{r.status} {r.url}") if r.status >= 400 else None,
                    )
                    await page.goto(f"{front}/w/{public['code']}")
                    await eventually(
                        lambda: page.evaluate(
                            """() => { const v = document.getElementById('player');
                            if (v.readyState < 2 || !v.videoWidth) return null;
                            const c = document.createElement('canvas'); c.width = 64; c.height = 36;
                            const g = c.getContext('2d'); g.drawImage(v, 0, 0, 64, 36);
                            const d = g.getImageData(32, 18, 1, 1).data; return [d[0], d[1], d[2]]; }"""
                        ),
                        lambda rgb: rgb is not None and nearest_colour(tuple(rgb)) == 2,
                        60,
                        "the page plays hall-a's blue through nginx",
                    )
                except AssertionError:
                    state = await page.evaluate(
                        "() => { const v = document.getElementById('player');"
                        " return {engine: v.dataset.engine, ready: v.readyState,"
                        " err: v.error && v.error.message, hidden: v.hidden,"
                        " status: document.getElementById('status').textContent}; }"
                    )
                    raise AssertionError(f"{state} {console[-20:]}") from None
                finally:
                    await browser.close()

            # A crowd of viewers through the cache: the origin hardly notices them.
            before = dict(site.origin_requests)
            stats: Counter[str] = Counter()
            connector = aiohttp.TCPConnector(limit=200)
            async with aiohttp.ClientSession(connector=connector) as crowd:
                until = time.monotonic() + WATCH_S
                await asyncio.gather(*(viewer(crowd, front, until, stats) for _ in range(VIEWERS)))
            log(f"nginx: {VIEWERS} viewers for {WATCH_S:.0f} s: {dict(stats)}")
            assert stats["segment 200"] >= VIEWERS * 3 and not any(
                k.endswith((" 404", " 502", " 503", " 500")) for k in stats
            ), stats
            served = {
                path: count - before.get(path, 0)
                for path, count in site.origin_requests.items()
                if count > before.get(path, 0)
            }
            segments = {p: n for p, n in served.items() if p.endswith(".ts")}
            assert segments, served
            assert max(segments.values()) <= 2, segments
            playlist = served.get(f"{ROOM}/index.m3u8", 0)
            assert playlist <= 3 * WATCH_S, (playlist, stats["playlist 200"])
            log(
                f"origin: {len(segments)} segments, at most {max(segments.values())} request each, "
                f"{playlist} playlists"
            )


def test_nginx_serves_the_live_files_straight_from_the_data_directory(tmp_path: Path) -> None:
    """The locations docs/live.md gives for nginx serving /live/ without the server, as written
    there (only the root changed): the right types and cache headers, nothing else served."""
    import urllib.error
    import urllib.request

    doc = (Path(__file__).resolve().parent.parent / "docs" / "live.md").read_text(encoding="utf-8")
    block = re.search(r"```nginx\n(location ~ \^/live/.*?)```", doc, re.S)
    assert block, "docs/live.md lost its nginx locations for /live/"
    data = tmp_path / "data"
    live = data / "live" / "council"
    live.mkdir(parents=True)
    (live / "index.m3u8").write_text("#EXTM3U\n#EXTINF:2.0,\nseg-00001.ts\n")
    (live / "seg-00001.ts").write_bytes(b"G" + bytes(187))
    (live / "notes.txt").write_text("private")
    locations = block.group(1).replace("/var/lib/conference", str(data))
    directory = tmp_path / "nginx"
    directory.mkdir()
    port = free_port()
    conf = directory / "nginx.conf"
    conf.write_text(
        f"""worker_processes 1;
user root;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    server {{
        listen 127.0.0.1:{port};
        {locations}
        location / {{ return 404; }}
    }}
}}
"""
    )
    process = subprocess.Popen([str(NGINX), "-c", str(conf), "-p", str(directory), "-g", "daemon off;"])
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.1)
        base = f"http://127.0.0.1:{port}/live/council"
        with urllib.request.urlopen(f"{base}/index.m3u8") as resp:
            assert resp.headers["Content-Type"] == "application/vnd.apple.mpegurl"
            assert resp.headers["Cache-Control"] == "public, max-age=1"
            assert resp.read().startswith(b"#EXTM3U")
        with urllib.request.urlopen(f"{base}/seg-00001.ts") as resp:
            assert resp.headers["Content-Type"] == "video/mp2t"
            assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
            assert len(resp.read()) == 188
        for path in ("notes.txt", "../../secret", "seg-x.ts"):
            try:
                urllib.request.urlopen(f"{base}/{path}")
                raise AssertionError(f"{path} was served")
            except urllib.error.HTTPError as exc:
                assert exc.code == 404, path
    finally:
        process.terminate()
        process.wait(10)
