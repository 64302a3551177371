// Small shared pieces: links, data loading tied to new blocks, transaction buttons.
import type { ComponentChildren } from 'preact';
import { useEffect, useRef, useState } from 'preact/hooks';
import { bestBlock, shortAddress, type ChainError } from './chain';
import { selected, submit, accountName, type TxStatus, TxFailed } from './accounts';
import { useSignal } from './signal';

export function A({ href, children, testid }: { href: string; children: ComponentChildren; testid?: string }) {
  return <a href={href} data-testid={testid}>{children}</a>;
}

export function Addr({ a, full }: { a: string; full?: boolean }) {
  const name = accountName(a);
  return (
    <a href={`#/account/${a}`} class="addr" title={a} data-address={a}>
      {full ? a : shortAddress(a)}{name ? <span class="muted"> ({name})</span> : null}
    </a>
  );
}

export const ContractLink = ({ id }: { id: number | string }) => <a href={`#/contract/${id}`}>contract {String(id)}</a>;
export const NodeLink = ({ id }: { id: number | string }) => <a href={`#/node/${id}`}>node {String(id)}</a>;
export const FarmLink = ({ id, name }: { id: number | string; name?: string }) => (
  <a href={`#/farm/${id}`}>{name ? `${name} (farm ${id})` : `farm ${id}`}</a>
);

let firstData!: () => void;
/**
 * Settles once the first page's own reads are in (or failed). The event history (hundreds of
 * blocks, decoded in the page) starts after it, so it does not hold up what the page shows.
 */
export const pageDataIn = new Promise<void>((resolve) => { firstData = resolve; });
// A performance mark for measurements (the browser test reads it).
pageDataIn.then(() => performance.mark('zos:page-data'));
/** For pages whose data is the event history itself. */
export const historyWanted = () => firstData();

/**
 * Runs `load` now and again at every new best block (keeping the last result while it runs).
 * Returns [data, error].
 */
export function useLoad<T>(load: () => Promise<T>, deps: unknown[]): [T | undefined, string | null] {
  const block = useSignal(bestBlock);
  const [state, setState] = useState<{ data?: T; error: string | null; key: string }>({ error: null, key: '' });
  const key = JSON.stringify(deps);
  const seq = useRef(0);
  const shown = useRef(0);
  const current = useRef(key);
  current.current = key;
  useEffect(() => {
    const mine = ++seq.current;
    // A result shows unless a newer one already did: a load slower than a block still shows.
    const show = (s: { data?: T; error: string | null; key: string }) => {
      if (mine > shown.current && current.current === key) {
        shown.current = mine;
        setState(s);
      }
    };
    load().then(
      (data) => show({ data, error: null, key }),
      (e) => show({ data: undefined, error: String(e?.message ?? e), key }),
    ).finally(firstData);
  }, [key, block]);
  return state.key === key ? [state.data, state.error] : [undefined, null];
}

export function Loading({ what }: { what?: string }) {
  return <p class="muted">loading{what ? ` ${what}` : ''}…</p>;
}

export function ErrorBox({ error }: { error: { text: string; section?: string; name?: string; docs?: string; inner?: any } }) {
  const ce = error as ChainError;
  if (ce.section && ce.name) {
    return (
      <div class="error" data-testid="tx-error" data-error={`${ce.section}.${ce.name}${ce.inner ? `(${ce.inner.name})` : ''}`}>
        <b>{ce.section}.{ce.name}{ce.inner ? `(${ce.inner.name})` : ''}</b>
        <span> {ce.docs}</span>
        {ce.inner?.docs ? <div class="muted">{ce.inner.name}: {ce.inner.docs}</div> : null}
      </div>
    );
  }
  return <div class="error" data-testid="tx-error">{error.text}</div>;
}

/**
 * A button that signs and sends `make()` with the selected account, then shows where the
 * transaction is (in a block, finalized) or the chain's error by name.
 */
export function TxButton(props: {
  label: string;
  make: () => any;
  onDone?: (events: any[]) => void;
  disabled?: boolean;
  testid?: string;
  kind?: 'primary' | 'danger';
}) {
  const account = useSignal(selected);
  const [status, setStatus] = useState<TxStatus | null>(null);
  const busy = status?.phase === 'signing' || status?.phase === 'sent';
  const click = async () => {
    if (!account) return;
    let tx;
    try {
      tx = props.make();
    } catch (e) {
      setStatus({ phase: 'failed', error: { text: String((e as Error).message ?? e) } });
      return;
    }
    try {
      const { events } = await submit(tx, account, setStatus);
      props.onDone?.(events);
    } catch (e) {
      if (!(e instanceof TxFailed)) setStatus({ phase: 'failed', error: { text: String(e) } });
    }
  };
  return (
    <span class="tx">
      <button
        class={props.kind ?? 'primary'}
        data-testid={props.testid}
        disabled={!account || busy || props.disabled}
        onClick={click}
        title={account ? `signed by ${account.name}` : 'choose an account first'}
      >
        {props.label}
      </button>
      {!account ? <span class="muted"> choose an account (top right) to sign</span> : null}
      {status ? <TxStatusLine status={status} /> : null}
    </span>
  );
}

function TxStatusLine({ status }: { status: TxStatus }) {
  switch (status.phase) {
    case 'signing': return <span class="muted" data-testid="tx-status" data-phase="signing"> signing…</span>;
    case 'sent': return <span class="muted" data-testid="tx-status" data-phase="sent"> sent, waiting for a block…</span>;
    case 'inBlock': return <span class="ok" data-testid="tx-status" data-phase="inBlock"> in block {status.blockHash.slice(0, 10)}…, waiting for finality</span>;
    case 'finalized': return <span class="ok" data-testid="tx-status" data-phase="finalized"> finalized in {status.blockHash.slice(0, 10)}…</span>;
    case 'failed': return <ErrorBox error={status.error} />;
  }
}

export function Field({ k, children, testid }: { k: string; children: ComponentChildren; testid?: string }) {
  return (
    <>
      <dt>{k}</dt>
      <dd data-testid={testid}>{children}</dd>
    </>
  );
}

export function Json({ value, testid }: { value: unknown; testid?: string }) {
  return <pre class="json" data-testid={testid}>{JSON.stringify(value, null, 2)}</pre>;
}

export function stateClass(state: string): string {
  return `state state-${state.toLowerCase()}`;
}
