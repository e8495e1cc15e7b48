#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 30), one after another,
# and exits non-zero if any of them crashed (a panic, a failed assertion, a timeout or an
# out-of-memory). Each run stops by itself: libFuzzer's -max_total_time, with `timeout` as
# a backstop.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]        e.g. scripts/fuzz.sh 600 frame_reader
#
# Needs the nightly toolchain and cargo-fuzz (scripts/test.sh installs both):
#   rustup toolchain install nightly --profile minimal && cargo install cargo-fuzz --locked
#
# The committed seeds (fuzz/corpus/<target>/) are read, never written: what libFuzzer
# finds goes to fuzz/target/corpus/<target>/, which later runs start from too. A crash
# leaves its input in fuzz/artifacts/<target>/; replay it with
#   cargo +nightly fuzz run -s none <target> fuzz/artifacts/<target>/crash-…
# The log of each run, with libFuzzer's final statistics, is
# fuzz/target/logs/<target>-<time>-<pid>.log (one per run, so runs may overlap).
#
# FUZZ_NICE=10 runs the fuzzers at a lower priority (a shared machine).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds=${1:-30}
shift || true
case "$seconds" in
    '' | *[!0-9]*)
        echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]" >&2
        exit 2
        ;;
esac

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "scripts/fuzz.sh: the nightly toolchain is missing: rustup toolchain install nightly --profile minimal" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "scripts/fuzz.sh: cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
    exit 1
fi

targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir fuzz)
fi

# No sanitizer: the code under test is safe Rust (a sanitizer would catch nothing the
# compiler has not) and ASan halves the speed. Overflow checks and debug assertions stay on
# (cargo-fuzz's default build).
build=(-s none --fuzz-dir fuzz)
nice -n "${FUZZ_NICE:-0}" cargo +nightly fuzz build "${build[@]}"

mkdir -p fuzz/target/logs
failed=()
summary=()
for t in "${targets[@]}"; do
    work=fuzz/target/corpus/$t
    mkdir -p "$work" "fuzz/artifacts/$t"
    args=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
    if [ -f "fuzz/dict/$t.dict" ]; then
        args+=(-dict="fuzz/dict/$t.dict")
    fi
    log=fuzz/target/logs/$t-$(date -u +%Y%m%dT%H%M%SZ)-$$.log
    echo "scripts/fuzz.sh: $t for ${seconds}s"
    status=0
    timeout --kill-after=10 $((seconds + 120)) \
        nice -n "${FUZZ_NICE:-0}" cargo +nightly fuzz run "${build[@]}" "$t" "$work" "fuzz/corpus/$t" -- "${args[@]}" \
        >"$log" 2>&1 || status=$?
    # libFuzzer's last status line ("#N DONE cov: … ft: … corp: …") and its final stats.
    done_line=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    summary+=("$t: status $status, ${execs:-?} executions, ${done_line:-no status line} ($log)")
    if [ "$status" -ne 0 ]; then
        failed+=("$t")
        echo "scripts/fuzz.sh: $t FAILED (exit $status); the end of $log:" >&2
        tail -n 40 "$log" >&2
    fi
done

printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "scripts/fuzz.sh: crashed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
