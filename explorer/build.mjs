// Bundles src/ into dist/ with esbuild (ES modules, code splitting: the signing code loads when
// first needed) and prints the size of what a browser downloads, raw and gzip. The WebAssembly of
// @polkadot/wasm-crypto goes into dist/crypto.wasm, loaded by src/wasm-crypto-init.ts.
import { build } from 'esbuild';
import { cpSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { wasmBytes } from '@polkadot/wasm-crypto-wasm';

const dist = new URL('./dist/', import.meta.url).pathname;
rmSync(dist, { recursive: true, force: true });
mkdirSync(dist, { recursive: true });
await build({
  entryPoints: ['src/main.tsx'],
  bundle: true,
  format: 'esm',
  splitting: true,
  minify: true,
  sourcemap: false,
  target: ['es2022'],
  outdir: dist,
  chunkNames: 'chunks/[name]-[hash]',
  legalComments: 'none',
  logLevel: 'warning',
  define: { 'process.env.NODE_ENV': '"production"' },
  plugins: [{
    name: 'wasm-crypto-file',
    setup(b) {
      b.onResolve({ filter: /^@polkadot\/wasm-crypto-init$/ }, () => ({
        path: new URL('./src/wasm-crypto-init.ts', import.meta.url).pathname,
      }));
    },
  }],
});
cpSync('index.html', join(dist, 'index.html'));
writeFileSync(join(dist, 'crypto.wasm'), wasmBytes);

const files = [];
const walk = (dir) => {
  for (const f of readdirSync(dir)) {
    const p = join(dir, f);
    if (statSync(p).isDirectory()) walk(p);
    else files.push(p);
  }
};
walk(dist);
let raw = 0;
let gz = 0;
const sizes = files.map((p) => {
  const data = readFileSync(p);
  const g = gzipSync(data, { level: 9 }).length;
  raw += data.length;
  gz += g;
  return { file: p.slice(dist.length), raw: data.length, gzip: g };
});
const initial = sizes.filter((s) => !s.file.startsWith('chunks/') || s.file.endsWith('.css'));
writeFileSync(join(dist, 'sizes.json'), JSON.stringify({ total: { raw, gzip: gz }, files: sizes }, null, 2));
const kb = (n) => `${(n / 1024).toFixed(1)} kB`;
console.log(`explorer built in dist/: ${files.length} files, ${kb(raw)} raw, ${kb(gz)} gzip in total`);
for (const s of sizes.sort((a, b) => b.gzip - a.gzip).slice(0, 6)) console.log(`  ${s.file}: ${kb(s.raw)} raw, ${kb(s.gzip)} gzip`);
void initial;
