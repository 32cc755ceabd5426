// Pieces every page uses: the program stage drawn from the layout catalogue, sound output with
// the browsers' autoplay rules, the camera and microphone, the join form, status and notices.

import { decodeToken, rememberTokenInUrl, RoomClient, tokenFromUrl } from "./client.js";
import { applyI18n, languageSwitch, t } from "./i18n.js";

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value == null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child != null && child !== false) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

/** Translate the static page, put the language switch in its header. */
export function initPage() {
  applyI18n(document);
  for (const slot of document.querySelectorAll("[data-language-switch]")) slot.replaceChildren(languageSwitch());
  window.addEventListener("languagechange-app", () => applyI18n(document));
}

/** A short message at the bottom of the screen. */
export function notify(message, kind = "info", ms = 5000) {
  let box = document.getElementById("notices");
  if (!box) {
    box = el("div", { id: "notices", class: "notices", role: "status", "aria-live": "polite" });
    document.body.append(box);
  }
  const item = el("div", { class: `notice notice-${kind}` }, message);
  box.append(item);
  setTimeout(() => item.remove(), ms);
}

/** A request error in the user's language ("errors.CODE" in the table, else the server's text). */
export function errorText(err) {
  const key = `errors.${err?.code}`;
  const text = t(key);
  return text === key ? `${t("errors.generic")}: ${err?.message ?? err}` : text;
}

// --- connection state ----------------------------------------------------------------------

/** Keep an element showing the connection state ("data-conn" drives the colour). */
export function bindConnectionState(client, node) {
  const render = () => {
    let key = `conn.${client.state}`;
    if (client.state === "joined" && client.mediaState !== "none") key = `media.${client.mediaState}`;
    node.dataset.conn = client.state === "joined" ? client.mediaState : client.state;
    node.textContent = t(key);
  };
  client.addEventListener("state", render);
  client.addEventListener("media", render);
  window.addEventListener("languagechange-app", render);
  render();
}

// --- the join form -------------------------------------------------------------------------

/**
 * The token from the address, or ask for one. Resolves with the token; the form accepts a
 * bare token or a whole invitation link.
 */
export function obtainToken(form) {
  const fromUrl = tokenFromUrl();
  if (fromUrl) return Promise.resolve(fromUrl);
  form.hidden = false;
  const input = form.querySelector("[name=token]");
  const error = form.querySelector("[data-form-error]");
  return new Promise((resolve) => {
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      let value = input.value.trim();
      if (value.includes("token=")) {
        try {
          value = new URL(value, location.href).searchParams.get("token") || value;
        } catch {
          // not a link: take the text as it is
        }
      }
      const claims = decodeToken(value);
      if (!claims) {
        error.textContent = t("join.bad_token");
        return;
      }
      if (claims.exp && claims.exp * 1000 < Date.now()) {
        error.textContent = t("join.expired_token");
        return;
      }
      error.textContent = "";
      form.hidden = true;
      rememberTokenInUrl(value);
      resolve(value);
    });
  });
}

// --- the program stage ---------------------------------------------------------------------

/** The layout catalogue: from the join reply, else from /api/layouts. */
export async function loadLayouts(client) {
  if (client?.layouts?.length) return client.layouts;
  const res = await fetch("/api/layouts");
  if (!res.ok) throw new Error(`/api/layouts: ${res.status}`);
  const layouts = await res.json();
  if (client) client.layouts = layouts;
  return layouts;
}

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
 * where a slot's picture comes from (the chair's console uses its previews).
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
      const name = identity ? mirror?.name(identity) || identity : t("stage.empty_slot");
      slot.name.textContent = identity ? name : "";
      slot.card.textContent = identity ? name : t("stage.empty_slot");
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
  }
}

// --- sound ---------------------------------------------------------------------------------

/**
 * Plays the audio slots. Browsers may refuse sound before the first click or tap: then a
 * prompt asks for one, and the first interaction anywhere turns sound on.
 */
export class SoundOutput {
  constructor(client, prompt) {
    this.client = client;
    this.prompt = prompt;
    this.elements = new Map();
    this.blocked = false;
    this.enabled = true;
    client.addEventListener("tracks", () => this.update());
    const unlock = () => this.unlock();
    for (const type of ["pointerdown", "keydown", "touchstart"]) {
      document.addEventListener(type, unlock, { capture: true });
    }
    prompt?.addEventListener("click", unlock);
  }

  update() {
    const container = document.body;
    for (const { mid, track } of this.client.audioTracks()) {
      let audio = this.elements.get(mid);
      if (!audio) {
        audio = el("audio", { autoplay: true, dataset: { audioMid: mid } });
        audio.hidden = true;
        container.append(audio);
        this.elements.set(mid, audio);
      }
      audio.muted = !this.enabled;
      const current = audio.srcObject?.getTracks()[0] ?? null;
      if (current !== track) {
        audio.srcObject = track ? new MediaStream([track]) : null;
        if (track) audio.play().catch((err) => this._blocked(err));
      }
    }
  }

  _blocked(err) {
    if (err?.name !== "NotAllowedError") return;
    this.blocked = true;
    if (this.prompt) this.prompt.hidden = false;
  }

  unlock() {
    if (!this.blocked) return;
    this.blocked = false;
    if (this.prompt) this.prompt.hidden = true;
    for (const audio of this.elements.values()) {
      if (audio.srcObject) audio.play().catch((err) => this._blocked(err));
    }
  }

  setEnabled(enabled) {
    this.enabled = enabled;
    for (const audio of this.elements.values()) audio.muted = !enabled;
  }
}

// --- camera and microphone -----------------------------------------------------------------

const DEVICE_KEY = "conference.devices";

/** The endpoint's own camera and microphone, with device choice remembered on this browser. */
export class LocalMedia extends EventTarget {
  constructor() {
    super();
    this.audio = null;
    this.video = null;
    this.choice = JSON.parse(localStorage.getItem(DEVICE_KEY) || "{}");
  }

  static available() {
    return !!navigator.mediaDevices?.getUserMedia;
  }

  /**
   * Open the microphone and/or camera; throws an Error whose `key` names a translated reason.
   * The chosen device is asked for `exact`: Chromium ignores an `ideal` deviceId for a device
   * other than the default (it kept the default microphone both after a switch and after a
   * reload). At start (`fallback`), a remembered device that is gone gives way to any device.
   */
  async open({ audio, video, fallback = true }) {
    if (!LocalMedia.available()) {
      const err = new Error("getUserMedia unavailable");
      err.key = window.isSecureContext ? "media.no_devices" : "media.needs_https";
      throw err;
    }
    if (!audio && !video) return;
    const constraints = (pinned) => {
      const device = (id) => (pinned && id ? { exact: id } : undefined);
      return {
        audio: audio ? { deviceId: device(this.choice.audio) } : false,
        video: video ? { deviceId: device(this.choice.video), width: { ideal: 1280 }, height: { ideal: 720 } } : false,
      };
    };
    const remembered = (audio && this.choice.audio) || (video && this.choice.video);
    let stream;
    try {
      try {
        stream = await navigator.mediaDevices.getUserMedia(constraints(true));
      } catch (cause) {
        const gone = cause?.name === "OverconstrainedError" || cause?.name === "NotFoundError";
        if (!(fallback && remembered && gone)) throw cause;
        stream = await navigator.mediaDevices.getUserMedia(constraints(false));
      }
    } catch (cause) {
      const err = new Error(String(cause));
      err.key = cause?.name === "NotAllowedError" ? "media.denied" : "media.no_devices";
      throw err;
    }
    for (const track of stream.getTracks()) {
      const old = this[track.kind];
      if (old && old !== track) old.stop();
      this[track.kind] = track;
    }
    this.dispatchEvent(new Event("change"));
  }

  async devices() {
    try {
      return await navigator.mediaDevices.enumerateDevices();
    } catch {
      return [];
    }
  }

  /** Switch to another device of a kind ("audio" | "video"). */
  async choose(kind, deviceId) {
    this.choice[kind] = deviceId;
    localStorage.setItem(DEVICE_KEY, JSON.stringify(this.choice));
    await this.open({ audio: kind === "audio", video: kind === "video", fallback: false });
  }

  stop(kind) {
    this[kind]?.stop();
    this[kind] = null;
    this.dispatchEvent(new Event("change"));
  }
}

/** Fill a <select> with the devices of one kind and switch on change. */
export async function bindDeviceSelect(select, media, kind, onSwitched) {
  const fill = async () => {
    const all = await media.devices();
    const wanted = kind === "audio" ? "audioinput" : "videoinput";
    const current = media[kind]?.getSettings().deviceId;
    select.replaceChildren(
      ...all
        .filter((d) => d.kind === wanted)
        .map((d, i) =>
          el(
            "option",
            { value: d.deviceId, selected: d.deviceId === current },
            d.label || `${t(kind === "audio" ? "devices.microphone" : "devices.camera")} ${i + 1}`,
          ),
        ),
    );
  };
  select.addEventListener("change", async () => {
    try {
      await media.choose(kind, select.value);
      await onSwitched?.(media[kind]);
    } catch (err) {
      notify(t(err.key || "media.no_devices"), "error");
    }
  });
  navigator.mediaDevices?.addEventListener?.("devicechange", fill);
  media.addEventListener("change", fill);
  await fill();
}

/** "12:05" style elapsed time. */
export function formatElapsed(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = String(s % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${sec}` : `${m}:${sec}`;
}

/** Who is speaking, named, for captions and notices. */
export function displayName(client, identity) {
  return client.mirror?.name(identity) || identity || "";
}

/** The role and device label of a participant ("venue" / "phone" / role). */
export function deviceLabel(participant) {
  if (!participant) return "";
  if (participant.role === "chair") return t("roles.chair");
  return t(participant.device === "phone" ? "devices.phone" : "devices.venue");
}

// --- the endpoint's own microphone ---------------------------------------------------------

/**
 * The microphone switch of a venue or phone. The participant's wish (``wantMuted``) is kept on
 * the page and told to the server after every (re)join, since a new connection starts unmuted;
 * the chair's mute overrides it and the track is disabled locally too, so nothing leaves the room.
 */
export class MicSwitch extends EventTarget {
  constructor(client, media, { startMuted = false } = {}) {
    super();
    this.client = client;
    this.media = media;
    this.wantMuted = startMuted;
    client.addEventListener("joined", () => this._afterJoin());
    client.addEventListener("room", () => this.apply());
    media.addEventListener("change", () => this.apply());
  }

  me() {
    return this.client.mirror?.participant(this.client.you?.identity);
  }

  get chairMuted() {
    return !!this.me()?.muted;
  }

  get unmuteRequested() {
    return !!this.me()?.unmute_requested;
  }

  get live() {
    return !!this.media.audio && !this.chairMuted && !this.wantMuted;
  }

  apply() {
    if (this.media.audio) this.media.audio.enabled = !this.chairMuted && !this.wantMuted;
    this.dispatchEvent(new Event("change"));
  }

  async _afterJoin() {
    const me = this.me();
    if (me && me.self_muted !== this.wantMuted && this.client.can("publish_audio")) {
      try {
        await this.client.request("self_mute", { muted: this.wantMuted });
      } catch (err) {
        notify(errorText(err), "error");
      }
    }
    this.apply();
  }

  /** Switch the microphone on or off; refused (with a notice) while the chair mutes us. */
  async set(muted) {
    if (!muted && this.chairMuted) {
      notify(t("mic.chair_muted_hint"), "warn");
      return false;
    }
    const before = this.wantMuted;
    this.wantMuted = muted;
    this.apply();
    try {
      await this.client.request("self_mute", { muted });
      return true;
    } catch (err) {
      if (err.code !== "closed") {
        this.wantMuted = before;
        this.apply();
        notify(errorText(err), "error");
      }
      return false;
    }
  }

  /** A short text for the current state. */
  label() {
    if (!this.media.audio) return t("mic.none");
    if (this.chairMuted) return t("mic.chair_muted");
    return t(this.wantMuted ? "mic.off" : "mic.on");
  }
}

/** My place in the floor queue: "floor" when I hold it, a number from 1, or 0 when not queued. */
export function floorPlace(client) {
  const me = client.you?.identity;
  const mirror = client.mirror;
  if (!mirror || !me) return 0;
  if (mirror.floor === me) return "floor";
  return mirror.floorQueue.indexOf(me) + 1;
}

/** Raise or lower my hand. */
export async function toggleHand(client) {
  const place = floorPlace(client);
  if (place === "floor") return;
  try {
    await client.request(place ? "lower_hand" : "raise_hand");
  } catch (err) {
    notify(errorText(err), "error");
  }
}

/** Show a final failure (removed, replaced, bad token) in place of the page's content. */
export function bindFatal(client, box) {
  client.addEventListener("fatal", (ev) => {
    const key = `fatal.${ev.detail.code}`;
    const text = t(key);
    box.textContent = text === key ? `${t("fatal.generic")} (${ev.detail.code}: ${ev.detail.reason || ""})` : text;
    box.hidden = false;
  });
  client.addEventListener("notice", (ev) => {
    if (ev.detail.type === "shutdown") notify(t("conn.server_restarting"), "warn");
  });
}

// --- a venue's or a phone's start -----------------------------------------------------------

/**
 * What the venue screen and the phone share up to joining: the token (from the address or the
 * form), camera and/or microphone, the room client, the program stage, sound, the microphone
 * switch and the status lines. The page wires its own controls, then calls `start()`.
 * Options: page (the id of the page's main element), device, video (open the camera at start),
 * videoSlots, startMuted, stage (ProgramStage options).
 */
export async function joinAsEndpoint({ page, device, video, videoSlots, startMuted, stage: stageOptions = {} }) {
  initPage();
  const $ = (id) => document.getElementById(id);
  const token = await obtainToken($("join-form"));
  const claims = decodeToken(token) || {};
  $(page).hidden = false;
  $("room-name").textContent = claims.room ?? "";

  const media = new LocalMedia();
  try {
    await media.open({ audio: true, video });
  } catch (err) {
    // Without a camera or microphone the page still shows the program; say why it is not sending.
    notify(t(err.key || "media.no_devices"), "error", 15000);
  }
  const client = new RoomClient({
    token,
    device,
    publish: { audio: !!media.audio, video: !!media.video },
    videoSlots,
    audioSlots: 3,
    localTracks: () => ({ audio: media.audio, video: media.video }),
  });
  window.conference = { client, media };

  const frame = $("program");
  fit16x9(frame);
  const stage = new ProgramStage(frame, client, stageOptions);
  const sound = new SoundOutput(client, $("sound-prompt"));
  const mic = new MicSwitch(client, media, { startMuted });
  bindConnectionState(client, $("conn"));
  bindFatal(client, $("fatal"));

  const start = () => {
    stage.render();
    sound.update();
    client.start();
    // The join reply carries the catalogue too; this only draws the stage sooner.
    loadLayouts(null)
      .then((layouts) => {
        if (!client.layouts.length) client.layouts = layouts;
        stage.render();
      })
      .catch(() => {});
  };
  return { token, claims, media, client, frame, stage, sound, mic, start };
}
