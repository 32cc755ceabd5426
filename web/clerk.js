// The clerk's page: the room's recordings, their renders in a chosen layout with progress, and
// downloads. It speaks the recorder's REST API (docs/recordings.md); an endpoint the server does
// not have yet (404) is reported as such, and the rest of the page keeps working.

import { renderFigures } from "./comments-panel.js";
import { showSpeakingTime } from "./clerk-speaking.js";
import { lang, t } from "./i18n.js";
import { openPage } from "./page.js";
import { el, formatElapsed, loadLayouts, notify } from "./ui.js";

const POLL_MS = 1000;
// The list follows new recordings and finished renders by itself, asking this often.
const LIST_EVERY_MS = 5000;
// A signed link from a view is renewed on click when it has less than this left (seconds).
const LINK_MARGIN_S = 30;
// Asked again this often while the server counts a long meeting's speaking time the first time.
const COUNT_RETRY_MS = 5000;
const RUNNING = new Set(["queued", "pending", "running", "rendering", "started"]);

const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

class RecordingsApi {
  constructor(token) {
    this.token = token;
  }

  async fetch(path, options = {}) {
    const res = await fetch(path, {
      ...options,
      headers: { Authorization: `Bearer ${this.token}`, ...(options.body ? { "Content-Type": "application/json" } : {}) },
    });
    if (!res.ok) {
      let body = {};
      try {
        body = await res.json();
      } catch {
        // not JSON: keep the status
      }
      throw new ApiError(res.status, body.error ?? String(res.status), body.message ?? res.statusText);
    }
    return res;
  }

  async json(path, options) {
    return (await this.fetch(path, options)).json();
  }
}

function apiErrorText(err) {
  if (err instanceof ApiError) {
    if (err.status === 404 && err.code === "404") return t("clerk.api_missing");
    if (err.status === 401) return t("clerk.unauthorized");
    if (err.status === 403) return t("clerk.forbidden");
    if (err.status === 409) return `${t("clerk.not_ready")} (${err.message})`;
    if (err.status === 404 && err.code === "not_found") return t("clerk.render_missing");
    return `${t("errors.generic")}: ${err.message} (${err.status})`;
  }
  return `${t("errors.generic")}: ${err}`;
}

function formatTime(seconds) {
  if (seconds == null) return "—";
  return new Date(seconds * 1000).toLocaleString(lang(), { hour12: false });
}

function formatBytes(bytes) {
  if (bytes == null) return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}

// The recorder's field names, with the alternatives a reasonable API might use.
function normalise(r) {
  const started = r.started_at ?? r.start ?? null;
  const ended = r.ended_at ?? r.stopped_at ?? r.end ?? null;
  const duration = r.duration_s ?? (started != null && ended != null ? ended - started : null);
  const people = Array.isArray(r.participants)
    ? r.participants.map((p) => (typeof p === "string" ? p : (p.name ?? p.identity)))
    : null;
  return {
    id: r.id ?? r.recording_id,
    room: r.room,
    started,
    ended,
    duration,
    participants: people ? people.join("、") : (r.participant_count ?? r.participants ?? "—"),
    size: r.size_bytes ?? r.size ?? r.bytes ?? null,
    state: r.state ?? r.status ?? (ended == null ? "recording" : "finished"),
    people: Array.isArray(r.participants) ? r.participants : [],
    renders: r.renders ?? [],
    timeline: r.timeline ?? r.timeline_summary ?? r.chapters ?? [],
    speakingTime: r.speaking_time ?? null,
    publicFigures: r.public ?? null, // the public's comments, likes, viewers (signaling/comments.py)
    // Who sent video (a single-participant render of someone without video would be black).
    video: new Set((r.tracks ?? []).filter((tr) => tr.kind === "video").map((tr) => tr.identity)),
  };
}

/** A render's layout as the clerk chose it, in words. */
function layoutLabel(layout, people) {
  if (!layout) return "—";
  const [kind, who] = layout.split(":");
  if (kind === "program" || kind === "grid" || kind === "speaker") return t(`clerk.layout_${kind}`);
  if (kind === "single") {
    const person = people.find((p) => typeof p === "object" && p.identity === who);
    return `${t("clerk.layout_single")}: ${person?.name ?? who}`;
  }
  const key = `layouts.${kind}`;
  return t(key) === key ? layout : `${t("clerk.layout_fixed")}: ${t(key)}`;
}

class ClerkPage {
  constructor(api, claims) {
    this.api = api;
    this.claims = claims;
    this.selected = null;
    this.pollTimer = null;
    this.streams = [];
    this.shown = null; // {id, renders, people} of the open recording
    this.layouts = [];
    this.listed = ""; // the last list as the server sent it: redrawn only when it changed
    this.seen = new Map(); // render id -> {at, progress} when first seen running (time left)
  }

  async start() {
    $("refresh").addEventListener("click", () => this.list());
    $("date").addEventListener("change", () => this.list());
    $("render-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      this.startRender(new FormData(ev.target));
    });
    window.addEventListener("languagechange-app", () => {
      this.listed = "";
      this.list();
      if (this.selected) this.open(this.selected); // the details too, in the new language
    });
    setInterval(() => {
      if (!document.hidden) this.list();
    }, LIST_EVERY_MS);
    try {
      this.layouts = await loadLayouts(null);
    } catch {
      this.layouts = [];
    }
    await this.list();
  }

  showApiState(text) {
    $("api-state").hidden = !text;
    $("api-state").textContent = text ?? "";
  }

  async list() {
    const params = new URLSearchParams();
    if (this.claims.room) params.set("room", this.claims.room);
    if ($("date").value) params.set("date", $("date").value);
    let items;
    try {
      const data = await this.api.json(`/api/recordings?${params}`);
      const text = JSON.stringify(data);
      if (text === this.listed) return; // nothing new: keep the rows (and the pointer's target) still
      this.listed = text;
      items = (Array.isArray(data) ? data : (data.recordings ?? [])).map(normalise);
      this.showApiState(null);
    } catch (err) {
      this.showApiState(apiErrorText(err));
      this.listed = "";
      items = [];
    }
    items.sort((a, b) => (b.started ?? 0) - (a.started ?? 0));
    $("empty").hidden = items.length > 0;
    $("recordings").replaceChildren(
      ...items.map((r) =>
        el(
          "tr",
          { dataset: { recording: r.id }, class: this.selected === r.id ? "selected" : null },
          el("td", {}, formatTime(r.started)),
          el("td", {}, formatTime(r.ended)),
          el("td", {}, r.duration != null ? formatElapsed(r.duration) : "—"),
          el("td", { class: "people" }, String(r.participants)),
          el("td", {}, formatBytes(r.size)),
          el("td", {}, el("span", { class: `state state-${r.state}` }, this.stateText(r.state))),
          el(
            "td",
            { class: "actions" },
            el("button", { onclick: () => this.open(r.id) }, t("clerk.details")),
            this.listDownload(r),
          ),
        ),
      ),
    );
  }

  /** The list's download of the program render: enabled once the file exists, else why not. */
  listDownload(r) {
    const job = r.renders.find((j) => j.layout === "program");
    const state = job?.state;
    const ready = state === "done" || state === "ready";
    const label = ready
      ? t("clerk.download")
      : RUNNING.has(state)
        ? t("clerk.rendering", { percent: Math.round((job.progress ?? 0) * 100) })
        : r.state === "recording"
          ? t("clerk.state_recording")
          : t("clerk.no_program_render");
    return el(
      "button",
      { class: "primary download", disabled: !ready, dataset: { renderState: state ?? "none" }, onclick: () => this.download(r.id, null, "mp4") },
      label,
    );
  }

  /** "45 % · about 0:12 left", from the progress seen since the render was first shown running. */
  progressText(job) {
    const progress = job.progress ?? 0;
    const now = Date.now() / 1000;
    const first = this.seen.get(job.id);
    if (!first) this.seen.set(job.id, { at: now, progress });
    const percent = `${Math.round(progress * 100)}%`;
    if (!first || progress <= first.progress + 0.01) return percent;
    const left = ((now - first.at) * (1 - progress)) / (progress - first.progress);
    return `${percent} · ${t("clerk.time_left", { left: formatElapsed(left) })}`;
  }

  stateText(state) {
    const key = `clerk.state_${state}`;
    const text = t(key);
    return text === key ? state : text;
  }

  async open(id) {
    this.selected = id;
    this.stopFollowing();
    let r;
    try {
      r = normalise(await this.api.json(`/api/recordings/${encodeURIComponent(id)}?lang=${encodeURIComponent(lang())}`));
    } catch (err) {
      this.showApiState(apiErrorText(err));
      return;
    }
    $("detail").hidden = false;
    $("detail").dataset.recording = id;
    $("detail-title").textContent = `${t("clerk.recording")} ${id}`;
    $("detail-meta").replaceChildren(
      el("dt", {}, t("clerk.col_start")),
      el("dd", {}, formatTime(r.started)),
      el("dt", {}, t("clerk.col_end")),
      el("dd", {}, formatTime(r.ended)),
      el("dt", {}, t("clerk.col_duration")),
      el("dd", {}, r.duration != null ? formatElapsed(r.duration) : "—"),
      el("dt", {}, t("clerk.col_participants")),
      el("dd", {}, String(r.participants)),
    );
    $("detail-timeline").replaceChildren(
      ...r.timeline.slice(0, 200).map((item) =>
        typeof item === "string"
          ? el("li", {}, item)
          : el(
              "li",
              {},
              el("time", {}, item.t != null ? formatElapsed(item.t) : formatTime(item.at)),
              " ",
              item.title ?? item.text ?? item.kind ?? "",
            ),
      ),
    );
    const counting = !r.speakingTime && r.state !== "recording";
    showSpeakingTime($("speaking-time"), r.speakingTime, (ext) => this.saveSheet(id, ext), counting);
    clearTimeout(this.speakingTimer);
    // A long meeting's first count: the details ask again until the figures are there.
    if (counting) this.speakingTimer = setTimeout(() => this.selected === id && this.open(id), COUNT_RETRY_MS);
    $("detail-public-box").hidden = !r.publicFigures;
    if (r.publicFigures) renderFigures($("detail-public"), r.publicFigures);
    this.renderLayoutChoices(r);
    this.showRenders(id, r.renders, r.people);
    this.follow(id);
    this.list(); // a render that finished shows in the list's download at once
  }

  stopFollowing() {
    clearTimeout(this.pollTimer);
    for (const source of this.streams) source.close();
    this.streams = [];
  }

  /**
   * Follow running renders: through their progress streams (EventSource, on the signed
   * `events_url`: it sends no header), else by asking again every second.
   */
  follow(id) {
    this.stopFollowing();
    const running = this.shown.renders.filter((job) => RUNNING.has(job.state ?? job.status));
    if (!running.length) return;
    const poll = () => {
      this.stopFollowing();
      this.pollTimer = setTimeout(() => this.open(id), POLL_MS);
    };
    if (!window.EventSource || running.some((job) => !job.events_url?.includes("sig="))) {
      poll();
      return;
    }
    for (const job of running) {
      const source = new EventSource(job.events_url);
      this.streams.push(source);
      source.addEventListener("progress", (ev) => {
        if (this.selected !== id) return;
        const update = JSON.parse(ev.data);
        if (RUNNING.has(update.state)) {
          const renders = this.shown.renders.map((j) => (j.id === update.id ? { ...j, ...update } : j));
          this.showRenders(id, renders, this.shown.people);
        } else {
          this.open(id); // done or failed: the view brings the download links
        }
      });
      // An expired link or a dropped stream: back to asking.
      source.onerror = poll;
    }
  }

  renderLayoutChoices(r) {
    const select = $("render-layout");
    const current = select.value || "program";
    const options = [
      ["program", t("clerk.layout_program")],
      ["grid", t("clerk.layout_grid")],
      ["speaker", t("clerk.layout_speaker")],
      ...this.layouts.map((l) => [l.name, `${t("clerk.layout_fixed")}: ${t(`layouts.${l.name}`)}`]),
    ];
    // One "single:ID" choice per participant the recorder lists with an identity.
    for (const p of r.people) {
      // Not the chair's console nor anyone else who sent no video: their render would be empty.
      if (typeof p === "object" && p.identity && r.video.has(p.identity) && p.role !== "chair") {
        options.push([`single:${p.identity}`, `${t("clerk.layout_single")}: ${p.name ?? p.identity}`]);
      }
    }
    select.replaceChildren(...options.map(([value, label]) => el("option", { value, selected: value === current }, label)));
  }

  showRenders(id, renders, people) {
    this.shown = { id, renders, people };
    $("renders").replaceChildren(
      ...renders.map((job) => {
        const state = job.state ?? job.status ?? "unknown";
        const progress = job.progress ?? 0; // 0..1
        const running = RUNNING.has(state);
        return el(
          "tr",
          { dataset: { render: job.id ?? "", layout: job.layout ?? "", state } },
          el("td", {}, layoutLabel(job.layout, people)),
          el("td", {}, job.size ?? (job.width ? `${job.width}x${job.height}` : "—")),
          el(
            "td",
            {},
            running
              ? el("progress", { max: "1", value: String(progress), "aria-label": t("clerk.progress") })
              : el("span", { class: `state state-${state}` }, this.stateText(state)),
            running ? el("span", { class: "progress-text" }, ` ${this.progressText(job)}`) : "",
          ),
          el("td", {}, formatBytes(job.size_bytes ?? job.bytes)),
          el(
            "td",
            {},
            state === "done" || state === "ready"
              ? [
                  this.linkButton(job.download_url, job.links_expire_at, id, job.id, "mp4", t("clerk.download"), "primary"),
                  job.vtt_url
                    ? this.linkButton(job.vtt_url, job.links_expire_at, id, job.id, "vtt", t("clerk.download_vtt"))
                    : "",
                ]
              : "",
          ),
        );
      }),
    );
    if (!renders.length) $("renders").append(el("tr", {}, el("td", { colspan: "5", class: "empty" }, t("clerk.no_renders"))));
  }

  async startRender(form) {
    if (!this.selected) return;
    try {
      await this.api.json(`/api/recordings/${encodeURIComponent(this.selected)}/renders`, {
        method: "POST",
        // Chapters and subtitles in the page's language (the recording's own by default).
        body: JSON.stringify({ layout: form.get("layout"), size: form.get("size"), language: lang() }),
      });
      notify(t("clerk.render_started"), "info");
    } catch (err) {
      notify(apiErrorText(err), "error");
    }
    await this.open(this.selected);
  }

  /**
   * A download as a plain link: the browser saves the file straight to disk (with resume), the
   * page never holds it. The view's signed link is used while it is fresh, else a new one is asked for.
   */
  linkButton(url, expiresAt, id, render, file, label, cls = "") {
    const link = el("a", { class: `button ${cls}`, href: url ?? "#", download: "", dataset: { file } }, label);
    link.addEventListener("click", (ev) => {
      if (url && url.includes("sig=") && expiresAt && Date.now() / 1000 < expiresAt - LINK_MARGIN_S) return;
      ev.preventDefault();
      this.download(id, render, file);
    });
    return link;
  }

  /** The speaking-time CSV or workbook: small, so fetched with the header and saved from memory. */
  async saveSheet(id, ext) {
    try {
      const res = await this.api.fetch(`/api/recordings/${encodeURIComponent(id)}/speaking-time.${ext}?lang=${encodeURIComponent(lang())}`);
      const url = URL.createObjectURL(await res.blob());
      const link = el("a", { href: url, download: `${id}-speaking-time.${ext}` });
      link.hidden = true;
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (err) {
      notify(apiErrorText(err), "error");
    }
  }

  /** Ask for a fresh signed link to a file (program render when `render` is null) and save it. */
  async download(id, render, file) {
    try {
      const { url } = await this.api.json(`/api/recordings/${encodeURIComponent(id)}/download-url`, {
        method: "POST",
        body: JSON.stringify(render ? { render, file } : { file }),
      });
      const link = el("a", { href: url, download: "" });
      link.hidden = true;
      document.body.append(link);
      link.click();
      link.remove();
    } catch (err) {
      notify(apiErrorText(err), "error");
    }
  }
}

async function main() {
  const opened = await openPage("clerk", { submitKey: "clerk.open" });
  if (!opened) return; // a link for another page: the notice says which
  const { token, claims } = opened;
  $("room-name").textContent = claims.admin ? t("clerk.all_rooms") : (claims.room ?? "");
  const page = new ClerkPage(new RecordingsApi(token), claims.admin ? {} : claims);
  window.conference = { clerk: page };
  await page.start();
}

main().catch((err) => {
  console.error(err);
  notify(String(err), "error", 30000);
});
