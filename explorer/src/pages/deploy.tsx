// The spec editor: readable JSON in, checked as the chain checks it, what it would reserve shown
// against the node, then `deployments.create` (or `propose_update` for an existing contract).
import { useEffect, useMemo, useRef, useState } from 'preact/hooks';
import { blake2AsU8a } from '@polkadot/util-crypto';
import { api, encodeSpec, errorDocs, formatBalance, formatBytes, variantDocs } from '../chain';
import { accounts, selected, eventsNamed } from '../accounts';
import { useSignal } from '../signal';
import { EXAMPLE_SPEC, gatewayHostKeys, gatewayHostProblem, parseSpec, readableSpec, requiredResources, SpecProblem, validateSpec } from '../spec';
import { freeCapacity, loadFarm, loadNode } from '../data';
import { ErrorBox, Loading, TxButton, useLoad } from '../ui';

type SignerRow = { account: string; weight: number; required: boolean };

const SPEC_ERROR = 'zos_primitives::spec::SpecError';
const blake2_256 = (data: Uint8Array) => blake2AsU8a(data, 256);

export function Deploy({ params }: { params: URLSearchParams }) {
  const updateId = params.get('update') ? Number(params.get('update')) : null;
  return updateId !== null ? <UpdateEditor id={updateId} /> : <CreateEditor initialNode={params.get('node') ?? ''} />;
}

function UpdateEditor({ id }: { id: number }) {
  const [data, error] = useLoad(async () => {
    const c: any = await api.query.deployments.contracts(id);
    const spec: any = await api.query.deployments.activeSpecs(id);
    if (c.isNone || spec.isNone) return null;
    const readable = readableSpec(spec.unwrap());
    return { node: c.unwrap().node.toNumber(), text: JSON.stringify({ ...readable, version: (readable.version as number) + 1 }, null, 2) };
  }, [id]);
  // Read once: later blocks must not overwrite what is being edited.
  const [snapshot, setSnapshot] = useState<typeof data>(undefined);
  useEffect(() => { if (data && !snapshot) setSnapshot(data); }, [data]);
  if (error) return <ErrorBox error={{ text: error }} />;
  if (data === null) return <p>Contract {id} has no active spec to update.</p>;
  if (!snapshot) return <Loading what={`contract ${id}`} />;
  return <Editor mode={{ update: id }} initialText={snapshot.text} initialNode={String(snapshot.node)} />;
}

function CreateEditor({ initialNode }: { initialNode: string }) {
  return <Editor mode={{ create: true }} initialText={JSON.stringify(EXAMPLE_SPEC, null, 2)} initialNode={initialNode} />;
}

function Editor({ mode, initialText, initialNode }: { mode: { update: number } | { create: true }; initialText: string; initialNode: string }) {
  const account = useSignal(selected);
  const known = useSignal(accounts);
  const isUpdate = 'update' in mode;
  const [text, setText] = useState(initialText);
  const [nodeId, setNodeId] = useState(initialNode);
  const [signers, setSigners] = useState<SignerRow[]>([]);
  const [threshold, setThreshold] = useState(1);
  const [skipChecks, setSkipChecks] = useState(false);

  // The signer table starts with the selected account, and follows it while that is the only row.
  const prevAccount = useRef<string | null>(null);
  useEffect(() => {
    if (account && (signers.length === 0 || (signers.length === 1 && signers[0].account === prevAccount.current))) {
      setSigners([{ ...(signers[0] ?? { weight: 1, required: false }), account: account.address }]);
    }
    prevAccount.current = account?.address ?? null;
  }, [account]);

  const checked = useMemo(() => {
    try {
      const spec = parseSpec(text);
      const specError = validateSpec(spec);
      let encoded: ReturnType<typeof encodeSpec> | null = null;
      let encodeError = '';
      try {
        encoded = encodeSpec(spec);
      } catch (e) {
        encodeError = String((e as Error).message ?? e);
      }
      return { spec, specError, encoded, encodeError, problem: null as SpecProblem | null };
    } catch (e) {
      return { spec: null, specError: null, encoded: null, encodeError: '', problem: e as SpecProblem };
    }
  }, [text]);

  const [target] = useLoad(async () => {
    if (!/^\d+$/.test(nodeId)) return null;
    const node = await loadNode(Number(nodeId));
    if (!node) return { node: null, freeIps: 0 };
    const farm = await loadFarm(node.farmId);
    return { node, freeIps: farm ? farm.ips.filter((i) => i.contract === null).length : 0 };
  }, [nodeId]);

  // Gateway hosts on the picked node, checked (as on chain) once the spec rules pass: the node's
  // domain gives the keys, deployments.GatewayHosts who holds them.
  const hostNode = checked.spec && checked.specError === null && target?.node ? target.node : null;
  const hostKeys = hostNode ? gatewayHostKeys(checked.spec!, hostNode.id, hostNode.gatewayDomain, blake2_256) : null;
  const keysToRead = hostKeys?.keys?.map((k) => k.key) ?? [];
  const [holders] = useLoad(async () => {
    if (keysToRead.length === 0) return new Map<string, number>();
    const held: any[] = await api.query.deployments.gatewayHosts.multi(keysToRead);
    return new Map(keysToRead.flatMap((k, i): [string, number][] => (held[i].isSome ? [[k, held[i].unwrap().toNumber()]] : [])));
  }, [keysToRead]);
  const hostProblem = hostNode && (hostKeys?.problem || holders)
    ? gatewayHostProblem(checked.spec!, hostNode.id, hostNode.gatewayDomain, (k) => holders?.get(k), isUpdate ? mode.update : null, blake2_256)
    : null;

  const req = checked.spec ? requiredResources(checked.spec) : null;
  const deposit = checked.encoded
    ? (api.consts.deployments.depositPerByte as any).toBigInt() * BigInt(checked.encoded.length)
      + (isUpdate ? 0n : (api.consts.deployments.depositBase as any).toBigInt())
    : null;

  // What the chain would refuse besides the spec rules, named by the chain's own errors.
  const callProblems: string[] = [];
  if (checked.spec) {
    if (!isUpdate && checked.spec.version !== 0) callProblems.push('FirstVersionMustBeZero');
    if (!isUpdate) {
      if (signers.length === 0) callProblems.push('NoSigners');
      if (new Set(signers.map((s) => s.account)).size !== signers.length) callProblems.push('DuplicateSigner');
      if (signers.some((s) => s.weight < 1)) callProblems.push('ZeroSignerWeight');
      if (account && !signers.some((s) => s.account === account.address)) callProblems.push('OwnerNotSigner');
      if (threshold < 1) callProblems.push('ZeroThreshold');
      if (signers.reduce((a, s) => a + s.weight, 0) < threshold) callProblems.push('ThresholdUnreachable');
      if (target && target.node === null) callProblems.push('UnknownNode');
    }
  }
  const blocked = !checked.spec || !checked.encoded || (!skipChecks && (checked.specError !== null || callProblems.length > 0 || hostProblem !== null));

  const make = () => {
    const spec = checked.spec!;
    if ('update' in mode) return api.tx.deployments.proposeUpdate(mode.update, spec);
    return api.tx.deployments.create(Number(nodeId), spec, signers, threshold);
  };
  const done = (events: any[]) => {
    const created = eventsNamed(events, 'deployments', 'ContractCreated')[0];
    const id = created ? created.data.contract.toNumber() : 'update' in mode ? mode.update : null;
    if (id !== null) location.hash = `#/contract/${id}`;
  };

  const setRow = (i: number, patch: Partial<SignerRow>) => setSigners(signers.map((s, j) => (j === i ? { ...s, ...patch } : s)));

  return (
    <div>
      <h1>{'update' in mode ? `Propose an update of contract ${mode.update}` : 'Deploy a spec'}</h1>
      <div class="editor">
        <div>
          <p class="muted">The spec in the readable form <code>zos deploy</code> takes (JSON): workloads of kind <code>vm</code>, <code>disk</code>, <code>volume</code>, <code>network</code>, <code>public_ip</code>, <code>gateway</code>, <code>health_check</code>; sizes in MiB.</p>
          <textarea data-testid="spec-editor" spellcheck={false} rows={28} value={text} onInput={(e) => setText((e.target as HTMLTextAreaElement).value)} />
        </div>
        <div class="side">
          <h3>Check</h3>
          {checked.problem ? (
            <div class="error" data-testid="spec-check" data-result="format">{checked.problem.message}</div>
          ) : checked.specError ? (
            <div class="error" data-testid="spec-check" data-result={checked.specError}>
              The chain would refuse it: <b>deployments.InvalidSpec({checked.specError})</b>
              <div>{variantDocs(SPEC_ERROR, checked.specError)}</div>
            </div>
          ) : checked.encodeError ? (
            <div class="error" data-testid="spec-check" data-result="encode">{checked.encodeError}</div>
          ) : (
            <div class="ok" data-testid="spec-check" data-result="ok">✓ passes the chain's spec rules</div>
          )}
          {callProblems.map((p) => (
            <div class="error" key={p} data-testid="call-check">The chain would refuse the call: <b>deployments.{p}</b> {errorDocs('deployments', p)}</div>
          ))}
          {hostProblem ? (
            <div class="error" data-testid="host-check" data-result={hostProblem.specError ?? hostProblem.error}>
              The chain would refuse the call: <b>deployments.{hostProblem.specError ? `InvalidSpec(${hostProblem.specError})` : hostProblem.error}</b>
              <div>{hostProblem.message}</div>
            </div>
          ) : null}
          {checked.encoded ? (
            <dl>
              <dt>spec hash</dt><dd><code data-testid="spec-hash">{checked.encoded.hash}</code></dd>
              <dt>encoded size</dt><dd>{checked.encoded.length} bytes</dd>
              <dt>deposit held</dt><dd>{deposit !== null ? formatBalance(deposit) : '—'}</dd>
            </dl>
          ) : null}
          {req ? (
            <div data-testid="required">
              <h3>Required resources</h3>
              <table>
                <thead><tr><th></th><th>needs</th><th>free on node {nodeId || '?'}</th></tr></thead>
                <tbody>
                  <ReqRow label="CPU" need={req.cru} free={target?.node ? freeCapacity(target.node).cru : null} fmt={(v) => `${v} vCPU`} />
                  <ReqRow label="memory" need={req.mru} free={target?.node ? freeCapacity(target.node).mru : null} fmt={formatBytes} />
                  <ReqRow label="SSD" need={req.sru} free={target?.node ? freeCapacity(target.node).sru : null} fmt={formatBytes} />
                  <ReqRow label="public IPv4" need={BigInt(req.publicIpv4)} free={target?.node ? BigInt(target.freeIps) : null} fmt={(v) => String(v)} />
                  {/* Host names are not a capacity of the node, so nothing to compare with; they are billed per hour. */}
                  {req.gatewayHosts > 0 ? <ReqRow label="gateway hosts" need={BigInt(req.gatewayHosts)} free={null} fmt={(v) => String(v)} /> : null}
                </tbody>
              </table>
              {target?.node && !target.node.online ? <div class="error">node {nodeId} is offline: the chain refuses to place work on it</div> : null}
            </div>
          ) : null}
        </div>
      </div>

      {!isUpdate ? (
        <div class="form">
          <h3>Contract</h3>
          <label>node id <input data-testid="node-input" value={nodeId} onInput={(e) => setNodeId((e.target as HTMLInputElement).value.trim())} /></label>
          <table data-testid="signer-table">
            <thead><tr><th>signer (address)</th><th>weight</th><th>required</th><th></th></tr></thead>
            <tbody>
              {signers.map((s, i) => (
                <tr key={i}>
                  <td>
                    <input class="wide" data-testid={`signer-${i}`} list="known-accounts" value={s.account} onInput={(e) => setRow(i, { account: (e.target as HTMLInputElement).value.trim() })} />
                  </td>
                  <td><input type="number" min={1} data-testid={`weight-${i}`} value={s.weight} onInput={(e) => setRow(i, { weight: Number((e.target as HTMLInputElement).value) })} /></td>
                  <td><input type="checkbox" data-testid={`required-${i}`} checked={s.required} onChange={(e) => setRow(i, { required: (e.target as HTMLInputElement).checked })} /></td>
                  <td><button class="link" onClick={() => setSigners(signers.filter((_, j) => j !== i))}>remove</button></td>
                </tr>
              ))}
            </tbody>
          </table>
          <datalist id="known-accounts">
            {known.map((a) => <option key={a.address} value={a.address}>{a.name}</option>)}
          </datalist>
          <button class="link" data-testid="add-signer" onClick={() => setSigners([...signers, { account: '', weight: 1, required: false }])}>+ add a signer</button>
          <label>threshold (approving weight needed) <input type="number" min={1} data-testid="threshold" value={threshold} onInput={(e) => setThreshold(Number((e.target as HTMLInputElement).value))} /></label>
        </div>
      ) : null}
      <div class="form">
        <label><input type="checkbox" data-testid="skip-checks" checked={skipChecks} onChange={(e) => setSkipChecks((e.target as HTMLInputElement).checked)} /> send even if the checks above fail (the chain decides)</label>
        <TxButton label={isUpdate ? 'propose update' : 'create contract'} testid="submit-spec" disabled={blocked} make={make} onDone={done} />
      </div>
    </div>
  );
}

function ReqRow({ label, need, free, fmt }: { label: string; need: bigint; free: bigint | null; fmt: (v: bigint) => string }) {
  const short = free !== null && need > free;
  return (
    <tr class={short ? 'short' : ''}>
      <td>{label}</td>
      <td>{fmt(need)}</td>
      <td>{free === null ? '—' : fmt(free)}{short ? ' (not enough)' : ''}</td>
    </tr>
  );
}
