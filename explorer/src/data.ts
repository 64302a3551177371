// Reads of the grid's storage, shaped for the pages. Names come from the metadata
// (api.query.grid.farms, api.query.deployments.contracts, ...).
import { hexToU8a } from '@polkadot/util';
import { api, chainNow, field, provider } from './chain';

export type Res = { cru: bigint; mru: bigint; sru: bigint; hru: bigint };

export const res = (r: any): Res => ({
  cru: r.cru.toBigInt(), mru: r.mru.toBigInt(), sru: r.sru.toBigInt(), hru: r.hru.toBigInt(),
});
export const addRes = (a: Res, b: Res): Res => ({ cru: a.cru + b.cru, mru: a.mru + b.mru, sru: a.sru + b.sru, hru: a.hru + b.hru });
export const ZERO: Res = { cru: 0n, mru: 0n, sru: 0n, hru: 0n };

export type Farm = {
  id: number; owner: string; name: string; certification: string; pricingPolicy: number;
  ips: { ip: string; gateway: string; contract: number | null; node: number | null }[];
};

export type Node = {
  id: number; farmId: number; account: string; capacity: Res; reserved: Res; online: boolean;
  lastHeartbeatMs: number | null; onlineSinceMs: number; uptimeSeconds: number; activeContracts: number;
  assignedIps: number; city: string; country: string; version: string; powerTarget: string; powerState: string;
  registeredAt: number; boxKey: string;
  /** The domain of its public config, under which it serves gateway names; null: none. */
  gatewayDomain: string | null;
};

export type Contract = {
  id: number; owner: string; node: number; state: string; stateDetail: string; threshold: number;
  signers: { account: string; weight: number; required: boolean }[];
  active: { hash: string; version: number } | null; deposit: bigint; createdAt: number; activatedAt: number | null;
  publicIps: { workload: string; ip: string }[];
};

const quad = (b: any) => [...b].join('.');

export function toFarm(id: number, f: any): Farm {
  return {
    id,
    owner: f.owner.toString(),
    name: f.name.toUtf8(),
    certification: f.certification.type,
    pricingPolicy: f.pricingPolicy.toNumber(),
    ips: f.publicIps.map((e: any) => ({
      ip: `${quad(e.config.ip.ip)}/${e.config.ip.prefixLen.toNumber()}`,
      gateway: quad(e.config.gateway),
      contract: e.assigned.isSome ? e.assigned.unwrap().contract.toNumber() : null,
      node: e.assigned.isSome ? e.assigned.unwrap().node.toNumber() : null,
    })),
  };
}

export function heartbeatTimeoutMs(): number {
  return Number((api.consts.grid.heartbeatTimeoutMs as any).toBigInt());
}

export function toNode(id: number, n: any): Node {
  const hb = n.lastHeartbeat.isSome ? Number(n.lastHeartbeat.unwrap().timestampMs.toBigInt()) : null;
  const now = chainNow.get() || Date.now();
  return {
    id,
    farmId: n.farmId.toNumber(),
    account: n.account.toString(),
    capacity: res(n.capacity),
    reserved: res(n.reserved),
    online: hb !== null && now - hb <= heartbeatTimeoutMs(),
    lastHeartbeatMs: hb,
    onlineSinceMs: Number(n.onlineSinceMs.toBigInt()),
    uptimeSeconds: Number(n.uptimeSeconds.toBigInt()),
    activeContracts: n.activeContracts.toNumber(),
    assignedIps: n.assignedIps.toNumber(),
    city: n.location.city.toUtf8(),
    country: n.location.country.toUtf8(),
    version: n.executorVersion.toUtf8(),
    powerTarget: n.powerTarget.type,
    powerState: n.powerState.type,
    registeredAt: n.registeredAt.toNumber(),
    boxKey: n.boxKey.toHex(),
    // The grid pallet only stores ASCII domains (`is_valid_domain`), so the text is exact.
    gatewayDomain: n.publicConfig.isSome && n.publicConfig.unwrap().domain.isSome ? n.publicConfig.unwrap().domain.unwrap().toUtf8() : null,
  };
}

export function toContract(id: number, c: any): Contract {
  const st = c.state;
  let detail = '';
  if (st.isFailed) detail = `${st.asFailed.workload.toUtf8()}: ${st.asFailed.reason.toUtf8()}`;
  if (st.isCancelled) detail = st.asCancelled.type;
  return {
    id,
    owner: c.owner.toString(),
    node: c.node.toNumber(),
    state: st.type,
    stateDetail: detail,
    threshold: c.threshold.toNumber(),
    signers: c.signers.map((s: any) => ({ account: s.account.toString(), weight: s.weight.toNumber(), required: s.required.isTrue })),
    active: c.active.isSome ? { hash: field(c.active.unwrap(), 'hash').toHex(), version: c.active.unwrap().version.toNumber() } : null,
    deposit: c.deposit.toBigInt(),
    createdAt: c.createdAt.toNumber(),
    activatedAt: c.activatedAt.isSome ? c.activatedAt.unwrap().toNumber() : null,
    publicIps: c.publicIps.map(([w, cfg]: any) => ({ workload: w.toUtf8(), ip: `${quad(cfg.ip.ip)}/${cfg.ip.prefixLen.toNumber()}` })),
  };
}

const idOf = (k: any) => Number(k.args[0].toString());

export async function loadFarms(): Promise<Farm[]> {
  const entries = await api.query.grid.farms.entries();
  return entries.map(([k, v]: any) => toFarm(idOf(k), v.unwrap())).sort((a, b) => a.id - b.id);
}

export async function loadNodes(): Promise<Node[]> {
  const entries = await api.query.grid.nodes.entries();
  return entries.map(([k, v]: any) => toNode(idOf(k), v.unwrap())).sort((a, b) => a.id - b.id);
}

export async function loadContracts(): Promise<Contract[]> {
  const entries = await api.query.deployments.contracts.entries();
  return entries.map(([k, v]: any) => toContract(idOf(k), v.unwrap())).sort((a, b) => a.id - b.id);
}

export async function loadFarm(id: number): Promise<Farm | null> {
  const f: any = await api.query.grid.farms(id);
  return f.isSome ? toFarm(id, f.unwrap()) : null;
}

export async function loadNode(id: number): Promise<Node | null> {
  const n: any = await api.query.grid.nodes(id);
  return n.isSome ? toNode(id, n.unwrap()) : null;
}

export async function loadContract(id: number): Promise<Contract | null> {
  const c: any = await api.query.deployments.contracts(id);
  return c.isSome ? toContract(id, c.unwrap()) : null;
}

/** Node ids of a farm (grid.NodesByFarm). */
export async function farmNodeIds(farmId: number): Promise<number[]> {
  const keys = await api.query.grid.nodesByFarm.keys(farmId);
  return keys.map((k: any) => Number(k.args[1].toString())).sort((a, b) => a - b);
}

/** Contract ids on a node (deployments.ContractsByNode). */
export async function nodeContractIds(nodeId: number): Promise<number[]> {
  const keys = await api.query.deployments.contractsByNode.keys(nodeId);
  return keys.map((k: any) => Number(k.args[1].toString())).sort((a, b) => a - b);
}

/** Contract ids owned by an account (deployments.ContractsByOwner). */
export async function ownerContractIds(address: string): Promise<number[]> {
  const keys = await api.query.deployments.contractsByOwner.keys(address);
  return keys.map((k: any) => Number(k.args[1].toString())).sort((a, b) => a - b);
}

/** Capacity reservable on a node: CPU times the overcommit factor, minus what is reserved. */
export function freeCapacity(n: Node): Res {
  const over = BigInt(Math.max(1, (api.consts.grid.cruOvercommit as any).toNumber()));
  return {
    cru: n.capacity.cru * over - n.reserved.cru,
    mru: n.capacity.mru - n.reserved.mru,
    sru: n.capacity.sru - n.reserved.sru,
    hru: n.capacity.hru - n.reserved.hru,
  };
}

export function cruOvercommit(): number {
  return Math.max(1, (api.consts.grid.cruOvercommit as any).toNumber());
}

// ---- contract states without decoding the contracts
//
// The dashboard counts contracts by state and a node's page lists its contracts' states: with
// thousands of contracts, decoding each into polkadot.js codecs (and its accounts into
// addresses) costs more than reading them. These read the raw values and skip, by the types in
// the metadata, the fields before `state`, whose variant index names the state.

type Skip = (b: Uint8Array, at: number) => number;

/** SCALE compact integer at `at`: [value, bytes it takes]. */
function compactAt(b: Uint8Array, at: number): [number, number] {
  const mode = b[at] & 3;
  if (mode === 0) return [b[at] >> 2, 1];
  if (mode === 1) return [(b[at] | (b[at + 1] << 8)) >> 2, 2];
  if (mode === 2) return [((b[at] | (b[at + 1] << 8) | (b[at + 2] << 16)) >>> 2) + b[at + 3] * 2 ** 22, 4];
  const n = (b[at] >> 2) + 4;
  let v = 0;
  for (let i = n; i >= 1; i--) v = v * 256 + b[at + i];
  return [v, n + 1];
}

const PRIMITIVE: Record<string, number> = { Bool: 1, Char: 4, U8: 1, I8: 1, U16: 2, I16: 2, U32: 4, I32: 4, U64: 8, I64: 8, U128: 16, I128: 16, U256: 32, I256: 32 };
const skips = new Map<number, Skip>();

/** A function that steps over one SCALE value of metadata type `id`. */
function skipOf(id: number): Skip {
  const known = skips.get(id);
  if (known) return known;
  // Set before the parts are built: a type may contain itself.
  let inner: Skip | undefined;
  skips.set(id, (b, at) => inner!(b, at));
  const def = api.registry.lookup.getSiType(id).def;
  const seq = (f: Skip): Skip => (b, at) => {
    const [n, len] = compactAt(b, at);
    let p = at + len;
    for (let i = 0; i < n; i++) p = f(b, p);
    return p;
  };
  const all = (fs: Skip[]): Skip => (b, at) => fs.reduce((p, f) => f(b, p), at);
  if (def.isPrimitive) {
    const t = def.asPrimitive.type;
    if (t === 'Str') inner = seq((_, at) => at + 1);
    else if (PRIMITIVE[t]) inner = (_, at) => at + PRIMITIVE[t];
  } else if (def.isComposite) {
    inner = all(def.asComposite.fields.map((f) => skipOf(f.type.toNumber())));
  } else if (def.isTuple) {
    inner = all(def.asTuple.map((t) => skipOf(t.toNumber())));
  } else if (def.isSequence) {
    inner = seq(skipOf(def.asSequence.type.toNumber()));
  } else if (def.isArray) {
    const n = def.asArray.len.toNumber();
    const f = skipOf(def.asArray.type.toNumber());
    inner = (b, at) => { let p = at; for (let i = 0; i < n; i++) p = f(b, p); return p; };
  } else if (def.isCompact) {
    inner = (b, at) => at + compactAt(b, at)[1];
  } else if (def.isVariant) {
    const byIndex = new Map(def.asVariant.variants.map((v) => [v.index.toNumber(), all(v.fields.map((f) => skipOf(f.type.toNumber())))]));
    inner = (b, at) => {
      const f = byIndex.get(b[at]);
      if (!f) throw new Error(`no variant ${b[at]} in type ${id}`);
      return f(b, at + 1);
    };
  }
  if (!inner) {
    skips.delete(id);
    throw new Error(`cannot step over type ${id} (${def.type})`);
  }
  return skips.get(id)!;
}

let stateReader: ((b: Uint8Array) => string) | null = null;

/** The `state` variant name of an encoded `deployments.Contracts` value. */
function contractState(b: Uint8Array): string {
  if (!stateReader) {
    const id = (api.query.deployments.contracts as any).creator.meta.type.asMap.value.toNumber();
    const fields = api.registry.lookup.getSiType(id).def.asComposite.fields;
    const at = fields.findIndex((f) => f.name.unwrapOr('').toString() === 'state');
    if (at < 0) throw new Error('deployments.Contracts has no state field');
    const before = fields.slice(0, at).map((f) => skipOf(f.type.toNumber()));
    const names = new Map(api.registry.lookup.getSiType(fields[at].type).def.asVariant.variants.map((v) => [v.index.toNumber(), v.name.toString()]));
    stateReader = (u8a) => names.get(u8a[before.reduce((p, f) => f(u8a, p), 0)]) ?? 'unknown';
  }
  return stateReader(b);
}

const PAGE = 1000;

/** Raw values of `keys` (hex storage keys), in order; null where there is none. */
async function rawValues(keys: string[]): Promise<(Uint8Array | null)[]> {
  if (keys.length === 0) return [];
  const pages: string[][] = [];
  for (let i = 0; i < keys.length; i += PAGE) pages.push(keys.slice(i, i + PAGE));
  const got = await Promise.all(pages.map(async (page) => {
    const [res] = await provider.send('state_queryStorageAt', [page]);
    return new Map<string, string | null>(res?.changes ?? []);
  }));
  const values = new Map(got.flatMap((m) => [...m]));
  return keys.map((k) => {
    const v = values.get(k);
    return v ? hexToU8a(v) : null;
  });
}

/** How many contracts there are in each state. */
export async function contractStateCounts(): Promise<Map<string, number>> {
  const prefix = api.query.deployments.contracts.keyPrefix();
  // Each page's values are asked for while the next page of keys is.
  const reads: Promise<(Uint8Array | null)[]>[] = [];
  for (let last = prefix; ;) {
    const page: string[] = await provider.send('state_getKeysPaged', [prefix, PAGE, last]);
    reads.push(rawValues(page));
    if (page.length < PAGE) break;
    last = page[page.length - 1];
  }
  const counts = new Map<string, number>();
  for (const v of (await Promise.all(reads)).flat()) {
    if (!v) continue;
    const state = contractState(v);
    counts.set(state, (counts.get(state) ?? 0) + 1);
  }
  return counts;
}

/** The states of contracts `ids` (null for one that is gone). */
export async function contractStatesOf(ids: number[]): Promise<(string | null)[]> {
  const values = await rawValues(ids.map((id) => api.query.deployments.contracts.key(id)));
  return values.map((v) => (v ? contractState(v) : null));
}
