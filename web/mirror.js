// The room as a page knows it: the join reply's snapshot, kept up to date by applying the
// server's versioned events (docs/protocol.md, "Room events") in order.

/** The room as this page knows it, kept up to date from the server's events. */
export class RoomMirror {
  constructor(snapshot) {
    this.load(snapshot);
  }

  load(s) {
    this.room = s.room;
    this.title = s.title ?? "";
    // Names of everyone seen in this room, kept after they leave: logs and captions name them.
    this.knownNames ??= new Map();
    for (const p of s.participants) this.knownNames.set(p.identity, p.name);
    this.version = s.version;
    this.program = { layout: s.program.layout, slots: [...s.program.slots] };
    this.participants = new Map(s.participants.map((p) => [p.identity, { ...p }]));
    this.floor = s.floor ?? null;
    this.floorQueue = [...(s.floor_queue || [])];
    // The speaking timer: {granted_at, limit_s, muted} while someone has the floor, and the rules.
    this.floorTimer = s.floor_timer ? { ...s.floor_timer } : null;
    this.floorLimits = { action: "none", default_s: null, grace_s: 10, ...(s.floor_limits || {}) };
    this.recording = { ...(s.recording || { active: false }) };
    this.broadcast = { ...(s.broadcast || { active: false }) };
    // What the public page shows of the meeting, also on the venue screens' waiting card.
    this.topic = s.topic ?? "";
    this.startsAt = s.starts_at ?? null;
    this.onScreen = s.on_screen ? { ...s.on_screen } : null; // the public's comment on the lower third
    this.commentModeration = s.comment_moderation ?? true;
    this.clip = s.clip ? { ...s.clip } : null;
    // The running order (conference/roster.py, conference/agenda.py).
    this.roster = (s.roster || []).map((e) => ({ ...e }));
    this.allowGuests = s.allow_guests ?? true;
    this.agenda = (s.agenda || []).map(copyItem);
    this.agendaIndex = s.agenda_index ?? null;
    this.agendaStartedAt = s.agenda_started_at ?? null;
    this.presets = copyPresets(s.presets || {});
  }

  /** The current agenda item, or null. */
  get currentItem() {
    return this.agendaIndex == null ? null : (this.agenda[this.agendaIndex] ?? null);
  }

  participant(identity) {
    return identity == null ? undefined : this.participants.get(identity);
  }

  name(identity) {
    return this.participant(identity)?.name ?? this.knownNames.get(identity) ?? identity ?? "";
  }

  /** Apply one event; returns false when it is unknown (nothing changed but the version). */
  apply(e) {
    const p = this.participants.get(e.identity);
    switch (e.kind) {
      case "participant_joined":
      case "participant_rejoined":
        this.participants.set(e.participant.identity, { ...e.participant });
        this.knownNames.set(e.participant.identity, e.participant.name);
        break;
      case "participant_connection":
        if (p) p.connected = e.connected;
        break;
      case "participant_left":
        if (e.name) this.knownNames.set(e.identity, e.name);
        this.participants.delete(e.identity);
        this.floorQueue = this.floorQueue.filter((id) => id !== e.identity);
        break;
      case "publishing":
        if (p) Object.assign(p, { publish_audio: e.audio, publish_video: e.video });
        break;
      case "program":
        this.program = { layout: e.program.layout, slots: [...e.program.slots] };
        break;
      case "mute":
        if (p) {
          p.muted = e.muted;
          p.self_muted = e.self_muted;
          if (e.muted || !e.self_muted) p.unmute_requested = false;
        }
        break;
      case "unmute_requested":
        if (p) Object.assign(p, { muted: false, unmute_requested: true });
        break;
      case "hand":
        if (p) p.hand_raised_at = e.raised ? (p.hand_raised_at ?? e.at ?? Date.now() / 1000) : null;
        this.floorQueue = [...e.floor_queue];
        break;
      case "floor":
        if (e.floor && this.participants.has(e.floor)) {
          const holder = this.participants.get(e.floor);
          holder.hand_raised_at = null;
          holder.muted = false;
          holder.unmute_requested = holder.self_muted;
        }
        this.floor = e.floor ?? null;
        this.floorQueue = [...(e.floor_queue || [])];
        this.floorTimer = e.granted_at != null ? { granted_at: e.granted_at, limit_s: e.limit_s ?? null, muted: false } : null;
        break;
      case "floor_timer":
        if (this.floorTimer) Object.assign(this.floorTimer, { limit_s: e.limit_s, muted: !!e.muted });
        break;
      case "floor_limits":
        this.floorLimits = { ...e.limits };
        break;
      case "title":
        this.title = e.title ?? "";
        break;
      case "public":
        this.topic = e.topic ?? "";
        this.startsAt = e.starts_at ?? null;
        break;
      case "recording":
        this.recording = { active: e.active, recording_id: e.recording_id, started_at: e.started_at };
        break;
      case "broadcast":
        this.broadcast = { active: e.active, started_at: e.started_at, stopped_at: e.stopped_at };
        break;
      case "comment_on_screen":
        this.onScreen = e.comment ? { ...e.comment } : null;
        break;
      case "comment_answered":
        if (this.onScreen?.id === e.comment) this.onScreen = { ...this.onScreen, answered_by: e.by };
        break;
      case "comment_moderation":
        this.commentModeration = e.on;
        break;
      case "clip":
        this.clip = e.clip ? { ...e.clip } : null;
        break;
      case "roster": {
        this.roster = e.entries.map((entry) => ({ ...entry }));
        this.allowGuests = e.allow_guests;
        const byId = new Map(this.roster.map((entry) => [entry.identity, entry]));
        for (const person of this.participants.values()) {
          const entry = byId.get(person.identity);
          if (entry) Object.assign(person, { kind: entry.kind, sector: entry.sector, organisation: entry.organisation });
          person.guest = !entry && this.roster.length > 0 && !["chair", "clerk"].includes(person.role) && person.device !== "clip";
        }
        break;
      }
      case "guests":
        this.allowGuests = e.allowed;
        break;
      case "agenda":
        this.agenda = e.items.map(copyItem);
        this.agendaIndex = e.current ?? null;
        if (this.agendaIndex == null) this.agendaStartedAt = null;
        break;
      case "agenda_item":
        this.agendaIndex = e.index;
        this.agendaStartedAt = e.started_at;
        break;
      case "preset":
        if (e.preset) this.presets[e.name] = { layout: e.preset.layout, slots: [...e.preset.slots] };
        else delete this.presets[e.name];
        break;
      default:
        this.version = e.version ?? this.version;
        return false;
    }
    this.version = e.version ?? this.version;
    return true;
  }
}

function copyItem(item) {
  return { ...item, speakers: [...(item.speakers || [])], preset: item.preset ? { layout: item.preset.layout, slots: [...item.preset.slots] } : null };
}

function copyPresets(presets) {
  return Object.fromEntries(Object.entries(presets).map(([name, p]) => [name, { layout: p.layout, slots: [...p.slots] }]));
}
