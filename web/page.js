// What every page does around joining, written once: the language, the join form (a token or a
// whole invitation link, also offered again when a link has expired), which roles a page serves,
// the meeting's title, the final notices, and for the venue and the phone everything up to the
// join. Camera and microphone open only after the server let the endpoint in, and every track
// stops when the page is removed, refused or closed.

import { decodeToken, rememberTokenInUrl, RoomClient, storedSession, tokenFromUrl } from "./client.js";
import { applyI18n, languageSwitch, t } from "./i18n.js";
import { LocalMedia, MicSwitch, SoundOutput } from "./media.js";
import { fit16x9, ProgramStage } from "./stage.js";
import { bindConnectionState, el, loadLayouts, notify } from "./ui.js";

/** The page each role's link opens: a page refuses the other roles and names this one. */
export const ROLE_PAGE = { chair: "chair", venue: "venue", viewer: "venue", member: "phone", clerk: "clerk", moderator: "moderate" };

const $ = (id) => document.getElementById(id);

/** Translate the static page, put the language switch where the page has a place for it. */
export function initPage() {
  applyI18n(document);
  for (const slot of document.querySelectorAll("[data-language-switch]")) slot.replaceChildren(languageSwitch());
  window.addEventListener("languagechange-app", () => applyI18n(document));
}

// --- the join form -------------------------------------------------------------------------

/** The one join form of every page, built here instead of copied into each page's HTML. */
function joinForm(titleKey, submitKey) {
  let form = $("join-form");
  if (form) return form;
  form = el(
    "form",
    { id: "join-form", class: "join-form card", hidden: true },
    el("h1", { dataset: { i18n: titleKey } }, t(titleKey)),
    el(
      "label",
      {},
      el("span", { dataset: { i18n: "join.token_label" } }, t("join.token_label")),
      el("textarea", { name: "token", rows: "4", required: true, autocomplete: "off" }),
    ),
    el("p", { class: "form-error", role: "alert", dataset: { formError: "" } }),
    el("button", { type: "submit", class: "primary", dataset: { i18n: submitKey } }, t(submitKey)),
    el("div", { dataset: { languageSwitch: "" } }, languageSwitch()),
  );
  document.body.prepend(form);
  return form;
}

/** A token from what a person pasted: a bare token or a whole invitation link. */
function tokenFromText(text) {
  const value = text.trim();
  if (!value.includes("token=")) return value;
  try {
    return new URL(value, location.href).searchParams.get("token") || value;
  } catch {
    return value; // not a link: take the text as it is
  }
}

function tokenProblem(claims) {
  if (!claims) return "join.bad_token";
  if (claims.exp && claims.exp * 1000 < Date.now()) return "join.expired_token";
  return null;
}

/**
 * The token from the address, or ask for one. Resolves with a token that is readable and not
 * expired; an expired one in the address brings the form up with that said.
 */
export function obtainToken({ titleKey, submitKey = "join.submit" }) {
  const form = joinForm(titleKey, submitKey);
  const error = form.querySelector("[data-form-error]");
  const fromUrl = tokenFromUrl();
  let problem = fromUrl ? tokenProblem(decodeToken(fromUrl)) : null;
  // Reloaded after its token expired, while the tab still holds a session credential for it.
  if (problem === "join.expired_token" && storedSession(fromUrl)) problem = null;
  if (fromUrl && !problem) return Promise.resolve(fromUrl);
  form.hidden = false;
  if (problem) error.textContent = t(problem);
  return new Promise((resolve) => {
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const value = tokenFromText(form.querySelector("[name=token]").value);
      const wrong = tokenProblem(decodeToken(value));
      if (wrong) {
        error.textContent = t(wrong);
        return;
      }
      error.textContent = "";
      form.hidden = true;
      rememberTokenInUrl(value);
      resolve(value);
    });
  });
}

/** After a final refusal of the link (expired, revoked): the form again, to paste a new link. */
export function offerNewLink(titleKey, message) {
  const form = joinForm(titleKey, "join.submit");
  form.querySelector("[data-form-error]").textContent = message;
  form.hidden = false;
  form.classList.add("over-fatal");
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const value = tokenFromText(form.querySelector("[name=token]").value);
    const wrong = tokenProblem(decodeToken(value));
    if (wrong) {
      form.querySelector("[data-form-error]").textContent = t(wrong);
      return;
    }
    rememberTokenInUrl(value);
    location.reload();
  });
}

// --- final notices -------------------------------------------------------------------------

/** The full-screen notice of a page that cannot go on (created once, the same on every page). */
export function showFatal(...content) {
  let box = $("fatal");
  if (!box) {
    box = el("div", { id: "fatal", class: "fatal", role: "alert" });
    document.body.append(box);
  }
  box.replaceChildren(el("div", { class: "fatal-text" }, ...content));
  box.hidden = false;
  return box;
}

/**
 * Refuse a token whose role this page does not serve, before anything connects or opens a
 * device, and say which page that role uses (with the link to it).
 */
function refuseRole(token, claims, page) {
  const right = ROLE_PAGE[claims.role];
  if (!right || right === page) return false;
  const link = `/${right}?token=${encodeURIComponent(token)}`;
  showFatal(
    el("p", {}, t("page.wrong_role", { role: t(`roles.${claims.role}`), page: t(`pages.${right}`) })),
    el("a", { class: "button primary", href: link, dataset: { rightPage: right } }, t("page.open_right", { page: t(`pages.${right}`) })),
  );
  return true;
}

/** Say why the client stopped for good (removed, replaced, bad token); an expired link gets the form. */
export function bindFatal(client, titleKey, onFatal = () => {}) {
  client.addEventListener("fatal", (ev) => {
    onFatal();
    const key = `fatal.${ev.detail.code}`;
    const text = t(key) === key ? `${t("fatal.generic")} (${ev.detail.code}: ${ev.detail.reason || ""})` : t(key);
    showFatal(el("p", {}, text));
    if (ev.detail.code === "unauthorized") offerNewLink(titleKey, text);
  });
  client.addEventListener("notice", (ev) => {
    if (ev.detail.type === "shutdown") notify(t("conn.server_restarting"), "warn");
  });
}

/**
 * An outage notice over the frozen picture: once the page had joined, a connection down for
 * `delayMs` (signaling gone, or media disconnected) shows `overlay` until it is back.
 * `body[data-outage]` says so to the rest of the page.
 */
export function bindOutage(client, overlay, delayMs = 3000) {
  let timer = null;
  const check = () => {
    const final = client.state === "failed" || client.state === "closed";
    const down =
      !!client.you && !final && (client.state !== "joined" || ["disconnected", "failed"].includes(client.mediaState));
    if (!down) {
      clearTimeout(timer);
      timer = null;
      overlay.hidden = true;
      delete document.body.dataset.outage;
    } else if (!timer && overlay.hidden) {
      timer = setTimeout(() => {
        overlay.hidden = false;
        document.body.dataset.outage = "true";
      }, delayMs);
    }
  };
  client.addEventListener("state", check);
  client.addEventListener("media", check);
}

// --- the page's start ----------------------------------------------------------------------

/**
 * Language, token (address or form) and role check: resolves with {token, claims}, or with null
 * when the page refused the token's role (the notice says which page to use).
 */
export async function openPage(page, { submitKey } = {}) {
  initPage();
  const titleKey = `${page}.title`;
  const token = await obtainToken({ titleKey, submitKey });
  const claims = decodeToken(token) || {};
  if (refuseRole(token, claims, page)) return null;
  $(page).hidden = false;
  return { token, claims, titleKey };
}

/** The meeting's title as the chair named it (the room's name until then). */
export function meetingTitle(client, claims) {
  return client.mirror?.title || claims.room || "";
}

/** Keep an element showing the meeting's title. */
export function bindMeetingTitle(client, claims, node) {
  const render = () => {
    node.textContent = meetingTitle(client, claims);
  };
  client.addEventListener("room", render);
  client.addEventListener("joined", render);
  render();
}

/** Keep an element showing the current agenda item ("议程2：…"), hidden when there is none. */
export function bindAgendaItem(client, node) {
  const render = () => {
    const mirror = client.mirror;
    const item = mirror?.currentItem;
    node.hidden = !item;
    node.textContent = item ? t("agenda.item", { n: mirror.agendaIndex + 1, title: item.title }) : "";
    node.dataset.index = item ? String(mirror.agendaIndex) : "";
  };
  client.addEventListener("room", render);
  client.addEventListener("joined", render);
  window.addEventListener("languagechange-app", render);
  render();
}

/**
 * What the venue screen and the phone share up to joining: the token, the room client, the
 * program stage, sound, the microphone switch and the status lines. Camera and microphone open
 * once the first join succeeded (a refused or expired link never lights the camera); every track
 * stops when the page is removed, refused or closed. The page wires its own controls, then calls
 * `start()`. Resolves with null when the page refused the token's role.
 * Options: page (the id of the page's main element), device, video (open the camera too),
 * videoSlots, startMuted, stage (ProgramStage options).
 */
export async function joinAsEndpoint({ page, device, video, videoSlots, startMuted, stage: stageOptions = {} }) {
  const opened = await openPage(page);
  if (!opened) return null;
  const { token, claims, titleKey } = opened;

  const media = new LocalMedia();
  const client = new RoomClient({
    token,
    device,
    // What the page will send once its devices are open; corrected with `publish` if they fail.
    publish: { audio: true, video: !!video },
    videoSlots,
    audioSlots: 3,
    localTracks: () => ({ audio: media.audio, video: media.video }),
  });
  window.conference = { client, media };

  let devicesAsked = false;
  client.addEventListener("joined", async () => {
    if (devicesAsked) return;
    devicesAsked = true;
    const audio = client.can("publish_audio");
    const camera = !!video && client.can("publish_video");
    if (!audio && !camera) return;
    try {
      await media.open({ audio, video: camera });
    } catch (err) {
      // Without a camera or microphone the page still shows the program; say why it is not sending.
      notify(t(err.key || "media.no_devices"), "error", 15000);
    }
    if (client.state === "failed" || client.state === "closed") {
      media.stopAll(); // refused while the devices were opening
      return;
    }
    client.options.publish = { audio: !!media.audio, video: !!media.video };
    await client.replaceLocalTrack("audio", media.audio);
    await client.replaceLocalTrack("video", media.video);
    if (!media.audio || !!media.video !== !!video) {
      client.request("publish", client.options.publish).catch(() => {});
    }
  });
  window.addEventListener("pagehide", () => media.stopAll());

  const frame = $("program");
  fit16x9(frame);
  const stage = new ProgramStage(frame, client, {
    titleCard: () => meetingTitle(client, claims),
    freezeOnOutage: true,
    ...stageOptions,
  });
  const sound = new SoundOutput(client, t(device === "phone" ? "sound.prompt_phone" : "sound.prompt"));
  const mic = new MicSwitch(client, media, { startMuted });
  bindConnectionState(client, $("conn"));
  bindFatal(client, titleKey, () => media.stopAll());

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
