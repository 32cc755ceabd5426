"""Helpers for the browser tests: fake camera and microphone files, a real server on a free port,
Debian's headless Chromium with fake devices (one process per endpoint, since the fake capture
file is per process), and probes that read pixels and tones from a page's media elements."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import sys
import time
import wave
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"
SECRET = "browser-test-secret-0123456789abcdef"
ADMIN_KEY = "browser-test-admin-key-0123456789abcdef"

DESKTOP = {"width": 1440, "height": 900}
PHONE = {"width": 360, "height": 740}
# The sizes people use (issue 13): a venue's screen, a chair's laptops, phones upright and sideways.
VENUE_SCREEN = {"width": 1280, "height": 720}
CHAIR_LAPTOPS = [
    {"width": 1600, "height": 900},
    {"width": 1366, "height": 768},
    {"width": 1280, "height": 720},
]
PHONE_390 = {"width": 390, "height": 844}
PHONE_LANDSCAPE = {"width": 844, "height": 390}
CLERK_SCREEN = {"width": 1366, "height": 800}
# Media tests draw screens smaller: five software-composited browsers share two busy cores.
SMALL_SCREEN = {"width": 800, "height": 450}

# Feeds told apart by colour (RGB) and by tone (Hz).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 200, 40),
    "blue": (30, 60, 220),
    "yellow": (230, 210, 30),
}


def ensure_chromium() -> Path | None:
    """Debian's chromium, installed with apt-get when missing (as the test command promises)."""
    if CHROMIUM.exists():
        return CHROMIUM
    apt = shutil.which("apt-get")
    if apt is None:
        return None
    sudo = [] if _is_root() else ["sudo", "-n"]
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        subprocess.run(
            [*sudo, apt, "install", "-y", "--no-install-recommends", "chromium"], check=True, timeout=600
        )
    return CHROMIUM if CHROMIUM.exists() else None


def system_tool(name: str, package: str) -> str:
    """The path of a program from Debian's packages (nginx, prometheus, turnserver, ...), installed
    with apt-get when it is missing and we may; fails the test when it cannot be had."""
    import pytest

    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if path is None and _is_root():
        subprocess.run(["apt-get", "install", "-y", "-qq", package], check=False, capture_output=True)
        path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if path is None:
        pytest.fail(f"{name} is not installed and could not be installed with apt-get ({package})")
    return path


@contextlib.contextmanager
def nginx_process(directory: Path, config: str, port: int) -> Any:
    """Debian's nginx running ``config`` (a whole nginx.conf) with its files in ``directory``, until
    it listens on ``port`` of 127.0.0.1; stopped afterwards."""
    nginx = system_tool("nginx", "nginx")
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "nginx.conf"
    conf.write_text(config)
    process = subprocess.Popen(
        [nginx, "-c", str(conf), "-p", str(directory), "-g", "daemon off;"], stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            assert process.poll() is None, (
                f"nginx did not start: {process.stderr.read() if process.stderr else ''}"
            )
            assert time.monotonic() < deadline, "nginx did not listen"
            time.sleep(0.1)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _is_root() -> bool:
    import os

    return os.geteuid() == 0


def write_y4m(
    path: Path, rgb: tuple[int, int, int], width: int = 320, height: int = 180, frames: int = 5, fps: int = 15
) -> Path:
    """A solid-colour clip Chromium plays (looped) as the camera: YUV4MPEG2, planar 4:2:0."""
    r, g, b = rgb
    # BT.601 limited range, what Chromium's capture pipeline assumes for I420.
    y = round(16 + 0.257 * r + 0.504 * g + 0.098 * b)
    u = round(128 - 0.148 * r - 0.291 * g + 0.439 * b)
    v = round(128 + 0.439 * r - 0.368 * g - 0.071 * b)
    luma = np.full((height, width), y, dtype=np.uint8).tobytes()
    chroma_u = np.full((height // 2, width // 2), u, dtype=np.uint8).tobytes()
    chroma_v = np.full((height // 2, width // 2), v, dtype=np.uint8).tobytes()
    with path.open("wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            f.write(b"FRAME\n" + luma + chroma_u + chroma_v)
    return path


def write_tone(
    path: Path, hz: float, seconds: float = 2.0, rate: int = 48000, amplitude: float = 0.5
) -> Path:
    """A sine tone Chromium plays (looped) as the microphone: 16-bit mono WAV (``amplitude`` 0:
    a microphone in a silent room)."""
    n = int(seconds * rate)
    # A whole number of periods so the loop point does not click.
    periods = max(1, round(hz * seconds))
    samples = (amplitude * 32767 * np.sin(2 * np.pi * periods * np.arange(n) / n)).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return path


def chromium_args(video: Path | None = None, audio: Path | None = None) -> list[str]:
    args = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--autoplay-policy=no-user-gesture-required",
        # Keep hidden pages' timers and video running: several endpoints share one screen here.
        "--disable-background-timer-throttling",
        "--disable-renderer-backgrounding",
        "--disable-backgrounding-occluded-windows",
    ]
    if video is not None:
        args.append(f"--use-file-for-fake-video-capture={video}")
    if audio is not None:
        args.append(f"--use-file-for-fake-audio-capture={audio}")
    return args


# --- the server ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningServer:
    url: str
    log_file: Path | None = None
    process: Any = None  # the asyncio subprocess of server_process (to signal it), else None

    def token(self, room: str, identity: str, role: str, name: str | None = None, **kw: Any) -> str:
        from signaling.tokens import mint_token

        return mint_token(SECRET, room, identity, name or identity, role, 3600, **kw)

    def page_url(self, page: str, token: str) -> str:
        return f"{self.url}/{page}?token={token}"


@contextlib.asynccontextmanager
async def running_server(
    data_dir: Path, *, media: bool, port: int | None = None
) -> AsyncIterator[RunningServer]:
    """The real application (signaling.app.create_app) on 127.0.0.1 and a free port (or ``port``:
    a server started again where the pages look for it)."""
    from conference.config import Settings
    from signaling.app import create_app

    port = port or free_port()
    settings = Settings(
        host="127.0.0.1",
        port=port,
        data_dir=data_dir,
        secret=SECRET,
        admin_key=ADMIN_KEY,
        media=media,
        reconnect_grace_s=10.0,
        shutdown_timeout_s=2.0,
    )
    app = create_app(settings)
    runner = web.AppRunner(app, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield RunningServer(f"http://127.0.0.1:{port}")
    finally:
        await asyncio.wait_for(runner.cleanup(), 15)


def lan_address() -> str | None:
    """This machine's own address on its LAN (the interface a default route would use), or None.
    A UDP ``connect`` only picks the route: nothing is sent."""
    import ipaddress

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 9))
            address = str(s.getsockname()[0])
        except OSError:
            return None
    if ipaddress.ip_address(address).is_loopback or address == "0.0.0.0":
        return None
    return address


def self_signed_certificate(directory: Path, address: str) -> tuple[Path, Path]:
    """A throwaway certificate for ``address``, an IP address or a host name (as a venue would make
    one for a trial, see the README), written as PEM files: (cert, key). ``cryptography`` comes
    with aiortc (DTLS)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "conference.lan")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([_subject_name(address)]), False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def _subject_name(address: str) -> Any:
    import ipaddress

    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(address))
    except ValueError:
        return x509.DNSName(address)


@contextlib.asynccontextmanager
async def server_process(
    data_dir: Path,
    *,
    media: bool,
    host: str = "127.0.0.1",
    tls: tuple[Path, Path] | None = None,
    extra_args: list[str] | None = None,
    port: int | None = None,
    start_timeout: float = 20,
) -> AsyncIterator[RunningServer]:
    """``conference serve`` in its own process, as it runs in production: its event loop is not
    shared with the test's (Playwright's) one, which matters on a busy machine with media.
    ``tls`` is (cert, key): the server then speaks HTTPS and WSS only. ``port``: the one of a
    server that ran before (a restart), else a free one."""
    import aiohttp

    if port is None:
        with socket.socket() as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
    data_dir.mkdir(parents=True, exist_ok=True)
    log_file = data_dir / "server.log"
    args = [sys.executable, "-m", "signaling", "serve", "--host", host, "--port", str(port)]
    args += ["--data-dir", str(data_dir), "--secret", SECRET, "--admin-key", ADMIN_KEY]
    args += ["--reconnect-grace", "10", "--log-level", "WARNING"]
    if tls is not None:
        args += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    if not media:
        args.append("--no-media")
    args += extra_args or []
    root = Path(__file__).resolve().parent.parent
    with log_file.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(*args, cwd=root, stdout=out, stderr=subprocess.STDOUT)
    url = f"{'https' if tls else 'http'}://{host}:{port}"
    # The test's own self-signed certificate: the health check trusts it the way the browser does.
    verify = tls is None
    try:
        deadline = time.monotonic() + start_timeout
        async with aiohttp.ClientSession() as http:
            while True:
                if proc.returncode is not None:
                    raise RuntimeError(
                        f"server exited with {proc.returncode}: {log_file.read_text()[-2000:]}"
                    )
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{url}/healthz", ssl=verify) as res:
                        if res.status == 200:
                            break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server did not start: {log_file.read_text()[-2000:]}")
                await asyncio.sleep(0.2)
        yield RunningServer(url, log_file, proc)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


# --- the REST API, as an integration uses it ---------------------------------------------------


async def rest(
    server: RunningServer, method: str, path: str, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One admin-key REST call; fails the test unless it answers 200 (201 for a creation). Over
    HTTPS the server has the test's own self-signed certificate, which is not verified."""
    import aiohttp

    verify = not server.url.startswith("https:")
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method,
            f"{server.url}{path}",
            json=body,
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            ssl=verify,
        ) as res,
    ):
        assert res.status in (200, 201), f"{method} {path}: {res.status} {await res.text()}"
        return dict(await res.json())


async def set_program(server: RunningServer, layout: str, slots: list[str | None]) -> None:
    await rest(server, "PUT", "/api/rooms/council/program", {"layout": layout, "slots": slots})


# --- waiting and probing ---------------------------------------------------------------------


async def eventually(
    probe: Callable[[], Awaitable[Any]], accept: Callable[[Any], bool], timeout: float, what: str
) -> Any:
    """Poll ``probe`` until ``accept(value)``; fail with the last value seen after ``timeout``."""
    deadline = time.monotonic() + timeout
    value: Any = None
    while True:
        value = await probe()
        if accept(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout}s; last value: {value!r}")
        await asyncio.sleep(0.1)


# Reads the centre pixel of the <video> in a slot element (None before the first frame).
CENTRE_PIXEL_JS = """(node) => {
  const video = node.querySelector('video');
  if (!video || video.readyState < 2 || !video.videoWidth) return null;
  const canvas = document.createElement('canvas');
  canvas.width = 32; canvas.height = 18;
  const g = canvas.getContext('2d', {willReadFrequently: true});
  g.drawImage(video, 0, 0, 32, 18);
  const d = g.getImageData(16, 9, 1, 1).data;
  return [d[0], d[1], d[2]];
}"""

# The centre pixel of every visible program slot of a page, in one round trip: {slot: [r, g, b] or null}.
SLOT_PIXELS_JS = f"""() => {{
  const centre = {CENTRE_PIXEL_JS};
  const out = {{}};
  for (const n of document.querySelectorAll('#program [data-slot]:not([hidden])')) {{
    out[n.dataset.slot] = centre(n);
  }}
  return out;
}}"""

# The dominant frequency of each audio slot the page plays: [{mid, identity, hz, db}].
AUDIO_PEAKS_JS = """async () => {
  const client = window.conference.client;
  const ctx = window.__probeAudio || (window.__probeAudio = new AudioContext());
  await ctx.resume();
  const slots = client.audioTracks().filter((s) => s.track && s.track.readyState === 'live');
  const probes = slots.map((s) => {
    const source = ctx.createMediaStreamSource(new MediaStream([s.track]));
    const analyser = ctx.createAnalyser();
    analyser.fftSize = 8192;
    analyser.smoothingTimeConstant = 0;
    source.connect(analyser);
    return {s, source, analyser};
  });
  await new Promise((r) => setTimeout(r, 400));
  const out = [];
  for (const {s, source, analyser} of probes) {
    const bins = new Float32Array(analyser.frequencyBinCount);
    analyser.getFloatFrequencyData(bins);
    let best = 0;
    for (let i = 2; i < bins.length; i++) if (bins[i] > bins[best]) best = i;
    const hz = best * ctx.sampleRate / analyser.fftSize;
    out.push({mid: s.mid, identity: s.identity, hz, db: bins[best]});
    source.disconnect();
  }
  return out;
}"""


# What a page's video slots are doing, for failure messages.
VIDEO_DIAGNOSIS_JS = """async () => {
  const c = window.conference.client;
  const stats = c.pc ? await c.pc.getStats() : new Map();
  const byMid = {};
  for (const s of stats.values()) if (s.type === 'inbound-rtp') byMid[s.mid] = s;
  const slots = [...document.querySelectorAll('#program [data-slot]:not([hidden])')].map((n) => {
    const i = Number(n.dataset.slot);
    const v = n.querySelector('video');
    const mid = c.videoMids[i];
    const s = byMid[mid] || {};
    const track = c.videoTrack(i);
    return {slot: i, identity: n.dataset.identity, mid, ready: v.readyState, w: v.videoWidth,
            attached: !!v.srcObject, track: track ? track.readyState + (track.muted ? '/muted' : '') : null,
            packets: s.packetsReceived, frames: s.framesDecoded, keyframes: s.keyFramesDecoded,
            pli: s.pliCount};
  });
  return {slots, history: c.history.slice(-15)};
}"""


def colour_name(rgb: list[int] | None, tolerance: int = 60) -> str | None:
    """Which of COLOURS a pixel is (video coding shifts colours a little), or None."""
    if rgb is None:
        return None
    best, distance = None, 1e9
    for name, ref in COLOURS.items():
        d = max(abs(a - b) for a, b in zip(rgb, ref, strict=True))
        if d < distance:
            best, distance = name, d
    return best if distance <= tolerance else None


def screenshot_path(name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS / f"{name}.png"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
