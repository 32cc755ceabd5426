// The chair console's running speaking-time figures: a small panel of bars (floor time and voiced
// time per person, and per sector), from GET /api/rooms/{room}/speaking-time, counted by the server
// from the room's current recording (so a reloaded console shows the same). Asked again every few
// seconds while the meeting records and the panel is open (the chair opens it; the console
// remembers), and soon after each floor change; the floor holder's bar grows every second in
// between. Self-contained: the console only starts it.

import { barRow } from "./clerk-speaking.js";
import { t } from "./i18n.js";
import { el } from "./ui.js";

const POLL_MS = 5000;
// After a floor or recording event: the recorder writes its timeline every 0.25 s.
const AFTER_EVENT_MS = 700;
// Whether the chair keeps the panel open (closed by default: the console's side column is full).
const OPEN_KEY = "conference.chair.speaking";

export class SpeakingPanel {
  constructor(client, box) {
    this.client = client;
    this.box = box; // a <details> with a .speaking-body inside
    this.body = box.querySelector(".speaking-body");
    this.data = null; // the last answer
    this.timer = null;
    this.asking = false;
  }

  start() {
    this.client.addEventListener("room", (ev) => {
      if (ev.detail.events.some((e) => e.kind === "floor" || e.kind === "recording")) this.soon(AFTER_EVENT_MS);
    });
    this.client.addEventListener("joined", () => this.soon(0));
    if (localStorage.getItem(OPEN_KEY) === "open") this.box.open = true;
    this.box.addEventListener("toggle", () => {
      localStorage.setItem(OPEN_KEY, this.box.open ? "open" : "closed");
      if (this.box.open) this.soon(0);
    });
    window.addEventListener("languagechange-app", () => this.render());
    setInterval(() => this.render(), 1000);
    setInterval(() => this.ask(), POLL_MS);
  }

  soon(ms) {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.ask(), ms);
  }

  async ask() {
    const mirror = this.client.mirror;
    if (!mirror || this.asking || document.hidden || !this.box.open) return;
    this.asking = true;
    try {
      const res = await fetch(`/api/rooms/${encodeURIComponent(mirror.room)}/speaking-time`, {
        headers: { Authorization: `Bearer ${this.client.options.token}` },
      });
      if (res.ok) {
        this.data = await res.json();
        this.render();
      }
    } catch {
      // offline for a moment: the next poll tries again
    } finally {
      this.asking = false;
    }
  }

  /** The figures with the floor holder's time carried on to now. */
  current() {
    const figures = this.data?.speaking_time;
    if (!figures) return null;
    const holder = this.client.mirror?.floor;
    // Counted up to `at` on the server's clock (the page knows its offset from the join).
    const now = Date.now() / 1000 + (this.client.clockOffset || 0);
    const extra = holder && holder === this.data.floor ? now - this.data.at : 0;
    const grow = (row, yes) => (yes && extra > 0 ? { ...row, floor_s: row.floor_s + extra } : row);
    const holderSector = figures.by_person.find((p) => p.identity === holder)?.sector ?? null;
    return {
      people: figures.by_person.map((p) => grow(p, p.identity === holder)),
      sectors: figures.by_sector.map((s) => grow(s, holder && (s.sector ?? null) === holderSector)),
    };
  }

  render() {
    if (!this.body) return;
    const now = this.current();
    if (!now) {
      const recording = this.client.mirror?.recording?.active;
      this.body.replaceChildren(el("p", { class: "hint" }, t(recording ? "speaking.none" : "speaking.not_recording")));
      return;
    }
    const max = Math.max(1, ...now.people.map((p) => Math.max(p.floor_s, p.voiced_s)));
    const sectorMax = Math.max(1, ...now.sectors.map((s) => Math.max(s.floor_s, s.voiced_s)));
    const sectorName = (s) => s ?? t("speaking.unknown_sector");
    this.body.replaceChildren(
      el("p", { class: "hint" }, `${t("speaking.floor_s")} / ${t("speaking.voiced_s")} · ${t("speaking.live_hint")}`),
      el(
        "div",
        { class: "speaking-chart", dataset: { chart: "person" } },
        now.people.map((p) => barRow(`${p.name} · ${sectorName(p.sector)}`, p, max, { identity: p.identity })),
      ),
      el("h3", {}, t("speaking.by_sector")),
      el(
        "div",
        { class: "speaking-chart", dataset: { chart: "sector" } },
        now.sectors.map((s) => barRow(sectorName(s.sector), s, sectorMax, { sector: s.sector ?? "" })),
      ),
    );
  }
}

/** Start the panel in `box` (the console's #speaking-panel). */
export function startSpeakingPanel(client, box) {
  if (!box) return null;
  const panel = new SpeakingPanel(client, box);
  panel.start();
  return panel;
}
