#!/usr/bin/env node
// A small static server for dist/ (no dependencies). The explorer talks to the node's RPC by
// itself; this only hands out the files.
//   node serve.mjs [--port N] [--host 127.0.0.1] [--rpc ws://127.0.0.1:9944] [--dir dist]
// Port 0 (the default) takes a free port. Prints the explorer's URL once it listens.
import { createServer } from 'node:http';
import { readFile, stat } from 'node:fs/promises';
import { extname, join, normalize, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.svg': 'image/svg+xml',
  '.wasm': 'application/wasm',
};

/** Serves `dir` on host:port; resolves with { server, port, url(rpc) }. */
export function startServer({ dir, host = '127.0.0.1', port = 0 }) {
  const root = resolve(dir);
  const server = createServer(async (req, res) => {
    try {
      const path = decodeURIComponent(new URL(req.url, 'http://x').pathname);
      let file = normalize(join(root, path));
      if (!file.startsWith(root)) {
        res.writeHead(403).end();
        return;
      }
      if ((await stat(file).catch(() => null))?.isDirectory()) file = join(file, 'index.html');
      const data = await readFile(file);
      const hashed = file.includes('/chunks/');
      res.writeHead(200, {
        'content-type': TYPES[extname(file)] ?? 'application/octet-stream',
        'cache-control': hashed ? 'public, max-age=31536000, immutable' : 'no-cache',
      });
      res.end(data);
    } catch {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
    }
  });
  return new Promise((ok, fail) => {
    server.once('error', fail);
    server.listen(port, host, () => {
      const p = server.address().port;
      ok({
        server,
        port: p,
        url: (rpc) => `http://${host}:${p}/${rpc ? `?rpc=${rpc}` : ''}`,
      });
    });
  });
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const args = process.argv.slice(2);
  const opt = (name, dflt) => {
    const i = args.indexOf(`--${name}`);
    return i >= 0 ? args[i + 1] : dflt;
  };
  const here = fileURLToPath(new URL('.', import.meta.url));
  const { url } = await startServer({
    dir: opt('dir', join(here, 'dist')),
    host: opt('host', '127.0.0.1'),
    port: Number(opt('port', 0)),
  });
  console.log(`explorer: ${url(opt('rpc', ''))}`);
}
