"""The speaking timer on the pages (conference/speaking.py, web/floor-timer.js), in headless
Chromium against the real server: the chair gives the floor with a 6 s limit and the mute action;
the venue screen, the member's phone and the console show the remaining time, amber at once (less
than 30 s left), red when it is over; after the grace the server mutes the member; a venue screen
that reloads shows the same remaining time; the chair's "one more minute" gives the time and the
microphone back."""

# ruff: noqa: F811  (the fixtures imported from test_browser_pages are arguments here)
from __future__ import annotations

import re

import pytest
from browser_util import VENUE_SCREEN, eventually, rest, screenshot_path
from playwright.async_api import Browser, Page
from test_browser_pages import browser, chromium, open_page, server, wake  # noqa: F401 (fixtures)

TIMER = """(id) => { const n = document.getElementById(id);
  return n.hidden ? null : {text: n.textContent, phase: n.dataset.phase,
                            bg: getComputedStyle(n).backgroundColor}; }"""


async def timer(tab: Page, node: str = "floor-timer") -> dict | None:
    return await tab.evaluate(TIMER, node)


def seconds_left(text: str) -> int:
    m = re.search(r"(\d+):(\d\d)", text)
    assert m, text
    return int(m.group(1)) * 60 + int(m.group(2))


async def member_muted(server) -> bool:
    state = await rest(server, "GET", "/api/rooms/council")
    return next(p for p in state["participants"] if p["identity"] == "m1")["muted"]


@pytest.mark.browser
async def test_speaking_timer_counts_down_turns_red_and_mutes_after_the_grace(
    server, browser: Browser
) -> None:
    errors: list[str] = []
    chair = await open_page(browser, server, "chair", "chair", "chair", "主持人", errors=errors)
    hall = await open_page(browser, server, "venue", "hall-a", "venue", "第一分会场", VENUE_SCREEN, errors)
    member = await open_page(browser, server, "phone", "m1", "member", "王委员", errors=errors)
    commands = "/api/rooms/council/commands"
    await rest(server, "POST", commands, {"type": "set_floor_limits", "action": "mute", "grace_s": 2})
    await rest(server, "POST", commands, {"type": "grant_floor", "identity": "m1", "limit_s": 6})

    # Amber at once on every page: less than 30 s are left.
    for tab, node in ((hall, "floor-timer"), (member, "floor-timer"), (chair, "chair-floor-timer")):
        shown = await eventually(
            lambda t=tab, n=node: timer(t, n), lambda v: v is not None, 3, f"{node} shown"
        )
        assert shown["phase"] == "warn" and "剩余" in shown["text"], shown
        assert 3 <= seconds_left(shown["text"]) <= 6, shown  # rounded up, on the server's clock
    amber = (await timer(hall))["bg"]

    # A venue screen that reloads shows the same remaining time (the server's clock, not a restart).
    before = seconds_left((await timer(hall))["text"])
    await hall.reload()
    after = await eventually(
        lambda: timer(hall), lambda v: v is not None and v["phase"] != "ok", 5, "timer again"
    )
    if after["phase"] == "warn":
        assert 0 <= before - seconds_left(after["text"]) <= 3, (before, after)

    # Over: red, counting up; the member still has the microphone during the grace.
    over = await eventually(lambda: timer(hall), lambda v: v and v["phase"] == "over", 8, "time up")
    assert "超时" in over["text"] and over["bg"] != amber, over
    await hall.screenshot(path=screenshot_path("venue-floor-timer-over"))
    # Each page ticks four times a second on its own clock, corrected by the server's: within a second.
    await eventually(lambda: timer(member), lambda v: v and v["phase"] == "over", 1.5, "over on the phone")
    # After the grace the server mutes the member.
    await eventually(lambda: member_muted(server), bool, 6, "member muted by the timer")

    # The chair's "one more minute": time and microphone back, and back to amber/green.
    await chair.click("#floor-extend")
    await eventually(lambda: member_muted(server), lambda m: not m, 4, "mute lifted by the extension")
    again = await eventually(lambda: timer(hall), lambda v: v and v["phase"] != "over", 4, "extended")
    assert 50 <= seconds_left(again["text"]) <= 62, again

    # Revoked: the timer goes from every page.
    await rest(server, "POST", commands, {"type": "revoke_floor"})
    await eventually(lambda: timer(hall), lambda v: v is None, 3, "timer gone")
    # (each page applies the event on its own: the console's may come a moment after the venue's)
    await eventually(lambda: timer(chair, "chair-floor-timer"), lambda v: v is None, 3, "console timer gone")
    assert not errors, errors
