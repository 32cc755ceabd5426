"""A venue that is not a browser: GStreamer's ``webrtcbin`` (Debian's packages), a second WebRTC stack.

Run with Debian's Python (``/usr/bin/python3``, which has ``python3-gi``), not the project's
virtualenv. The test speaks the signaling protocol for it and relays over stdin/stdout, one JSON
object per line:

- in: ``{"offer": SDP}`` (the server's offer), ``{"stop": true}`` (or end of input);
- out: ``{"answer": SDP}``, then ``{"candidate": {"candidate": "candidate:…", "sdpMLineIndex": 0}}``
  for each local candidate (trickled after the answer, as webrtcbin gathers them) and
  ``{"candidate": {"candidate": ""}}`` at the end; ``{"state": …}`` when the peer connection's
  state changes; ``{"receiving": MID, "kind": …}`` when a slot's media starts; ``{"error": …}``.

It publishes a camera (videotestsrc, one solid colour, VP8) and a microphone (audiotestsrc, a sine
tone, Opus) on the offer's publish m-lines, with or without the RFC 6464 audio-level header
extension (``--level-extension``: webrtcbin then answers ``a=extmap:N …ssrc-audio-level vad=on``).
Everything it receives is decoded in the pipeline (vp8dec, opusdec) into ``--out``: per m-line,
``MID.i420`` holds the latest video frame (``MID.json`` its size and frame count) and ``MID.s16``
the audio (48 kHz mono, signed 16-bit), for the test to check with numpy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("GstRtp", "1.0")
from gi.repository import GLib, Gst, GstRtp, GstSdp, GstWebRTC  # noqa: E402

URI_AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"

_out_lock = threading.Lock()


def say(message: dict) -> None:
    with _out_lock:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()


def publish_lines(sdp: str, mids: dict[str, str]) -> dict[str, dict]:
    """kind -> {"pt": payload type of VP8 / Opus, "level_ext": audio-level id} of the publish m-lines."""
    out: dict[str, dict] = {}
    sections: list[list[str]] = []
    for line in sdp.splitlines():
        if line.startswith("m="):
            sections.append([])
        if sections:
            sections[-1].append(line)
    for section in sections:
        mid = next((line[6:] for line in section if line.startswith("a=mid:")), None)
        kind = section[0][2:].split(" ", 1)[0]
        if mid is None or mids.get(kind) != mid:
            continue
        codec = "VP8/90000" if kind == "video" else "opus/48000"
        info: dict = {"pt": None, "level_ext": 0}
        for line in section:
            if line.startswith("a=rtpmap:") and line.split(" ", 1)[1].startswith(codec):
                info["pt"] = info["pt"] if info["pt"] is not None else int(line[9:].split(" ", 1)[0])
            elif line.startswith("a=extmap:") and line.split()[1] == URI_AUDIO_LEVEL:
                info["level_ext"] = int(line[9:].split(" ", 1)[0].split("/")[0])
        out[kind] = info
    return out


class Venue:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.loop = GLib.MainLoop()
        self.pipe = Gst.Pipeline.new("venue")
        self.webrtc = Gst.ElementFactory.make("webrtcbin", "webrtc")
        self.webrtc.set_property("bundle-policy", GstWebRTC.WebRTCBundlePolicy.MAX_BUNDLE)
        self.pipe.add(self.webrtc)
        self.webrtc.connect("on-ice-candidate", self.on_ice_candidate)
        self.webrtc.connect("pad-added", self.on_pad_added)
        self.webrtc.connect("notify::connection-state", self.on_state)
        self.webrtc.connect("notify::ice-gathering-state", self.on_gathering)
        self.answered = False
        self.early: list[dict] = []
        self.lock = threading.Lock()
        self.frames: dict[str, int] = {}
        bus = self.pipe.get_bus()
        bus.add_signal_watch()
        bus.connect("message::error", self.on_error)

    # --- publishing ---------------------------------------------------------------------------

    def add_sources(self, lines: dict[str, dict]) -> None:
        a = self.args
        video = lines.get("video")
        if video and video["pt"] is not None and not a.no_video:
            self._link_source(
                "video",
                f"videotestsrc is-live=true pattern=solid-color foreground-color={a.colour} ! "
                "video/x-raw,width=320,height=240,framerate=15/1 ! videoconvert ! "
                "vp8enc deadline=1 cpu-used=8 target-bitrate=300000 keyframe-max-dist=30 ! "
                f"rtpvp8pay name=vpay pt={video['pt']} picture-id-mode=15-bit mtu=1200 ! queue",
            )
        audio = lines.get("audio")
        if audio and audio["pt"] is not None and not a.no_audio:
            level = "level audio-level-meta=true ! " if a.level_extension else ""
            bin_ = self._link_source(
                "audio",
                f"audiotestsrc is-live=true wave=sine freq={a.frequency} volume=0.25 ! "
                "audioconvert ! audioresample ! audio/x-raw,rate=48000,channels=1 ! "
                f"{level}opusenc bitrate=32000 frame-size=20 ! rtpopuspay name=apay pt={audio['pt']} ! queue",
            )
            if a.level_extension:
                extension = GstRtp.RTPHeaderExtension.create_from_uri(URI_AUDIO_LEVEL)
                # The offer's id: webrtcbin answers what the payloader announces in its caps.
                extension.set_id(audio["level_ext"] or 1)
                bin_.get_by_name("apay").emit("add-extension", extension)

    def _link_source(self, kind: str, description: str) -> Gst.Bin:
        bin_ = Gst.parse_bin_from_description(description, True)
        self.pipe.add(bin_)
        sink = self.webrtc.request_pad_simple("sink_%u")
        bin_.get_static_pad("src").link(sink)
        transceiver = sink.get_property("transceiver")
        transceiver.set_property("direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY)
        return bin_

    # --- negotiation --------------------------------------------------------------------------

    def on_offer(self, sdp: str, slots: dict) -> None:
        self.add_sources(publish_lines(sdp, slots.get("publish") or {}))
        self.pipe.set_state(Gst.State.PLAYING)
        ok, message = GstSdp.SDPMessage.new_from_text(sdp)
        if ok != GstSdp.SDPResult.OK:
            say({"error": "cannot parse the offer"})
            return
        offer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.OFFER, message)
        promise = Gst.Promise.new_with_change_func(self.on_remote_set, None)
        self.webrtc.emit("set-remote-description", offer, promise)

    def on_remote_set(self, promise: Gst.Promise, _data: object) -> None:
        promise = Gst.Promise.new_with_change_func(self.on_answer_created, None)
        self.webrtc.emit("create-answer", None, promise)

    def on_answer_created(self, promise: Gst.Promise, _data: object) -> None:
        reply = promise.get_reply()
        answer = reply.get_value("answer") if reply is not None else None
        if answer is None:
            say({"error": f"create-answer failed: {reply.to_string() if reply else 'no reply'}"})
            return
        self.webrtc.emit("set-local-description", answer, None)
        with self.lock:
            say({"answer": answer.sdp.as_text()})
            self.answered = True
            early, self.early = self.early, []
        for candidate in early:
            say({"candidate": candidate})

    def on_ice_candidate(self, _element: Gst.Element, mline: int, candidate: str) -> None:
        entry = {"candidate": candidate, "sdpMLineIndex": mline}
        with self.lock:
            if not self.answered:
                self.early.append(entry)
                return
        say({"candidate": entry})

    def on_gathering(self, element: Gst.Element, _pspec: object) -> None:
        if element.get_property("ice-gathering-state") == GstWebRTC.WebRTCICEGatheringState.COMPLETE:
            self.on_ice_candidate(element, 0, "")

    def on_state(self, element: Gst.Element, _pspec: object) -> None:
        state = element.get_property("connection-state")
        say({"state": GstWebRTC.WebRTCPeerConnectionState(state).value_nick})

    def on_error(self, _bus: Gst.Bus, message: Gst.Message) -> None:
        error, debug = message.parse_error()
        say({"error": f"{message.src.get_name()}: {error.message}", "debug": debug})

    # --- receiving ----------------------------------------------------------------------------

    def on_pad_added(self, _element: Gst.Element, pad: Gst.Pad) -> None:
        if pad.get_direction() != Gst.PadDirection.SRC:
            return
        caps = pad.get_current_caps() or pad.query_caps(None)
        structure = caps.get_structure(0)
        encoding = (structure.get_string("encoding-name") or "").upper()
        transceiver = pad.get_property("transceiver")
        mid = transceiver.get_property("mid") if transceiver is not None else pad.get_name()
        if encoding == "VP8":
            kind = "video"
            description = (
                "queue ! rtpvp8depay ! vp8dec ! videoconvert ! video/x-raw,format=I420 ! "
                "appsink name=sink emit-signals=true sync=false max-buffers=2 drop=true"
            )
        elif encoding == "OPUS":
            kind = "audio"
            description = (
                "queue ! rtpopusdepay ! opusdec ! audioconvert ! audioresample ! "
                "audio/x-raw,format=S16LE,rate=48000,channels=1,layout=interleaved ! "
                "appsink name=sink emit-signals=true sync=false"
            )
        else:
            description, kind = "fakesink", "other"
        bin_ = Gst.parse_bin_from_description(description, True)
        self.pipe.add(bin_)
        bin_.sync_state_with_parent()
        pad.link(bin_.get_static_pad("sink"))
        sink = bin_.get_by_name("sink")
        if sink is not None:
            handler = self.on_video_sample if kind == "video" else self.on_audio_sample
            sink.connect("new-sample", handler, mid)
        say({"receiving": mid, "kind": kind, "encoding": encoding})

    def _path(self, mid: str, suffix: str) -> str:
        return os.path.join(self.args.out, f"{mid}.{suffix}")

    def on_video_sample(self, sink: Gst.Element, mid: str) -> Gst.FlowReturn:
        sample = sink.emit("pull-sample")
        buffer = sample.get_buffer()
        structure = sample.get_caps().get_structure(0)
        width, height = structure.get_value("width"), structure.get_value("height")
        data = buffer.extract_dup(0, buffer.get_size())
        count = self.frames.get(mid, 0) + 1
        self.frames[mid] = count
        if count % 5 == 1:  # the latest frame, replaced atomically for the reader
            for suffix, content in (
                ("i420", data),
                ("json", json.dumps({"width": width, "height": height, "frames": count}).encode()),
            ):
                tmp = self._path(mid, suffix + ".tmp")
                with open(tmp, "wb") as f:
                    f.write(content)
                os.replace(tmp, self._path(mid, suffix))
        return Gst.FlowReturn.OK

    def on_audio_sample(self, sink: Gst.Element, mid: str) -> Gst.FlowReturn:
        sample = sink.emit("pull-sample")
        buffer = sample.get_buffer()
        with open(self._path(mid, "s16"), "ab") as f:
            f.write(buffer.extract_dup(0, buffer.get_size()))
        return Gst.FlowReturn.OK

    # --- control --------------------------------------------------------------------------------

    def on_input(self, message: dict) -> bool:
        if "offer" in message:
            self.on_offer(message["offer"], message.get("slots") or {})
        elif message.get("stop"):
            self.loop.quit()
        return False

    def read_stdin(self) -> None:
        for line in sys.stdin:
            line = line.strip()
            if line:
                GLib.idle_add(self.on_input, json.loads(line))
        GLib.idle_add(self.on_input, {"stop": True})

    def run(self) -> None:
        threading.Thread(target=self.read_stdin, daemon=True).start()
        self.pipe.set_state(Gst.State.READY)
        say({"ready": Gst.version_string()})
        try:
            self.loop.run()
        finally:
            self.pipe.set_state(Gst.State.NULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--colour", type=lambda s: int(s, 0), default=0xFF1E1EE6, help="ARGB: 0xff1e1ee6")
    parser.add_argument("--frequency", type=float, default=700.0, help="the tone in Hz")
    parser.add_argument("--level-extension", action="store_true", help="send RFC 6464 audio levels")
    parser.add_argument("--no-video", action="store_true")
    parser.add_argument("--no-audio", action="store_true")
    parser.add_argument("--out", required=True, help="directory for what is received")
    args = parser.parse_args()
    Gst.init(None)
    Venue(args).run()


if __name__ == "__main__":
    main()
