// The program as the chair laid it out, slot for slot, drawn from the layout catalogue.

import { t } from "./i18n.js";
import { el } from "./ui.js";

/** Size a box to the largest 16:9 rectangle that fits its parent. */
export function fit16x9(frame) {
  const parent = frame.parentElement;
  const resize = () => {
    const { width, height } = parent.getBoundingClientRect();
    const w = Math.min(width, (height * 16) / 9);
    frame.style.width = `${Math.floor(w)}px`;
    frame.style.height = `${Math.floor((w * 9) / 16)}px`;
  };
  new ResizeObserver(resize).observe(parent);
  resize();
}

/** Attach a track to a media element only when it changed (re-attaching restarts playback). */
export function attachTrack(media, track) {
  const current = media.srcObject?.getTracks()[0] ?? null;
  if (current === track) return;
  media.srcObject = track ? new MediaStream([track]) : null;
  if (track) media.play().catch(() => {});
}

/**
 * The program as the chair laid it out, slot for slot. Slot i plays the client's video slot i;
 * a program change only moves boxes and changes captions, so the picture never reloads.
 * Options: maxSlots (the phone shows only the main slot), trackFor(i, identity) to override
 * where a slot's picture comes from (the chair's console uses its previews), titleCard(): the
 * meeting's title, shown by an empty slot of an audience's screen instead of "empty" (the chair's
 * monitors keep "empty", which is what an operator needs to see), freezeOnOutage: keep the
 * picture as it is while the connection is down (the page lays its outage notice over it).
 * After each drawing the frame gets a "stage-render" event (the venue places its self-view).
 */
export class ProgramStage {
  constructor(frame, client, options = {}) {
    this.frame = frame;
    this.client = client;
    this.options = options;
    this.slots = [];
    this.program = null; // override: {layout, slots} instead of the live program
    frame.classList.add("stage-frame");
    for (const type of ["room", "tracks", "slots", "speakers", "joined", "media"]) {
      client.addEventListener(type, () => this.render());
    }
    window.addEventListener("languagechange-app", () => this.render());
  }

  _slotElement(i) {
    if (!this.slots[i]) {
      const video = el("video", { autoplay: true, playsinline: true, muted: true });
      video.muted = true; // the attribute alone does not count for autoplay in every browser
      const card = el("div", { class: "slot-card" });
      const name = el("span", { class: "slot-name" });
      const caption = el(
        "div",
        { class: "slot-caption" },
        el("span", { class: "speaking-dot", "aria-hidden": "true" }),
        name,
        el("span", { class: "slot-muted" }),
      );
      const node = el("div", { class: "slot", dataset: { slot: String(i), identity: "" } }, video, card, caption);
      if (this.options.onSlotClick) node.addEventListener("click", () => this.options.onSlotClick(i));
      this.frame.append(node);
      this.slots[i] = { node, video, card, name, caption, track: null };
    }
    return this.slots[i];
  }

  render() {
    if (this.options.freezeOnOutage && this.client.state === "reconnecting") return;
    const mirror = this.client.mirror;
    const program = this.program ?? mirror?.program;
    if (!program) return;
    const layout = (this.client.layouts || []).find((l) => l.name === program.layout);
    if (!layout) return;
    const count = Math.min(layout.slots.length, this.options.maxSlots ?? Infinity);
    this.frame.dataset.layout = layout.name;
    for (let i = 0; i < Math.max(count, this.slots.length); i++) {
      const slot = this._slotElement(i);
      if (i >= count) {
        slot.node.hidden = true;
        continue;
      }
      const rect = count === 1 && this.options.maxSlots === 1 ? { x: 0, y: 0, w: 1, h: 1 } : layout.slots[i];
      const identity = program.slots[i] ?? null;
      const who = mirror?.participant(identity);
      const track = this.options.trackFor ? this.options.trackFor(i, identity) : this.client.videoTrack(i);
      Object.assign(slot.node.style, {
        left: `${rect.x * 100}%`,
        top: `${rect.y * 100}%`,
        width: `${rect.w * 100}%`,
        height: `${rect.h * 100}%`,
        zIndex: String(i + 1),
      });
      slot.node.hidden = false;
      slot.node.dataset.identity = identity ?? "";
      attachTrack(slot.video, identity ? track : null);
      const hasPicture = !!(identity && track && who?.publish_video !== false && !track.muted);
      slot.node.classList.toggle("no-picture", !hasPicture);
      slot.node.classList.toggle("empty", !identity);
      slot.node.classList.toggle("speaking", !!identity && this.client.speakers.includes(identity));
      slot.node.classList.toggle("is-floor", !!identity && mirror?.floor === identity);
      const empty = this.options.titleCard ? this.options.titleCard() : t("stage.empty_slot");
      const name = identity ? mirror?.name(identity) || identity : empty;
      slot.name.textContent = identity ? name : "";
      slot.card.textContent = name;
      slot.card.classList.toggle("title-card", !identity && !!this.options.titleCard);
      const muted = who && (who.muted || who.self_muted);
      slot.caption.querySelector(".slot-muted").textContent = muted ? t("stage.muted_mark") : "";
      slot.caption.hidden = !identity;
      if (track && track !== slot.track) {
        // Show the name card while a slot waits for its first frame, the picture once it arrives.
        track.addEventListener("unmute", () => this.render());
        track.addEventListener("mute", () => this.render());
      }
      slot.track = track;
    }
    this.frame.dispatchEvent(new Event("stage-render"));
  }
}
