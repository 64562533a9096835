#!/usr/bin/env bash
# Build every cargo-fuzz target in fuzz/ and run each for a bounded time.
#
#   scripts/fuzz.sh                       # every target, FUZZ_SECONDS each
#   scripts/fuzz.sh decode_claims admission
#   FUZZ_SECONDS=600 scripts/fuzz.sh parse_chat
#   FUZZ_SECONDS=0 scripts/fuzz.sh        # build, then only replay the seed corpus
#
# Environment:
#   FUZZ_SECONDS    time per target (default 20); 0 replays the corpus once and stops
#   FUZZ_TIMEOUT    seconds one input may take before libFuzzer reports it as a hang (default 10)
#   FUZZ_SANITIZER  cargo-fuzz's -s: none (default) or address (needs a nightly toolchain)
#   FUZZ_PROFILE    dev (default: opt-level 1, see fuzz/Cargo.toml; the cheaper cold build) or
#                   release (cargo-fuzz's default: opt-level 3, one codegen unit, faster inputs)
#   FUZZ_TOOLCHAIN  rustup toolchain (default: nightly if installed, else the pinned stable;
#                   with FUZZ_SANITIZER=none both work, cargo-fuzz then uses only stable flags)
#   CARGO_TARGET_DIR  if set (CI's cache), the fuzz build goes to $CARGO_TARGET_DIR/fuzz so it is
#                   incremental across runs; otherwise to fuzz/target
#
# Seeds are committed under fuzz/corpus/<target>/ (fuzz/examples/gen_corpus.rs writes them);
# what a run discovers goes to <target dir>/corpus/<target>/ and is reused by later runs, never
# into the committed seeds. A crash, panic, failed assertion or hang leaves its input under
# fuzz/artifacts/<target>/; replay it with `cargo fuzz run <target> <file>` (same -s and
# toolchain). Exits non-zero if any target failed.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m==> %s\033[0m\n' "$*"; }

FUZZ_SECONDS="${FUZZ_SECONDS:-20}"
FUZZ_TIMEOUT="${FUZZ_TIMEOUT:-10}"
FUZZ_SANITIZER="${FUZZ_SANITIZER:-none}"
FUZZ_PROFILE="${FUZZ_PROFILE:-dev}"
CARGO_FUZZ_VERSION=0.13.2
# Every target; keep in step with the [[bin]]s of fuzz/Cargo.toml.
ALL_TARGETS=(decode_signed_voucher decode_signed_receipt decode_claims decode_dispute parse_chat parse_embedding admission)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${ALL_TARGETS[@]}")

if [ -z "${FUZZ_TOOLCHAIN:-}" ]; then
    if rustup run nightly rustc --version >/dev/null 2>&1; then
        FUZZ_TOOLCHAIN=nightly
    elif [ "$FUZZ_SANITIZER" = none ]; then
        # Measured with nightly only; a bare stable rustc 1.99 call with these flags once crashed
        # in LLVM (ThinLTO bitcode writer), which cargo's `-C embed-bitcode=no` should avoid.
        FUZZ_TOOLCHAIN=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
        echo "no nightly toolchain: fuzzing with $FUZZ_TOOLCHAIN and stable flags only" >&2
    else
        echo "FUZZ_SANITIZER=$FUZZ_SANITIZER needs a nightly toolchain (rustup toolchain install nightly)" >&2
        exit 1
    fi
fi

if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    log "Installing cargo-fuzz $CARGO_FUZZ_VERSION (cargo install, about a minute)"
    start=$SECONDS
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --quiet
    echo "cargo-fuzz installed in $((SECONDS - start)) s"
fi

target_dir="${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR/fuzz}"
target_dir="$(realpath -m "${target_dir:-fuzz/target}")"
build_args=(--sanitizer "$FUZZ_SANITIZER" --target-dir "$target_dir")
[ "$FUZZ_PROFILE" = release ] || build_args+=(--dev)

log "Building ${#targets[@]} fuzz target(s) (toolchain $FUZZ_TOOLCHAIN, $FUZZ_PROFILE, sanitizer $FUZZ_SANITIZER)"
start=$SECONDS
if [ ${#targets[@]} -eq ${#ALL_TARGETS[@]} ]; then
    cargo "+$FUZZ_TOOLCHAIN" fuzz build "${build_args[@]}"
else
    for t in "${targets[@]}"; do cargo "+$FUZZ_TOOLCHAIN" fuzz build "${build_args[@]}" "$t"; done
fi
echo "fuzz targets built in $((SECONDS - start)) s"

passed=0
failed=()
for t in "${targets[@]}"; do
    work="$target_dir/corpus/$t"
    mkdir -p "$work" "fuzz/corpus/$t"
    args=(-timeout="$FUZZ_TIMEOUT" -print_final_stats=1)
    if [ "$FUZZ_SECONDS" = 0 ]; then args+=(-runs=0); else args+=(-max_total_time="$FUZZ_SECONDS"); fi
    case $t in parse_*) args+=(-dict=fuzz/dict/json.dict) ;; esac
    log "Fuzzing $t for ${FUZZ_SECONDS} s"
    out="$target_dir/fuzz-$t.log"
    start=$SECONDS
    if cargo "+$FUZZ_TOOLCHAIN" fuzz run "${build_args[@]}" "$t" "$work" "fuzz/corpus/$t" -- "${args[@]}" >"$out" 2>&1; then
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out" | tail -1)
        echo "$t: ok, ${execs:-?} inputs in $((SECONDS - start)) s, corpus $(find "$work" -type f | wc -l) files"
        passed=$((passed + 1))
    else
        tail -n 40 "$out"
        echo "$t: FAILED after $((SECONDS - start)) s (log $out; inputs under fuzz/artifacts/$t/)"
        failed+=("$t")
    fi
done

echo "fuzz: $passed passed, ${#failed[@]} failed"
[ ${#failed[@]} -eq 0 ] || { echo "failed: ${failed[*]}" >&2; exit 1; }
