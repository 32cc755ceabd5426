"""tests/suite_policy.py, run for real: a small pytest run in a temporary directory with the plugin
loaded, locally and under CI=true. A skipped browser/media test is visible locally and fails a CI
run; a realtime module waits for a calm machine (here: a load threshold no machine meets) and then
is skipped locally but run under CI; tests/run.sh prints what did not run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
PYTEST_ARGS = ["-p", "suite_policy", "-rfEs", "-q", "-p", "no:cacheprovider"]
PYTEST_ARGS += ["-o", "asyncio_default_fixture_loop_scope=function"]

SAMPLE = """
import pytest

@pytest.mark.browser
def test_browser_that_skips():
    pytest.skip("no browser here")

def test_plain_skip():
    pytest.skip("not relevant here")

def test_passes():
    assert True
"""

REALTIME = """
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.realtime]

def test_judges_frames():
    assert True

def test_judges_tones():
    assert True
"""

WHOLE_MODULE = """
import pytest

pytest.skip("this module cannot run here", allow_module_level=True)

def test_never():
    assert False
"""


def run(tmp_path: Path, files: dict[str, str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    clean = {k: v for k, v in os.environ.items() if k != "CI" and not k.startswith("CONFERENCE_")}
    clean["PYTHONPATH"] = str(TESTS)
    return subprocess.run(
        [sys.executable, "-m", "pytest", *PYTEST_ARGS],
        cwd=tmp_path,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_skips_are_listed_locally_and_a_skipped_browser_test_fails_under_ci(tmp_path: Path) -> None:
    local = run(tmp_path, {"test_sample.py": SAMPLE}, {})
    assert local.returncode == 0, local.stdout
    assert "SKIPPED" in local.stdout and "no browser here" in local.stdout and "not relevant" in local.stdout
    ci = run(tmp_path, {"test_sample.py": SAMPLE}, {"CI": "true"})
    assert ci.returncode == 1, ci.stdout
    assert "1 failed, 1 passed, 1 skipped" in ci.stdout
    assert "skipped under CI=true" in ci.stdout and "no browser here" in ci.stdout
    assert run(tmp_path, {"test_sample.py": SAMPLE}, {"CI": "false"}).returncode == 0


def test_a_realtime_module_waits_then_skips_locally_and_runs_under_ci(tmp_path: Path) -> None:
    busy = {"CONFERENCE_MAX_LOAD_PER_CORE": "-1", "CONFERENCE_CALM_WAIT_S": "1"}
    local = run(tmp_path, {"test_realtime.py": REALTIME}, busy)
    assert local.returncode == 0, local.stdout
    assert "2 skipped" in local.stdout and "machine saturated" in local.stdout
    assert "waiting up to 1 s" in local.stdout
    ci = run(tmp_path, {"test_realtime.py": REALTIME}, {**busy, "CI": "1"})
    assert ci.returncode == 0, ci.stdout
    assert "2 passed" in ci.stdout and "running anyway" in ci.stdout
    calm = run(tmp_path, {"test_realtime.py": REALTIME}, {"CONFERENCE_MAX_LOAD_PER_CORE": "1000"})
    assert calm.returncode == 0 and "2 passed" in calm.stdout and "waiting" not in calm.stdout


def test_a_module_skipped_as_a_whole_fails_under_ci_after_the_other_tests_ran(tmp_path: Path) -> None:
    files = {"test_whole.py": WHOLE_MODULE, "test_other.py": "def test_ok():\n    assert True\n"}
    local = run(tmp_path, files, {})
    assert local.returncode == 0 and "1 passed, 1 skipped" in local.stdout, local.stdout
    ci = run(tmp_path, files, {"CI": "true"})
    assert ci.returncode == 1, ci.stdout
    assert "1 passed" in ci.stdout and "a whole module skipped under CI=true" in ci.stdout


def test_run_sh_says_how_many_tests_did_not_run() -> None:
    # The suite's own runner on a test of this repository that skips on request: its last line says so.
    result = subprocess.run(
        ["bash", "tests/run.sh", "tests/test_readme_commands.py::test_readme_commands_in_a_fresh_clone"],
        cwd=ROOT,
        env={**{k: v for k, v in os.environ.items() if k != "CI"}, "CONFERENCE_SKIP_FRESH_INSTALL": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    last = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 0, result.stdout[-2000:]
    assert "1 skipped" in last and "did not run" in last and "all tests passed" not in last, last
    assert "SKIPPED" in result.stdout and "CONFERENCE_SKIP_FRESH_INSTALL=1" in result.stdout
