#!/usr/bin/env bash
# Run a validator of a compute network and join or leave its validator set: the README's
# "Run a validator" steps as one script (the network tests use it too).
#
#   scripts/validator.sh start   start the node (--validator) in the background and wait for it
#   scripts/validator.sh join    make session keys on that node, register them, bond a candidacy
#   scripts/validator.sh leave   give up the candidacy (out of the set two sessions later)
#   scripts/validator.sh status  the set, and this account's place in it
#   scripts/validator.sh stop    stop the node
#
# Settings (environment):
#   CHAIN       chain spec file of the network (raw), e.g. from `compute-node build-spec --raw`
#   BOOTNODES   multiaddresses of nodes already in the network, space-separated
#   BASE        data directory (keys, database, pid, log); default ~/.local/share/compute-validator
#   NAME        node name shown to peers and telemetry; default the host name
#   KEY         the validator account's secret URI or phrase (join/leave/status), e.g. //Eve
#   RPC_PORT    the node's local RPC port (default 9944); never expose it: rotating keys is an
#               unsafe RPC
#   P2P_PORT    peer-to-peer port to open to the network (default 30333)
#   PROMETHEUS_PORT  metrics port (default 9615), on all interfaces for your monitoring
#   CHAIN_RPC   a node to send the join/leave transactions to (default this node)
#   NODE_BIN    compute-node binary (default target/debug/compute-node, then $PATH)
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${BASE:-$HOME/.local/share/compute-validator}
RPC_PORT=${RPC_PORT:-9944}
P2P_PORT=${P2P_PORT:-30333}
PROMETHEUS_PORT=${PROMETHEUS_PORT:-9615}
NAME=${NAME:-$(hostname)}
NODE_BIN=${NODE_BIN:-$(command -v target/debug/compute-node || command -v compute-node || true)}
OWN_RPC="ws://127.0.0.1:$RPC_PORT"
CHAIN_RPC=${CHAIN_RPC:-$OWN_RPC}
log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

rpc() {
    curl -s -m 5 -H 'Content-Type: application/json' \
        -d "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"$1\",\"params\":${2:-[]}}" \
        "http://127.0.0.1:$RPC_PORT"
}

js() {
    [ -d clients/js/node_modules/@polkadot/api ] ||
        (cd clients/js && npm ci --no-audit --no-fund --loglevel=error)
    node clients/js/validator.mjs --node "$CHAIN_RPC" --own-node "$OWN_RPC" "$@"
}

start() {
    [ -n "$NODE_BIN" ] || die "no compute-node binary: build it (make build) or set NODE_BIN"
    [ -n "${CHAIN:-}" ] || die "set CHAIN to the network's chain spec file"
    [ -f "$BASE/node.pid" ] && kill -0 "$(cat "$BASE/node.pid")" 2>/dev/null &&
        die "a node is already running from $BASE (pid $(cat "$BASE/node.pid"))"
    mkdir -p "$BASE"
    # A validator keeps its network identity across restarts (peers and authority discovery
    # know it by it): make the node key once, beside the database.
    "$NODE_BIN" key generate-node-key --chain "$CHAIN" --base-path "$BASE" 2>/dev/null || true
    local boot=()
    for b in ${BOOTNODES:-}; do boot+=(--bootnodes "$b"); done
    log "starting $NAME (log: $BASE/node.log)"
    # --validator: author and vote once the keys in this node's keystore are in the set.
    # RPC on loopback only (unsafe methods for key rotation) and to no web page (no CORS);
    # P2P and Prometheus open.
    "$NODE_BIN" --chain "$CHAIN" --base-path "$BASE" --name "$NAME" --validator \
        --port "$P2P_PORT" --rpc-port "$RPC_PORT" --rpc-methods unsafe --rpc-cors none \
        --prometheus-port "$PROMETHEUS_PORT" --prometheus-external \
        --no-mdns --no-telemetry "${boot[@]}" </dev/null >>"$BASE/node.log" 2>&1 &
    echo $! >"$BASE/node.pid"
    for _ in $(seq 1 120); do
        rpc system_health | grep -q '"peers"' && break
        kill -0 "$(cat "$BASE/node.pid")" 2>/dev/null || { tail -20 "$BASE/node.log" >&2; die "the node exited"; }
        sleep 0.5
    done
    rpc system_health | grep -q '"peers"' || die "the node's RPC does not answer on port $RPC_PORT"
    log "running, pid $(cat "$BASE/node.pid"), peer id $(rpc system_localPeerId | sed -n 's/.*"result":"\([^"]*\)".*/\1/p')"
}

stop() {
    [ -f "$BASE/node.pid" ] || die "no node started from $BASE"
    local pid
    pid=$(cat "$BASE/node.pid")
    kill -INT "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$BASE/node.pid"
    log "stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    # The key goes to the client in its environment, never on a command line (`ps` shows those
    # to every local user).
    join | leave | purge-keys)
        [ -n "${KEY:-}" ] || die "set KEY to the validator account"
        COMPUTE_KEY="$KEY" js "$1" ;;
    status) COMPUTE_KEY="${KEY:-}" js status ;;
    *) die "usage: scripts/validator.sh start|join|leave|purge-keys|status|stop (settings in the header)" ;;
esac
