// The chair console's running order: the agenda (advance, jump, edit), program presets (recalled
// with one click or Shift+1…9) and the roster (import/export as CSV, invitation sheets, guests).
// An item's preset, or a recalled preset, is staged as the next program, ready to take; someone it
// names who is not here leaves that slot empty (docs/protocol.md, "The running order").
// Methods of the console (web/chair.js).

import { t } from "./i18n.js";
import { el, errorText, notify } from "./ui.js";

const $ = (id) => document.getElementById(id);
const KINDS = ["speech", "film", "remote_link", "department_answers", "open_discussion", "vote", "other"];
const FLOOR = "@floor";
// "The speaker full screen": whoever has the floor when it is taken.
const SPEAKER_FULL_SCREEN = { layout: "single", slots: [FLOOR] };

export const orderMethods = {
  startOrder() {
    $("agenda-next").addEventListener("click", () => this.nextItem());
    $("agenda-prev").addEventListener("click", () => this.previousItem());
    const kind = $("agenda-new-kind");
    kind.replaceChildren(...KINDS.map((k) => el("option", { value: k, dataset: { i18nKind: k } }, t(`kinds.${k}`))));
    $("agenda-add").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const title = $("agenda-new-title").value.trim();
      if (!title) return;
      const minutes = Number($("agenda-new-minutes").value || 0);
      const item = { title, kind: kind.value, planned_s: Math.max(0, Math.round(minutes * 60)) };
      const preset = $("agenda-new-preset").value;
      const items = this.agendaItems();
      const editing = this.editing != null && this.editing < items.length ? this.editing : null;
      if (preset === "floor") item.preset = SPEAKER_FULL_SCREEN;
      else if (preset === "draft" && this.draft) item.preset = { layout: this.draft.layout, slots: [...this.draft.slots] };
      else if (preset === "keep" && editing != null && items[editing].preset) item.preset = items[editing].preset;
      if (editing != null) {
        // An edit keeps what the form does not show: the expected speakers and the clip.
        items[editing] = { ...items[editing], ...item };
        if (!item.preset) delete items[editing].preset;
      } else items.push(item);
      this.sendAgenda(items).then((ok) => {
        if (ok) this.endEdit();
      });
    });
    $("preset-save").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const name = $("preset-name").value.trim();
      if (!name || !this.draft) return;
      this.command("save_preset", { name, layout: this.draft.layout, slots: this.draft.slots }).then((r) => {
        if (r) $("preset-name").value = "";
      });
    });
    $("roster-import").addEventListener("click", () => $("roster-file").click());
    $("roster-file").addEventListener("change", () => this.importRoster($("roster-file")));
    $("roster-export").addEventListener("click", () => this.download("roster", "text/csv", "roster"));
    $("links-csv").addEventListener("click", () => this.download("roster/links?format=csv", "text/csv", "invitations"));
    $("links-html").addEventListener("click", () => this.download("roster/links?format=html", "text/html", "invitations"));
    // The same, from the empty room's hint: what to do first when nobody has joined yet.
    $("invite-import").addEventListener("click", () => $("roster-file").click());
    $("invite-qr").addEventListener("click", () => $("links-html").click());
    $("invite-sheet").addEventListener("click", () => $("links-csv").click());
    $("allow-guests").addEventListener("change", (ev) => this.command("allow_guests", { allowed: ev.target.checked }));
  },

  /** The agenda as the API takes it back (for an edit). */
  agendaItems() {
    return (this.client.mirror?.agenda ?? []).map((item) => {
      const out = { title: item.title, kind: item.kind, planned_s: item.planned_s, speakers: [...item.speakers] };
      if (item.preset) out.preset = { layout: item.preset.layout, slots: [...item.preset.slots] };
      if (item.clip != null) out.clip = item.clip;
      if (item.limit_s != null) out.limit_s = item.limit_s;
      return out;
    });
  },

  async sendAgenda(items) {
    return (await this.command("set_agenda", { items })) !== null;
  },

  nextItem() {
    const mirror = this.client.mirror;
    if (!mirror?.agenda.length) return;
    if (mirror.agendaIndex == null) this.command("goto_item", { index: 0 });
    else if (mirror.agendaIndex + 1 < mirror.agenda.length) this.command("next_item", {});
  },

  previousItem() {
    const index = this.client.mirror?.agendaIndex;
    if (index) this.command("goto_item", { index: index - 1 });
  },

  /** A preset as a program now: "@floor" is the floor holder; anyone absent leaves an empty slot. */
  resolvePreset(preset) {
    const mirror = this.client.mirror;
    const slots = [];
    for (const slot of preset.slots) {
      const who = slot === FLOOR ? mirror.floor : slot;
      slots.push(who && mirror.participant(who) && !slots.includes(who) ? who : null);
    }
    return { layout: preset.layout, slots };
  },

  /** Make `preset` the next program, ready to take (kept resolved as people come and go). */
  stagePreset(preset) {
    if (!preset || !this.layoutSpec(preset.layout)) return;
    this.staged = { layout: preset.layout, slots: [...preset.slots] };
    this.draft = this.resolvePreset(this.staged);
    this.dirty = true;
    this.renderDraft();
  },

  /** A preset button pressed: staged, and the keyboard back to the console (Enter takes it). */
  recallFrom(ev, preset) {
    ev.currentTarget.blur();
    this.stagePreset(preset);
  },

  recallPreset(index) {
    const names = Object.keys(this.client.mirror?.presets ?? {});
    if (names[index] !== undefined) this.stagePreset(this.client.mirror.presets[names[index]]);
  },

  renderOrder() {
    const mirror = this.client.mirror;
    if (!mirror) return;
    const current = mirror.agendaIndex;
    const list = $("agenda-list");
    list.replaceChildren(
      ...mirror.agenda.map((item, index) =>
        el(
          "li",
          {
            class: index === current ? "current" : null,
            dataset: { index: String(index) },
            "aria-current": index === current ? "step" : null,
            // Who is expected to speak, by display name.
            title: item.speakers.length ? t("order.speakers", { names: item.speakers.map((id) => mirror.name(id)).join("、") }) : null,
          },
          el("button", { class: "agenda-goto", title: t("order.goto"), onclick: (ev) => {
            ev.currentTarget.blur(); // Enter then takes the staged program, not this button again
            this.command("goto_item", { index });
          } }, item.title),
          el(
            "span",
            { class: "agenda-meta" },
            [t(`kinds.${item.kind}`), item.planned_s ? t("order.planned", { m: Math.round(item.planned_s / 60) }) : "", item.preset ? "▣" : ""]
              .filter(Boolean)
              .join(" · "),
          ),
          el("button", { class: "agenda-preset ghost", title: t("order.set_preset"), "aria-label": t("order.set_preset"), onclick: () => this.itemPresetFromDraft(index) }, "▣"),
          el("button", { class: "agenda-edit ghost", title: t("order.edit_item"), "aria-label": t("order.edit_item"), onclick: () => this.editItem(index) }, "✎"),
          el("button", { class: "agenda-delete ghost", title: t("order.delete_item"), "aria-label": t("order.delete_item"), onclick: () => this.deleteItem(index) }, "×"),
        ),
      ),
    );
    if (!mirror.agenda.length) list.append(el("li", { class: "empty" }, t("order.none")));
    if (current !== this.shownItem) {
      // The panel scrolls in its share of the column: keep the current item in sight when it changes.
      this.shownItem = current;
      list.querySelector("li.current")?.scrollIntoView({ block: "nearest" });
    }
    $("agenda-next").disabled = !mirror.agenda.length || (current != null && current + 1 >= mirror.agenda.length);
    $("agenda-prev").disabled = !current;
    const presets = Object.entries(mirror.presets);
    $("preset-list").replaceChildren(
      ...presets.map(([name, preset], index) =>
        el(
          "li",
          { dataset: { preset: name } },
          el("button", { class: "preset-recall", title: `${t(`layouts.${preset.layout}`)} (Shift+${index + 1})`, onclick: (ev) => this.recallFrom(ev, preset) }, name, index < 9 ? el("kbd", {}, `⇧${index + 1}`) : null),
          el("button", { class: "preset-delete ghost", "aria-label": t("order.delete_preset"), title: t("order.delete_preset"), onclick: () => this.command("delete_preset", { name }) }, "×"),
        ),
      ),
    );
    $("preset-list").prepend(
      el(
        "li",
        { dataset: { preset: FLOOR } },
        el("button", { class: "preset-recall", title: t("order.preset_floor_hint"), onclick: (ev) => this.recallFrom(ev, SPEAKER_FULL_SCREEN) }, t("order.preset_floor")),
      ),
    );
    const arrived = mirror.roster.filter((e) => mirror.participant(e.identity)).length;
    $("roster-count").textContent = mirror.roster.length ? t("order.roster_count", { n: mirror.roster.length, here: arrived }) : "";
    $("allow-guests").checked = mirror.allowGuests;
    for (const option of $("agenda-new-kind").options) option.textContent = t(`kinds.${option.value}`);
  },

  itemPresetFromDraft(index) {
    if (!this.draft) return;
    const items = this.agendaItems();
    items[index].preset = { layout: this.draft.layout, slots: [...this.draft.slots] };
    this.sendAgenda(items);
  },

  /** Fill the form with an item to change it; "保存" then replaces it in place. */
  editItem(index) {
    const item = this.client.mirror?.agenda[index];
    if (!item) return;
    this.editing = index;
    $("agenda-new-title").value = item.title;
    $("agenda-new-kind").value = item.kind;
    $("agenda-new-minutes").value = item.planned_s ? String(Math.round(item.planned_s / 60)) : "";
    const keep = $("agenda-new-preset").querySelector("option[value='keep']");
    keep.hidden = !item.preset;
    $("agenda-new-preset").value = item.preset ? "keep" : "";
    $("agenda-add-submit").textContent = t("order.save_item");
    $("agenda-new-title").focus();
  },

  endEdit() {
    this.editing = null;
    $("agenda-new-title").value = "";
    $("agenda-new-minutes").value = "";
    $("agenda-new-preset").value = "";
    $("agenda-new-preset").querySelector("option[value='keep']").hidden = true;
    $("agenda-add-submit").textContent = t("order.add");
  },

  deleteItem(index) {
    const items = this.agendaItems();
    items.splice(index, 1);
    this.sendAgenda(items);
  },

  async api(path, init = {}) {
    const room = encodeURIComponent(this.client.mirror.room);
    const headers = { Authorization: `Bearer ${this.client.options.token}`, ...(init.headers || {}) };
    const resp = await fetch(`/api/rooms/${room}/${path}`, { ...init, headers });
    if (!resp.ok) {
      let message = String(resp.status);
      try {
        message = (await resp.json()).message || message;
      } catch {
        // not JSON: the status says enough
      }
      throw new Error(message);
    }
    return resp;
  },

  async importRoster(input) {
    const file = input.files?.[0];
    input.value = "";
    if (!file) return;
    try {
      const resp = await this.api("roster", { method: "PUT", headers: { "Content-Type": "text/csv" }, body: file });
      notify(t("order.imported", { n: (await resp.json()).entries }), "info");
    } catch (err) {
      notify(t("order.import_failed", { message: err.message }), "error", 15000);
    }
  },

  async download(path, type, stem) {
    try {
      const blob = new Blob([await (await this.api(path)).arrayBuffer()], { type });
      const link = el("a", { href: URL.createObjectURL(blob), download: `${stem}-${this.client.mirror.room}.${type === "text/html" ? "html" : "csv"}` });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(link.href), 10000);
    } catch (err) {
      notify(errorText(err), "error");
    }
  },
};
