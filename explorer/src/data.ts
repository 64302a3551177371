// Reads of the grid's storage, shaped for the pages. Names come from the metadata
// (api.query.grid.farms, api.query.deployments.contracts, ...).
import { api, chainNow, field } from './chain';

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
