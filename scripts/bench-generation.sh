#!/usr/bin/env bash
# The generation benchmark of docs/benchmarks.md: the worker's engine and llama.cpp
# (node-llama-cpp 3.22.1 prebuilt, 2 threads) on the same GGUF, prompt and 64 greedy tokens,
# alternating for ROUNDS rounds (default 5; this machine's speed drifts by tens of per cent over
# minutes, so each round compares runs seconds apart), then the medians.
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
    cargo build -q --profile "$PROFILE" -p compute-inference --example generate --example throughput
fi
BIN=target/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")/examples/generate
if [ ! -d bench/llama-cpp/node_modules/node-llama-cpp ]; then
    echo "==> installing node-llama-cpp 3.22.1 (prebuilt llama.cpp binaries)"
    (cd bench/llama-cpp && npm install --ignore-scripts --no-audit --no-fund --loglevel=error)
fi
ROUNDS=${ROUNDS:-5}
ours=(); theirs=()
for round in $(seq "$ROUNDS"); do
    a=$("$BIN" "$MODEL" | tail -1)
    b=$(node bench/llama-cpp/generate.mjs "$MODEL" | tail -1)
    echo "round $round: $a"
    echo "round $round: $b"
    ours+=("$(grep -o 'decode [0-9.]*' <<<"$a" | cut -d' ' -f2)")
    theirs+=("$(grep -o 'decode [0-9.]*' <<<"$b" | cut -d' ' -f2)")
done
python3 - "${ours[*]}" "${theirs[*]}" <<'PY'
import statistics, sys
ours = [float(x) for x in sys.argv[1].split()]
theirs = [float(x) for x in sys.argv[2].split()]
ratios = [a / b for a, b in zip(ours, theirs)]
print(f"median decode: ours {statistics.median(ours):.1f} tokens/s, llama.cpp "
      f"{statistics.median(theirs):.1f} tokens/s; per-round ratio median "
      f"{statistics.median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f})")
PY
