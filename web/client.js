// The connection every page shares: one WebSocket to the signaling server (docs/protocol.md)
// and one RTCPeerConnection for media. It joins, answers the server's offer, mirrors the room
// (program, participants, floor, recording) from versioned events, resyncs on a gap and
// reconnects by itself with backoff. Pages listen to its events and never touch the socket.

import { RoomMirror } from "./mirror.js";

export { RoomMirror };

const PROTOCOL_VERSION = 1;
const REQUEST_TIMEOUT_MS = 10000;
const PING_EVERY_MS = 10000;
const ICE_GATHER_WAIT_MS = 1500;
// A peer connection "disconnected" this long is treated as dropped and rejoined.
// Long enough for ICE to recover by itself from a short stall (a busy server answers consent
// checks late); a network that is really gone is also caught by the signaling ping.
const MEDIA_DISCONNECTED_GRACE_MS = 12000;
const BACKOFF_MS = [500, 1000, 2000, 4000, 8000];
// Close codes after which reconnecting would be wrong (docs/protocol.md).
const FINAL_CLOSE = {
  4401: "unauthorized",
  4403: "forbidden",
  4409: "replaced",
  4410: "removed",
};

export class RequestError extends Error {
  constructor(code, message, details = null) {
    super(message || code);
    this.code = code;
    // `moved` (docs/protocol.md, "Several nodes"): the node hosting the room.
    this.url = details?.url ?? null;
    this.node = details?.node ?? null;
  }
}

// `moved` answers followed in a row before the join counts as failed (a room moves once).
const MAX_MOVES = 3;
// Several nodes: quick retries (about every 0.5 s) while a dead node's lease runs out (3 s).
const NODE_RETRIES = 16;

/** The claims of a JWT, read without verifying (the server verifies): for display only. */
export function decodeToken(token) {
  try {
    const part = token.split(".")[1];
    const json = atob(part.replace(/-/g, "+").replace(/_/g, "/"));
    const bytes = Uint8Array.from(json, (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return null;
  }
}

// Per token (its issue time): a page opened with a new token never reuses an older one's credential.
function sessionKey(token) {
  const claims = decodeToken(token || "");
  return claims ? `conference.session:${claims.room}/${claims.sub}/${claims.iat}` : null;
}

/** The session credential this tab kept for `token` ({token, expiresAt}), while it is valid. */
export function storedSession(token) {
  const key = sessionKey(token);
  try {
    const s = key ? JSON.parse(sessionStorage.getItem(key)) : null;
    return s && s.expiresAt * 1000 - Date.now() > 5000 ? s : null;
  } catch {
    return null;
  }
}

/** The token from `?token=`, or null. */
export function tokenFromUrl() {
  return new URLSearchParams(location.search).get("token");
}

/** Put the token in the address so a reload (or an unattended restart) rejoins by itself. */
export function rememberTokenInUrl(token) {
  const url = new URL(location.href);
  url.searchParams.set("token", token);
  history.replaceState(null, "", url);
}

/** The socket's address: on the page's own server, or on `base` (a node's URL, after `moved`). */
function wsUrl(token, base = null) {
  if (base) {
    const url = new URL(base, location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.pathname = `${url.pathname.replace(/\/$/, "")}/ws`;
    url.search = `?token=${encodeURIComponent(token)}`;
    return url.href;
  }
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws?token=${encodeURIComponent(token)}`;
}

/**
 * One endpoint in a room. Options:
 *   token, device ("venue" | "phone"), publish {audio, video}, videoSlots, audioSlots,
 *   localTracks() -> {audio: MediaStreamTrack|null, video: MediaStreamTrack|null}
 * Events (CustomEvent detail): state {state, detail}, joined {you, room}, room {events},
 *   tracks {}, slots {}, speakers {speakers}, notice {type, reason}, fatal {code, reason}.
 */
export class RoomClient extends EventTarget {
  constructor(options) {
    super();
    this.options = { audioSlots: 3, videoSlots: 9, publish: { audio: false, video: false }, ...options };
    this.state = "idle";
    this.you = null;
    this.permissions = [];
    this.clockOffset = 0;
    this.layouts = [];
    this.mirror = null;
    this.iceServers = [];
    this.pc = null;
    this.mediaState = "none"; // none | connecting | connected | disconnected | failed
    this.publishMids = {};
    this.videoMids = [];
    this.audioMids = [];
    this.previewMids = [];
    this.tracksByMid = new Map();
    this.audioOccupants = new Map(); // mid -> identity|null
    this.previewOccupants = new Map(); // mid -> identity
    this.speakers = [];
    this._ws = null;
    this._nextId = 1;
    this._pending = new Map();
    this._attempt = 0;
    this._stopped = false;
    this._syncing = false;
    this._timers = new Set();
    // The newest session credential the server handed this connection ({token, expiresAt} or
    // null): reconnects use it while it is valid, so the page outlives its own token. Kept in
    // sessionStorage (this tab only) so a reloaded page comes back with it too.
    this._sessionKey = sessionKey(this.options.token);
    this._session = storedSession(this.options.token);
    this._pingTimer = null;
    this._mediaDownTimer = null;
    this.history = [];
    // Several nodes (docs/protocol.md): the room's node once a join was sent there (`moved`), the
    // live nodes the last join reply listed, and which of them stands in for the page's own server
    // while it is unreachable (0: the page's server itself).
    this._nodeUrl = null;
    this._nodes = [];
    this._homeIndex = 0;
    this._moves = 0;
    this._nodeFailures = 0;
  }

  // --- lifecycle -------------------------------------------------------------------------

  start() {
    this._stopped = false;
    this._open();
  }

  /** Leave the room for good (no reconnect). */
  async leave() {
    this._stopped = true;
    try {
      if (this._ws?.readyState === WebSocket.OPEN) await this.request("leave", {}, 2000);
    } catch {
      // leaving anyway
    }
    this._teardown(1000);
    this._setState("closed");
  }

  /** Drop the connection now and rejoin (what happens by itself after a network drop). */
  reconnectNow() {
    this._teardown(4000);
    this._scheduleReconnect(0);
  }

  _setState(state, detail = null) {
    if (this.state === state && detail == null) return;
    this.state = state;
    this._note(`state ${state}${detail ? ` ${JSON.stringify(detail)}` : ""}`);
    this._emit("state", { state, detail });
  }

  /** Keep the last few connection happenings (window.conference.client.history) for diagnosis. */
  _note(text) {
    this.history.push(`${new Date().toISOString().slice(11, 23)} ${text}`);
    if (this.history.length > 100) this.history.shift();
  }

  _emit(type, detail = {}) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _later(fn, ms) {
    const handle = setTimeout(() => {
      this._timers.delete(handle);
      fn();
    }, ms);
    this._timers.add(handle);
    return handle;
  }

  /** The session credential while it has 5 s left, else the token the page was opened with. */
  _credential() {
    const s = this._session;
    if (s && s.expiresAt * 1000 - Date.now() > 5000) return s.token;
    this._keepSession(null);
    return this.options.token;
  }

  _keepSession(session) {
    this._session = session;
    if (!this._sessionKey) return;
    try {
      if (session) sessionStorage.setItem(this._sessionKey, JSON.stringify(session));
      else sessionStorage.removeItem(this._sessionKey);
    } catch {
      // Storage refused (private mode, quota): the credential still works until a reload.
    }
  }

  _open() {
    this._setState(this._attempt === 0 && !this.you ? "connecting" : "reconnecting");
    let ws;
    const base = this._nodeUrl ?? (this._homeIndex > 0 ? this._nodes[this._homeIndex - 1] : null);
    try {
      ws = new WebSocket(wsUrl(this._credential(), base));
    } catch (err) {
      this._setState("failed", String(err));
      return;
    }
    ws._base = base;
    ws._joined = false;
    this._ws = ws;
    ws.onopen = () => this._join(ws);
    ws.onmessage = (ev) => this._onMessage(ws, ev);
    ws.onclose = (ev) => this._onClose(ws, ev);
  }

  async _join(ws) {
    const { device, publish, videoSlots, audioSlots } = this.options;
    try {
      const result = await this.request("join", {
        device,
        publish: { audio: !!publish.audio, video: !!publish.video },
        video_slots: videoSlots,
        audio_slots: audioSlots,
      });
      if (ws !== this._ws) return;
      this._attempt = 0;
      ws._joined = true;
      this._moves = 0;
      this._nodeFailures = 0;
      if (Array.isArray(result.nodes)) this._nodes = result.nodes;
      this.you = result.you;
      this.permissions = result.permissions || [];
      this.iceServers = result.ice_servers || [];
      this.iceTransportPolicy = result.ice_transport_policy === "relay" ? "relay" : "all";
      if (result.layouts) this.layouts = result.layouts;
      this.publicUrl = result.public_url ?? null; // the public page's short link (/w/{code})
      this.mirror = new RoomMirror(result.room);
      // Server clock minus ours (seconds): the speaking timer counts on the server's clock. The join
      // reply gives a first value; pings refine it (the one with the shortest round trip counts).
      if (typeof result.server_time === "number") this.clockOffset = result.server_time - Date.now() / 1000;
      this._clockRtt = Infinity;
      this._setState("joined");
      this._emit("joined", { you: this.you, room: this.mirror });
      this._emit("room", { events: [] });
      this._startPing(ws);
      this._ping().catch(() => {});
    } catch (err) {
      if (ws !== this._ws) return;
      if (err instanceof RequestError && err.code === "moved" && err.url) {
        // The room lives on another node: join there at once, the person notices nothing.
        this._teardown(1000);
        this._moves += 1;
        if (this._moves > MAX_MOVES) {
          this._moves = 0;
          this._nodeUrl = null;
          this._scheduleReconnect();
          return;
        }
        this._note(`moved to node ${err.node} at ${err.url}`);
        this._nodeUrl = err.url;
        this._open();
        return;
      }
      if (err instanceof RequestError && err.code === "timeout") {
        this._teardown(4000);
        this._scheduleReconnect();
        return;
      }
      // A refused join (room full, bad request) is final; a lost socket reconnects in _onClose.
      if (err instanceof RequestError && err.code !== "closed") {
        this._stopped = true;
        this._emit("fatal", { code: err.code, reason: err.message });
        this._setState("failed", err.code);
        ws.close(1000);
      }
    }
  }

  _onClose(ws, ev) {
    if (ws !== this._ws) return;
    this._note(`socket closed ${ev.code} ${ev.reason}`);
    this._ws = null;
    this._rejectPending("closed");
    this._stopPing();
    if (ev.code === 4401 && this._session) {
      // The session credential was refused (e.g. the server's secret changed): try the page's token.
      this._keepSession(null);
      this._scheduleReconnect(0);
      return;
    }
    if (ev.code === 4307 && this._nodeUrl) {
      this._scheduleReconnect(0); // the room moved (a `moved` message named its node)
      return;
    }
    const final = FINAL_CLOSE[ev.code];
    if (final) {
      this._keepSession(null);
      this._stopped = true;
      this._closePc();
      this._emit("fatal", { code: final, reason: ev.reason });
      this._setState("failed", final);
      return;
    }
    if (this._stopped) return;
    if (!ws._joined && (this._nodeUrl || this._nodes.length) && this._nodeFailures < NODE_RETRIES) {
      // Several nodes and this socket got no join: the node it went to is gone. Back to the page's
      // server (which places the room anew once the dead node's lease ran out), or, when that is the
      // one that is gone, the next node the last join listed.
      this._nodeFailures += 1;
      if (ws._base && ws._base === this._nodeUrl) this._nodeUrl = null;
      else if (this._nodes.length) this._homeIndex = (this._homeIndex + 1) % (this._nodes.length + 1);
      this._scheduleReconnect(500);
      return;
    }
    this._scheduleReconnect();
  }

  _scheduleReconnect(delay) {
    if (this._stopped) return;
    const base = delay ?? BACKOFF_MS[Math.min(this._attempt, BACKOFF_MS.length - 1)];
    this._attempt += 1;
    // Jitter so fifty venues that lost the same network do not come back in one burst.
    const wait = delay === 0 ? 0 : base * (0.75 + Math.random() * 0.5);
    this._setState("reconnecting", { inMs: Math.round(wait), attempt: this._attempt });
    this._later(() => this._open(), wait);
  }

  _teardown(code) {
    this._stopPing();
    const ws = this._ws;
    this._ws = null;
    this._rejectPending("closed");
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(code);
    this._closePc();
  }

  async _ping() {
    const sent = Date.now();
    const pong = await this.request("ping", {}, 5000);
    const rtt = Date.now() - sent;
    if (typeof pong?.time === "number" && rtt < this._clockRtt) {
      this._clockRtt = rtt;
      this.clockOffset = pong.time - (sent + rtt / 2) / 1000;
    }
  }

  _startPing(ws) {
    this._stopPing();
    this._pingTimer = setInterval(async () => {
      try {
        await this._ping();
      } catch (err) {
        // No answer: the network is gone even if the socket has not noticed yet.
        if (ws === this._ws) {
          this._note(`ping failed: ${err.code}`);
          this._teardown(4000);
          this._scheduleReconnect();
        }
      }
    }, PING_EVERY_MS);
  }

  _stopPing() {
    if (this._pingTimer) clearInterval(this._pingTimer);
    this._pingTimer = null;
  }

  // --- requests --------------------------------------------------------------------------

  /** Send a request; resolves with its result or rejects with RequestError(code). */
  request(type, fields = {}, timeoutMs = REQUEST_TIMEOUT_MS) {
    const ws = this._ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      return Promise.reject(new RequestError("closed", "not connected"));
    }
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new RequestError("timeout", `${type} timed out`));
      }, timeoutMs);
      this._pending.set(id, { resolve, reject, timer });
      ws.send(JSON.stringify({ type, id, ...fields }));
    });
  }

  _rejectPending(code) {
    for (const { reject, timer } of this._pending.values()) {
      clearTimeout(timer);
      reject(new RequestError(code, code));
    }
    this._pending.clear();
  }

  _onMessage(ws, ev) {
    if (ws !== this._ws) return;
    let msg;
    try {
      msg = JSON.parse(ev.data);
    } catch {
      return;
    }
    if (msg.v !== undefined && msg.v !== PROTOCOL_VERSION) {
      console.warn("protocol version", msg.v, "expected", PROTOCOL_VERSION);
    }
    switch (msg.type) {
      case "reply":
      case "error": {
        const pending = this._pending.get(msg.id);
        if (!pending) {
          if (msg.type === "error") this._emit("notice", { type: "error", code: msg.code, reason: msg.message });
          return;
        }
        this._pending.delete(msg.id);
        clearTimeout(pending.timer);
        if (msg.type === "reply") pending.resolve(msg.result ?? {});
        else pending.reject(new RequestError(msg.code, msg.message, msg));
        return;
      }
      case "event":
        this._onEvent(msg.event);
        return;
      case "offer":
        this._onOffer(msg).catch((err) => {
          console.error("answering the offer failed", err);
          this._emit("notice", { type: "media_error", reason: String(err) });
        });
        return;
      case "slots":
        this._onSlots(msg);
        return;
      case "speakers":
        this.speakers = msg.speakers || [];
        this._emit("speakers", { speakers: this.speakers });
        return;
      case "session":
        // Its lifetime counted on this clock (the screen's clock may be off the server's).
        this._keepSession({ token: msg.token, expiresAt: Date.now() / 1000 + (msg.ttl_s ?? 0) });
        return;
      case "comment": // moderators' and the chair's sockets: a comment of the public, new or changed
        this._emit("comment", { comment: msg.comment });
        return;
      case "moved": // the room went to another node while this socket was open: it closes (4307)
        if (msg.url) this._nodeUrl = msg.url;
        this._emit("notice", { type: msg.type, reason: `moved to node ${msg.node}` });
        return;
      case "removed":
      case "replaced":
      case "shutdown":
        this._emit("notice", { type: msg.type, reason: msg.reason });
        return;
      default:
        return;
    }
  }

  // --- room events -----------------------------------------------------------------------

  _onEvent(event) {
    if (!this.mirror || this._syncing) return;
    if (event.version <= this.mirror.version) return; // already have it
    if (event.version > this.mirror.version + 1) {
      this._sync();
      return;
    }
    this.mirror.apply(event);
    this._emit("room", { events: [event] });
  }

  async _sync() {
    if (this._syncing) return;
    this._syncing = true;
    try {
      const result = await this.request("sync", { since: this.mirror.version });
      if (result.room) {
        this.mirror.load(result.room);
        this._emit("room", { events: [], resynced: true });
      } else {
        const applied = [];
        for (const e of result.events || []) {
          if (e.version === this.mirror.version + 1) {
            this.mirror.apply(e);
            applied.push(e);
          }
        }
        this._emit("room", { events: applied, resynced: true });
      }
    } catch (err) {
      console.warn("sync failed", err);
    } finally {
      this._syncing = false;
    }
  }

  // --- media -----------------------------------------------------------------------------

  _closePc() {
    if (this._mediaDownTimer) clearTimeout(this._mediaDownTimer);
    this._mediaDownTimer = null;
    if (this.pc) {
      this.pc.ontrack = this.pc.onicecandidate = this.pc.onconnectionstatechange = null;
      this.pc.close();
    }
    this.pc = null;
    this.tracksByMid.clear();
    this._setMediaState("none");
    this._emit("tracks");
  }

  _setMediaState(state) {
    if (this.mediaState === state) return;
    this.mediaState = state;
    this._note(`media ${state}`);
    this._emit("media", { state });
  }

  async _onOffer(msg) {
    this._note("offer");
    this._closePc();
    const slots = msg.slots || {};
    this.publishMids = slots.publish || {};
    this.videoMids = slots.video || [];
    this.audioMids = slots.audio || [];
    this.previewMids = slots.previews || [];
    if (!msg.sdp) return; // a server without media (NullMedia): room events only
    const ws = this._ws;
    const pc = new RTCPeerConnection({
      iceServers: this.iceServers,
      iceTransportPolicy: this.iceTransportPolicy || "all",
      bundlePolicy: "max-bundle",
    });
    this.pc = pc;
    this._setMediaState("connecting");
    const early = [];
    let answered = false;
    pc.onicecandidate = (ev) => {
      if (!ev.candidate || !ev.candidate.candidate) return;
      const c = ev.candidate.toJSON();
      if (answered) this._sendCandidate(c);
      else early.push(c);
    };
    pc.ontrack = (ev) => {
      this.tracksByMid.set(ev.transceiver.mid, ev.track);
      this._emit("tracks");
    };
    pc.onconnectionstatechange = () => this._onPcState(pc);
    await pc.setRemoteDescription({ type: "offer", sdp: msg.sdp });
    if (pc !== this.pc) return;
    const local = this.options.localTracks ? this.options.localTracks() : {};
    for (const tr of pc.getTransceivers()) {
      const kind = tr.mid === this.publishMids.audio ? "audio" : tr.mid === this.publishMids.video ? "video" : null;
      if (!kind || !(this.options.publish[kind] || this.can(`publish_${kind}`))) continue;
      // Always send on a publish m-line we may use, even with no track yet: turning the camera
      // on later is then a replaceTrack, with no renegotiation (the server makes every offer).
      tr.direction = "sendonly";
      await tr.sender.replaceTrack(local[kind] || null);
    }
    await pc.setLocalDescription(await pc.createAnswer());
    await waitForGathering(pc, ICE_GATHER_WAIT_MS);
    if (pc !== this.pc || ws !== this._ws) return;
    await this.request("answer", { sdp: pc.localDescription.sdp });
    answered = true;
    for (const c of early) if (!pc.localDescription.sdp.includes(c.candidate)) this._sendCandidate(c);
    this._emit("tracks");
  }

  _sendCandidate(candidate) {
    this.request("candidate", { candidate }).catch((err) => console.warn("candidate refused", err));
  }

  _onPcState(pc) {
    if (pc !== this.pc) return;
    const s = pc.connectionState;
    this._setMediaState(s === "new" ? "connecting" : s);
    if (this._mediaDownTimer) clearTimeout(this._mediaDownTimer);
    this._mediaDownTimer = null;
    if (s === "failed") {
      this.reconnectNow();
    } else if (s === "disconnected") {
      this._mediaDownTimer = setTimeout(() => {
        if (pc === this.pc && pc.connectionState !== "connected") this.reconnectNow();
      }, MEDIA_DISCONNECTED_GRACE_MS);
    }
  }

  /** Swap the published camera or microphone track (null stops sending) without renegotiating. */
  async replaceLocalTrack(kind, track) {
    if (!this.pc) return;
    const mid = this.publishMids[kind];
    const tr = this.pc.getTransceivers().find((t) => t.mid === mid);
    if (tr && tr.direction === "sendonly") await tr.sender.replaceTrack(track);
  }

  _onSlots(msg) {
    for (const { mid, identity } of msg.audio || []) this.audioOccupants.set(mid, identity ?? null);
    if (msg.previews) {
      this.previewOccupants.clear();
      for (const { mid, identity } of msg.previews) this.previewOccupants.set(mid, identity);
    }
    this._emit("slots");
  }

  /** The track playing program video slot i, or null. */
  videoTrack(i) {
    const mid = this.videoMids[i];
    return mid == null ? null : (this.tracksByMid.get(mid) ?? null);
  }

  /** [{mid, track, identity}] for the audio slots. */
  audioTracks() {
    return this.audioMids.map((mid) => ({
      mid,
      track: this.tracksByMid.get(mid) ?? null,
      identity: this.audioOccupants.get(mid) ?? null,
    }));
  }

  /** The chair's preview track of one participant, or null. */
  previewTrack(identity) {
    for (const [mid, who] of this.previewOccupants) {
      if (who === identity) return this.tracksByMid.get(mid) ?? null;
    }
    return null;
  }

  /** The receiver of a mid, for stats (audio level, frame rate, loss). */
  receiver(mid) {
    return this.pc?.getTransceivers().find((t) => t.mid === mid)?.receiver ?? null;
  }

  can(permission) {
    return this.permissions.includes(permission);
  }
}

function waitForGathering(pc, maxMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    };
    const check = () => {
      if (pc.iceGatheringState === "complete") done();
    };
    const timer = setTimeout(done, maxMs);
    pc.addEventListener("icegatheringstatechange", check);
  });
}
