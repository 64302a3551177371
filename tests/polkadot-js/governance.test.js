// Governance through polkadot.js: the council (Alice, Bob, Charlie in every preset) passes a
// motion that changes a pricing policy; a single member or any other account cannot. With five
// members, a majority motion and a two-thirds motion need different numbers of ayes.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Keyring } from '@polkadot/keyring';
import { cryptoWaitReady } from '@polkadot/util-crypto';
import { startDevChain, submitFinalized } from './lib/chain.js';
import { oneEvent } from './lib/grid.js';

let chain;
let api;
const k = {};

before(async () => {
  await cryptoWaitReady();
  chain = await startDevChain();
  api = chain.api;
  const keyring = new Keyring({ type: 'sr25519' });
  for (const name of ['Alice', 'Bob', 'Charlie', 'Dave', 'Eve']) {
    k[name.toLowerCase()] = keyring.addFromUri(`//${name}`);
  }
});

after(async () => {
  await chain?.stop();
});

/** The default policy (id 0, every farm's at creation) with a new price per CU-hour. */
async function repriced(cuHour) {
  const policy = (await api.query.billing.pricingPolicies(0)).unwrap().toJSON();
  return api.tx.billing.setPricingPolicy(0, { ...policy, cuHour });
}

/**
 * A council motion of `call` with `threshold`, voted aye by `voters` (at once: their
 * transactions are independent) and closed; returns the dispatch result of `Executed`.
 */
async function passMotion(call, threshold, voters) {
  const length = call.method.encodedLength;
  const weight = (await call.paymentInfo(k.alice.address)).weight;
  const proposed = oneEvent(
    await submitFinalized(api, api.tx.council.propose(threshold, call, length), k.alice),
    'council', 'Proposed',
  ).data;
  await Promise.all(voters.map((voter) => submitFinalized(
    api, api.tx.council.vote(proposed.proposalHash, proposed.proposalIndex, true), voter,
  )));
  const closed = await submitFinalized(
    api, api.tx.council.close(proposed.proposalHash, proposed.proposalIndex, weight, length), k.charlie,
  );
  return oneEvent(closed, 'council', 'Executed').data.result;
}

test('the council is Alice, Bob and Charlie', async () => {
  const members = (await api.query.council.members()).map((m) => m.toString());
  assert.deepEqual(members.sort(), [k.alice, k.bob, k.charlie].map((x) => x.address).sort());
});

test('a pricing policy cannot be set by a plain account', async () => {
  await assert.rejects(submitFinalized(api, await repriced(1), k.dave), /BadOrigin/);
});

test('one member alone is not the council: a motion of one executes and is refused', async () => {
  const call = await repriced(2);
  const events = await submitFinalized(api, api.tx.council.propose(1, call, call.method.encodedLength), k.alice);
  const executed = oneEvent(events, 'council', 'Executed').data;
  assert.ok(executed.result.isErr, 'one of three is not a majority');
  assert.ok(executed.result.asErr.isBadOrigin);
  const policy = (await api.query.billing.pricingPolicies(0)).unwrap();
  assert.notEqual(policy.cuHour.toBigInt(), 2n);
});

test('a council motion passed by two of three members changes the pricing policy', async () => {
  const price = 123_456_789n;
  const call = await repriced(price);
  const length = call.method.encodedLength;
  const proposed = oneEvent(
    await submitFinalized(api, api.tx.council.propose(2, call, length), k.alice),
    'council', 'Proposed',
  ).data;
  const hash = proposed.proposalHash;
  const index = proposed.proposalIndex;
  // Proposing is not voting: Alice and Bob vote aye.
  for (const voter of [k.alice, k.bob]) {
    await submitFinalized(api, api.tx.council.vote(hash, index, true), voter);
  }
  const weight = (await call.paymentInfo(k.alice.address)).weight;
  const closed = await submitFinalized(api, api.tx.council.close(hash, index, weight, length), k.charlie);
  oneEvent(closed, 'council', 'Approved');
  assert.ok(oneEvent(closed, 'council', 'Executed').data.result.isOk);
  oneEvent(closed, 'billing', 'PricingPolicySet');
  const policy = (await api.query.billing.pricingPolicies(0)).unwrap();
  assert.equal(policy.cuHour.toBigInt(), price);
});

test('the council authorizes a runtime upgrade by a two-thirds motion', async () => {
  const codeHash = `0x${'ab'.repeat(32)}`;
  // Two of three is two thirds: authorized, and `system.applyAuthorizedUpgrade` would apply it.
  const result = await passMotion(api.tx.releases.authorizeRuntimeUpgrade(codeHash), 2, [k.alice, k.bob]);
  assert.ok(result.isOk);
  const authorized = (await api.query.system.authorizedUpgrade()).unwrap();
  assert.equal(authorized.codeHash.toHex(), codeHash);
});

test('the council sets a node OS release per runmode; versions only go up', async () => {
  const release = (patch) => ({
    version: { major: 1, minor: 0, patch },
    manifestBlake3: `0x${'5a'.repeat(32)}`,
    safeToUpgrade: true,
    pilotFarms: [7],
    generalFrom: 1_000,
  });
  // A plain account cannot.
  await assert.rejects(
    submitFinalized(api, api.tx.releases.setNodeRelease('Test', release(1)), k.dave),
    /BadOrigin/,
  );
  assert.ok((await passMotion(api.tx.releases.setNodeRelease('Test', release(1)), 2, [k.alice, k.bob])).isOk);
  const stored = (await api.query.releases.nodeReleases('Test')).unwrap();
  assert.equal(stored.version.patch.toNumber(), 1);
  assert.deepEqual(stored.pilotFarms.toJSON(), [7]);
  assert.ok((await api.query.releases.nodeReleases('Main')).isNone, 'runmodes are separate');
  // The same version again is refused with the pallet's own error.
  const again = await passMotion(api.tx.releases.setNodeRelease('Test', release(1)), 2, [k.alice, k.bob]);
  assert.ok(again.isErr);
  const { section, name } = api.registry.findMetaError(again.asErr.asModule);
  assert.equal(`${section}.${name}`, 'releases.VersionNotNewer');
  // A halt stops the rollout.
  assert.ok((await passMotion(api.tx.releases.haltNodeRelease('Test'), 2, [k.alice, k.bob])).isOk);
  assert.equal((await api.query.releases.nodeReleases('Test')).unwrap().safeToUpgrade.isTrue, false);
});

test('of five members, three are a majority (pricing) but not two thirds (upgrades)', async () => {
  // Sudo (development chain) sets the membership; the council itself could, by two thirds.
  const members = [k.alice, k.bob, k.charlie, k.dave, k.eve].map((x) => x.address);
  await submitFinalized(api, api.tx.sudo.sudo(api.tx.councilMembership.resetMembers(members)), k.alice);
  assert.equal((await api.query.council.members()).length, 5);
  const three = [k.alice, k.bob, k.charlie];

  const price = 987_654_321n;
  assert.ok((await passMotion(await repriced(price), 3, three)).isOk, '3 of 5 is a majority');
  assert.equal((await api.query.billing.pricingPolicies(0)).unwrap().cuHour.toBigInt(), price);

  const codeHash = `0x${'cd'.repeat(32)}`;
  const refused = await passMotion(api.tx.releases.authorizeRuntimeUpgrade(codeHash), 3, three);
  assert.ok(refused.isErr && refused.asErr.isBadOrigin, '3 of 5 is less than two thirds');
  const authorized = (await api.query.system.authorizedUpgrade()).unwrap();
  assert.notEqual(authorized.codeHash.toHex(), codeHash);
});
