// The public's comments for those who moderate them: the chair console's panel and the moderator's
// page (/moderate). Lists GET /api/rooms/{room}/comments, follows the socket's `comment` messages,
// and sends the moderator commands (approve_comment ... answer_comment) over the socket. What a
// visitor wrote is set as text only (textContent), never as markup.

import { t } from "./i18n.js";

const REFRESH_MS = 15000; // a safety net: changes arrive over the socket

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

export class CommentsPanel {
  /**
   * root: the panel's element, holding .comments-filter (select), .comments-order (select),
   * .comments-list (ol) and optionally .comments-figures; client: a joined RoomClient.
   */
  constructor(root, client, { filter = "approved", onFigures = null } = {}) {
    this.root = root;
    this.client = client;
    this.comments = new Map();
    this.figures = {};
    this.onFigures = onFigures;
    this.filterSelect = root.querySelector(".comments-filter");
    this.orderSelect = root.querySelector(".comments-order");
    this.list = root.querySelector(".comments-list");
    if (this.filterSelect) this.filterSelect.value = filter;
    this.filterSelect?.addEventListener("change", () => this.render());
    this.orderSelect?.addEventListener("change", () => this.render());
    client.addEventListener("comment", (e) => {
      this.comments.set(e.detail.comment.id, e.detail.comment);
      this.render();
      // The figures follow, once for a burst of changes.
      clearTimeout(this.figuresTimer);
      this.figuresTimer = setTimeout(() => this.load(), 1000);
    });
    client.addEventListener("joined", () => this.load());
    client.addEventListener("room", () => this.render()); // what is on screen
    setInterval(() => this.load(), REFRESH_MS);
  }

  get room() {
    return this.client.mirror?.room;
  }

  async load() {
    if (!this.room) return;
    try {
      const resp = await fetch(`/api/rooms/${encodeURIComponent(this.room)}/comments`, {
        headers: { Authorization: `Bearer ${this.client.options.token}` },
      });
      if (!resp.ok) return;
      const body = await resp.json();
      this.comments = new Map(body.comments.map((c) => [c.id, c]));
      this.figures = body.figures || {};
      this.onFigures?.(this.figures);
      this.render();
    } catch (err) {
      // the socket's messages and the next refresh bring them
    }
  }

  async act(type, comment, extra = {}) {
    try {
      const result = await this.client.request(type, { comment: comment.id, ...extra });
      if (result.comment) this.comments.set(result.comment.id, result.comment);
      this.render();
    } catch (err) {
      this.root.querySelector(".comments-error")?.replaceChildren(String(err.message || err));
    }
  }

  visible() {
    const filter = this.filterSelect?.value || "approved";
    const order = this.orderSelect?.value || "time";
    const shown = [...this.comments.values()].filter((c) => filter === "all" || c.status === filter);
    shown.sort((a, b) =>
      order === "likes"
        ? b.pinned - a.pinned || b.likes - a.likes || b.created_at - a.created_at
        : b.pinned - a.pinned || b.created_at - a.created_at,
    );
    return shown;
  }

  render() {
    const onScreen = this.client.mirror?.onScreen?.id;
    const items = this.visible().map((c) => this.item(c, c.id === onScreen));
    this.list.replaceChildren(...items);
    this.list.dataset.count = String(items.length);
    const pending = [...this.comments.values()].filter((c) => c.status === "pending").length;
    const badge = this.root.querySelector(".comments-pending");
    if (badge) badge.textContent = pending ? t("comments.pending_count", { n: pending }) : "";
  }

  item(c, onScreen) {
    const li = el("li", `moderated-comment status-${c.status}`);
    li.dataset.id = String(c.id);
    if (onScreen) li.classList.add("on-screen");
    const meta = el("p", "comment-meta");
    meta.append(el("strong", "comment-name", [c.name, c.sector].filter(Boolean).join(" · ")));
    const time = new Date(c.created_at * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    meta.append(" ", el("span", "comment-time", time));
    meta.append(" ", el("span", "tag", t(`comments.status_${c.status}`)));
    if (c.author === "member") meta.append(" ", el("span", "tag", t("comments.member")));
    if (c.reply_to) meta.append(" ", el("span", "tag", t("comments.reply_to", { name: this.comments.get(c.reply_to)?.name ?? `#${c.reply_to}` })));
    if (c.held) meta.append(" ", el("span", "tag warn", t("comments.held")));
    if (c.pinned) meta.append(" ", el("span", "tag", t("comments.pinned")));
    if (c.likes) meta.append(" ", el("span", "tag", t("comments.likes", { n: c.likes })));
    if (c.answered_by) meta.append(" ", el("span", "tag answered", t("comment.answered", { by: c.answered_by })));
    if (onScreen) meta.append(" ", el("span", "tag live", t("comments.on_screen")));
    li.append(meta, el("p", "comment-body", c.text));
    const actions = el("div", "comment-actions");
    const button = (key, type, extra) => {
      const b = el("button", `act-${type}`, t(key));
      b.type = "button";
      b.addEventListener("click", () => this.act(type, c, extra?.() ?? {}));
      actions.append(b);
      return b;
    };
    if (c.status !== "approved") button("comments.approve", "approve_comment");
    if (c.status !== "rejected") button("comments.reject", "reject_comment");
    if (c.status === "approved") button(c.pinned ? "comments.unpin" : "comments.pin", "pin_comment");
    if (c.status !== "rejected") {
      if (onScreen) button("comments.hide", "hide_comment");
      else button("comments.show", "show_comment");
      const by = el("input", "answer-by");
      by.placeholder = t("comments.answer_by");
      by.maxLength = 100;
      by.value = c.answered_by || "";
      actions.append(by);
      const answer = button("comments.answer", "answer_comment", () => ({ by: by.value.trim() }));
      answer.disabled = !by.value.trim();
      by.addEventListener("input", () => {
        answer.disabled = !by.value.trim();
      });
    }
    if (c.status === "approved") {
      // A reply under the moderator's (or chair's) own name, approved at once.
      const reply = el("input", "reply-text");
      reply.placeholder = t("comments.reply_placeholder");
      reply.maxLength = 500;
      const send = el("button", "act-reply", t("comments.reply"));
      send.type = "button";
      send.addEventListener("click", () => this.reply(c, reply.value.trim()));
      actions.append(reply, send);
    }
    li.append(actions);
    return li;
  }

  async reply(comment, text) {
    if (!text || !this.room) return;
    const resp = await fetch(`/api/rooms/${encodeURIComponent(this.room)}/comments`, {
      method: "POST",
      headers: { Authorization: `Bearer ${this.client.options.token}`, "Content-Type": "application/json" },
      body: JSON.stringify({ text, reply_to: comment.id }),
    });
    const body = await resp.json().catch(() => ({}));
    if (!resp.ok) {
      this.root.querySelector(".comments-error")?.replaceChildren(body.message || String(resp.status));
      return;
    }
    this.comments.set(body.id, body);
    this.render();
  }
}

/** The organisers' figures as a definition list. */
export function renderFigures(node, figures) {
  const keys = ["visits", "unique_viewers", "peak_viewers", "viewers", "comments_public", "comments_members", "replies", "answered", "likes"];
  node.replaceChildren(
    ...keys.flatMap((k) => [el("dt", "", t(`figures.${k}`)), el("dd", `figure-${k}`, String(figures[k] ?? 0))]),
  );
}
