// zombienet js-script: the grid flow submitted through one node (the node this step runs on) and
// verified through another (the first argument), at a block that node has finalized.
//
// A farmer creates a farm and adds a public IP, a node registers from its own fresh key and
// heartbeats, the owner creates a 2-of-3 deployment contract whose spec is built here, and a
// second signer approves it by its hash. The other node must then show, at the finalized block
// that activated the contract: the farm, the node, and the contract Active with that spec hash.
//
// Nothing but the runtime metadata is used: no custom types, no custom RPC.
// zombienet provides `zombie.ApiPromise`, `zombie.WsProvider`, `zombie.Keyring`, `zombie.util`
// (@polkadot/util-crypto).
const { generateKeyPairSync, randomBytes } = require('crypto');

const UNIT = 1_000_000_000_000n;
const GIB = 1n << 30n;

async function connect(wsUri) {
  const provider = new zombie.WsProvider(wsUri);
  return zombie.ApiPromise.create({ provider, noInitWarn: true });
}

function log(msg) {
  console.log(`      [grid-flow] ${msg}`);
}

// Resolves with { events, blockHash } once the including block is finalized; a dispatch error
// rejects with its `pallet.Error` name from the metadata.
function finalized(api, tx, signer) {
  return new Promise((resolve, reject) => {
    let unsub;
    tx.signAndSend(signer, ({ status, events, dispatchError }) => {
      if (dispatchError) {
        unsub?.();
        if (dispatchError.isModule) {
          const { section, name } = api.registry.findMetaError(dispatchError.asModule);
          reject(new Error(`${section}.${name}`));
        } else reject(new Error(dispatchError.toString()));
      } else if (status.isFinalized) {
        unsub?.();
        resolve({ events: events.map(({ event }) => event), blockHash: status.asFinalized.toHex() });
      } else if (status.isDropped || status.isInvalid || status.isUsurped) {
        unsub?.();
        reject(new Error(`transaction ${status.type}`));
      }
    }).then((u) => { unsub = u; }, reject);
  });
}

function oneEvent(events, section, method) {
  const found = events.filter((e) => e.section === section && e.method === method);
  if (found.length !== 1) {
    const names = events.map((e) => `${e.section}.${e.method}`).join(', ');
    throw new Error(`expected one ${section}.${method} among: ${names}`);
  }
  return found[0].data;
}

function check(cond, msg) {
  if (!cond) throw new Error(msg);
}

// The registry name of the metadata type at Rust path `path`.
function typeName(api, path) {
  const entry = api.registry.lookup.types.find(
    (t) => t.type.path.map((s) => s.toString()).join('::') === path,
  );
  check(entry, `no type ${path} in the metadata`);
  return api.registry.lookup.getTypeDef(entry.id).lookupName;
}

// A disk, a public IPv4 address and a VM using both: a plain object following the metadata types.
function spec() {
  return {
    version: 0,
    workloads: [
      { name: 'data', kind: { Disk: { sizeMib: 1024 } } },
      { name: 'pub', kind: { PublicIp: { v4: true, v6: false } } },
      {
        name: 'vm',
        kind: {
          Vm: {
            image: { rootHash: `0x${'3c'.repeat(32)}`, source: 'https://hub.grid.example/images/vm.idx' },
            vcpus: 1,
            memoryMib: 1024,
            rootfsMib: 2048,
            mounts: [{ workload: 'data', path: '/data' }],
            env: [],
            entrypoint: '',
            sshKeys: [],
            networks: [],
            publicIp: 'pub',
          },
        },
      },
    ],
    metadata: 'zombienet grid flow',
  };
}

// Waits until `api`'s node has finalized `blockHash`: its finalized head is at or past the
// block's number and its canonical hash at that number is `blockHash`.
async function waitFinalized(api, blockHash, seconds) {
  for (let i = 0; i < seconds; i++) {
    try {
      const header = await api.rpc.chain.getHeader(blockHash);
      const number = header.number.toNumber();
      const head = await api.rpc.chain.getHeader(await api.rpc.chain.getFinalizedHead());
      if (head.number.toNumber() >= number && (await api.rpc.chain.getBlockHash(number)).toHex() === blockHash) {
        return number;
      }
    } catch {
      // not imported yet
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
  throw new Error(`block ${blockHash} not finalized within ${seconds} s`);
}

async function run(nodeName, networkInfo, args) {
  const other = args[0];
  const started = Date.now();
  const step = (msg) => log(`${((Date.now() - started) / 1000).toFixed(1)} s  ${msg}`);
  const api = await connect(networkInfo.nodesByName[nodeName].wsUri);
  const otherApi = await connect(networkInfo.nodesByName[other].wsUri);
  try {
    const keyring = new zombie.Keyring({ type: 'sr25519' });
    const owner = keyring.addFromUri('//Alice');
    const bob = keyring.addFromUri('//Bob');
    const charlie = keyring.addFromUri('//Charlie');
    const farmer = keyring.addFromUri('//Dave');
    const funder = keyring.addFromUri('//Eve');
    // The executor's identity: sr25519 account from a random mini secret, x25519 box key.
    const node = keyring.addFromSeed(randomBytes(32));
    const boxKey = `0x${Buffer.from(generateKeyPairSync('x25519').publicKey.export({ format: 'jwk' }).x, 'base64url').toString('hex')}`;

    const [, farmTx] = await Promise.all([
      finalized(api, api.tx.balances.transferKeepAlive(node.address, 10n * UNIT), funder),
      finalized(api, api.tx.grid.createFarm('zombienet-farm'), farmer),
    ]);
    const farmId = oneEvent(farmTx.events, 'grid', 'FarmCreated').farmId.toNumber();
    step(`farm ${farmId} created by ${farmer.address}; node key funded`);

    const ip = { ip: { ip: [185, 69, 166, 20], prefixLen: 24 }, gateway: [185, 69, 166, 1] };
    oneEvent((await finalized(api, api.tx.grid.addFarmIp(farmId, ip), farmer)).events, 'grid', 'FarmIpAdded');
    step('public IP 185.69.166.20/24 added');

    oneEvent((await finalized(api, api.tx.grid.authorizeNode(farmId, node.address), farmer)).events, 'grid', 'NodeAuthorized');
    step('node account authorized by the farmer');

    const registered = await finalized(
      api,
      api.tx.grid.registerNode(
        farmId,
        { cru: 4, mru: 8n * GIB, sru: 256n * GIB, hru: 0 },
        boxKey,
        { city: 'Ghent', country: 'Belgium', latitude: 51_054_300, longitude: 3_717_400 },
        null,
        'v0.1.0',
      ),
      node,
    );
    const nodeId = oneEvent(registered.events, 'grid', 'NodeRegistered').nodeId.toNumber();
    oneEvent((await finalized(api, api.tx.grid.heartbeat(), node)).events, 'grid', 'NodeHeartbeat');
    step(`node ${nodeId} registered by ${node.address} and heartbeating`);

    const deployment = spec();
    const specType = typeName(api, 'zos_primitives::spec::DeploymentSpec');
    const hash = zombie.util.blake2AsHex(api.createType(specType, deployment).toU8a(), 256);
    const signers = [owner, bob, charlie].map((k) => ({ account: k.address, weight: 1, required: false }));
    const created = await finalized(api, api.tx.deployments.create(nodeId, deployment, signers, 2), owner);
    const contractId = oneEvent(created.events, 'deployments', 'ContractCreated').contract.toNumber();
    // polkadot.js names a Rust field `hash` `hash_` (`.hash` is every codec's own hash).
    const proposed = oneEvent(created.events, 'deployments', 'ProposalCreated').hash_.toHex();
    check(proposed === hash, `proposal hash ${proposed}, spec hash computed here ${hash}`);
    step(`contract ${contractId} created (2 of 3), spec hash ${hash}`);

    const approved = await finalized(api, api.tx.deployments.approve(contractId, hash), bob);
    const activated = oneEvent(approved.events, 'deployments', 'ContractActivated');
    check(activated.specHash.toHex() === hash, 'activated spec hash');
    step(`contract ${contractId} approved by Bob and activated in finalized block ${approved.blockHash}`);

    // Everything again, through the other node, at the block that activated the contract.
    const number = await waitFinalized(otherApi, approved.blockHash, 60);
    const at = await otherApi.at(approved.blockHash);
    const farm = await at.query.grid.farms(farmId);
    check(farm.isSome, `${other}: farm ${farmId} missing`);
    check(farm.unwrap().owner.toString() === farmer.address, `${other}: farm owner`);
    check(farm.unwrap().publicIps.length === 1, `${other}: farm IPs`);
    const nodeRec = await at.query.grid.nodes(nodeId);
    check(nodeRec.isSome, `${other}: node ${nodeId} missing`);
    check(nodeRec.unwrap().account.toString() === node.address, `${other}: node account`);
    check(nodeRec.unwrap().farmId.toNumber() === farmId, `${other}: node farm`);
    check((await at.query.grid.nodeIdByAccount(node.address)).unwrap().toNumber() === nodeId, `${other}: node index`);
    const contract = await at.query.deployments.contracts(contractId);
    check(contract.isSome, `${other}: contract ${contractId} missing`);
    const c = contract.unwrap();
    check(c.state.type === 'Active', `${other}: contract state ${c.state.type}`);
    check(c.active.unwrap().hash_.toHex() === hash, `${other}: active spec hash`);
    check(c.publicIps.length === 1, `${other}: contract public IPs`);
    const stored = (await at.query.deployments.activeSpecs(contractId)).unwrap();
    check(zombie.util.blake2AsHex(stored.toU8a(), 256) === hash, `${other}: stored spec hash`);
    step(`${other} at finalized block #${number}: farm, node and Active contract ${contractId} verified`);
    return 1;
  } finally {
    await api.disconnect();
    await otherApi.disconnect();
  }
}

module.exports = { run };
