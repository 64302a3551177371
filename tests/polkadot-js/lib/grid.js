// Helpers for the grid pallets that use nothing but the runtime metadata: type names are looked
// up by their Rust path, hashes are computed from the metadata-driven SCALE encoding.
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { Keyring } from '@polkadot/keyring';
import { blake2AsHex, encodeAddress } from '@polkadot/util-crypto';

export const UNIT = 1_000_000_000_000n;
export const GIB = 1n << 30n;
export const MIB = 1n << 20n;

/** The registry name polkadot.js gives the metadata type at Rust path `path`. */
export function typeName(api, path) {
  const entry = api.registry.lookup.types.find(
    (t) => t.type.path.map((s) => s.toString()).join('::') === path,
  );
  if (!entry) throw new Error(`no type ${path} in the metadata`);
  return api.registry.lookup.getTypeDef(entry.id).lookupName;
}

/** blake2-256 of the SCALE encoding of a deployment spec: the hash approvals must name. */
export function specHash(api, spec) {
  const name = typeName(api, 'zos_primitives::spec::DeploymentSpec');
  return blake2AsHex(api.createType(name, spec).toU8a(), 256);
}

/** What approvals of a cancel proposal name: blake2-256 of SCALE `(b"zos/cancel", u64, u32)`. */
export function cancelHash(contractId, version) {
  const buf = Buffer.alloc(10 + 8 + 4);
  buf.write('zos/cancel', 0, 'ascii'); // a fixed-size byte array: no length prefix
  buf.writeBigUInt64LE(BigInt(contractId), 10);
  buf.writeUInt32LE(Number(version), 18);
  return blake2AsHex(buf, 256);
}

/** The billing treasury: `PalletId(*b"zos/trsy").into_account_truncating()`. */
export function treasuryAddress(api) {
  const raw = Buffer.alloc(32); // zero-padded
  raw.write('modlzos/trsy', 0, 'ascii');
  return encodeAddress(raw, api.registry.chainSS58);
}

/**
 * A node identity as the executor makes one: an sr25519 account from a random 32-byte mini
 * secret, and an x25519 box key deployers seal secrets to.
 */
export function newNodeIdentity() {
  const keyring = new Keyring({ type: 'sr25519' });
  const account = keyring.addFromSeed(randomBytes(32));
  const { publicKey } = generateKeyPairSync('x25519');
  const jwk = publicKey.export({ format: 'jwk' });
  const boxKey = `0x${Buffer.from(jwk.x, 'base64url').toString('hex')}`;
  return { account, boxKey };
}

/** A node description accepted by `Grid.register_node`. */
export function nodeDescription(boxKey) {
  return {
    capacity: { cru: 8, mru: 16n * GIB, sru: 512n * GIB, hru: 0 },
    boxKey,
    location: { city: 'Ghent', country: 'Belgium', latitude: 51_054_300, longitude: 3_717_400 },
    publicConfig: null,
    executorVersion: 'v0.1.0',
  };
}

/** A public IPv4 address of a farm's pool, as `PublicIpv4Config`. */
export function publicIp(lastOctet) {
  return { ip: { ip: [185, 69, 166, lastOctet], prefixLen: 24 }, gateway: [185, 69, 166, 1] };
}

/**
 * A deployment built as a plain object following the metadata types: a disk, a public IPv4
 * address and a VM that mounts the disk and uses the address.
 */
export function demoSpec(version = 0) {
  return {
    version,
    workloads: [
      { name: 'data', kind: { Disk: { sizeMib: 2048 } } },
      { name: 'pub', kind: { PublicIp: { v4: true, v6: false } } },
      {
        name: 'web',
        kind: {
          Vm: {
            image: {
              rootHash: `0x${'5a'.repeat(32)}`,
              source: 'https://hub.grid.example/images/web.idx',
            },
            vcpus: 2,
            memoryMib: 2048,
            rootfsMib: 4096,
            mounts: [{ workload: 'data', path: '/var/lib/data' }],
            env: [{ key: 'MODE', value: 'production' }],
            entrypoint: '/sbin/init',
            sshKeys: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDeploymentTestKeyOnly deployer@grid'],
            networks: [],
            publicIp: 'pub',
            overlay: true,
          },
        },
      },
    ],
    metadata: 'polkadot.js suite deployment',
  };
}

/** Events of `events` that are `section.method` (e.g. 'deployments', 'ContractActivated'). */
export function eventsNamed(events, section, method) {
  return events.filter((e) => e.section === section && e.method === method);
}

/** The one `section.method` event; fails if there is not exactly one. */
export function oneEvent(events, section, method) {
  const found = eventsNamed(events, section, method);
  if (found.length !== 1) {
    const names = events.map((e) => `${e.section}.${e.method}`).join(', ');
    throw new Error(`expected one ${section}.${method}, got ${found.length} among: ${names}`);
  }
  return found[0];
}

/** Free balance of `address`, at block `at` if given. */
export async function freeBalance(api, address, at) {
  const view = at ? await api.at(at) : api;
  return (await view.query.system.account(address)).data.free.toBigInt();
}

/**
 * Field `name` of an event's data or of a struct. polkadot.js renames fields whose names clash
 * with codec members (`hash`, `registry`, `keys`, ...) by appending `_`: a Rust field `hash` is
 * `hash_` in JavaScript, while `.hash` is the blake2 hash of the value itself.
 */
export function field(codec, name) {
  const key = `${name}_`;
  const value = codec[key] ?? (codec.names ? codec[codec.names.indexOf(key)] : codec.get?.(key));
  if (value === undefined) throw new Error(`no field ${key}`);
  return value;
}
