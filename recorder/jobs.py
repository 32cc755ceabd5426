"""Render jobs: each render runs in its own low-priority process, its state kept on disk.

A job is ``<recording>/renders/<job_id>.json`` (state, progress, error) next to its
``<job_id>.mp4`` and ``<job_id>.vtt``. The worker process (``python -m recorder.jobs``) updates
the JSON as it goes, so the clerk API, another server process, or a restarted server all see the
same progress, and a render can never stall the media event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from .archive import Recording, make_private_dir, recording_dir, write_private_text
from .render import RenderError, RenderOptions, check_layout_spec, parse_size, parse_time, render
from .titles import LANGUAGES

log = logging.getLogger(__name__)

JOB_ID = re.compile(r"[a-z0-9][a-z0-9_.+-]{0,120}")  # used with fullmatch: `$` passes a trailing newline
RUNNING_STATES = ("queued", "running")
PROGRESS_EVERY_S = 0.5
CANCELLED = "cancelled:"


class JobError(Exception):
    """A render request that cannot be accepted; ``code`` is a protocol error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def job_id_for(options: RenderOptions) -> str:
    """A readable id that is the same for the same request, so a repeated request finds the job."""
    layout = re.sub(r"[^a-z0-9_.+-]+", "_", options.layout.lower().replace(":", "_")).strip("_.") or "x"
    parts = [layout[:80], f"{options.width}x{options.height}"]
    if options.start is not None or options.end is not None:
        parts.append(f"{options.start or 0:g}-{'end' if options.end is None else format(options.end, 'g')}")
    if not options.captions:
        parts.append("nocaptions")
    if options.language is not None:
        parts.append(options.language.lower())
    return "-".join(parts)


def options_from_request(data: dict[str, Any]) -> RenderOptions:
    """Render options from a request body (``layout``, ``size``, ``from``, ``to``, ``captions``,
    ``language``)."""
    if not isinstance(data, dict):
        raise JobError("bad_request", "expected a JSON object")
    unknown = set(data) - {"layout", "size", "from", "to", "captions", "language"}
    if unknown:
        raise JobError("bad_request", f"unknown fields: {', '.join(sorted(unknown))}")
    layout = data.get("layout", "program")
    if not isinstance(layout, str) or not layout or len(layout) > 200:
        raise JobError("bad_request", "layout must be a non-empty string")
    size = data.get("size", "1280x720")
    captions = data.get("captions", True)
    if not isinstance(size, str) or not isinstance(captions, bool):
        raise JobError("bad_request", "size must be a string like 1280x720 and captions true or false")
    language = data.get("language")
    if language is not None and language not in LANGUAGES:
        raise JobError("bad_request", f"language must be one of {', '.join(LANGUAGES)}")
    try:
        check_layout_spec(layout)
        width, height = parse_size(size)
        start, end = data.get("from"), data.get("to")
        for value in (start, end):
            if value is not None and (isinstance(value, bool) or not isinstance(value, str | int | float)):
                raise RenderError("from and to must be seconds or HH:MM:SS")
        options = RenderOptions(
            layout=layout,
            width=width,
            height=height,
            start=parse_time(start),
            end=parse_time(end),
            captions=captions,
            language=language,
        )
    except RenderError as exc:
        code = "unknown_layout" if "unknown layout" in str(exc) else "bad_request"
        raise JobError(code, str(exc)) from None
    if options.start is not None and options.end is not None and options.start >= options.end:
        raise JobError("bad_request", "from must be before to")
    return options


def options_from_job(job: dict[str, Any]) -> RenderOptions:
    width, height = parse_size(str(job["size"]))
    return RenderOptions(
        layout=str(job["layout"]),
        width=width,
        height=height,
        start=job.get("from"),
        end=job.get("to"),
        captions=bool(job.get("captions", True)),
        language=job.get("language"),
    )


def interrupted(job: dict[str, Any]) -> bool:
    """A job that a server shutdown or crash cut short (not one that failed on its own)."""
    state = job.get("state")
    return state in RUNNING_STATES or (state == "failed" and str(job.get("error", "")).startswith(CANCELLED))


def renders_dir(data_dir: str | os.PathLike[str], recording_id: str) -> Path:
    return recording_dir(data_dir, recording_id) / "renders"


def job_path(data_dir: str | os.PathLike[str], recording_id: str, job_id: str, suffix: str) -> Path:
    """A job's file; the job id is checked so it can never leave the renders directory."""
    if not JOB_ID.fullmatch(job_id) or ".." in job_id or suffix not in (".json", ".mp4", ".vtt"):
        raise JobError("not_found", f"no render {job_id!r}")
    base = renders_dir(data_dir, recording_id)
    return base / f"{job_id}{suffix}"


def read_job(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_job(path: Path, job: dict[str, Any]) -> None:
    make_private_dir(path.parent)
    write_private_text(path, json.dumps(job, sort_keys=True))


def list_jobs(data_dir: str | os.PathLike[str], recording_id: str) -> list[dict[str, Any]]:
    base = renders_dir(data_dir, recording_id)
    if not base.is_dir():
        return []
    jobs = []
    for path in sorted(base.glob("*.json")):
        job = read_job(path)
        if job is not None and JOB_ID.fullmatch(str(job.get("id", ""))):
            mp4 = base / f"{job['id']}.mp4"
            if job.get("state") == "done" and mp4.is_file():
                job["size_bytes"] = mp4.stat().st_size
            jobs.append(job)
    jobs.sort(key=lambda j: j.get("created_at", 0))
    return jobs


class RenderJobs:
    """Queues renders and runs them one at a time (the machine's cores belong to the media)."""

    def __init__(self, data_dir: str | os.PathLike[str], concurrency: int = 1, nice: int = 10) -> None:
        self.data_dir = Path(data_dir)
        self._slots = asyncio.Semaphore(concurrency)
        self._nice = nice
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._processes: set[asyncio.subprocess.Process] = set()

    def submit(
        self, recording_id: str, options: RenderOptions, *, force: bool = False, start: bool = True
    ) -> dict[str, Any]:
        """Queue a render (or return the existing job for the same request). With ``start`` False
        the job is only written down, for the next server start to run (see ``interrupted``)."""
        job_id = job_id_for(options)
        path = job_path(self.data_dir, recording_id, job_id, ".json")
        existing = read_job(path)
        key = (recording_id, job_id)
        if existing is not None and not force and (existing.get("state") == "done" or key in self._tasks):
            return existing
        job = {
            "id": job_id,
            "recording": recording_id,
            **options.to_json(),
            "state": "queued",
            "progress": 0.0,
            "error": None,
            "created_at": time.time(),
            "finished_at": None,
        }
        write_job(path, job)
        if start:
            self._tasks[key] = asyncio.get_running_loop().create_task(self._run(recording_id, job_id, path))
        return job

    async def _run(self, recording_id: str, job_id: str, path: Path) -> None:
        try:
            async with self._slots:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "recorder.jobs",
                    str(self.data_dir),
                    recording_id,
                    job_id,
                    str(self._nice),
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.PIPE,
                    cwd=str(Path(__file__).resolve().parent.parent),
                )
                self._processes.add(proc)
                try:
                    _, err = await proc.communicate()
                except asyncio.CancelledError:
                    # Never leave a render running (or its transport open) behind a closed loop.
                    if proc.returncode is None:
                        proc.kill()
                    await asyncio.shield(proc.wait())
                    raise
                finally:
                    self._processes.discard(proc)
                job = read_job(path) or {"id": job_id}
                if proc.returncode != 0 and job.get("state") != "failed":
                    tail = err.decode(errors="replace").strip().splitlines()[-1:] if err else []
                    job.update(state="failed", error=f"render process exited with {proc.returncode}: {tail}")
                    job["finished_at"] = time.time()
                    write_job(path, job)
        except asyncio.CancelledError:
            job = read_job(path) or {"id": job_id}
            job.update(state="failed", error=f"{CANCELLED} server shut down", finished_at=time.time())
            write_job(path, job)
            raise
        finally:
            self._tasks.pop((recording_id, job_id), None)

    @property
    def running(self) -> set[tuple[str, str]]:
        """(recording id, job id) of the jobs queued or running in this process."""
        return set(self._tasks)

    async def wait(self, recording_id: str, job_id: str) -> None:
        task = self._tasks.get((recording_id, job_id))
        if task is not None:
            await asyncio.shield(task)

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        for task in list(self._tasks.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def run_job(data_dir: Path, recording_id: str, job_id: str) -> int:
    """The worker: render one job, keeping its JSON up to date."""
    path = job_path(data_dir, recording_id, job_id, ".json")
    job = read_job(path)
    if job is None:
        print(f"no job {job_id}", file=sys.stderr)
        return 2
    options = options_from_job(job)
    job.update(state="running", progress=0.0, started_at=time.time())
    write_job(path, job)
    last = [0.0]

    def progress(done: float) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY_S and done < 1.0:
            last[0] = now
            job["progress"] = round(done, 3)
            write_job(path, job)

    try:
        recording = Recording.open(data_dir, recording_id)
        result = render(recording, job_path(data_dir, recording_id, job_id, ".mp4"), options, progress)
    except (RenderError, OSError, ValueError) as exc:
        job.update(state="failed", error=str(exc), finished_at=time.time())
        write_job(path, job)
        return 1
    except Exception as exc:
        log.exception("render %s of %s failed", job_id, recording_id)
        job.update(state="failed", error=f"{type(exc).__name__}: {exc}", finished_at=time.time())
        write_job(path, job)
        return 1
    job.update(
        state="done",
        progress=1.0,
        finished_at=time.time(),
        duration_s=round(result.duration, 3),
        chapters=[{"t": round(c.at, 3), "title": c.title} for c in result.chapters],
        render_seconds=round(result.wall_s, 2),
        speed=round(result.speed, 2),
    )
    write_job(path, job)
    return 0


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    data_dir, recording_id, job_id = argv[:3]
    if len(argv) > 3:
        with contextlib.suppress(OSError):
            os.nice(int(argv[3]))  # behind the media, which has to run in real time
    return run_job(Path(data_dir), recording_id, job_id)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
