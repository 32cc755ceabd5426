// The chair console's endpoint tiles: one per endpoint in a stable order (venues, then phones, in
// the order this console first saw them), of one fixed height whatever applies, with the audio
// meter and the connection quality; a raised hand is announced with a sound and a highlight.
// Methods of the console (web/chair.js), kept here so that file stays one screenful of concerns.

import { t } from "./i18n.js";
import { attachTrack } from "./stage.js";
import { deviceLabel, el } from "./ui.js";

const CONFIRM_MS = 4000;
const ANNOUNCE_MS = 6000;

const $ = (id) => document.getElementById(id);

export const tileMethods = {
  participants() {
    const all = [...(this.client.mirror?.participants.values() ?? [])].filter(
      // Neither the clerk's page nor a moderator's sends or receives media: no tile.
      (p) => p.identity !== this.client.you?.identity && p.role !== "clerk" && p.role !== "moderator",
    );
    // The console itself is not a feed. Venues first, then phones, each in the order this console
    // first saw them (join order), kept across reconnects so tiles never move under the pointer.
    for (const p of [...all].sort((a, b) => a.joined_at - b.joined_at)) {
      if (!this.order.includes(p.identity)) this.order.push(p.identity);
    }
    if (this.orderKey) localStorage.setItem(this.orderKey, JSON.stringify(this.order.slice(-500)));
    const rank = (p) => this.order.indexOf(p.identity);
    return all.sort((a, b) => (a.device === b.device ? rank(a) - rank(b) : a.device === "venue" ? -1 : 1));
  },

  /** A raised hand: a short sound (unless turned off) and a highlight on its tile and queue row. */
  announce(identity) {
    this.announced.set(identity, Date.now());
    setTimeout(() => {
      this.announced.delete(identity);
      this.renderTiles();
      this.renderFloor();
    }, ANNOUNCE_MS);
    if (!this.chimeOn) return;
    try {
      this.audio ??= new AudioContext();
      const ctx = this.audio;
      const gain = ctx.createGain();
      gain.connect(ctx.destination);
      gain.gain.setValueAtTime(0.0001, ctx.currentTime);
      gain.gain.exponentialRampToValueAtTime(0.25, ctx.currentTime + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, ctx.currentTime + 0.5);
      for (const [hz, at] of [[880, 0], [1320, 0.12]]) {
        const tone = ctx.createOscillator();
        tone.frequency.value = hz;
        tone.connect(gain);
        tone.start(ctx.currentTime + at);
        tone.stop(ctx.currentTime + at + 0.35);
      }
      this.chimes += 1;
    } catch (err) {
      console.warn("chime", err);
    }
  },

  tile(p) {
    let parts = this.tiles.get(p.identity);
    if (parts) return parts;
    const video = el("video", { autoplay: true, playsinline: true, muted: true });
    video.muted = true;
    const card = el("div", { class: "slot-card" });
    const meter = el("span", { class: "meter-fill" });
    const name = el("strong", { class: "tile-name" });
    const device = el("span", { class: "tile-device" });
    const badges = el("span", { class: "tile-badges" });
    const mute = el("button", { class: "tile-mute" });
    const ask = el("button", { class: "tile-ask" });
    const grant = el("button", { class: "tile-grant" });
    const remove = el("button", { class: "tile-remove danger" });
    const node = el(
      "div",
      { class: "tile", draggable: "true", tabindex: "0", dataset: { identity: p.identity } },
      el("div", { class: "tile-picture" }, video, card),
      el("div", { class: "tile-line" }, name, device),
      el("div", { class: "meter", "aria-hidden": "true" }, meter),
      badges,
      el("div", { class: "tile-actions" }, mute, ask, grant, remove),
    );
    node.addEventListener("click", (ev) => {
      if (!(ev.target instanceof HTMLButtonElement)) this.preview(p.identity);
    });
    node.addEventListener("dragstart", (ev) => {
      ev.dataTransfer.setData("text/x-identity", p.identity);
      ev.dataTransfer.effectAllowed = "copy";
    });
    mute.addEventListener("click", () => {
      const now = this.client.mirror.participant(p.identity);
      if (now) this.command("mute", { identity: p.identity, muted: !now.muted });
    });
    ask.addEventListener("click", () => this.command("request_unmute", { identity: p.identity }));
    grant.addEventListener("click", () => this.command("grant_floor", { identity: p.identity }));
    remove.addEventListener("click", () => this.confirmRemove(p.identity, remove));
    parts = { node, video, card, meter, name, device, badges, mute, ask, grant, remove };
    this.tiles.set(p.identity, parts);
    return parts;
  },

  confirmRemove(identity, button) {
    // Two presses: removing a venue by accident in a live meeting is costly.
    if (this.confirming === identity) {
      this.confirming = null;
      this.command("remove", { identity });
      return;
    }
    this.confirming = identity;
    button.textContent = t("chair.remove_confirm");
    setTimeout(() => {
      if (this.confirming === identity) this.confirming = null;
      this.renderTiles();
    }, CONFIRM_MS);
  },

  renderTiles() {
    const c = this.client;
    const mirror = c.mirror;
    if (!mirror) return;
    const box = $("tiles");
    const present = this.participants();
    const keep = new Set(present.map((p) => p.identity));
    for (const [identity, parts] of this.tiles) {
      if (!keep.has(identity)) {
        parts.node.remove();
        this.tiles.delete(identity);
      }
    }
    const onAir = new Set(mirror.program.slots.filter(Boolean));
    present.forEach((p, index) => {
      const parts = this.tile(p);
      if (box.children[index] !== parts.node) box.insertBefore(parts.node, box.children[index] ?? null);
      const track = c.previewTrack(p.identity);
      attachTrack(parts.video, track);
      parts.card.textContent = p.name;
      parts.card.hidden = !!(track && !track.muted && p.publish_video);
      parts.name.textContent = p.name;
      // What the roster (or the invitation) says: the kind and sector show with the device.
      const kindKey = `people_kinds.${p.kind}`;
      const kind = p.kind && t(kindKey) !== kindKey ? t(kindKey) : p.kind; // free text unless known
      const device = deviceLabel(p);
      parts.device.textContent = [device, p.sector, kind === device ? "" : kind].filter(Boolean).join(" · ");
      parts.node.dataset.sector = p.sector ?? "";
      parts.node.dataset.guest = String(!!p.guest);
      const quality = p.connected ? (this.quality.get(p.identity) ?? "unknown") : "offline";
      const place = mirror.floorQueue.indexOf(p.identity) + 1;
      const badges = [];
      if (p.muted) badges.push(["muted", t("tile.muted_by_chair")]);
      else if (p.self_muted) badges.push(["self-muted", t("tile.self_muted")]);
      else if (!p.publish_audio) badges.push(["no-mic", t("tile.no_mic")]);
      if (p.unmute_requested) badges.push(["asked", t("tile.unmute_asked")]);
      if (place) badges.push(["hand", t("tile.hand", { place })]);
      if (mirror.floor === p.identity) badges.push(["floor", t("tile.floor")]);
      if (onAir.has(p.identity)) badges.push(["on-air", t("tile.on_air")]);
      if (p.guest) badges.push(["guest", t("tile.guest")]);
      badges.push([`quality-${quality}`, t(`quality.${quality}`)]);
      parts.badges.replaceChildren(...badges.map(([cls, text]) => el("span", { class: `badge badge-${cls}` }, text)));
      parts.node.dataset.muted = String(p.muted);
      parts.node.dataset.hand = String(!!place);
      parts.node.dataset.quality = quality;
      parts.node.classList.toggle("previewed", this.previewed === p.identity);
      parts.node.classList.toggle("speaking", c.speakers.includes(p.identity));
      parts.node.classList.toggle("offline", !p.connected);
      parts.mute.textContent = p.muted ? t("tile.unmute") : t("tile.mute");
      parts.ask.textContent = t("tile.ask_unmute");
      // Buttons that do not apply are invisible but keep their place: the tile never changes height.
      parts.ask.classList.toggle("gone", !(p.muted || p.self_muted) || !p.publish_audio);
      parts.grant.textContent = t("tile.grant");
      parts.grant.classList.toggle("gone", mirror.floor === p.identity);
      parts.node.classList.toggle("announced", this.announced.has(p.identity));
      if (this.confirming !== p.identity) parts.remove.textContent = t("tile.remove");
    });
    $("count").textContent = t("chair.count", { n: present.length });
    $("tiles-empty").hidden = present.length > 0;
    this.renderPreview();
  },

  async pollLevels() {
    const c = this.client;
    if (!c.pc) return;
    const levels = new Map();
    for (const { mid, identity } of c.audioTracks()) {
      if (!identity) continue;
      const source = c.receiver(mid)?.getSynchronizationSources?.()[0];
      if (source && performance.timeOrigin + performance.now() - source.timestamp < 1000) {
        levels.set(identity, source.audioLevel ?? 0);
      }
    }
    for (const [identity, parts] of this.tiles) {
      // audioLevel is linear 0..1; a square root makes quiet speech visible on the meter.
      const level = Math.sqrt(levels.get(identity) ?? 0);
      parts.meter.style.width = `${Math.round(level * 100)}%`;
    }
  },

  async pollQuality() {
    const c = this.client;
    if (!c.pc) return;
    // One getStats for the whole connection: per-receiver calls each walk every stream (~60 here).
    let report;
    try {
      report = await c.pc.getStats();
    } catch {
      return;
    }
    const inboundByMid = new Map();
    for (const stat of report.values()) {
      if (stat.type === "inbound-rtp" && stat.kind === "video" && stat.mid != null) inboundByMid.set(stat.mid, stat);
    }
    for (const [mid, identity] of c.previewOccupants) {
      if (!identity) continue;
      const inbound = inboundByMid.get(mid);
      if (!inbound) continue;
      const prev = this.qualityPrev.get(mid) ?? { lost: 0, received: 0 };
      const lost = (inbound.packetsLost ?? 0) - prev.lost;
      const received = (inbound.packetsReceived ?? 0) - prev.received;
      this.qualityPrev.set(mid, { lost: inbound.packetsLost ?? 0, received: inbound.packetsReceived ?? 0 });
      const lossRate = lost + received > 0 ? lost / (lost + received) : 0;
      const fps = inbound.framesPerSecond ?? 0;
      this.quality.set(
        identity,
        received === 0 ? "poor" : lossRate > 0.08 || fps < 8 ? "poor" : lossRate > 0.02 || fps < 15 ? "fair" : "good",
      );
    }
    this.renderTiles();
  }
};
