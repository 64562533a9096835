#!/usr/bin/env bash
# The marketplace web app in a real browser: a dev node, a compute-worker (//Bob) serving
# SmolLM2-135M-Instruct and all-MiniLM-L6-v2, the app served by web/server.mjs, and headless
# Chromium (Debian's /usr/bin/chromium) driven by puppeteer-core (web/test/browser.test.mjs),
# which also runs a dishonest worker of its own (web/test/fake-worker.mjs, //Dave).
# Ports are away from the demo's (9944/8080) so this runs beside it:
#   WEB_TEST_RPC_PORT 9966  WEB_TEST_WORKER_PORT 8099  WEB_TEST_PORT 5199  WEB_TEST_FAKE_PORT 8098
#   WEB_TEST_P2P_PORT 30366
# Binaries from COMPUTE_BIN_DIR (default target/debug), screenshots and metrics.json in
# WEB_TEST_OUT (default web/test-output). Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
log() { printf '\033[1m==> %s\033[0m\n' "$*"; }
BIN=${COMPUTE_BIN_DIR:-$ROOT/target/debug}
RPC_PORT=${WEB_TEST_RPC_PORT:-9966}
WORKER_PORT=${WEB_TEST_WORKER_PORT:-8099}
WEB_PORT=${WEB_TEST_PORT:-5199}
FAKE_PORT=${WEB_TEST_FAKE_PORT:-8098}
P2P_PORT=${WEB_TEST_P2P_PORT:-30366}
OUT=${WEB_TEST_OUT:-$ROOT/web/test-output}
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
start=$SECONDS

for f in "$BIN/compute-node" "$BIN/compute-worker" models/SmolLM2-135M-Instruct.Q4_1.gguf \
         models/all-MiniLM-L6-v2/model.safetensors; do
    [ -e "$f" ] || { echo "missing $f (make build; make model)" >&2; exit 1; }
done
[ -x "$CHROMIUM" ] || { echo "missing $CHROMIUM (apt-get install chromium; scripts/setup.sh does)" >&2; exit 1; }
if [ ! -d web/node_modules/puppeteer-core ]; then
    log "Installing the web app's packages (web/)"
    (cd web && npm ci --no-audit --no-fund --loglevel=error)
fi

log "Unit tests of the protocol encoding and receipt checks (web/test/unit)"
(cd web && node --test test/unit/)
log "Building the app (web/dist)"
(cd web && node build.mjs)

BASE=$(mktemp -d)
PIDS=()
cleanup() {
    local code=$?
    for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ $code -ne 0 ]; then
        echo "--- node log (tail)"; tail -15 "$BASE/node.log" 2>/dev/null || true
        echo "--- worker log (tail)"; tail -25 "$BASE/worker.log" 2>/dev/null || true
    fi
    rm -rf "$BASE"
    exit $code
}
trap cleanup EXIT
rpc() {
    curl -s -H 'Content-Type: application/json' \
        -d "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"$1\",\"params\":${2:-[]}}" "http://127.0.0.1:$RPC_PORT"
}

log "Dev node on ws://127.0.0.1:$RPC_PORT"
"$BIN/compute-node" --dev --base-path "$BASE/node" --rpc-port "$RPC_PORT" --port "$P2P_PORT" \
    --no-prometheus --no-telemetry --no-mdns >"$BASE/node.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 120); do
    rpc chain_getFinalizedHead 2>/dev/null | grep -q '"result"' && break
    kill -0 "${PIDS[0]}" 2>/dev/null || { echo "node exited"; exit 1; }
    sleep 0.5
done

log "compute-worker (//Bob) on http://127.0.0.1:$WORKER_PORT with SmolLM2-135M-Instruct and all-MiniLM-L6-v2"
cat >"$BASE/worker.toml" <<TOML
node_url = "ws://127.0.0.1:$RPC_PORT"
listen = "127.0.0.1:$WORKER_PORT"
provider_key = "//Bob"
[store]
data_dir = "$BASE/worker"
[chat]
model = "$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf"
[embeddings]
model = "$ROOT/models/all-MiniLM-L6-v2"
[[services]]
id = 0
model_name = "SmolLM2-135M-Instruct"
input_price = "1000000"
output_price = "4000000"
verifiability = "activation-proof-v1"
[[services]]
id = 1
kind = "embedding"
model_name = "all-MiniLM-L6-v2"
input_price = "200000"
output_price = "0"
verifiability = "none"
[settlement]
max_age_secs = 3
tick_ms = 1000
TOML
"$BIN/compute-worker" --config "$BASE/worker.toml" >"$BASE/worker.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 240); do
    curl -sf "http://127.0.0.1:$WORKER_PORT/health" >/dev/null 2>&1 && break
    kill -0 "${PIDS[1]}" 2>/dev/null || { echo "worker exited"; exit 1; }
    sleep 0.5
done
for _ in $(seq 1 120); do
    rpc compute_services | grep -q 'all-MiniLM' && break
    sleep 1
done
rpc compute_services | grep -q 'all-MiniLM' || { echo "the worker's services never reached the chain"; exit 1; }

log "Web app on http://127.0.0.1:$WEB_PORT/"
node web/server.mjs --port "$WEB_PORT" --node "ws://127.0.0.1:$RPC_PORT" >"$BASE/web.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 40); do curl -sf "http://127.0.0.1:$WEB_PORT/" >/dev/null && break; sleep 0.25; done

log "Headless Chromium ($("$CHROMIUM" --version 2>/dev/null | head -1)) through puppeteer-core"
rm -rf "$OUT"; mkdir -p "$OUT"
(cd web && NODE_WS="ws://127.0.0.1:$RPC_PORT" WEB_URL="http://127.0.0.1:$WEB_PORT/" \
    FAKE_PORT="$FAKE_PORT" OUT_DIR="$OUT" CHROMIUM="$CHROMIUM" \
    node --test --test-concurrency=1 --test-timeout=600000 test/browser.test.mjs)
log "Screenshots and metrics.json in $OUT"
ls "$OUT"
log "test-web finished in $((SECONDS - start)) s"
