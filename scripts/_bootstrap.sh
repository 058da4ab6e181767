# Sourced by the scripts in this folder: makes .venv, installs mediafork (with the
# extras named in MEDIAFORK_EXTRAS, e.g. "test"; none for the demo) and builds the
# C/Cython extension in place. Safe to run repeatedly; a rebuild is cheap when
# nothing changed.
set -euo pipefail
EXTRAS="${MEDIAFORK_EXTRAS-}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MEDIAFORK_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[bootstrap] creating virtualenv in $VENV"
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
LOG="$VENV/bootstrap.log"
# Runs a step quietly; on failure shows its output and stops.
quietly() {
  if ! "$@" >>"$LOG" 2>&1; then
    echo "[bootstrap] failed: $*" >&2
    tail -n 40 "$LOG" >&2
    exit 1
  fi
}
# OpenSSL's headers give the extension its lean SRTP transform (setup.py); without
# them it still builds, and every SRTP suite goes through libsrtp alone.
if [ ! -e /usr/include/openssl/evp.h ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "[bootstrap] apt-get install libssl-dev"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libssl-dev) \
    >>"$LOG" 2>&1 || echo "[bootstrap] libssl-dev could not be installed: SRTP goes through libsrtp alone"
fi
# One stamp per set of extras: the demo's runtime-only install does not satisfy the tests.
stamp="$VENV/.mediafork-deps${EXTRAS:+-$EXTRAS}"
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
  echo "[bootstrap] installing build and ${EXTRAS:-runtime} dependencies (log: $LOG)"
  quietly python -m pip install --upgrade pip "setuptools>=77" wheel "Cython>=3.0" "numpy>=1.24"
  quietly python -m pip install --no-build-isolation -e "$ROOT${EXTRAS:+[$EXTRAS]}"
  touch "$stamp"
fi
echo "[bootstrap] building the extension"
(cd "$ROOT" && quietly python setup.py build_ext --inplace)

# Debian packages used by interoperability tests (sipp, tshark, clang for the
# fuzzer, sox, rtpengine for tests/rtpengine, kamailio to check the routing script
# in docs/integrations). Installed when we are root and they are missing; tests that
# need one skip with a reason when it could not be installed. rtpengine-daemon's
# service is never used: the tests start rtpengine by hand on loopback.
want_debs() {
  local missing=()
  command -v sipp >/dev/null || missing+=(sip-tester)
  command -v clang >/dev/null || missing+=(clang libclang-rt-14-dev)
  command -v tshark >/dev/null || missing+=(tshark)
  command -v sox >/dev/null || missing+=(sox)
  command -v rtpengine >/dev/null || missing+=(rtpengine-daemon)
  command -v kamailio >/dev/null || missing+=(kamailio kamailio-utils-modules)
  if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[bootstrap] apt-get install ${missing[*]}"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}") \
      >/tmp/mediafork-apt.log 2>&1 || echo "[bootstrap] apt-get failed (see /tmp/mediafork-apt.log); dependent tests will skip"
  fi
}
