"""What the suite does about tests it cannot judge now: it waits, it says so, and CI does not accept it.

A pytest plugin (the hooks are imported by tests/conftest.py; ``-p suite_policy`` loads it alone):

- ``@pytest.mark.realtime`` marks tests that judge real-time media in browsers (frame rates,
  tones, colours): on a machine saturated by other work (1-minute load above ``MAX_LOAD_PER_CORE``
  per core) they would report noise. Before each such test the suite waits, bounded, for the load
  to come down (checked when the test is reached, not at collection, so a machine that got busy
  since counts too). Once the run's waiting budget is spent, a test on a saturated machine is
  skipped with the load in the reason, except under CI, where it runs anyway.
- Under CI (``CI`` set to anything but empty/0/false/no: ``.ci/run`` sets ``CI=true``), a skipped
  test marked ``browser`` or ``media`` fails the run, and so does a test module skipped as a whole.
- ``CONFERENCE_TEST_SUMMARY=<file>``: the counts of the run are written there (shell assignments)
  for tests/run.sh's last line.

Tuning (environment): ``CONFERENCE_MAX_LOAD_PER_CORE`` (default 6), ``CONFERENCE_CALM_WAIT_S``
(the total time the whole run may spend waiting, default 300).
"""

from __future__ import annotations

import os
import time
from collections.abc import Generator
from typing import Any

import pytest

MAX_LOAD_PER_CORE = float(os.environ.get("CONFERENCE_MAX_LOAD_PER_CORE", "6"))
CALM_WAIT_S = float(os.environ.get("CONFERENCE_CALM_WAIT_S", "300"))
CALM_POLL_S = 5.0
MUST_RUN_MARKERS = ("browser", "media")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def load_per_core() -> float:
    return os.getloadavg()[0] / (os.cpu_count() or 1)


class _Calm:
    """The waiting budget of the whole run, shared by every realtime test."""

    def __init__(self) -> None:
        self.budget_s = CALM_WAIT_S

    def verdict(self, test: str, say: Any) -> str | None:
        """None: run the test now; else why it is skipped."""
        started = time.monotonic()
        load = load_per_core()
        if load > MAX_LOAD_PER_CORE and self.budget_s > 0:
            say(
                f"\n{test}: 1-minute load {load:.1f} per core is above {MAX_LOAD_PER_CORE:g}: "
                f"waiting up to {self.budget_s:.0f} s for the machine to calm down"
            )
        while load > MAX_LOAD_PER_CORE and time.monotonic() - started < self.budget_s:
            time.sleep(min(CALM_POLL_S, max(0.1, self.budget_s - (time.monotonic() - started))))
            load = load_per_core()
        waited = time.monotonic() - started
        self.budget_s = max(0.0, self.budget_s - waited)
        if load <= MAX_LOAD_PER_CORE:
            return None
        what = f"1-minute load {load:.1f} per core (above {MAX_LOAD_PER_CORE:g})"
        what += f" after waiting {waited:.0f} s" if waited >= 0.5 else " and the waiting budget spent"
        if in_ci():
            say(f"{test}: {what}: running anyway (CI=true does not accept a skip)")
            return None
        # The test's id in the reason: -rs lists skips by where they were raised, which is here.
        return f"{test}: machine saturated: {what}; real-time media cannot be judged now"


_calm = _Calm()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "realtime: judges real-time media; waits (bounded) for a calm machine before it runs",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("realtime") is None:
        return
    reason = _calm.verdict(item.nodeid, lambda text: _say(item.config, text))
    if reason is not None:
        pytest.skip(reason)


def _say(config: pytest.Config, text: str) -> None:
    """A line on the terminal now, even while the test's output is being captured."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    if capture is None:
        reporter.write_line(text)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(text)


def _skip_reason(report: Any) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if not (in_ci() and report.skipped) or hasattr(report, "wasxfail"):
        return
    marks = [m for m in MUST_RUN_MARKERS if item.get_closest_marker(m) is not None]
    if marks:
        report.outcome = "failed"
        report.longrepr = (
            f"a {'/'.join(marks)} test was skipped under CI=true, which must run every browser and "
            f"media test: {_skip_reason(report)}"
        )


# Module-level skips under CI, failed at the end of the run: failing the collection itself would
# make pytest stop before running anything, hiding every other result.
_skipped_modules: list[str] = []


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if in_ci() and report.skipped and report.nodeid.endswith(".py"):
        _skipped_modules.append(f"{report.nodeid}: {_skip_reason(report)}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _skipped_modules and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    for line in _skipped_modules:
        terminalreporter.write_line(f"FAILED (a whole module skipped under CI=true) {line}", red=True)
    path = os.environ.get("CONFERENCE_TEST_SUMMARY")
    if not path:
        return
    stats = terminalreporter.stats
    counts = {
        "passed": len([r for r in stats.get("passed", []) if getattr(r, "when", "call") == "call"]),
        "failed": len(stats.get("failed", [])),
        "errors": len(stats.get("error", [])),
        "skipped": len(stats.get("skipped", [])),
        "xfailed": len(stats.get("xfailed", [])),
        "skipped_modules_ci": len(_skipped_modules),
    }
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(f"tests_{k}={v}\n" for k, v in counts.items()))
