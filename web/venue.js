// The venue screen: the big screen of a branch venue, often unattended. Opened with ?token=
// it joins by itself, publishes the venue's camera and microphone and shows the program full
// screen, slot for slot, following every change the chair makes.

import { decodeToken, RoomClient } from "./client.js";
import { t } from "./i18n.js";
import {
  attachTrack,
  bindConnectionState,
  bindDeviceSelect,
  bindFatal,
  displayName,
  fit16x9,
  floorPlace,
  initPage,
  LocalMedia,
  loadLayouts,
  MicSwitch,
  notify,
  obtainToken,
  ProgramStage,
  SoundOutput,
  toggleHand,
} from "./ui.js";

const SELFVIEW_KEY = "conference.venue.selfview";
const CONTROLS_IDLE_MS = 5000;

const $ = (id) => document.getElementById(id);

async function main() {
  initPage();
  const token = await obtainToken($("join-form"));
  const claims = decodeToken(token) || {};
  $("venue").hidden = false;
  $("room-name").textContent = claims.room ?? "";

  const media = new LocalMedia();
  try {
    await media.open({ audio: true, video: true });
  } catch (err) {
    // A venue without a camera still shows the program; say why it is not sending.
    notify(t(err.key || "media.no_devices"), "error", 15000);
  }

  const client = new RoomClient({
    token,
    device: "venue",
    publish: { audio: !!media.audio, video: !!media.video },
    videoSlots: 9,
    audioSlots: 3,
    localTracks: () => ({ audio: media.audio, video: media.video }),
  });
  window.conference = { client, media };

  const frame = $("program");
  fit16x9(frame);
  const stage = new ProgramStage(frame, client);
  const sound = new SoundOutput(client, $("sound-prompt"));
  const mic = new MicSwitch(client, media, { startMuted: false });
  bindConnectionState(client, $("conn"));
  bindFatal(client, $("fatal"));

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
}

main().catch((err) => {
  console.error(err);
  notify(String(err), "error", 30000);
});
