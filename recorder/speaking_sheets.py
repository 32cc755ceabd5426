"""The speaking-time figures (``recorder.speaking_time.figures``) as a CSV and as an Excel workbook.

The CSV is for other tools: one table, UTF-8 with a BOM (so Excel opens Chinese text right), a
fixed English header (docs/recordings.md), one row per person, sector, organisation, kind, agenda
item, person within an item, and the total; ``table`` says which. The workbook is for people: one
sheet per table, headed in the clerk's language, seconds as numbers.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from openpyxl import Workbook
from openpyxl.styles import Font

CSV_COLUMNS = (
    "table",
    "item",
    "title",
    "identity",
    "name",
    "role",
    "kind",
    "sector",
    "organisation",
    "floor_s",
    "voiced_s",
    "turns",
    "people",
)
GROUPS = (("sector", "by_sector"), ("organisation", "by_organisation"), ("kind", "by_kind"))


def csv_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for p in data["by_person"]:
        rows.append({"table": "person", **{k: p.get(k) for k in CSV_COLUMNS if k in p}})
    for attribute, key in GROUPS:
        for g in data[key]:
            rows.append({"table": attribute, **{k: g.get(k) for k in CSV_COLUMNS if k in g}})
    names = {p["identity"]: p["name"] for p in data["by_person"]}
    for item in data["by_item"]:
        common = {"item": item["index"], "title": item["title"]}
        rows.append({"table": "item", **common, "floor_s": item["floor_s"], "voiced_s": item["voiced_s"]})
        for p in item["by_person"]:
            who = {"identity": p["identity"], "name": names.get(p["identity"], p["identity"])}
            rows.append(
                {"table": "item_person", **common, **who, **{k: p[k] for k in ("floor_s", "voiced_s")}}
            )
    total = data["total"]
    rows.append({"table": "total", "floor_s": total["floor_s"], "voiced_s": total["voiced_s"]})
    return rows


def to_csv(data: dict[str, Any]) -> str:
    out = io.StringIO()
    out.write("\ufeff")
    writer = csv.DictWriter(out, CSV_COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    for row in csv_rows(data):
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in CSV_COLUMNS})
    return out.getvalue()


HEADINGS = {
    "en": {
        "person": "By person",
        "sector": "By sector",
        "organisation": "By organisation",
        "kind": "By kind",
        "item": "By agenda item",
        "identity": "Identity",
        "name": "Name",
        "role": "Role",
        "kind_col": "Kind",
        "sector_col": "Sector",
        "organisation_col": "Organisation",
        "floor_s": "Floor time (s)",
        "voiced_s": "Voiced time (s)",
        "turns": "Turns",
        "people": "People",
        "index": "Item",
        "title": "Title",
        "unknown": "(unknown)",
        "none": "(no item)",
        "total": "Total",
    },
    "zh-CN": {
        "person": "按人员",
        "sector": "按界别",
        "organisation": "按单位",
        "kind": "按类别",
        "item": "按议程",
        "identity": "标识",
        "name": "姓名",
        "role": "角色",
        "kind_col": "类别",
        "sector_col": "界别",
        "organisation_col": "单位",
        "floor_s": "发言时间（秒）",  # noqa: RUF001 - Chinese punctuation
        "voiced_s": "有声时间（秒）",  # noqa: RUF001
        "turns": "发言次数",
        "people": "人数",
        "index": "议程",
        "title": "标题",
        "unknown": "（未知）",  # noqa: RUF001
        "none": "（议程外）",  # noqa: RUF001
        "total": "合计",
    },
}


def to_xlsx(data: dict[str, Any], language: str = "zh-CN") -> bytes:
    h = HEADINGS.get(language, HEADINGS["zh-CN"])
    book = Workbook()
    bold = Font(bold=True)

    def sheet(title: str, header: list[str], rows: list[list[Any]], first: bool = False) -> None:
        ws = book.active if first else book.create_sheet()
        assert ws is not None
        ws.title = title
        ws.append(header)
        for cell in ws[1]:
            cell.font = bold
        for row in rows:
            ws.append(row)
        for i, name in enumerate(header):
            width = max([len(str(name)) * 2, *(len(str(r[i])) * 2 for r in rows if r[i] is not None)])
            ws.column_dimensions[ws.cell(1, i + 1).column_letter].width = min(60, width + 2)

    person_columns = (
        "identity",
        "name",
        "role",
        "kind",
        "sector",
        "organisation",
        "floor_s",
        "voiced_s",
        "turns",
    )
    total = {
        "identity": h["total"],
        "floor_s": data["total"]["floor_s"],
        "voiced_s": data["total"]["voiced_s"],
    }
    sheet(
        h["person"],
        [h.get(f"{k}_col", h.get(k, k)) for k in person_columns],
        [[p.get(k) for k in person_columns] for p in [*data["by_person"], total]],
        first=True,
    )
    for attribute, key in GROUPS:
        sheet(
            h[attribute],
            [h[f"{attribute}_col"], h["floor_s"], h["voiced_s"], h["people"]],
            [[g[attribute] or h["unknown"], g["floor_s"], g["voiced_s"], g["people"]] for g in data[key]],
        )
    names = {p["identity"]: p["name"] for p in data["by_person"]}
    item_rows: list[list[Any]] = []
    for item in data["by_item"]:
        index = h["none"] if item["index"] is None else item["index"] + 1
        item_rows.append([index, item["title"], None, item["floor_s"], item["voiced_s"]])
        for p in item["by_person"]:
            item_rows.append(
                [None, None, names.get(p["identity"], p["identity"]), p["floor_s"], p["voiced_s"]]
            )
    sheet(h["item"], [h["index"], h["title"], h["name"], h["floor_s"], h["voiced_s"]], item_rows)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()
