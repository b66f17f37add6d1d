#!/usr/bin/env bash
# Where dialbackd's time and memory go, for BENCHMARKS.md (not part of `make bench`).
#
#   benches/profile.sh [OUTDIR]      (default /tmp/dialbackd-profile)
#   PROFILE_PARTS="cpu memory heap"  (the default: all three; name a subset to run only those)
#
# Builds dialbackd and the load generator with line tables (CARGO_PROFILE_RELEASE_DEBUG), in a
# separate target dir, then on 127.0.50.x (the addresses of benches/run.sh; do not run both at
# once):
#   1. perf record -g of dialbackd (pinned to core 1) during a 200-byte single-stream run
#   2. the RSS breakdown (/proc/PID/smaps: thread stacks, malloc arenas, heap, files) with
#      1,000 idle verified inbound streams, with glibc's default arenas, MALLOC_ARENA_MAX=1, and
#      with STARTTLS on both sides (the TLS mode of `make bench`)
#   3. heaptrack's peak heap consumers with 200 idle verified streams, plain and TLS
#   4. (PROFILE_PARTS=handshake, not in the default set) perf record -g of the dialback
#      handshake workloads, 50 and 500 in flight, with their latency figures
# Every process started here is stopped by PID on exit.
set -u
main() {
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
cd "$repo" || exit 2
out=${1:-/tmp/dialbackd-profile}
mkdir -p "$out"
TGT=${PROFILE_TARGET_DIR:-/tmp/dialbackd-prof-target}
IP_DB=127.0.50.1 IP_GEN=127.0.50.2 IP_DNS=127.0.50.53
log() { echo "profile: $*" >&2; }

PIDS=()
stop_pid() {
    local pid=$1 n=0
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null
    while kill -0 "$pid" 2>/dev/null && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return 0
}
cleanup() { # newest first: dialbackd before the heaptrack script that waits for it
    local i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[$i]}"; done
    PIDS=()
}
trap 'rc=$?; cleanup; exit $rc' EXIT
trap 'exit 130' INT TERM
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

export CARGO_PROFILE_RELEASE_DEBUG=line-tables-only CARGO_TARGET_DIR=$TGT
cargo build --release --locked >&2 || exit 1
LOAD=$(cargo bench --bench load --no-run --locked 2>&1 | sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -1)
[ -x "$LOAD" ] || { log "no load generator"; exit 1; }
BIN=$TGT/release/dialbackd

DNSMASQ=$(command -v dnsmasq || echo /usr/sbin/dnsmasq)
taskset -c 0 "$DNSMASQ" --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts --no-poll \
    --bind-interfaces --listen-address=$IP_DNS --port=53 --except-interface=nonexistent0 \
    --user=root --group=root --pid-file="$out/dnsmasq.pid" --local=/test/ \
    --address=/gen.test/$IP_GEN >"$out/dnsmasq.log" 2>&1 &
DNS_PID=$!
PIDS+=("$DNS_PID")
n=0 # dnsmasq writes its PID file once it listens
while [ ! -s "$out/dnsmasq.pid" ] && kill -0 $DNS_PID 2>/dev/null && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
[ -s "$out/dnsmasq.pid" ] || { cat "$out/dnsmasq.log" >&2; log "dnsmasq did not start"; exit 1; }
cat >"$out/dialbackd.toml" <<EOF
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
[limits]
connections = 16000
connections_per_ip = 16000
pending_verifications = 4096
EOF
# The TLS mode: a test certificate, STARTTLS required (the generator runs with --tls 1).
[ -f "$out/certs/sut.test.crt" ] || "$BIN" gen-cert sut.test --out "$out/certs" >&2 || exit 1
cat "$out/dialbackd.toml" - >"$out/dialbackd-tls.toml" <<EOF
[tls]
certificate = "$out/certs/sut.test.crt"
key = "$out/certs/sut.test.key"
require_encryption = true
EOF

SUT=""
CFG=$out/dialbackd.toml
start_db() { # extra env assignments...; the configuration is $CFG
    env RUST_LOG=warn "$@" taskset -c 1 "$BIN" --config "$CFG" >>"$out/dialbackd.log" 2>&1 &
    SUT=$!
    PIDS+=("$SUT")
    timeout 20 "$LOAD" waitport $IP_DB:5347 --timeout 15 >/dev/null || { log "dialbackd did not start"; exit 1; }
}
stop_db() { stop_pid "$SUT"; SUT=""; sleep 0.5; }

smaps() { # pid -> breakdown of RSS in KiB
    python3 - "$1" <<'PY'
import re, sys
pid = sys.argv[1]
cat = {}
cur = None
for line in open(f"/proc/{pid}/smaps"):
    m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$", line)
    if m:
        size = (int(m.group(2), 16) - int(m.group(1), 16)) // 1024
        perms, path = m.group(3), m.group(4).strip()
        if path == "[heap]":
            cur = "brk heap (main arena)"
        elif path.startswith("["):
            cur = "other " + path
        elif path:
            cur = "files (binary, libraries)"
        elif "rw" in perms and 200 <= size <= 300:
            cur = "thread stacks (256 KiB each reserved)"
        elif "rw" in perms and size >= 1024:
            cur = "malloc arenas / large anon"
        else:
            cur = "other anon"
        cat.setdefault(cur, [0, 0])[1] += 1
    elif line.startswith("Rss:") and cur:
        cat[cur][0] += int(line.split()[1])
total = sum(v[0] for v in cat.values())
for k, (rss, n) in sorted(cat.items(), key=lambda kv: -kv[1][0]):
    print(f"  {rss:>8} KiB  {n:>5} mappings  {k}")
print(f"  {total:>8} KiB  total")
PY
}

PARTS=" ${PROFILE_PARTS:-cpu memory heap} "
part() { [[ $PARTS == *" $1 "* ]]; }

# 1. CPU profile of the single-stream throughput run.
if ! part cpu; then
    log "skipping the CPU profile (PROFILE_PARTS)"
elif perf stat -e instructions true >/dev/null 2>&1; then
    start_db
    common=(--sut $IP_DB:5269 --component $IP_DB:5347 --sut-pid "$SUT" --gen $IP_GEN:5269)
    taskset -c 0 "$LOAD" tput "${common[@]}" --size 200 --n 20000 >/dev/null # warm
    perf record -F 2000 -g --call-graph dwarf,16384 -p "$SUT" -o "$out/perf-tput200.data" -- sleep 6 \
        >/dev/null 2>"$out/perf-record.log" &
    PERF=$!
    PIDS+=("$PERF")
    sleep 0.5
    timeout 60 taskset -c 0 "$LOAD" tput "${common[@]}" --size 200 --n 300000 | tee "$out/tput200.txt"
    wait "$PERF" 2>/dev/null
    perf report -i "$out/perf-tput200.data" --no-children --sort symbol --stdio 2>/dev/null \
        | grep -v '^$' | grep -E '^ +[0-9]' | head -40 >"$out/perf-tput200-self.txt"
    perf report -i "$out/perf-tput200.data" --children --sort symbol --stdio -g none 2>/dev/null \
        | grep -E '^ +[0-9]' | head -60 >"$out/perf-tput200-children.txt"
    log "perf: top self symbols"; head -25 "$out/perf-tput200-self.txt" >&2
    stop_db
else
    log "perf is not usable here: use valgrind --tool=callgrind on a short run instead"
fi

# 1b. CPU profile and latencies of dialback handshakes (50, then 500 in flight).
if part handshake; then
    start_db
    hs=(--sut $IP_DB:5269 --component $IP_DB:5347 --sut-pid "$SUT" --gen $IP_GEN:5269)
    taskset -c 0 "$LOAD" handshake "${hs[@]}" --domains 200 --concurrency 50 --prefix warm >/dev/null
    perf record -F 2000 -g -p "$SUT" -o "$out/perf-handshake.data" -- sleep 8 \
        >/dev/null 2>"$out/perf-record-hs.log" &
    PERF=$!
    PIDS+=("$PERF")
    sleep 0.5
    timeout 60 taskset -c 0 "$LOAD" handshake "${hs[@]}" --domains 1000 --concurrency 50 --prefix p50 \
        | tee "$out/handshake50.txt"
    timeout 60 taskset -c 0 "$LOAD" handshake "${hs[@]}" --domains 2000 --concurrency 500 --prefix p500 \
        | tee "$out/handshake500.txt"
    wait "$PERF" 2>/dev/null
    perf report -i "$out/perf-handshake.data" --no-children --sort symbol --stdio 2>/dev/null \
        | grep -E '^ +[0-9]' | head -40 >"$out/perf-handshake-self.txt"
    log "perf (handshakes): top self symbols"; head -25 "$out/perf-handshake-self.txt" >&2
    stop_db
fi

# 2. Memory breakdown with 1,000 idle verified inbound streams.
part memory && for variant in default arena1 tls; do
    CFG=$out/dialbackd.toml tls=()
    [ $variant = tls ] && { CFG=$out/dialbackd-tls.toml; tls=(--tls 1); }
    if [ $variant = arena1 ]; then start_db MALLOC_ARENA_MAX=1; else start_db; fi
    timeout 120 taskset -c 0 "$LOAD" memory --sut $IP_DB:5269 --sut-pid "$SUT" --gen $IP_GEN:5269 \
        "${tls[@]}" --steps 1000 --hold-secs 4 --timeout 90 >"$out/memory-$variant.txt" &
    G=$!
    PIDS+=("$G")
    n=0
    until grep -q RESULT "$out/memory-$variant.txt" 2>/dev/null || [ $n -ge 900 ]; do sleep 0.1; n=$((n + 1)); done
    {
        echo "== $variant: $(cat "$out/memory-$variant.txt")"
        echo "threads: $(grep Threads /proc/$SUT/status)"
        smaps "$SUT"
    } | tee "$out/smaps-$variant.txt" >&2
    wait "$G" 2>/dev/null
    stop_db
done
# 3. Heap by call site with 200 idle verified streams (heaptrack, if installed), plain and TLS.
heap_profile() { # plain|tls
    local mode=$1 cfg=$out/dialbackd.toml tls=() hp=$out/heaptrack-$1 DB="" HT todo lvl next p n
    [ "$mode" = tls ] && { cfg=$out/dialbackd-tls.toml; tls=(--tls 1); }
    rm -f "$hp".dialbackd.*
    # The tunable dialbackd would re-execute itself with (src/main.rs): no exec under heaptrack.
    GLIBC_TUNABLES=glibc.malloc.tcache_count=0 RUST_LOG=warn taskset -c 1 heaptrack -o "$hp.dialbackd" "$BIN" --config "$cfg" \
        >>"$out/heaptrack.log" 2>&1 &
    HT=$!
    PIDS+=("$HT")
    timeout 30 "$LOAD" waitport $IP_DB:5347 --timeout 25 >/dev/null || { log "dialbackd under heaptrack did not start"; exit 1; }
    # heaptrack (a shell script) runs dialbackd as a descendant: find it among HT's descendants.
    todo="$HT" lvl=0
    while [ -z "$DB" ] && [ -n "$todo" ] && [ $lvl -lt 4 ]; do
        next=""
        for p in $todo; do
            [ "$(readlink "/proc/$p/exe" 2>/dev/null)" = "$(readlink -f "$BIN")" ] && { DB=$p; break; }
            next="$next $(pgrep -P "$p" | tr '\n' ' ')"
        done
        todo=$next lvl=$((lvl + 1))
    done
    [ -n "$DB" ] || { log "cannot find dialbackd under heaptrack (pid $HT)"; exit 1; }
    PIDS+=("$DB")
    timeout 120 taskset -c 0 "$LOAD" memory --sut $IP_DB:5269 --sut-pid "$DB" --gen $IP_GEN:5269 \
        "${tls[@]}" --steps 200 --timeout 90 >"$hp-memory.txt"
    stop_pid "$DB"
    n=0; while kill -0 "$HT" 2>/dev/null && [ $n -lt 300 ]; do sleep 0.1; n=$((n + 1)); done
    heaptrack_print "$hp".dialbackd.* >"$hp.txt" 2>/dev/null
    echo "$mode: $(grep -E "^peak heap" "$hp.txt")" >&2
    awk '/PEAK MEMORY CONSUMERS/{f=1} /PEAK TEMPORARY|MOST TEMPORARY/{if(f)exit} f' "$hp.txt" \
        | grep -E "consumed over|^ +at src/" | head -40 >"$hp-peak.txt"
    log "heaptrack ($mode): peak consumers in $hp-peak.txt"
}
if part heap && command -v heaptrack >/dev/null 2>&1; then
    heap_profile plain
    heap_profile tls
fi
log "results in $out"
}
main "$@"
