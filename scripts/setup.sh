#!/usr/bin/env bash
# Install what building and testing need on a fresh Debian machine: system packages, the Rust
# toolchain pinned by rust-toolchain.toml (with wasm32v1-none and rust-src), and the npm
# packages of zombienet/. Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m==> %s\033[0m\n' "$*"; }

need_apt=()
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
command -v clang >/dev/null || need_apt+=(clang)
[ -e /usr/lib/llvm-14/lib/libclang.so ] || ls /usr/lib/llvm-*/lib/libclang*.so >/dev/null 2>&1 || need_apt+=(libclang-dev)
command -v mold >/dev/null || need_apt+=(mold)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
command -v curl >/dev/null || need_apt+=(curl)
[ -e /usr/include/openssl/ssl.h ] || need_apt+=(libssl-dev)
command -v python3 >/dev/null || need_apt+=(python3)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
command -v pip >/dev/null || command -v pip3 >/dev/null || need_apt+=(python3-pip)
# Headless Chromium for the web app's browser test (scripts/test-web.sh, puppeteer-core).
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
    log "Installing Debian packages: ${need_apt[*]}"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! command -v rustup >/dev/null; then
    echo "rustup is required (https://rustup.rs); install it and run this again" >&2
    exit 1
fi
log "Rust toolchain from rust-toolchain.toml"
rustup toolchain install >/dev/null 2>&1 || true
toolchain_targets=$(rustup target list --installed)
# The runtime's wasm prefers wasm32v1-none; where a registry mirror does not carry it,
# substrate-wasm-builder falls back to wasm32-unknown-unknown with rust-src.
if ! grep -q '^wasm32v1-none$' <<<"$toolchain_targets"; then
    if ! rustup target add wasm32v1-none >/dev/null 2>&1; then
        log "wasm32v1-none is not downloadable here; using wasm32-unknown-unknown"
        grep -q '^wasm32-unknown-unknown$' <<<"$toolchain_targets" || rustup target add wasm32-unknown-unknown
    fi
fi
rustup component list --installed | grep -q '^rust-src' || rustup component add rust-src
# The fuzz targets (scripts/fuzz.sh) build with nightly's coverage instrumentation.
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    log "Rust nightly (minimal) for the fuzz targets"
    rustup toolchain install nightly --profile minimal >/dev/null 2>&1 ||
        echo "nightly not installable here; scripts/fuzz.sh falls back to stable" >&2
fi
rustup component list --installed | grep -q '^clippy' || rustup component add clippy rustfmt

if [ "${SKIP_NPM:-0}" != "1" ]; then
    if ! command -v npm >/dev/null; then
        log "Installing Node.js and npm"
        SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
        $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
    fi
    if [ ! -x zombienet/node_modules/.bin/zombienet ]; then
        log "Installing @zombienet/cli (npm)"
        (cd zombienet && npm ci --no-audit --no-fund --loglevel=error)
    fi
fi
if [ "${SKIP_NPM:-0}" != "1" ] && [ ! -d clients/js/node_modules/@polkadot/api ]; then
    log "Installing the polkadot.js client's packages (clients/js)"
    (cd clients/js && npm ci --no-audit --no-fund --loglevel=error)
fi
if [ "${SKIP_NPM:-0}" != "1" ] && [ ! -d web/node_modules/esbuild ]; then
    log "Installing the web app's packages (web/: esbuild, polkadot.js, puppeteer-core)"
    (cd web && npm ci --no-audit --no-fund --loglevel=error)
fi
if [ ! -x clients/python/.venv/bin/python ] || ! clients/python/.venv/bin/python -c 'import openai, numpy, tokenizers' 2>/dev/null; then
    log "Installing the OpenAI Python client (clients/python/.venv)"
    python3 -m venv clients/python/.venv
    clients/python/.venv/bin/pip install -q --disable-pip-version-check -r clients/python/requirements.txt
fi
log "Setup complete"
