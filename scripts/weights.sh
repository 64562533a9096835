#!/usr/bin/env bash
# Run pallet-compute's benchmarks on this machine with the node's `benchmark pallet` command and
# write pallets/compute/src/weights.rs. Needs the node built with `--features runtime-benchmarks`
# and the runtime wasm built with the same feature (`make weights` does both).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
WASM=$(ls -t "$TARGET"/debug/wbuild/compute-runtime/compute_runtime*.wasm | head -1)
"$TARGET"/debug/compute-node benchmark pallet \
    --runtime "$WASM" \
    --genesis-builder=runtime --genesis-builder-preset=development \
    --pallet pallet_compute --extrinsic '*' \
    --steps "${STEPS:-50}" --repeat "${REPEAT:-20}" \
    --wasm-execution compiled \
    --heap-pages 4096 \
    --template pallets/compute/bench/weight-template.hbs \
    --output pallets/compute/src/weights.rs
cargo fmt -p pallet-compute
