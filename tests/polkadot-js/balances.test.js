// Chain basics through polkadot.js: properties, a finalized transfer, a readable module error.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Keyring } from '@polkadot/keyring';
import { cryptoWaitReady } from '@polkadot/util-crypto';
import { startDevChain, submitFinalized } from './lib/chain.js';

let chain;
let alice;
let bob;

before(async () => {
  await cryptoWaitReady();
  chain = await startDevChain();
  const keyring = new Keyring({ type: 'sr25519' });
  alice = keyring.addFromUri('//Alice');
  bob = keyring.addFromUri('//Bob');
});

after(async () => {
  await chain?.stop();
});

test('chain properties are what wallets need', async () => {
  const props = chain.api.registry.getChainProperties();
  assert.equal(props.ss58Format.unwrap().toNumber(), 42);
  assert.deepEqual(props.tokenSymbol.unwrap().map((s) => s.toString()), ['ZGT']);
  assert.deepEqual(props.tokenDecimals.unwrap().map((d) => d.toNumber()), [12]);
});

test('a transfer signed by polkadot.js is finalized and moves funds', async () => {
  const { api } = chain;
  const before = (await api.query.system.account(bob.address)).data.free.toBigInt();
  const amount = 5_000_000_000_000n;
  const events = await submitFinalized(api, api.tx.balances.transferKeepAlive(bob.address, amount), alice);
  assert.ok(events.some((e) => api.events.balances.Transfer.is(e)), 'Balances.Transfer emitted');
  const afterBal = (await api.query.system.account(bob.address)).data.free.toBigInt();
  assert.equal(afterBal - before, amount);
});

test('a failing call surfaces the module error name from metadata', async () => {
  const { api } = chain;
  // Only the sudo key (Alice) may use sudo: Bob gets the pallet's typed error.
  await assert.rejects(
    submitFinalized(api, api.tx.sudo.sudo(api.tx.system.remark('0x00')), bob),
    /sudo\.RequireSudo: /,
  );
});
