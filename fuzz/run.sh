#!/usr/bin/env bash
# `make fuzz`: builds every cargo-fuzz target (no sanitizer: `-s none` works on the stable
# toolchain) and runs each for FUZZ_SECONDS (default 60), one after another, then prints the
# runs and findings of each. Exits non-zero when any target found a crash, timeout or OOM.
#
# Usage: fuzz/run.sh [TARGET...]   (default: every target in fuzz/Cargo.toml)
#
# Corpus: each run starts from a temporary copy of the committed seeds in fuzz/corpus/TARGET/
# (deleted afterwards), so runs never grow the committed corpus; set FUZZ_KEEP_CORPUS=DIR to
# keep what a run found in DIR/TARGET/ (e.g. to minimise it with `cargo fuzz cmin` and
# promote a few inputs to seeds by hand). Findings go to fuzz/artifacts/TARGET/ (ignored by
# git); keep each one as a regression input in fuzz/regressions/TARGET/ once fixed (replayed
# by tests/fuzz_regressions.rs under `cargo test`).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-60}"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
    exit 2
fi
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

start=$(date +%s)
echo "== cargo fuzz build -s none (${#targets[@]} targets)"
cargo fuzz build -s none
echo "== built in $(( $(date +%s) - start )) s; running each target for ${seconds} s"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
stamp="$work/stamp"
touch "$stamp"
failed=0
summary=()
for t in "${targets[@]}"; do
    corpus="$work/corpus-$t"
    mkdir -p "$corpus" "fuzz/artifacts/$t"
    if [ -d "fuzz/corpus/$t" ]; then cp -r "fuzz/corpus/$t/." "$corpus/"; fi
    log="$work/$t.log"
    rc=0
    cargo fuzz run -s none "$t" "$corpus" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$t/" >"$log" 2>&1 || rc=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    found=$(find "fuzz/artifacts/$t" -type f -newer "$stamp" | sort)
    if [ -n "${FUZZ_KEEP_CORPUS:-}" ]; then
        mkdir -p "$FUZZ_KEEP_CORPUS/$t" && cp -r "$corpus/." "$FUZZ_KEEP_CORPUS/$t/"
    fi
    if [ "$rc" -ne 0 ] || [ -n "$found" ]; then
        failed=1
        summary+=("$(printf '%-22s runs %-12s FAILED (exit %s)' "$t" "${runs:-?}" "$rc")")
        for f in $found; do summary+=("    finding: $f"); done
        echo "== $t failed; last lines of its log:"
        grep -A2 -m3 'panicked at' "$log" || grep -v '^#' "$log" | tail -25
    else
        summary+=("$(printf '%-22s runs %-12s no findings' "$t" "${runs:-?}")")
    fi
    echo "${summary[-1]}"
done
echo "== make fuzz: ${seconds} s per target, $(( $(date +%s) - start )) s in all"
printf '%s\n' "${summary[@]}"
exit "$failed"
