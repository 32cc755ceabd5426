// The public page /w/{code}: the meeting's live stream for anyone with the link, no login.
// Mobile first (360 px, in-app browsers), zh-CN by default with English. HLS plays natively where
// the browser can and has no Media Source Extensions (iOS Safari, in-app browsers on iOS), with
// hls.js (vendored, web/vendor/hls.js) elsewhere. Starts muted (no autoplay with sound): a tap
// turns the sound on. Before the broadcast and after it, a slate shows the title, time and topic.

import { lang, setLang, t as translate } from "./i18n.js";
import { PublicComments } from "./watch-comments.js";

const POLL_S = 10;
const HEARTBEAT_S = 30;

const $ = (id) => document.getElementById(id);
const code = decodeURIComponent(location.pathname.split("/")[2] || "");
let info = null;
let hls = null;
let engine = "";
let failed = false;

const tw = (key, params) => translate(`watch.${key}`, params);

function viewerId() {
  let id = sessionStorage.getItem("conference.viewer");
  if (!id) {
    const bytes = new Uint8Array(12);
    crypto.getRandomValues(bytes);
    id = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
    sessionStorage.setItem("conference.viewer", id);
  }
  return id;
}

function formatTime(seconds) {
  if (!seconds) return "";
  return new Intl.DateTimeFormat(lang(), { dateStyle: "medium", timeStyle: "short" }).format(new Date(seconds * 1000));
}

// Background material is plain text: links become <a>, nothing is ever parsed as HTML.
function renderText(target, text) {
  target.replaceChildren();
  for (const paragraph of (text || "").split(/\n+/)) {
    if (!paragraph.trim()) continue;
    const p = document.createElement("p");
    for (const part of paragraph.split(/(https?:\/\/[^\s<>"]+)/)) {
      if (/^https?:\/\//.test(part)) {
        const a = document.createElement("a");
        a.href = part;
        a.textContent = part;
        a.rel = "noopener noreferrer";
        a.target = "_blank";
        p.append(a);
      } else if (part) {
        p.append(document.createTextNode(part));
      }
    }
    target.append(p);
  }
}

function state() {
  if (!info) return "loading";
  if (info.broadcasting) return "live";
  return info.ended ? "ended" : "soon";
}

function render() {
  const current = lang();
  document.documentElement.lang = current;
  $("language").textContent = current === "zh-CN" ? "English" : "中文";
  $("language").lang = current === "zh-CN" ? "en" : "zh-CN";
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = translate(el.dataset.i18n);
  if (!info) return;
  const title = info.title || info.room;
  document.title = `${title} · ${tw("title.default")}`;
  $("title").textContent = title;
  $("topic").textContent = info.topic || "";
  const when = info.broadcasting ? info.started_at : info.starts_at;
  $("when").textContent = when ? tw(info.broadcasting ? "when.started" : "when.starts", { t: formatTime(when) }) : "";
  renderText($("background"), info.background);
  const agenda = info.agenda || [];
  $("agenda-box").hidden = agenda.length === 0;
  const currentItem = info.current_item ?? null;
  $("agenda").replaceChildren(
    ...agenda.map((item, i) => {
      const li = Object.assign(document.createElement("li"), { textContent: item.title ?? item });
      if (i === currentItem) li.className = "current";
      return li;
    }),
  );
  // The current agenda item, under the title (polled with the rest of the page's data).
  const now = currentItem != null ? agenda[currentItem] : null;
  $("now-item").hidden = !now;
  $("now-item").textContent = now ? tw("agenda.now", { title: now.title }) : "";
  const s = state();
  const status = $("status");
  status.dataset.state = s;
  status.textContent = tw(`status.${s}`);
  $("slate-title").textContent = title;
  $("slate-time").textContent = formatTime(info.starts_at || info.started_at);
  $("slate-topic").textContent = info.topic || "";
  $("slate-note").textContent = failed ? tw("slate.unsupported") : tw(s === "ended" ? "slate.ended" : "slate.soon");
  const viewers = $("viewers");
  viewers.hidden = !(info.viewers > 0);
  viewers.textContent = tw("viewers", { n: info.viewers });
}

function showPlayer(on) {
  $("player").hidden = !on;
  $("slate").hidden = on;
  $("unmute").hidden = !on || !$("player").muted;
}

function play() {
  const video = $("player");
  if (engine) return;
  const url = info.playlist;
  const nativeHls = video.canPlayType("application/vnd.apple.mpegurl") !== "";
  const Hls = window.Hls;
  if (Hls && Hls.isSupported() && (window.MediaSource || !nativeHls)) {
    engine = "hls.js";
    // No worker: it would need a blob: worker-src in the page's content security policy.
    hls = new Hls({ enableWorker: false, liveSyncDurationCount: 2, lowLatencyMode: false });
    const player = hls;
    hls.on(Hls.Events.ERROR, (_, data) => {
      if (!data.fatal) return;
      if (data.type === Hls.ErrorTypes.MEDIA_ERROR) {
        hls.recoverMediaError();
        return;
      }
      // The playlist is not there yet (the compositor is starting, or restarting after a failure),
      // or the network went away: start over in a moment, for as long as the room broadcasts.
      setTimeout(() => {
        if (hls !== player || !(info?.broadcasting || info?.standby)) return;
        hls.destroy();
        hls = null;
        engine = "";
        play();
      }, 2000);
    });
    hls.loadSource(url);
    hls.attachMedia(video);
  } else if (nativeHls) {
    engine = "native";
    video.src = url;
  } else {
    failed = true;
    render();
    return;
  }
  video.dataset.engine = engine;
  showPlayer(true);
  video.play().catch(() => {}); // muted autoplay; a browser that still refuses plays on the tap
}

function stop() {
  if (hls) hls.destroy();
  hls = null;
  engine = "";
  const video = $("player");
  video.removeAttribute("src");
  video.load();
  showPlayer(false);
}

async function poll() {
  try {
    const resp = await fetch(`/api/public/${encodeURIComponent(code)}`);
    if (!resp.ok) throw new Error(String(resp.status));
    info = await resp.json();
  } catch (err) {
    if (!info) $("status").textContent = tw("status.error");
    else $("status").textContent = tw("status.offline");
    return;
  }
  render();
  if (info.broadcasting || info.standby) play();
  else if (engine && (info.ended ? $("player").ended : true)) stop();
}

async function heartbeat() {
  if (document.hidden || !engine) return;
  try {
    await fetch(`/api/public/${encodeURIComponent(code)}/watching?viewer=${viewerId()}`, { method: "POST" });
  } catch (err) {
    // the count is a courtesy: never disturb playback for it
  }
}

$("unmute").addEventListener("click", () => {
  const video = $("player");
  video.muted = false;
  video.controls = true;
  video.play().catch(() => {});
  $("unmute").hidden = true;
});
$("player").addEventListener("ended", () => {
  if (info && !info.broadcasting && !info.standby) stop();
});
const comments = new PublicComments(code, viewerId(), (viewers) => {
  if (!info) return;
  info.viewers = viewers;
  render();
});
$("language").addEventListener("click", () => {
  setLang(lang() === "zh-CN" ? "en" : "zh-CN");
  render();
  comments.render();
});
document.addEventListener("visibilitychange", () => {
  if (!document.hidden) poll();
});

render();
poll();
comments.start();
setInterval(poll, POLL_S * 1000);
setInterval(heartbeat, HEARTBEAT_S * 1000);
setTimeout(heartbeat, 3000);
