// The chair's console: every endpoint live, a preview, the program on air and the next one
// being prepared (layout + slots, applied at once by "take"), mutes, the floor queue,
// recording and the room's log. Frequent actions have keys (see the help dialog).

import { RoomClient } from "./client.js";
import { ClipPanel } from "./chair-clips.js";
import { logMethods } from "./chair-log.js";
import { orderMethods } from "./chair-order.js";
import { startSpeakingPanel } from "./chair-speaking.js";
import { tileMethods } from "./chair-tiles.js";
import { mountChairTimer } from "./chair-timer.js";
import { lang, t } from "./i18n.js";
import { SoundOutput } from "./media.js";
import { CommentsPanel, renderFigures } from "./comments-panel.js";
import { bindFatal, openPage, showFatal } from "./page.js";
import { attachTrack, fit16x9, ProgramStage } from "./stage.js";
import { bindConnectionState, displayName, el, errorText, formatElapsed, loadLayouts, notify } from "./ui.js";

const METER_EVERY_MS = 200;
const QUALITY_EVERY_MS = 2000;
const CHIME_KEY = "conference.chair.chime";
const ORDER_KEY = "conference.chair.order";

const $ = (id) => document.getElementById(id);

class Console {
  constructor(client) {
    this.client = client;
    this.previewed = null; // identity in the preview monitor
    this.draft = null; // {layout, slots}: the next program
    this.dirty = false; // the draft differs from what is on air because the chair edited it
    this.staged = null; // the preset (an agenda item's or a recalled one) the draft was made from
    this.tiles = new Map(); // identity -> tile parts
    this.levels = new Map(); // identity -> 0..1
    this.quality = new Map(); // identity -> good | fair | poor
    this.qualityPrev = new Map(); // mid -> {lost, received}
    this.confirming = null;
    this.logEntries = []; // room events as data, rendered in the current language
    this.announced = new Map(); // identity -> when their hand went up (highlight)
    this.chimes = 0; // raised-hand sounds played (for integrators and tests)
    this.chimeOn = localStorage.getItem(CHIME_KEY) !== "off";
    this.order = []; // identities in the order this console first saw them
  }

  start() {
    const c = this.client;
    // The live monitor is drawn from the previews the console receives anyway: receiving the
    // program's video slots as well would double the chair's decoding and the server's forwarding.
    this.live = new ProgramStage($("program-live"), c, {
      trackFor: (_i, identity) => (identity ? c.previewTrack(identity) : null),
    });
    fit16x9($("program-live"));
    this.draftStage = new ProgramStage($("program-draft"), c, {
      trackFor: (_i, identity) => (identity ? c.previewTrack(identity) : null),
      onSlotClick: (i) => this.fillSlot(i, this.previewed),
    });
    fit16x9($("program-draft"));
    fit16x9($("preview-frame"));
    this.sound = new SoundOutput(c, t("sound.prompt"));

    c.addEventListener("joined", () => {
      // Tiles keep the order of first sight across reconnects and reloads of this console.
      const key = `${ORDER_KEY}.${c.mirror.room}`;
      this.order = JSON.parse(localStorage.getItem(key) || "[]");
      this.orderKey = key;
      this.syncDraft(true);
    });
    c.addEventListener("room", (ev) => {
      let item = null;
      for (const e of ev.detail.events) {
        this.log(e);
        if (e.kind === "hand" && e.raised) this.announce(e.identity);
        if (e.kind === "agenda_item") item = c.mirror.agenda[e.index];
        if (e.kind === "program") this.staged = null; // taken (here or on another console)
      }
      if (ev.detail.resynced) this.log({ kind: "resynced", at: Date.now() / 1000 });
      this.syncDraft(false);
      if (item?.preset) this.stagePreset(item.preset); // the item's program, ready to take
      this.render();
    });
    for (const type of ["tracks", "slots", "speakers"]) c.addEventListener(type, () => this.renderTiles());
    window.addEventListener("languagechange-app", () => {
      this.render();
      this.renderLog();
    });

    $("take").addEventListener("click", () => this.take());
    $("reset-draft").addEventListener("click", () => this.syncDraft(true));
    $("grant-next").addEventListener("click", () => this.command("grant_floor", {}));
    $("revoke").addEventListener("click", () => this.command("revoke_floor", {}));
    mountChairTimer(c, (type, fields) => this.command(type, fields));
    // Stopping ends the meeting's record: it asks first. Starting is one click.
    $("rec-toggle").addEventListener("click", () => {
      if (c.mirror?.recording.active) $("confirm-stop").showModal();
      else this.command("start_recording", {});
    });
    $("confirm-stop").addEventListener("close", () => {
      if ($("confirm-stop").returnValue === "stop" && c.mirror?.recording.active) this.command("stop_recording", {});
      $("confirm-stop").returnValue = "";
    });
    $("chime-toggle").addEventListener("click", () => {
      this.chimeOn = !this.chimeOn;
      localStorage.setItem(CHIME_KEY, this.chimeOn ? "on" : "off");
      this.renderChime();
    });
    const title = $("meeting-title-input");
    title.addEventListener("change", () => this.command("set_title", { title: title.value }));
    title.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter") title.blur();
    });
    $("live-toggle").addEventListener("click", () =>
      this.command(c.mirror?.broadcast?.active ? "stop_broadcast" : "start_broadcast", {}).then(() =>
        this.renderBroadcast(),
      ),
    );
    $("live-link").addEventListener("click", () => this.showPublicLink());
    $("live-public").addEventListener("submit", (ev) => {
      ev.preventDefault();
      this.savePublic();
    });
    $("help-toggle").addEventListener("click", () => $("help").showModal());
    this.startOrder();
    document.addEventListener("keydown", (ev) => this.onKey(ev));

    setInterval(() => this.renderRecording(), 1000);
    setInterval(() => this.renderBroadcast(), 1000);
    setInterval(() => this.pollLevels(), METER_EVERY_MS);
    setInterval(() => this.pollQuality(), QUALITY_EVERY_MS);
  }

  async command(type, fields) {
    try {
      return await this.client.request(type, fields);
    } catch (err) {
      notify(errorText(err), "error");
      return null;
    }
  }

  // --- the next program -----------------------------------------------------------------

  syncDraft(force) {
    const program = this.client.mirror?.program;
    if (!program) return;
    if (force || !this.dirty) {
      this.draft = { layout: program.layout, slots: [...program.slots] };
      this.dirty = false;
      this.staged = null;
    } else if (this.staged) {
      this.draft = this.resolvePreset(this.staged); // who it names may have come or gone
    } else {
      // Someone left: never keep them in the next program.
      this.draft.slots = this.draft.slots.map((id) => (id && this.client.mirror.participant(id) ? id : null));
    }
    this.renderDraft();
  }

  layoutSpec(name) {
    return this.client.layouts.find((l) => l.name === name);
  }

  chooseLayout(name) {
    const spec = this.layoutSpec(name);
    if (!spec || !this.draft) return;
    const slots = this.draft.slots.slice(0, spec.slots.length);
    while (slots.length < spec.slots.length) slots.push(null);
    this.draft = { layout: name, slots };
    this.dirty = true;
    this.staged = null;
    this.renderDraft();
  }

  fillSlot(i, identity) {
    if (!this.draft) return;
    if (!identity) {
      notify(t("chair.pick_feed_first"), "info");
      return;
    }
    // One participant in one slot: moving them empties where they were.
    this.draft.slots = this.draft.slots.map((id) => (id === identity ? null : id));
    this.draft.slots[i] = identity;
    this.dirty = true;
    this.staged = null;
    this.renderDraft();
  }

  clearSlot(i) {
    if (!this.draft) return;
    this.draft.slots[i] = null;
    this.dirty = true;
    this.staged = null;
    this.renderDraft();
  }

  async take() {
    if (!this.draft) return;
    const result = await this.command("set_program", { layout: this.draft.layout, slots: this.draft.slots });
    if (result) {
      this.dirty = false;
      this.staged = null;
      this.renderDraft();
    }
  }

  renderLayoutPicker() {
    const picker = $("layout-picker");
    // Built once per catalogue and language: rebuilding on every event would move buttons under the pointer.
    const key = `${document.documentElement.lang}|${this.client.layouts.map((l) => l.name).join(",")}`;
    if (picker.dataset.built === key) return;
    picker.dataset.built = key;
    picker.replaceChildren(
      ...this.client.layouts.map((layout, index) => {
        const mini = el(
          "span",
          { class: "layout-mini", "aria-hidden": "true" },
          layout.slots.map((r, i) =>
            el("span", {
              class: "layout-mini-slot",
              style: { left: `${r.x * 100}%`, top: `${r.y * 100}%`, width: `${r.w * 100}%`, height: `${r.h * 100}%`, zIndex: String(i + 1) },
            }),
          ),
        );
        const label = t(`layouts.${layout.name}`);
        return el(
          "button",
          {
            class: "layout-choice",
            role: "radio",
            "aria-checked": String(this.draft?.layout === layout.name),
            dataset: { layout: layout.name },
            title: `${label} (${index + 1})`,
            onclick: () => this.chooseLayout(layout.name),
          },
          mini,
          el("span", { class: "layout-label" }, label === `layouts.${layout.name}` ? layout.name : label),
          el("kbd", {}, String(index + 1)),
        );
      }),
    );
  }

  renderDraft() {
    if (!this.draft) return;
    this.draftStage.program = this.draft;
    this.draftStage.render();
    // Drop targets and a clear button on each slot of the next program.
    for (const [i, slot] of this.draftStage.slots.entries()) {
      if (!slot || slot.node.dataset.dropReady) continue;
      slot.node.dataset.dropReady = "1";
      slot.node.addEventListener("dragover", (ev) => {
        ev.preventDefault();
        slot.node.classList.add("drop-over");
      });
      slot.node.addEventListener("dragleave", () => slot.node.classList.remove("drop-over"));
      slot.node.addEventListener("drop", (ev) => {
        ev.preventDefault();
        slot.node.classList.remove("drop-over");
        const identity = ev.dataTransfer.getData("text/x-identity");
        if (identity) this.fillSlot(i, identity);
      });
      const clear = el("button", { class: "slot-clear", title: t("chair.clear_slot"), "aria-label": t("chair.clear_slot") }, "×");
      clear.addEventListener("click", (ev) => {
        ev.stopPropagation();
        this.clearSlot(i);
      });
      slot.node.append(clear);
    }
    for (const button of $("layout-picker").querySelectorAll(".layout-choice")) {
      button.setAttribute("aria-checked", String(button.dataset.layout === this.draft.layout));
    }
    $("take").disabled = !this.dirty;
    $("draft-state").textContent = this.dirty ? t("chair.draft_changed") : t("chair.draft_same");
  }

  // --- endpoints ------------------------------------------------------------------------

  renderChime() {
    const button = $("chime-toggle");
    button.textContent = t(this.chimeOn ? "chair.chime_on" : "chair.chime_off");
    button.setAttribute("aria-pressed", String(this.chimeOn));
  }

  preview(identity) {
    this.previewed = identity;
    this.renderPreview();
    this.renderTiles();
  }

  renderPreview() {
    const identity = this.previewed && this.client.mirror?.participant(this.previewed) ? this.previewed : null;
    const track = identity ? this.client.previewTrack(identity) : null;
    attachTrack($("preview-video"), track);
    $("preview-frame").dataset.identity = identity ?? "";
    $("preview-card").hidden = !!(track && !track.muted);
    $("preview-card").textContent = identity ? displayName(this.client, identity) : t("chair.no_preview");
    $("preview-name").textContent = identity ? displayName(this.client, identity) : "";
  }

  // --- floor, recording, log ------------------------------------------------------------

  renderFloor() {
    const mirror = this.client.mirror;
    if (!mirror) return;
    $("floor-holder").textContent = mirror.floor
      ? t("floor.holder", { name: displayName(this.client, mirror.floor) })
      : t("floor.nobody");
    $("revoke").disabled = !mirror.floor;
    $("grant-next").disabled = mirror.floorQueue.length === 0;
    $("floor-queue").replaceChildren(
      ...mirror.floorQueue.map((identity) =>
        el(
          "li",
          { dataset: { identity }, class: this.announced.has(identity) ? "announced" : null },
          el("span", {}, displayName(this.client, identity)),
          el("button", { onclick: () => this.command("grant_floor", { identity }) }, t("tile.grant")),
        ),
      ),
    );
    if (mirror.floorQueue.length === 0) $("floor-queue").append(el("li", { class: "empty" }, t("chair.queue_empty")));
  }

  renderRecording() {
    const rec = this.client.mirror?.recording;
    const button = $("rec-toggle");
    button.textContent = rec?.active ? t("rec.stop") : t("rec.start");
    button.dataset.active = String(!!rec?.active);
    button.disabled = !this.client.mirror;
    // The elapsed time has a fixed width in the header: starting a recording moves nothing.
    $("rec-elapsed").textContent =
      rec?.active && rec.started_at ? `${t("rec.on_air")} ${formatElapsed(Date.now() / 1000 - rec.started_at)}` : "";
    const title = $("meeting-title-input");
    if (document.activeElement !== title && this.client.mirror) title.value = this.client.mirror.title;
  }

  /** What the public page shows (PATCH /api/rooms/{room}): topic, scheduled start, background. */
  async savePublic() {
    const room = this.client.mirror?.room;
    if (!room) return;
    const starts = $("live-starts").value;
    const body = {
      topic: $("live-topic").value,
      background: $("live-background").value,
      auto_broadcast: $("live-auto").checked,
      starts_at: starts ? new Date(starts).getTime() / 1000 : null,
    };
    try {
      const resp = await fetch(`/api/rooms/${encodeURIComponent(room)}`, {
        method: "PATCH",
        headers: { Authorization: `Bearer ${this.client.options.token}`, "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      if (!resp.ok) throw new Error(String(resp.status));
      notify(t("live.saved"), "info");
    } catch (err) {
      notify(t("live.save_failed"), "error");
    }
  }

  // The public broadcast (docs/live.md): its own button, apart from recording, and the link + QR.
  renderBroadcast() {
    const live = this.client.mirror?.broadcast;
    const button = $("live-toggle");
    button.textContent = live?.active ? t("live.stop") : t("live.start");
    button.dataset.active = String(!!live?.active);
    button.disabled = !this.client.mirror;
  }

  async showPublicLink() {
    const room = this.client.mirror?.room;
    if (!room) return;
    try {
      const resp = await fetch(`/api/rooms/${encodeURIComponent(room)}/public`, {
        headers: { Authorization: `Bearer ${this.client.options.token}` },
      });
      if (!resp.ok) throw new Error(String(resp.status));
      const info = await resp.json();
      $("live-qr").src = info.qr_svg;
      $("live-url").href = info.url;
      $("live-url").textContent = info.url;
      $("live-qr-png").href = `${info.qr_png}?download=1`;
      $("live-qr-svg").href = `${info.qr_svg}?download=1`;
      // The poster writes the start in this browser's time zone and the page's language.
      const tz = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
      $("live-poster").href = `${info.poster}?download=1&tz=${encodeURIComponent(tz)}&lang=${encodeURIComponent(lang())}`;
      $("live-topic").value = info.topic || "";
      $("live-background").value = info.background || "";
      $("live-auto").checked = !!info.auto_broadcast;
      $("live-starts").value = info.starts_at ? localInput(info.starts_at) : "";
      $("live-dialog").showModal();
    } catch (err) {
      notify(t("live.link_failed"), "error");
    }
  }

  render() {
    this.renderLayoutPicker();
    this.renderDraft();
    this.renderTiles();
    this.renderFloor();
    this.renderRecording();
    this.renderChime();
    this.renderOrder();
  }

  // --- keyboard -------------------------------------------------------------------------

  onKey(ev) {
    // An open dialog has the keyboard: Esc closes it (the browser's own handling).
    if (document.querySelector("dialog[open]")) return;
    const target = ev.target;
    if (target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement || target instanceof HTMLSelectElement) return;
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const key = ev.key;
    if (ev.shiftKey && /^Digit[1-9]$/.test(ev.code)) {
      this.recallPreset(Number(ev.code.slice(5)) - 1); // Shift+1..9: the saved presets in order
    } else if (key === "PageDown") {
      this.nextItem(); // what a presentation remote sends
    } else if (key === "PageUp") {
      this.previousItem();
    } else if (/^[1-9]$/.test(key)) {
      const layout = this.client.layouts[Number(key) - 1];
      if (layout) this.chooseLayout(layout.name);
    } else if (key === "Enter" || key === "t" || key === "T") {
      if (target instanceof HTMLButtonElement && key === "Enter") return; // the button's own action
      this.take();
    } else if (key === "Escape") {
      this.syncDraft(true);
    } else if (key === "n" || key === "N") {
      if (this.client.mirror?.floorQueue.length) this.command("grant_floor", {});
    } else if (key === "r" || key === "R") {
      if (this.client.mirror?.floor) this.command("revoke_floor", {});
    } else if (key === "ArrowRight" || key === "ArrowLeft") {
      const ids = this.participants().map((p) => p.identity);
      if (!ids.length) return;
      const at = ids.indexOf(this.previewed);
      const next = key === "ArrowRight" ? at + 1 : at <= 0 ? ids.length - 1 : at - 1;
      this.preview(ids[next % ids.length]);
    } else if (key === "?") {
      $("help").showModal();
    } else {
      return;
    }
    ev.preventDefault();
  }
}

Object.assign(Console.prototype, tileMethods, logMethods, orderMethods);

async function main() {
  const opened = await openPage("chair");
  if (!opened) return; // a link for another page: the notice says which
  const { token, titleKey } = opened;

  const client = new RoomClient({
    token,
    device: "venue",
    // The console runs the meeting; the chair speaks from the main venue's own screen.
    publish: { audio: false, video: false },
    videoSlots: 0,
    audioSlots: 3,
  });
  window.conference = { client };
  const console_ = new Console(client);
  window.conference.console = console_;
  window.conference.comments = new CommentsPanel($("chair-comments"), client, {
    onFigures: (figures) => renderFigures($("chair-figures"), figures),
  });
  bindConnectionState(client, $("conn"));
  bindFatal(client, titleKey);
  console_.start();
  window.conference.clips = new ClipPanel(client, (type, fields) => console_.command(type, fields));
  window.conference.clips.start();
  window.conference.speaking = startSpeakingPanel(client, $("speaking-panel"));
  client.addEventListener("joined", () => {
    if (!client.can("set_program")) showFatal(t("chair.not_chair"));
    console_.render();
  });
  try {
    client.layouts = await loadLayouts(null);
  } catch {
    // the join reply brings the catalogue too
  }
  client.start();
}

main().catch((err) => {
  console.error(err);
  notify(String(err), "error", 30000);
});

/** Unix seconds as a datetime-local input's value (the browser's local time). */
function localInput(seconds) {
  const d = new Date(seconds * 1000);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}
