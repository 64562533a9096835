#!/usr/bin/env bash
# The workload the network tests run under: a provider worker (Ferdie) serving embeddings with
# all-MiniLM-L6-v2, and a user (Charlie) paying for a request every second or so with the
# `compute` CLI; the worker settles what it earned every few seconds.
#
#   workload.sh start   start the worker and the user's loop, return once a first claim settled
#   workload.sh check   stop the loop, close with an ack, and check that the chain settled
#                       exactly what the user signed (nothing lost, nothing twice)
#   workload.sh stop    stop everything (also run by the test script on exit)
#
# NODE_WS (a node of the network), DIR (state and logs) and BIN (binaries) come from the caller.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${NODE_WS:?}" "${DIR:?}"
BIN=${BIN:-$PWD/target/debug}
PORT=${WORKER_PORT:-8097}
FERDIE=5CiPPseXPECbkjWCa6MnjNokrgYjMqmKndv2rSnekmSK2DjL
mkdir -p "$DIR"
compute() { "$BIN/compute" --node "$NODE_WS" --key //Charlie --state "$DIR/state.json" "$@"; }
settled() {
    compute --json escrow "$FERDIE" 2>/dev/null |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["settled_total"])' 2>/dev/null || echo 0
}
signed() { python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(list(s["providers"].values())[0]["total"])' "$DIR/state.json"; }

start() {
    cat >"$DIR/worker.toml" <<TOML
node_url = "$NODE_WS"
listen = "127.0.0.1:$PORT"
provider_key = "//Ferdie"
[store]
data_dir = "$DIR/worker"
[embeddings]
model = "models/all-MiniLM-L6-v2"
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
    "$BIN/compute-worker" --config "$DIR/worker.toml" </dev/null >>"$DIR/worker.log" 2>&1 &
    echo $! >"$DIR/worker.pid"
    for _ in $(seq 1 240); do
        curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
        kill -0 "$(cat "$DIR/worker.pid")" 2>/dev/null || { tail -20 "$DIR/worker.log"; exit 1; }
        sleep 0.5
    done
    for _ in $(seq 1 120); do
        compute --json services 2>/dev/null | grep -q all-MiniLM && break
        sleep 1
    done
    compute deposit "$FERDIE" 2unit >>"$DIR/user.log" 2>&1
    touch "$DIR/running"
    (
        i=0
        while [ -e "$DIR/running" ]; do
            i=$((i + 1))
            if compute embed "$FERDIE" "request $i: validators come and go, payments stay exact" \
                >>"$DIR/user.log" 2>&1; then
                echo ok >>"$DIR/requests"
            else
                echo failed >>"$DIR/requests"
            fi
            sleep 1
        done
    ) </dev/null >/dev/null 2>&1 &
    echo $! >"$DIR/loop.pid"
    for _ in $(seq 1 120); do
        [ "$(settled)" != "0" ] && break
        sleep 1
    done
    [ "$(settled)" != "0" ] || { echo "nothing settled"; tail -20 "$DIR/worker.log"; exit 1; }
    echo "workload running: settled $(settled) so far"
}

check() {
    rm -f "$DIR/running"
    while kill -0 "$(cat "$DIR/loop.pid")" 2>/dev/null; do sleep 0.5; done
    local ok failed
    ok=$(grep -c '^ok$' "$DIR/requests" || true)
    failed=$(grep -c '^failed$' "$DIR/requests" || true)
    echo "requests: $ok paid, $failed failed"
    [ "$ok" -ge 20 ] || { echo "too few paid requests"; tail -30 "$DIR/user.log"; exit 1; }
    compute ack "$FERDIE" >>"$DIR/user.log" 2>&1
    local total
    total=$(signed)
    for _ in $(seq 1 120); do
        [ "$(settled)" = "$total" ] && break
        sleep 1
    done
    echo "the user signed $total in all; the chain settled $(settled)"
    [ "$(settled)" = "$total" ] || { tail -30 "$DIR/worker.log"; exit 1; }
}

stop() {
    rm -f "$DIR/running"
    for p in loop worker; do
        [ -f "$DIR/$p.pid" ] && kill "$(cat "$DIR/$p.pid")" 2>/dev/null || true
    done
}

case "${1:-}" in
    start) start ;;
    check) check ;;
    stop) stop ;;
    *) echo "usage: workload.sh start|check|stop" >&2; exit 2 ;;
esac
