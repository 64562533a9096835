#!/usr/bin/env node
// Serve the built app (dist/) and its config.json. Static files only: the browser talks to the
// node (WebSocket) and to the workers (HTTP, CORS) itself, so this server holds no key and
// forwards nothing.
//   node server.mjs [--port 5199] [--host 127.0.0.1] [--node ws://127.0.0.1:9944]
//   (or PORT, HOST, NODE_URL)
import { createServer } from 'node:http';
import { readdir, readFile } from 'node:fs/promises';
import { gzipSync } from 'node:zlib';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { dirname, join, extname } from 'node:path';

const { values } = parseArgs({
  options: {
    port: { type: 'string', default: process.env.PORT ?? '5199' },
    host: { type: 'string', default: process.env.HOST ?? '127.0.0.1' },
    node: { type: 'string', default: process.env.NODE_URL ?? 'ws://127.0.0.1:9944' },
  },
});
const dist = join(dirname(fileURLToPath(import.meta.url)), 'dist');
const TYPES = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8', '.json': 'application/json', '.map': 'application/json',
};
// Defence in depth against injected markup: scripts only from here (wasm for the sr25519
// crypto), no inline script or style, no framing. Nodes and workers may be anywhere.
const HEADERS = {
  'content-security-policy': "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; " +
    "style-src 'self'; img-src 'self' data:; connect-src *; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
};

// Every file is read once at start: the set of paths served is fixed, so no request path can
// reach outside dist/.
const files = new Map();
let names;
try {
  names = await readdir(dist);
} catch {
  console.error(`no ${dist}: run \`npm run build\` in web/ first`);
  process.exit(1);
}
for (const name of names) {
  const body = await readFile(join(dist, name));
  files.set(`/${name}`, { body, gz: gzipSync(body, { level: 9 }), type: TYPES[extname(name)] ?? 'application/octet-stream' });
}
const config = Buffer.from(JSON.stringify({ nodeUrl: values.node }));
files.set('/config.json', { body: config, gz: gzipSync(config), type: TYPES['.json'] });
files.set('/', files.get('/index.html'));

const server = createServer((req, res) => {
  const path = new URL(req.url, 'http://x').pathname;
  const f = files.get(path);
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.writeHead(405, HEADERS).end();
    return;
  }
  if (!f) {
    res.writeHead(404, { ...HEADERS, 'content-type': 'text/plain' }).end('not found');
    return;
  }
  const gzip = /\bgzip\b/.test(req.headers['accept-encoding'] ?? '');
  const body = gzip ? f.gz : f.body;
  res.writeHead(200, {
    ...HEADERS,
    'content-type': f.type,
    'content-length': body.length,
    'cache-control': path === '/config.json' || path === '/' || path.endsWith('.html') ? 'no-cache' : 'max-age=300',
    ...(gzip ? { 'content-encoding': 'gzip' } : {}),
    vary: 'accept-encoding',
  });
  res.end(req.method === 'HEAD' ? undefined : body);
});
server.listen(Number(values.port), values.host, () => {
  console.log(`marketplace web app: http://${values.host}:${values.port}/  (node ${values.node})`);
});
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => server.close(() => process.exit(0)));
