// Who signs: accounts of the polkadot.js browser extension, and on a development chain only the
// well-known dev accounts (//Alice, //Bob, ...) from the keyring. Both are loaded on demand so
// the explorer's first paint does not wait for them.
import { api, chainInfo, describeDispatchError, type ChainError } from './chain';
import { signal } from './signal';

export type Account = {
  address: string;
  name: string;
  source: 'dev' | 'extension';
  /** Extension that holds the key. */
  extension?: string;
  pair?: any;
};

export const DEV_NAMES = ['Alice', 'Bob', 'Charlie', 'Dave', 'Eve', 'Ferdie'];

export const accounts = signal<Account[]>([]);
export const selected = signal<Account | null>(null);
export const extensionState = signal<'unknown' | 'none' | 'enabled' | 'denied'>('unknown');

const KEY = 'zos-explorer-account';

export async function loadDevAccounts() {
  if (!chainInfo.isDev) return;
  const { Keyring } = await import('@polkadot/keyring');
  const { cryptoWaitReady } = await import('@polkadot/util-crypto');
  await cryptoWaitReady();
  const keyring = new Keyring({ type: 'sr25519', ss58Format: chainInfo.ss58 });
  const dev = DEV_NAMES.map((n) => {
    const pair = keyring.addFromUri(`//${n}`, { name: n });
    return { address: pair.address, name: `//${n}`, source: 'dev' as const, pair };
  });
  setAccounts([...accounts.get().filter((a) => a.source !== 'dev'), ...dev]);
}

export async function enableExtension() {
  const { web3Enable, web3Accounts } = await import('@polkadot/extension-dapp');
  const exts = await web3Enable('zos grid explorer');
  if (exts.length === 0) {
    extensionState.set('none');
    return;
  }
  const list = await web3Accounts({ ss58Format: chainInfo.ss58 });
  extensionState.set('enabled');
  const ext = list.map((a) => ({
    address: a.address,
    name: a.meta.name ?? a.address,
    source: 'extension' as const,
    extension: a.meta.source,
  }));
  setAccounts([...ext, ...accounts.get().filter((a) => a.source !== 'extension')]);
}

function setAccounts(list: Account[]) {
  accounts.set(list);
  const saved = localStorage.getItem(KEY);
  const cur = selected.get();
  if (cur) {
    selected.set(list.find((a) => a.address === cur.address && a.source === cur.source) ?? cur);
  } else if (saved) {
    const found = list.find((a) => `${a.source}:${a.address}` === saved);
    if (found) selected.set(found);
  }
}

export function select(a: Account | null) {
  selected.set(a);
  if (a) localStorage.setItem(KEY, `${a.source}:${a.address}`);
  else localStorage.removeItem(KEY);
}

export function accountName(address: string): string | null {
  return accounts.get().find((a) => a.address === address)?.name ?? null;
}

export type TxStatus =
  | { phase: 'signing' | 'sent' }
  | { phase: 'inBlock' | 'finalized'; blockHash: string; events: any[] }
  | { phase: 'failed'; error: ChainError | { text: string; name?: string; section?: string; docs?: string } };

export class TxFailed extends Error {
  constructor(readonly error: { text: string; name?: string; section?: string; docs?: string }) {
    super(error.text);
  }
}

/**
 * Signs `tx` with `account` and sends it. Resolves with the events once a block includes it
 * (finalization is reported later through `onStatus`); a dispatch error rejects with its
 * pallet error name and doc line.
 */
export function submit(tx: any, account: Account, onStatus: (s: TxStatus) => void = () => {}): Promise<{ blockHash: string; events: any[] }> {
  return new Promise((resolve, reject) => {
    let settled = false;
    let unsub: (() => void) | undefined;
    const failed = (error: any) => {
      onStatus({ phase: 'failed', error });
      if (!settled) {
        settled = true;
        reject(new TxFailed(error));
      }
      unsub?.();
    };
    const cb = ({ status, events, dispatchError }: any) => {
      if (dispatchError) {
        failed(describeDispatchError(dispatchError));
        return;
      }
      if (status.isInBlock || status.isFinalized) {
        const blockHash = (status.isInBlock ? status.asInBlock : status.asFinalized).toHex();
        const evs = events.map((e: any) => e.event);
        onStatus({ phase: status.isInBlock ? 'inBlock' : 'finalized', blockHash, events: evs });
        if (!settled) {
          settled = true;
          resolve({ blockHash, events: evs });
        }
        if (status.isFinalized) unsub?.();
      } else if (status.isDropped || status.isInvalid || status.isUsurped) {
        failed({ text: `transaction ${status.type}` });
      } else if (status.isReady || status.isBroadcast) {
        onStatus({ phase: 'sent' });
      }
    };
    onStatus({ phase: 'signing' });
    const sending = account.source === 'dev'
      ? tx.signAndSend(account.pair, cb)
      : import('@polkadot/extension-dapp').then(({ web3FromSource }) =>
        web3FromSource(account.extension!).then((ext) => tx.signAndSend(account.address, { signer: ext.signer }, cb)));
    sending.then((u: () => void) => { unsub = u; }, (e: Error) => failed({ text: e.message }));
  });
}

/**
 * Signs `message` with `account`: a dev pair signs the bytes as they are, an extension signs
 * them wrapped in `<Bytes>…</Bytes>` (a node accepts both).
 */
export async function signBytes(account: Account, message: Uint8Array): Promise<Uint8Array> {
  if (account.source === 'dev') return account.pair.sign(message);
  const { web3FromSource } = await import('@polkadot/extension-dapp');
  const { u8aToHex, hexToU8a } = await import('@polkadot/util');
  const ext = await web3FromSource(account.extension!);
  if (!ext.signer.signRaw) throw new Error('this extension cannot sign raw bytes');
  const { signature } = await ext.signer.signRaw({ address: account.address, data: u8aToHex(message), type: 'bytes' });
  return hexToU8a(signature);
}

/** Events `section.method` among `events`. */
export function eventsNamed(events: any[], section: string, method: string) {
  return events.filter((e) => e.section === section && e.method === method);
}

export { api };
