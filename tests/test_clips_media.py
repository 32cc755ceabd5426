"""A prepared clip as the rest of the meeting gets it: the recording's render shows its colours in
order and carries its tone, and a venue screen in headless Chromium shows it in program slot 0."""

from __future__ import annotations

import asyncio
import io
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import pytest
from browser_util import (
    ADMIN_KEY,
    SLOT_PIXELS_JS,
    SMALL_SCREEN,
    chromium_args,
    colour_name,
    ensure_chromium,
    eventually,
    server_process,
)
from clip_util import CLIP_COLOURS, TONE_HZ, make_film
from playwright.async_api import async_playwright
from test_clips import ADMIN, command, nearest, until_ready, upload

from signaling.app import build_media

pytestmark = pytest.mark.media


async def api(server: Any, path: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(server.make_url(path), headers=ADMIN) as r:
        assert r.status == 200, await r.text()
        return await r.json() if r.content_type == "application/json" else await r.read()


async def test_the_recording_renders_the_clip(signaling_server, settings, connect, mint, tmp_path) -> None:
    film = tmp_path / "film.mp4"
    expected = [CLIP_COLOURS.index(c) for c in make_film(film, seconds=6)]
    media_settings = replace(settings, media=True)
    server = await signaling_server(media_settings, media=build_media(media_settings))
    status, answer = await upload(server, "council", film.read_bytes(), "film.mp4")
    assert status == 202
    clip = await until_ready(server, "council", answer["id"])
    chair = await connect(server, mint("council", "chair", "chair"))
    await chair.ok("join", publish={"audio": False, "video": False})
    recording_id = (await chair.ok("start_recording"))["recording_id"]
    status, result = await command(server, "council", {"type": "play_clip", "clip": clip["id"], "slot": 0})
    assert status == 200, result
    # Played to its end, the player says so (playing false, by nobody).
    await chair.wait_for(
        lambda m: (
            m["type"] == "event"
            and m["event"]["kind"] == "clip"
            and m["event"]["clip"]
            and not m["event"]["clip"]["playing"]
        ),
        timeout=15,
    )
    await asyncio.sleep(0.5)
    await chair.ok("stop_recording")

    deadline = time.monotonic() + 120
    while True:
        detail = await api(server, f"/api/recordings/{recording_id}")
        job = next((r for r in detail["renders"] if r["id"] == "program-1280x720"), None)
        if job is not None and job["state"] in ("done", "failed"):
            break
        assert time.monotonic() < deadline, f"program render not done: {job}"
        await asyncio.sleep(0.5)
    assert job["state"] == "done", job
    assert {(t["identity"], t["kind"]) for t in detail["tracks"]} >= {("clip", "video"), ("clip", "audio")}
    mp4 = await api(server, f"/api/recordings/{recording_id}/download")
    runs: list[int] = []
    with av.open(io.BytesIO(mp4)) as container:
        for frame in container.decode(video=0):
            rgb = frame.to_ndarray(format="rgb24")
            h, w = rgb.shape[:2]
            centre = rgb[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3].reshape(-1, 3).mean(axis=0)
            if np.abs(centre - np.array(CLIP_COLOURS[nearest(centre)])).max() > 40:
                continue  # not one of the film's colours (the empty program before the clip)
            colour = nearest(centre)
            if not runs or runs[-1] != colour:
                runs.append(colour)
    assert runs == expected, (runs, expected)
    with av.open(io.BytesIO(mp4)) as container:
        audio = np.concatenate([f.to_ndarray().mean(axis=0) for f in container.decode(audio=0)])
    assert np.abs(audio).max() > 0.05, "the render carries the clip's sound"
    start = max(0, int(np.argmax(np.abs(audio))) - 24_000)
    loudest = audio[start : start + 48_000]
    spectrum = np.abs(np.fft.rfft(loudest * np.hanning(len(loudest))))
    assert abs(float(np.argmax(spectrum)) * 48_000 / len(loudest) - TONE_HZ) < 10


@pytest.mark.browser
async def test_a_chromium_venue_shows_the_clip_in_program_slot_0(tmp_path: Path) -> None:
    if ensure_chromium() is None:
        pytest.fail("chromium is not installed")
    film = tmp_path / "film.mp4"
    colours = make_film(film, seconds=8)
    names = [colour_name(list(c)) for c in colours]
    assert None not in names[:4], names
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with server_process(tmp_path / "data", media=True) as server, async_playwright() as pw:
        form = aiohttp.FormData()
        form.add_field("file", film.read_bytes(), filename="film.mp4")
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{server.url}/api/rooms/council/clips", data=form, headers=headers) as r:
                assert r.status == 202, await r.text()
                clip_id = (await r.json())["id"]
            deadline = time.monotonic() + 60
            while True:
                async with http.get(f"{server.url}/api/rooms/council/clips/{clip_id}", headers=headers) as r:
                    clip = json.loads(await r.text())
                if clip["state"] != "processing":
                    break
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
            assert clip["state"] == "ready", clip
            browser = await pw.chromium.launch(executable_path=str(ensure_chromium()), args=chromium_args())
            try:
                page = await (await browser.new_context(viewport=SMALL_SCREEN)).new_page()
                token = server.token("council", "hall-a", "venue", "第一分会场")
                await page.goto(server.page_url("venue", token))
                await eventually(
                    lambda: page.evaluate("window.conference?.client?.mediaState"),
                    lambda s: s == "connected",
                    45,
                    "the venue's media connects",
                )
                body = {"type": "play_clip", "clip": clip_id, "slot": 0}
                async with http.post(
                    f"{server.url}/api/rooms/council/commands", json=body, headers=headers
                ) as r:
                    assert r.status == 200, await r.text()
                seen: list[str] = []
                deadline = time.monotonic() + 20
                while len(seen) < 4 and time.monotonic() < deadline:
                    pixels = await page.evaluate(SLOT_PIXELS_JS)
                    name = colour_name(pixels.get("0"))
                    if name is not None and (not seen or seen[-1] != name):
                        seen.append(name)
                    await asyncio.sleep(0.1)
                # In the film's order; one may be missed (the first while the screen waits for a
                # keyframe, or one a loaded machine's page did not sample within its second).
                order = iter(n for n in names if n is not None)
                assert len(set(seen)) >= 3 and all(c in order for c in seen), (seen, names)
            finally:
                await browser.close()


@pytest.mark.browser
async def test_the_console_uploads_cues_plays_pauses_and_stops_a_clip(tmp_path: Path) -> None:
    if ensure_chromium() is None:
        pytest.fail("chromium is not installed")
    film = tmp_path / "pilot district.mp4"
    make_film(film, seconds=8)
    async with server_process(tmp_path / "data", media=True) as server, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(ensure_chromium()), args=chromium_args())
        try:
            page = await (await browser.new_context(viewport={"width": 1280, "height": 900})).new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(server.page_url("chair", server.token("council", "chair", "chair", "主持人")))
            await eventually(
                lambda: page.evaluate("window.conference?.client?.state"),
                lambda s: s == "joined",
                30,
                "joined",
            )
            await page.set_input_files("#clip-file", str(film))
            item = "#clip-list .clip-item[data-state='ready']"
            await page.wait_for_selector(item, timeout=60_000)
            assert await page.text_content(f"{item} .clip-name") == "pilot district.mp4"
            assert await page.text_content(f"{item} .clip-duration") == "0:08"
            await eventually(
                lambda: page.evaluate(f'document.querySelector("{item} img")?.naturalWidth'),
                lambda w: w == 320,
                10,
                "the thumbnail loads",
            )
            # A film agenda item that names the clip cues it when the chair advances to it.
            clip_id = await page.get_attribute(item, "data-clip")
            agenda = {
                "items": [{"title": "近视防控试点区短片", "kind": "film", "planned_s": 60, "clip": clip_id}]
            }
            async with aiohttp.ClientSession() as http:
                headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
                async with http.put(
                    f"{server.url}/api/rooms/council/agenda", json=agenda, headers=headers
                ) as r:
                    assert r.status == 200, await r.text()
                body = {"type": "next_item"}
                async with http.post(
                    f"{server.url}/api/rooms/council/commands", json=body, headers=headers
                ) as r:
                    assert r.status == 200, await r.text()
            await page.wait_for_selector(f"#clip-list .clip-item.cued[data-clip='{clip_id}']", timeout=10_000)
            await eventually(
                lambda: page.evaluate("document.getElementById('clip-preview').readyState"),
                lambda r: r >= 2,
                10,
                "the preview loads",
            )
            # The slot choice follows the program's layout; the clip goes into the second slot.
            async with aiohttp.ClientSession() as http:
                program = {"layout": "side-by-side", "slots": [None, None]}
                url = f"{server.url}/api/rooms/council/program"
                async with http.put(url, json=program, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as r:
                    assert r.status == 200, await r.text()
            await eventually(
                lambda: page.evaluate("document.getElementById('clip-slot').options.length"),
                lambda n: n == 2,
                10,
                "a choice per slot of the layout",
            )
            await page.evaluate("document.getElementById('clip-slot').value = '1'")
            await page.click("#clip-play")
            await eventually(
                lambda: page.evaluate("window.conference.client.mirror.clip?.playing"), bool, 10, "playing"
            )

            async def remaining() -> float:
                return float(await page.get_attribute("#clip-remaining", "data-remaining") or "0")

            first = await remaining()
            await asyncio.sleep(1.5)
            second = await remaining()
            assert 0.8 < first - second < 2.5 and 4.0 < second < 8.0, (first, second)
            assert await page.evaluate("window.conference.client.mirror.program.slots") == [None, "clip"]
            await page.click("#clip-pause")
            await eventually(
                lambda: page.evaluate("window.conference.client.mirror.clip?.playing"),
                lambda p: p is False,
                10,
                "paused",
            )
            await asyncio.sleep(0.5)  # the console's next redraw after the pause
            held = await remaining()
            await asyncio.sleep(1.0)
            assert await remaining() == held
            await page.click("#clip-stop")
            await eventually(
                lambda: page.evaluate("window.conference.client.mirror.clip"),
                lambda c: c is None,
                10,
                "stopped",
            )
            assert errors == []
        finally:
            await browser.close()


async def test_the_public_live_stream_carries_the_clip(
    signaling_server, settings, connect, mint, tmp_path
) -> None:
    film = tmp_path / "film.mp4"
    expected = [CLIP_COLOURS.index(c) for c in make_film(film, seconds=8)]
    media_settings = replace(settings, media=True, live_size="320x180", live_fps=10)
    server = await signaling_server(media_settings, media=build_media(media_settings))
    status, answer = await upload(server, "council", film.read_bytes(), "film.mp4")
    assert status == 202
    clip = await until_ready(server, "council", answer["id"])
    chair = await connect(server, mint("council", "chair", "chair"))
    await chair.ok("join", publish={"audio": False, "video": False})
    await chair.ok("start_broadcast")
    directory = settings.data_dir / "live" / "council"
    playlist = directory / "index.m3u8"
    deadline = time.monotonic() + 40
    while not (playlist.exists() and playlist.read_text().count("#EXTINF") >= 2):
        assert time.monotonic() < deadline, "the live stream did not start"
        await asyncio.sleep(0.2)
    status, result = await command(server, "council", {"type": "play_clip", "clip": clip["id"], "slot": 0})
    assert status == 200, result
    await chair.wait_for(
        lambda m: (
            m["type"] == "event"
            and m["event"]["kind"] == "clip"
            and m["event"]["clip"]
            and not m["event"]["clip"]["playing"]
        ),
        timeout=20,
    )
    await asyncio.sleep(5)  # the segments with the clip's end are written
    runs: list[int] = []
    audio: list[np.ndarray] = []
    for name in [line for line in playlist.read_text().splitlines() if line and not line.startswith("#")]:
        with av.open(str(directory / name)) as container:
            for frame in container.decode(video=0, audio=0):
                if isinstance(frame, av.AudioFrame):
                    pcm = frame.to_ndarray()  # one channel: planar rows, or every n-th packed sample
                    channels = len(frame.layout.channels)
                    audio.append(pcm[0] if frame.format.is_planar else pcm.reshape(-1)[::channels])
                    continue
                rgb = frame.to_ndarray(format="rgb24")
                h, w = rgb.shape[:2]
                centre = rgb[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3].reshape(-1, 3).mean(axis=0)
                colour = nearest(centre)
                if np.abs(centre - np.array(CLIP_COLOURS[colour])).max() > 40:
                    continue
                if not runs or runs[-1] != colour:
                    runs.append(colour)
    assert runs == expected, (runs, expected)
    samples = np.concatenate(audio)
    start = max(0, int(np.argmax(np.abs(samples))) - 24_000)
    window = samples[start : start + 48_000]
    spectrum = np.abs(np.fft.rfft(window * np.hanning(len(window))))
    assert abs(float(np.argmax(spectrum)) * 48_000 / len(window) - TONE_HZ) < 10
