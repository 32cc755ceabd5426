"""The meeting's poster for sharing (``GET /w/{code}/poster.png``): title, time, topic and the QR
code of the public page's short link, drawn with Pillow in the captions' CJK font. No login; made
on request (a few tens of milliseconds, in a thread) and cacheable for a minute.

``?tz=Asia/Shanghai`` (an IANA zone; default UTC) says in which time zone the start is written: the
chair console passes the browser's. ``?lang=en`` writes the words in English (default zh-CN).
"""

from __future__ import annotations

import asyncio
import io
import time
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import segno
from aiohttp import web

from recorder.titles import cjk_font, language_of

MAX_MADE = 16
_made: dict[tuple[object, ...], bytes] = {}  # the posters made, by what they say
WIDTH, HEIGHT = 1080, 1350  # 4:5, what chat apps and social media show whole
BACKGROUND = (11, 21, 34)
ACCENT = (90, 162, 255)
WORDS = {
    "zh-CN": {"scan": "扫码观看直播，发表您的意见", "starts": "%Y年%m月%d日 %H:%M", "live": "网络直播"},  # noqa: RUF001
    "en": {
        "scan": "Scan to watch live and have your say",
        "starts": "%d %B %Y, %H:%M",
        "live": "Live online",
    },
}


def _wrap(draw: object, text: str, font: object, width: int, lines: int) -> list[str]:
    """``text`` in at most ``lines`` lines of at most ``width`` pixels (the last one shortened)."""
    out: list[str] = []
    rest = text.strip()
    while rest and len(out) < lines:
        cut = len(rest)
        while cut > 1 and draw.textlength(rest[:cut], font=font) > width:  # type: ignore[attr-defined]
            cut -= 1
        line, rest = rest[:cut], rest[cut:].lstrip()
        if rest and len(out) == lines - 1:
            while line and draw.textlength(line + "…", font=font) > width:  # type: ignore[attr-defined]
                line = line[:-1]
            line += "…"
        out.append(line)
    return out


def draw_poster(
    title: str, topic: str, starts_at: float | None, url: str, tz: str = "UTC", language: str = "zh-CN"
) -> bytes:
    from PIL import Image, ImageDraw, ImageFont

    words = WORDS[language_of(language)]
    image = Image.new("RGB", (WIDTH, HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(image)
    path = cjk_font()

    def font(px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
        return ImageFont.truetype(path, px) if path else ImageFont.load_default(px)

    margin = 80
    y = 90
    draw.rectangle((margin, y, margin + 200, y + 56), fill=(229, 72, 77))
    draw.text((margin + 100, y + 28), words["live"], font=font(32), fill="white", anchor="mm")
    y += 110
    for line in _wrap(draw, title, font(76), WIDTH - 2 * margin, 3):
        draw.text((margin, y), line, font=font(76), fill="white")
        y += 96
    if starts_at:
        try:
            zone = ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            zone = ZoneInfo("UTC")
        when = datetime.fromtimestamp(starts_at, UTC).astimezone(zone).strftime(words["starts"])
        draw.text((margin, y + 10), when, font=font(44), fill=ACCENT)
        y += 80
    for line in _wrap(draw, topic, font(40), WIDTH - 2 * margin, 3):
        draw.text((margin, y + 10), line, font=font(40), fill=(200, 212, 226))
        y += 56
    # The QR code: white, centred in what is left, with its quiet zone.
    qr = segno.make(url, error="m")
    matrix = qr.matrix
    side = min(560, HEIGHT - y - 260)
    module = max(4, side // (len(matrix) + 4))
    size = module * (len(matrix) + 4)
    left, top = (WIDTH - size) // 2, y + 60
    draw.rectangle((left, top, left + size, top + size), fill="white")
    for r, row in enumerate(matrix):
        for c, dark in enumerate(row):
            if dark:
                x0, y0 = left + (c + 2) * module, top + (r + 2) * module
                draw.rectangle((x0, y0, x0 + module - 1, y0 + module - 1), fill="black")
    draw.text((WIDTH // 2, top + size + 50), words["scan"], font=font(40), fill="white", anchor="mm")
    draw.text((WIDTH // 2, top + size + 110), url, font=font(30), fill=(159, 178, 200), anchor="mm")
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


async def poster(request: web.Request) -> web.Response:
    from .public import SITE_KEY, base_url  # public.py registers this route

    code = request.match_info["code"]
    state = await request.app[SITE_KEY].room_of(code)  # type: ignore[attr-defined]
    if state is None:
        raise web.HTTPNotFound(text="no such meeting")
    tz = request.query.get("tz", "UTC")[:64]
    args = (
        state.title or state.room,
        state.topic,
        state.starts_at,
        f"{base_url(request)}/w/{code}",
        tz,
        language_of(request.query.get("lang")),
    )
    body = _made.get(args)
    if body is None:  # drawing takes ~0.2 s of a core: a crowd of requests gets the one made
        body = await asyncio.to_thread(draw_poster, *args)
        _made[args] = body
        while len(_made) > MAX_MADE:
            _made.pop(next(iter(_made)))
    headers = {
        "Cache-Control": "public, max-age=60",
        "Last-Modified": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime()),
    }
    if "download" in request.query:
        headers["Content-Disposition"] = f'attachment; filename="poster-{code}.png"'
    return web.Response(body=body, content_type="image/png", headers=headers)
