// The endpoint's own camera and microphone (device choice remembered), its microphone switch,
// and the room's sound with the browsers' autoplay rules.

import { t } from "./i18n.js";
import { el, errorText, floorPlace, notify, toggleHand } from "./ui.js";

// --- sound ---------------------------------------------------------------------------------

/**
 * Plays the audio slots. Browsers may refuse sound before the first click or tap: then a
 * prompt (a button with `promptText`) asks for one, and the first interaction anywhere turns sound on.
 */
export class SoundOutput {
  constructor(client, promptText) {
    this.client = client;
    const prompt = el("button", { id: "sound-prompt", class: "sound-prompt", hidden: true }, promptText);
    document.body.append(prompt);
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
    if ((!audio && !video) || this.stopped) return;
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
    if (this.stopped) {
      for (const track of stream.getTracks()) track.stop(); // the page was closed meanwhile
      return;
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

  /** Stop camera and microphone for good (removed, refused, page closed): the lights go out. */
  stopAll() {
    this.stopped = true;
    for (const kind of ["audio", "video"]) if (this[kind]) this.stop(kind);
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

  /** True while the page cannot know what the server enforces (not joined: an outage). */
  get unknown() {
    return this.client.state !== "joined";
  }

  /** A short text for the current state. */
  label() {
    if (this.unknown) return t("mic.unknown");
    if (!this.media.audio) return t("mic.none");
    if (this.chairMuted) return t("mic.chair_muted");
    return t(this.wantMuted ? "mic.off" : "mic.on");
  }

  /** What one press of the microphone control does now, in words, and the doing: [text, fn|null]. */
  action() {
    if (this.unknown || !this.media.audio) return ["", null];
    if (this.chairMuted) {
      if (!this.client.can("request_floor")) return ["", null];
      const place = floorPlace(this.client);
      return [place ? t("mic.hand_queued", { place }) : t("mic.ask_floor"), () => toggleHand(this.client)];
    }
    return this.wantMuted ? [t("mic.press_on"), () => this.set(false)] : [t("mic.press_off"), () => this.set(true)];
  }
}

/**
 * The one microphone control of a venue or a phone: a button that says the true state (on, off,
 * muted by the chair, unknown during an outage) and what pressing it does (switch, or ask for
 * the floor while muted by the chair). `#mic-state` inside carries data-live / data-chair-muted.
 */
export function bindMicControl(button, mic) {
  const state = el("span", { id: "mic-state", class: "mic-state" });
  const action = el("span", { class: "mic-action" });
  button.classList.add("mic-control");
  button.replaceChildren(state, action);
  button.addEventListener("click", () => mic.action()[1]?.());
  const render = () => {
    const [text, fn] = mic.action();
    state.textContent = mic.label();
    state.dataset.live = String(mic.live);
    state.dataset.chairMuted = String(mic.chairMuted);
    state.dataset.unknown = String(mic.unknown);
    button.dataset.state = mic.unknown ? "unknown" : mic.chairMuted ? "chair-muted" : mic.live ? "live" : "off";
    action.textContent = text;
    action.hidden = !text;
    button.disabled = !fn;
  };
  mic.addEventListener("change", render);
  mic.client.addEventListener("room", render);
  mic.client.addEventListener("state", render);
  window.addEventListener("languagechange-app", render);
  render();
  return render;
}
