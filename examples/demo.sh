#!/bin/sh
# `make demo`: federation in one command, on loopback. Starts the two example instances
# (etc/dialbackd.toml: a.test on 127.0.0.1, etc/peer.toml: b.test on 127.0.0.2), the example
# component examples/echo_component.rs as echo.b.test, and sends one message from echo.a.test
# to echo.b.test; the echo comes back across the same federation. Then it stops everything it
# started (by PID) and exits 0, or non-zero with the reason and the logs.
#
# Env: DIALBACKD_BIN (default target/release/dialbackd), ECHO_BIN (default
# target/release/examples/echo_component); `make demo` builds both.
set -u

cd "$(dirname "$0")/.." || exit 2
BIN=${DIALBACKD_BIN:-target/release/dialbackd}
ECHO=${ECHO_BIN:-target/release/examples/echo_component}
for f in "$BIN" "$ECHO"; do
    [ -x "$f" ] || { echo "demo: $f is missing: run 'make demo'" >&2; exit 2; }
done

# The component secrets are the ones the example configurations give.
secret_of() { sed -n 's/^secret = "\(.*\)"$/\1/p' "$1" | head -n 1; }
A_SECRET=$(secret_of etc/dialbackd.toml)
B_SECRET=$(secret_of etc/peer.toml)

work=$(mktemp -d /tmp/dialbackd-demo.XXXXXX) || exit 2
pids=""
ok=0

# Stop what we started, by PID: SIGTERM, up to 5 s, then SIGKILL.
cleanup() {
    for pid in $pids; do kill -TERM "$pid" 2>/dev/null; done
    for pid in $pids; do
        i=0
        while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    pids=""
    if [ "$ok" = 1 ]; then
        rm -rf "$work"
    else
        for log in "$work"/*.log; do
            [ -s "$log" ] || continue
            echo "--- last lines of $log" >&2
            tail -n 15 "$log" >&2
        done
        echo "demo: FAILED; logs kept in $work" >&2
    fi
}
trap 'cleanup' EXIT
trap 'exit 130' INT TERM

# Wait up to 10 s for `needle` in `log` while process `pid` lives.
wait_for() {
    pid=$1 log=$2 needle=$3 what=$4
    i=0
    while [ $i -lt 100 ]; do
        grep -q "$needle" "$log" 2>/dev/null && return 0
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "demo: $what exited before it was ready" >&2
            grep -q "in use" "$log" && echo "demo: (is 'make run' or 'make run-peer' still running?)" >&2
            return 1
        fi
        sleep 0.1
        i=$((i + 1))
    done
    echo "demo: $what not ready after 10 s" >&2
    return 1
}

start_daemon() { # name config
    RUST_LOG=info "$BIN" --config "$2" 2>"$work/$1.log" &
    pid=$!
    pids="$pids $pid"
    wait_for "$pid" "$work/$1.log" "listening on" "dialbackd ($2)" || exit 1
    echo "demo: $1 up (pid $pid): $(sed -n 's/.*listening on //p' "$work/$1.log" | head -n 1)"
}

start_daemon a.test etc/dialbackd.toml
start_daemon b.test etc/peer.toml

"$ECHO" serve 127.0.0.2:5347 echo.b.test "$B_SECRET" >"$work/echo.b.test.log" 2>&1 &
pid=$!
pids="$pids $pid"
wait_for "$pid" "$work/echo.b.test.log" "connected" "the echo component" || exit 1
echo "demo: echo component for echo.b.test connected to b.test (pid $pid)"

echo "demo: sending a message from echo.a.test (on a.test) to echo.b.test (on b.test):"
if timeout 30 "$ECHO" send 127.0.0.1:5347 echo.a.test "$A_SECRET" echo.b.test \
    "hello from a.test"; then
    echo "demo: the echo component on b.test said:"
    sed 's/^/    /' "$work/echo.b.test.log"
    echo "demo: how a.test and b.test verified each other (Server Dialback, XEP-0220):"
    grep -h -i "verified\|valid" "$work/a.test.log" "$work/b.test.log" | sed 's/^/    /' | head -n 8
    ok=1
    echo "demo: OK: the message crossed from a.test to b.test and its echo came back"
    exit 0
fi
echo "demo: no echo came back" >&2
exit 1
