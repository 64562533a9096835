#!/usr/bin/env bash
# The main job: start a development chain (Alice authoring with Aura, GRANDPA finalizing), start
# a provider worker (Bob) serving SmolLM2-135M-Instruct (chat) and all-MiniLM-L6-v2 (embeddings),
# and run a scripted paid session as Charlie: deposit, a streamed chat with the `compute` CLI, an
# embeddings request, a request through `compute proxy` (the local OpenAI-compatible endpoint),
# closing ack, settlement on chain, refund request.
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
WEBPID=""
cleanup() {
    [ -n "$WEBPID" ] && kill -INT "$WEBPID" 2>/dev/null && wait "$WEBPID" 2>/dev/null
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
[store]
data_dir = "$BASE/worker"
[chat]
model = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
[embeddings]
model = "models/all-MiniLM-L6-v2"
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
echo "==> Starting the provider worker (Bob) with SmolLM2-135M-Instruct and all-MiniLM-L6-v2 (log: $BASE/worker.log)"
target/debug/compute-worker --config "$BASE/worker.toml" >"$BASE/worker.log" 2>&1 &
WPID=$!
for _ in $(seq 1 240); do
    curl -sf "http://127.0.0.1:$WORKER_PORT/health" >/dev/null 2>&1 && break
    kill -0 "$WPID" 2>/dev/null || { echo "worker exited:"; tail -20 "$BASE/worker.log"; exit 1; }
    sleep 0.5
done
BOB=5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty
compute() { target/debug/compute --node "ws://127.0.0.1:$RPC_PORT" --key //Charlie \
    --state "$BASE/state.json" "$@"; }
for _ in $(seq 1 120); do
    compute --json services 2>/dev/null | grep -q all-MiniLM && break
    sleep 1
done
echo "==> The services on chain (registered by the worker at start-up)"
compute services
WEB_PORT=${WEB_PORT:-5173}
NODE_URL="ws://127.0.0.1:$RPC_PORT" WEB_PORT="$WEB_PORT" scripts/web.sh >"$BASE/web.log" 2>&1 &
WEBPID=$!
for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$WEB_PORT/" >/dev/null 2>&1 && break
    kill -0 "$WEBPID" 2>/dev/null || { echo "web app exited:"; tail -5 "$BASE/web.log"; WEBPID=""; break; }
    sleep 0.5
done
[ -n "$WEBPID" ] && echo "==> Marketplace web app: http://127.0.0.1:$WEB_PORT/ (explorer, account, chat; log: $BASE/web.log)"
echo "==> Charlie's account"
compute account
echo "==> Charlie deposits 0.5 unit into escrow with Bob"
compute deposit "$BOB" 0.5unit
echo "==> A paid chat, streamed: signed voucher, receipt verified"
compute chat "$BOB" "${QUESTION:-What is a blockchain?}" --max-tokens 48 --temperature 0
echo "==> Paid embeddings of two sentences: receipt checked against the vectors received"
compute embed "$BOB" "The quick brown fox jumps over the lazy dog." "A fast auburn fox leaps over a sleepy hound."
PROXY_PORT=${PROXY_PORT:-8788}
echo "==> The same account through the local OpenAI-compatible proxy (any OpenAI client works)"
# The proxy writes a fresh API key to proxy-token beside the state file (0600); clients send it
# as `Authorization: Bearer <key>`, which every OpenAI client does with its api_key.
rm -f "$BASE/proxy-token"
# The binary itself in the background (not the `compute` function's subshell), so that the kill
# below stops the proxy.
target/debug/compute --node "ws://127.0.0.1:$RPC_PORT" --key //Charlie --state "$BASE/state.json" \
    proxy "$BOB" --listen "127.0.0.1:$PROXY_PORT" 2>"$BASE/proxy.log" &
PPID_=$!
trap 'kill "$PPID_" 2>/dev/null || true; cleanup' EXIT
for _ in $(seq 1 60); do
    [ -s "$BASE/proxy-token" ] && curl -sf "http://127.0.0.1:$PROXY_PORT/health" \
        -H "authorization: Bearer $(cat "$BASE/proxy-token")" >/dev/null && break
    kill -0 "$PPID_" 2>/dev/null || { echo "proxy exited:"; cat "$BASE/proxy.log"; exit 1; }
    sleep 0.5
done
echo "    API key for OpenAI clients: the contents of $BASE/proxy-token"
curl -s "http://127.0.0.1:$PROXY_PORT/v1/chat/completions" -H 'content-type: application/json' \
    -H "authorization: Bearer $(cat "$BASE/proxy-token")" \
    -d '{"model":"SmolLM2-135M-Instruct","max_tokens":24,"messages":[{"role":"user","content":"Name three colours."}]}' |
    python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["choices"][0]["message"]["content"]); print("-- usage", r["usage"], "fee", r["receipt"]["fee"], "total", r["receipt"]["total"])'
kill "$PPID_" 2>/dev/null || true
echo "==> Charlie audits Bob: every kept answer's activation proof recomputed with the weights"
echo "    Bob's service committed to on chain (downloaded from the worker, checked against the hash)"
compute audit "$BOB"
echo "==> Charlie closes the session with a signed ack of the total"
compute ack "$BOB"
total=$(python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(list(s["providers"].values())[0]["total"])' "$BASE/state.json")
echo "==> Waiting for Bob's worker to settle $total on chain"
for _ in $(seq 1 90); do
    compute --json escrow "$BOB" | grep -q "\"settled_total\":\"$total\"" && break
    sleep 1
done
compute escrow "$BOB"
compute --json escrow "$BOB" | grep -q "\"settled_total\":\"$total\"" || { echo "not settled"; tail -20 "$BASE/worker.log"; exit 1; }
echo "==> Charlie asks for 0.1 unit back (withdrawable after the refund lock)"
compute refund request "$BOB" 0.1unit
echo "==> Done: paid, verified, settled exactly once."
if [ "${KEEP:-0}" = "1" ]; then
    echo "==> Node running on ws://127.0.0.1:$RPC_PORT; Ctrl-C to stop"
    wait "$PID"
fi
