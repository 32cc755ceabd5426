// The venue screen: the big screen of a branch venue, often unattended for a three-hour meeting.
// Opened with ?token= it joins by itself, publishes the venue's camera and microphone and shows
// the program full screen, slot for slot, following every change the chair makes. What the
// audience sees is never covered by this page's own things: the self-view goes only where no
// slot of the current layout is, empty slots show the meeting's title, a room with nothing on
// the program shows a waiting screen, an outage says so over the frozen picture.

import { showComment } from "./comment-caption.js";
import { lang, t } from "./i18n.js";
import { mountFloorTimer } from "./floor-timer.js";
import { bindDeviceSelect, bindMicControl } from "./media.js";
import { bindAgendaItem, bindMeetingTitle, bindOutage, joinAsEndpoint, meetingTitle } from "./page.js";
import { attachTrack } from "./stage.js";
import { displayName, notify, speakControl } from "./ui.js";

const SELFVIEW_KEY = "conference.venue.selfview"; // "off", else shown where it fits
const CONTROLS_IDLE_MS = 5000;
// Widths tried for the self-view, largest first; it is shown only where one fits beside the slots.
const SELFVIEW_WIDTHS = [256, 224, 192, 160, 128];
const MARGIN = 12;

const $ = (id) => document.getElementById(id);

const overlaps = (a, b) => a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;

/**
 * A place for a w x h box inside `area` that overlaps none of `taken` (page rectangles),
 * trying the corners, bottom-right first: {left, top} or null.
 */
function freeCorner(area, taken, w, h) {
  const xs = [area.right - w, area.left];
  const ys = [area.bottom - h, area.top];
  for (const top of ys) {
    for (const left of xs) {
      const box = { left, top, right: left + w, bottom: top + h };
      if (left < area.left || top < area.top) continue;
      if (!taken.some((r) => overlaps(box, r))) return box;
    }
  }
  return null;
}

async function main() {
  const endpoint = await joinAsEndpoint({
    page: "venue",
    device: "venue",
    video: true,
    videoSlots: 9,
    startMuted: false,
  });
  if (!endpoint) return; // a link for another page: the notice says which
  const { client, claims, media, mic, frame, start } = endpoint;
  const venueName = () => client.you?.name || claims.name || "";

  bindMeetingTitle(client, claims, $("meeting-title"));
  bindAgendaItem(client, $("agenda-item"));
  bindOutage(client, $("outage"));
  bindMicControl($("mic"), mic);

  // Self-view: small, labelled, and only where it covers no slot of the current layout (nor the
  // bars, the floor banner or the controls); with no such place it stays hidden. "Off" is remembered.
  const box = $("selfview-box");
  const selfview = $("selfview");
  const wanted = () => localStorage.getItem(SELFVIEW_KEY) !== "off";
  const placeSelf = () => {
    attachTrack(selfview, media.video);
    const toggle = $("selfview-toggle");
    toggle.setAttribute("aria-pressed", String(wanted()));
    if (!wanted() || !media.video) {
      box.hidden = true;
      box.dataset.placement = wanted() ? "no-camera" : "off";
      toggle.textContent = t(wanted() ? "venue.selfview_auto" : "venue.selfview_off");
      return;
    }
    // The waiting screen is not the program: over it the self-view may take its corner.
    const slots = $("waiting").hidden ? [...frame.querySelectorAll(".slot:not([hidden])")] : [];
    const taken = slots.map((n) => n.getBoundingClientRect());
    for (const id of ["floor", "unmute-request"]) if (!$(id).hidden) taken.push($(id).getBoundingClientRect());
    const area = {
      left: MARGIN,
      right: window.innerWidth - MARGIN,
      top: document.querySelector(".overlay-bar.top").getBoundingClientRect().bottom + 4,
      bottom: document.querySelector(".overlay-bar.bottom").getBoundingClientRect().top - 4,
    };
    box.hidden = false; // measured with its caption
    const caption = box.querySelector("figcaption").getBoundingClientRect().height;
    let place = null;
    for (const w of SELFVIEW_WIDTHS) {
      place = freeCorner(area, taken, w, Math.round((w * 9) / 16) + caption);
      if (place) break;
    }
    box.hidden = !place;
    box.dataset.placement = place ? "free" : "no-room";
    toggle.textContent = t(place ? "venue.selfview_on" : "venue.selfview_no_room");
    if (place) {
      Object.assign(box.style, { left: `${place.left}px`, top: `${place.top}px`, width: `${place.right - place.left}px` });
    }
  };
  $("selfview-toggle").addEventListener("click", () => {
    localStorage.setItem(SELFVIEW_KEY, wanted() ? "off" : "auto");
    placeSelf();
  });
  media.addEventListener("change", placeSelf);
  frame.addEventListener("stage-render", placeSelf);
  window.addEventListener("resize", placeSelf);

  const switched = async (track) => {
    await client.replaceLocalTrack(track.kind, track);
    mic.apply();
  };
  bindDeviceSelect($("mic-select"), media, "audio", switched);
  bindDeviceSelect($("cam-select"), media, "video", switched);

  $("accept-unmute").addEventListener("click", () => mic.set(false));
  const hand = speakControl($("hand"), client);
  mountFloorTimer($("floor-timer"), client, { sound: true });
  $("fullscreen").addEventListener("click", () => {
    if (document.fullscreenElement) document.exitFullscreen();
    else document.documentElement.requestFullscreen?.().catch(() => {});
  });

  // With nothing on the program the audience sees a waiting screen, not empty boxes.
  const clock = () => {
    $("waiting-clock").textContent = new Date().toLocaleString(lang(), {
      dateStyle: "long",
      timeStyle: "short",
      hour12: false,
    });
  };
  setInterval(clock, 1000);
  clock();

  const renderStatus = () => {
    const mirror = client.mirror;
    $("venue-name").textContent = venueName();
    const floor = $("floor");
    floor.hidden = !mirror?.floor;
    $("floor-name").textContent = mirror?.floor ? displayName(client, mirror.floor) : "";
    $("recording").hidden = !mirror?.recording?.active;
    $("broadcasting").hidden = !mirror?.broadcast?.active; // the public sees this meeting live
    showComment($("public-comment"), mirror?.onScreen ?? null);
    $("unmute-request").hidden = !(mic.unmuteRequested && mic.wantMuted && !mic.chairMuted);
    const nothingOn = !!mirror && mirror.program.slots.every((s) => !s);
    $("waiting").hidden = !nothingOn;
    // Between sessions the public page's QR code: the hall's audience can follow and comment.
    const qr = client.publicUrl ? `${client.publicUrl}/qr.svg` : "";
    $("waiting-qr").hidden = !qr;
    if (qr && $("waiting-qr-img").getAttribute("src") !== qr) $("waiting-qr-img").src = qr;
    $("waiting-title").textContent = meetingTitle(client, claims);
    // The topic and the scheduled start the chair set for the public page (set_public).
    $("waiting-topic").textContent = mirror?.topic || "";
    $("waiting-topic").hidden = !mirror?.topic;
    const starts = mirror?.startsAt;
    $("waiting-starts").hidden = !starts;
    $("waiting-starts").textContent = starts
      ? t("venue.starts_at", {
          time: new Date(starts * 1000).toLocaleString(lang(), { dateStyle: "long", timeStyle: "short", hour12: false }),
        })
      : "";
    $("waiting-venue").textContent = venueName();
    hand();
    placeSelf();
  };
  client.addEventListener("room", renderStatus);
  client.addEventListener("joined", renderStatus);
  mic.addEventListener("change", renderStatus);
  window.addEventListener("languagechange-app", renderStatus);
  renderStatus();

  // While the controls show, the names of the slots along the bottom edge move up above them
  // (the controls cover the program's bottom strip); once the controls fade they go back.
  const liftCaptions = () => {
    const shown = !document.body.classList.contains("idle");
    const top = document.querySelector(".overlay-bar.bottom").getBoundingClientRect().top - 4;
    for (const caption of frame.querySelectorAll(".slot-caption")) {
      caption.style.transform = "";
      if (!shown || caption.hidden) continue;
      const over = caption.getBoundingClientRect().bottom - top;
      if (over > 0) caption.style.transform = `translateY(${-Math.ceil(over)}px)`;
    }
  };
  frame.addEventListener("stage-render", liftCaptions);
  window.addEventListener("resize", liftCaptions);

  // Controls fade out on an unattended screen and come back on any movement.
  let idleTimer = null;
  const wake = () => {
    document.body.classList.remove("idle");
    liftCaptions();
    clearTimeout(idleTimer);
    idleTimer = setTimeout(() => {
      document.body.classList.add("idle");
      liftCaptions();
    }, CONTROLS_IDLE_MS);
  };
  for (const type of ["pointermove", "pointerdown", "keydown"]) document.addEventListener(type, wake);
  wake();

  start();
}

main().catch((err) => {
  console.error(err);
  notify(String(err), "error", 30000);
});
