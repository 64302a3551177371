// A VM's console, read from its node's access endpoint (`zos logs` in the browser): the request
// is signed by the selected account, which must be one of the contract's signers.
import { useEffect, useState } from 'preact/hooks';
import { api } from '../chain';
import { selected, signBytes } from '../accounts';
import { useSignal } from '../signal';

const ACCESS_PORT = 9102;

/** `http://<the node's declared public address>:9102`, or '' when it declares none. */
async function nodeAccessUrl(nodeId: number): Promise<string> {
  const n: any = await api.query.grid.nodes(nodeId);
  if (n.isNone) return '';
  const config = n.unwrap().publicConfig;
  if (config.isNone) return '';
  const c = config.unwrap();
  if (c.domain.isSome) return `http://${c.domain.unwrap().toUtf8()}:${ACCESS_PORT}`;
  if (c.ipv4.isSome) return `http://${Array.from(c.ipv4.unwrap().ip.ip.toU8a()).join('.')}:${ACCESS_PORT}`;
  return '';
}

function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** The `Authorization` header of a GET of `path` (see zos_client::access on the node). */
export async function accessAuthorization(path: string): Promise<string> {
  const account = selected.get();
  if (!account) throw new Error('choose an account (one of the contract\'s signers) first');
  const { decodeAddress } = await import('@polkadot/util-crypto');
  const time = Math.floor(Date.now() / 1000);
  const nonce = hex(crypto.getRandomValues(new Uint8Array(16)));
  const message = new TextEncoder().encode(`zos-access-v1\nGET\n${path}\n${time}\n${nonce}`);
  const signature = await signBytes(account, message);
  return `Zos-Sr25519 signer=${hex(decodeAddress(account.address))},time=${time},nonce=${nonce},sig=${hex(signature)}`;
}

export function Console({ contractId, nodeId }: { contractId: number; nodeId: number }) {
  const account = useSignal(selected);
  const [url, setUrl] = useState('');
  const [workload, setWorkload] = useState('');
  const [text, setText] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  useEffect(() => {
    nodeAccessUrl(nodeId).then((u) => setUrl((cur) => cur || u), () => {});
  }, [nodeId]);
  const read = async () => {
    setBusy(true);
    setError(null);
    try {
      const base = url.trim().replace(/\/+$/, '');
      if (!/^https?:\/\/[^/]+$/.test(base)) throw new Error('give the node\'s access address as http://HOST:PORT');
      const path = `/v1/contracts/${contractId}/logs?lines=200${workload ? `&workload=${encodeURIComponent(workload)}` : ''}`;
      const authorization = await accessAuthorization(path);
      const res = await fetch(`${base}${path}`, { headers: { Authorization: authorization } });
      const body = await res.text();
      if (!res.ok) throw new Error(`the node refused (${res.status}): ${body.trim()}`);
      setText(body);
    } catch (e: any) {
      setText(null);
      setError(e.message ?? String(e));
    } finally {
      setBusy(false);
    }
  };
  return (
    <div data-testid="console">
      <p class="muted">The node serves a VM's console to the contract's signers only, for a request the selected account signs.</p>
      <div class="actions">
        <input data-testid="console-url" placeholder={`http://node-address:${ACCESS_PORT}`} value={url} onInput={(e: any) => setUrl(e.currentTarget.value)} />
        <input data-testid="console-workload" placeholder="VM (if several)" value={workload} onInput={(e: any) => setWorkload(e.currentTarget.value)} />
        <button data-testid="console-read" disabled={busy || !account} onClick={read}>{busy ? 'reading…' : `read the console as ${account?.name ?? '…'}`}</button>
      </div>
      {error ? <p class="error" data-testid="console-error">{error}</p> : null}
      {text !== null ? <pre data-testid="console-text">{text || '(empty)'}</pre> : null}
    </div>
  );
}
