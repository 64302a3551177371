// The connection to the node: @polkadot/api over the node's own RPC, nothing in between. Every
// storage item, call, constant, type and error name comes from the runtime metadata.
import { ApiPromise, WsProvider } from '@polkadot/api';
import { blake2AsHex } from '@polkadot/util-crypto';
import { signal } from './signal';
import { SPEC_ERROR_DOCS } from './spec';

/** Docs of enums whose variants the metadata may carry without docs (type docs are optional). */
const FALLBACK_DOCS: Record<string, Record<string, string>> = {
  'zos_primitives::spec::SpecError': SPEC_ERROR_DOCS,
};

export let api: ApiPromise;
export let provider: WsProvider;

/** Best block number: pages re-read their data when it changes. */
export const bestBlock = signal(0);
/** Finalized block number. */
export const finalizedBlock = signal(0);
/** Chain time (ms) at the best block. */
export const chainNow = signal(0);
export const connection = signal<'connecting' | 'connected' | 'disconnected'>('connecting');
/** True once the metadata is loaded and `api` usable. */
export const ready = signal(false);

export const chainInfo = {
  name: '',
  isDev: false,
  decimals: 12,
  symbol: 'UNIT',
  ss58: 42,
};

/** The RPC endpoint: `?rpc=` of the page, else the last one used, else this host on 9944. */
export function rpcUrl(): string {
  const q = new URLSearchParams(location.search).get('rpc');
  if (q) return q;
  return localStorage.getItem('zos-explorer-rpc') ?? `ws://${location.hostname || '127.0.0.1'}:9944`;
}

/**
 * The runtime metadata of the last chain this browser opened, kept in localStorage under its
 * genesis hash and spec version (the key @polkadot/api looks it up by): the next page load
 * skips fetching it. A runtime upgrade changes the key, and the api then fetches it anew.
 */
const METADATA_KEY = 'zos-explorer-metadata';

function cachedMetadata(): Record<string, `0x${string}`> | undefined {
  try {
    const kept = JSON.parse(localStorage.getItem(METADATA_KEY) ?? 'null');
    return kept?.key && kept?.hex ? { [kept.key]: kept.hex } : undefined;
  } catch {
    return undefined;
  }
}

function keepMetadata(api: ApiPromise) {
  const key = `${api.genesisHash.toHex()}-${api.runtimeVersion.specVersion.toString()}`;
  try {
    if (JSON.parse(localStorage.getItem(METADATA_KEY) ?? 'null')?.key === key) return;
    localStorage.setItem(METADATA_KEY, JSON.stringify({ key, hex: api.runtimeMetadata.toHex() }));
  } catch {
    // storage full or disabled: the next load fetches the metadata again
  }
}

export async function connect(url: string): Promise<ApiPromise> {
  provider = new WsProvider(url, 2000);
  provider.on('disconnected', () => connection.set('disconnected'));
  provider.on('connected', () => connection.set('connected'));
  api = await ApiPromise.create({ provider, noInitWarn: true, metadata: cachedMetadata() });
  localStorage.setItem('zos-explorer-rpc', url);
  // The chain's name and properties came with the metadata; the rest is asked at once.
  const props = api.registry.getChainProperties();
  chainInfo.name = api.runtimeChain.toString();
  chainInfo.decimals = props?.tokenDecimals.unwrapOr([12] as any)[0]?.toNumber?.() ?? 12;
  chainInfo.symbol = props?.tokenSymbol.unwrapOr(['UNIT'] as any)[0]?.toString?.() ?? 'UNIT';
  chainInfo.ss58 = api.registry.chainSS58 ?? 42;
  // Ready once the best block is known: pages read their data once, not again at the first head.
  let headSeen!: () => void;
  const firstHead = new Promise<void>((resolve) => { headSeen = resolve; });
  const [chainType] = await Promise.all([
    api.rpc.system.chainType(),
    api.rpc.chain.subscribeNewHeads((h) => {
      bestBlock.set(h.number.toNumber());
      headSeen();
      api.query.timestamp.now().then((now) => chainNow.set(Number((now as any).toBigInt())), () => {});
    }),
    api.rpc.chain.subscribeFinalizedHeads((h) => finalizedBlock.set(h.number.toNumber())),
    firstHead,
  ]);
  chainInfo.isDev = chainType.isDevelopment || chainType.isLocal;
  connection.set('connected');
  ready.set(true);
  performance.mark('zos:connected');
  setTimeout(() => keepMetadata(api), 0);
  return api;
}

/** The registry name polkadot.js gives the metadata type at Rust path `path`. */
export function typeName(path: string): string {
  const entry = api.registry.lookup.types.find(
    (t) => t.type.path.map((s) => s.toString()).join('::') === path,
  );
  if (!entry) throw new Error(`no type ${path} in the metadata`);
  return api.registry.lookup.getTypeDef(entry.id).lookupName!;
}

export const SPEC_TYPE = 'zos_primitives::spec::DeploymentSpec';

/** The encoded spec and its identity: blake2-256 of the SCALE encoding. */
export function encodeSpec(spec: unknown): { hash: string; length: number; codec: any } {
  const codec = api.createType(typeName(SPEC_TYPE), spec);
  const u8a = codec.toU8a();
  return { hash: blake2AsHex(u8a, 256), length: u8a.length, codec };
}

/** What approvals of a cancel proposal name: blake2-256 of SCALE `(b"zos/cancel", u64, u32)`. */
export function cancelHash(contractId: number, version: number): string {
  const buf = new Uint8Array(22);
  buf.set(new TextEncoder().encode('zos/cancel'), 0);
  const view = new DataView(buf.buffer);
  view.setBigUint64(10, BigInt(contractId), true);
  view.setUint32(18, version, true);
  return blake2AsHex(buf, 256);
}

/** A Rust field named like a codec member (`hash`) is `hash_` in polkadot.js. */
export function field(codec: any, name: string): any {
  return codec[`${name}_`] ?? codec.get?.(`${name}_`) ?? codec[name];
}

export type ChainError = { section: string; name: string; docs: string; inner?: { name: string; docs: string }; text: string };

/**
 * A dispatch error by its pallet error name and doc line, from metadata alone. An error that
 * carries an enum (e.g. `deployments.InvalidSpec(SpecError)`) names the inner variant too.
 */
export function describeDispatchError(dispatchError: any): ChainError {
  if (dispatchError.isModule) {
    const mod = dispatchError.asModule;
    const meta = api.registry.findMetaError(mod);
    const docs = meta.docs.join(' ');
    let inner: ChainError['inner'];
    try {
      inner = innerError(mod.index.toNumber(), mod.error.toU8a());
    } catch {
      inner = undefined;
    }
    const name = inner ? `${meta.name}(${inner.name})` : meta.name;
    const text = `${meta.section}.${name}: ${docs}${inner?.docs ? ` ${inner.docs}` : ''}`;
    return { section: meta.section, name: meta.name, docs, inner, text };
  }
  if (dispatchError.isToken || dispatchError.isArithmetic || dispatchError.isTransactional) {
    const kind = dispatchError.type;
    const sub = dispatchError[`as${kind}`].type;
    return { section: kind, name: sub, docs: '', text: `${kind}.${sub}` };
  }
  const t = dispatchError.type ?? 'Other';
  return { section: 'dispatch', name: t, docs: '', text: dispatchError.toString() };
}

function innerError(palletIndex: number, bytes: Uint8Array) {
  const pallet = api.registry.metadata.pallets.find((p) => p.index.toNumber() === palletIndex);
  if (!pallet || pallet.errors.isNone) return undefined;
  const errType = api.registry.lookup.getSiType(pallet.errors.unwrap().type);
  const variant = errType.def.asVariant.variants.find((v) => v.index.toNumber() === bytes[0]);
  if (!variant || variant.fields.length !== 1) return undefined;
  const fieldType = api.registry.lookup.getSiType(variant.fields[0].type);
  if (!fieldType.def.isVariant) return undefined;
  const innerVariant = fieldType.def.asVariant.variants.find((v) => v.index.toNumber() === bytes[1]);
  if (!innerVariant) return undefined;
  const name = innerVariant.name.toString();
  const docs = innerVariant.docs.map((d) => d.toString()).join(' ').trim()
    || FALLBACK_DOCS[fieldType.path.map((p) => p.toString()).join('::')]?.[name] || '';
  return { name, docs };
}

/** Doc line of a variant of the metadata enum at Rust path `path` (e.g. a SpecError). */
export function variantDocs(path: string, variant: string): string {
  const entry = api.registry.lookup.types.find((t) => t.type.path.map((s) => s.toString()).join('::') === path);
  const v = entry?.type.def.asVariant.variants.find((x) => x.name.toString() === variant);
  return (v ? v.docs.map((d) => d.toString()).join(' ').trim() : '') || FALLBACK_DOCS[path]?.[variant] || '';
}

/** Doc line of a pallet error, from the metadata. */
export function errorDocs(section: string, name: string): string {
  const err = (api.errors as any)[section]?.[name];
  return err ? err.meta.docs.map((d: any) => d.toString()).join(' ').trim() : '';
}

// ---- formatting

export function formatBalance(v: bigint | { toBigInt(): bigint }, digits = 4): string {
  const n = typeof v === 'bigint' ? v : v.toBigInt();
  const unit = 10n ** BigInt(chainInfo.decimals);
  const neg = n < 0n;
  const a = neg ? -n : n;
  const whole = a / unit;
  const all = (a % unit).toString().padStart(chainInfo.decimals, '0');
  // Amounts below one unit keep three significant digits (a few seconds of a disk cost little).
  const firstDigit = all.search(/[1-9]/);
  const keep = whole === 0n && firstDigit >= digits ? firstDigit + 3 : digits;
  const frac = all.slice(0, keep).replace(/0+$/, '');
  return `${neg ? '-' : ''}${whole.toLocaleString('en')}${frac ? `.${frac}` : ''} ${chainInfo.symbol}`;
}

export function formatBytes(v: bigint | number): string {
  const n = Number(v);
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0;
  let x = n;
  while (x >= 1024 && i < units.length - 1) {
    x /= 1024;
    i++;
  }
  return `${x >= 100 || i === 0 ? Math.round(x) : x.toFixed(1).replace(/\.0$/, '')} ${units[i]}`;
}

export function shortAddress(a: string): string {
  return a.length > 16 ? `${a.slice(0, 6)}…${a.slice(-6)}` : a;
}

export function ipText(bytes: any): string {
  return [...(typeof bytes === 'string' ? [] : bytes)].join('.');
}

export function ago(ms: number): string {
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.round(s / 60)} min`;
  if (s < 86400) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
}
