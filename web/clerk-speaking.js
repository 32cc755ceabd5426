// The clerk page's speaking-time chart: who spoke how long, grouped by sector, as CSS bars (floor
// time and voiced time side by side, each as long as its share of the longest), the sectors' and
// the agenda items' totals, and the CSV and Excel downloads. Data: `speaking_time` of
// GET /api/recordings/{id} (docs/recordings.md).

import { t } from "./i18n.js";
import { el, formatElapsed } from "./ui.js";

const MEASURES = ["floor_s", "voiced_s"];

/** Seconds as a figure: "12.5 秒" under a minute (a short answer matters), else "m:ss" or "h:mm:ss". */
export function formatSeconds(seconds) {
  const s = Math.max(0, seconds ?? 0);
  return s < 60 ? t("speaking.seconds", { s: s.toFixed(1) }) : formatElapsed(Math.round(s));
}

function sectorName(sector) {
  return sector ?? t("speaking.unknown_sector");
}

/** One labelled row (exported for the chair's panel) of two bars; `max` is the longest time in the chart (100 % wide). */
export function barRow(label, row, max, data) {
  return el(
    "div",
    { class: "speaking-row", dataset: data },
    el("span", { class: "speaking-label", title: label }, label),
    el(
      "span",
      { class: "speaking-bars" },
      MEASURES.map((measure) =>
        el(
          "span",
          { class: "speaking-bar-line" },
          el(
            "span",
            { class: "speaking-track" },
            el("span", {
              class: `speaking-bar speaking-${measure === "floor_s" ? "floor" : "voiced"}`,
              dataset: { measure: measure === "floor_s" ? "floor" : "voiced", seconds: String(row[measure]) },
              style: { width: `${max > 0 ? (100 * row[measure]) / max : 0}%` },
              title: `${t(`speaking.${measure}`)}: ${formatSeconds(row[measure])}`,
            }),
          ),
          el("span", { class: "speaking-value" }, formatSeconds(row[measure])),
        ),
      ),
    ),
  );
}

function longest(rows) {
  return Math.max(0, ...rows.flatMap((r) => MEASURES.map((m) => r[m] ?? 0)));
}

/**
 * Fill `box` with the chart of `figures`; `download(ext)` saves the CSV or the workbook. No figures
 * yet with `counting`: the server is still counting a long meeting's first time.
 */
export function showSpeakingTime(box, figures, download, counting = false) {
  if (!figures) {
    box.replaceChildren(el("p", { class: "empty" }, t(counting ? "speaking.counting" : "speaking.none")));
    return;
  }
  const people = figures.by_person ?? [];
  const sectors = figures.by_sector ?? [];
  const max = longest(people);
  const legend = el(
    "p",
    { class: "speaking-legend" },
    el("span", { class: "speaking-key speaking-floor" }),
    ` ${t("speaking.floor_s")} `,
    el("span", { class: "speaking-key speaking-voiced" }),
    ` ${t("speaking.voiced_s")}`,
    figures.voiced_from === "speakers" ? ` (${t("speaking.from_speakers")})` : "",
  );
  const bySector = el(
    "div",
    { class: "speaking-chart", dataset: { chart: "sector" } },
    sectors.map((s) => barRow(sectorName(s.sector), s, longest(sectors), { sector: s.sector ?? "" })),
  );
  const byPerson = el(
    "div",
    { class: "speaking-chart", dataset: { chart: "person" } },
    sectors.map((s) =>
      el(
        "div",
        { class: "speaking-group" },
        el("h5", {}, sectorName(s.sector)),
        people
          .filter((p) => (p.sector ?? null) === (s.sector ?? null))
          .map((p) => barRow(p.organisation ? `${p.name} · ${p.organisation}` : p.name, p, max, { identity: p.identity })),
      ),
    ),
  );
  // Per venue or department: shown once the roster names organisations.
  const organisations = (figures.by_organisation ?? []).filter((o) => o.organisation != null);
  const byOrganisation = organisations.length
    ? [
        el("h4", {}, t("speaking.by_organisation")),
        el(
          "div",
          { class: "speaking-chart", dataset: { chart: "organisation" } },
          organisations.map((o) => barRow(o.organisation, o, longest(organisations), { organisation: o.organisation })),
        ),
      ]
    : [];
  const items = (figures.by_item ?? []).filter((i) => i.index != null || i.floor_s || i.voiced_s);
  const byItem = items.length
    ? [
        el("h4", {}, t("speaking.by_item")),
        el(
          "div",
          { class: "speaking-chart", dataset: { chart: "item" } },
          items.map((i) =>
            barRow(i.index == null ? t("speaking.no_item") : `${i.index + 1}. ${i.title}`, i, longest(items), {
              item: String(i.index ?? ""),
            }),
          ),
        ),
      ]
    : [];
  const total = figures.total ?? {};
  box.replaceChildren(
    legend,
    el("h4", {}, t("speaking.by_sector")),
    bySector,
    el("h4", {}, t("speaking.by_person")),
    byPerson,
    ...byOrganisation,
    ...byItem,
    el(
      "p",
      { class: "speaking-total" },
      t("speaking.total", { floor: formatSeconds(total.floor_s), voiced: formatSeconds(total.voiced_s) }),
    ),
    el(
      "p",
      { class: "speaking-downloads" },
      el("button", { dataset: { file: "csv" }, onclick: () => download("csv") }, t("speaking.csv")),
      el("button", { dataset: { file: "xlsx" }, onclick: () => download("xlsx") }, t("speaking.xlsx")),
    ),
  );
}
