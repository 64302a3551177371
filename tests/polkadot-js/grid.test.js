// The grid as its users drive it, signed by polkadot.js from the runtime metadata alone: a farmer
// sets up a farm, a node registers with its own key, a deployer and two co-signers run a 2-of-3
// contract through its whole life, the node reports deployment and consumption, and each pallet
// turns a bad call into its error name.
//
// The tests run in order and share one dev chain: each step needs the state the previous built.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Keyring } from '@polkadot/keyring';
import { cryptoWaitReady } from '@polkadot/util-crypto';
import { startDevChain, submitFinalized, submitFinalizedAt } from './lib/chain.js';
import {
  UNIT, GIB, typeName, specHash, cancelHash, treasuryAddress, newNodeIdentity, nodeDescription,
  publicIp, demoSpec, eventsNamed, oneEvent, freeBalance, field,
} from './lib/grid.js';

let chain;
let api;
const k = {}; // keys by role
const s = {}; // state carried from step to step

before(async () => {
  await cryptoWaitReady();
  chain = await startDevChain();
  api = chain.api;
  const keyring = new Keyring({ type: 'sr25519' });
  k.owner = keyring.addFromUri('//Alice'); // deployer, signer 1
  k.bob = keyring.addFromUri('//Bob'); // signer 2
  k.charlie = keyring.addFromUri('//Charlie'); // signer 3
  k.farmer = keyring.addFromUri('//Dave');
  k.funder = keyring.addFromUri('//Eve');
  k.other = keyring.addFromUri('//Ferdie');
  const node = newNodeIdentity();
  k.node = node.account;
  s.boxKey = node.boxKey;
});

after(async () => {
  await chain?.stop();
});

/** Runs `promise`, expecting it to fail with module error `section.name`; returns the error. */
async function expectModuleError(promise, section, name) {
  const err = await promise.then(
    () => assert.fail(`expected ${section}.${name}, the call succeeded`),
    (e) => e,
  );
  assert.match(err.message, new RegExp(`^${section}\\.${name}: `));
  assert.ok(err.dispatchError?.isModule, 'a module error');
  assert.ok(api.errors[section][name].is(err.dispatchError.asModule), `api.errors.${section}.${name}`);
  return err;
}

/** What `address` has on hold for `reason` of `pallet` (e.g. Grid, FarmDeposit). */
async function heldFor(address, pallet, reason) {
  const holds = await api.query.balances.holds(address);
  return holds
    .filter((h) => h.id.type === pallet && h.id.value.type === reason)
    .reduce((sum, h) => sum + h.amount.toBigInt(), 0n);
}

test('the pallets, their calls and their types come from the metadata', () => {
  for (const call of ['createFarm', 'addFarmIp', 'authorizeNode', 'registerNode', 'heartbeat']) {
    assert.equal(typeof api.tx.grid[call], 'function', `grid.${call}`);
  }
  for (const call of ['create', 'approve', 'proposeCancel', 'reportDeployment']) {
    assert.equal(typeof api.tx.deployments[call], 'function', `deployments.${call}`);
  }
  assert.equal(typeof api.tx.billing.reportConsumption, 'function');
  assert.equal(typeName(api, 'zos_primitives::spec::DeploymentSpec'), 'ZosPrimitivesSpecDeploymentSpec');
  assert.equal(api.consts.billing.maxWindowSecs.toNumber(), 3600);
});

test('a farmer creates a farm and adds public IPs', async () => {
  // The node key needs fees for its first calls; funding it runs alongside the farm's creation.
  const [fundEvents, farmEvents] = await Promise.all([
    submitFinalized(api, api.tx.balances.transferKeepAlive(k.node.address, 10n * UNIT), k.funder),
    submitFinalized(api, api.tx.grid.createFarm('Ghent-Farm-1'), k.farmer),
  ]);
  oneEvent(fundEvents, 'balances', 'Transfer');
  const created = oneEvent(farmEvents, 'grid', 'FarmCreated');
  s.farmId = created.data.farmId.toNumber();
  assert.equal(created.data.owner.toString(), k.farmer.address);
  assert.equal(created.data.name.toUtf8(), 'Ghent-Farm-1');

  for (const octet of [10, 11]) {
    const events = await submitFinalized(api, api.tx.grid.addFarmIp(s.farmId, publicIp(octet)), k.farmer);
    const added = oneEvent(events, 'grid', 'FarmIpAdded');
    assert.equal(added.data.farmId.toNumber(), s.farmId);
    assert.deepEqual([...added.data.ip.ip.ip], [185, 69, 166, octet]);
  }
  const farm = (await api.query.grid.farms(s.farmId)).unwrap();
  assert.equal(farm.owner.toString(), k.farmer.address);
  assert.equal(farm.publicIps.length, 2);
  assert.ok(farm.publicIps.every((e) => e.assigned.isNone));
  assert.equal((await api.query.grid.farmIdByName('ghent-farm-1')).unwrap().toNumber(), s.farmId);

  // The farm and each pool address hold a deposit on the farmer's account.
  assert.equal(await heldFor(k.farmer.address, 'Grid', 'FarmDeposit'), api.consts.grid.farmDeposit.toBigInt());
  assert.equal(await heldFor(k.farmer.address, 'Grid', 'FarmIpDeposit'), 2n * api.consts.grid.farmIpDeposit.toBigInt());
  const record = (await api.query.grid.deposits({ Farm: s.farmId })).unwrap();
  assert.equal(record.depositor.toString(), k.farmer.address);
});

test('grid: a taken farm name (any case) fails with grid.FarmNameTaken', async () => {
  await expectModuleError(
    submitFinalized(api, api.tx.grid.createFarm('ghent-farm-1'), k.other),
    'grid', 'FarmNameTaken',
  );
});

test('a node joins a farm only with the farm owner\'s consent: grid.NodeNotAuthorized', async () => {
  const d = nodeDescription(s.boxKey);
  await expectModuleError(
    submitFinalized(
      api,
      api.tx.grid.registerNode(s.farmId, d.capacity, d.boxKey, d.location, d.publicConfig, d.executorVersion),
      k.node,
    ),
    'grid', 'NodeNotAuthorized',
  );
  await expectModuleError(
    submitFinalized(api, api.tx.grid.authorizeNode(s.farmId, k.node.address), k.other),
    'grid', 'NotFarmOwner',
  );
  const events = await submitFinalized(api, api.tx.grid.authorizeNode(s.farmId, k.node.address), k.farmer);
  oneEvent(events, 'grid', 'NodeAuthorized');
  // The farmer pays the node's deposit, so the node needs no funds to join.
  assert.equal(await heldFor(k.farmer.address, 'Grid', 'NodeDeposit'), api.consts.grid.nodeDeposit.toBigInt());
});

test('a node registers from its own key and heartbeats for free', async () => {
  const d = nodeDescription(s.boxKey);
  const events = await submitFinalized(
    api,
    api.tx.grid.registerNode(s.farmId, d.capacity, d.boxKey, d.location, d.publicConfig, d.executorVersion),
    k.node,
  );
  const registered = oneEvent(events, 'grid', 'NodeRegistered');
  s.nodeId = registered.data.nodeId.toNumber();
  assert.equal(registered.data.farmId.toNumber(), s.farmId);
  assert.equal(registered.data.account.toString(), k.node.address);
  assert.equal((await api.query.grid.nodeIdByAccount(k.node.address)).unwrap().toNumber(), s.nodeId);

  const { events: beat, blockHash } = await submitFinalizedAt(api, api.tx.grid.heartbeat(), k.node);
  const hb = oneEvent(beat, 'grid', 'NodeHeartbeat');
  assert.equal(hb.data.nodeId.toNumber(), s.nodeId);
  const node = (await api.query.grid.nodes(s.nodeId)).unwrap();
  assert.equal(node.lastHeartbeat.unwrap().timestampMs.toBigInt(), hb.data.timestampMs.toBigInt());
  assert.equal(node.capacity.mru.toBigInt(), 16n * GIB);
  assert.equal(node.boxKey.toHex(), s.boxKey);
  // An accepted heartbeat pays no fee.
  const parent = (await api.rpc.chain.getHeader(blockHash)).parentHash;
  assert.equal(await freeBalance(api, k.node.address, blockHash), await freeBalance(api, k.node.address, parent));
});

test('the owner creates a 2-of-3 contract with a spec built in JavaScript', async () => {
  s.spec = demoSpec(0);
  s.hash = specHash(api, s.spec);
  const signers = [k.owner, k.bob, k.charlie].map((key) => ({ account: key.address, weight: 1, required: false }));
  const events = await submitFinalized(api, api.tx.deployments.create(s.nodeId, s.spec, signers, 2), k.owner);

  const created = oneEvent(events, 'deployments', 'ContractCreated');
  s.contractId = created.data.contract.toNumber();
  assert.equal(created.data.owner.toString(), k.owner.address);
  assert.equal(created.data.node.toNumber(), s.nodeId);
  // The deposit is a base plus a price per byte of the SCALE-encoded spec.
  const specLen = BigInt(api.createType(typeName(api, 'zos_primitives::spec::DeploymentSpec'), s.spec).encodedLength);
  assert.equal(created.data.deposit.toBigInt(), UNIT + specLen * (UNIT / 1000n));

  const proposal = oneEvent(events, 'deployments', 'ProposalCreated');
  assert.equal(field(proposal.data, 'hash').toHex(), s.hash, 'the proposal hash is blake2-256 of the spec encoded from metadata');
  assert.ok(proposal.data.kind.isDeploy);
  assert.equal(proposal.data.kind.asDeploy.version.toNumber(), 0);

  const contract = (await api.query.deployments.contracts(s.contractId)).unwrap();
  assert.equal(contract.state.type, 'PendingApproval');
  assert.equal(contract.threshold.toNumber(), 2);
  assert.equal(contract.signers.length, 3);
  const pending = (await api.query.deployments.proposals(s.contractId)).unwrap();
  assert.equal(field(pending, 'hash').toHex(), s.hash);
  assert.deepEqual(pending.approvals.map((a) => a.toString()), [k.owner.address]);
});

test('deployments: approving another spec hash fails with deployments.ProposalHashMismatch', async () => {
  const stale = specHash(api, { ...demoSpec(0), metadata: 'an earlier draft' });
  assert.notEqual(stale, s.hash);
  await expectModuleError(
    submitFinalized(api, api.tx.deployments.approve(s.contractId, stale), k.bob),
    'deployments', 'ProposalHashMismatch',
  );
});

test('a second signer approves by hash and the contract becomes Active', async () => {
  const { events, blockHash } = await submitFinalizedAt(api, api.tx.deployments.approve(s.contractId, s.hash), k.bob);
  const approved = oneEvent(events, 'deployments', 'ProposalApproved');
  assert.equal(approved.data.signer.toString(), k.bob.address);
  assert.equal(approved.data.approvedWeight.toNumber(), 2);
  const activated = oneEvent(events, 'deployments', 'ContractActivated');
  assert.equal(activated.data.contract.toNumber(), s.contractId);
  assert.equal(activated.data.specHash.toHex(), s.hash);
  assert.equal(activated.data.version.toNumber(), 0);
  const reserved = oneEvent(events, 'grid', 'CapacityReserved');
  assert.equal(reserved.data.resources.cru.toNumber(), 2);
  assert.equal(reserved.data.resources.mru.toBigInt(), 2n * GIB);
  assert.equal(reserved.data.resources.sru.toBigInt(), 6n * GIB);
  assert.equal(oneEvent(events, 'grid', 'PublicIpsAssigned').data.ips.length, 1);
  oneEvent(events, 'grid', 'NodeContractStarted');

  const contract = (await api.query.deployments.contracts(s.contractId)).unwrap();
  assert.equal(contract.state.type, 'Active');
  assert.equal(field(contract.active.unwrap(), 'hash').toHex(), s.hash);
  assert.equal(contract.publicIps.length, 1);
  assert.equal(contract.publicIps[0][0].toUtf8(), 'pub');
  assert.ok((await api.query.deployments.proposals(s.contractId)).isNone);
  const stored = (await api.query.deployments.activeSpecs(s.contractId)).unwrap();
  assert.equal(stored.workloads.length, 3);
  assert.equal(stored.workloads[2].kind.asVm.image.source.toUtf8(), s.spec.workloads[2].kind.Vm.image.source);
  s.activationBlock = blockHash;
  s.activatedAtMs = (await (await api.at(blockHash)).query.timestamp.now()).toBigInt();
});

test('the node reports the deployment', async () => {
  const reports = s.spec.workloads.map((w) => ({ name: w.name, result: 'Ok' }));
  const events = await submitFinalized(api, api.tx.deployments.reportDeployment(s.contractId, 0, reports), k.node);
  const reported = oneEvent(events, 'deployments', 'DeploymentReported');
  assert.equal(reported.data.version.toNumber(), 0);
  assert.ok(reported.data.failed.isNone);
  const contract = (await api.query.deployments.contracts(s.contractId)).unwrap();
  assert.equal(contract.state.type, 'Deployed');
});

test('billing: an empty consumption batch fails with billing.EmptyBatch', async () => {
  await expectModuleError(
    submitFinalized(api, api.tx.billing.reportConsumption([]), k.node),
    'billing', 'EmptyBatch',
  );
});

test('the node reports consumption: the owner pays, the farmer and the treasury are paid', async () => {
  // Windows are unix seconds of the chain clock; the first starts at the contract's activation.
  const windowStart = s.activatedAtMs / 1000n + 1n;
  // A window shorter than the chain's minimum must end on its grid: end on the grid.
  const grid = api.consts.billing.minWindowSecs.toBigInt();
  let windowEnd = 0n;
  while (windowEnd <= windowStart) {
    windowEnd = ((await api.query.timestamp.now()).toBigInt() / 1000n / grid) * grid;
    if (windowEnd <= windowStart) await new Promise((resolve) => setTimeout(resolve, 2000));
  }
  const report = {
    contract: s.contractId,
    windowStart,
    windowEnd,
    uptimeSeconds: windowEnd - windowStart,
    publicBytesIn: 1n * GIB,
    publicBytesOut: 40n * GIB,
  };
  const treasury = treasuryAddress(api);
  const { events, blockHash } = await submitFinalizedAt(api, api.tx.billing.reportConsumption([report]), k.node);
  const parent = (await api.rpc.chain.getHeader(blockHash)).parentHash;
  const delta = async (address) =>
    (await freeBalance(api, address, blockHash)) - (await freeBalance(api, address, parent));

  assert.equal(eventsNamed(events, 'billing', 'ReportRejected').length, 0);
  const settled = oneEvent(events, 'billing', 'ReportSettled').data;
  assert.equal(settled.contract.toNumber(), s.contractId);
  assert.equal(settled.windowStart.toBigInt(), windowStart);
  assert.equal(settled.farmOwner.toString(), k.farmer.address);
  const charged = settled.charged.toBigInt();
  const collected = settled.collected.toBigInt();
  const toFarmer = settled.toFarmOwner.toBigInt();
  const toTreasury = settled.toTreasury.toBigInt();
  const burned = settled.burned.toBigInt();
  // 41 GiB of traffic alone costs 0.41 ZGT under the development policy.
  assert.ok(charged >= (41n * UNIT) / 100n, `charged ${charged}`);
  assert.equal(collected, charged);
  assert.equal(settled.debt.toBigInt(), 0n);
  assert.equal(toFarmer + toTreasury + burned, collected);
  assert.equal(toFarmer, (collected * 70n) / 100n);
  assert.equal(burned, (collected * 10n) / 100n);

  assert.equal(await delta(k.owner.address), -collected, 'the owner pays what was collected');
  assert.equal(await delta(k.farmer.address), toFarmer, 'the farmer gets the farm share');
  assert.equal(await delta(treasury), toTreasury, 'the treasury gets its share');
  assert.equal(await delta(k.node.address), 0n, 'an accepted batch is free for the node');

  const billing = (await api.query.billing.contractBillings(s.contractId)).unwrap();
  assert.equal(billing.lastReport.windowEnd.toBigInt(), windowEnd);
  const totals = await api.query.billing.ledgerTotals();
  assert.equal(totals.collected.toBigInt(), collected);
});

test('the signers cancel the contract: propose_cancel, then an approval naming the cancel hash', async () => {
  const proposed = await submitFinalized(api, api.tx.deployments.proposeCancel(s.contractId), k.bob);
  const proposal = oneEvent(proposed, 'deployments', 'ProposalCreated');
  assert.ok(proposal.data.kind.isCancel);
  const hash = cancelHash(s.contractId, 0);
  assert.equal(field(proposal.data, 'hash').toHex(), hash);

  const events = await submitFinalized(api, api.tx.deployments.approve(s.contractId, hash), k.charlie);
  const cancelled = oneEvent(events, 'deployments', 'ContractCancelled');
  assert.equal(cancelled.data.cause.type, 'Signers');
  oneEvent(events, 'grid', 'CapacityReleased');
  oneEvent(events, 'grid', 'PublicIpsReleased');
  oneEvent(events, 'grid', 'NodeContractEnded');
  // Billing stays open for the final window, up to the end time.
  const awaiting = oneEvent(events, 'billing', 'AwaitingFinalReport');
  const endedAt = awaiting.data.endedAt.toBigInt();

  assert.ok((await api.query.deployments.contracts(s.contractId)).isNone);
  const billed = (await api.query.billing.contractBillings(s.contractId)).unwrap();
  const windowStart = billed.lastReport.windowEnd.toBigInt();
  const final = {
    contract: s.contractId, windowStart, windowEnd: endedAt,
    uptimeSeconds: endedAt - windowStart, publicBytesIn: 0, publicBytesOut: 0,
  };
  // A window past the end is refused; the one ending at the end closes billing.
  const late = await submitFinalized(api, api.tx.billing.reportConsumption([{ ...final, windowEnd: endedAt + 1n }]), k.node);
  assert.equal(oneEvent(late, 'billing', 'ReportRejected').data.reason.type, 'AfterContractEnd');
  const closing = await submitFinalized(api, api.tx.billing.reportConsumption([final]), k.node);
  assert.equal(oneEvent(closing, 'billing', 'ReportSettled').data.windowEnd.toBigInt(), endedAt);
  oneEvent(closing, 'billing', 'BillingClosed');
  assert.ok((await api.query.billing.contractBillings(s.contractId)).isNone);
  assert.ok((await api.query.billing.endedContracts(s.contractId)).isNone);
  assert.equal((await api.query.system.account(k.owner.address)).data.reserved.toBigInt(), 0n, 'deposit released');
  const node = (await api.query.grid.nodes(s.nodeId)).unwrap();
  assert.equal(node.activeContracts.toNumber(), 0);
  assert.equal(node.reserved.cru.toNumber(), 0);
  const farm = (await api.query.grid.farms(s.farmId)).unwrap();
  assert.ok(farm.publicIps.every((e) => e.assigned.isNone));
});

test('the farm owner evicts the node: no new contracts, and governance cuts the notice short by removing the farm', async () => {
  const spec = demoSpec(0);
  const one = [{ account: k.owner.address, weight: 1, required: false }];
  await submitFinalized(api, api.tx.grid.heartbeat(), k.node).catch(() => {}); // stay online
  const created = await submitFinalized(api, api.tx.deployments.create(s.nodeId, spec, one, 1), k.owner);
  const contractId = oneEvent(created, 'deployments', 'ContractCreated').data.contract.toNumber();
  oneEvent(created, 'deployments', 'ContractActivated');

  // The farm owner asks: the node runs contracts, so they get the notice period.
  const asked = await submitFinalized(api, api.tx.grid.removeNode(s.nodeId), k.farmer);
  const scheduled = oneEvent(asked, 'grid', 'NodeRemovalScheduled').data;
  assert.equal(scheduled.requestedBy.unwrap().toString(), k.farmer.address);
  assert.ok((await api.query.grid.nodeRemovals(s.nodeId)).isSome);
  await expectModuleError(
    submitFinalized(api, api.tx.deployments.create(s.nodeId, spec, one, 1), k.owner),
    'deployments', 'NodeLeaving',
  );

  // Governance (sudo on the development chain) removes the whole farm now: the farm is frozen,
  // and the next blocks end the node's contracts and remove it.
  const { blockHash } = await submitFinalizedAt(api, api.tx.sudo.sudo(api.tx.grid.forceRemoveFarm(s.farmId)), k.owner);
  assert.ok((await api.query.grid.farmsUnderRemoval.at(blockHash, s.farmId)).isSome, 'the farm is frozen');
  const from = (await api.rpc.chain.getHeader(blockHash)).number.toNumber();
  const deadline = Date.now() + 120_000;
  while ((await api.query.grid.nodes(s.nodeId)).isSome) {
    assert.ok(Date.now() < deadline, 'the node was not removed within 2 minutes');
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
  const to = (await api.rpc.chain.getHeader()).number.toNumber();
  const events = [];
  for (let n = from; n <= to; n += 1) {
    const hash = await api.rpc.chain.getBlockHash(n);
    events.push(...(await api.query.system.events.at(hash)).map((record) => record.event));
  }
  const cancelled = eventsNamed(events, 'deployments', 'ContractCancelled')
    .find((e) => e.data.contract.toNumber() === contractId);
  assert.ok(cancelled, 'the contract was cancelled');
  assert.equal(cancelled.data.cause.type, 'NodeRemoved');
  const removed = eventsNamed(events, 'grid', 'NodeRemoved')[0];
  assert.ok(removed.data.removedBy.isNone, 'removed by governance');
  assert.ok((await api.query.deployments.contracts(contractId)).isNone);
  assert.ok((await api.query.grid.nodeRemovals(s.nodeId)).isNone);
  const farm = (await api.query.grid.farms(s.farmId)).unwrap();
  assert.ok(farm.publicIps.every((e) => e.assigned.isNone), 'the farm IPs are free again');
  assert.equal(await heldFor(k.farmer.address, 'Grid', 'NodeDeposit'), 0n, 'the node deposit is returned');

  // Its nodes gone, the next call removes the farm with its pool.
  const gone = await submitFinalized(api, api.tx.sudo.sudo(api.tx.grid.forceRemoveFarm(s.farmId)), k.owner);
  oneEvent(gone, 'grid', 'FarmForceRemoved');
  assert.ok((await api.query.grid.farms(s.farmId)).isNone);
  assert.ok((await api.query.grid.farmsUnderRemoval(s.farmId)).isNone);
});
