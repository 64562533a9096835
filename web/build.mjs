// Bundle the app into dist/: one minified ES module (polkadot.js and its wasm crypto included),
// the stylesheet and index.html. `node build.mjs` (npm run build).
import * as esbuild from 'esbuild';
import { copyFile, mkdir, rm } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const root = dirname(fileURLToPath(import.meta.url));
const out = join(root, 'dist');
await rm(out, { recursive: true, force: true });
await mkdir(out, { recursive: true });
const result = await esbuild.build({
  entryPoints: { app: join(root, 'src/main.js') },
  bundle: true,
  format: 'esm',
  target: 'es2022',
  minify: true,
  sourcemap: true,
  outdir: out,
  metafile: true,
  legalComments: 'none',
  logLevel: 'warning',
});
await copyFile(join(root, 'src/app.css'), join(out, 'app.css'));
await copyFile(join(root, 'index.html'), join(out, 'index.html'));
const bytes = Object.entries(result.metafile.outputs)
  .filter(([f]) => f.endsWith('.js')).reduce((n, [, o]) => n + o.bytes, 0);
console.log(`built ${out} (app.js ${(bytes / 1024).toFixed(0)} KiB)`);
