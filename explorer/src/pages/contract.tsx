// Contracts: their state, signers and approvals, the pending proposal against the active spec,
// reports and billing; approving, rejecting, proposing a cancel.
import { blake2AsHex } from '@polkadot/util-crypto';
import { api, cancelHash, field, formatBalance, formatBytes } from '../chain';
import { selected } from '../accounts';
import { history, ev } from '../history';
import { useSignal } from '../signal';
import { TimeBars } from '../charts';
import { diffLines, readableSpec } from '../spec';
import { loadContract, loadContracts, type Contract } from '../data';
import { Addr, ErrorBox, Field, Json, Loading, NodeLink, TxButton, stateClass, useLoad } from '../ui';
import { EventRow } from './events';
import { Console } from './console';

export function Contracts() {
  const [list, error] = useLoad(loadContracts, []);
  if (error) return <ErrorBox error={{ text: error }} />;
  if (!list) return <Loading what="contracts" />;
  return (
    <div>
      <h1>Contracts</h1>
      <p><a href="#/deploy">deploy a new contract</a></p>
      <ContractTable list={list} testid="contracts-table" />
    </div>
  );
}

export function ContractTable({ list, testid }: { list: Contract[]; testid?: string }) {
  if (list.length === 0) return <p class="muted">no contracts</p>;
  return (
    <table data-testid={testid}>
      <thead><tr><th>id</th><th>state</th><th>owner</th><th>node</th><th>signers</th><th>threshold</th><th>version</th><th>deposit</th></tr></thead>
      <tbody>
        {list.map((c) => (
          <tr key={c.id} data-testid={`contract-row-${c.id}`}>
            <td><a href={`#/contract/${c.id}`}>{c.id}</a></td>
            <td><span class={stateClass(c.state)}>{c.state}</span></td>
            <td><Addr a={c.owner} /></td>
            <td><NodeLink id={c.node} /></td>
            <td>{c.signers.length}</td>
            <td>{c.threshold}</td>
            <td>{c.active ? c.active.version : '—'}</td>
            <td>{formatBalance(c.deposit)}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

type Loaded = {
  c: Contract;
  proposal: any | null;
  active: any | null;
  report: any | null;
  billing: any | null;
  graceSince: number | null;
};

export function ContractPage({ id }: { id: number }) {
  const account = useSignal(selected);
  const events = useSignal(history);
  const [data, error] = useLoad<Loaded | null>(async () => {
    // All at once: the contract's parts are read whether or not it still exists.
    const [c, proposal, active, report, billing, grace]: any[] = await Promise.all([
      loadContract(id),
      api.query.deployments.proposals(id),
      api.query.deployments.activeSpecs(id),
      api.query.deployments.reports(id),
      api.query.billing.contractBillings(id),
      api.query.billing.graceSince(id),
    ]);
    if (!c) return null;
    return {
      c,
      proposal: proposal.isSome ? proposal.unwrap() : null,
      active: active.isSome ? active.unwrap() : null,
      report: report.isSome ? report.unwrap() : null,
      billing: billing.isSome ? billing.unwrap() : null,
      graceSince: grace.isSome ? grace.unwrap().toNumber() : null,
    };
  }, [id]);
  const mine = events.filter((e) => {
    const v = ev(e, 'contract');
    return v !== undefined && Number(v.toString()) === id;
  });
  if (error) return <ErrorBox error={{ text: error }} />;
  if (data === undefined) return <Loading what={`contract ${id}`} />;
  if (data === null) {
    const end = mine.find((e) => e.method === 'ContractCancelled');
    return (
      <div>
        <h1>Contract {id}</h1>
        <p data-testid="not-found">{end ? `Cancelled at block ${end.block} (${ev(end, 'cause').type}); only its events remain.` : `No contract ${id} on chain.`}</p>
        <ContractEvents list={mine} />
      </div>
    );
  }
  const { c, proposal, active, report, billing, graceSince } = data;
  const me = account?.address;
  const signer = c.signers.find((s) => s.account === me);
  const charges = mine.filter((e) => e.section === 'billing' && e.method === 'ReportSettled').map((e) => ({
    x: Number(ev(e, 'windowEnd').toBigInt()) * 1000,
    y: Number(ev(e, 'charged').toBigInt()),
    title: `window ${new Date(Number(ev(e, 'windowStart').toBigInt()) * 1000).toLocaleTimeString()}–${new Date(Number(ev(e, 'windowEnd').toBigInt()) * 1000).toLocaleTimeString()}: charged ${formatBalance(ev(e, 'charged').toBigInt(), 6)}, collected ${formatBalance(ev(e, 'collected').toBigInt(), 6)}`,
  }));
  const totalCharged = charges.reduce((a, p) => a + BigInt(p.y), 0n);
  return (
    <div>
      <h1>Contract {c.id} <span class={stateClass(c.state)} data-testid="contract-state" data-state={c.state}>{c.state}</span></h1>
      {c.stateDetail ? <p class="error">{c.stateDetail}</p> : null}
      <dl>
        <Field k="owner"><Addr a={c.owner} full /></Field>
        <Field k="node"><NodeLink id={c.node} /></Field>
        <Field k="active spec">{c.active ? <span>version {c.active.version}, hash <code data-testid="active-hash">{c.active.hash}</code></span> : 'none yet (waiting for the first approval)'}</Field>
        <Field k="public IPs">{c.publicIps.length ? c.publicIps.map((p) => `${p.workload}: ${p.ip}`).join(', ') : '—'}</Field>
        <Field k="deposit">{formatBalance(c.deposit)}</Field>
        <Field k="created at block">{c.createdAt}{c.activatedAt !== null ? `; activated at block ${c.activatedAt}` : ''}</Field>
      </dl>

      <h2>Signers (threshold {c.threshold})</h2>
      <table data-testid="signers">
        <thead><tr><th>account</th><th>weight</th><th>required</th><th>approved the pending proposal</th></tr></thead>
        <tbody>
          {c.signers.map((s) => {
            const approved = proposal?.approvals.some((a: any) => a.toString() === s.account);
            return (
              <tr key={s.account} data-testid="signer-row">
                <td><Addr a={s.account} /></td>
                <td>{s.weight}</td>
                <td>{s.required ? 'yes' : 'no'}</td>
                <td>{proposal ? (approved ? <span class="ok" data-testid="approved">✓ approved</span> : <span class="muted">not yet</span>) : '—'}</td>
              </tr>
            );
          })}
        </tbody>
      </table>

      {proposal ? <Proposal c={c} proposal={proposal} active={active} me={me} signer={signer} /> : <p class="muted" data-testid="no-proposal">No pending proposal.</p>}

      <h2>Actions</h2>
      <div class="actions">
        {c.active && signer && !proposal && c.state !== 'GracePeriod' ? <a class="button" href={`#/deploy?update=${c.id}`} data-testid="propose-update">propose an update (version {c.active.version + 1})</a> : null}
        {c.active && signer && !proposal ? <TxButton label="propose to cancel" kind="danger" testid="propose-cancel" make={() => api.tx.deployments.proposeCancel(c.id)} /> : null}
        {!c.active && me === c.owner ? <TxButton label="withdraw (owner, never activated)" kind="danger" testid="withdraw" make={() => api.tx.deployments.proposeCancel(c.id)} /> : null}
        {!signer ? <span class="muted">Only the contract's signers can propose changes; choose one of them as the account.</span> : null}
      </div>

      <h2>Deployment report</h2>
      {report ? (
        <div data-testid="deployment-report">
          <p>version {report.version.toNumber()} at block {report.at.toNumber()}</p>
          <ul>
            {report.workloads.map((w: any) => (
              <li key={w.name.toUtf8()}>{w.name.toUtf8()}: <ReportResult r={w.result} /></li>
            ))}
          </ul>
        </div>
      ) : <p class="muted">The node has not reported on the active version yet.</p>}

      <h2>Console</h2>
      <Console contractId={c.id} nodeId={c.node} />

      <h2>Billing</h2>
      {billing ? (
        <dl data-testid="billing">
          <Field k="billed until">{new Date(Number(billing.lastReport.windowEnd.toBigInt()) * 1000).toLocaleString()}</Field>
          <Field k="last report">window {new Date(Number(billing.lastReport.windowStart.toBigInt()) * 1000).toLocaleTimeString()}–{new Date(Number(billing.lastReport.windowEnd.toBigInt()) * 1000).toLocaleTimeString()}, uptime {String(billing.lastReport.uptimeSeconds)} s,
            traffic in {formatBytes(billing.lastReport.publicBytesIn.toBigInt())} / out {formatBytes(billing.lastReport.publicBytesOut.toBigInt())}</Field>
          <Field k="debt" testid="debt">{formatBalance(billing.debt.toBigInt(), 6)}</Field>
          <Field k="grace period">{graceSince !== null ? <span class="error">since block {graceSince}</span> : 'no'}</Field>
        </dl>
      ) : <p class="muted">No consumption report accepted yet.</p>}
      <h3>Charges over time{charges.length ? ` (total ${formatBalance(totalCharged, 6)} in the blocks read)` : ''}</h3>
      <TimeBars points={charges} yText={(y) => formatBalance(BigInt(Math.round(y)), 4)} testid="charges-chart" empty="no settled reports in the blocks read" />

      {active ? (
        <div>
          <h2>Active spec (version {active.version.toNumber()})</h2>
          <Json value={readableSpec(active)} testid="active-spec" />
        </div>
      ) : null}
      <ContractEvents list={mine} />
    </div>
  );
}

/** A workload's `WorkloadResult`: `Ok`, `Error(reason)` (the contract failed), or `Unhealthy(reason)`
 * (a health check's VM fails its probe; the contract stays deployed). */
function ReportResult({ r }: { r: any }) {
  if (r.isOk) return <span class="ok">ok</span>;
  if (r.isUnhealthy) return <span class="warn" data-result="unhealthy">unhealthy: {r.asUnhealthy.toUtf8()}</span>;
  return <span class="error">{r.asError.toUtf8()}</span>;
}

function ContractEvents({ list }: { list: any[] }) {
  return (
    <div>
      <h2>Events of this contract</h2>
      {list.length === 0 ? <p class="muted">none in the blocks read</p> : (
        <table class="events"><tbody>{list.slice().reverse().map((e) => <EventRow key={`${e.block}-${e.index}`} e={e} />)}</tbody></table>
      )}
    </div>
  );
}

function Proposal({ c, proposal, active, me, signer }: { c: Contract; proposal: any; active: any; me?: string; signer?: { weight: number; required: boolean } }) {
  const hash: string = field(proposal, 'hash').toHex();
  const action = proposal.action;
  const isDeploy = action.isDeploy;
  const spec = isDeploy ? action.asDeploy : null;
  const local = spec ? blake2AsHex(spec.toU8a(), 256) : c.active ? cancelHash(c.id, c.active.version) : null;
  const verified = local === hash;
  const approvals: string[] = proposal.approvals.map((a: any) => a.toString());
  const weight = c.signers.filter((s) => approvals.includes(s.account)).reduce((a, s) => a + s.weight, 0);
  const missingRequired = c.signers.filter((s) => s.required && !approvals.includes(s.account));
  const proposedText = spec ? JSON.stringify(readableSpec(spec), null, 2) : '';
  const activeText = active ? JSON.stringify(readableSpec(active), null, 2) : '';
  const alreadyApproved = me ? approvals.includes(me) : false;
  return (
    <div class="proposal" data-testid="proposal">
      <h2>Pending proposal: {isDeploy ? `deploy version ${spec.version.toNumber()}` : 'cancel the contract'}</h2>
      <dl>
        <Field k="hash approvals name"><code data-testid="proposal-hash">{hash}</code>{' '}
          {verified ? <span class="ok" data-testid="hash-verified">✓ recomputed here from the {isDeploy ? 'decoded spec' : 'contract id and version'}</span>
            : <span class="error">✗ does not match the hash recomputed here ({local})</span>}</Field>
        <Field k="proposed by"><Addr a={proposal.proposer.toString()} /></Field>
        <Field k="approved weight" testid="approved-weight">{weight} of {c.threshold}{missingRequired.length ? `; still required: ${missingRequired.length} signer(s)` : ''}</Field>
        <Field k="expires at block">{proposal.expiresAt.toNumber()}</Field>
        <Field k="deposit for the proposed spec">{formatBalance(proposal.deposit.toBigInt())}</Field>
      </dl>
      {spec && active ? (
        <div>
          <h3>Changes against the active spec (version {active.version.toNumber()})</h3>
          <pre class="diff" data-testid="proposal-diff">
            {diffLines(activeText, proposedText).map(([k, line], i) => (
              <div key={i} class={k === '+' ? 'add' : k === '-' ? 'del' : ''}>{k} {line}</div>
            ))}
          </pre>
        </div>
      ) : null}
      {spec ? (
        <details open={!active}>
          <summary>Proposed spec (decoded from chain)</summary>
          <pre class="json" data-testid="proposal-spec">{proposedText}</pre>
        </details>
      ) : null}
      <div class="actions">
        {signer && !alreadyApproved ? (
          <TxButton label={`approve ${hash.slice(0, 10)}…`} testid="approve" disabled={!verified}
            make={() => api.tx.deployments.approve(c.id, hash)} />
        ) : null}
        {signer?.required ? (
          <TxButton label="reject (veto)" kind="danger" testid="reject" make={() => api.tx.deployments.reject(c.id, hash)} />
        ) : null}
        {alreadyApproved ? <span class="ok">you approved this proposal</span> : null}
        {!signer ? <span class="muted">The selected account is not a signer of this contract.</span> : null}
      </div>
    </div>
  );
}
