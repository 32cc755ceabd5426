// The speaking timer as every page shows it (conference/speaking.py, docs/protocol.md): the
// remaining time is counted from the grant's time and the limit the server sent, on the server's
// clock (the page's clock corrected by the join reply's server_time); nothing ticks over the wire.

import { formatElapsed } from "./ui.js";
import { t } from "./i18n.js";

// Amber this long before the end, red once it is over.
export const WARN_BEFORE_S = 30;

/** {remaining, phase: "ok" | "warn" | "over"} of the running floor's limit, or null without one. */
export function timerState(client) {
  const timer = client.mirror?.floorTimer;
  if (!client.mirror?.floor || !timer || timer.limit_s == null) return null;
  const now = Date.now() / 1000 + (client.clockOffset || 0);
  // Never more than the limit: a clock estimate a little behind the server's must not add time.
  const remaining = Math.min(timer.limit_s, timer.granted_at + timer.limit_s - now);
  const phase = remaining <= 0 ? "over" : remaining <= WARN_BEFORE_S ? "warn" : "ok";
  return { remaining, phase, muted: !!timer.muted };
}

/** A short two-tone chime (Web Audio), for the "chime" action on venue screens. */
function chime() {
  try {
    const ctx = new AudioContext();
    for (const [i, freq] of [880, 660].entries()) {
      const osc = ctx.createOscillator();
      const gain = ctx.createGain();
      osc.frequency.value = freq;
      gain.gain.setValueAtTime(0.2, ctx.currentTime + i * 0.35);
      gain.gain.exponentialRampToValueAtTime(0.001, ctx.currentTime + i * 0.35 + 0.3);
      osc.connect(gain).connect(ctx.destination);
      osc.start(ctx.currentTime + i * 0.35);
      osc.stop(ctx.currentTime + i * 0.35 + 0.32);
    }
    setTimeout(() => ctx.close(), 1200);
  } catch {
    // no audio output: the red timer still says it
  }
}

/**
 * Keep `node` showing the timer: hidden without a limit, "1:23" remaining, then "+0:12" over;
 * data-phase ok / warn / over for the colours. With `sound`, the chime action sounds once when the
 * time is up. Returns a render function to call on room changes (it also ticks by itself).
 */
export function mountFloorTimer(node, client, { sound = false } = {}) {
  let chimedFor = null;
  const render = () => {
    const state = timerState(client);
    node.hidden = !state;
    if (!state) return;
    const over = state.phase === "over";
    node.dataset.phase = state.phase;
    node.textContent = over
      ? t("timer.over", { time: formatElapsed(-state.remaining) })
      : t("timer.left", { time: formatElapsed(Math.ceil(state.remaining)) });
    const key = client.mirror.floorTimer.granted_at;
    if (over && sound && client.mirror.floorLimits.action === "chime" && chimedFor !== key) {
      chimedFor = key;
      chime();
    }
  };
  setInterval(render, 250);
  client.addEventListener("room", render);
  render();
  return render;
}
