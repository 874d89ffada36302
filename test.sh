#!/usr/bin/env bash
# Every test of Blitzen in one command: the Rust unit and end-to-end tests (the real binaries on
# loopback, the dashboard in a real browser, network namespaces when run as root), the Python
# package's pytest suite on a real CPython, and the doc tests.
#
#   ./test.sh              everything
#   ./test.sh FILTER...    only the Rust tests that cargo-nextest's FILTERs select, e.g.
#                          `./test.sh cluster` or `./test.sh -E 'binary(faults)'`
#
# First it installs what a fresh machine lacks, saying on one line what and why: cargo-nextest
# (from crates.io), Chromium and ChromeDriver, Slurm when run as root (Debian's packages), a
# virtual environment with python/tests/requirements.txt (PyPI). Where it cannot (not root, no network), it stops before
# the build with one line and the command to run by hand. Every test binary runs even when one
# fails; the run ends with the ten slowest tests, the failing ones by name, and the line
# `tests: N passed, M failed, K skipped`.
#
# BLITZEN_PYTHON names the interpreter for the virtual environment (default python3); CHROMIUM
# and CHROMEDRIVER name a browser and its driver elsewhere than /usr/bin.
set -euo pipefail
shopt -s inherit_errexit 2>/dev/null || true
cd "$(dirname "$0")"
started=$SECONDS

say() { printf 'test.sh: %s\n' "$*" >&2; }

# Stops before the build: what is missing and why, and the command that installs it by hand.
cannot() {
  say "$1; run this by hand, then ./test.sh again: $2"
  exit 2
}

# The prefix that runs a command as root: nothing for root, `sudo` where it needs no password.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    return 0
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    echo sudo
  else
    return 1
  fi
}

# apt_install WHY PACKAGE...: installs Debian packages, or stops saying how to.
apt_install() {
  local why=$1
  shift
  local sudo="sudo "
  [ "$(id -u)" -ne 0 ] || sudo=""
  local by_hand="${sudo}apt-get update && ${sudo}apt-get install -y $*"
  command -v apt-get >/dev/null 2>&1 \
    || cannot "$why, and this machine has no apt-get to install $* with" "$by_hand"
  local root
  root=$(as_root) || cannot "$why, and installing $* needs root" "$by_hand"
  say "installing $* from Debian's packages: $why"
  local log
  log=$(mktemp)
  if ! { $root env DEBIAN_FRONTEND=noninteractive apt-get update -q \
    && $root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"; } >"$log" 2>&1; then
    tail -n 5 "$log" | sed 's/^/  /' >&2
    rm -f "$log"
    cannot "apt-get could not install $* (above, its last words)" "$by_hand"
  fi
  rm -f "$log"
}

# --- what the tests need ------------------------------------------------------------------

if ! cargo nextest --version >/dev/null 2>&1; then
  say "installing cargo-nextest from crates.io: it runs every test binary even when one fails, and times each test"
  cargo install --locked --quiet cargo-nextest \
    || cannot "cargo could not install cargo-nextest" "cargo install --locked cargo-nextest"
fi

chromium=${CHROMIUM:-/usr/bin/chromium}
chromedriver=${CHROMEDRIVER:-/usr/bin/chromedriver}
if [ ! -x "$chromium" ] || [ ! -x "$chromedriver" ]; then
  apt_install "the dashboard's tests drive a real browser" chromium chromium-driver
fi

# The autoscaler's tests start a one-host Slurm cluster of their own, which needs root: without
# it they are skipped (each saying why), and nothing is installed.
if [ "$(id -u)" -eq 0 ] && [ ! -x /usr/sbin/slurmctld ] && ! command -v slurmctld >/dev/null 2>&1; then
  apt_install "the autoscaler's tests run a one-host Slurm cluster of their own" slurm-wlm
fi

python=${BLITZEN_PYTHON:-python3}
if ! command -v "$python" >/dev/null 2>&1; then
  apt_install "the Python package's tests run on a real CPython" python3 python3-venv
fi
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 9))' \
  || cannot "the Python package needs Python 3.9 or newer, and $python is $("$python" --version 2>&1)" \
    "BLITZEN_PYTHON=/path/to/python3.9-or-newer ./test.sh"

target=$("$python" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])' \
  < <(cargo metadata --format-version 1 --no-deps --locked))
venv=$target/tmp/python-venv
requirements=python/tests/requirements.txt
if ! cmp -s "$requirements" "$venv/requirements.txt" 2>/dev/null; then
  say "installing $(grep -v '^#' "$requirements" | tr '\n' ' ')from PyPI into $venv: the Python package's tests import them"
  rm -rf "$venv"
  if ! "$python" -m venv "$venv" >/dev/null 2>&1; then
    # Debian's python3 leaves the venv module's pip out (package python3-venv).
    apt_install "the Python package's tests run in a virtual environment" python3-venv
    "$python" -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements" \
    || cannot "pip could not install $requirements" "$venv/bin/python -m pip install -r $requirements"
  cp "$requirements" "$venv/requirements.txt"
fi

# --- the build, then every test -----------------------------------------------------------

reports=$target/nextest
mkdir -p "$reports"
pytest_report=$reports/pytest.xml
doctest_log=$reports/doctests.log
rm -f "$reports/default/junit.xml" "$pytest_report" "$doctest_log"

# cargo-nextest builds every test, the binaries they start and the Python extension in one
# `cargo test --no-run`, then runs them.
status=0
BLITZEN_TEST_PYTHON=$venv/bin/python BLITZEN_PYTEST_JUNIT=$pytest_report \
  cargo nextest run --workspace --locked --no-fail-fast "$@" || status=$?

skipped=()
if [ $# -eq 0 ]; then
  if cargo test --workspace --doc --locked >"$doctest_log" 2>&1; then
    grep -E '^test .* \.\.\. ' "$doctest_log" || true
  else
    cat "$doctest_log"
    status=1
  fi
  # Tests their binary marks ignored on this machine (each says why when it starts).
  mapfile -t skipped < <(cargo nextest list --workspace --locked --run-ignored only \
    --message-format oneline 2>/dev/null)
fi

say "finished in $((SECONDS - started)) s"
if [ $# -eq 0 ] && [ ! -s "$reports/default/junit.xml" ]; then
  # The count below is then the doctests' alone.
  say "the tests did not build, or did not run: see cargo's output above"
  status=1
fi
summary=(--junit "$reports/default/junit.xml" --junit "$pytest_report" --doctests "$doctest_log")
for name in "${skipped[@]}"; do summary+=(--skipped "$name"); done
"$python" tests/summary.py "${summary[@]}" || status=1
exit "$status"
