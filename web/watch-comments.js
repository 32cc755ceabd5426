// The public page's comments and likes: a comment form under a nickname (kept in this browser),
// the approved comments, and a like button whose taps are batched and sent at most once a second.
// Pushes come over Server-Sent Events (GET /w/{code}/events); where they do not get through, the
// page polls GET /w/{code}/comments instead. Everything a visitor wrote is set as text, never as
// markup (textContent only).

import { lang, t as translate } from "./i18n.js";

const POLL_S = 5;
const LIKE_BATCH_MS = 1000;
const NICKNAME_KEY = "conference.nickname";

const $ = (id) => document.getElementById(id);
const tw = (key, params) => translate(`watch.${key}`, params);

export class PublicComments {
  constructor(code, viewerId, onViewers) {
    this.code = encodeURIComponent(code);
    this.viewerId = viewerId;
    this.onViewers = onViewers;
    this.comments = new Map(); // id -> approved comment
    this.likes = 0;
    this.unsent = 0; // taps not sent yet
    this.unsentFor = new Map(); // comment id -> taps on that comment not sent yet
    this.sending = false;
    this.source = null;
    this.pollTimer = null;
  }

  start() {
    $("nickname").value = localStorage.getItem(NICKNAME_KEY) || "";
    $("comment-form").addEventListener("submit", (e) => {
      e.preventDefault();
      this.post();
    });
    $("comment-text").addEventListener("input", () => this.renderCount());
    $("like").addEventListener("click", () => this.tap());
    setInterval(() => this.flushLikes(), LIKE_BATCH_MS);
    this.render();
    this.connect();
  }

  connect() {
    if (!window.EventSource) {
      this.poll();
      return;
    }
    const source = new EventSource(`/w/${this.code}/events?viewer=${this.viewerId}`);
    this.source = source;
    let opened = false;
    source.addEventListener("hello", (e) => {
      opened = true;
      this.stopPolling();
      this.setTotals(JSON.parse(e.data));
      this.load(); // what was approved before this stream opened
    });
    source.addEventListener("comment", (e) => this.apply(JSON.parse(e.data)));
    source.addEventListener("likes", (e) => this.setTotals(JSON.parse(e.data)));
    source.addEventListener("viewers", (e) => this.setTotals(JSON.parse(e.data)));
    source.addEventListener("error", () => {
      // EventSource retries by itself; meanwhile (or when a proxy never lets it through) poll.
      if (!opened || source.readyState !== EventSource.OPEN) this.poll();
    });
  }

  poll() {
    if (this.pollTimer) return;
    this.load();
    this.pollTimer = setInterval(() => this.load(), POLL_S * 1000);
  }

  stopPolling() {
    clearInterval(this.pollTimer);
    this.pollTimer = null;
  }

  async load() {
    try {
      const resp = await fetch(`/w/${this.code}/comments`);
      if (!resp.ok) return;
      const body = await resp.json();
      this.comments = new Map(body.comments.map((c) => [c.id, c]));
      this.setTotals(body);
      this.render();
    } catch (err) {
      // the next poll or push brings them
    }
  }

  apply(comment) {
    const mine = this.unsentFor.get(comment.id) || 0; // taps this page has not sent yet
    if (comment.status === "approved") this.comments.set(comment.id, { ...comment, likes: (comment.likes || 0) + mine });
    else this.comments.delete(comment.id);
    this.render();
  }

  setTotals(body) {
    if (typeof body.likes === "number") this.likes = Math.max(this.likes, body.likes);
    if (typeof body.viewers === "number") this.onViewers(body.viewers);
    this.renderLikes();
  }

  tap() {
    this.unsent += 1;
    this.likes += 1; // shown at once; the server's total follows
    this.renderLikes();
    $("like").classList.remove("pop");
    void $("like").offsetWidth;
    $("like").classList.add("pop");
  }

  tapComment(comment) {
    this.unsentFor.set(comment.id, (this.unsentFor.get(comment.id) || 0) + 1);
    comment.likes = (comment.likes || 0) + 1; // shown at once; a like of a comment counts for the meeting too
    this.likes += 1;
    this.render();
  }

  /** At most one POST a second: a comment's taps first (one comment a post), else the meeting's. */
  async flushLikes() {
    if (this.sending) return;
    const [comment, taps] = this.unsentFor.entries().next().value ?? [null, 0];
    if (!taps && !this.unsent) return;
    const count = Math.min(comment != null ? taps : this.unsent, 50);
    const keep = (n) => {
      if (comment != null) this.unsentFor.set(comment, (this.unsentFor.get(comment) || 0) + n);
      else this.unsent += n;
    };
    if (comment != null) this.unsentFor.delete(comment);
    else this.unsent -= count;
    if (comment != null && taps > count) keep(taps - count);
    this.sending = true;
    try {
      const resp = await fetch(`/w/${this.code}/likes`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(comment != null ? { count, comment } : { count }),
      });
      if (resp.status === 429) keep(count); // sent again after the wait, nothing lost
    } catch (err) {
      keep(count);
    } finally {
      this.sending = false;
    }
  }

  async post() {
    const nickname = $("nickname").value.trim();
    const text = $("comment-text").value.trim();
    const note = $("comment-note");
    if (!nickname || !text) return;
    localStorage.setItem(NICKNAME_KEY, nickname);
    $("comment-send").disabled = true;
    try {
      const resp = await fetch(`/w/${this.code}/comments`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ nickname, text }),
      });
      const body = await resp.json().catch(() => ({}));
      if (resp.status === 429) {
        note.textContent = tw("comments.slow_down", { s: resp.headers.get("Retry-After") || "10" });
      } else if (!resp.ok) {
        note.textContent = tw("comments.failed");
      } else {
        $("comment-text").value = "";
        note.textContent = tw(body.status === "approved" ? "comments.posted" : "comments.pending");
        this.renderCount();
      }
      note.dataset.status = String(resp.status);
    } catch (err) {
      note.textContent = tw("comments.failed");
    } finally {
      $("comment-send").disabled = false;
    }
  }

  renderCount() {
    $("comment-count").textContent = `${$("comment-text").value.length}/500`;
  }

  renderLikes() {
    $("likes").textContent = new Intl.NumberFormat(lang()).format(this.likes);
  }

  render() {
    $("nickname").placeholder = tw("comments.nickname");
    $("comment-text").placeholder = tw("comments.placeholder");
    const sorted = [...this.comments.values()].sort((a, b) => b.pinned - a.pinned || b.created_at - a.created_at);
    const items = sorted.map((c) => {
      const li = document.createElement("li");
      li.className = "comment";
      li.dataset.id = String(c.id);
      if (c.pinned) li.classList.add("pinned");
      const head = document.createElement("p");
      head.className = "comment-meta";
      const name = document.createElement("strong");
      name.textContent = [c.name, c.sector].filter(Boolean).join(" · ");
      head.append(name);
      if (c.author === "member") head.append(" ", Object.assign(document.createElement("span"), { className: "tag", textContent: tw("comments.member") }));
      if (c.pinned) head.append(" ", Object.assign(document.createElement("span"), { className: "tag", textContent: tw("comments.pinned") }));
      if (c.reply_to) {
        const to = this.comments.get(c.reply_to)?.name ?? `#${c.reply_to}`;
        head.append(" ", Object.assign(document.createElement("span"), { className: "tag", textContent: tw("comments.reply_to", { name: to }) }));
      }
      if (c.answered_by) head.append(" ", Object.assign(document.createElement("span"), { className: "tag answered", textContent: tw("comments.answered", { by: c.answered_by }) }));
      const body = document.createElement("p");
      body.className = "comment-body";
      body.textContent = c.text;
      const like = Object.assign(document.createElement("button"), {
        type: "button",
        className: "comment-like",
        textContent: tw("comments.like", { n: c.likes || 0 }),
      });
      like.addEventListener("click", () => this.tapComment(c));
      li.append(head, body, like);
      return li;
    });
    $("comment-list").replaceChildren(...items);
    this.renderLikes();
  }
}
