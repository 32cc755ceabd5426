// The phone page of a member: one column upright, two sideways, large buttons. Joins with the
// microphone switched off (fifty open phone microphones would drown the meeting), camera off;
// shows the meeting's title and the member's own name, that the meeting is recorded, the
// program's main slot, the member's microphone and place in the floor queue, asks for a tap to
// speak once the chair gives the floor, and lets the member end speaking.

import { t } from "./i18n.js";
import { bindMicControl } from "./media.js";
import { bindAgendaItem, bindMeetingTitle, bindOutage, joinAsEndpoint } from "./page.js";
import { attachTrack } from "./stage.js";
import { mountFloorTimer } from "./floor-timer.js";
import { bindMemberComment } from "./member-comment.js";
import { displayName, errorText, floorPlace, notify, speakControl } from "./ui.js";

const DATA_SAVING_KEY = "conference.phone.dataSaving";

const $ = (id) => document.getElementById(id);

async function main() {
  // Read before joining: data-saving mode asks the server for no video slot at all.
  let dataSaving = localStorage.getItem(DATA_SAVING_KEY) === "on";
  const endpoint = await joinAsEndpoint({
    page: "phone",
    device: "phone",
    video: false,
    videoSlots: dataSaving ? 0 : 1,
    startMuted: true,
    stage: { maxSlots: 1 },
  });
  if (!endpoint) return; // a link for another page: the notice says which
  const { client, claims, media, mic, frame, start } = endpoint;

  bindMeetingTitle(client, claims, $("meeting-title"));
  bindMemberComment($("member-comment"), client);
  bindAgendaItem(client, $("agenda-item"));
  bindOutage(client, $("outage"));
  bindMicControl($("mic"), mic);
  const hand = speakControl($("hand"), client);
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

  mountFloorTimer($("floor-timer"), client);
  const render = () => {
    const mirror = client.mirror;
    const place = floorPlace(client);
    const holder = mirror?.floor;
    $("member-name").textContent = client.you?.name || claims.name || "";
    $("recording").hidden = !mirror?.recording?.active;
    $("broadcasting").hidden = !mirror?.broadcast?.active; // the public sees this meeting live
    // Said once: the floor line names who speaks ("you" when it is the member).
    const floor = $("floor");
    floor.textContent =
      place === "floor"
        ? t("floor.you_have_it")
        : holder
          ? t("floor.holder", { name: displayName(client, holder) })
          : t("floor.nobody");
    floor.dataset.state = place === "floor" ? "me" : holder ? "other" : "nobody";
    $("place").textContent = place && place !== "floor" ? t("floor.your_place", { place }) : "";
    hand();
    $("camera").textContent = media.video ? t("camera.turn_off") : t("camera.turn_on");
    const saving = $("data-saving");
    saving.textContent = dataSaving ? t("phone.audio_only_on") : t("phone.audio_only_off");
    saving.setAttribute("aria-pressed", String(dataSaving));
    const granted = place === "floor" && mic.wantMuted;
    $("granted").hidden = !granted;
    floor.hidden = granted; // the banner says it, with the button to start
    $("unmute-request").hidden = granted || !(mic.unmuteRequested && mic.wantMuted);
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
  media.addEventListener("change", render);
  window.addEventListener("languagechange-app", render);
  render();

  start();
}

main().catch((err) => {
  console.error(err);
  notify(String(err), "error", 30000);
});
