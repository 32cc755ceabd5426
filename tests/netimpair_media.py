"""Two Chromium venues over an impaired link (../shared/netimpair), through the server or peer to
peer: venue A inside the network namespace publishes a noisy camera (~1.4 Mbit/s), venue B on the
host receives it; getStats() windows of B's inbound video and A's outgoing estimate.

    python tests/netimpair_media.py --link 50,0,5 --mode sfu --seconds 60
    python tests/netimpair_media.py --link 50,0,0,50,0,0,600 --mode p2p --seconds 60

Needs root (the namespace); used by tests/test_netimpair.py and for docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from browser_util import chromium_args, ensure_chromium, rest, server_process

IMPAIR = Path("/work/shared/netimpair/impair")
SERVER_COUNTERS = (
    "keyframe_requests_relayed",
    "keyframe_requests_sent",
    "nacks_received",
    "nacks_answered",
    "nacks_answered_rtx",
    "nacks_sent",
    "nacks_given_up",
    "srtp_unprotect_errors",
    "downlink_limits",
)
_servers: list[Any] = []  # the server of the venues being measured (sfu mode)
HOST_ADDRESS, NS_ADDRESS, NAMESPACE = "10.77.0.1", "10.77.0.2", "imp"


def namespace_problem() -> str | None:
    """Why the impaired link cannot be made here, or None (it is up)."""
    if os.geteuid() != 0:
        return "the network namespace needs root"
    if not IMPAIR.exists():
        return f"{IMPAIR} is missing"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is missing"
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    if NAMESPACE not in listed.split():
        made = subprocess.run([str(IMPAIR), "up"], capture_output=True, text=True, timeout=120)
        if made.returncode != 0:
            return f"impair up failed: {(made.stderr or made.stdout).strip()[-300:]}"
        # Made here: taken down when this process ends (its delay daemon would otherwise stay).
        atexit.register(take_namespace_down)
    return None


def take_namespace_down() -> None:
    subprocess.run([str(IMPAIR), "down"], capture_output=True, text=True, timeout=60, check=False)


def set_link(link: list[str]) -> None:
    subprocess.run([str(IMPAIR), "set", *link], check=True, capture_output=True, timeout=30)


def noisy_camera(path: Path, width: int = 640, height: int = 360, frames: int = 16, fps: int = 15) -> Path:
    """A grey camera with +-20 luma noise in every frame: it loads the encoder (~1.4 Mbit/s)."""
    rng = np.random.default_rng(7)
    chroma = np.full((height // 2, width // 2), 128, dtype=np.uint8).tobytes()
    with path.open("wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            luma = (110 + rng.integers(-20, 21, (height, width))).astype(np.uint8).tobytes()
            f.write(b"FRAME\n" + luma + chroma + chroma)
    return path


def namespace_chromium(tmp: Path) -> Path:
    wrapper = tmp / "chromium-in-namespace"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {NAMESPACE} {ensure_chromium()} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


# getStats of the receiving venue (B): the inbound video from A; of the publishing venue (A): its
# estimate and what it sends. In the server mode the pages' RTCPeerConnection is window.conference's.
STATS_JS = """async (wantSsrcFrom) => {
  const pc = window.__pc || (window.conference && window.conference.client && window.conference.client.pc);
  if (!pc) return null;
  const out = {inbound: [], outbound: [], pair: null};
  for (const s of (await pc.getStats()).values()) {
    if (s.type === 'inbound-rtp' && s.kind === 'video') out.inbound.push({
      ssrc: s.ssrc, framesDecoded: s.framesDecoded || 0, freezeCount: s.freezeCount || 0,
      totalFreezesDuration: s.totalFreezesDuration || 0, jitterBufferDelay: s.jitterBufferDelay || 0,
      jitterBufferTargetDelay: s.jitterBufferTargetDelay || 0,
      jitterBufferMinimumDelay: s.jitterBufferMinimumDelay || 0,
      jitterBufferEmittedCount: s.jitterBufferEmittedCount || 0,
      packetsLost: s.packetsLost || 0, nackCount: s.nackCount || 0, pliCount: s.pliCount || 0,
      bytesReceived: s.bytesReceived || 0, framesPerSecond: s.framesPerSecond || 0,
      retransmittedPacketsReceived: s.retransmittedPacketsReceived || 0,
      fecPacketsReceived: s.fecPacketsReceived || 0, fecPacketsDiscarded: s.fecPacketsDiscarded || 0});
    if (s.type === 'outbound-rtp' && s.kind === 'video') out.outbound.push({
      bytesSent: s.bytesSent || 0, retransmittedBytesSent: s.retransmittedBytesSent || 0,
      nackCount: s.nackCount || 0, pliCount: s.pliCount || 0, targetBitrate: s.targetBitrate || 0,
      framesPerSecond: s.framesPerSecond || 0, packetsSent: s.packetsSent || 0});
    if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') out.pair = {
      availableOutgoingBitrate: s.availableOutgoingBitrate || 0,
      currentRoundTripTime: s.currentRoundTripTime || 0};
  }
  return out;
}"""

P2P_JS = """async () => {
  const stream = await navigator.mediaDevices.getUserMedia({video: true, audio: false});
  const pc = new RTCPeerConnection({iceServers: []});
  window.__pc = pc;
  window.__candidates = [];
  pc.onicecandidate = (e) => { if (e.candidate) window.__candidates.push(e.candidate.toJSON()); };
  for (const t of stream.getTracks()) pc.addTrack(t, stream);
  const v = document.createElement('video'); v.autoplay = true; v.muted = true; document.body.append(v);
  pc.ontrack = (e) => { v.srcObject = e.streams[0]; };
  return true;
}"""


OFFER_JS = """async () => {
  const o = await __pc.createOffer(); await __pc.setLocalDescription(o); return o.sdp;
}"""
ANSWER_JS = """async (sdp) => {
  await __pc.setRemoteDescription({type: 'offer', sdp});
  const a = await __pc.createAnswer(); await __pc.setLocalDescription(a); return a.sdp;
}"""
ADD_CANDIDATE_JS = "async (c) => { try { await __pc.addIceCandidate(c); } catch (e) {} }"


async def browser_on_link(pw: Any, executable: Path, camera: Path, port: str) -> Any:
    # getUserMedia needs a secure origin: the host's address on the link is made one (with its port).
    secure = f"--unsafely-treat-insecure-origin-as-secure=http://{HOST_ADDRESS}:{port}"
    return await pw.chromium.launch(executable_path=str(executable), args=[*chromium_args(camera), secure])


@contextlib.asynccontextmanager
async def two_venues(mode: str, tmp: Path) -> AsyncIterator[tuple[Any, Any]]:
    """(page A in the namespace, page B on the host), connected through the server or directly."""
    from playwright.async_api import async_playwright

    camera_a = noisy_camera(tmp / "a.y4m")
    from browser_util import write_y4m

    camera_b = write_y4m(tmp / "b.y4m", (30, 60, 220), 320, 180)
    async with contextlib.AsyncExitStack() as stack:
        server = await stack.enter_async_context(
            server_process(
                tmp / "data", media=True, host="0.0.0.0", extra_args=["--rtc-interface", HOST_ADDRESS]
            )
        )
        port = server.url.rsplit(":", 1)[1]
        if mode == "sfu":
            _servers.append(server)
            stack.callback(_servers.remove, server)
        pw = await stack.enter_async_context(async_playwright())
        browser_a = await browser_on_link(pw, namespace_chromium(tmp), camera_a, port)
        stack.push_async_callback(browser_a.close)
        browser_b = await browser_on_link(pw, ensure_chromium(), camera_b, port)  # type: ignore[arg-type]
        stack.push_async_callback(browser_b.close)
        a = await (await browser_a.new_context(viewport={"width": 640, "height": 360})).new_page()
        b = await (await browser_b.new_context(viewport={"width": 640, "height": 360})).new_page()
        if mode == "sfu":
            await rest(server, "POST", "/api/rooms", {"room": "link", "title": "link test"})
            url_a = f"http://{HOST_ADDRESS}:{port}/venue?token=" + server.token("link", "hall-a", "venue")
            url_b = f"http://127.0.0.1:{port}/venue?token=" + server.token("link", "hall-b", "venue")
            await a.goto(url_a)
            await b.goto(url_b)
            for page in (a, b):
                await joined(page, 40)
            await rest(
                server,
                "PUT",
                "/api/rooms/link/program",
                {"layout": "side-by-side", "slots": ["hall-a", "hall-b"]},
            )
        else:
            await a.goto(f"http://{HOST_ADDRESS}:{port}/healthz")
            await b.goto(f"http://127.0.0.1:{port}/healthz")
            await a.evaluate(P2P_JS)
            await b.evaluate(P2P_JS)
            offer = await a.evaluate(OFFER_JS)
            answer = await b.evaluate(ANSWER_JS, offer)
            await a.evaluate(
                "async (sdp) => { await __pc.setRemoteDescription({type: 'answer', sdp}); }", answer
            )
            await asyncio.sleep(1.0)
            for src, dst in ((a, b), (b, a)):
                for candidate in await src.evaluate("window.__candidates"):
                    await dst.evaluate(
                        "async (c) => { try { await __pc.addIceCandidate(c); } catch (e) {} }", candidate
                    )
        yield a, b


async def joined(page: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    probe = "(c => c ? [c.state, c.mediaState] : null)(window.conference?.client)"
    while await page.evaluate(probe) != ["joined", "connected"]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"a venue did not join: {await page.evaluate(probe)}")
        await asyncio.sleep(0.3)


async def wait_for_video(b: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = await b.evaluate(STATS_JS, None)
        if stats and any(s["framesDecoded"] > 30 for s in stats["inbound"]):
            return
        await asyncio.sleep(0.5)
    raise RuntimeError("venue B never decoded venue A's video")


def _inbound_of_a(stats: dict[str, Any]) -> dict[str, Any]:
    # The busiest inbound video stream is A's noisy camera (B's own image comes back small).
    return max(stats["inbound"], key=lambda s: s["bytesReceived"])


async def _server_counters() -> dict[str, int]:
    if not _servers:
        return {}
    stats = await rest(_servers[-1], "GET", "/api/stats")
    media = stats.get("media", stats)
    return {k: int(media.get(k, 0)) for k in SERVER_COUNTERS}


async def measure(a: Any, b: Any, seconds: float) -> dict[str, Any]:
    """One window: B's freezes and jitter buffer for A's video; A's estimate and sending."""
    server0 = await _server_counters()
    b0, a0 = await b.evaluate(STATS_JS, None), await a.evaluate(STATS_JS, None)
    estimates: list[float] = []
    started = time.monotonic()
    sending: list[int] = []  # A's video (every layer) per second of the window, kbit/s
    frozen: list[float] = []  # B's seconds frozen so far, at each second of the window
    frozen_at_start = _inbound_of_a(b0)["totalFreezesDuration"]
    print("window starts at", time.time(), flush=True)
    last = _sent_bytes(a0)
    while time.monotonic() - started < seconds:
        await asyncio.sleep(1.0)
        now = await a.evaluate(STATS_JS, None)
        if now and now["pair"]:
            estimates.append(now["pair"]["availableOutgoingBitrate"])
        if now:
            sending.append(round(8 * (_sent_bytes(now) - last) / 1000))
            last = _sent_bytes(now)
        seen = _inbound_of_a(await b.evaluate(STATS_JS, None))
        frozen.append(round(seen["totalFreezesDuration"] - frozen_at_start, 2))
    b1, a1 = await b.evaluate(STATS_JS, None), await a.evaluate(STATS_JS, None)
    server1 = await _server_counters()
    elapsed = time.monotonic() - started
    i0, i1 = _inbound_of_a(b0), _inbound_of_a(b1)
    # A's outgoing video summed over its simulcast layers (one stream peer to peer).
    o0, o1 = _outbound_sum(a0), _outbound_sum(a1)
    emitted = i1["jitterBufferEmittedCount"] - i0["jitterBufferEmittedCount"]
    sent = o1["bytesSent"] - o0["bytesSent"]
    tail = estimates[len(estimates) // 2 :] or [0.0]
    return {
        "seconds": round(elapsed, 1),
        "freezes": i1["freezeCount"] - i0["freezeCount"],
        "frozen_s": round(i1["totalFreezesDuration"] - i0["totalFreezesDuration"], 2),
        "fps": round((i1["framesDecoded"] - i0["framesDecoded"]) / elapsed, 1),
        "jitter_buffer_target_ms": round(
            1000 * (i1["jitterBufferTargetDelay"] - i0["jitterBufferTargetDelay"]) / emitted, 1
        )
        if emitted
        else None,
        "jitter_buffer_ms": round(1000 * (i1["jitterBufferDelay"] - i0["jitterBufferDelay"]) / emitted, 1)
        if emitted
        else None,
        "received_kbit_s": round(8 * (i1["bytesReceived"] - i0["bytesReceived"]) / elapsed / 1000),
        "sent_kbit_s": round(8 * sent / elapsed / 1000),
        "retransmitted_pct": round(
            100 * (o1["retransmittedBytesSent"] - o0["retransmittedBytesSent"]) / sent, 1
        )
        if sent
        else None,
        "keyframe_requests_at_a": o1["pliCount"] - o0["pliCount"],
        # ULPFEC/FlexFEC packets B received from A (and dropped as of no use).
        "fec_packets_received": i1["fecPacketsReceived"] - i0["fecPacketsReceived"],
        "fec_packets_discarded": i1["fecPacketsDiscarded"] - i0["fecPacketsDiscarded"],
        "nacks_at_a": o1["nackCount"] - o0["nackCount"],
        # A's own downlink: what it received as retransmissions (RTX streams) of all its slots.
        "retransmitted_packets_at_a": sum(s["retransmittedPacketsReceived"] for s in a1["inbound"])
        - sum(s["retransmittedPacketsReceived"] for s in a0["inbound"]),
        "estimate_kbit_s_second_half": [round(min(tail) / 1000), round(max(tail) / 1000)],
        "estimate_kbit_s_end": round(estimates[-1] / 1000) if estimates else None,
        "jitter_buffer_minimum_ms": round(
            1000 * (i1["jitterBufferMinimumDelay"] - i0["jitterBufferMinimumDelay"]) / emitted, 1
        )
        if emitted
        else None,
        "server": {k: server1[k] - server0.get(k, 0) for k in server1},
        "sent_kbit_s_each_second": sending,
        "frozen_s_each_second": frozen,
    }


def _outbound_sum(stats: dict[str, Any]) -> dict[str, int]:
    keys = ("bytesSent", "retransmittedBytesSent", "nackCount", "pliCount")
    return {k: sum(int(s[k]) for s in stats["outbound"]) for k in keys}


def _sent_bytes(stats: dict[str, Any] | None) -> int:
    return sum(int(s["bytesSent"]) for s in stats["outbound"]) if stats else 0


async def sample_sending(a: Any, seconds: float) -> list[int]:
    """A's video sending rate (kbit/s, every layer) in each second of ``seconds``."""
    rates: list[int] = []
    last = _sent_bytes(await a.evaluate(STATS_JS, None))
    started = time.monotonic()
    while time.monotonic() - started < seconds - 0.5:
        await asyncio.sleep(1.0)
        now = _sent_bytes(await a.evaluate(STATS_JS, None))
        rates.append(round(8 * (now - last) / 1000))
        last = now
    return rates


def settled_after(rates: list[int], cap_kbit_s: float) -> int | None:
    """Seconds from the link's change until A's sending stayed under the cap for good (None: never)."""
    for start in range(len(rates)):
        if all(r <= cap_kbit_s for r in rates[start:]):
            return start
    return None


async def run(
    mode: str, link: list[str], seconds: float, warmup: float, clear: float = 0.0
) -> dict[str, Any]:
    problem = namespace_problem()
    if problem:
        raise RuntimeError(problem)
    set_link(["0", "0", "0"])
    for attempt in range(3):  # a saturated machine can miss server_process's 20 s start deadline
        try:
            with tempfile.TemporaryDirectory(prefix="netimpair-") as tmpdir:
                async with two_venues(mode, Path(tmpdir)) as (a, b):
                    await wait_for_video(b, 40)
                    # On a clear link first, so A's estimate has climbed before the link changes.
                    before = await sample_sending(a, clear) if clear else []
                    set_link(link)
                    warming = await sample_sending(a, warmup)
                    result = await measure(a, b, seconds)
                    result["sent_kbit_s_each_second"] = warming + result["sent_kbit_s_each_second"]
                    result["sent_kbit_s_before"] = before
                    if len(link) >= 7 and float(link[6]) > 0:
                        # The uplink cap: how soon A's sending fits under it (issue 12: within 10 s).
                        result["settled_after_s"] = settled_after(
                            result["sent_kbit_s_each_second"], float(link[6])
                        )
            break
        except RuntimeError as exc:
            if "did not start" not in str(exc) or attempt == 2:
                raise
    set_link(["0", "0", "0"])
    return {"mode": mode, "link": ",".join(link), **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("sfu", "p2p"), default="sfu")
    parser.add_argument("--link", default="50,0,5", help="impair set arguments, comma-separated")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--warmup", type=float, default=5)
    parser.add_argument("--clear", type=float, default=0, help="seconds on a clear link before the change")
    args = parser.parse_args()
    result = asyncio.run(run(args.mode, args.link.split(","), args.seconds, args.warmup, args.clear))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
