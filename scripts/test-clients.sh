#!/usr/bin/env bash
# The user-side clients against real parts (binaries from `cargo test --workspace --no-run`, the
# model from `make model`; scripts/setup.sh installed the packages):
#   clients/js      polkadot.js @polkadot/api 16.5.6 against a dev node
#   clients/python  the official `openai` package through `compute proxy` to a worker: paid
#                   chat and embeddings, and a fine-tuning job from upload to a deployed model
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '\033[1m==> %s\033[0m\n' "$*"; }
export COMPUTE_BIN_DIR=${COMPUTE_BIN_DIR:-$PWD/target/debug}
export COMPUTE_NODE_BIN=${COMPUTE_NODE_BIN:-$COMPUTE_BIN_DIR/compute-node}
log "polkadot.js client (clients/js)"
(cd clients/js && npm test)
log "OpenAI Python client through compute proxy (clients/python)"
clients/python/.venv/bin/python -m unittest -v clients/python/test_openai_proxy.py
log "A fine-tuning job through compute proxy with the OpenAI Python client (clients/python)"
clients/python/.venv/bin/python -m unittest -v clients/python/test_openai_finetune.py
