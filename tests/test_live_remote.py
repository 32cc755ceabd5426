"""The live stream's compositor on a machine of its own (``conference live --server URL``): a real
server with its SFU and two aiortc venues (``live_util``), the compositor as a separate process that
connects over the WebSocket with the admin key, receives the room's RTP on this machine's interface
address (not the loopback the server's own compositors use, so it must be in ``live_hosts``) and
uploads its HLS files; the public reads them from the server. Checked with PyAV: the program's
colour and the speaker's tone, the take followed, the end of the playlist, a second broadcast."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from browser_util import ADMIN_KEY
from live_util import ADMIN, ROOM, rest, running_meeting
from test_live import pitch, playlist, read_segment, segments
from test_sfu_support import TONES, wait_for

from conference.media import MediaError
from conference.room import RoomState
from conference.sfu.plain import PlainOffer
from signaling.app import BROADCASTS_KEY, MEDIA_KEY, SETTINGS_KEY
from signaling.broadcast import live_dir
from signaling.live_remote import own_address

pytestmark = pytest.mark.media


def interface_address() -> str:
    """This machine's own non-loopback address (the compositor's "other machine"), if it has one."""
    return own_address("http://198.51.100.1")  # UDP connect: picks the route, sends nothing


@contextlib.contextmanager
def remote_compositor(url: str, out: Path, host: str, key_file: Path) -> Iterator[subprocess.Popen]:
    log = (out.parent / "compositor.log").open("w")
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "signaling", "live", "--server", url, "--room", ROOM),
            *("--admin-key-file", str(key_file), "--out", str(out), "--host", host),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        log.close()


async def command(http: aiohttp.ClientSession, url: str, kind: str, **body: object) -> None:
    await rest(http, url, "POST", f"/api/rooms/{ROOM}/commands", {"type": kind, **body})


async def newest(directory: Path, seen: set[str], timeout: float) -> str:
    names: list[str] = []

    def arrived() -> bool:
        names[:] = [n for _, n in segments(playlist(directory)) if n not in seen]
        return bool(names)

    await wait_for(arrived, timeout, "a new segment uploaded")
    seen.update(names)
    return names[-1]


async def test_a_compositor_on_another_machine_streams_the_program_through_the_server(tmp_path: Path) -> None:
    host = interface_address()
    if host.startswith("127."):
        pytest.fail("this machine has no interface address besides the loopback: no 'other machine' to play")
    key_file = tmp_path / "admin-key"
    key_file.write_text(ADMIN_KEY)
    async with running_meeting(
        tmp_path, live_compositor="remote", live_hosts=[host], live_size="320x180", live_fps=10
    ) as started:
        url, app = started["url"], started["app"]
        broadcasts = app[BROADCASTS_KEY]
        served = live_dir(app[SETTINGS_KEY], ROOM)
        async with aiohttp.ClientSession() as http:
            # Refused: no key, a wrong key, a name that is not a live file; and the media core never
            # sends a room's RTP to a host the operator did not name.
            async with http.put(f"{url}/live/{ROOM}/index.m3u8", data=b"#EXTM3U") as resp:
                assert resp.status == 401
            async with http.put(
                f"{url}/live/{ROOM}/index.m3u8",
                data=b"#EXTM3U",
                headers={"Authorization": "Bearer " + "x" * 40},
            ) as resp:
                assert resp.status == 403
            async with http.put(f"{url}/live/{ROOM}/../../etc.ts", data=b"x", headers=ADMIN) as resp:
                assert resp.status in (400, 404)
            offer = PlainOffer.from_json(
                {"type": "offer", "address": ["192.0.2.77", 4000], "video_slots": 1, "audio_slots": 1}
            )
            with pytest.raises(MediaError):
                await app[MEDIA_KEY].open_plain(ROOM, "~probe", RoomState(room=ROOM), offer, [host])
            assert not served.exists()

            await rest(
                http, url, "PUT", f"/api/rooms/{ROOM}/program", {"layout": "single", "slots": ["hall-a"]}
            )
            with remote_compositor(url, tmp_path / "remote-out", host, key_file) as process:
                await wait_for(lambda: ROOM in broadcasts.remote, 20, "the compositor connected and waiting")
                await command(http, url, "start_broadcast")
                await wait_for(lambda: len(segments(playlist(served))) >= 3, 45, "three segments uploaded")
                text = playlist(served)
                assert "#EXT-X-ENDLIST" not in text
                listed = segments(text)
                assert all(d <= 2.5 for d, _ in listed), listed
                last = read_segment(served / listed[-1][1])
                assert last["colour"] == 2, last["colour"]  # hall-a's blue, composed on the other machine
                heard = pitch(last["audio"])
                assert heard is not None and abs(heard - TONES[2]) < 40, heard
                # The public gets the uploaded files from the server as before.
                async with http.get(f"{url}/live/{ROOM}/index.m3u8") as resp:
                    assert resp.status == 200 and "#EXTINF" in await resp.text()
                stats = broadcasts.stats()[ROOM]
                assert stats["running"] and stats["restarts"] == 0

                # The chair's take reaches the remote compositor.
                seen = {n for _, n in segments(playlist(served))}
                await rest(
                    http, url, "PUT", f"/api/rooms/{ROOM}/program", {"layout": "single", "slots": ["hall-b"]}
                )
                taken, colour = time.monotonic(), None
                while time.monotonic() - taken < 20 and colour != 4:
                    colour = read_segment(served / await newest(served, seen, 15))["colour"]
                assert colour == 4, "the remote stream did not follow the program to hall-b"
                # The sliding window: segments that left it are deleted on the server too.
                await wait_for(
                    lambda: len(list(served.glob("seg-*.ts"))) <= 6 + 3 + 1, 20, "old segments deleted"
                )

                # The stop: the closing slate, the end of the playlist, and the compositor waits again.
                await command(http, url, "stop_broadcast")
                await wait_for(lambda: "#EXT-X-ENDLIST" in playlist(served), 40, "the end of the playlist")
                final = read_segment(served / segments(playlist(served))[-1][1])
                assert final["colour"] not in (2, 4)
                await wait_for(lambda: ROOM not in broadcasts.streams, 15, "the stream ended")
                await wait_for(lambda: ROOM in broadcasts.remote, 20, "the compositor back and waiting")
                assert "~live" not in app[MEDIA_KEY].rooms[ROOM].transports

                # A second broadcast is a fresh playlist, composed by the same remote process.
                await command(http, url, "start_broadcast")
                await wait_for(
                    lambda: len(segments(playlist(served))) >= 2 and "#EXT-X-ENDLIST" not in playlist(served),
                    45,
                    "the second broadcast's segments",
                )
                assert read_segment(served / segments(playlist(served))[-1][1])["colour"] == 4
                assert process.poll() is None
                await command(http, url, "stop_broadcast")
                await wait_for(lambda: "#EXT-X-ENDLIST" in playlist(served), 40, "the second end")
