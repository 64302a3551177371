// The grid, its farms and its nodes.
import { useState } from 'preact/hooks';
import { api, ago, chainNow, formatBalance, formatBytes } from '../chain';
import { selected } from '../accounts';
import { history, historyState, ev } from '../history';
import { useSignal } from '../signal';
import { UsageBars, UptimeTimeline, type Usage } from '../charts';
import {
  addRes, contractStateCounts, contractStatesOf, cruOvercommit, farmNodeIds, heartbeatTimeoutMs, loadFarm, loadFarms, loadNode,
  loadNodes, nodeContractIds, ZERO, type Node, type Res,
} from '../data';
import { Addr, ContractLink, ErrorBox, FarmLink, Field, Loading, NodeLink, TxButton, stateClass, useLoad } from '../ui';
import { EventList } from './events';

export function usageRows(capacity: Res, reserved: Res): Usage[] {
  const over = cruOvercommit();
  const rows: Usage[] = [
    {
      label: 'CPU',
      used: Number(reserved.cru),
      total: Number(capacity.cru) * over,
      text: `${reserved.cru} / ${capacity.cru * BigInt(over)} vCPU${over > 1 ? ` (${capacity.cru} cores ×${over})` : ''}`,
    },
    { label: 'memory', used: Number(reserved.mru), total: Number(capacity.mru), text: `${formatBytes(reserved.mru)} / ${formatBytes(capacity.mru)}` },
    { label: 'SSD', used: Number(reserved.sru), total: Number(capacity.sru), text: `${formatBytes(reserved.sru)} / ${formatBytes(capacity.sru)}` },
  ];
  if (capacity.hru > 0n) {
    rows.push({ label: 'HDD', used: Number(reserved.hru), total: Number(capacity.hru), text: `${formatBytes(reserved.hru)} / ${formatBytes(capacity.hru)}` });
  }
  return rows;
}

export function Dashboard() {
  const [data, error] = useLoad(async () => {
    const [farms, nodes, byState, totals] = await Promise.all([
      loadFarms(), loadNodes(), contractStateCounts(), api.query.billing.ledgerTotals(),
    ]);
    return { farms, nodes, byState, totals: totals as any };
  }, []);
  if (error) return <ErrorBox error={{ text: error }} />;
  if (!data) return <Loading what="the grid" />;
  const cap = data.nodes.reduce((a, n) => addRes(a, n.capacity), ZERO);
  const resv = data.nodes.reduce((a, n) => addRes(a, n.reserved), ZERO);
  const { byState } = data;
  const contracts = [...byState.values()].reduce((a, n) => a + n, 0);
  const ips = data.farms.flatMap((f) => f.ips);
  return (
    <div>
      <h1>Grid</h1>
      <div class="cards">
        <div class="card"><div class="big" data-testid="count-farms">{data.farms.length}</div>farms</div>
        <div class="card"><div class="big" data-testid="count-nodes">{data.nodes.filter((n) => n.online).length} / {data.nodes.length}</div>nodes online</div>
        <div class="card"><div class="big" data-testid="count-contracts">{contracts}</div>contracts
          <div class="muted">{[...byState].map(([s, n]) => `${n} ${s}`).join(', ')}</div></div>
        <div class="card"><div class="big">{ips.filter((i) => i.contract === null).length} / {ips.length}</div>public IPs free</div>
        <div class="card"><div class="big">{formatBalance(data.totals.collected.toBigInt(), 2)}</div>billed and collected</div>
      </div>
      <h2>Capacity of the grid</h2>
      <UsageBars rows={usageRows(cap, resv)} testid="grid-capacity" />
      <h2>Capacity use per farm</h2>
      {data.farms.length === 0 ? <p class="muted">no farms yet</p> : (
        <table>
          <thead><tr><th>farm</th><th>nodes</th><th>reserved of capacity</th></tr></thead>
          <tbody>
            {data.farms.map((f) => {
              const ns = data.nodes.filter((n) => n.farmId === f.id);
              const c = ns.reduce((a, n) => addRes(a, n.capacity), ZERO);
              const r = ns.reduce((a, n) => addRes(a, n.reserved), ZERO);
              return (
                <tr key={f.id}>
                  <td><FarmLink id={f.id} name={f.name} /></td>
                  <td>{ns.filter((n) => n.online).length} / {ns.length} online</td>
                  <td>{ns.length ? <UsageBars rows={usageRows(c, r)} /> : <span class="muted">no nodes</span>}</td>
                </tr>
              );
            })}
          </tbody>
        </table>
      )}
      <h2>Latest finalized events of the grid <a class="small" href="#/events">(all)</a></h2>
      <EventList limit={10} filter={(e) => ['grid', 'deployments', 'billing'].includes(e.section)} />
    </div>
  );
}

export function Farms() {
  const [data, error] = useLoad(async () => ({ farms: await loadFarms(), nodes: await loadNodes() }), []);
  if (error) return <ErrorBox error={{ text: error }} />;
  if (!data) return <Loading what="farms" />;
  return (
    <div>
      <h1>Farms</h1>
      <p><a href="#/farmer">create a farm</a></p>
      <table data-testid="farms-table">
        <thead><tr><th>id</th><th>name</th><th>owner</th><th>certification</th><th>pricing policy</th><th>public IPs free/total</th><th>nodes</th></tr></thead>
        <tbody>
          {data.farms.map((f) => (
            <tr key={f.id} data-testid={`farm-row-${f.id}`}>
              <td><a href={`#/farm/${f.id}`}>{f.id}</a></td>
              <td><a href={`#/farm/${f.id}`}>{f.name}</a></td>
              <td><Addr a={f.owner} /></td>
              <td>{f.certification}</td>
              <td>{f.pricingPolicy}</td>
              <td>{f.ips.filter((i) => i.contract === null).length} / {f.ips.length}</td>
              <td>{data.nodes.filter((n) => n.farmId === f.id).length}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {data.farms.length === 0 ? <p class="muted">no farms yet</p> : null}
    </div>
  );
}

export function FarmPage({ id }: { id: number }) {
  const account = useSignal(selected);
  const [data, error] = useLoad(async () => {
    const farm = await loadFarm(id);
    if (!farm) return null;
    const ids = await farmNodeIds(id);
    const nodes = (await Promise.all(ids.map(loadNode))).filter(Boolean) as Node[];
    const policy: any = await api.query.billing.pricingPolicies(farm.pricingPolicy);
    return { farm, nodes, policy: policy.isSome ? policy.unwrap() : null };
  }, [id]);
  if (error) return <ErrorBox error={{ text: error }} />;
  if (data === undefined) return <Loading what={`farm ${id}`} />;
  if (data === null) return <p data-testid="not-found">No farm {id} on chain.</p>;
  const { farm, nodes, policy } = data;
  const cap = nodes.reduce((a, n) => addRes(a, n.capacity), ZERO);
  const resv = nodes.reduce((a, n) => addRes(a, n.reserved), ZERO);
  const isOwner = account?.address === farm.owner;
  const pct = (p: any) => `${(p.toNumber() / 1e7).toFixed(1).replace(/\.0$/, '')} %`;
  return (
    <div>
      <h1 data-testid="farm-title">Farm {farm.id}: {farm.name}</h1>
      <dl>
        <Field k="owner"><Addr a={farm.owner} full /></Field>
        <Field k="certification" testid="farm-certification">{farm.certification}</Field>
        <Field k="pricing policy">
          {farm.pricingPolicy}
          {policy ? (
            <span class="muted"> — CU {formatBalance(policy.cuHour.toBigInt())}/h, SU {formatBalance(policy.suHour.toBigInt())}/h,
              IPv4 {formatBalance(policy.ipv4Hour.toBigInt())}/h, traffic {formatBalance(policy.trafficGib.toBigInt())}/GiB;
              farmer {pct(policy.farmOwnerShare)}, treasury {pct(policy.treasuryShare)}, burn {pct(policy.burnShare)}</span>
          ) : <span class="muted"> (no such policy)</span>}
        </Field>
      </dl>
      <h2>Capacity use</h2>
      {nodes.length ? <UsageBars rows={usageRows(cap, resv)} testid="farm-capacity" /> : <p class="muted">no nodes yet</p>}
      <h2>Public IPv4 pool ({farm.ips.filter((i) => i.contract === null).length} free of {farm.ips.length})</h2>
      <table data-testid="farm-ips">
        <thead><tr><th>address</th><th>gateway</th><th>used by</th></tr></thead>
        <tbody>
          {farm.ips.map((ip) => (
            <tr key={ip.ip}>
              <td>{ip.ip}</td>
              <td>{ip.gateway}</td>
              <td>{ip.contract === null ? <span class="free">free</span> : <span><ContractLink id={ip.contract} /> on <NodeLink id={ip.node!} /></span>}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {isOwner ? <AddIp farmId={farm.id} /> : <p class="muted">The farm's owner can add public IPs here.</p>}
      {isOwner ? <AuthorizeNode farmId={farm.id} /> : null}
      <h2>Nodes</h2>
      <NodeTable nodes={nodes} testid="farm-nodes" />
    </div>
  );
}

function AddIp({ farmId }: { farmId: number }) {
  const [ip, setIp] = useState('185.69.166.10/24');
  const [gw, setGw] = useState('185.69.166.1');
  const parse = () => {
    const m = /^(\d+)\.(\d+)\.(\d+)\.(\d+)\/(\d+)$/.exec(ip.trim());
    const g = /^(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(gw.trim());
    if (!m || !g) throw new Error('write the address as a.b.c.d/prefix and the gateway as a.b.c.d');
    return { ip: { ip: m.slice(1, 5).map(Number), prefixLen: Number(m[5]) }, gateway: g.slice(1, 5).map(Number) };
  };
  return (
    <div class="form" data-testid="add-ip-form">
      <h3>Add a public IP (farmer)</h3>
      <label>address/prefix <input data-testid="ip-input" value={ip} onInput={(e) => setIp((e.target as HTMLInputElement).value)} /></label>
      <label>gateway <input data-testid="gw-input" value={gw} onInput={(e) => setGw((e.target as HTMLInputElement).value)} /></label>
      <TxButton label="add IP" testid="add-ip" make={() => api.tx.grid.addFarmIp(farmId, parse())} />
    </div>
  );
}

/** The farm owner's consent for a node account to register into the farm (nodes cannot join unasked). */
function AuthorizeNode({ farmId }: { farmId: number }) {
  const [account, setAccount] = useState('');
  return (
    <div class="form" data-testid="authorize-node-form">
      <h3>Authorize a node (farmer)</h3>
      <p class="muted">A node joins this farm only after you authorize its account (the executor prints it at start).</p>
      <label>node account <input data-testid="node-account-input" size={50} value={account} onInput={(e) => setAccount((e.target as HTMLInputElement).value.trim())} /></label>
      <TxButton label="authorize" testid="authorize-node" disabled={!account} make={() => api.tx.grid.authorizeNode(farmId, account)} />
    </div>
  );
}

export function NodeTable({ nodes, testid }: { nodes: Node[]; testid?: string }) {
  if (nodes.length === 0) return <p class="muted">no nodes</p>;
  return (
    <table data-testid={testid}>
      <thead><tr><th>node</th><th>farm</th><th>status</th><th>last heartbeat</th><th>contracts</th><th>CPU</th><th>memory</th><th>SSD</th><th>location</th></tr></thead>
      <tbody>
        {nodes.map((n) => (
          <tr key={n.id} data-testid={`node-row-${n.id}`}>
            <td><NodeLink id={n.id} /></td>
            <td><FarmLink id={n.farmId} /></td>
            <td><NodeStatus n={n} /></td>
            <td>{n.lastHeartbeatMs ? `${ago((chainNow.get() || Date.now()) - n.lastHeartbeatMs)} ago` : 'never'}</td>
            <td>{n.activeContracts}</td>
            <td>{String(n.reserved.cru)} / {String(n.capacity.cru * BigInt(cruOvercommit()))}</td>
            <td>{formatBytes(n.reserved.mru)} / {formatBytes(n.capacity.mru)}</td>
            <td>{formatBytes(n.reserved.sru)} / {formatBytes(n.capacity.sru)}</td>
            <td>{[n.city, n.country].filter(Boolean).join(', ')}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

export function NodeStatus({ n }: { n: Node }) {
  return <span class={n.online ? 'state state-online' : 'state state-offline'} data-testid="node-status">{n.online ? 'online' : 'offline'}</span>;
}

export function Nodes() {
  const [nodes, error] = useLoad(loadNodes, []);
  if (error) return <ErrorBox error={{ text: error }} />;
  if (!nodes) return <Loading what="nodes" />;
  return (
    <div>
      <h1>Nodes</h1>
      <NodeTable nodes={nodes} testid="nodes-table" />
    </div>
  );
}

export function NodePage({ id }: { id: number }) {
  const events = useSignal(history);
  const hs = useSignal(historyState);
  const now = useSignal(chainNow);
  const [data, error] = useLoad(async () => {
    const node = await loadNode(id);
    if (!node) return null;
    const ids = await nodeContractIds(id);
    const states = await contractStatesOf(ids);
    const contracts = ids.map((c, i) => ({ id: c, state: states[i] })).filter((c): c is { id: number; state: string } => c.state !== null);
    return { node, contracts };
  }, [id]);
  if (error) return <ErrorBox error={{ text: error }} />;
  if (data === undefined) return <Loading what={`node ${id}`} />;
  if (data === null) return <p data-testid="not-found">No node {id} on chain.</p>;
  const { node, contracts } = data;
  const beats = events.filter((e) => e.section === 'grid' && e.method === 'NodeHeartbeat' && Number(ev(e, 'nodeId')?.toString()) === id)
    .map((e) => Number(ev(e, 'timestampMs').toBigInt()));
  const firstTime = events.find((e) => e.timeMs > 0)?.timeMs ?? now;
  const from = Math.max(firstTime, now - 3600_000);
  return (
    <div>
      <h1>Node {node.id} <NodeStatus n={node} /></h1>
      <dl>
        <Field k="farm"><FarmLink id={node.farmId} /></Field>
        <Field k="account"><Addr a={node.account} full /></Field>
        <Field k="last heartbeat">{node.lastHeartbeatMs ? `${new Date(node.lastHeartbeatMs).toLocaleString()} (${ago(now - node.lastHeartbeatMs)} ago)` : 'never'}</Field>
        <Field k="online since">{node.online && node.onlineSinceMs ? `${new Date(node.onlineSinceMs).toLocaleString()} (uptime ${ago(node.uptimeSeconds * 1000)})` : '—'}</Field>
        <Field k="power">target {node.powerTarget}, state {node.powerState}</Field>
        <Field k="location">{[node.city, node.country].filter(Boolean).join(', ') || '—'}</Field>
        <Field k="executor">{node.version}</Field>
        <Field k="registered at block">{node.registeredAt}</Field>
        <Field k="box key"><code>{node.boxKey}</code></Field>
      </dl>
      <h2>Capacity: reserved of total</h2>
      <UsageBars rows={usageRows(node.capacity, node.reserved)} testid="node-capacity" />
      <h2>Uptime (heartbeats, last hour at most)</h2>
      <UptimeTimeline beats={beats.filter((b) => b >= from)} from={from} to={now} timeoutMs={heartbeatTimeoutMs()} testid="node-uptime" />
      {!hs.done ? <p class="muted">reading past blocks…</p> : null}
      <h2>Contracts ({contracts.length})</h2>
      {contracts.length === 0 ? <p class="muted">none</p> : (
        <ul data-testid="node-contracts">
          {contracts.map((c) => <li key={c.id}><ContractLink id={c.id} /> <span class={stateClass(c.state)}>{c.state}</span></li>)}
        </ul>
      )}
      <p><a href={`#/deploy?node=${node.id}`} data-testid="deploy-here">deploy on this node</a></p>
    </div>
  );
}
