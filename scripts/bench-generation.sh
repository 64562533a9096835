#!/usr/bin/env bash
# The generation benchmark of docs/benchmarks.md: the worker's candle engine (both weight
# formats) and llama.cpp (node-llama-cpp 3.22.1 prebuilt, 2 threads) on the same GGUF, prompt and
# 64 greedy tokens, one after the other on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
PROFILE=${PROFILE:-dev}
scripts/fetch-model.sh >/dev/null
# In the dev profile the examples come from the same build as the tests (a `-p` build would
# resolve features differently and rebuild candle).
if [ "$PROFILE" = dev ]; then
    cargo test -q --workspace --no-run 2>/dev/null
else
    cargo build -q --profile "$PROFILE" -p provider-worker --example generate --example throughput
fi
BIN=target/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")/examples/generate
if [ ! -d bench/llama-cpp/node_modules/node-llama-cpp ]; then
    echo "==> installing node-llama-cpp 3.22.1 (prebuilt llama.cpp binaries)"
    (cd bench/llama-cpp && npm install --ignore-scripts --no-audit --no-fund --loglevel=error)
fi
for format in as_stored fast_cpu; do
    echo "==> candle, $format"
    "$BIN" "$MODEL" "$format" | tail -2
done
echo "==> llama.cpp"
node bench/llama-cpp/generate.mjs "$MODEL"
