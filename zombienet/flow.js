// zombienet js-script: a transfer submitted through one node (the node this step runs on) must be
// finalized and visible through another node (the first argument).
// zombienet provides `zombie.ApiPromise`, `zombie.WsProvider`, `zombie.Keyring`.
async function connect(wsUri) {
  const provider = new zombie.WsProvider(wsUri);
  return zombie.ApiPromise.create({ provider, noInitWarn: true });
}

function finalized(api, tx, signer) {
  return new Promise((resolve, reject) => {
    tx.signAndSend(signer, ({ status, dispatchError }) => {
      if (dispatchError) reject(new Error(dispatchError.toString()));
      else if (status.isFinalized) resolve(status.asFinalized);
    }).catch(reject);
  });
}

async function run(nodeName, networkInfo, args) {
  const other = args[0];
  const submitApi = await connect(networkInfo.nodesByName[nodeName].wsUri);
  const checkApi = await connect(networkInfo.nodesByName[other].wsUri);
  const keyring = new zombie.Keyring({ type: 'sr25519' });
  const alice = keyring.addFromUri('//Alice');
  const dave = keyring.addFromUri('//Dave');

  const before = (await checkApi.query.system.account(dave.address)).data.free.toBigInt();
  const amount = 7_000_000_000_000n;
  const blockHash = await finalized(submitApi, submitApi.tx.balances.transferKeepAlive(dave.address, amount), alice);

  // The other node must know the finalized block and show the new balance at it.
  let seen;
  for (let i = 0; i < 60 && seen === undefined; i++) {
    try {
      const at = await checkApi.at(blockHash);
      seen = (await at.query.system.account(dave.address)).data.free.toBigInt();
    } catch {
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
  await submitApi.disconnect();
  await checkApi.disconnect();
  if (seen === undefined) throw new Error(`${other} never saw finalized block ${blockHash}`);
  if (seen - before !== amount) throw new Error(`${other}: balance moved by ${seen - before}, expected ${amount}`);
  return 1;
}

module.exports = { run };
