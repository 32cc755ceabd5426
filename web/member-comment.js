// A member's comment from the phone: posted with the member's own token (POST
// /api/rooms/{room}/comments), under the member's name, approved at once (docs/protocol.md).

import { t } from "./i18n.js";

/** Wire the form: form holds textarea.member-comment-text, button.member-comment-send, .member-comment-note. */
export function bindMemberComment(form, client) {
  const text = form.querySelector(".member-comment-text");
  const note = form.querySelector(".member-comment-note");
  text.placeholder = t("phone.comment_placeholder");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const room = client.mirror?.room;
    if (!room || !text.value.trim()) return;
    try {
      const resp = await fetch(`/api/rooms/${encodeURIComponent(room)}/comments`, {
        method: "POST",
        headers: { Authorization: `Bearer ${client.options.token}`, "Content-Type": "application/json" },
        body: JSON.stringify({ text: text.value.trim() }),
      });
      note.textContent = t(resp.ok ? "phone.comment_posted" : "phone.comment_failed");
      note.dataset.status = String(resp.status);
      if (resp.ok) text.value = "";
    } catch (err) {
      note.textContent = t("phone.comment_failed");
    }
  });
}
