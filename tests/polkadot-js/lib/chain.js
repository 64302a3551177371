// Starts a real zos-chain-node --dev on free loopback ports for the suite, and connects
// @polkadot/api to it with no custom types: everything comes from the runtime metadata.
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { mkdtempSync, createWriteStream, readFileSync, existsSync } from 'node:fs';
import { tmpdir, homedir } from 'node:os';
import { join } from 'node:path';
import { ApiPromise, WsProvider } from '@polkadot/api';

export function nodeBinary() {
  if (process.env.ZOS_CHAIN_NODE_BIN) return process.env.ZOS_CHAIN_NODE_BIN;
  const target = process.env.CARGO_TARGET_DIR ?? join(homedir(), '.cache', 'zos-grid', 'target');
  const bin = join(target, process.env.CARGO_PROFILE ?? 'ci', 'zos-chain-node');
  if (!existsSync(bin)) throw new Error(`chain node binary not found at ${bin} (run make build)`);
  return bin;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Spawns a dev chain; resolves once its RPC accepts an ApiPromise connection. */
export async function startDevChain() {
  const dir = mkdtempSync(join(tmpdir(), 'zos-pjs-'));
  const logPath = join(dir, 'node.log');
  const rpcPort = await freePort();
  const p2pPort = await freePort();
  const log = createWriteStream(logPath);
  const child = spawn(nodeBinary(), [
    '--dev', '--base-path', join(dir, 'db'), '--rpc-port', String(rpcPort),
    '--listen-addr', `/ip4/127.0.0.1/tcp/${p2pPort}`,
    '--no-prometheus', '--no-telemetry', '--no-mdns', '--rpc-cors', 'all',
  ], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout.pipe(log);
  child.stderr.pipe(log);
  let exited = null;
  child.on('exit', (code) => { exited = code; });

  const deadline = Date.now() + 120_000;
  while (!readLog(logPath).includes('Running JSON-RPC server')) {
    if (exited !== null) throw new Error(`node exited (${exited}):\n${tail(logPath)}`);
    if (Date.now() > deadline) throw new Error(`node not ready:\n${tail(logPath)}`);
    await sleep(200);
  }
  const provider = new WsProvider(`ws://127.0.0.1:${rpcPort}`, 1000);
  const api = await ApiPromise.create({ provider, noInitWarn: true });
  return {
    api,
    rpcPort,
    logPath,
    tail: () => tail(logPath),
    async stop() {
      await api.disconnect();
      child.kill('SIGKILL');
    },
  };
}

function readLog(path) {
  try { return readFileSync(path, 'utf8'); } catch { return ''; }
}

function tail(path, n = 40) {
  return readLog(path).split('\n').slice(-n).join('\n');
}

/**
 * Signs and submits `tx`, resolving with the events once the block that includes it is
 * FINALIZED. A dispatch error rejects with `pallet.ErrorName: docs` decoded from metadata.
 */
export async function submitFinalized(api, tx, signer) {
  return (await submitFinalizedAt(api, tx, signer)).events;
}

/** Like `submitFinalized`, and also gives the hash of the finalized block that included `tx`. */
export function submitFinalizedAt(api, tx, signer) {
  return new Promise((resolve, reject) => {
    let unsub;
    tx.signAndSend(signer, ({ status, events, dispatchError }) => {
      if (dispatchError) {
        unsub?.();
        const err = new Error(describeDispatchError(api, dispatchError));
        err.dispatchError = dispatchError;
        reject(err);
        return;
      }
      if (status.isFinalized) {
        unsub?.();
        resolve({ events: events.map(({ event }) => event), blockHash: status.asFinalized.toHex() });
      } else if (status.isDropped || status.isInvalid || status.isUsurped) {
        unsub?.();
        reject(new Error(`transaction ${status.type}`));
      }
    }).then((u) => { unsub = u; }, reject);
  });
}

/** `Pallet.ErrorName` (plus its doc line) for a module error, from metadata alone. */
export function describeDispatchError(api, dispatchError) {
  if (dispatchError.isModule) {
    const { section, name, docs } = api.registry.findMetaError(dispatchError.asModule);
    return `${section}.${name}: ${docs.join(' ')}`;
  }
  return dispatchError.toString();
}
