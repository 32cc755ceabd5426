"""The pages' HTML, composed from one shared head (``web/head.html``) and each page's body
(``web/<page>.html``, a ``<body>`` whose ``data-page`` and ``data-title`` name the page), so no
page repeats the head. A file that is a whole document (it starts with ``<!doctype``) is served
as it is."""

from __future__ import annotations

import html
from pathlib import Path

HEAD = "head.html"


def _attribute(tag: str, name: str) -> str | None:
    marker = f'{name}="'
    start = tag.find(marker)
    if start < 0:
        return None
    start += len(marker)
    return html.unescape(tag[start : tag.index('"', start)])


def compose_page(web_dir: Path, filename: str) -> str:
    """The page's whole document; raises OSError when a file is missing, ValueError when the
    body does not name its page."""
    body = (web_dir / filename).read_text(encoding="utf-8")
    if body.lstrip().lower().startswith("<!doctype"):
        return body
    first = body[: body.index(">") + 1]
    page, title = _attribute(first, "data-page"), _attribute(first, "data-title")
    if not page or not page.isidentifier() or title is None:
        raise ValueError(f"{filename}: the <body> needs data-page and data-title")
    head = (web_dir / HEAD).read_text(encoding="utf-8")
    return head.replace("{page}", page).replace("{title}", html.escape(title)) + body
