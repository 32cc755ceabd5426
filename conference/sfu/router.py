"""A room's media (mediasoup's ``Router``): its transports, its producers, who fills each slot.

The router measures (loudness per tick) and carries out what ``conference.policy`` decides: which
source fills each program, preview and audio slot, who is the active speaker. It keeps the decisions
current as the room changes (a join, the program, mutes, the floor) and each tick (speakers), and
tells each endpoint which identity its audio and preview slots carry (``slots`` messages).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from .. import layer_choice, policy
from ..clip_cue import CLIP_IDENTITY
from ..media import RecordingSink
from ..room import RoomState
from .producer import Producer
from .transport import Kind, Transport

if TYPE_CHECKING:
    from .backend import SfuBackend

logger = logging.getLogger(__name__)

SPEAKERS_INTERVAL = 0.4  # ``speakers`` events go out at most this often


class Router:
    """The media side of one room."""

    def __init__(self, backend: SfuBackend, room: str, state: RoomState) -> None:
        self.backend = backend
        self.room = room
        self.state = state
        self.transports: dict[str, Transport] = {}
        self._sink: RecordingSink | None = None
        self.speakers: list[str] = []  # loudest first
        self.announced: list[str] = []
        self.last_announce = 0.0
        self._empty_since: float | None = None
        # While a tick re-chooses every endpoint's layers: each publisher's options, found once.
        self._options_memo: dict[str | None, tuple[list[Producer], list[layer_choice.Layer]]] | None = None

    @property
    def sink(self) -> RecordingSink | None:
        return self._sink

    @property
    def empty(self) -> bool:
        return not self.transports and self._sink is None

    def idle_for(self, now: float) -> float:
        """Seconds the room has been empty (0 while anything is in it), as seen by the ticks."""
        if not self.empty:
            self._empty_since = None
            return 0.0
        if self._empty_since is None:
            self._empty_since = now
        return now - self._empty_since

    # producers of the room
    def producer(self, identity: str | None, kind: Kind) -> Producer | None:
        if identity is None:
            return None
        transport = self.transports.get(identity)
        if transport is None or transport.closed:
            return None
        if kind == "video" and transport.video_layers:
            # A simulcast publisher: its best layer that has started (what the recorder keeps).
            return next((p for p in reversed(transport.video_layers) if p.ssrc is not None), None)
        producer = transport.producers.get(kind)
        if producer is None or producer.ssrc is None:
            return None
        return producer

    def producers(self, kind: Kind) -> list[Producer]:
        """Every producer of ``kind`` that has started, each simulcast layer included."""
        out = []
        for transport in self.transports.values():
            if kind == "video" and transport.video_layers:
                out += [p for p in transport.video_layers if p.ssrc is not None]
                continue
            producer = transport.producers.get(kind)
            if producer is not None and producer.ssrc is not None:
                out.append(producer)
        return out

    def _layers(self, identity: str | None, now: float) -> list[Producer]:
        """What can fill a video slot with ``identity``, low to high: a simulcast publisher's
        layers arriving steadily (``Producer.steady``; else those arriving, else its best started
        one), else its one producer."""
        best = self.producer(identity, "video")
        if best is None:
            return []
        if best.group is None:
            return [best]
        steady = [p for p in best.group if p.steady(now)]
        return steady or [p for p in best.group if p.arriving(now)] or [best]

    def _options(self, identity: str | None, now: float) -> tuple[list[Producer], list[layer_choice.Layer]]:
        """``_layers`` and what the layer choice sees of them (memoised within a tick)."""
        memo = self._options_memo
        if memo is not None:
            known = memo.get(identity)
            if known is not None:
                return known
        layers = self._layers(identity, now)
        found = (layers, [layer_choice.Layer(max(0, p.layer), p.width, p.bitrate) for p in layers])
        if memo is not None:
            memo[identity] = found
        return found

    def choose_video(
        self, transport: Transport, wants: list[tuple[str | None, int]]
    ) -> list[Producer | None]:
        """The producer for each of ``transport``'s video slots (identity, tile width): the layer
        ``layer_choice`` picks for the tile, then stepped down to fit the endpoint's downlink."""
        now = time.time()
        found = [self._options(identity, now) for identity, _ in wants]
        options = [o for o, _ in found]
        seen = [s for _, s in found]
        choices = [layer_choice.choose_layer(tile, s) for (_, tile), s in zip(wants, seen, strict=True)]
        # The subscriber's own estimate (REMB) where it sends one, else what its losses tell.
        link = transport.downlink
        sources = [t.source for t in (*transport.video, *transport.previews) if t.source is not None]
        sending = sum(p.bitrate for p in sources)
        # Its own: taken against what its slots sent (``LossCounter``), so what a publisher's
        # uplink lost, or has not had repaired yet, does not count against this downlink.
        loss = layer_choice.confirmed_loss(link, transport.take_loss())
        # Losses only: a browser's REMB (``downlink_estimate``, shown in /api/stats) is not acted on
        # (see layer_choice.congestion_estimate).
        # The server's transport-cc estimate of the leg where the subscriber sends that feedback.
        # (Only with the setting send_side_bwe: untuned, it did worse than the loss rule behind a cap.)
        send_side = transport.send_side_estimate() if self.backend.send_side_bwe else None
        estimate = layer_choice.congestion_estimate(sending, None, loss, link.budget, send_side)
        if estimate is not None and any(len(o) > 1 for o in options):
            wanted = sum(
                next(p.bitrate for p in o if max(0, p.layer) == c)
                for o, c in zip(options, choices, strict=True)
                if c is not None
            )
            before = link.budget
            budget = layer_choice.downlink_budget(link, estimate, wanted, now)
            if budget is not None and (before is None or budget < before):
                self.backend.counters.downlink_limits += 1
            choices = layer_choice.fit_bandwidth(choices, seen, budget)
        return [
            next((p for p in o if max(0, p.layer) == c), None) if c is not None else None
            for o, c in zip(options, choices, strict=True)
        ]

    def _records(self, producer: Producer) -> bool:
        """Whether ``producer`` is the one recorded: a simulcast publisher's best started layer."""
        return producer.group is None or self.producer(producer.identity, "video") is producer

    def preview_slots(self) -> int:
        """One per other endpoint the room can hold (``max_previews`` caps it)."""
        count = max(0, self.state.max_endpoints - 1)
        if self.backend.max_previews is not None:
            count = min(count, self.backend.max_previews)
        return count

    # transports come and go
    def add_transport(self, transport: Transport) -> None:
        self.transports[transport.identity] = transport

    def transport_ready(self, transport: Transport) -> None:
        self.assign_all()

    def transport_closed(self, transport: Transport) -> None:
        if self.transports.get(transport.identity) is transport:
            del self.transports[transport.identity]
        self.assign_all(skip=transport)

    def producer_started(self, producer: Producer) -> None:
        """A publisher's first packet: bind every slot that wants it (a reconnect lands here too)."""
        self.update_audibility()
        if self._sink is not None and self._records(producer):
            for layer in producer.group or ():
                if layer is not producer:
                    layer.close_sink()  # a better layer started: the recording goes on in it
            producer.open_sink(self._sink)
        self.assign_all()

    def update_audibility(self) -> None:
        for transport in self.transports.values():
            producer = transport.producers.get("audio")
            if producer is None:
                continue
            p = self.state.participants.get(transport.identity)
            # Muted by the chair or by themselves, or no longer in the room: dropped on the server.
            producer.set_audible(p is not None and not (p.muted or p.self_muted))

    # carrying out the policy
    def assign_all(self, skip: Transport | None = None) -> None:
        self.update_audibility()
        for transport in list(self.transports.values()):
            if transport is skip or not transport.ready or transport.closed:
                continue
            self.assign_video(transport)
            self.assign_audio(transport)
            self.push_slots(transport)

    def assign_video(self, transport: Transport) -> None:
        program = self.state.program
        sources = policy.program_sources(program.slots, len(transport.video))
        screen = transport.screen_width
        tracks = list(transport.video)
        wants = [
            (identity, layer_choice.tile_width(program.layout, track.index, screen))
            for track, identity in zip(tracks, sources, strict=True)
        ]
        if transport.previews:
            present = {
                identity
                for identity, p in self.state.participants.items()
                if p.publish_video or self.producer(identity, "video") is not None
            }
            present.discard(transport.identity)
            occupant = policy.assign_previews(transport.preview_order, present, len(transport.previews))
            for track in transport.previews:
                tracks.append(track)
                wants.append((occupant.get(track.index), layer_choice.PREVIEW_WIDTH))
        chosen = self.choose_video(transport, wants)
        for track, (identity, _), producer in zip(tracks, wants, chosen, strict=True):
            track.set_want(identity, producer)

    def _audible(self, identity: str) -> bool:
        producer = self.producer(identity, "audio")
        return producer is not None and producer.audible

    def _score(self, identity: str) -> float | None:
        producer = self.producer(identity, "audio")
        return producer.voice.score if producer is not None else None

    def assign_audio(self, transport: Transport) -> None:
        if not transport.audio:
            return
        floor = self.state.floor
        clip = self.state.participants.get(CLIP_IDENTITY)
        always = (CLIP_IDENTITY,) if clip is not None and clip.device == "clip" else ()
        wanted = policy.wanted_voices(transport.identity, floor, self.speakers, self._audible, always)
        plan = policy.plan_audio_slots([t.want for t in transport.audio], wanted, floor, self._score)
        for track, identity in zip(transport.audio, plan, strict=True):
            track.set_want(identity, self.producer(identity, "audio"))

    def push_slots(self, transport: Transport) -> None:
        if not transport.audio and not transport.previews:
            return
        message: dict[str, Any] = {
            "type": "slots",
            "audio": [{"mid": t.mid, "identity": t.want} for t in transport.audio],
            "previews": [{"mid": t.mid, "identity": t.want} for t in transport.previews],
        }
        if message != transport.last_slots_message:
            transport.last_slots_message = message
            self.backend.emit(self.room, transport.identity, message)

    # recording
    def set_sink(self, sink: RecordingSink | None) -> None:
        self._sink = sink
        if sink is not None:
            try:
                sink.speakers(time.time(), list(self.announced))  # who speaks as recording starts
            except Exception:
                logger.exception("recorder rejected a speakers update")
        for kind in ("audio", "video"):
            for producer in self.producers(kind):  # type: ignore[arg-type]
                producer.close_sink()
                if sink is not None and self._records(producer):
                    producer.open_sink(sink)

    # every tick
    def tick(self, now: float) -> None:
        if self._update_speakers(now):
            for transport in list(self.transports.values()):
                if transport.ready and not transport.closed:
                    self.assign_audio(transport)
                    self.push_slots(transport)
        announced = self.speakers[: policy.MAX_ANNOUNCED_SPEAKERS]
        if announced != self.announced and now - self.last_announce >= SPEAKERS_INTERVAL:
            self.announced = announced
            self.last_announce = now
            self.backend.emit(self.room, None, {"type": "speakers", "speakers": announced})
            if self._sink is not None:
                try:
                    self._sink.speakers(time.time(), announced)
                except Exception:
                    logger.exception("recorder rejected a speakers update")
        wall = time.time()
        for kind in ("audio", "video"):
            for producer in self.producers(kind):  # type: ignore[arg-type]
                producer.feedback(wall)
        video = self.producers("video")
        for producer in video:
            if (producer.pending or producer.sink_wants_keyframe) and producer.keyframes.overdue(now):
                producer.request_keyframe()
        if any(p.group is not None for p in video):
            # Layers start and stop (the publisher's uplink, its camera): each slot follows. Each
            # publisher's layers are looked at once for all the endpoints (50 x 13 slots).
            self._options_memo = {}
            try:
                for transport in list(self.transports.values()):
                    if transport.ready and not transport.closed:
                        self.assign_video(transport)
            finally:
                self._options_memo = None
        for transport in self.transports.values():
            for track in transport.down_tracks():
                source = track.source
                if source is not None:
                    track.update_playout_delay()
                    # A slot restarting on its source's keyframe (its leg was not up when the last
                    # one passed) keeps asking until one gets through.
                    if (
                        source.kind == "video"
                        and source.keyframes.overdue(now)
                        and track.rewriter.wants_keyframe is not None
                    ):
                        source.request_keyframe()

    def _update_speakers(self, now: float) -> bool:
        previous = self.speakers
        voices = []
        for producer in self.producers("audio"):
            policy.update_voice(producer.voice, producer.tick_loudness(), now)
            voices.append(producer.voice)
        self.speakers = policy.rank_speakers(voices)
        return previous != self.speakers

    async def close(self) -> None:
        for transport in list(self.transports.values()):
            await transport.close()
        for kind in ("audio", "video"):
            for producer in self.producers(kind):  # type: ignore[arg-type]
                producer.close_sink()
