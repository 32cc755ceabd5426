"""A recording's speaking-time figures (``recorder.speaking_time``) from its archive: floor time
from the timeline, voiced time from the recorded audio, cached next to the recording.

The level of each recorded audio packet is the RFC 6464 audio-level header extension the publisher
sent (browsers and the test endpoints do; the recorded packets keep their extensions), else it is
measured from the decoded Opus (``conference.sfu.audiolevel.dbov_level``, the media core's own
measure) here, offline, never on the media path. A chair-muted or self-muted microphone's packets
are dropped before the recorder, so muted time is never voiced.

Reading every audio packet of a long meeting takes a while (0.2 s of CPU per person-hour with the
extension, about 4 s when Opus must be decoded: docs/performance.md), so a finished recording's
figures are written to ``speaking_time.json`` in its directory once and read from there afterwards;
the server counts in its own low-priority process (``python -m recorder.speaking_levels DIR``), so
the media loop never waits on it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av

from conference.sfu.audiolevel import SILENCE, dbov_level
from conference.sfu.packet import URI_AUDIO_LEVEL, audio_level, parse_header

from .archive import ArchiveError, Recording, TrackInfo, write_private_text
from .speaking_time import Span, figures, union, voiced_from_loudness, voiced_from_speakers, walk

log = logging.getLogger(__name__)

CACHE_NAME = "speaking_time.json"
# Bumped when the figures are counted differently: an older cache is then recounted.
CACHE_FORMAT = 1


def loudness(recording: Recording, track: TrackInfo) -> Iterator[tuple[float, float]]:
    """``(arrival, 127 - level)`` for each audio packet of ``track``, in arrival order."""
    ext_id = track.extensions.get(URI_AUDIO_LEVEL, 0)
    decoder: av.AudioCodecContext | None = None
    for arrival, raw in recording.read_track(track.number):
        header = parse_header(raw)
        if header is None or header.payload_type != track.payload_type:
            continue
        level = audio_level(raw, header, ext_id) if ext_id else None
        if level is None:
            payload = raw[header.payload_offset : header.payload_end]
            if not payload:
                continue
            if decoder is None:
                decoder = av.CodecContext.create("opus", "r")  # type: ignore[assignment]
                decoder.layout = "mono"  # a level needs one channel
            try:
                frames = decoder.decode(av.Packet(payload))
            except (av.FFmpegError, ValueError):
                continue
            level = min((dbov_level(f.to_ndarray().ravel()) for f in frames), default=SILENCE)
        yield arrival, float(127 - level)


def voiced_spans(recording: Recording) -> dict[str, list[Span]]:
    """Per identity, when their recorded audio carried a voice (several tracks of one person, e.g.
    after a rejoin, merged)."""
    spans: dict[str, list[Span]] = {}
    for track in recording.tracks:
        if track.media != "audio":
            continue
        found = voiced_from_loudness(loudness(recording, track))
        spans[track.identity] = union([*spans.get(track.identity, []), *found])
    return spans


def count(recording: Recording) -> dict[str, Any]:
    """The figures of ``recording``, counted now (docs/recordings.md, "Speaking time")."""
    start, end = recording.started_at, recording.stopped_at
    result = walk(recording.timeline, start, end)
    return {**figures(result, voiced_spans(recording)), "voiced_from": "audio"}


def count_live(recording: Recording, end: float) -> dict[str, Any]:
    """The figures of a recording still being written, up to ``end``: voiced time from the
    server's ``speakers`` announcements (cheap enough to count every few seconds)."""
    result = walk(recording.timeline, recording.started_at, end)
    return {**figures(result, voiced_from_speakers(recording.timeline, end)), "voiced_from": "speakers"}


def finished(recording: Recording) -> bool:
    return recording.complete or bool(recording.meta.get("interrupted"))


def cached(recording: Recording) -> dict[str, Any] | None:
    """A finished recording's figures as counted before, or None."""
    try:
        data = json.loads((recording.directory / CACHE_NAME).read_text())
        if data.get("format") == CACHE_FORMAT and isinstance(data.get("figures"), dict):
            return dict(data["figures"])
    except (OSError, ValueError, AttributeError):
        pass
    return None


def speaking_time(recording: Recording) -> dict[str, Any]:
    """The figures, from the cache when the recording is finished and was counted before."""
    if not finished(recording):
        return count_live(recording, recording.stopped_at)
    found = cached(recording)
    if found is not None:
        return found
    data = count(recording)
    path = recording.directory / CACHE_NAME
    try:
        write_private_text(path, json.dumps({"format": CACHE_FORMAT, "figures": data}))
    except OSError as exc:
        log.warning("%s: speaking-time figures not cached: %s", path, exc)
    return data


def main(argv: list[str]) -> int:
    """``python -m recorder.speaking_levels RECORDING_DIR [NICE]``: count and cache the figures."""
    if len(argv) not in (2, 3):
        print("usage: python -m recorder.speaking_levels RECORDING_DIR [NICE]", file=sys.stderr)
        return 2
    if len(argv) == 3:
        os.nice(int(argv[2]))  # behind the media, which has to run in real time
    try:
        recording = Recording(Path(argv[1]))
    except ArchiveError as exc:
        print(exc, file=sys.stderr)
        return 2
    speaking_time(recording)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
