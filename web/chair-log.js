// The chair console's log: room events kept as data and written in the current language with
// display names (also of people who have left), so a language switch rewrites every line.
// Methods of the console (web/chair.js).

import { lang, t } from "./i18n.js";
import { displayName, el } from "./ui.js";

const LOG_LIMIT = 300;

const $ = (id) => document.getElementById(id);

export const logMethods = {
  /** Keep a room event as data; its line is written in the current language when drawn. */
  log(e) {
    this.logEntries.unshift({ e, at: e.at ?? Date.now() / 1000 });
    if (this.logEntries.length > LOG_LIMIT) this.logEntries.length = LOG_LIMIT;
    const list = $("event-log");
    list.prepend(this.logItem(this.logEntries[0]));
    while (list.children.length > LOG_LIMIT) list.lastElementChild.remove();
  },

  renderLog() {
    $("event-log").replaceChildren(...this.logEntries.map((entry) => this.logItem(entry)));
  },

  logItem({ e, at }) {
    const when = new Date(at * 1000).toLocaleTimeString(lang(), { hour12: false });
    return el("li", { dataset: { version: e.version ?? "", kind: e.kind } }, el("time", {}, when), " ", this.logText(e));
  },

  /** One event in words, with display names (also of people who have left since). */
  logText(e) {
    const name = (id) => (id ? displayName(this.client, id) : "");
    const params = {
      name: e.kind === "participant_left" && e.name ? e.name : name(e.identity ?? e.participant?.identity ?? e.floor),
      by: name(e.by),
      layout: e.program ? t(`layouts.${e.program.layout}`) : "",
      reason: e.reason ? t(`reasons.${e.reason}`) : "",
      title: e.title ?? "",
    };
    let key = `log.${e.kind}`;
    if (e.kind === "mute") key = e.muted ? "log.mute_on" : e.self_muted ? "log.self_mute_on" : "log.mute_off";
    if (e.kind === "hand") key = e.raised ? "log.hand_up" : "log.hand_down";
    if (e.kind === "floor") {
      const byChair = e.by === this.client.you?.identity || this.client.mirror?.participant(e.by)?.role === "chair";
      const ended = !e.floor && e.by && !byChair; // the speaker ended it (release_floor)
      key = e.floor ? "log.floor_granted" : ended ? "log.floor_ended" : "log.floor_revoked";
    }
    if (e.kind === "recording") key = e.active ? "log.recording_started" : "log.recording_stopped";
    if (e.kind === "broadcast") key = e.active ? "log.broadcast_started" : "log.broadcast_stopped";
    if (e.kind === "clip") {
      key = !e.clip ? "log.clip_stopped" : e.clip.playing ? "log.clip_playing" : "log.clip_paused";
      params.title = e.clip?.name ?? "";
    }
    if (e.kind === "participant_connection") key = e.connected ? "log.reconnected" : "log.disconnected";
    const text = t(key, params);
    return text === key ? e.kind : text;
  }
};
