"""The README's two set-up commands, run as written in a fresh clone with a fresh virtual environment.

Slow (installs the project and its dependencies from PyPI once, into one venv that both commands
use), so it is one test. The test command is run on a narrow selection of tests, never recursively
on the whole suite.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from signaling.tokens import verify_token

ROOT = Path(__file__).resolve().parents[1]
INSTALL_TIMEOUT_S = 900


def readme_commands() -> tuple[str, str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)\n```", section, re.S)
    assert len(blocks) == 2, "the Set up section must hold exactly two sh blocks: run and test"
    return blocks[0].strip(), blocks[1].strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    _, test_command = readme_commands()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert f"exec {test_command}" in ci.splitlines()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git to clone the repository")
@pytest.mark.skipif(
    os.environ.get("CONFERENCE_SKIP_FRESH_INSTALL") == "1",
    reason="CONFERENCE_SKIP_FRESH_INSTALL=1: skipping the fresh-venv install for a quick local run",
)
def test_readme_commands_in_a_fresh_clone(tmp_path: Path) -> None:
    run_command, test_command = readme_commands()
    clone = tmp_path / "repo"
    # A clone holds what is committed, as CI sees it (no stray local files, no .venv).
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONFERENCE_", "VIRTUAL_ENV", "PYTHON"))}
    port = free_port()
    env["CONFERENCE_PORT"] = str(port)  # the command as written, on a port free on this machine
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        ["bash", "-c", run_command],
        cwd=clone,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + INSTALL_TIMEOUT_S
        health = None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                    health = resp.status, resp.read()
                    break
            except OSError:
                time.sleep(1)
        output = (tmp_path / "serve.log").read_text()
        assert health is not None, f"server never answered /healthz:\n{output[-3000:]}"
        assert health[0] == 200 and b'"ok"' in health[1]
        assert "conference token" in output and "admin_key" in output  # tells how to mint tokens

        token = subprocess.run(
            [
                ".venv/bin/conference",
                "token",
                "--room",
                "council",
                "--role",
                "chair",
                "--identity",
                "c",
                "--name",
                "C",
            ],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.strip()
        secret = (clone / "data" / "secret").read_text().strip()
        assert verify_token(secret, token).role == "chair"

        # The command line is a bash chain: signal its whole session, as a terminal's Ctrl-C would.
        started = time.monotonic()
        os.killpg(server.pid, signal.SIGTERM)
        while "conference: stopped" not in (tmp_path / "serve.log").read_text():
            assert time.monotonic() - started < 8, "server did not stop within 8 s of SIGTERM"
            time.sleep(0.1)
        server.wait(timeout=10)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        log.close()

    # The test command, on a narrow selection: passing tests pass, a failing one fails the run.
    passing = subprocess.run(
        ["bash", "-c", f"{test_command} tests/test_config.py"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
    )
    assert passing.returncode == 0, passing.stdout[-3000:] + passing.stderr[-3000:]
    assert "passed" in passing.stdout
    (clone / "tests" / "test_zz_failing.py").write_text("def test_fails():\n    assert 1 + 1 == 3\n")
    failing = subprocess.run(
        ["bash", "-c", f"{test_command} tests/test_zz_failing.py"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert failing.returncode != 0 and "1 failed" in failing.stdout
    nothing = subprocess.run(
        ["bash", "-c", f"{test_command} tests/test_config.py -k no_such_test_anywhere"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert nothing.returncode != 0 and "no tests" in nothing.stdout
