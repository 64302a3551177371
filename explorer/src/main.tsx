// The explorer: a header (chain, search, signing account) and hash routes, one per object, so
// every farm, node, contract and account has a link of its own.
import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { bestBlock, chainInfo, connect, connection, finalizedBlock, ready, rpcUrl } from './chain';
import { accounts, enableExtension, extensionState, loadDevAccounts, select, selected } from './accounts';
import { startHistory } from './history';
import { useSignal } from './signal';
import { pageDataIn } from './ui';
import { Dashboard, FarmPage, Farms, NodePage, Nodes } from './pages/grid';
import { ContractPage, Contracts } from './pages/contract';
import { Deploy } from './pages/deploy';
import { Events } from './pages/events';
import { AccountPage, Farmer, Search } from './pages/misc';
import './style.css';

function useRoute(): { parts: string[]; params: URLSearchParams } {
  const [hash, setHash] = useState(location.hash);
  useEffect(() => {
    const on = () => setHash(location.hash);
    addEventListener('hashchange', on);
    return () => removeEventListener('hashchange', on);
  }, []);
  const [path, query] = hash.replace(/^#\/?/, '').split('?');
  return { parts: path.split('/').filter(Boolean).map(decodeURIComponent), params: new URLSearchParams(query ?? '') };
}

function Page() {
  const { parts, params } = useRoute();
  const [what, arg] = parts;
  const id = Number(arg);
  switch (what) {
    case undefined: return <Dashboard />;
    case 'farms': return <Farms />;
    case 'farm': return <FarmPage key={id} id={id} />;
    case 'nodes': return <Nodes />;
    case 'node': return <NodePage key={id} id={id} />;
    case 'contracts': return <Contracts />;
    case 'contract': return <ContractPage key={id} id={id} />;
    case 'events': return <Events />;
    case 'deploy': return <Deploy key={params.toString()} params={params} />;
    case 'farmer': return <Farmer />;
    case 'account': return <AccountPage key={arg} address={arg} />;
    case 'search': return <Search key={arg} q={arg ?? ''} />;
    default: return <p>Unknown page <code>{location.hash}</code>. <a href="#/">Back to the grid</a></p>;
  }
}

function AccountPicker() {
  const list = useSignal(accounts);
  const cur = useSignal(selected);
  const ext = useSignal(extensionState);
  const exts = list.filter((a) => a.source === 'extension');
  const dev = list.filter((a) => a.source === 'dev');
  return (
    <div class="picker">
      <select
        data-testid="account-select"
        value={cur ? `${cur.source}:${cur.address}` : ''}
        onChange={(e) => {
          const v = (e.target as HTMLSelectElement).value;
          select(list.find((a) => `${a.source}:${a.address}` === v) ?? null);
        }}
      >
        <option value="">— no account (read only) —</option>
        {exts.length ? (
          <optgroup label="browser extension">
            {exts.map((a) => <option key={a.address} value={`extension:${a.address}`}>{a.name} ({a.address.slice(0, 6)}…)</option>)}
          </optgroup>
        ) : null}
        {dev.length ? (
          <optgroup label="DEV ONLY: well-known development keys">
            {dev.map((a) => <option key={a.address} value={`dev:${a.address}`}>{a.name} (dev only)</option>)}
          </optgroup>
        ) : null}
      </select>
      {cur?.source === 'dev' ? <span class="dev-badge" data-testid="dev-badge" title="A public development key: anybody can sign with it. Only for development chains.">DEV KEY</span> : null}
      {ext === 'unknown' ? <button class="link" data-testid="enable-extension" onClick={() => enableExtension()}>use browser extension</button> : null}
      {ext === 'none' ? <span class="muted" title="Install the polkadot.js extension and allow this page">no extension</span> : null}
    </div>
  );
}

function Header() {
  const conn = useSignal(connection);
  const best = useSignal(bestBlock);
  const fin = useSignal(finalizedBlock);
  const [q, setQ] = useState('');
  return (
    <header>
      <a class="brand" href="#/">zos grid</a>
      <nav>
        <a href="#/farms">farms</a>
        <a href="#/nodes">nodes</a>
        <a href="#/contracts">contracts</a>
        <a href="#/events">events</a>
        <a href="#/deploy">deploy</a>
        <a href="#/farmer">farmer</a>
      </nav>
      <form class="search" onSubmit={(e) => { e.preventDefault(); if (q.trim()) location.hash = `#/search/${encodeURIComponent(q.trim())}`; }}>
        <input data-testid="search-input" placeholder="contract / node / farm id, account, farm name" value={q} onInput={(e) => setQ((e.target as HTMLInputElement).value)} />
      </form>
      <span class={`conn conn-${conn}`} title={rpcUrl()} data-testid="connection">
        {conn === 'connected' ? `${chainInfo.name} #${best} (finalized #${fin})` : conn}
      </span>
      <AccountPicker />
    </header>
  );
}

function App({ error }: { error?: string }) {
  const isReady = useSignal(ready);
  if (error && !isReady) {
    return (
      <div class="boot">
        <h1>zos grid explorer</h1>
        <p class="error">Cannot reach the node at <code>{rpcUrl()}</code>: {error}</p>
        <p>Open this page with <code>?rpc=ws://host:port</code> pointing at a node's RPC (started with <code>--rpc-cors all</code>).</p>
      </div>
    );
  }
  if (!isReady) return <div class="boot"><p class="muted">connecting to {rpcUrl()}…</p></div>;
  return (
    <div>
      <Header />
      {chainInfo.isDev ? <div class="dev-banner">Development chain: the //Alice … //Ferdie keys in the account list are public development keys, for development only.</div> : null}
      <main><Page /></main>
    </div>
  );
}

const root = document.getElementById('app')!;
root.textContent = '';
render(<App />, root);
const slow = setTimeout(() => render(<App error="no answer yet (still trying)" />, root), 10_000);
connect(rpcUrl()).finally(() => clearTimeout(slow)).then(
  () => {
    render(<App />, root);
    // The page's own data first: the event history (decoding past blocks) and the dev keys
    // (key derivations) wait for it, a second at most for a page without reads of its own.
    const pageFirst = Promise.race([pageDataIn, new Promise((r) => setTimeout(r, 1000))]);
    pageFirst.then(startHistory).catch((e) => console.warn('history', e));
    pageFirst.then(loadDevAccounts).catch((e) => console.warn('dev accounts', e));
  },
  (e) => render(<App error={String(e?.message ?? e)} />, root),
);
