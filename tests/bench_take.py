"""The take as a real Chromium venue sees it (not collected by pytest): from the chair's program
change to the new source's first picture on the venue's screen.

    python tests/bench_take.py [--takes 20] [--every 1.5] [--load N]

A `conference serve` process and two Chromium venues (each its own browser process with a
solid-colour camera: red, blue), both showing the program's single slot. The program alternates
between them --takes times; each venue's page timestamps every colour change of its slot as the
frame is presented (``requestVideoFrameCallback``, wall clock), and the take's latency is the time
from just before the REST call to the first presented frame of the new colour. Prints each
latency, p50/p95/max, and the server's own keyframe wait (switch_wait_us) over the same takes.

With ``--load N`` the same server also carries ``conference bench --endpoints N`` in another room
(started 20 s before the takes, its load processes at nice 10, as the benchmark runs them), so the
takes are measured with the meeting's load beside them; its report is printed after the takes. On
a 2-core machine the two Chromiums, the load processes and the server share the cores: the figure
is of a starved machine as much as of the server.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from browser_util import (  # noqa: E402
    ADMIN_KEY,
    COLOURS,
    RunningServer,
    chromium_args,
    colour_name,
    ensure_chromium,
    eventually,
    server_process,
    write_y4m,
)
from playwright.async_api import async_playwright  # noqa: E402

VENUES = {"hall-a": "red", "hall-b": "blue"}
ROOM = "council"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}

# Every presented frame of the program's slot 0: its centre pixel's colour, when it changes.
WATCH_JS = """() => {
  window.__changes = [];
  const canvas = document.createElement('canvas');
  canvas.width = 16; canvas.height = 16;
  const ctx = canvas.getContext('2d', {willReadFrequently: true});
  let watched = null, last = null;
  const step = (now, meta) => {
    const video = document.querySelector("#program [data-slot='0'] video");
    if (video !== watched) { watched = video; }
    if (video && video.videoWidth) {
      ctx.drawImage(video, 0, 0, 16, 16);
      const [r, g, b] = ctx.getImageData(8, 8, 1, 1).data;
      const key = `${r >> 5},${g >> 5},${b >> 5}`;
      if (key !== last) { last = key; window.__changes.push([performance.timeOrigin + now, [r, g, b]]); }
    }
    (video || document.querySelector('video')).requestVideoFrameCallback(step);
  };
  const start = () => {
    const v = document.querySelector("#program [data-slot='0'] video");
    if (!v) { setTimeout(start, 100); return; }
    v.requestVideoFrameCallback(step);
  };
  start();
}"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


async def program(http: aiohttp.ClientSession, url: str, identity: str) -> None:
    body = {"layout": "single", "slots": [identity]}
    async with http.put(f"{url}/api/rooms/{ROOM}/program", json=body, headers=ADMIN) as resp:
        assert resp.status == 200, await resp.text()


async def switch_wait(http: aiohttp.ClientSession, url: str) -> dict:
    async with http.get(f"{url}/api/stats", headers=ADMIN) as resp:
        return (await resp.json())["media"]["switch_wait_us"]


LOAD_WARMUP_S = 20


async def start_load(server: RunningServer, endpoints: int, seconds: float) -> asyncio.subprocess.Process:
    """``conference bench`` against this server in its own room, the server's CPU measured."""
    args = [sys.executable, "-m", "signaling", "bench", "--url", server.url, "--admin-key", ADMIN_KEY]
    args += ["--server-pid", str(server.process.pid), "--endpoints", str(endpoints)]
    args += ["--duration", f"{seconds:.0f}", "--room", "load", "--load-nice", "10"]
    return await asyncio.create_subprocess_exec(
        *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )


async def main(takes: int, every: float, load: int) -> None:
    if ensure_chromium() is None:
        raise SystemExit("chromium is not installed")
    tmp = Path(tempfile.mkdtemp(prefix="bench-take-"))
    load_report = b""
    async with server_process(tmp / "data", media=True) as server, async_playwright() as pw:
        browsers, tabs = [], {}
        loader = None
        try:
            if load:
                loader = await start_load(server, load, takes * every + LOAD_WARMUP_S)
                await asyncio.sleep(LOAD_WARMUP_S)
            for identity, colour in VENUES.items():
                video = write_y4m(tmp / f"{identity}.y4m", COLOURS[colour], width=640, height=360, fps=30)
                browser = await pw.chromium.launch(
                    executable_path=str(ensure_chromium()), args=chromium_args(video)
                )
                browsers.append(browser)
                tab = await (await browser.new_context(viewport={"width": 960, "height": 540})).new_page()
                await tab.goto(server.page_url("venue", server.token(ROOM, identity, "venue", identity)))
                tabs[identity] = tab
            for identity, tab in tabs.items():
                await eventually(
                    lambda t=tab: t.evaluate(
                        "(c => c && [c.state, c.mediaState])(window.conference?.client)"
                    ),
                    lambda s: s == ["joined", "connected"],
                    45,
                    f"{identity} connected",
                )
            async with aiohttp.ClientSession() as http:
                await program(http, server.url, "hall-a")
                await asyncio.sleep(3)
                for tab in tabs.values():
                    await tab.evaluate(WATCH_JS)
                await asyncio.sleep(1)
                before = await switch_wait(http, server.url)
                sent: list[tuple[float, str]] = []
                for i in range(takes):
                    identity = list(VENUES)[(i + 1) % 2]
                    sent.append((time.time(), identity))
                    await program(http, server.url, identity)
                    await asyncio.sleep(every)
                await asyncio.sleep(1.5)
                after = await switch_wait(http, server.url)
            if loader is not None:
                load_report, _ = await asyncio.wait_for(loader.communicate(), 180)
            latencies: dict[str, list[float]] = {}
            for viewer, tab in tabs.items():
                changes = await tab.evaluate("window.__changes")
                for at, identity in sent:
                    want = VENUES[identity]
                    shown = [t for t, rgb in changes if t / 1000 >= at and colour_name(rgb) == want]
                    if shown:
                        latencies.setdefault(viewer, []).append(shown[0] / 1000 - at)
        finally:
            for browser in browsers:
                await browser.close()
            if loader is not None and loader.returncode is None:
                loader.kill()
                await loader.wait()
    every_latency = [x for values in latencies.values() for x in values]
    for viewer, values in latencies.items():
        print(
            f"{viewer}: {len(values)} of {takes} takes seen: "
            + ", ".join(f"{x * 1000:.0f}" for x in values)
            + " ms"
        )
    if every_latency:
        p50, p95 = statistics.median(every_latency) * 1000, percentile(every_latency, 95) * 1000
        print(
            f"take to picture at the venues: n={len(every_latency)} p50 {p50:.0f} ms, p95 {p95:.0f} ms, "
            f"max {max(every_latency) * 1000:.0f} ms"
        )
    if load_report:
        print(f"--- the load beside the takes (conference bench --endpoints {load}) ---")
        print(load_report.decode(errors="replace").rstrip())
    count = after["count"] - before["count"]
    print(
        f"server keyframe wait over the run (all switches since start, {count} in the window): "
        f"p50 {after['p50'] / 1000 if after['p50'] is not None else None} ms, "
        f"p95 {after['p95'] / 1000 if after['p95'] is not None else None} ms"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--takes", type=int, default=20)
    parser.add_argument("--every", type=float, default=1.5, help="seconds between takes")
    parser.add_argument("--load", type=int, default=0, help="endpoints of a bench meeting beside the takes")
    args = parser.parse_args()
    asyncio.run(main(args.takes, args.every, args.load))
