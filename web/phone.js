// The phone page of a member: one column, large buttons. Joins with the microphone switched
// off (fifty open phone microphones would drown the meeting), camera off; shows the program's
// main slot, the member's mute state and place in the floor queue, and asks for a tap to speak
// once the chair gives the floor.

import { t } from "./i18n.js";
import { attachTrack, displayName, errorText, floorPlace, joinAsEndpoint, notify, toggleHand } from "./ui.js";

const DATA_SAVING_KEY = "conference.phone.dataSaving";

const $ = (id) => document.getElementById(id);

async function main() {
  // Read before joining: data-saving mode asks the server for no video slot at all.
  let dataSaving = localStorage.getItem(DATA_SAVING_KEY) === "on";
  const { client, media, mic, frame, start } = await joinAsEndpoint({
    page: "phone",
    device: "phone",
    video: false,
    videoSlots: dataSaving ? 0 : 1,
    startMuted: true,
    stage: { maxSlots: 1 },
  });

  $("hand").addEventListener("click", () => toggleHand(client));
  $("mic").addEventListener("click", () => mic.set(!mic.wantMuted));
  $("speak-now").addEventListener("click", () => mic.set(false));
  $("accept-unmute").addEventListener("click", () => mic.set(false));

  $("camera").addEventListener("click", async () => {
    const on = !media.video;
    try {
      if (on) await media.open({ audio: false, video: true });
      else media.stop("video");
      client.options.publish.video = on;
      await client.replaceLocalTrack("video", media.video);
      await client.request("publish", { audio: !!media.audio, video: on });
    } catch (err) {
      notify(err.key ? t(err.key) : errorText(err), "error");
    }
    render();
  });

  $("data-saving").addEventListener("click", () => {
    dataSaving = !dataSaving;
    localStorage.setItem(DATA_SAVING_KEY, dataSaving ? "on" : "off");
    // The number of video slots is fixed at join: rejoin to change it (a second or two).
    client.options.videoSlots = dataSaving ? 0 : 1;
    if (client.state === "joined") client.reconnectNow();
    render();
  });

  let hadFloor = false;
  const render = () => {
    const mirror = client.mirror;
    const place = floorPlace(client);
    const holder = mirror?.floor;
    $("floor").textContent = holder ? t("floor.holder", { name: displayName(client, holder) }) : t("floor.nobody");
    $("place").textContent =
      place === "floor" ? t("floor.you_have_it") : place ? t("floor.your_place", { place }) : "";
    const hand = $("hand");
    hand.textContent = place === "floor" ? t("floor.you_have_it") : place ? t("floor.lower_hand", { place }) : t("floor.raise_hand");
    hand.disabled = place === "floor";
    hand.dataset.raised = String(!!place);
    const micState = $("mic-state");
    micState.textContent = mic.label();
    micState.dataset.live = String(mic.live);
    micState.dataset.chairMuted = String(mic.chairMuted);
    $("mic").textContent = mic.wantMuted ? t("mic.turn_on") : t("mic.turn_off");
    $("mic").disabled = !media.audio;
    $("camera").textContent = media.video ? t("camera.turn_off") : t("camera.turn_on");
    const saving = $("data-saving");
    saving.textContent = dataSaving ? t("phone.audio_only_on") : t("phone.audio_only_off");
    saving.setAttribute("aria-pressed", String(dataSaving));
    const granted = place === "floor" && mic.wantMuted;
    $("granted").hidden = !granted;
    $("unmute-request").hidden = granted || !(mic.unmuteRequested && mic.wantMuted);
    if (place === "floor" && !hadFloor) notify(t("floor.granted_notice"), "info");
    hadFloor = place === "floor";
    frame.hidden = dataSaving;
    $("audio-only-card").hidden = !dataSaving;
    const main = holder ?? mirror?.program.slots[0];
    $("audio-only-speaker").textContent = main ? displayName(client, main) : "";
    const self = $("selfview");
    self.hidden = !media.video;
    attachTrack(self, media.video);
  };
  client.addEventListener("room", render);
  client.addEventListener("joined", render);
  mic.addEventListener("change", render);
  window.addEventListener("languagechange-app", render);
  render();

  start();
}

main().catch((err) => {
  console.error(err);
  notify(String(err), "error", 30000);
});
