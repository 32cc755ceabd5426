"""Test helpers for the telephone gateway: a real baresip (Debian's package) driven over its
ctrl_tcp interface, tone files, and frequency checks of recorded audio with numpy."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

BARESIP = shutil.which("baresip")
MODULES = Path("/usr/lib/baresip/modules")


def need_baresip() -> None:
    if BARESIP is None or not MODULES.is_dir():
        message = "baresip is not installed (tests/run.sh installs Debian's package)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI must run these, not skip them quietly
        pytest.skip(message)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_sip_port() -> int:
    """A port free for UDP and TCP at once (baresip's SIP listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise OSError("no port free for both UDP and TCP")


def write_wav(path: Path, pcm: np.ndarray, rate: int, channels: int = 1) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.repeat(pcm.astype("<i2"), channels).tobytes())


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Mono int16 samples (channels averaged) and the rate."""
    with wave.open(str(path), "rb") as w:
        rate, channels = w.getframerate(), w.getnchannels()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    if channels > 1:
        data = data.reshape(-1, channels).mean(axis=1).astype(np.int16)
    return data, rate


def sine(freq: float, seconds: float, rate: int, level: float = 8000.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (level * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def dominant(pcm: np.ndarray, rate: int) -> float:
    """The strongest frequency (Hz) of a signal."""
    x = pcm.astype(np.float64) * np.hanning(len(pcm))
    spectrum = np.abs(np.fft.rfft(x))
    spectrum[:5] = 0  # DC
    return float(spectrum.argmax() * rate / len(pcm))


def band_share(pcm: np.ndarray, rate: int, freq: float, width: float = 30.0) -> float:
    """The part of the signal's energy within ``width`` Hz of ``freq``."""
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(len(pcm)))) ** 2
    freqs = np.fft.rfftfreq(len(pcm), 1 / rate)
    total = spectrum[freqs > 50].sum()
    return float(spectrum[np.abs(freqs - freq) <= width].sum() / total) if total else 0.0


class Baresip:
    """One baresip user agent: an audio file as its microphone, what it hears dumped to WAV."""

    def __init__(self, directory: Path, source: Path, codecs: str = "PCMU", user: str = "caller") -> None:
        self.user = user
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.source = source
        self.codecs = codecs
        self.ctrl_port = free_port()
        self.sip_port = free_sip_port()
        self.events: list[dict[str, Any]] = []
        self.output: list[str] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._responses: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Start baresip; a port taken between choosing and binding it (the machine's other
        sockets come and go) means new ports and another try (three in all)."""
        need_baresip()
        for attempt in range(3):
            try:
                await self._start_once()
                return
            except RuntimeError:
                if attempt == 2 or not any("Address already in use" in line for line in self.output):
                    raise
            await self.stop()
            self.output.clear()
            self.ctrl_port, self.sip_port = free_port(), free_sip_port()

    async def _start_once(self) -> None:
        config = f"""
poll_method epoll
net_interface 127.0.0.1
sip_listen 127.0.0.1:{self.sip_port}
module_path {MODULES}
module g711.so
module g722.so
module opus.so
module aufile.so
module alsa.so
module sndfile.so
module_app account.so
module_app menu.so
module_app ctrl_tcp.so
ctrl_tcp_listen 127.0.0.1:{self.ctrl_port}
audio_player alsa,null
audio_source aufile,{self.source}
snd_path {self.dir}
rtp_timeout 0
"""
        (self.dir / "config").write_text(config)
        (self.dir / "accounts").write_text(
            f"<sip:{self.user}@127.0.0.1>;regint=0;audio_codecs={self.codecs}\n"
        )
        self._proc = await asyncio.create_subprocess_exec(
            BARESIP,
            "-f",
            str(self.dir),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self._tasks.append(asyncio.get_running_loop().create_task(self._read_output()))
        for _ in range(100):
            try:
                self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.ctrl_port)
                break
            except OSError:
                await asyncio.sleep(0.05)
        else:
            raise RuntimeError("baresip did not open its control port:\n" + "\n".join(self.output[-30:]))
        self._tasks.append(asyncio.get_running_loop().create_task(self._read_ctrl()))

    async def _read_output(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        async for line in self._proc.stdout:
            self.output.append(line.decode(errors="replace").rstrip())

    async def _read_ctrl(self) -> None:
        assert self._reader is not None
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                length = int((await self._reader.readuntil(b":"))[:-1])
                data = json.loads(await self._reader.readexactly(length))
                await self._reader.readexactly(1)  # the netstring's ","
                if data.get("event"):
                    self.events.append(data)
                    self._changed.set()
                elif data.get("response"):
                    await self._responses.put(data)

    async def command(self, command: str, params: str = "") -> dict[str, Any]:
        assert self._writer is not None
        body = json.dumps({"command": command, "params": params, "token": command}).encode()
        self._writer.write(str(len(body)).encode() + b":" + body + b",")
        await self._writer.drain()
        return await asyncio.wait_for(self._responses.get(), 5.0)

    async def wait_event(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for event in self.events:
                if event.get("type") == kind:
                    return event
            remaining = deadline - loop.time()
            if remaining <= 0:
                seen = [e.get("type") for e in self.events]
                tail = "\n".join(self.output[-15:])
                raise AssertionError(
                    f"baresip: no {kind} within {timeout} s (events {seen}); it said:\n{tail}"
                )
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def dial(self, uri: str) -> None:
        await self.command("dial", uri)

    async def send_digits(self, digits: str, gap: float = 0.25) -> None:
        for key in digits:
            await self.command("sndcode", key)
            await asyncio.sleep(gap)

    async def hangup(self) -> None:
        await self.command("hangup")

    def heard(self) -> tuple[np.ndarray, int]:
        """What baresip decoded from the call (its sndfile dump of the far end)."""
        dumps = sorted(self.dir.glob("dump-*-dec.wav"))
        if not dumps:
            raise AssertionError(
                f"baresip wrote no dump in {self.dir}: {sorted(p.name for p in self.dir.iterdir())}"
            )
        return read_wav(dumps[-1])

    async def stop(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.command("quit"), 2.0)
            self._writer.close()
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._proc.wait(), 3.0)
            if self._proc.returncode is None:
                self._proc.terminate()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._proc.wait(), 3.0)
            if self._proc.returncode is None:
                self._proc.kill()
                await self._proc.wait()
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        self._writer = self._reader = None


class WsSession:
    """The server's offer and the answer over a test's signaling client, for an aiortc
    ``test_sfu_support.Endpoint`` that joins through the real server."""

    def __init__(self, client: Any) -> None:
        self.client = client

    async def create_offer(self) -> dict[str, Any]:
        return await self.client.wait_for(lambda m: m["type"] == "offer", timeout=20)

    async def set_answer(self, sdp: str) -> None:
        await self.client.ok("answer", sdp=sdp)


def hears(endpoint: Any, freq: float, max_age: float = 0.3, tolerance: float = 40.0) -> bool:
    """Whether one of an aiortc endpoint's audio slots has decoded ``freq`` in the last 300 ms."""
    now = time.monotonic()
    for received in endpoint.audio_slots():
        if now - received.last_at < max_age:
            pitch = received.pitch()
            if pitch is not None and abs(pitch - freq) < tolerance:
                return True
    return False
