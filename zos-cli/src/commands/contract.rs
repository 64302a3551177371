//! `zos deploy`, `approve`/`reject`, `update`, `cancel`, `contract show`/`list`.

use super::*;

pub(super) async fn deploy(
    ctx: &Ctx,
    spec: DeploymentSpec,
    node: u32,
    signers: &[String],
    threshold: Option<u32>,
) -> Result<Out> {
    let key = ctx.signer()?;
    let me = key.public_key().to_account_id();
    let (signer_values, threshold) = contract_signers(&me, signers, threshold)?;
    let hash = spec.hash();
    let chain = ctx.chain().await?;
    let call = runtime::tx().deployments().create(
        node,
        convert(&spec)?,
        BoundedVec(signer_values),
        threshold,
    );
    let events = chain.submit(&call, &key, ctx.timeout).await?;
    let created = events
        .find_first::<runtime::deployments::events::ContractCreated>()
        .ok_or_else(|| anyhow!("no ContractCreated event"))??;
    let activated = events
        .find_first::<runtime::deployments::events::ContractActivated>()
        .is_some();
    let human = format!(
        "contract {} created on node {node}, spec hash 0x{}, deposit {}\n{}",
        created.contract,
        hex::encode(hash),
        format::zgt(created.deposit),
        if activated {
            "activated: the node deploys it now".to_string()
        } else {
            format!(
                "waiting for approvals (threshold {threshold}): zos approve {} --key <signer>",
                created.contract
            )
        }
    );
    Ok(Out::new(
        json!({
            "contract": created.contract, "node": node, "spec_hash": hex0x(&hash),
            "deposit": created.deposit.to_string(), "threshold": threshold, "activated": activated,
            "events": events_json(&events)?,
        }),
        human,
    ))
}

/// A new contract's signers from `--signer` (default: `me` alone, required) and its threshold
/// (default: their total weight).
pub(crate) fn contract_signers(
    me: &AccountId32,
    signers: &[String],
    threshold: Option<u32>,
) -> Result<(
    Vec<runtime::runtime_types::pallet_deployments::types::Signer<AccountId32>>,
    u32,
)> {
    use runtime::runtime_types::pallet_deployments::types::Signer;
    let mut list: Vec<SignerArg> = signers.iter().map(|s| s.parse()).collect::<Result<_>>()?;
    if list.is_empty() {
        list.push(SignerArg {
            account: me.clone(),
            weight: 1,
            required: true,
        });
    }
    if !list.iter().any(|s| &s.account == me) {
        bail!("the account of --key ({me}) must be one of the --signer accounts: the creator approves by creating");
    }
    let total: u32 = list.iter().map(|s| s.weight).sum();
    let threshold = threshold.unwrap_or(total);
    let signer_values = list
        .iter()
        .map(|s| Signer {
            account: s.account.clone(),
            weight: s.weight,
            required: s.required,
        })
        .collect();
    Ok((signer_values, threshold))
}

pub(super) async fn pending_hash(chain: &Chain, contract: ContractId) -> Result<[u8; 32]> {
    let at = chain.api.at_current_block().await?;
    if at
        .storage()
        .try_fetch(runtime::storage().deployments().contracts(), (contract,))
        .await?
        .is_none()
    {
        bail!("contract {contract} not found (cancelled contracts are removed)");
    }
    let Some(p) = at
        .storage()
        .try_fetch(runtime::storage().deployments().proposals(), (contract,))
        .await?
    else {
        bail!("contract {contract} has no pending proposal");
    };
    Ok(p.decode()?.hash)
}

pub(super) async fn vote(
    ctx: &Ctx,
    contract: ContractId,
    hash: Option<&str>,
    approve: bool,
) -> Result<Out> {
    use runtime::deployments::events::{
        ContractActivated, ContractCancelled, ContractUpdated, ProposalApproved,
    };
    let key = ctx.signer()?;
    let chain = ctx.chain().await?;
    let hash = match hash {
        Some(h) => parse_hash(h)?,
        None => pending_hash(&chain, contract).await?,
    };
    let events = if approve {
        chain
            .submit(
                &runtime::tx().deployments().approve(contract, hash),
                &key,
                ctx.timeout,
            )
            .await?
    } else {
        chain
            .submit(
                &runtime::tx().deployments().reject(contract, hash),
                &key,
                ctx.timeout,
            )
            .await?
    };
    let mut outcome = if approve {
        "approved".to_string()
    } else {
        "rejected".to_string()
    };
    if let Some(Ok(a)) = events.find_first::<ProposalApproved>() {
        outcome = format!("approved (approving weight now {})", a.approved_weight);
    }
    if let Some(Ok(a)) = events.find_first::<ContractActivated>() {
        outcome.push_str(&format!(
            "; contract activated (version {}) on node {}",
            a.version, a.node
        ));
    }
    if let Some(Ok(u)) = events.find_first::<ContractUpdated>() {
        outcome.push_str(&format!("; contract updated to version {}", u.version));
    }
    if events.find_first::<ContractCancelled>().is_some() {
        outcome.push_str("; contract cancelled");
    }
    Ok(Out::new(
        json!({ "contract": contract, "hash": hex0x(&hash), "events": events_json(&events)? }),
        format!(
            "contract {contract}: proposal 0x{}… {outcome}",
            &hex::encode(hash)[..16]
        ),
    ))
}

pub(super) async fn update(
    ctx: &Ctx,
    contract: ContractId,
    path: PathBuf,
    image: &crate::ImageOverride,
) -> Result<Out> {
    let key = ctx.signer()?;
    let chain = ctx.chain().await?;
    let at = chain.api.at_current_block().await?;
    let Some(c) = at
        .storage()
        .try_fetch(runtime::storage().deployments().contracts(), (contract,))
        .await?
    else {
        bail!("contract {contract} not found");
    };
    let active = c
        .decode()?
        .active
        .ok_or_else(|| anyhow!("contract {contract} was never activated: nothing to update"))?;
    // Parse first, then set the version: files are kept at any version.
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut spec = crate::specfile::parse_spec(&text, &path)?;
    crate::specfile::apply_image_override(&mut spec, image)?;
    spec.version = active
        .version
        .checked_add(1)
        .ok_or_else(|| anyhow!("version counter exhausted"))?;
    spec.validate()
        .map_err(|e| anyhow!("spec {} breaks a rule: {e:?}", path.display()))?;
    let hash = spec.hash();
    let events = chain
        .submit(
            &runtime::tx()
                .deployments()
                .propose_update(contract, convert(&spec)?),
            &key,
            ctx.timeout,
        )
        .await?;
    Ok(Out::new(
        json!({ "contract": contract, "version": spec.version, "hash": hex0x(&hash), "events": events_json(&events)? }),
        format!(
            "contract {contract}: update to version {} proposed, hash 0x{}\nsigners approve with: zos approve {contract} --key <signer>",
            spec.version,
            hex::encode(hash)
        ),
    ))
}

pub(super) async fn cancel(ctx: &Ctx, contract: ContractId) -> Result<Out> {
    let key = ctx.signer()?;
    let chain = ctx.chain().await?;
    let events = chain
        .submit(
            &runtime::tx().deployments().propose_cancel(contract),
            &key,
            ctx.timeout,
        )
        .await?;
    let human = if events
        .find_first::<runtime::deployments::events::ContractCancelled>()
        .is_some()
    {
        format!("contract {contract} cancelled")
    } else if let Some(Ok(p)) = events.find_first::<runtime::deployments::events::ProposalCreated>()
    {
        format!(
            "contract {contract}: cancellation proposed (hash 0x{}); signers approve with: zos approve {contract}",
            hex::encode(p.hash)
        )
    } else {
        format!("contract {contract}: cancellation submitted")
    };
    Ok(Out::new(
        json!({ "contract": contract, "events": events_json(&events)? }),
        human,
    ))
}

pub(super) async fn contract_show(ctx: &Ctx, id: ContractId) -> Result<Out> {
    let chain = ctx.chain().await?;
    let at = chain.api.at_current_block().await?;
    let storage = at.storage();
    let Some(c) = storage
        .try_fetch(runtime::storage().deployments().contracts(), (id,))
        .await?
    else {
        bail!("contract {id} not found (cancelled contracts are removed from the chain)");
    };
    let c = c.decode()?;
    let state: ContractState = convert(&c.state)?;
    let spec: Option<DeploymentSpec> = match storage
        .try_fetch(runtime::storage().deployments().active_specs(), (id,))
        .await?
    {
        Some(s) => Some(convert(&s.decode()?)?),
        None => None,
    };
    let proposal = match storage
        .try_fetch(runtime::storage().deployments().proposals(), (id,))
        .await?
    {
        Some(p) => Some(p.decode()?),
        None => None,
    };
    let report = match storage
        .try_fetch(runtime::storage().deployments().reports(), (id,))
        .await?
    {
        Some(r) => Some(r.decode()?),
        None => None,
    };
    let billing: Option<ContractBillingStatus<u128, u32>> = chain
        .runtime_api(runtime::runtime_apis().billing_api().contract_billing(id))
        .await?;
    let assigned: Vec<(WorkloadName, PublicIpv4Config)> = convert(&c.public_ips)?;
    let public_ip_workloads: Vec<(&WorkloadName, bool, bool)> = spec
        .iter()
        .flat_map(|s| s.workloads.iter())
        .filter_map(|w| match &w.kind {
            WorkloadKind::PublicIp(p) => Some((&w.name, p.v4, p.v6)),
            _ => None,
        })
        .collect();
    // IPv6 addresses come from the node's subnet as its farmer declared it.
    let node_ipv6: Option<PublicIpv6Config> = if public_ip_workloads.iter().any(|w| w.2) {
        match storage
            .try_fetch(runtime::storage().grid().nodes(), (c.node,))
            .await?
        {
            Some(n) => n
                .decode()?
                .public_config
                .and_then(|p| p.ipv6)
                .map(|v6| convert(&v6))
                .transpose()?,
            None => None,
        }
    } else {
        None
    };
    // Overlay addresses follow from the overlay key the node publishes.
    let overlay_vms: Vec<&WorkloadName> = spec
        .iter()
        .flat_map(|s| s.workloads.iter())
        .filter(|w| matches!(&w.kind, WorkloadKind::Vm(vm) if vm.overlay))
        .map(|w| &w.name)
        .collect();
    let node_overlay: Option<zos_primitives::OverlayEndpoint> = if overlay_vms.is_empty() {
        None
    } else {
        match storage
            .try_fetch(runtime::storage().grid().node_overlays(), (c.node,))
            .await?
        {
            Some(e) => Some(convert(&e.decode()?)?),
            None => None,
        }
    };

    let mut h = Vec::new();
    h.push(format!(
        "contract {id} on node {}: {}",
        c.node,
        format::state(&state)
    ));
    h.push(format!("  owner      {}", c.owner));
    h.push(format!("  deposit    {}", format::zgt(c.deposit)));
    h.push(format!(
        "  created at block {}{}",
        c.created_at,
        c.activated_at
            .map(|b| format!(", activated at block {b}"))
            .unwrap_or_default()
    ));
    h.push(format!("  signers (threshold {}):", c.threshold));
    let signers: Vec<Json> = c
        .signers
        .0
        .iter()
        .map(|s| {
            h.push(format!(
                "    {} weight {}{}",
                s.account,
                s.weight,
                if s.required { ", required" } else { "" }
            ));
            json!({ "account": s.account.to_string(), "weight": s.weight, "required": s.required })
        })
        .collect();
    if let Some(active) = &c.active {
        h.push(format!(
            "  active spec: version {}, hash 0x{}",
            active.version,
            hex::encode(active.hash)
        ));
    }
    if let Some(spec) = &spec {
        for line in format::spec_lines(spec) {
            h.push(format!("    {line}"));
        }
    }
    if !public_ip_workloads.is_empty() {
        h.push("  public IPs:".into());
    }
    let public_ips: Vec<Json> = public_ip_workloads
        .iter()
        .map(|&(name, v4, v6)| {
            let shown = format::text(name.as_bytes());
            let mut parts = Vec::new();
            let mut entry = json!({ "name": shown });
            if v4 {
                match assigned.iter().find(|(n, _)| n == name) {
                    Some((_, ip)) => {
                        parts.push(format!(
                            "IPv4 {}, gateway {}",
                            format::cidr(&ip.ip),
                            format::ip(ip.gateway)
                        ));
                        entry["ipv4"] = json!({ "ip": format::cidr(&ip.ip), "gateway": format::ip(ip.gateway) });
                    }
                    None => {
                        parts.push("IPv4 not assigned".into());
                        entry["ipv4"] = Json::Null;
                    }
                }
            }
            if v6 {
                let address = node_ipv6
                    .as_ref()
                    .map(|net| (net, net.vm_address(id, name.as_bytes())));
                match address {
                    Some((net, Some(addr))) => {
                        let ip = format!("{}/{}", format::ipv6(addr), net.ip.prefix_len);
                        parts.push(format!(
                            "IPv6 {ip}, gateway {}",
                            format::ipv6(net.gateway)
                        ));
                        entry["ipv6"] = json!({ "ip": ip, "gateway": format::ipv6(net.gateway) });
                    }
                    Some((net, None)) => {
                        let why = format!(
                            "the node's IPv6 subnet {} is narrower than a /{MAX_IPV6_PREFIX_FOR_VMS}",
                            format::cidr6(&net.ip)
                        );
                        parts.push(format!("no IPv6: {why}"));
                        entry["ipv6"] = Json::Null;
                        entry["ipv6_missing"] = json!(why);
                    }
                    None => {
                        let why = "no IPv6 subnet declared for the node";
                        parts.push(format!("no IPv6: {why}"));
                        entry["ipv6"] = Json::Null;
                        entry["ipv6_missing"] = json!(why);
                    }
                }
            }
            h.push(format!("    {shown}: {}", parts.join("; ")));
            entry
        })
        .collect();
    if !overlay_vms.is_empty() {
        h.push("  overlay addresses:".into());
    }
    let overlay_json: Vec<Json> = overlay_vms
        .iter()
        .map(|name| {
            let shown = format::text(name.as_bytes());
            let address = node_overlay.as_ref().map(|e| {
                zos_overlay::address::NodeSubnet::of_key(&e.key)
                    .workload(id, &String::from_utf8_lossy(name.as_bytes()))
                    .to_string()
            });
            match &address {
                Some(a) => h.push(format!("    {shown}: {a}")),
                None => h.push(format!(
                    "    {shown}: unknown (node {} publishes no overlay endpoint)",
                    c.node
                )),
            }
            json!({ "name": shown, "address": address })
        })
        .collect();
    let proposal_json = proposal.as_ref().map(|p| {
        use runtime::runtime_types::pallet_deployments::types::ProposalAction;
        let kind = match &p.action {
            ProposalAction::Deploy(s) => format!("deploy version {}", s.version),
            ProposalAction::Cancel => "cancel".into(),
        };
        let approvals: Vec<String> = p.approvals.0.iter().map(|a| a.to_string()).collect();
        h.push(format!(
            "  pending proposal: {kind}, hash 0x{}, expires at block {}, approved by {}",
            hex::encode(p.hash),
            p.expires_at,
            if approvals.is_empty() { "nobody".to_string() } else { approvals.join(", ") }
        ));
        json!({ "kind": kind, "hash": hex0x(&p.hash), "expires_at": p.expires_at, "approvals": approvals })
    });
    let report_json = report.as_ref().map(|r| {
        use runtime::runtime_types::pallet_deployments::types::WorkloadResult;
        h.push(format!(
            "  last report: version {} at block {}",
            r.version, r.at
        ));
        let workloads: Vec<Json> = r
            .workloads
            .0
            .iter()
            .map(|w| {
                let name = format::text(&w.name.0 .0);
                let (ok, why, unhealthy) = match &w.result {
                    WorkloadResult::Ok => (true, None, None),
                    WorkloadResult::Error(e) => (false, Some(format::text(&e.0)), None),
                    WorkloadResult::Unhealthy(e) => (true, None, Some(format::text(&e.0))),
                };
                let line = match (&why, &unhealthy) {
                    (Some(w), _) => format!("error: {w}"),
                    (None, Some(u)) => format!("unhealthy: {u}"),
                    (None, None) => "ok".into(),
                };
                h.push(format!("    {name}: {line}"));
                json!({ "name": name, "ok": ok, "error": why, "unhealthy": unhealthy })
            })
            .collect();
        json!({ "version": r.version, "at": r.at, "workloads": workloads })
    });
    let billing_json = billing.as_ref().map(|b| {
        h.push(format!(
            "  billing: billed until {}, debt {}{}{}",
            b.billed_until.map(|t| format!("unix {t}")).unwrap_or_else(|| "- (no report yet)".into()),
            format::zgt(b.debt),
            b.grace_since.map(|g| format!(", in grace since block {g}")).unwrap_or_default(),
            if b.stale { ", STALE (no recent report)" } else { "" }
        ));
        json!({ "billed_until": b.billed_until, "debt": b.debt.to_string(), "grace_since": b.grace_since, "stale": b.stale, "ended_at": b.ended_at })
    });
    Ok(Out::new(
        json!({
            "contract": id, "node": c.node, "owner": c.owner.to_string(), "state": format::state(&state),
            "threshold": c.threshold, "signers": signers, "deposit": c.deposit.to_string(),
            "created_at": c.created_at, "activated_at": c.activated_at,
            "active": c.active.as_ref().map(|a| json!({ "version": a.version, "hash": hex0x(&a.hash) })),
            "spec": spec, "public_ips": public_ips, "overlay": overlay_json, "proposal": proposal_json, "report": report_json,
            "billing": billing_json,
        }),
        h.join("\n"),
    ))
}

pub(super) async fn contract_list(ctx: &Ctx, owner: Option<&str>) -> Result<Out> {
    let owner = match (owner, ctx.key.as_deref()) {
        (Some(o), _) => Some(parse_account(o)?),
        (None, Some(k)) => Some(parse_key(k)?.public_key().to_account_id()),
        (None, None) => None,
    };
    let chain = ctx.chain().await?;
    let list: Vec<ContractSummary> = match &owner {
        Some(o) => {
            chain
                .runtime_api(
                    runtime::runtime_apis()
                        .deployments_api()
                        .contracts_of_owner(o.clone()),
                )
                .await?
        }
        None => {
            let at = chain.api.at_current_block().await?;
            let mut ids = BTreeSet::new();
            let mut entries = at
                .storage()
                .iter(runtime::storage().deployments().contracts(), ())
                .await?;
            let mut owners = BTreeSet::new();
            while let Some(kv) = entries.next().await {
                let c = kv?.value().decode()?;
                owners.insert(c.owner.0);
            }
            let mut all = Vec::new();
            for o in owners {
                let owner = subxt::utils::AccountId32(o);
                let mine: Vec<ContractSummary> = chain
                    .runtime_api(
                        runtime::runtime_apis()
                            .deployments_api()
                            .contracts_of_owner(owner),
                    )
                    .await?;
                for s in mine {
                    if ids.insert(s.contract) {
                        all.push(s);
                    }
                }
            }
            all.sort_by_key(|s| s.contract);
            all
        }
    };
    let mut human = vec![format!(
        "{:>8} {:>5}  {:<28} {:>7}  PENDING",
        "CONTRACT", "NODE", "STATE", "VERSION"
    )];
    let rows: Vec<Json> = list
        .iter()
        .map(|s| {
            let version = s
                .active
                .map(|(_, v)| v.to_string())
                .unwrap_or_else(|| "-".into());
            let pending = s
                .pending_proposal
                .map(|h| format!("0x{}…", &hex::encode(h)[..16]))
                .unwrap_or_else(|| "-".into());
            human.push(format!(
                "{:>8} {:>5}  {:<28} {:>7}  {pending}",
                s.contract,
                s.node,
                format::state(&s.state),
                version
            ));
            json!({
                "contract": s.contract, "node": s.node, "state": format::state(&s.state),
                "active": s.active.map(|(h, v)| json!({ "hash": hex0x(&h), "version": v })),
                "pending_proposal": s.pending_proposal.map(|h| hex0x(&h)),
            })
        })
        .collect();
    if list.is_empty() {
        human = vec!["no contracts".into()];
    }
    Ok(Out::new(Json::Array(rows), human.join("\n")))
}
