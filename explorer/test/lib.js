// What the browser test needs around the explorer: a real dev chain on free loopback ports, an
// executor node (when its binary is built), the static server, chromium.
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { mkdtempSync, createWriteStream, readFileSync, existsSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir, homedir } from 'node:os';
import { join } from 'node:path';
import { ApiPromise, WsProvider } from '@polkadot/api';

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function targetBin(name, envVar) {
  if (process.env[envVar]) return process.env[envVar];
  const target = process.env.CARGO_TARGET_DIR ?? join(homedir(), '.cache', 'zos-grid', 'target');
  return join(target, process.env.CARGO_PROFILE ?? 'ci', name);
}

export function nodeBinary() {
  const bin = targetBin('zos-chain-node', 'ZOS_CHAIN_NODE_BIN');
  if (!existsSync(bin)) throw new Error(`chain node binary not found at ${bin} (run make build)`);
  return bin;
}

/** The executor binary, or null when it is not built (the test then acts as the node itself). */
export function executorBinary() {
  const bin = targetBin('zos-executor', 'ZOS_EXECUTOR_BIN');
  return existsSync(bin) ? bin : null;
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function readLog(path) {
  try { return readFileSync(path, 'utf8'); } catch { return ''; }
}

export function tail(path, n = 40) {
  return readLog(path).split('\n').slice(-n).join('\n');
}

/** Polls `check` every 200 ms until it returns a truthy value; fails after `ms`. */
export async function waitUntil(what, ms, check) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(200);
  }
}

/** A dev chain on free loopback ports; resolves once @polkadot/api is connected. */
export async function startDevChain(dir) {
  const logPath = join(dir, 'node.log');
  const rpcPort = await freePort();
  const log = createWriteStream(logPath);
  const child = spawn(nodeBinary(), [
    '--dev', '--base-path', join(dir, 'db'), '--rpc-port', String(rpcPort),
    '--listen-addr', '/ip4/127.0.0.1/tcp/0',
    '--no-prometheus', '--no-telemetry', '--no-mdns', '--rpc-cors', 'all',
  ], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout.pipe(log);
  child.stderr.pipe(log);
  let exited = null;
  child.on('exit', (code) => { exited = code; });
  await waitUntil('the chain RPC', 120_000, () => {
    if (exited !== null) throw new Error(`node exited (${exited}):\n${tail(logPath)}`);
    return readLog(logPath).includes('Running JSON-RPC server');
  });
  // The node may fall back to another port when the requested one was taken meanwhile.
  const m = /Running JSON-RPC server: addr=127\.0\.0\.1:(\d+)/.exec(readLog(logPath));
  const port = m ? Number(m[1]) : rpcPort;
  const url = `ws://127.0.0.1:${port}`;
  const api = await ApiPromise.create({ provider: new WsProvider(url, 1000), noInitWarn: true });
  return {
    api,
    url,
    logPath,
    async stop() {
      await api.disconnect().catch(() => {});
      child.kill('SIGKILL');
    },
  };
}

/**
 * Starts `zos-executor` the way scripts/run-local-grid.sh does, without VMs: its identity file
 * is written here so the test knows (and funds) its account before it starts. With
 * `accessPort`, it serves consoles there (the access endpoint).
 */
export function startExecutor(bin, { url, farmId, dir, accountSeedHex, boxSecretHex, accessPort }) {
  const data = join(dir, 'executor');
  const keyFile = join(dir, 'identity.json');
  writeFileSync(keyFile, JSON.stringify({ account_seed: accountSeedHex, box_secret: boxSecretHex }), { mode: 0o600 });
  const logPath = join(dir, 'executor.log');
  const log = createWriteStream(logPath);
  const child = spawn(bin, [
    '--chain-url', url, '--farm-id', String(farmId), '--data-dir', data, '--key-file', keyFile,
    '--report-interval', '10', '--heartbeat-interval', '15', '--metrics-addr', 'off',
    '--capacity', 'cru=2,mru_mib=4096,sru_gib=50', '--no-vm',
    '--access-addr', accessPort ? `127.0.0.1:${accessPort}` : 'off',
  ], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'info' } });
  child.stdout.pipe(log);
  child.stderr.pipe(log);
  let exited = null;
  child.on('exit', (code) => { exited = code; });
  return {
    logPath,
    exited: () => exited,
    async stop() {
      if (exited !== null) return;
      child.kill('SIGTERM');
      await waitUntil('the executor to stop', 15_000, () => exited !== null).catch(() => child.kill('SIGKILL'));
    },
  };
}

/**
 * Signs and sends `tx` (with `options` such as an explicit nonce); resolves with the events once
 * a block includes it (not finalized).
 */
export function submitInBlock(api, tx, signer, options = {}) {
  return new Promise((resolve, reject) => {
    let unsub;
    tx.signAndSend(signer, options, ({ status, events, dispatchError }) => {
      if (dispatchError) {
        unsub?.();
        const e = dispatchError.isModule ? api.registry.findMetaError(dispatchError.asModule) : null;
        reject(new Error(e ? `${e.section}.${e.name}` : dispatchError.toString()));
      } else if (status.isInBlock || status.isFinalized) {
        unsub?.();
        resolve(events.map(({ event }) => event));
      } else if (status.isDropped || status.isInvalid || status.isUsurped) {
        unsub?.();
        reject(new Error(`transaction ${status.type}`));
      }
    }).then((u) => { unsub = u; }, reject);
  });
}

/**
 * Load for measurements: `signer` creates a farm, registers its own account as a node of it,
 * heartbeats and creates `count` 1-of-1 contracts of `spec` on that node. A 1-of-1 contract is
 * active at once, so it takes no room in the proposals' expiry queue (64 a block). The calls go
 * in `utility.batchAll`s sized from the runtime's weights so that two fill the normal share of
 * a block: about two blocks for 1,000 contracts. Resolves with the farm, the node and the ids.
 */
export async function seedContracts(api, signer, { count, farmName, boxKey, spec, capacity, location }) {
  // The farm and the node get the next ids: nothing else registers any meanwhile.
  const farmId = (await api.query.grid.nextFarmId()).toNumber();
  const nodeId = (await api.query.grid.nextNodeId()).toNumber();
  const create = () => api.tx.deployments.create(nodeId, spec, [{ account: signer.address, weight: 1, required: true }], 1);
  const perCall = (await create().paymentInfo(signer)).weight.refTime.toBigInt();
  const normal = api.consts.system.blockWeights.perClass.normal;
  const maxTotal = normal.maxTotal.unwrap().refTime.toBigInt();
  const maxExtrinsic = normal.maxExtrinsic.unwrap().refTime.toBigInt();
  const room = (maxTotal / 2n < maxExtrinsic ? maxTotal / 2n : maxExtrinsic) * 9n / 10n;
  const perBatch = Math.max(1, Number(room / perCall));
  const setup = [
    api.tx.grid.createFarm(farmName),
    api.tx.grid.authorizeNode(farmId, signer.address),
    api.tx.grid.registerNode(farmId, capacity, boxKey, location, null, 'v0.1.0'),
    api.tx.grid.heartbeat(),
  ];
  const creates = Array.from({ length: count }, create);
  const batches = [];
  for (let i = 0; i < creates.length; i += perBatch) batches.push(creates.slice(i, i + perBatch));
  batches[0] = [...setup, ...batches[0]];
  const nonce = (await api.rpc.system.accountNextIndex(signer.address)).toNumber();
  const results = await Promise.all(batches.map((calls, i) =>
    submitInBlock(api, api.tx.utility.batchAll(calls), signer, { nonce: nonce + i })));
  const events = results.flat();
  const named = (method) => events.filter((e) => e.method === method);
  const ids = named('ContractCreated').map((e) => e.data.contract.toNumber()).sort((a, b) => a - b);
  return {
    farmId: named('FarmCreated')[0].data.farmId.toNumber(),
    nodeId: named('NodeRegistered')[0].data.nodeId.toNumber(),
    ids,
    perBatch,
    batches: batches.length,
  };
}

export function tempDir() {
  return mkdtempSync(join(tmpdir(), 'zos-explorer-'));
}

export function removeDir(dir) {
  rmSync(dir, { recursive: true, force: true });
}
