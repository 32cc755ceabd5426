"""The selective forwarding unit: media forwarded as packets, never decoded and re-encoded per
receiver. One module per object, in mediasoup's and LiveKit's vocabulary:

- ``packet``: RTP header and header extensions; ``payload``: the one VP8/H.264 payload parser;
  ``rewriter``: a slot's continuous stream (sequence numbers, timestamps, picture ids);
  ``reception``: reception statistics, the packet cache; ``nack``: NACK scheduling on its own
  timer; ``twcc``: transport-wide congestion control feedback; ``rtcp``: RTCP builders;
  ``stats``: counters and the delay histogram;
- ``producer``: one published track; ``keyframes``: coalesced keyframe requests;
  ``consumer``: a down-track (one receive slot of one subscriber);
- ``transport``: what every transport has; ``session``: WebRTC (aiortc) transport;
- ``router``: a room's media, carrying out ``conference.policy``; ``backend``: the rooms, the tick,
  the stats (``conference.media.MediaBackend``);
- ``aiortc_glue``: the only module touching private aiortc names; ``audiolevel``: the level of Opus
  from a publisher that sends no audio-level extension.
"""

from .backend import SfuBackend, create_backend

__all__ = ["SfuBackend", "create_backend"]
