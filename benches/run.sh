#!/usr/bin/env bash
# dialbackd vs Prosody, side by side, in one run on one machine: `make bench`.
#
# Builds the release binaries, starts dnsmasq and each server under test (SUT) in turn on
# loopback (127.0.50.x), drives them with the project's own load generator (benches/load.rs),
# and prints a markdown table (medians of BENCH_REPS runs) with ratios and targets.
#
#   127.0.50.53:53   dnsmasq: *.gen.test and gen.test -> 127.0.50.2, nothing else
#   127.0.50.1       dialbackd  sut.test  (s2s 5269, component 5347)   pinned to core 1
#   127.0.50.3       Prosody    sut.test  (s2s 5269, component 5347)   pinned to core 1
#   127.0.50.2:5269  the generator's gen servers; generator + dnsmasq pinned to core 0
#
# Env: BENCH_REPS (3), BENCH_WORKDIR (kept; default a fresh /tmp dir, removed on success),
#      BENCH_SUT ("dialbackd prosody"), BENCH_QUICK=1 (small counts, for a smoke test),
#      BENCH_PROSODY_NAGLE=0 (Prosody with TCP_NODELAY, like dialbackd; default: stock Prosody),
#      BENCH_N200, BENCH_N4K, BENCH_PINGS, BENCH_HS, BENCH_HS_CONC (50), BENCH_HS_BURST (2000
#      handshakes with BENCH_HS_BURST_CONC = 500 in flight), BENCH_LAT_SECS, BENCH_LAT_RATE,
#      BENCH_TLS=0 (skip the TLS pass: STARTTLS on both sides, self-signed certificates),
#      BENCH_BUDGET (900: seconds after which remaining workloads are skipped; each generator
#      run is also capped at 120 s).
# Needs root (dnsmasq on port 53) and Debian's prosody, lua-unbound, dnsmasq-base.
set -u
set -o pipefail
# The whole script is one function, read before anything runs: editing this file while a
# benchmark is running cannot change the running one.
main() {

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
cd "$repo" || exit 2

REPS=${BENCH_REPS:-3}
SUTS=${BENCH_SUT:-dialbackd prosody}
IP_DB=127.0.50.1
IP_GEN=127.0.50.2
IP_PR=127.0.50.3
IP_DNS=127.0.50.53
GEN_CORE=0
SUT_CORE=1
[ "$(nproc)" -lt 2 ] && SUT_CORE=0

if [ "${BENCH_QUICK:-0}" = 1 ]; then
    N200=5000; N4K=1000; LAT_SECS=1; PINGS=3000; HS=100; HS_BURST=500; MEM_STEPS=10,50
else
    N200=${BENCH_N200:-150000}; N4K=${BENCH_N4K:-30000}; LAT_SECS=${BENCH_LAT_SECS:-5}
    PINGS=${BENCH_PINGS:-100000}; HS=${BENCH_HS:-1000}; HS_BURST=${BENCH_HS_BURST:-2000}
    MEM_STEPS=100,1000
fi
HS_CONC=${BENCH_HS_CONC:-50}
HS_BURST_CONC=${BENCH_HS_BURST_CONC:-500}
MODES=plain
[ "${BENCH_TLS:-1}" = 0 ] || MODES="plain tls"
LAT_RATE=${BENCH_LAT_RATE:-2000}

log() { echo "bench: $*" >&2; }

missing=""
for t in prosody dnsmasq taskset timeout strip python3; do
    command -v "$t" >/dev/null 2>&1 || [ -x "/usr/sbin/$t" ] || missing="$missing $t"
done
[ -n "$(find /usr/lib -name 'lunbound*.so' 2>/dev/null | head -1)" ] || missing="$missing lua-unbound"
if [ -n "$missing" ]; then
    log "missing:$missing"
    log "apt-get install -y --no-install-recommends prosody lua-unbound dnsmasq-base"
    exit 2
fi
DNSMASQ=$(command -v dnsmasq || echo /usr/sbin/dnsmasq)

if [ -n "${BENCH_WORKDIR:-}" ]; then
    work=$BENCH_WORKDIR; mkdir -p "$work"; keep=1
else
    work=$(mktemp -d /tmp/dialbackd-bench.XXXXXX); keep=0
fi
results=$work/results.txt
: >"$results"

# ---- process bookkeeping: everything we start is stopped by PID, also on failure ----------
PIDS=()
stop_pid() { # pid [timeout-tenths]
    local pid=$1 n=0 max=${2:-100}
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null
    while kill -0 "$pid" 2>/dev/null && [ $n -lt "$max" ]; do sleep 0.1; n=$((n + 1)); done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid did not stop: SIGKILL"
        kill -KILL "$pid" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null
    return 0
}
cleanup() {
    local p
    for p in "${PIDS[@]}"; do stop_pid "$p" 50; done
    PIDS=()
}
trap 'rc=$?; cleanup; exit $rc' EXIT
trap 'exit 130' INT TERM

forget() { local p keep=(); for p in "${PIDS[@]}"; do [ "$p" != "$1" ] && keep+=("$p"); done; PIDS=("${keep[@]}"); }

port_open() { timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }
for a in "$IP_DB 5269" "$IP_DB 5347" "$IP_PR 5269" "$IP_PR 5347" "$IP_GEN 5269" "$IP_DNS 53"; do
    # shellcheck disable=SC2086
    if port_open $a; then log "something already listens on ${a/ /:} (stop it first)"; exit 2; fi
done

ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
log "open files limit: $(ulimit -n); work dir: $work"

# ---- build ------------------------------------------------------------------------------------
t_build=$(date +%s)
cargo build --release --locked >&2 || exit 1
LOAD=$(cargo bench --bench load --no-run --locked 2>&1 | tee "$work/build-load.log" \
    | sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -1)
[ -x "$LOAD" ] || { cat "$work/build-load.log" >&2; log "could not build the load generator"; exit 1; }
log "built in $(( $(date +%s) - t_build )) s; generator: $LOAD"
BIN=$repo/target/release/dialbackd

BUDGET=${BENCH_BUDGET:-900}
SECONDS=0
gen() { # workload args...: run the generator pinned to its core, bounded, output to results
    local out
    if [ "$SECONDS" -gt "$BUDGET" ]; then
        log "over the time budget (${BUDGET} s): skipping '$1'"; return 1
    fi
    out=$(timeout --signal=TERM --kill-after=5 120 taskset -c "${CORE:-$GEN_CORE}" "$LOAD" "$@" 2>>"$work/gen.stderr")
    local rc=$?
    if [ $rc -ne 0 ] || [ -z "$out" ]; then
        log "generator '$*' failed (rc $rc); last stderr:"; tail -5 "$work/gen.stderr" >&2
        return 1
    fi
    echo "$out"
}
record() { # sut tag  (reads RESULT lines on stdin)
    local line
    while IFS= read -r line; do
        case $line in RESULT*) echo "$1 $2 ${line#RESULT }" >>"$results"; log "$1 $2: ${line#RESULT }";; esac
    done
}

# ---- DNS ----------------------------------------------------------------------------------------
mkdir -p "$work/dns"
taskset -c $GEN_CORE "$DNSMASQ" --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts \
    --no-poll --bind-interfaces --listen-address=$IP_DNS --port=53 \
    --except-interface=nonexistent0 --user=root --group=root --pid-file="$work/dns/dnsmasq.pid" \
    --local=/test/ --address=/gen.test/$IP_GEN --cache-size=10000 \
    >"$work/dns/dnsmasq.log" 2>&1 &
DNS_PID=$!
PIDS+=("$DNS_PID")
echo "nameserver $IP_DNS" >"$work/dns/resolv.conf"
sleep 0.3
kill -0 $DNS_PID 2>/dev/null || { cat "$work/dns/dnsmasq.log" >&2; log "dnsmasq did not start"; exit 1; }

# ---- the servers under test ---------------------------------------------------------------------
write_dialbackd_cfg() { # file plain|tls
    local file=$1 mode=$2
    cat >"$file" <<EOF
# generated by benches/run.sh
domains = ["sut.test"]
dialback_secret = "bench-sut-secret"

[listen]
s2s = ["$IP_DB:5269"]
component = "$IP_DB:5347"

[[component]]
domain = "sink.sut.test"
secret = "sinksecret"

[dns]
nameservers = ["$IP_DNS:53"]
allow_networks = ["127.0.0.0/8"]

[timeouts]
negotiation = 60
dialback = 30

[limits]
connections = 16000
connections_per_ip = 16000
pending_verifications = 4096
EOF
    # TLS mode: STARTTLS offered and required on every s2s stream, peers' certificates
    # accepted as they come (the default verify = "dialback": identity by dialback).
    [ "$mode" = tls ] && cat >>"$file" <<EOF

[tls]
certificate = "$work/certs/sut.test.crt"
key = "$work/certs/sut.test.key"
require_encryption = true
EOF
    return 0
}

write_prosody_cfg() { # file plain|tls
    local file=$1 mode=$2 modules='"dialback", "ping"' enc=false tls_cfg=""
    mkdir -p "$work/prosody/data"
    # Stock Prosody keeps Nagle's algorithm on (net.server_epoll: nagle = true), dialbackd sets
    # TCP_NODELAY; BENCH_PROSODY_NAGLE=0 turns Nagle off in Prosody too.
    PROSODY_EXTRA=""
    [ "${BENCH_PROSODY_NAGLE:-1}" = 0 ] && PROSODY_EXTRA='network_settings = { nagle = false }'
    # TLS mode: mod_tls, STARTTLS required on s2s, our test certificate; s2s_secure_auth stays
    # false, so a certificate that does not verify falls back to dialback (as in dialbackd).
    if [ "$mode" = tls ]; then
        modules='"dialback", "ping", "tls"'; enc=true
        tls_cfg="certificates = \"$work/certs\"
ssl = { certificate = \"$work/certs/sut.test.crt\"; key = \"$work/certs/sut.test.key\"; }"
    fi
    cat >"$file" <<EOF
-- generated by benches/run.sh
run_as_root = true
daemonize = false
pidfile = "$work/prosody/prosody.pid"
data_path = "$work/prosody/data"
plugin_paths = {}
interfaces = { "$IP_PR" }
local_interfaces = { "$IP_PR" }
s2s_interfaces = { "$IP_PR" }
c2s_interfaces = { "$IP_PR" }
component_interfaces = { "$IP_PR" }
s2s_ports = { 5269 }
c2s_ports = { 5222 }
component_ports = { 5347 }
use_ipv6 = false
modules_enabled = { $modules }
modules_disabled = { "offline" }
authentication = "internal_hashed"
storage = "internal"
log = { { levels = { min = "warn" }, to = "file", filename = "$work/prosody/prosody.log" } }
dialback_secret = "bench-sut-secret"
s2s_secure_auth = false
s2s_require_encryption = $enc
s2s_timeout = 60
$PROSODY_EXTRA
$tls_cfg
unbound = {
  resolvconf = "$work/dns/resolv.conf";
  hoststxt = false;
  options = { ["local-zone"] = "test. transparent" };
}
VirtualHost "sut.test"
Component "sink.sut.test"
  component_secret = "sinksecret"
EOF
}

SUT_PID=""
start_sut() { # name plain|tls -> SUT_PID, SUT_IP; records cold start
    local name=$1 mode=$2 t0 tag=start sfx=""
    [ "$mode" = tls ] && { tag=tls_start; sfx=-tls; }
    t0=$(date +%s%N)
    case $name in
    dialbackd)
        SUT_IP=$IP_DB
        RUST_LOG=warn taskset -c $SUT_CORE "$BIN" --config "$work/dialbackd$sfx.toml" \
            >>"$work/dialbackd.log" 2>&1 &
        ;;
    prosody)
        SUT_IP=$IP_PR
        taskset -c $SUT_CORE prosody -F --config "$work/prosody/prosody$sfx.cfg.lua" \
            >>"$work/prosody/stdout.log" 2>&1 &
        ;;
    esac
    SUT_PID=$!
    PIDS+=("$SUT_PID")
    local out
    out=$(timeout 35 taskset -c $GEN_CORE "$LOAD" waitport "$SUT_IP:5269" --since-ns "$t0" --timeout 30) || {
        log "$name did not start listening"; tail -20 "$work/dialbackd.log" "$work/prosody/prosody.log" 2>/dev/null >&2; return 1; }
    echo "$out" | record "$name" "$tag"
    # The component port too (Prosody opens its ports one by one).
    timeout 35 "$LOAD" waitport "$SUT_IP:5347" --timeout 30 >/dev/null || return 1
    sleep 0.5
}
stop_sut() {
    [ -n "$SUT_PID" ] || return 0
    if ! kill -0 "$SUT_PID" 2>/dev/null; then log "the SUT (pid $SUT_PID) had exited by itself!"; fi
    stop_pid "$SUT_PID" 150
    forget "$SUT_PID"
    SUT_PID=""
    sleep 0.5
}

# Test certificates for the TLS pass (self-signed, made now; the generator makes its own).
if [[ " $MODES " == *" tls "* ]] && [ ! -f "$work/certs/sut.test.crt" ]; then
    "$BIN" gen-cert sut.test --out "$work/certs" >&2 || exit 1
fi
write_dialbackd_cfg "$work/dialbackd.toml" plain
write_dialbackd_cfg "$work/dialbackd-tls.toml" tls
write_prosody_cfg "$work/prosody/prosody.cfg.lua" plain
write_prosody_cfg "$work/prosody/prosody-tls.cfg.lua" tls
"$BIN" --check-config "$work/dialbackd.toml" >&2 || exit 1
if [[ " $MODES " == *" tls "* ]]; then
    "$BIN" --check-config "$work/dialbackd-tls.toml" >&2 || exit 1
fi

plain_runs() { # sut: every plain-TCP workload, REPS times, on the running SUT
    local sut=$1 r
    for r in $(seq 1 "$REPS"); do
        log "$sut: run $r/$REPS"
        if [ "$sut" = dialbackd ]; then
            # The raw parse baseline, on the SUT's core while it idles, right before the
            # end-to-end run it is compared with (same conditions on a shared machine).
            CORE=$SUT_CORE gen parse --size 200 --n 60000 | record xml parse
        fi
        gen tput "${common[@]}" --size 200 --n "$N200" | record "$sut" tput200
        gen tput "${common[@]}" --size 4096 --n "$N4K" | record "$sut" tput4k
        gen latency "${common[@]}" --size 200 --rate "$LAT_RATE" --secs "$LAT_SECS" | record "$sut" latency
        gen ping "${common[@]}" --window 500 --n "$PINGS" | record "$sut" ping
        gen handshake "${common[@]}" --domains "$HS" --concurrency "$HS_CONC" --prefix "r${r}h" | record "$sut" handshake
        gen handshake "${common[@]}" --domains "$HS_BURST" --concurrency "$HS_BURST_CONC" --prefix "r${r}b" \
            --timeout 100 | record "$sut" handshake_burst
    done
}
tls_runs() { # sut: the TLS workloads (one-way 200 B, pings, handshakes), REPS times
    local sut=$1 r
    for r in $(seq 1 "$REPS"); do
        log "$sut: TLS run $r/$REPS"
        gen tput "${common[@]}" --size 200 --n "$N200" | record "$sut" tls_tput200
        gen ping "${common[@]}" --window 500 --n "$PINGS" | record "$sut" tls_ping
        gen handshake "${common[@]}" --domains "$HS" --concurrency "$HS_CONC" --prefix "r${r}t" | record "$sut" tls_handshake
    done
}

t_start=$(date +%s)
for sut in $SUTS; do
    for mode in $MODES; do
        log "==== $sut ($mode) ===="
        pre=""; tls_opt=()
        [ "$mode" = tls ] && { pre=tls_; tls_opt=(--tls 1); }
        start_sut "$sut" "$mode" || exit 1
        common=(--sut "$SUT_IP:5269" --component "$SUT_IP:5347" --sut-pid "$SUT_PID" --gen "$IP_GEN:5269" "${tls_opt[@]}")
        if [ "$mode" = tls ]; then tls_runs "$sut"; else plain_runs "$sut"; fi
        stop_sut
        # Memory on a fresh process, so earlier workloads do not inflate the baseline.
        start_sut "$sut" "$mode" || exit 1
        gen memory --sut "$SUT_IP:5269" --sut-pid "$SUT_PID" --gen "$IP_GEN:5269" "${tls_opt[@]}" \
            --steps "$MEM_STEPS" --timeout 100 | record "$sut" "${pre}memory"
        stop_sut
    done
done
gen selftest --size 200 --n 1000000 | record gen selftest200
gen selftest --size 4096 --n 100000 | record gen selftest4k
strip -o "$work/dialbackd.stripped" "$BIN"
echo "RESULT binary bytes=$(stat -c %s "$work/dialbackd.stripped") unstripped=$(stat -c %s "$BIN")" | record dialbackd binary
log "workloads took $(( $(date +%s) - t_start )) s"

cleanup
grep -c . "$results" >/dev/null || { log "no results"; exit 1; }
python3 "$here/table.py" "$results" "$REPS" "$MODES"
rc=$?
if [ $rc -eq 0 ] && [ $keep = 0 ]; then
    cp "$results" "$repo/target/bench-results.txt" 2>/dev/null
    rm -rf "$work"
else
    log "kept $work"
fi
exit $rc
}
main "$@"
exit $?
