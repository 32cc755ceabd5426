# ruff: noqa: RUF001 - the Mandarin prompts use Chinese punctuation on purpose
"""Voice prompts (Mandarin, then English) spoken by espeak-ng at first run and cached as 48 kHz
WAV files, and the short tones a caller hears in the meeting."""

from __future__ import annotations

import logging
import shutil
import subprocess
import wave
from pathlib import Path

import av
import numpy as np

from .codecs import FRAME, RATE

log = logging.getLogger(__name__)

# name -> (Mandarin, English)
TEXTS: dict[str, tuple[str, str]] = {
    "welcome": (
        "欢迎参加远程协商会议。请输入会议号，以井号键结束。",
        "Welcome. Please enter the meeting I D, followed by the hash key.",
    ),
    "pin": ("请输入会议密码，以井号键结束。", "Please enter the meeting PIN, followed by the hash key."),
    "wrong": (
        "会议号或密码不正确。请重新输入会议号，以井号键结束。",
        "The meeting I D or PIN is not correct. Please enter the meeting I D again.",
    ),
    "goodbye": ("错误次数过多，再见。", "Too many attempts. Goodbye."),
    "joined": ("您已进入会议。", "You are now in the meeting."),
    "unavailable": (
        "暂时无法进入会议，请稍后再拨。",
        "The meeting cannot be joined now. Please call again later.",
    ),
    "reconnecting": (
        "会议连接中断，正在重新连接，请稍候。",
        "The meeting connection was lost. Reconnecting, please hold.",
    ),
    "ended": ("会议连接已结束。再见。", "The meeting connection has ended. Goodbye."),
}
VOICES = ("cmn", "en")
PAUSE_S = 0.4


class PromptError(RuntimeError):
    pass


def _read_wav(path: Path) -> np.ndarray:
    """Any WAV espeak-ng writes, as 48 kHz mono int16."""
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
        chunks = []
        for frame in container.decode(audio=0):
            chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
        chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(chunks).astype(np.int16) if chunks else np.zeros(0, dtype=np.int16)


def _trim(pcm: np.ndarray, threshold: int = 300) -> np.ndarray:
    """Without the silence espeak-ng leaves before and after the words."""
    loud = np.nonzero(np.abs(pcm) > threshold)[0]
    if len(loud) == 0:
        return pcm[:0]
    margin = RATE // 50
    return pcm[max(0, loud[0] - margin) : loud[-1] + margin]


def _write_wav(path: Path, pcm: np.ndarray) -> None:
    tmp = path.with_suffix(".tmp")
    with wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.astype("<i2").tobytes())
    tmp.replace(path)


def speak(text: str, voice: str, out: Path) -> None:
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise PromptError("espeak-ng is not installed (Debian: apt-get install espeak-ng)")
    result = subprocess.run(
        [espeak, "-v", voice, "-s", "175", "-w", str(out), text], capture_output=True, timeout=60, check=False
    )
    if result.returncode != 0 or not out.exists():
        raise PromptError(
            f"espeak-ng failed for voice {voice}: {result.stderr.decode(errors='replace')[:200]}"
        )


def ensure_prompts(directory: Path) -> dict[str, np.ndarray]:
    """Every prompt as 48 kHz int16 samples; spoken and cached in ``directory`` when missing."""
    directory.mkdir(parents=True, exist_ok=True)
    prompts: dict[str, np.ndarray] = {}
    silence = np.zeros(int(PAUSE_S * RATE), dtype=np.int16)
    for name, texts in TEXTS.items():
        path = directory / f"{name}.wav"
        if not path.exists():
            parts: list[np.ndarray] = []
            for voice, text in zip(VOICES, texts, strict=True):
                raw = directory / f"{name}.{voice}.raw.wav"
                speak(text, voice, raw)
                parts += [_trim(_read_wav(raw)), silence]
                raw.unlink()
            pcm = np.concatenate(parts)
            peak = max(1, int(np.abs(pcm).max()))
            pcm = (pcm.astype(np.float32) * (16000 / peak)).astype(np.int16)  # about -6 dBFS peak
            _write_wav(path, pcm)
            log.info("phone: spoke prompt %s (%.1f s)", name, len(pcm) / RATE)
        prompts[name] = _read_wav(path)
    return prompts


def beep(freqs: tuple[float, ...], ms: int = 120, gap_ms: int = 80, level: float = 9000.0) -> np.ndarray:
    """Short tones one after the other, with soft edges so they do not click."""
    n = RATE * ms // 1000
    t = np.arange(n) / RATE
    edge = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / (RATE * 0.005))
    parts = []
    for f in freqs:
        parts += [
            (level * edge * np.sin(2 * np.pi * f * t)).astype(np.int16),
            np.zeros(RATE * gap_ms // 1000, np.int16),
        ]
    return np.concatenate(parts)


TONES: dict[str, np.ndarray] = {
    "muted": beep((480.0, 380.0)),  # falling: your microphone is off
    "unmuted": beep((380.0, 480.0)),  # rising: you can be heard
    "floor": beep((660.0, 880.0, 1100.0)),  # the chair gave you the floor
    "hand": beep((880.0,)),  # your hand is raised
}


def frames(pcm: np.ndarray) -> list[np.ndarray]:
    """Cut into 20 ms frames (the last padded with silence)."""
    pad = (-len(pcm)) % FRAME
    if pad:
        pcm = np.concatenate((pcm, np.zeros(pad, dtype=np.int16)))
    return [pcm[i : i + FRAME] for i in range(0, len(pcm), FRAME)]
