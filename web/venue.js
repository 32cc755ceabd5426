// The venue screen: the big screen of a branch venue, often unattended. Opened with ?token=
// it joins by itself, publishes the venue's camera and microphone and shows the program full
// screen, slot for slot, following every change the chair makes.

import { t } from "./i18n.js";
import { attachTrack, bindDeviceSelect, displayName, floorPlace, joinAsEndpoint, notify, toggleHand } from "./ui.js";

const SELFVIEW_KEY = "conference.venue.selfview";
const CONTROLS_IDLE_MS = 5000;

const $ = (id) => document.getElementById(id);

async function main() {
  const { client, media, mic, start } = await joinAsEndpoint({
    page: "venue",
    device: "venue",
    video: true,
    videoSlots: 9,
    startMuted: false,
  });

  // Self-view: shown unless the venue hid it (remembered on this screen).
  const selfview = $("selfview");
  const showSelf = () => {
    const hidden = localStorage.getItem(SELFVIEW_KEY) === "hidden";
    selfview.hidden = hidden || !media.video;
    attachTrack(selfview, media.video);
  };
  $("selfview-toggle").addEventListener("click", () => {
    localStorage.setItem(SELFVIEW_KEY, selfview.hidden ? "shown" : "hidden");
    showSelf();
  });
  media.addEventListener("change", showSelf);
  showSelf();

  const switched = async (track) => {
    await client.replaceLocalTrack(track.kind, track);
    mic.apply();
  };
  bindDeviceSelect($("mic-select"), media, "audio", switched);
  bindDeviceSelect($("cam-select"), media, "video", switched);

  $("mic").addEventListener("click", () => mic.set(!mic.wantMuted));
  $("accept-unmute").addEventListener("click", () => mic.set(false));
  $("hand").addEventListener("click", () => toggleHand(client));
  $("fullscreen").addEventListener("click", () => {
    if (document.fullscreenElement) document.exitFullscreen();
    else document.documentElement.requestFullscreen?.().catch(() => {});
  });

  const renderStatus = () => {
    const mirror = client.mirror;
    const floor = $("floor");
    floor.hidden = !mirror?.floor;
    floor.textContent = mirror?.floor ? t("floor.holder", { name: displayName(client, mirror.floor) }) : "";
    $("recording").hidden = !mirror?.recording?.active;
    const micState = $("mic-state");
    micState.textContent = mic.label();
    micState.dataset.live = String(mic.live);
    micState.dataset.chairMuted = String(mic.chairMuted);
    $("mic").textContent = mic.wantMuted ? t("mic.turn_on") : t("mic.turn_off");
    $("mic").disabled = !media.audio;
    $("unmute-request").hidden = !(mic.unmuteRequested && mic.wantMuted);
    const place = floorPlace(client);
    const hand = $("hand");
    hand.textContent =
      place === "floor" ? t("floor.you_have_it") : place ? t("floor.lower_hand", { place }) : t("floor.raise_hand");
    hand.disabled = place === "floor" || !client.can("request_floor");
  };
  client.addEventListener("room", renderStatus);
  client.addEventListener("joined", renderStatus);
  mic.addEventListener("change", renderStatus);
  window.addEventListener("languagechange-app", renderStatus);
  renderStatus();

  // Controls fade out on an unattended screen and come back on any movement.
  let idleTimer = null;
  const wake = () => {
    document.body.classList.remove("idle");
    clearTimeout(idleTimer);
    idleTimer = setTimeout(() => document.body.classList.add("idle"), CONTROLS_IDLE_MS);
  };
  for (const type of ["pointermove", "pointerdown", "keydown"]) document.addEventListener(type, wake);
  wake();

  start();
}

main().catch((err) => {
  console.error(err);
  notify(String(err), "error", 30000);
});
