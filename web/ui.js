// Small pieces every page uses: building elements, notices, error texts, the connection state,
// the layout catalogue, names, the floor.

import { t } from "./i18n.js";

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value == null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    // Through the CSSOM, which a Content-Security-Policy without 'unsafe-inline' allows.
    else if (key === "style") Object.assign(node.style, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child != null && child !== false) node.append(child instanceof Node ? child : String(child));
  }
  return node;
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

/** The layout catalogue: from the join reply, else from /api/layouts. */
export async function loadLayouts(client) {
  if (client?.layouts?.length) return client.layouts;
  const res = await fetch("/api/layouts");
  if (!res.ok) throw new Error(`/api/layouts: ${res.status}`);
  const layouts = await res.json();
  if (client) client.layouts = layouts;
  return layouts;
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

/**
 * The floor button of a venue or a phone: ask for the floor, take the hand down (with the place
 * in the queue), or, holding the floor, end speaking. Returns its render function.
 */
export function speakControl(button, client) {
  button.addEventListener("click", async () => {
    const place = floorPlace(client);
    const type = place === "floor" ? "release_floor" : place ? "lower_hand" : "raise_hand";
    try {
      await client.request(type);
    } catch (err) {
      notify(errorText(err), "error");
    }
  });
  const render = () => {
    const place = floorPlace(client);
    button.textContent =
      place === "floor" ? t("floor.end_speaking") : place ? t("floor.lower_hand", { place }) : t("floor.raise_hand");
    button.dataset.raised = String(!!place && place !== "floor");
    button.dataset.floor = String(place === "floor");
    button.disabled = !client.can("request_floor");
  };
  client.addEventListener("room", render);
  client.addEventListener("joined", render);
  window.addEventListener("languagechange-app", render);
  render();
  return render;
}
