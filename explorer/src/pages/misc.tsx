// Farmer actions, accounts, search.
import { useEffect, useState } from 'preact/hooks';
import { decodeAddress } from '@polkadot/util-crypto';
import { api, formatBalance } from '../chain';
import { selected, eventsNamed } from '../accounts';
import { useSignal } from '../signal';
import { loadContract, loadContracts, loadFarm, loadFarms, loadNode, ownerContractIds, type Contract } from '../data';
import { Addr, ErrorBox, FarmLink, Field, Loading, NodeLink, TxButton, useLoad } from '../ui';
import { ContractTable } from './contract';
import { EventList } from './events';

export function Farmer() {
  const account = useSignal(selected);
  const [name, setName] = useState('');
  const [farms] = useLoad(loadFarms, []);
  const mine = farms?.filter((f) => f.owner === account?.address) ?? [];
  const valid = /^[A-Za-z0-9_-]{3,40}$/.test(name);
  return (
    <div>
      <h1>Farmer</h1>
      <div class="form" data-testid="create-farm-form">
        <h3>Create a farm</h3>
        <label>name <input data-testid="farm-name" value={name} placeholder="3-40 of A-Z a-z 0-9 _ -" onInput={(e) => setName((e.target as HTMLInputElement).value)} /></label>
        {name && !valid ? <span class="error">3-40 characters of A-Z, a-z, 0-9, _ and - (the chain refuses others)</span> : null}
        <TxButton label="create farm" testid="create-farm" disabled={!valid} make={() => api.tx.grid.createFarm(name)}
          onDone={(events) => {
            const created = eventsNamed(events, 'grid', 'FarmCreated')[0];
            if (created) location.hash = `#/farm/${created.data.farmId.toString()}`;
          }} />
      </div>
      <h2>Farms of the selected account</h2>
      {!account ? <p class="muted">choose an account</p> : mine.length === 0 ? <p class="muted">none</p> : (
        <ul>{mine.map((f) => <li key={f.id}><FarmLink id={f.id} name={f.name} /> — {f.ips.length} public IPs (add more on the farm's page)</li>)}</ul>
      )}
      <p class="muted">Nodes join a farm by themselves: start <code>zos-executor --farm-id ID</code> on the machine.</p>
    </div>
  );
}

export function AccountPage({ address }: { address: string }) {
  const [data, error] = useLoad(async () => {
    decodeAddress(address);
    const [acct, nodeId, farms, owned, all]: any[] = await Promise.all([
      api.query.system.account(address),
      api.query.grid.nodeIdByAccount(address),
      loadFarms(),
      ownerContractIds(address),
      loadContracts(),
    ]);
    return {
      free: acct.data.free.toBigInt(),
      reserved: acct.data.reserved.toBigInt(),
      node: nodeId.isSome ? nodeId.unwrap().toNumber() : null,
      farms: farms.filter((f: any) => f.owner === address),
      owned: all.filter((c: Contract) => owned.includes(c.id)),
      signing: all.filter((c: Contract) => !owned.includes(c.id) && c.signers.some((s) => s.account === address)),
    };
  }, [address]);
  if (error) return <ErrorBox error={{ text: error }} />;
  if (!data) return <Loading what="the account" />;
  return (
    <div>
      <h1>Account</h1>
      <dl>
        <Field k="address"><code data-testid="account-address">{address}</code></Field>
        <Field k="free">{formatBalance(data.free)}</Field>
        <Field k="reserved (deposits)">{formatBalance(data.reserved)}</Field>
        <Field k="runs node">{data.node !== null ? <NodeLink id={data.node} /> : '—'}</Field>
        <Field k="farms">{data.farms.length ? data.farms.map((f: any) => <span key={f.id}><FarmLink id={f.id} name={f.name} /> </span>) : '—'}</Field>
      </dl>
      <h2>Contracts owned</h2>
      <ContractTable list={data.owned} />
      <h2>Contracts it co-signs</h2>
      <ContractTable list={data.signing} />
      <h2>Recent events naming it</h2>
      <EventList limit={30} filter={(e) => e.fields.some(([, v]) => v?.toString?.() === address)} />
    </div>
  );
}

/** `#/search/q`: a number is looked up as contract, node and farm id; an address as an account; a name as a farm. */
export function Search({ q }: { q: string }) {
  const [data, error] = useLoad(async () => {
    const out: { kind: string; href: string; label: string }[] = [];
    if (/^\d+$/.test(q)) {
      const id = Number(q);
      const [c, n, f] = await Promise.all([loadContract(id), loadNode(id), loadFarm(id)]);
      if (c) out.push({ kind: 'contract', href: `#/contract/${id}`, label: `contract ${id} (${c.state})` });
      if (n) out.push({ kind: 'node', href: `#/node/${id}`, label: `node ${id} (farm ${n.farmId}, ${n.online ? 'online' : 'offline'})` });
      if (f) out.push({ kind: 'farm', href: `#/farm/${id}`, label: `farm ${id} (${f.name})` });
    } else {
      let isAddress = false;
      try {
        decodeAddress(q);
        isAddress = true;
      } catch { /* not an address */ }
      if (isAddress) out.push({ kind: 'account', href: `#/account/${q}`, label: q });
      const byName: any = await api.query.grid.farmIdByName(q.toLowerCase()).catch(() => null);
      if (byName?.isSome) out.push({ kind: 'farm', href: `#/farm/${byName.unwrap()}`, label: `farm ${byName.unwrap()} (${q})` });
    }
    return out;
  }, [q]);
  // One match: go straight to it.
  useEffect(() => {
    if (data?.length === 1) location.replace(data[0].href);
  }, [data]);
  if (error) return <ErrorBox error={{ text: error }} />;
  if (!data) return <Loading what="search" />;
  return (
    <div>
      <h1>Search: {q}</h1>
      {data.length === 0 ? <p data-testid="search-empty">No contract, node, farm or account matches <b>{q}</b>.</p> : (
        <ul data-testid="search-results">{data.map((r) => <li key={r.href}>{r.kind}: <a href={r.href}>{r.label}</a></li>)}</ul>
      )}
    </div>
  );
}

export { Addr };
