// Finalized events, kept in the page: the last `?history=` blocks (default 600) read once at
// start, then every newly finalized block. Charts over time (a contract's charges, a node's
// heartbeats) and the live event list read from here; nothing is stored outside the browser.
import { api, provider, finalizedBlock } from './chain';
import { signal } from './signal';
import { hexToU8a } from '@polkadot/util';

export type EventRec = {
  block: number;
  index: number;
  timeMs: number;
  section: string;
  method: string;
  /** Field name (camelCase, as polkadot.js names metadata fields) -> codec. */
  fields: [string, any][];
  docs: string;
};

/** All events read so far, oldest first. */
export const history = signal<EventRec[]>([]);
/** Lowest block number read (the backfill goes down to it), and whether it is complete. */
export const historyState = signal<{ from: number; to: number; done: boolean }>({ from: 0, to: 0, done: false });

const MAX_EVENTS = 20000;
let eventsType = '';
let eventsKey = '';
let nowKey = '';
let last = 0;
let pending: EventRec[][] = [];

function decode(block: number, eventsHex: string | null, nowHex: string | null): EventRec[] {
  if (!eventsHex) return [];
  // SCALE bytes (a hex string would be read as a big-endian number).
  const timeMs = nowHex ? Number(api.createType('u64', hexToU8a(nowHex)).toBigInt()) : 0;
  const records = api.createType(eventsType, eventsHex) as any;
  return records.map((r: any, index: number) => {
    const ev = r.event;
    const names: string[] = ev.data.names ?? [];
    return {
      block,
      index,
      timeMs,
      section: ev.section,
      method: ev.method,
      fields: ev.data.map((v: any, i: number) => [names[i] ?? String(i), v]),
      docs: ev.meta.docs.map((d: any) => d.toString()).join(' ').trim(),
    } as EventRec;
  });
}

async function readBlocks(numbers: number[]): Promise<EventRec[][]> {
  if (numbers.length === 0) return [];
  const hashes: (string | null)[] = await provider.send('chain_getBlockHash', [numbers]);
  return Promise.all(numbers.map(async (n, i) => {
    const hash = hashes[i];
    if (!hash) return [];
    const [res] = await provider.send('state_queryStorageAt', [[eventsKey, nowKey], hash]);
    const byKey = new Map<string, string | null>(res.changes);
    return decode(n, byKey.get(eventsKey) ?? null, byKey.get(nowKey) ?? null);
  }));
}

function publish(more: EventRec[]) {
  if (more.length === 0) return;
  const all = [...history.get(), ...more].sort((a, b) => a.block - b.block || a.index - b.index);
  history.set(all.length > MAX_EVENTS ? all.slice(all.length - MAX_EVENTS) : all);
}

export async function startHistory() {
  eventsType = api.registry.createLookupType((api.query.system.events as any).creator.meta.type.asPlain);
  eventsKey = api.query.system.events.key();
  nowKey = api.query.timestamp.now.key();
  const depth = Number(new URLSearchParams(location.search).get('history') ?? 600);
  const head = (await api.rpc.chain.getHeader(await api.rpc.chain.getFinalizedHead())).number.toNumber();
  last = head;
  const from = Math.max(1, head - depth + 1);
  historyState.set({ from, to: head, done: false });
  // Newly finalized blocks, in order.
  let following = Promise.resolve();
  finalizedBlock.subscribe((n) => {
    following = following.then(async () => {
      if (n <= last) return;
      const numbers: number[] = [];
      for (let b = last + 1; b <= n; b++) numbers.push(b);
      last = n;
      const blocks = await readBlocks(numbers);
      publish(blocks.flat());
      historyState.set({ ...historyState.get(), to: n });
    }).catch((e) => console.warn('events', e));
  });
  // The backfill, newest first, in batches.
  for (let top = head; top >= from; top -= 32) {
    const numbers: number[] = [];
    for (let b = top; b > top - 32 && b >= from; b--) numbers.push(b);
    const blocks = await readBlocks(numbers);
    pending.push(blocks.flat());
    publish(pending.flat());
    pending = [];
  }
  historyState.set({ ...historyState.get(), done: true });
}

/** A field of an event record by its metadata name. */
export function ev(e: EventRec, name: string): any {
  return e.fields.find(([n]) => n === name)?.[1];
}

/** Events of a contract (any pallet's event with a `contract` field equal to `id`). */
export function contractEvents(id: number): EventRec[] {
  return history.get().filter((e) => {
    const c = ev(e, 'contract');
    return c !== undefined && Number(c.toString()) === id;
  });
}
