#!/usr/bin/env bash
# The multi-validator network tests with @zombienet/cli and its native provider (local
# processes), all while a provider worker settles:
#
#   scripts/zombienet.sh            validators.zndsl (`make test-network`, about 10 min): four
#                                   genesis validators, a fifth that joins and leaves, a killed and
#                                   two paused validators, and a runtime upgrade
#   scripts/zombienet.sh smoke      smoke.zndsl (`make test`, about 3 min): the four finalize with
#                                   one paused, and a runtime upgrade
set -euo pipefail
cd "$(dirname "$0")/.."
TEST=${1:-validators}
[ -f "zombienet/$TEST.zndsl" ] || { echo "no zombienet/$TEST.zndsl" >&2; exit 1; }
ROOT=$PWD
export PATH="$ROOT/target/debug:$PATH"
command -v compute-node >/dev/null || { echo "build the node first: make build" >&2; exit 1; }
[ -x zombienet/node_modules/.bin/zombienet ] || (cd zombienet && npm ci --no-audit --no-fund --loglevel=error)
[ -d clients/js/node_modules/@polkadot/api ] || (cd clients/js && npm ci --no-audit --no-fund --loglevel=error)
DIR=$(mktemp -d)
export COMPUTE_TEST_DIR="$DIR/compute-test"
mkdir -p "$COMPUTE_TEST_DIR"
cleanup() {
    DIR="$COMPUTE_TEST_DIR/workload" NODE_WS=unused zombienet/workload.sh stop 2>/dev/null || true
    [ -f "$COMPUTE_TEST_DIR/eve/node.pid" ] && BASE="$COMPUTE_TEST_DIR/eve" scripts/validator.sh stop 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT
# The node's own `local` spec, raw: zombienet then keeps its genesis validator set.
export COMPUTE_LOCAL_SPEC="$COMPUTE_TEST_DIR/local-raw.json"
compute-node build-spec --chain local --raw --disable-default-bootnode >"$COMPUTE_LOCAL_SPEC" 2>/dev/null
# The runtime one spec_version ahead, built beside the node's (runtime/build.rs).
COMPUTE_UPGRADE_WASM=""
for f in "$ROOT"/target/debug/wbuild/compute-runtime/upgrade_test_wasm*.compact.compressed.wasm \
    "$ROOT"/target/debug/wbuild/compute-runtime/upgrade_test_wasm*.wasm; do
    [ -f "$f" ] && { COMPUTE_UPGRADE_WASM=$f; break; }
done
[ -n "$COMPUTE_UPGRADE_WASM" ] || { echo "no upgrade-test runtime in target/debug/wbuild: make build" >&2; exit 1; }
export COMPUTE_UPGRADE_WASM
echo "==> zombienet: $TEST.zndsl (logs in $DIR while it runs)"
start=$SECONDS
(cd zombienet && FORCE_COLOR=0 node_modules/.bin/zombienet --provider native --spawn-concurrency 4 \
    --dir "$DIR/network" --force test "$TEST.zndsl")
echo "==> zombienet $TEST.zndsl passed in $((SECONDS - start)) s"
