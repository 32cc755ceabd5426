// The moderator's page (/moderate): the committee's staff approve, reject, pin, answer and put the
// public's comments on screen. A socket of its own (role moderator: no media) for the room's events
// and the comments as they come; the figures the organisers report, and the room's moderation setting.

import { RoomClient } from "./client.js";
import { CommentsPanel, renderFigures } from "./comments-panel.js";
import { t } from "./i18n.js";
import { bindFatal, bindMeetingTitle, openPage } from "./page.js";
import { bindConnectionState, notify } from "./ui.js";

const $ = (id) => document.getElementById(id);

async function main() {
  const opened = await openPage("moderate");
  if (!opened) return;
  const { token, claims, titleKey } = opened;
  const client = new RoomClient({ token, device: "venue", publish: { audio: false, video: false }, videoSlots: 0, audioSlots: 0 });
  window.conference = { client };
  const panel = new CommentsPanel($("moderation"), client, {
    filter: "pending",
    onFigures: (figures) => renderFigures($("figures"), figures),
  });
  window.conference.panel = panel;
  bindConnectionState(client, $("conn"));
  bindFatal(client, titleKey);
  bindMeetingTitle(client, claims, $("meeting-title"));
  const setting = $("moderation-on");
  const renderSetting = () => {
    setting.checked = client.mirror?.commentModeration ?? true;
  };
  client.addEventListener("room", renderSetting);
  client.addEventListener("joined", renderSetting);
  setting.addEventListener("change", async () => {
    const resp = await fetch(`/api/rooms/${encodeURIComponent(claims.room)}`, {
      method: "PATCH",
      headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
      body: JSON.stringify({ comment_moderation: setting.checked }),
    });
    if (!resp.ok) {
      notify(t("comments.setting_refused"), "error");
      renderSetting();
    }
  });
  client.start();
}

main().catch((err) => {
  console.error(err);
  notify(String(err), "error", 30000);
});
