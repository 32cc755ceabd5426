#!/usr/bin/env bash
# The whole test suite, exactly as the README says and as CI runs it (.ci/run).
#
# 1. a virtual environment in .venv with the project and its test extras installed (from PyPI);
# 2. the system pieces the tests drive for real: Chromium and Firefox (browser tests), GStreamer's
#    webrtcbin (a second WebRTC stack) and a Redis server on 127.0.0.1:6379 (shared-room tests),
#    installed with apt-get when missing and allowed (root);
# 3. pytest over tests/, exiting with its status ("no tests collected" counts as a failure); every skip
#    is listed with its reason and the last line counts them. CI (.ci/run) sets CI=true: a skipped
#    browser or media test then fails the run (tests/suite_policy.py).
# Extra arguments go to pytest, e.g. `bash tests/run.sh -k signaling`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# One run at a time per machine: the suite's real-time media tests judge timing, and two runs at
# once on a 2-core machine would fail each other. A run started by a test of this suite (the README
# commands replayed in a fresh clone) is already inside the lock: PYTEST_CURRENT_TEST says so.
LOCK=${CONFERENCE_SUITE_LOCK:-/tmp/conference-suite.lock}
if [ -z "${PYTEST_CURRENT_TEST:-}" ] && [ -z "${SUITE_LOCK_HELD:-}" ] && command -v flock >/dev/null; then
    exec 9>"$LOCK"
    if ! flock -n 9; then
        echo "== another test run holds $LOCK: waiting for it"
        flock 9
    fi
    export SUITE_LOCK_HELD=1
fi

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
# Editable install: code changes need no reinstall, only a changed pyproject.toml does.
stamp="$VENV/.installed-test-extras"
wanted=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$wanted" ]; then
    echo "== installing the project with its test extras into $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[test]'
    echo "$wanted" > "$stamp"
fi

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else return 1; fi
}
apt_updated=0
apt_install() {
    command -v apt-get >/dev/null || return 1
    if [ "$apt_updated" = 0 ]; then as_root apt-get -o DPkg::Lock::Timeout=300 update -qq || return 1; apt_updated=1; fi
    # Waits for another apt-get (e.g. a parallel run) instead of failing on dpkg's lock.
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -o DPkg::Lock::Timeout=300 -y -qq "$@"
}

if [ ! -x /usr/bin/chromium ]; then
    echo "== installing chromium (browser tests)"
    apt_install chromium chromium-driver || echo "!! could not install chromium: browser tests will fail"
fi
# The venue page is also checked in Firefox (tests/test_browser_firefox.py).
if ! command -v firefox-esr >/dev/null && ! command -v firefox >/dev/null; then
    echo "== installing firefox-esr (browser tests)"
    apt_install firefox-esr || echo "!! could not install firefox-esr: the Firefox test will be skipped"
fi
# The pages speak Chinese by default: without a CJK font the screenshots show boxes.
# grep -q would stop reading early and, under pipefail, make fc-list's SIGPIPE look like a missing font.
if ! fc-list 2>/dev/null | grep -iE 'wqy|noto.*cjk' >/dev/null; then
    echo "== installing a CJK font (page screenshots)"
    apt_install fonts-wqy-microhei || echo "!! could not install fonts-wqy-microhei: screenshots show boxes"
fi

# The telephone gateway's tests call it from baresip; its voice prompts are spoken by espeak-ng.
if ! command -v baresip >/dev/null || ! command -v espeak-ng >/dev/null; then
    echo "== installing baresip and espeak-ng (telephone gateway tests)"
    apt_install baresip espeak-ng || echo "!! could not install baresip/espeak-ng: the phone tests will be skipped"
fi

# The live stream through a caching reverse proxy (tests/test_live_nginx.py): Debian's nginx, run by
# the test itself with its own configuration (the package's own service is not needed).
if [ ! -x /usr/sbin/nginx ]; then
    echo "== installing nginx (the live stream behind a caching proxy)"
    apt_install nginx-light || apt_install nginx || echo "!! could not install nginx: the nginx test will fail"
fi

# A second WebRTC stack (tests/test_gstreamer.py): GStreamer's webrtcbin, driven by Debian's python3.
gst_ready() {
    /usr/bin/python3 -c "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstWebRTC', '1.0')
from gi.repository import Gst; Gst.init(None); assert Gst.ElementFactory.find('webrtcbin') and Gst.ElementFactory.find('nicesrc')" \
        >/dev/null 2>&1
}
if ! gst_ready; then
    echo "== installing GStreamer webrtcbin (the GStreamer venue test)"
    apt_install gstreamer1.0-plugins-bad gstreamer1.0-plugins-good gstreamer1.0-plugins-base \
        gstreamer1.0-nice gstreamer1.0-tools gir1.2-gst-plugins-bad-1.0 gir1.2-gst-plugins-base-1.0 python3-gi \
        || echo "!! could not install GStreamer: the GStreamer venue test will be skipped"
fi

redis_up() {
    "$VENV/bin/python" -c "import redis; redis.Redis(host='127.0.0.1', port=6379, socket_connect_timeout=1).ping()" \
        >/dev/null 2>&1
}
started_redis=0
if ! redis_up; then
    if ! command -v redis-server >/dev/null; then
        echo "== installing redis-server (shared-room tests)"
        apt_install redis-server || echo "!! could not install redis-server: Redis tests will fail"
    fi
    if command -v redis-server >/dev/null; then
        echo "== starting redis-server on 127.0.0.1:6379 for the tests"
        redis-server --bind 127.0.0.1 --port 6379 --save '' --appendonly no --daemonize yes >/dev/null
        started_redis=1
        for _ in $(seq 50); do redis_up && break; sleep 0.1; done
    fi
fi
stop_redis() {
    if [ "$started_redis" = 1 ]; then
        "$VENV/bin/python" -c "import redis; redis.Redis(host='127.0.0.1', port=6379).shutdown(nosave=True)" \
            >/dev/null 2>&1 || true
    fi
}

echo "== running the tests"
# -rfEs: failures, errors and every skip with its reason in the summary; tests/suite_policy.py writes
# the counts to $CONFERENCE_TEST_SUMMARY for the last line below (and under CI=true fails the run
# when a browser or media test was skipped).
summary=$(mktemp)
trap 'rm -f "$summary"; stop_redis' EXIT
set +e
CONFERENCE_TEST_SUMMARY="$summary" "$VENV/bin/python" -m pytest -q -rfEs --durations=30 "$@"
status=$?
set -e
if [ "$status" = 5 ]; then
    echo "!! no tests were collected"
    exit 1
fi
tests_passed=0 tests_failed=0 tests_errors=0 tests_skipped=0 tests_xfailed=0 tests_skipped_modules_ci=0
# shellcheck disable=SC1090  # written by tests/suite_policy.py: name=number lines only
[ -s "$summary" ] && . "$summary"
counts="$tests_passed passed, $tests_failed failed, $tests_errors errors, $tests_skipped skipped"
if [ "$status" = 0 ] && [ "$tests_skipped" = 0 ]; then
    echo "== all tests passed ($counts)"
elif [ "$status" = 0 ]; then
    echo "== the tests that ran passed, but $tests_skipped did not run ($counts; reasons under SKIPPED above)"
else
    echo "!! tests failed (pytest exit status $status; $counts)"
fi
exit "$status"
