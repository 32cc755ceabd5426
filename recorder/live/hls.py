"""The live stream's one encode: H.264 + AAC into HLS (ffmpeg's ``hls`` muxer through PyAV).

Segments are ``segment_s`` long and each starts on a keyframe (a fixed GOP of ``segment_s`` seconds,
no scene-cut keyframes), so every segment decodes on its own (``EXT-X-INDEPENDENT-SEGMENTS``). The
playlist slides (``list_size`` segments; older segment files are deleted). A compositor restarted
on the same directory appends to the playlist: ffmpeg continues the segment numbers and puts an
``EXT-X-DISCONTINUITY`` before the first new segment, so players resume across the restart.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from ..compose import AAC_FRAME, AUDIO_RATE

PLAYLIST = "index.m3u8"
SEGMENT_PATTERN = "seg-%05d.ts"


class HlsOutput:
    def __init__(
        self,
        directory: Path,
        width: int,
        height: int,
        fps: int,
        *,
        segment_s: int = 2,
        list_size: int = 6,
        preset: str = "ultrafast",
        threads: int = 1,
        video_bitrate: int = 2_500_000,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.fps = fps
        playlist = directory / PLAYLIST
        flags = "independent_segments+delete_segments+temp_file"
        self.resumed = playlist.exists()
        if self.resumed:
            flags += "+append_list"  # a restart: keep numbering, mark the discontinuity
        self.container: Any = av.open(
            str(playlist),
            "w",
            format="hls",
            options={
                "hls_time": str(segment_s),
                "hls_list_size": str(list_size),
                "hls_flags": flags,
                # Viewers that are a few segments behind still find their files.
                "hls_delete_threshold": "3",
                "hls_segment_filename": str(directory / SEGMENT_PATTERN),
            },
        )
        gop = segment_s * fps
        kbit = max(100, video_bitrate // 1000)
        video = self.container.add_stream("libx264", rate=fps)
        video.width, video.height = width, height
        video.pix_fmt = "yuv420p"
        video.codec_context.options = {
            "preset": preset,
            # No B-frames and no lookahead: a frame leaves the encoder as it goes in.
            "tune": "zerolatency",
            "threads": str(threads) if threads else "auto",
            "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"
            f":vbv-maxrate={kbit}:vbv-bufsize={2 * kbit}",
            "crf": "23",
        }
        audio = self.container.add_stream("aac", rate=AUDIO_RATE, layout="mono")
        audio.codec_context.bit_rate = 96000
        self.video, self.audio = video, audio
        self._audio_pending = np.zeros(0, dtype=np.float32)
        self._audio_pts = 0
        self.frames = 0

    def write_video(self, frame: av.VideoFrame, index: int) -> None:
        """Frame number ``index`` (frames of the wall clock: a skipped number is a dropped frame)."""
        frame.pts = index
        frame.time_base = Fraction(1, self.fps)
        for packet in self.video.encode(frame):
            self.container.mux(packet)
        self.frames += 1

    def write_audio(self, samples: np.ndarray) -> None:
        pending = np.concatenate([self._audio_pending, samples])
        while pending.shape[0] >= AAC_FRAME:
            self._encode_audio(pending[:AAC_FRAME])
            pending = pending[AAC_FRAME:]
        self._audio_pending = pending

    def _encode_audio(self, samples: np.ndarray) -> None:
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="fltp", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = self._audio_pts
        frame.time_base = Fraction(1, AUDIO_RATE)
        self._audio_pts += samples.shape[0]
        for packet in self.audio.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        """Flush the encoders and end the playlist (``EXT-X-ENDLIST``)."""
        try:
            for packet in self.video.encode(None):
                self.container.mux(packet)
            for packet in self.audio.encode(None):
                self.container.mux(packet)
        finally:
            self.container.close()
