// The public's comment on the program's lower third (RoomState.on_screen), as the live stream and
// the recording draw it. What a visitor wrote is text: set with textContent only, never as markup.

import { t } from "./i18n.js";

/** Show `comment` ({name, sector, text, answered_by} or null) in `box` (.comment-caption). */
export function showComment(box, comment) {
  box.hidden = !comment;
  document.body.classList.toggle("has-comment", !!comment);
  if (!comment) return;
  const who = [comment.name, comment.sector].filter(Boolean).join(" · ");
  box.querySelector(".comment-who").textContent = who;
  const answered = box.querySelector(".comment-answered");
  answered.hidden = !comment.answered_by;
  answered.textContent = comment.answered_by ? t("comment.answered", { by: comment.answered_by }) : "";
  box.querySelector(".comment-text").textContent = comment.text;
  box.dataset.comment = String(comment.id);
}
