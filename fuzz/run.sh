#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for SECONDS each and prints, per target, the executions and whether
# it found a crash (a panic, an abort, a timeout or running out of memory; the input is kept in fuzz/artifacts/).
#
#   fuzz/run.sh SECONDS [TARGET...]      targets: config template router verify jwt
#
# Installs what it needs: the nightly toolchain (rustup) and cargo-fuzz. Builds without a sanitizer by default
# (Sluice and its parsers are safe Rust: what the fuzzer looks for is a panic, which needs none, and a build
# without one runs several times faster); SANITIZER=address builds with ASan. Seeds come from fuzz/seeds/TARGET;
# what the fuzzer learns goes to fuzz/corpus/TARGET (not committed). Exits 1 if any target crashed.
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH=${1:?usage: fuzz/run.sh SECONDS [TARGET...]}
shift
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(config template router verify jwt)
SANITIZER=${SANITIZER:-none}
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cargo +nightly fuzz build -O --sanitizer "$SANITIZER" 2>&1 | tail -n 1
failed=0
for target in "${TARGETS[@]}"; do
    mkdir -p "corpus/$target"
    log=$(mktemp)
    if cargo +nightly fuzz run -O --sanitizer "$SANITIZER" "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$SECONDS_EACH" -print_final_stats=1 -rss_limit_mb=2048 >"$log" 2>&1; then
        verdict="no crash"
    else
        verdict="CRASH (see fuzz/artifacts/$target and $log)"
        failed=1
    fi
    runs=$(awk '/stat::number_of_executed_units:/ {print $2}' "$log" | tail -n 1)
    printf '%-9s %12s executions in %ss  %s\n' "$target" "${runs:-?}" "$SECONDS_EACH" "$verdict"
    [ "$failed" = 1 ] || rm -f "$log"
done
exit "$failed"
