#!/usr/bin/env bash
# Security checks for scopegate (called from .ci/run):
#   1. cargo deny: licenses, bans, sources (+ advisories when GitHub is reachable)
#   2. each fuzz target for FUZZ_SECONDS (default 20) under libFuzzer + ASan,
#      starting from the committed corpus and the kept regressions.
# Installs what it needs (cargo-deny, cargo-fuzz from crates.io; idempotent).
# cargo-fuzz needs nightly -Z flags: on the stable toolchain (the only one a
# fresh machine has) RUSTC_BOOTSTRAP=1 unlocks them.
# A crash fails the script; the input is in fuzz/artifacts/<target>/. Fix the
# bug, then copy the input into fuzz/regressions/<target>/ so that
# `cargo test --test fuzz_corpus` replays it on every run.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS="${FUZZ_SECONDS:-20}"
TARGETS=(normalize_match bearer jwt jwks introspection config upstream_response)

step() { printf '\n== %s\n' "$*"; }

ensure() { # ensure BINARY CRATE
    if ! command -v "$1" >/dev/null 2>&1; then
        step "installing $2 (crates.io, once)"
        cargo install --locked "$2"
    fi
}

ensure cargo-deny cargo-deny
ensure cargo-fuzz cargo-fuzz

step "cargo deny"
if timeout 60 cargo deny fetch db >/dev/null 2>&1; then
    cargo deny check
else
    echo "advisory database (GitHub) unreachable: checking licenses, bans, sources only"
    echo "(run 'cargo deny check' where GitHub is reachable; see deny.toml [advisories])"
    cargo deny check licenses bans sources
fi

step "fuzz: building ${#TARGETS[@]} targets"
export RUSTC_BOOTSTRAP=1
(cd fuzz && cargo fuzz build)

failed=()
for target in "${TARGETS[@]}"; do
    step "fuzz: $target for ${FUZZ_SECONDS}s"
    # New inputs go to a scratch dir (first corpus argument), so the
    # committed seed corpus stays as it is.
    scratch="$(mktemp -d)"
    seeds=("corpus/$target")
    [ -d "fuzz/regressions/$target" ] && seeds+=("regressions/$target")
    mkdir -p "fuzz/artifacts/$target"
    if ! (cd fuzz && cargo fuzz run "$target" "$scratch" "${seeds[@]}" -- \
        -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 -max_len=8192 \
        -timeout=10 -print_final_stats=1 2>&1 | tail -n 25); then
        failed+=("$target")
    fi
    rm -rf "$scratch"
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz targets that crashed: ${failed[*]} (inputs in fuzz/artifacts/)"
    echo "fuzz: $(( ${#TARGETS[@]} - ${#failed[@]} )) passed, ${#failed[@]} failed"
    exit 1
fi
echo "security: ${#TARGETS[@]} fuzz targets ran ${FUZZ_SECONDS}s each without a crash"
echo "fuzz: ${#TARGETS[@]} passed, 0 failed"
