// The explorer in a real browser (Debian's chromium, driven by puppeteer-core) against a real dev
// chain: a farmer creates a farm and adds an IP in the UI, a node joins it (the executor without
// VMs when it is built, else the test registers one with polkadot.js), a bad spec is refused with
// the chain's error name, //Alice creates a 2-of-2 contract in the UI and //Bob approves it in a
// second browser context, the contract becomes Active and then Deployed; 1,000 more contracts are
// seeded and the pages timed with them; an update is proposed, its diff approved, consumption shows
// as charges, and a cancel ends the contract. Every page is screenshotted into test-output/screens;
// timings and the bundle size go to test-output/metrics.json.
//
// The tests run in order and share the chain and the browser.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, generateKeyPairSync } from 'node:crypto';
import { copyFileSync, mkdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { loadavg } from 'node:os';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import puppeteer from 'puppeteer-core';
import { Keyring } from '@polkadot/keyring';
import { blake2AsHex, cryptoWaitReady } from '@polkadot/util-crypto';
import { startServer } from '../serve.mjs';
import {
  executorBinary, freePort, removeDir, seedContracts, startDevChain, startExecutor, submitInBlock, tail, tempDir,
  waitUntil,
} from './lib.js';

const here = fileURLToPath(new URL('..', import.meta.url));
const out = join(here, 'test-output');
const screens = join(out, 'screens');
const UNIT = 1_000_000_000_000n;
const GIB = 1n << 30n;
const SEEDED = 1000; // contracts seeded for the measurements under load

let dir;
let chain;
let api;
let server;
let browser;
let executor = null;
const k = {};
const s = {};
const ctx = {}; // browser contexts and pages by role
const metrics = { startedAt: new Date().toISOString() };
const t0 = Date.now();

const sel = (id) => `[data-testid="${id}"]`;

before(async () => {
  await cryptoWaitReady();
  mkdirSync(screens, { recursive: true });
  dir = tempDir();
  if (!existsSync(join(here, 'dist', 'index.html'))) throw new Error('dist/ is missing: run `npm run build` first');
  chain = await startDevChain(dir);
  api = chain.api;
  server = await startServer({ dir: join(here, 'dist') });
  const keyring = new Keyring({ type: 'sr25519' });
  for (const n of ['Alice', 'Bob', 'Dave', 'Eve', 'Ferdie']) k[n.toLowerCase()] = keyring.addFromUri(`//${n}`);
  // The node's identity, as the executor keeps it: a 32-byte sr25519 mini secret and an x25519 key.
  s.nodeSeed = randomBytes(32);
  k.node = keyring.addFromSeed(s.nodeSeed);
  const { publicKey, privateKey } = generateKeyPairSync('x25519');
  s.boxPublic = `0x${Buffer.from(publicKey.export({ format: 'jwk' }).x, 'base64url').toString('hex')}`;
  s.boxSecret = Buffer.from(privateKey.export({ format: 'jwk' }).d, 'base64url').toString('hex');
  browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM_BIN ?? '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run'],
  });
});

after(async () => {
  metrics.totalSeconds = Math.round((Date.now() - t0) / 100) / 10;
  try {
    writeFileSync(join(out, 'metrics.json'), `${JSON.stringify(metrics, null, 2)}\n`);
  } catch { /* nothing to keep */ }
  await browser?.close().catch(() => {});
  await executor?.stop();
  await chain?.stop();
  server?.server.close();
  // The chain's and the executor's logs are kept next to the screenshots.
  mkdirSync(join(out, 'logs'), { recursive: true });
  for (const log of [chain?.logPath, executor?.logPath]) {
    if (log && existsSync(log)) copyFileSync(log, join(out, 'logs', basename(log)));
  }
  if (dir) removeDir(dir);
});

/** A page in its own browser context (own storage: own selected account). */
async function newPage(role) {
  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  await page.setViewport({ width: 1280, height: 900 });
  page.on('pageerror', (e) => console.log(`[${role} page error] ${e.message}`));
  ctx[role] = { context, page };
  return page;
}

function url(route) {
  return `${server.url(chain.url)}${route}`;
}

async function go(page, route) {
  if (page.url().startsWith(server.url(chain.url))) {
    await page.evaluate((r) => { location.hash = r; }, route);
  } else {
    await page.goto(url(route));
  }
  await page.waitForSelector(sel('connection'));
}

async function shot(page, name) {
  await page.screenshot({ path: join(screens, `${name}.png`), fullPage: true });
}

/** Waits until the element's text matches `re` (checked at every DOM change with `polling` 'mutation'); returns the text. */
async function waitText(page, selector, re, timeout = 30_000, polling = 100) {
  try {
    await page.waitForFunction(
      (q, src, flags) => {
        const el = document.querySelector(q);
        return el && new RegExp(src, flags).test(el.textContent);
      },
      { timeout, polling },
      selector, re.source, re.flags,
    );
  } catch (e) {
    const text = await page.$eval(selector, (el) => el.textContent).catch(() => '(absent)');
    throw new Error(`${selector} never matched ${re} (now: ${text}): ${e.message}`);
  }
  return page.$eval(selector, (el) => el.textContent);
}

/**
 * Types `text` into the header's search box and submits it. The box is a controlled input: a
 * cleared DOM value without an input event would be put back by the next render (a new block
 * re-renders the header), so the clearing goes through an input event too.
 */
async function search(page, text) {
  await page.$eval(sel('search-input'), (el) => {
    el.value = '';
    el.dispatchEvent(new Event('input', { bubbles: true }));
  });
  await page.type(sel('search-input'), text);
  const typed = await page.$eval(sel('search-input'), (el) => el.value);
  assert.equal(typed, text, 'the search box holds exactly what was typed');
  await page.keyboard.press('Enter');
}

async function selectAccount(page, name) {
  const value = await page.waitForFunction((n) => {
    const opt = [...document.querySelectorAll('[data-testid="account-select"] option')].find((o) => o.textContent.startsWith(`${n} `));
    return opt?.value;
  }, { polling: 100, timeout: 30_000 }, name);
  await page.select(sel('account-select'), await value.jsonValue());
}

async function setValue(page, selector, value) {
  await page.$eval(selector, (el, v) => {
    el.value = v;
    el.dispatchEvent(new Event('input', { bubbles: true }));
  }, value);
}

async function clickEnabled(page, selector) {
  await page.waitForSelector(`${selector}:not([disabled])`, { timeout: 30_000 });
  await page.click(selector);
}

const diskSpec = (sizeMib) => JSON.stringify({
  version: 0,
  metadata: 'explorer test: one disk',
  workloads: [{ name: 'data', kind: { disk: { size_mib: sizeMib } } }],
}, null, 2);

test('the explorer connects to the chain and shows the empty grid', async () => {
  const page = await newPage('alice');
  const start = Date.now();
  await page.goto(url('#/'));
  await waitText(page, sel('count-farms'), /^0$/);
  metrics.dashboardReadyMs = Date.now() - start;
  const paint = await page.evaluate(() => Object.fromEntries(performance.getEntriesByType('paint').map((p) => [p.name, Math.round(p.startTime)])));
  metrics.firstPaintMs = paint['first-paint'];
  metrics.firstContentfulPaintMs = paint['first-contentful-paint'];
  assert.match(await page.$eval(sel('connection'), (el) => el.textContent), /#\d+/);
  await shot(page, '01-dashboard-empty');
});

test('a farmer creates a farm and adds a public IP in the UI', async () => {
  const page = ctx.alice.page;
  // The node's account needs fees for registering; //Ferdie funds it while the farm is created.
  const funding = submitInBlock(api, api.tx.balances.transferKeepAlive(k.node.address, 100n * UNIT), k.ferdie);
  await go(page, '#/farmer');
  await selectAccount(page, '//Dave');
  await setValue(page, sel('farm-name'), 'ui-farm');
  await clickEnabled(page, sel('create-farm'));
  await waitText(page, sel('farm-title'), /Farm \d+: ui-farm/);
  s.farmId = Number(/#\/farm\/(\d+)/.exec(page.url())[1]);
  assert.equal((await api.query.grid.farms(s.farmId)).unwrap().owner.toString(), k.dave.address);

  await page.waitForSelector(sel('add-ip-form'));
  await setValue(page, sel('ip-input'), '185.69.166.10/24');
  await setValue(page, sel('gw-input'), '185.69.166.1');
  await page.click(sel('add-ip'));
  await waitText(page, sel('farm-ips'), /185\.69\.166\.10\/24.*185\.69\.166\.1.*free/);
  await shot(page, '02-farm-with-ip');
  // The node may join only with the farmer's consent.
  await setValue(page, sel('node-account-input'), k.node.address);
  await clickEnabled(page, sel('authorize-node'));
  await waitUntil('the node authorized', 60_000, async () =>
    (await api.query.grid.nodeAuthorizations(s.farmId, k.node.address)).isSome || undefined);
  await funding;
});

test('a node joins the farm and the explorer shows it online', async () => {
  const bin = executorBinary();
  if (bin) {
    s.accessPort = await freePort();
    executor = startExecutor(bin, {
      url: chain.url, farmId: s.farmId, dir, accountSeedHex: s.nodeSeed.toString('hex'), boxSecretHex: s.boxSecret,
      accessPort: s.accessPort,
    });
    metrics.node = 'zos-executor --no-vm';
  } else {
    // No executor built: the test registers the node and heartbeats from the node's key.
    const capacity = { cru: 2, mru: 4n * GIB, sru: 50n * GIB, hru: 0 };
    const location = { city: 'Ghent', country: 'Belgium', latitude: 51_054_300, longitude: 3_717_400 };
    await submitInBlock(api, api.tx.grid.registerNode(s.farmId, capacity, s.boxPublic, location, null, 'v0.1.0'), k.node);
    await submitInBlock(api, api.tx.grid.heartbeat(), k.node);
    metrics.node = 'registered by the test (no executor binary)';
  }
  s.nodeId = await waitUntil('the node registered', 120_000, async () => {
    if (executor?.exited() != null) throw new Error(`executor exited:\n${tail(executor.logPath)}`);
    const id = await api.query.grid.nodeIdByAccount(k.node.address);
    return id.isSome ? id.unwrap().toNumber() : null;
  });
  const page = ctx.alice.page;
  await go(page, `#/node/${s.nodeId}`);
  await waitText(page, sel('node-status'), /^online$/, 90_000);
  await page.waitForSelector(sel('node-capacity'));
  await shot(page, '03-node');
  await go(page, `#/farm/${s.farmId}`);
  await waitText(page, sel('farm-nodes'), new RegExp(`node ${s.nodeId}.*online`));
  await shot(page, '04-farm-with-node');
});

test('a bad spec is caught before sending, and the chain refuses it by error name', async () => {
  const page = ctx.alice.page;
  await go(page, `#/deploy?node=${s.nodeId}`);
  await selectAccount(page, '//Alice');
  await page.waitForSelector(sel('spec-editor'));
  await setValue(page, sel('spec-editor'), diskSpec(0));
  await page.waitForSelector(`${sel('spec-check')}[data-result="DiskSizeOutOfRange"]`);
  assert.match(await page.$eval(sel('spec-check'), (el) => el.textContent), /deployments\.InvalidSpec\(DiskSizeOutOfRange\)/);
  assert.ok(await page.$eval(sel('submit-spec'), (el) => el.disabled), 'the local check blocks sending');
  // Sent anyway, the chain answers with the same rule, decoded from the metadata.
  await page.click(sel('skip-checks'));
  await clickEnabled(page, sel('submit-spec'));
  await page.waitForSelector(sel('tx-error'), { timeout: 60_000 });
  const error = await page.$eval(sel('tx-error'), (el) => ({ name: el.dataset.error, text: el.textContent }));
  assert.equal(error.name, 'deployments.InvalidSpec(DiskSizeOutOfRange)');
  assert.match(error.text, /The spec breaks a rule/);
  assert.match(error.text, /Disk size must be within/);
  assert.doesNotMatch(error.text, /Module|index|0x/);
  await shot(page, '05-deploy-bad-spec-chain-error');
});

test('//Alice creates a 2-of-2 contract in the UI', async () => {
  const page = ctx.alice.page;
  await go(page, '#/');
  await go(page, `#/deploy?node=${s.nodeId}`);
  await page.waitForSelector(sel('spec-editor'));
  await setValue(page, sel('spec-editor'), diskSpec(1024));
  await page.waitForSelector(`${sel('spec-check')}[data-result="ok"]`);
  // The required resources are shown against the node's free capacity.
  await waitText(page, sel('required'), /SSD1 GiB50 GiB/);
  const shownHash = await page.$eval(sel('spec-hash'), (el) => el.textContent);
  const spec = { version: 0, metadata: 'explorer test: one disk', workloads: [{ name: 'data', kind: { Disk: { sizeMib: 1024 } } }] };
  s.hash = blake2AsHex(api.createType('ZosPrimitivesSpecDeploymentSpec', spec).toU8a(), 256);
  assert.equal(shownHash, s.hash, 'the editor shows the hash polkadot.js computes');

  await page.waitForFunction((q, a) => document.querySelector(q)?.value === a, { polling: 100, timeout: 10_000 }, sel('signer-0'), k.alice.address);
  await page.click(sel('required-0'));
  await page.click(sel('add-signer'));
  await setValue(page, sel('signer-1'), k.bob.address);
  await page.click(sel('required-1'));
  await setValue(page, sel('threshold'), '2');
  await shot(page, '06-deploy-editor');
  await clickEnabled(page, sel('submit-spec'));
  await waitText(page, sel('contract-state'), /^PendingApproval$/, 60_000);
  s.contractId = Number(/#\/contract\/(\d+)/.exec(page.url())[1]);
  assert.equal(await page.$eval(sel('proposal-hash'), (el) => el.textContent), s.hash);
  await page.waitForSelector(sel('hash-verified'));
  assert.match(await page.$eval(sel('approved-weight'), (el) => el.textContent), /^1 of 2/);
  const contract = (await api.query.deployments.contracts(s.contractId)).unwrap();
  assert.equal(contract.owner.toString(), k.alice.address);
  assert.deepEqual(contract.signers.map((x) => [x.account.toString(), x.weight.toNumber(), x.required.isTrue]),
    [[k.alice.address, 1, true], [k.bob.address, 1, true]]);
  assert.equal(contract.threshold.toNumber(), 2);
  await shot(page, '07-contract-pending');
});

test('//Bob approves in a second browser context and the contract becomes Active', async () => {
  const page = await newPage('bob');
  await page.goto(url(`#/contract/${s.contractId}`));
  await selectAccount(page, '//Bob');
  await page.waitForSelector(sel('proposal-spec'));
  assert.match(await page.$eval(sel('proposal-spec'), (el) => el.textContent), /"size_mib": 1024/);
  await page.waitForSelector(sel('hash-verified'));
  await shot(page, '08-contract-bob-before-approval');
  await clickEnabled(page, sel('approve'));
  const state = await waitText(page, sel('contract-state'), /^(Active|Deployed)$/, 60_000);
  metrics.activeAfterApprovalState = state;
  const contract = (await api.query.deployments.contracts(s.contractId)).unwrap();
  assert.ok(['Active', 'Deployed'].includes(contract.state.type));
  // Alice's page follows the chain on its own.
  await waitText(ctx.alice.page, sel('contract-state'), /^(Active|Deployed)$/, 30_000);
  await shot(page, '09-contract-active');
});

test('the node reports the deployment: Deployed', async () => {
  if (!executor) {
    const reports = [{ name: 'data', result: 'Ok' }];
    await submitInBlock(api, api.tx.deployments.reportDeployment(s.contractId, 0, reports), k.node);
  }
  const page = ctx.bob.page;
  // The executor acts on finalized blocks: activation, finality, then its report.
  await waitText(page, sel('contract-state'), /^Deployed$/, 120_000);
  await page.waitForSelector(sel('deployment-report'));
  assert.match(await page.$eval(sel('deployment-report'), (el) => el.textContent), /data: ok/);
  await shot(page, '10-contract-deployed');
});

test('the console: a signer\'s signed request reaches the node, a stranger\'s is refused', async () => {
  if (!executor) return; // no node serves consoles without the executor binary
  const page = ctx.bob.page;
  await go(page, `#/contract/${s.contractId}`);
  await page.waitForSelector(sel('console-url'));
  await setValue(page, sel('console-url'), `http://127.0.0.1:${s.accessPort}`);
  await clickEnabled(page, sel('console-read'));
  // Signed by //Bob, accepted: the node answers that this disk-only contract runs no VM.
  await waitText(page, sel('console-error'), /\(404\).*runs no VM on this node/, 30_000);
  const stranger = await newPage('stranger');
  await stranger.goto(url(`#/contract/${s.contractId}`));
  await selectAccount(stranger, '//Charlie');
  await stranger.waitForSelector(sel('console-url'));
  await setValue(stranger, sel('console-url'), `http://127.0.0.1:${s.accessPort}`);
  await clickEnabled(stranger, sel('console-read'));
  await waitText(stranger, sel('console-error'), /\(403\).*not a signer of contract/, 30_000);
  await ctx.stranger.context.close();
});

test('every page renders and links the objects', async () => {
  const page = ctx.alice.page;
  await go(page, '#/');
  await waitText(page, sel('count-farms'), /^1$/);
  await waitText(page, sel('count-nodes'), /^1 \/ 1$/);
  await waitText(page, sel('count-contracts'), /^1$/);
  await page.waitForSelector(sel('grid-capacity'));
  await shot(page, '11-dashboard');

  await go(page, '#/farms');
  await waitText(page, sel(`farm-row-${s.farmId}`), /ui-farm/);
  await shot(page, '12-farms');

  await go(page, '#/nodes');
  await waitText(page, sel(`node-row-${s.nodeId}`), /online/);
  await shot(page, '13-nodes');

  await go(page, `#/node/${s.nodeId}`);
  await waitText(page, sel('node-contracts'), new RegExp(`contract ${s.contractId}`));
  await page.waitForSelector(sel('node-uptime'));
  await shot(page, '14-node-with-contract');

  await go(page, '#/contracts');
  await waitText(page, sel(`contract-row-${s.contractId}`), /Deployed/);
  await shot(page, '15-contracts');

  // Finalized events, live: the activation shows up once its block is finalized.
  await go(page, '#/events');
  await page.waitForSelector('[data-event="deployments.ContractActivated"]', { timeout: 60_000 });
  await page.waitForSelector('[data-event="grid.FarmCreated"]');
  await shot(page, '16-events');

  await go(page, `#/account/${k.alice.address}`);
  await page.waitForSelector(sel(`contract-row-${s.contractId}`));
  await shot(page, '17-account');

  await go(page, '#/farmer');
  await shot(page, '18-farmer');

  // Search by id: contract, node and farm 1 all exist.
  await search(page, String(s.contractId));
  await waitText(page, sel('search-results'), /contract/);
  await shot(page, '19-search');
  // Search by account: straight to its page.
  await search(page, k.bob.address);
  await waitText(page, sel('account-address'), new RegExp(k.bob.address));
});

test(`${SEEDED} contracts are seeded on the chain`, async () => {
  // //Eve runs a node of her own farm and creates 1-of-1 disk-only contracts on it: active at
  // once, in a few blocks of utility.batchAll.
  const alice = ctx.alice.page;
  await go(alice, `#/contract/${s.contractId}`);
  const { publicKey } = generateKeyPairSync('x25519');
  const spec = { version: 0, metadata: 'explorer test: seeded', workloads: [{ name: 'data', kind: { Disk: { sizeMib: 1 } } }] };
  const start = Date.now();
  const head = (await api.rpc.chain.getHeader()).number.toNumber();
  const seeded = await seedContracts(api, k.eve, {
    count: SEEDED,
    farmName: 'load-farm',
    boxKey: `0x${Buffer.from(publicKey.export({ format: 'jwk' }).x, 'base64url').toString('hex')}`,
    spec,
    capacity: { cru: 2, mru: 4n * GIB, sru: 50n * GIB, hru: 0 },
    location: { city: 'Ghent', country: 'Belgium', latitude: 51_054_300, longitude: 3_717_400 },
  });
  metrics.with1000Contracts = {
    seeded: seeded.ids.length,
    seedSeconds: Math.round((Date.now() - start) / 100) / 10,
    seedBlocks: (await api.rpc.chain.getHeader()).number.toNumber() - head,
    seedBatches: `${seeded.batches} batchAll of up to ${seeded.perBatch} creates`,
  };
  assert.equal(seeded.ids.length, SEEDED);
  s.seeded = { ...seeded, hash: blake2AsHex(api.createType('ZosPrimitivesSpecDeploymentSpec', spec).toU8a(), 256) };
  const sample = (await api.query.deployments.contracts(seeded.ids[SEEDED / 2])).unwrap();
  assert.equal(sample.state.type, 'Active');
  assert.equal(sample.owner.toString(), k.eve.address);
  s.contractsOnChain = (await api.query.deployments.contracts.keys()).length;
  assert.equal(s.contractsOnChain, SEEDED + 1);
  // The pages already open read the seeded blocks' events once they are finalized: the timings
  // start after that, with the browser otherwise idle.
  await go(alice, '#/events');
  await page$(alice, `[data-event="deployments.ContractActivated"] a[href="#/contract/${seeded.ids.at(-1)}"]`, 90_000);
  await go(alice, `#/contract/${s.contractId}`);
  await waitText(alice, sel('contract-state'), /^Deployed$/);
  await waitText(ctx.bob.page, sel('contract-state'), /^Deployed$/);
  metrics.with1000Contracts.seedFinalizedSeconds = Math.round((Date.now() - start) / 100) / 10;
});

test(`timings with ${SEEDED} contracts: a contract link in a fresh browser, again, the dashboard`, async () => {
  const m = metrics.with1000Contracts;
  const paints = (page) => page.evaluate(() => Object.fromEntries(performance.getEntriesByType('paint').map((p) => [p.name, Math.round(p.startTime)])));
  // Where a page load's time goes (ms after navigation): scripts run, connected (metadata and
  // the first head), the page's first data in.
  const phases = (page) => page.evaluate(() => {
    const at = (name) => Math.round(performance.getEntriesByName(name)[0]?.startTime ?? -1);
    return {
      domContentLoaded: Math.round(performance.getEntriesByType('navigation')[0]?.domContentLoadedEventEnd ?? -1),
      connected: at('zos:connected'),
      pageData: at('zos:page-data'),
    };
  });
  /** A page load of `route` in `context` until `selector`'s text matches `re`: [ms, page]. */
  const load = async (context, route, selector, re) => {
    const page = await context.newPage();
    await page.setViewport({ width: 1280, height: 900 });
    const start = Date.now();
    await page.goto(url(route));
    await waitText(page, selector, re, 30_000, 'mutation');
    return [Date.now() - start, page];
  };
  /** The same within the loaded app (a link followed): ms. */
  const follow = async (page, route, selector, re) => {
    const start = Date.now();
    await page.evaluate((r) => { location.hash = r; }, route);
    await waitText(page, selector, re, 30_000, 'mutation');
    return Date.now() - start;
  };
  const id = s.seeded.ids[SEEDED / 2];
  const all = new RegExp(`^${s.contractsOnChain}$`);
  m.loadAverage1min = Math.round(loadavg()[0] * 100) / 100;

  // A fresh browser context opens a seeded contract's link: nothing cached.
  const context = await browser.createBrowserContext();
  let page;
  [m.contractPageColdMs, page] = await load(context, `#/contract/${id}`, sel('contract-state'), /^Active$/);
  const paint = await paints(page);
  m.firstPaintMs = paint['first-paint'];
  m.firstContentfulPaintMs = paint['first-contentful-paint'];
  m.contractPageColdPhases = await phases(page);
  // The page shows the seeded contract as the chain has it.
  assert.match(await page.$eval('main dl', (el) => el.textContent), new RegExp(`${k.eve.address}[\\s\\S]*node ${s.seeded.nodeId}`));
  assert.equal(await page.$eval(sel('active-hash'), (el) => el.textContent), s.seeded.hash);
  await page.waitForSelector(sel('active-spec'));
  assert.match(await page.$eval(sel('active-spec'), (el) => el.textContent), /"size_mib": 1\b/);
  await shot(page, '20-contract-1000-fresh');
  await page.close();

  // The same link again in the same browser: the metadata and the files are kept.
  [m.contractPageWarmMs, page] = await load(context, `#/contract/${id}`, sel('contract-state'), /^Active$/);
  m.contractPageWarmPhases = await phases(page);
  await page.close();

  // The dashboard counts every contract by state.
  [m.dashboardWarmMs, page] = await load(context, '#/', sel('count-contracts'), all);
  const cards = await page.$eval('.cards', (el) => el.textContent);
  assert.match(cards, new RegExp(`contracts${SEEDED} Active, 1 Deployed|contracts1 Deployed, ${SEEDED} Active`));
  assert.equal(await page.$eval(sel('count-farms'), (el) => el.textContent), '2');
  assert.equal(await page.$eval(sel('count-nodes'), (el) => el.textContent), '2 / 2');
  await shot(page, '20-dashboard-1000');

  // Within the app: the contracts list has a row for each, the seeded node lists its contracts.
  m.contractsListInAppMs = await follow(page, '#/contracts', sel(`contract-row-${s.seeded.ids.at(-1)}`), /Active/);
  assert.equal(await page.$$eval('[data-testid^="contract-row-"]', (rows) => rows.length), s.contractsOnChain);
  await page.waitForSelector(sel(`contract-row-${s.contractId}`));
  m.nodePageInAppMs = await follow(page, `#/node/${s.seeded.nodeId}`, 'main', new RegExp(`Contracts \\(${SEEDED}\\)`));
  await waitText(page, sel('node-contracts'), new RegExp(`contract ${s.seeded.ids[0]} Active[\\s\\S]*contract ${s.seeded.ids.at(-1)} Active`));
  await context.close();

  // The dashboard in a fresh browser context.
  const fresh = await browser.createBrowserContext();
  [m.dashboardColdMs, page] = await load(fresh, '#/', sel('count-contracts'), all);
  m.dashboardFirstPaintMs = (await paints(page))['first-paint'];
  m.dashboardColdPhases = await phases(page);
  await fresh.close();

  const sizes = JSON.parse(readFileSync(join(here, 'dist', 'sizes.json'), 'utf8'));
  metrics.bundleGzipKiB = Math.round(sizes.total.gzip / 102.4) / 10;
  metrics.bundleRawKiB = Math.round(sizes.total.raw / 102.4) / 10;
  assert.ok(sizes.total.gzip < 500 * 1024, `bundle ${metrics.bundleGzipKiB} KiB gzip`);
  console.log(`explorer metrics: ${JSON.stringify(metrics)}`);
});

test('//Alice proposes an update; //Bob sees the diff against the active spec and approves', async () => {
  const alice = ctx.alice.page;
  await go(alice, `#/contract/${s.contractId}`);
  await selectAccount(alice, '//Alice');
  await clickEnabled(alice, sel('propose-update'));
  await page$(alice, sel('spec-editor'));
  // The editor starts from the active spec with the next version.
  await page$(alice, `${sel('spec-check')}[data-result="ok"]`);
  assert.match(await alice.$eval(sel('spec-editor'), (el) => el.value), /"version": 1,[\s\S]*"size_mib": 1024/);
  await setValue(alice, sel('spec-editor'), diskSpec(2048).replace('"version": 0', '"version": 1'));
  await page$(alice, `${sel('spec-check')}[data-result="ok"]`);
  await clickEnabled(alice, sel('submit-spec'));
  await waitText(alice, sel('proposal'), /Pending proposal: deploy version 1/, 60_000);

  const bob = ctx.bob.page;
  await waitText(bob, sel('proposal-diff'), /-\s+"size_mib": 1024[\s\S]*\+\s+"size_mib": 2048/, 30_000);
  await bob.waitForSelector(sel('hash-verified'));
  await shot(bob, '21-contract-update-diff');
  await clickEnabled(bob, sel('approve'));
  await waitText(bob, sel('active-hash'), /^0x/, 30_000);
  await waitUntil('version 1 active', 30_000, async () =>
    (await api.query.deployments.contracts(s.contractId)).unwrap().active.unwrap().version.toNumber() === 1);
  await waitText(bob, 'main', /version 1, hash/, 30_000);
  await page$(bob, sel('no-proposal'));
});

test('billing: the node\'s consumption reports show as charges over time', async () => {
  if (!executor) return; // only the executor reports consumption
  const page = ctx.bob.page;
  await page$(page, sel('billing'), 120_000);
  await page$(page, `svg${sel('charges-chart')}`, 120_000);
  assert.match(await page.$eval(sel('debt'), (el) => el.textContent), /ZGT/);
  await shot(page, '22-contract-billing');
});

test('//Bob proposes to cancel, //Alice approves: the contract ends', async () => {
  const bob = ctx.bob.page;
  await clickEnabled(bob, sel('propose-cancel'));
  await waitText(bob, sel('proposal'), /Pending proposal: cancel the contract/, 60_000);
  const alice = ctx.alice.page;
  await go(alice, `#/contract/${s.contractId}`);
  await page$(alice, sel('hash-verified'));
  await shot(alice, '23-contract-cancel-proposal');
  await clickEnabled(alice, sel('approve'));
  await waitUntil('the contract removed', 30_000, async () => (await api.query.deployments.contracts(s.contractId)).isNone);
  // Once the block is finalized, its events tell how it ended.
  await waitText(alice, sel('not-found'), /Cancelled at block \d+ \(Signers\)/, 60_000);
  await shot(alice, '24-contract-cancelled');
});

test('an account of the browser extension signs (an injected extension holding //Charlie)', async () => {
  k.charlie = new Keyring({ type: 'sr25519' }).addFromUri('//Charlie');
  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  await page.setViewport({ width: 1280, height: 900 });
  // What the polkadot.js extension injects: `injectedWeb3[name].enable()` giving accounts and a
  // signer. The key stays in the test process; the page asks it to sign each payload.
  await page.exposeFunction('zosTestSign', (payload) =>
    api.registry.createType('ExtrinsicPayload', payload, { version: payload.version }).sign(k.charlie).signature);
  await page.evaluateOnNewDocument((address) => {
    window.injectedWeb3 = {
      'polkadot-js': {
        version: 'test',
        enable: async () => ({
          accounts: { get: async () => [{ address, name: 'Charlie (extension)', type: 'sr25519' }], subscribe: () => () => {} },
          signer: {
            signPayload: async (payload) => ({ id: 1, signature: await window.zosTestSign(payload) }),
          },
        }),
      },
    };
  }, k.charlie.address);
  await page.goto(url('#/farmer'));
  await page.waitForSelector(sel('connection'));
  await page.click(sel('enable-extension'));
  await selectAccount(page, 'Charlie (extension)');
  assert.equal(await page.$(sel('dev-badge')), null, 'an extension account is not marked as a dev key');
  await setValue(page, sel('farm-name'), 'extension-farm');
  await clickEnabled(page, sel('create-farm'));
  await waitText(page, sel('farm-title'), /Farm \d+: extension-farm/, 60_000);
  const farmId = Number(/#\/farm\/(\d+)/.exec(page.url())[1]);
  assert.equal((await api.query.grid.farms(farmId)).unwrap().owner.toString(), k.charlie.address);
  await shot(page, '25-extension-signed-farm');
  await context.close();
});

test('a required signer rejects a new contract in the UI: it ends as Rejected', async () => {
  const spec = { version: 0, metadata: 'explorer test: rejected', workloads: [{ name: 'data', kind: { Disk: { sizeMib: 64 } } }] };
  const signers = [k.alice, k.bob].map((x) => ({ account: x.address, weight: 1, required: true }));
  const events = await submitInBlock(api, api.tx.deployments.create(s.nodeId, spec, signers, 2), k.alice);
  const id = events.find((e) => e.section === 'deployments' && e.method === 'ContractCreated').data.contract.toNumber();
  const bob = ctx.bob.page;
  await go(bob, `#/contract/${id}`);
  await waitText(bob, sel('contract-state'), /^PendingApproval$/);
  await page$(bob, sel('hash-verified'));
  await clickEnabled(bob, sel('reject'));
  await waitUntil('the contract removed', 30_000, async () => (await api.query.deployments.contracts(id)).isNone);
  await waitText(bob, sel('not-found'), /Cancelled at block \d+ \(Rejected\)/, 60_000);
  await shot(bob, '26-contract-rejected');
});

async function page$(page, selector, timeout = 30_000) {
  return page.waitForSelector(selector, { timeout });
}
