#!/usr/bin/env bash
# Four-validator smoke test with @zombienet/cli and its native provider (local processes).
set -euo pipefail
cd "$(dirname "$0")/../zombienet"
export PATH="$(cd .. && pwd)/target/debug:$PATH"
command -v compute-node >/dev/null || { echo "build the node first: make build" >&2; exit 1; }
[ -x node_modules/.bin/zombienet ] || npm ci --no-audit --no-fund --loglevel=error
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
echo "==> zombienet smoke test (logs in $DIR while it runs)"
FORCE_COLOR=0 node_modules/.bin/zombienet --provider native --spawn-concurrency 4 --dir "$DIR" --force test smoke.zndsl
