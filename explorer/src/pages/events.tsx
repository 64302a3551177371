// Finalized events as they come, each field linked to what it names.
import { useEffect, useState } from 'preact/hooks';
import { formatBalance, formatBytes } from '../chain';
import { history, historyState, type EventRec } from '../history';
import { useSignal } from '../signal';
import { Addr, historyWanted } from '../ui';

const LINKS: Record<string, string> = {
  contract: 'contract', node: 'node', nodeId: 'node', farmId: 'farm',
};
const BALANCE = /^(deposit|charged|collected|toFarmOwner|toTreasury|burned|debt|debtWrittenOff|amount|actualFee|tip|free)$/;

export function FieldValue({ name, v }: { name: string; v: any }) {
  const t = v?.toRawType?.() ?? '';
  if (LINKS[name]) return <a href={`#/${LINKS[name]}/${v.toString()}`}>{v.toString()}</a>;
  if (t === 'AccountId32' || t === 'AccountId') return <Addr a={v.toString()} />;
  if (BALANCE.test(name) && v.toBigInt) return <span>{formatBalance(v.toBigInt())}</span>;
  if (v?.isSome !== undefined && v.isNone) return <span class="muted">none</span>;
  if (v?.cru !== undefined && v?.mru !== undefined) {
    return <span>{`${v.cru.toString()} vCPU, ${formatBytes(v.mru.toBigInt())} memory, ${formatBytes(v.sru.toBigInt())} SSD${v.hru.isZero() ? '' : `, ${formatBytes(v.hru.toBigInt())} HDD`}`}</span>;
  }
  if (v?.gateway !== undefined && v?.ip?.prefixLen !== undefined) {
    return <span>{`${[...v.ip.ip].join('.')}/${v.ip.prefixLen.toString()} via ${[...v.gateway].join('.')}`}</span>;
  }
  if (v?.isBasic !== undefined && typeof v?.index === 'number' && typeof v?.type === 'string') {
    const inner = v.value?.isEmpty || v.value?.toRawType?.() === 'Null' ? '' : ` ${JSON.stringify(v.value.toHuman())}`;
    return <span>{`${v.type}${inner}`}</span>;
  }
  if (/Ms$/.test(name) && v?.toBigInt && v.toBigInt() > 1_000_000_000_000n) return <span>{new Date(Number(v.toBigInt())).toLocaleTimeString()}</span>;
  const h = v?.toHuman?.();
  return <span>{typeof h === 'string' ? h : JSON.stringify(h)}</span>;
}

export function EventRow({ e }: { e: EventRec }) {
  return (
    <tr data-testid="event-row" data-event={`${e.section}.${e.method}`}>
      <td>{e.block}</td>
      <td class="muted nowrap">{e.timeMs ? new Date(e.timeMs).toLocaleTimeString() : ''}</td>
      <td title={e.docs}><b>{e.section}.{e.method}</b></td>
      <td>
        {e.fields.map(([n, v]) => (
          <span key={n} class="kv"><span class="muted">{n}</span> <FieldValue name={n} v={v} /></span>
        ))}
      </td>
    </tr>
  );
}

export function EventList({ limit, filter }: { limit: number; filter?: (e: EventRec) => boolean }) {
  const all = useSignal(history);
  const shown = all.filter((e) => !(e.section === 'system' && e.method === 'ExtrinsicSuccess'))
    .filter((e) => !(e.section === 'transactionPayment'))
    .filter(filter ?? (() => true));
  const last = shown.slice(-limit).reverse();
  if (last.length === 0) return <p class="muted">no events yet</p>;
  return (
    <table class="events" data-testid="events-table">
      <thead><tr><th>block</th><th>time</th><th>event</th><th>fields</th></tr></thead>
      <tbody>{last.map((e) => <EventRow key={`${e.block}-${e.index}`} e={e} />)}</tbody>
    </table>
  );
}

export function Events() {
  const hs = useSignal(historyState);
  useEffect(historyWanted, []);
  const [q, setQ] = useState('');
  const [grid, setGrid] = useState(true);
  const f = (e: EventRec) => {
    if (grid && !['grid', 'deployments', 'billing'].includes(e.section)) return false;
    if (!q) return true;
    const s = `${e.section}.${e.method} ${e.fields.map(([n, v]) => `${n}=${v.toString()}`).join(' ')}`.toLowerCase();
    return s.includes(q.toLowerCase());
  };
  return (
    <div>
      <h1>Finalized events</h1>
      <p class="muted">blocks {hs.from}–{hs.to}{hs.done ? '' : ' (reading past blocks…)'}; new finalized blocks appear at the top.</p>
      <div class="form">
        <label>filter <input value={q} placeholder="e.g. ContractActivated or contract=1" onInput={(e) => setQ((e.target as HTMLInputElement).value)} /></label>
        <label><input type="checkbox" checked={grid} onChange={(e) => setGrid((e.target as HTMLInputElement).checked)} /> grid pallets only</label>
      </div>
      <EventList limit={200} filter={f} />
    </div>
  );
}
