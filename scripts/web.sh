#!/usr/bin/env bash
# Serve the marketplace web app (web/): build the bundle when the sources are newer, then serve
# web/dist on one port and print its URL. The browser connects to the node itself.
#   NODE_URL   the node's WebSocket RPC (default ws://127.0.0.1:9944)
#   WEB_PORT   port to serve on (default 5173); WEB_HOST (default 127.0.0.1)
set -euo pipefail
cd "$(dirname "$0")/../web"
NODE_URL=${NODE_URL:-ws://127.0.0.1:9944}
WEB_PORT=${WEB_PORT:-5173}
WEB_HOST=${WEB_HOST:-127.0.0.1}
if [ ! -d node_modules/esbuild ]; then
    echo "==> Installing the web app's packages (web/)"
    npm ci --no-audit --no-fund --loglevel=error
fi
if [ ! -f dist/app.js ] || [ -n "$(find src index.html build.mjs -newer dist/app.js -print -quit)" ]; then
    echo "==> Building web/dist"
    node build.mjs
fi
exec node server.mjs --port "$WEB_PORT" --host "$WEB_HOST" --node "$NODE_URL"
