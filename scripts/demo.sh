#!/usr/bin/env bash
# The main job: start a development chain (Alice authoring with Aura, GRANDPA finalizing), start
# a provider worker (Bob) serving SmolLM2-135M-Instruct, and run a scripted paid chat as Charlie:
# deposit, signed voucher, verified receipt, closing ack, settlement on chain.
#   BLOCKS=N   how many finalized blocks to wait for (default 3)
#   KEEP=1     leave the node running afterwards (Ctrl-C to stop)
set -euo pipefail
cd "$(dirname "$0")/.."
NODE=${NODE:-target/debug/compute-node}
RPC_PORT=${RPC_PORT:-9944}
BLOCKS=${BLOCKS:-3}
BASE=$(mktemp -d)
LOG="$BASE/node.log"

rpc() {
    curl -s -H 'Content-Type: application/json' \
        -d "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"$1\",\"params\":${2:-[]}}" \
        "http://127.0.0.1:$RPC_PORT"
}
field() { sed -n "s/.*\"$1\":\"\{0,1\}\([^\",}]*\).*/\1/p"; }

echo "==> Starting $NODE --dev (log: $LOG)"
"$NODE" --dev --base-path "$BASE" --rpc-port "$RPC_PORT" --no-telemetry --no-mdns >"$LOG" 2>&1 &
PID=$!
WPID=""
cleanup() {
    [ -n "$WPID" ] && kill -INT "$WPID" 2>/dev/null && wait "$WPID" 2>/dev/null
    kill -INT "$PID" 2>/dev/null && wait "$PID" 2>/dev/null; rm -rf "$BASE"; }
trap cleanup EXIT

for _ in $(seq 1 120); do
    rpc system_health >/dev/null 2>&1 && break
    kill -0 "$PID" 2>/dev/null || { echo "node exited:"; tail -20 "$LOG"; exit 1; }
    sleep 0.5
done
echo "==> Chain: $(rpc system_chain | field result), runtime $(rpc state_getRuntimeVersion | field specName)"

deadline=$((SECONDS + 30 + BLOCKS * 15))
finalized=0
last=""
while [ "$finalized" -lt "$BLOCKS" ]; do
    [ $SECONDS -gt $deadline ] && { echo "no finality after ${deadline}s"; tail -20 "$LOG"; exit 1; }
    best=$(( $(rpc chain_getHeader | field number) ))
    fhash=$(rpc chain_getFinalizedHead | field result)
    finalized=$(( $(rpc chain_getHeader "[\"$fhash\"]" | field number) ))
    line="best #$best  finalized #$finalized"
    [ "$line" != "$last" ] && echo "    $line" && last=$line
    sleep 1
done
echo "==> Blocks are produced (Aura) and finalized (GRANDPA)."

WORKER_PORT=${WORKER_PORT:-8080}
cat >"$BASE/worker.toml" <<TOML
node_url = "ws://127.0.0.1:$RPC_PORT"
listen = "127.0.0.1:$WORKER_PORT"
provider_key = "//Bob"
data_dir = "$BASE/worker"
model = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
[[services]]
id = 0
model_name = "SmolLM2-135M-Instruct"
input_price = "1000000"
output_price = "4000000"
verifiability = "none"
[settlement]
max_age_secs = 3
tick_ms = 1000
TOML
echo "==> Starting the provider worker (Bob) with SmolLM2-135M-Instruct (log: $BASE/worker.log)"
target/debug/compute-worker --config "$BASE/worker.toml" >"$BASE/worker.log" 2>&1 &
WPID=$!
for _ in $(seq 1 240); do
    curl -sf "http://127.0.0.1:$WORKER_PORT/health" >/dev/null 2>&1 && break
    kill -0 "$WPID" 2>/dev/null || { echo "worker exited:"; tail -20 "$BASE/worker.log"; exit 1; }
    sleep 0.5
done
echo "==> A paid chat as Charlie"
target/debug/examples/paid_chat "ws://127.0.0.1:$RPC_PORT" "http://127.0.0.1:$WORKER_PORT" \
    "${QUESTION:-What is the capital of France?}"
if [ "${KEEP:-0}" = "1" ]; then
    echo "==> Node running on ws://127.0.0.1:$RPC_PORT; Ctrl-C to stop"
    wait "$PID"
fi
