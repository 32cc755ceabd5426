// The chair console's clip player ("VCR"): the room's prepared clips with thumbnail, duration and
// transcoding progress; upload; cue one (its preview plays here only); play it into a program
// slot, pause, seek, stop; the remaining time counted from the room's `clip` state (position and
// the time it was taken), so it is right after a reload. docs/protocol.md, "Prepared clips".

import { t } from "./i18n.js";
import { el, errorText, formatElapsed, notify } from "./ui.js";

const $ = (id) => document.getElementById(id);
const POLL_MS = 1000;

export class ClipPanel {
  constructor(client, command) {
    this.client = client;
    this.command = command;
    this.clips = [];
    this.cued = null; // clip id in the preview
    this.seeking = false;
  }

  start() {
    $("clip-file").addEventListener("change", () => this.upload());
    $("clip-play").addEventListener("click", () => this.play());
    $("clip-pause").addEventListener("click", () => this.command("pause_clip", {}));
    $("clip-stop").addEventListener("click", () => this.command("stop_clip", {}));
    const seek = $("clip-seek");
    seek.addEventListener("input", () => (this.seeking = true));
    seek.addEventListener("change", async () => {
      this.seeking = false;
      const at = Number(seek.value);
      if (this.client.mirror?.clip) await this.command("seek_clip", { at_s: at });
      else $("clip-preview").currentTime = at;
    });
    this.client.addEventListener("joined", () => this.refresh());
    // A film agenda item names its clip: advancing to it cues the clip here (issue 16).
    this.client.addEventListener("room", (ev) => {
      for (const e of ev.detail.events) {
        const clip = e.kind === "agenda_item" && e.clip ? this.clips.find((c) => c.id === e.clip) : null;
        if (clip?.state === "ready") this.cue(clip);
      }
    });
    setInterval(() => this.renderStatus(), 250);
    setInterval(() => {
      if (this.clips.some((c) => c.state === "processing")) this.refresh();
    }, POLL_MS);
  }

  get base() {
    return `/api/rooms/${encodeURIComponent(this.client.mirror?.room ?? "")}/clips`;
  }

  get auth() {
    return { Authorization: `Bearer ${this.client.options.token}` };
  }

  async refresh() {
    if (!this.client.mirror) return;
    const resp = await fetch(this.base, { headers: this.auth });
    if (!resp.ok) return;
    this.clips = (await resp.json()).clips;
    this.renderList();
  }

  async upload() {
    const input = $("clip-file");
    const file = input.files[0];
    if (!file) return;
    const form = new FormData();
    form.append("file", file, file.name);
    $("clip-upload-state").textContent = t("clips.uploading", { name: file.name });
    try {
      const resp = await fetch(this.base, { method: "POST", headers: this.auth, body: form });
      const body = await resp.json();
      if (!resp.ok) notify(`${t("clips.refused")}: ${body.message}`, "error", 10000);
    } catch (err) {
      notify(errorText(err), "error");
    } finally {
      input.value = "";
      $("clip-upload-state").textContent = "";
    }
    await this.refresh();
  }

  cue(clip) {
    this.cued = clip.id;
    const video = $("clip-preview");
    video.src = clip.preview_url;
    video.hidden = false;
    this.renderList();
    this.renderStatus();
  }

  async play() {
    const id = this.client.mirror?.clip?.id ?? this.cued;
    if (!id) {
      notify(t("clips.cue_first"), "info");
      return;
    }
    $("clip-preview").pause(); // the preview is for the chair's eyes; the meeting gets the player
    await this.command("play_clip", { clip: id, slot: Number($("clip-slot").value) });
  }

  renderList() {
    const list = $("clip-list");
    $("clip-empty").hidden = this.clips.length > 0;
    list.replaceChildren(
      ...this.clips.map((clip) => {
        const state =
          clip.state === "ready"
            ? formatElapsed(clip.duration_s)
            : clip.state === "processing"
              ? el("progress", { max: "1", value: String(clip.progress ?? 0) })
              : t("clips.failed", { error: clip.error ?? "" });
        return el(
          "li",
          { class: `clip-item${clip.id === this.cued ? " cued" : ""}`, dataset: { clip: clip.id, state: clip.state } },
          clip.thumbnail_url ? el("img", { src: clip.thumbnail_url, alt: "", width: "80", height: "45" }) : el("span", { class: "clip-thumb" }),
          el("span", { class: "clip-name" }, clip.name),
          el("span", { class: "clip-duration" }, state),
          clip.state === "ready" ? el("button", { class: "clip-cue", onclick: () => this.cue(clip) }, t("clips.cue")) : null,
        );
      }),
    );
  }

  /** One choice per slot of the program's layout (the clip goes into the program as it is). */
  renderSlots() {
    const layout = this.client.layouts?.find((l) => l.name === this.client.mirror?.program.layout);
    const count = layout ? layout.slots.length : 1;
    const select = $("clip-slot");
    if (select.options.length === count) return;
    const chosen = Math.min(Number(select.value) || 0, count - 1);
    select.replaceChildren(...Array.from({ length: count }, (_, i) => el("option", { value: String(i) }, String(i + 1))));
    select.value = String(chosen);
  }

  /** The player's state from the room (position counted from `at`), or the cued preview's. */
  renderStatus() {
    const cue = this.client.mirror?.clip;
    const seek = $("clip-seek");
    let position = 0;
    let duration = 0;
    let label = t("clips.idle");
    if (cue) {
      position = cue.position_s + (cue.playing ? Math.max(0, Date.now() / 1000 - cue.at) : 0);
      duration = cue.duration_s;
      position = Math.min(position, duration);
      label = t(cue.playing ? "clips.playing" : "clips.paused", { name: cue.name, slot: cue.slot + 1 });
    } else if (this.cued) {
      const clip = this.clips.find((c) => c.id === this.cued);
      duration = clip?.duration_s ?? 0;
      position = $("clip-preview").currentTime || 0;
      label = t("clips.cued", { name: clip?.name ?? "" });
    }
    $("clip-status").textContent = label;
    $("clip-remaining").textContent = duration ? `-${formatElapsed(duration - position)}` : "";
    $("clip-remaining").dataset.remaining = String(Math.max(0, duration - position).toFixed(1));
    seek.max = String(duration || 0);
    if (!this.seeking) seek.value = String(position);
    this.renderSlots();
    $("clip-pause").disabled = !cue?.playing;
    $("clip-stop").disabled = !cue;
  }
}
