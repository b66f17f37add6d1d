#!/bin/sh
# Real-Prosody interop suite for dialbackd (see tests/interop/README.md).
#
#   tests/interop/run.sh [extra pytest args]      e.g.  -k plain   or   -k "test_4 and tls"
#
# Env: DIALBACKD_BIN (default target/debug/dialbackd), INTEROP_TIMEOUT (wall clock bound in
# seconds, default 300), INTEROP_WORKDIR (kept; default a fresh /tmp dir, removed on success).
# Needs root (dnsmasq binds port 53 on 127.0.10.53) and Debian's prosody, lua-unbound,
# dnsmasq-base, python3-slixmpp, python3-pytest.
set -u

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$repo" || exit 2

PY=/usr/bin/python3   # Debian's python: python3-slixmpp is installed for it, not for pyenv's
missing=""
for tool in prosody prosodyctl dnsmasq openssl timeout biboumi; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing="$missing $tool"
done
"$PY" -c 'import slixmpp, pytest' 2>/dev/null || missing="$missing python3-slixmpp/python3-pytest"
[ -e /usr/lib/x86_64-linux-gnu/lua/5.4/lunbound.so ] || [ -n "$(find /usr/lib -name 'lunbound*.so' 2>/dev/null | head -1)" ] \
    || missing="$missing lua-unbound"
if [ -n "$missing" ]; then
    echo "interop: missing:$missing" >&2
    echo "interop: tests/setup.sh (make setup) installs what the suite needs, as root" >&2
    exit 2
fi

if [ -n "${INTEROP_WORKDIR:-}" ]; then
    work=$INTEROP_WORKDIR; keep=1
else
    work=$(mktemp -d /tmp/dialbackd-interop.XXXXXX); keep=0
fi
export INTEROP_WORKDIR="$work"
export PYTHONDONTWRITEBYTECODE=1

# Stop, by PID, anything the suite started that is still alive (only if pytest itself was killed
# hard). A pid file is trusted only if that process's command line mentions our work dir.
cleanup() {
    for f in "$work"/pids/*.pid; do
        [ -e "$f" ] || continue
        pid=$(cat "$f")
        if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$work"; then
            echo "interop: stopping leftover pid $pid ($(basename "$f"))" >&2
            kill -TERM "$pid" 2>/dev/null
            i=0
            while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
            kill -KILL "$pid" 2>/dev/null
        fi
        rm -f "$f"
    done
}
trap 'cleanup; exit 130' INT TERM

start=$(date +%s)
timeout --signal=TERM --kill-after=20 "${INTEROP_TIMEOUT:-300}" \
    "$PY" -m pytest -p no:cacheprovider -x -rs -v "$here" "$@"
rc=$?
cleanup
echo "interop: finished in $(( $(date +%s) - start ))s with status $rc; work dir $work" >&2
[ "$rc" = 124 ] && echo "interop: TIMED OUT after ${INTEROP_TIMEOUT:-300}s" >&2
if [ "$rc" = 0 ] && [ "$keep" = 0 ]; then
    rm -rf "$work"
fi
exit "$rc"
