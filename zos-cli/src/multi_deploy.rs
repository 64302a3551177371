//! `zos deploy-multi`: contracts on several nodes, optionally joined by one planned private
//! network, created in one `Utility.batch_all` (all or none); and `zos approve` of several
//! contracts in one batch.
//!
//! The file's parsing and the assembly of the specs (planned network workload added, VM
//! attachments checked against the plan) are pure; the chain part plans with the nodes' box
//! keys and submits.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use serde_json::{json, Value as Json};
use zos_client::chain::{convert, runtime};
use zos_primitives::{
    spec::{DeploymentSpec, Metadata, Workload, WorkloadKind, MAX_WORKLOADS},
    ContractId, NodeId,
};

use crate::{
    commands::{contract_signers, Ctx, Out},
    format,
    network_cmd::{plan_inputs, write_file},
    network_plan::{self, base64, NetworkPlan, PlanFile, PlannedNode},
    specfile::apply_image_override,
    ImageOverride, SignerArgs,
};

use runtime::runtime_types::bounded_collections::bounded_vec::BoundedVec;

/// The multi-node deployment file (TOML).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultiFile {
    /// A network planned as by `zos network plan`, added to the contracts of its nodes.
    #[serde(default)]
    pub network: Option<PlanFile>,
    /// One contract each.
    #[serde(default)]
    pub deployments: Vec<DeploymentEntry>,
}

/// One `[[deployments]]` entry: a contract on `node`, its workloads in a spec file's shape.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentEntry {
    pub node: NodeId,
    #[serde(default)]
    pub metadata: Metadata,
    /// May be empty on a node of the network: the contract then holds the network alone.
    #[serde(default)]
    pub workloads: Vec<Workload>,
}

impl MultiFile {
    pub fn parse(text: &str) -> Result<Self> {
        let file: Self =
            toml::from_str(text).map_err(|e| anyhow!("not a valid multi-node deployment: {e}"))?;
        if file.deployments.is_empty() && file.network.is_none() {
            bail!("nothing to deploy: the file has neither [[deployments]] nor [network]");
        }
        Ok(file)
    }
}

/// One contract to create.
#[derive(Clone, Debug)]
pub struct NodeDeployment {
    pub node: NodeId,
    /// Version 0, validated as the chain does.
    pub spec: DeploymentSpec,
    /// Added for a node of the network without a `[[deployments]]` entry: only its network.
    pub network_only: bool,
}

/// The specs to create, in file order, then a network-only one per node of the plan without a
/// `[[deployments]]` entry (in plan order). `plan` is the planned `file.network`.
pub fn assemble(
    file: &MultiFile,
    plan: Option<&NetworkPlan>,
    image: &ImageOverride,
) -> Result<Vec<NodeDeployment>> {
    let planned: BTreeMap<NodeId, &PlannedNode> = plan
        .map(|p| p.nodes.iter().map(|n| (n.node, n)).collect())
        .unwrap_or_default();
    let mut with_network = BTreeSet::new();
    let mut out = Vec::new();
    for (index, entry) in file.deployments.iter().enumerate() {
        let label = format!("deployment {} (node {})", index + 1, entry.node);
        let mut workloads = entry.workloads.clone();
        if let Some(plan) = plan {
            let node_plan = planned.get(&entry.node).copied();
            if let Some(node_plan) = node_plan {
                if !with_network.insert(entry.node) {
                    // A VM attaches to a network of its own contract only, and a node runs one
                    // copy of the network: one contract per node of the network holds it.
                    bail!(
                        "{label}: node {} has several [[deployments]] entries and is in \
                         [network]; put its workloads in one entry",
                        entry.node
                    );
                }
                if workloads.iter().any(|w| w.name == node_plan.workload.name) {
                    bail!(
                        "{label} already has a workload named {:?}, the name of the planned \
                         network; rename it, or the network (`name` in [network])",
                        plan.name
                    );
                }
                workloads.insert(0, node_plan.workload.clone());
            }
            check_attachments(&label, &workloads, plan, node_plan)?;
        }
        out.push(NodeDeployment {
            node: entry.node,
            spec: finish_spec(&label, workloads, entry.metadata.clone(), image)?,
            network_only: false,
        });
    }
    if let Some(plan) = plan {
        for n in plan
            .nodes
            .iter()
            .filter(|n| !with_network.contains(&n.node))
        {
            let label = format!("the network-only deployment of node {}", n.node);
            let metadata = Metadata::try_from(format!("network {}", plan.name).as_str())
                .map_err(|_| anyhow!("{label}: the network name is too long for metadata"))?;
            out.push(NodeDeployment {
                node: n.node,
                spec: finish_spec(&label, vec![n.workload.clone()], metadata, image)?,
                network_only: true,
            });
        }
    }
    Ok(out)
}

/// Attachments to the planned network must use an address of the subnet the plan gave the
/// deployment's node; the chain would only say `IpOutsideSubnet`.
fn check_attachments(
    label: &str,
    workloads: &[Workload],
    plan: &NetworkPlan,
    node_plan: Option<&PlannedNode>,
) -> Result<()> {
    let own_network = workloads
        .iter()
        .any(|w| w.name.as_bytes() == plan.name.as_bytes());
    for w in workloads {
        let Some(vm) = w.as_vm() else { continue };
        let vm_name = format::text(w.name.as_bytes());
        for a in vm
            .networks
            .iter()
            .filter(|a| a.network.as_bytes() == plan.name.as_bytes())
        {
            let Some(node_plan) = node_plan else {
                if own_network {
                    // Its own network of that name, not the planned one: the chain's rules apply.
                    continue;
                }
                bail!(
                    "{label}: VM {vm_name:?} attaches to network {:?}, but the node is not in \
                     [network]; add it to [[network.nodes]]",
                    plan.name
                );
            };
            let subnet = node_plan.subnet;
            let ip = format::ip(a.ip);
            if !subnet.contains(a.ip) {
                bail!(
                    "{label}: VM {vm_name:?} has {ip} on network {:?}, outside {}, the subnet \
                     the plan gives node {}",
                    plan.name,
                    format::cidr(&subnet),
                    node_plan.node
                );
            }
            if a.ip == subnet.network() || a.ip == subnet.broadcast() || a.ip[3] == 1 {
                bail!(
                    "{label}: VM {vm_name:?} has {ip} on network {:?}: in {} the network \
                     address, .1 (the node's gateway) and the broadcast address are reserved",
                    plan.name,
                    format::cidr(&subnet)
                );
            }
        }
    }
    Ok(())
}

fn finish_spec(
    label: &str,
    workloads: Vec<Workload>,
    metadata: Metadata,
    image: &ImageOverride,
) -> Result<DeploymentSpec> {
    let count = workloads.len();
    let mut spec = DeploymentSpec {
        version: 0,
        workloads: bounded(workloads, || {
            anyhow!("{label}: {count} workloads, at most {MAX_WORKLOADS} fit in a spec")
        })?,
        metadata,
    };
    apply_image_override(&mut spec, image)?;
    spec.validate()
        .map_err(|e| anyhow!("{label} breaks a rule: {e:?}"))?;
    Ok(spec)
}

fn bounded<T, B: TryFrom<Vec<T>>>(
    items: Vec<T>,
    too_many: impl FnOnce() -> anyhow::Error,
) -> Result<B> {
    B::try_from(items).map_err(|_| too_many())
}

fn kind_name(kind: &WorkloadKind) -> &'static str {
    match kind {
        WorkloadKind::Vm(_) => "vm",
        WorkloadKind::Disk(_) => "disk",
        WorkloadKind::Volume(_) => "volume",
        WorkloadKind::Network(_) => "network",
        WorkloadKind::PublicIp(_) => "public ip",
        WorkloadKind::Gateway(_) => "gateway",
        WorkloadKind::HealthCheck(_) => "health check",
    }
}

/// `net (network), web (vm)`.
fn workload_summary(spec: &DeploymentSpec) -> String {
    spec.workloads
        .iter()
        .map(|w| {
            format!(
                "{} ({})",
                format::text(w.name.as_bytes()),
                kind_name(&w.kind)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn workloads_json(spec: &DeploymentSpec) -> Json {
    spec.workloads
        .iter()
        .map(|w| json!({ "name": format::text(w.name.as_bytes()), "kind": kind_name(&w.kind) }))
        .collect()
}

fn hex0x(bytes: &[u8]) -> String {
    format!("0x{}", hex::encode(bytes))
}

// ---- on chain

pub(crate) async fn deploy_multi(
    ctx: &Ctx,
    path: &Path,
    signers: &SignerArgs,
    image: &ImageOverride,
    out_dir: Option<&Path>,
) -> Result<Out> {
    use runtime::deployments::events::{ContractActivated, ContractCreated};
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file = MultiFile::parse(&text).with_context(|| format!("{}", path.display()))?;
    let key = ctx.signer()?;
    let me = key.public_key().to_account_id();
    let (signer_values, threshold) = contract_signers(&me, &signers.signers, signers.threshold)?;
    let chain = ctx.chain().await?;
    let plan = match &file.network {
        Some(plan_file) => {
            let inputs = plan_inputs(&chain, plan_file).await?;
            Some(
                network_plan::plan(plan_file, &inputs, network_plan::random_key)
                    .with_context(|| format!("[network] of {}", path.display()))?,
            )
        }
        None => None,
    };
    let deployments =
        assemble(&file, plan.as_ref(), image).with_context(|| format!("{}", path.display()))?;
    if let Some(dir) = out_dir {
        // Before submitting: the laptop config exists only in this run.
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }

    let calls = deployments
        .iter()
        .map(|d| -> Result<runtime::Call> {
            Ok(runtime::Call::Deployments(
                runtime::deployments::Call::create {
                    node: d.node,
                    spec: Box::new(convert(&d.spec)?),
                    signers: BoundedVec(signer_values.clone()),
                    threshold,
                },
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let events = chain
        .submit(&runtime::tx().utility().batch_all(calls), &key, ctx.timeout)
        .await?;
    // The batch runs its calls in order, so the events come in the deployments' order.
    let created = events
        .find::<ContractCreated>()
        .collect::<Result<Vec<_>, _>>()?;
    if created.len() != deployments.len()
        || created
            .iter()
            .zip(&deployments)
            .any(|(c, d)| c.node != d.node)
    {
        bail!(
            "the transaction is in a block, but its {} ContractCreated event(s) do not match the \
             {} deployments; see `zos contract list`",
            created.len(),
            deployments.len()
        );
    }
    let activated: BTreeSet<ContractId> = events
        .find::<ContractActivated>()
        .filter_map(|e| e.ok())
        .map(|a| a.contract)
        .collect();

    let mut human = format!(
        "{} contract(s) created in one transaction (threshold {threshold}):",
        deployments.len()
    );
    let mut rows = Vec::new();
    for (d, c) in deployments.iter().zip(&created) {
        let hash = d.spec.hash();
        let active = activated.contains(&c.contract);
        human.push_str(&format!(
            "\n  node {:<5} contract {:<6} spec 0x{}  {}{}{}",
            d.node,
            c.contract,
            hex::encode(hash),
            workload_summary(&d.spec),
            if d.network_only {
                "  [network only: the node is in [network] without a [[deployments]] entry]"
            } else {
                ""
            },
            if active { "  activated" } else { "" },
        ));
        rows.push(json!({
            "contract": c.contract, "node": d.node, "spec_hash": hex0x(&hash),
            "deposit": c.deposit.to_string(), "network_only": d.network_only,
            "activated": active, "workloads": workloads_json(&d.spec),
        }));
    }

    let network_json = plan.as_ref().map(|p| {
        human.push_str(&format!(
            "\nnetwork {:?} {}{}",
            p.name,
            format::cidr(&p.ip_range),
            p.access_node
                .map(|a| format!(", access through node {a}"))
                .unwrap_or_default()
        ));
        json!({
            "name": p.name,
            "ip_range": format::cidr(&p.ip_range),
            "access_node": p.access_node,
            "nodes": p.nodes.iter().map(|n| json!({
                "node": n.node,
                "subnet": format::cidr(&n.subnet),
                "listen_port": n.listen_port,
                "endpoint": n.endpoint.map(|e| e.to_string()),
                "public_key_base64": base64(&n.public_key),
            })).collect::<Vec<_>>(),
        })
    });
    for n in plan.iter().flat_map(|p| p.nodes.iter()) {
        human.push_str(&format!(
            "\n  node {:<5} {:<16} port {}",
            n.node,
            format::cidr(&n.subnet),
            n.listen_port
        ));
    }

    let laptop = plan.as_ref().and_then(|p| p.laptop.as_ref());
    let laptop_json = match laptop {
        None => Json::Null,
        Some(l) => {
            let mut row = json!({
                "address": format::cidr(&l.address),
                "public_key_base64": base64(&l.public_key),
            });
            let conf = out_dir.map(|dir| dir.join("laptop.conf"));
            // The contracts exist now: a file that cannot be written falls back to stdout.
            let written = match &conf {
                Some(conf) => match write_file(conf, l.wg_quick.as_str(), true) {
                    Ok(()) => true,
                    Err(e) => {
                        human.push_str(&format!("\n{e:#}: the laptop config follows instead"));
                        row["error"] = Json::String(format!("{e:#}"));
                        false
                    }
                },
                None => false,
            };
            match conf.filter(|_| written) {
                Some(conf) => {
                    human.push_str(&format!(
                        "\nlaptop {}: wrote {} (mode 0600: it holds the laptop's private key); \
                         start it with `wg-quick up {}`",
                        format::cidr(&l.address),
                        conf.display(),
                        conf.display()
                    ));
                    row["file"] = Json::String(conf.display().to_string());
                }
                None => {
                    human.push_str(&format!(
                        "\n\n# ---- laptop {}: save as e.g. zos.conf (mode 0600: it holds the \
                         laptop's private key), then `wg-quick up ./zos.conf`\n{}",
                        format::cidr(&l.address),
                        l.wg_quick.as_str().trim_end()
                    ));
                    row["config"] = Json::String(l.wg_quick.as_str().to_owned());
                }
            }
            row
        }
    };

    let waiting: Vec<String> = created
        .iter()
        .filter(|c| !activated.contains(&c.contract))
        .map(|c| c.contract.to_string())
        .collect();
    let approve = (!waiting.is_empty()).then(|| format!("zos approve {}", waiting.join(" ")));
    match &approve {
        Some(command) => human.push_str(&format!(
            "\n\nco-signers approve them all at once (all or none): {command} --key <signer>"
        )),
        None => human.push_str("\n\nevery contract is active: the nodes deploy them now"),
    }
    Ok(Out::new(
        json!({
            "contracts": rows, "threshold": threshold, "network": network_json,
            "laptop": laptop_json, "approve": approve,
        }),
        human,
    ))
}

/// A pending proposal as the co-signer is shown it before approving.
struct PendingProposal {
    contract: ContractId,
    node: NodeId,
    hash: [u8; 32],
    what: String,
    workloads: Json,
}

/// Approves the pending proposals of several contracts in one `Utility.batch_all`: all or
/// none. Each proposal's hash is read from the chain and shown before anything is submitted.
pub(crate) async fn approve_all(ctx: &Ctx, contracts: &[ContractId]) -> Result<Out> {
    use runtime::deployments::events::{
        ContractActivated, ContractCancelled, ContractUpdated, ProposalApproved,
    };
    use runtime::runtime_types::pallet_deployments::types::ProposalAction;
    let mut seen = BTreeSet::new();
    if let Some(twice) = contracts.iter().find(|c| !seen.insert(**c)) {
        bail!("contract {twice} is named twice");
    }
    let key = ctx.signer()?;
    let me = key.public_key().to_account_id();
    let chain = ctx.chain().await?;
    let at = chain.api.at_current_block().await?;
    let storage = at.storage();
    let mut pending = Vec::with_capacity(contracts.len());
    for &id in contracts {
        let Some(c) = storage
            .try_fetch(runtime::storage().deployments().contracts(), (id,))
            .await?
        else {
            bail!("contract {id} not found (cancelled contracts are removed)");
        };
        let c = c.decode()?;
        let Some(p) = storage
            .try_fetch(runtime::storage().deployments().proposals(), (id,))
            .await?
        else {
            bail!("contract {id} has no pending proposal");
        };
        let p = p.decode()?;
        // One refused approval would fail the whole batch: say which beforehand.
        if p.approvals.0.iter().any(|a| a.0 == me.0) {
            bail!("contract {id}: {me} already approved its pending proposal");
        }
        let (what, workloads) = match &p.action {
            ProposalAction::Deploy(s) => {
                let spec: DeploymentSpec = convert(s)?;
                (
                    format!(
                        "deploy version {}: {}",
                        spec.version,
                        workload_summary(&spec)
                    ),
                    workloads_json(&spec),
                )
            }
            ProposalAction::Cancel => ("cancel the contract".to_string(), Json::Null),
        };
        pending.push(PendingProposal {
            contract: id,
            node: c.node,
            hash: p.hash,
            what,
            workloads,
        });
    }
    if !ctx.json {
        println!("approving, all or none:");
        for p in &pending {
            println!(
                "  contract {} on node {}: proposal 0x{} to {}",
                p.contract,
                p.node,
                hex::encode(p.hash),
                p.what
            );
        }
    }

    let calls: Vec<runtime::Call> = pending
        .iter()
        .map(|p| {
            runtime::Call::Deployments(runtime::deployments::Call::approve {
                contract_id: p.contract,
                proposal_hash: p.hash,
            })
        })
        .collect();
    let events = chain
        .submit(&runtime::tx().utility().batch_all(calls), &key, ctx.timeout)
        .await?;

    let mut human = Vec::new();
    let mut rows = Vec::new();
    for p in &pending {
        let mut outcome = "approved".to_string();
        if let Some(a) = events
            .find::<ProposalApproved>()
            .filter_map(|e| e.ok())
            .find(|a| a.contract == p.contract)
        {
            outcome = format!("approved (approving weight now {})", a.approved_weight);
        }
        let activated = events
            .find::<ContractActivated>()
            .filter_map(|e| e.ok())
            .find(|a| a.contract == p.contract);
        if let Some(a) = &activated {
            outcome.push_str(&format!(
                "; contract activated (version {}) on node {}",
                a.version, a.node
            ));
        }
        if let Some(u) = events
            .find::<ContractUpdated>()
            .filter_map(|e| e.ok())
            .find(|u| u.contract == p.contract)
        {
            outcome.push_str(&format!("; contract updated to version {}", u.version));
        }
        let cancelled = events
            .find::<ContractCancelled>()
            .filter_map(|e| e.ok())
            .any(|c| c.contract == p.contract);
        if cancelled {
            outcome.push_str("; contract cancelled");
        }
        human.push(format!(
            "contract {}: proposal 0x{}… {outcome}",
            p.contract,
            &hex::encode(p.hash)[..16]
        ));
        rows.push(json!({
            "contract": p.contract, "node": p.node, "hash": hex0x(&p.hash), "proposal": p.what,
            "workloads": p.workloads, "activated": activated.is_some(), "cancelled": cancelled,
        }));
    }
    Ok(Out::new(json!({ "approved": rows }), human.join("\n")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroize::Zeroizing;
    use zos_primitives::sealing::generate_box_keypair;

    use crate::network_plan::NodeInputs;

    const EXAMPLE: &str = include_str!("../../examples/multi-node.toml");

    /// Distinct, predictable WireGuard keys.
    fn counting_keys() -> impl FnMut() -> Result<Zeroizing<[u8; 32]>> {
        let mut next = 0u8;
        move || {
            next += 1;
            Ok(Zeroizing::new([next; 32]))
        }
    }

    fn plan_of(file: &MultiFile) -> NetworkPlan {
        let plan_file = file.network.as_ref().expect("a [network]");
        let inputs: BTreeMap<NodeId, NodeInputs> = plan_file
            .nodes
            .iter()
            .map(|n| {
                let (_, box_key) = generate_box_keypair();
                (
                    n.node,
                    NodeInputs {
                        box_key,
                        used_ports: vec![],
                    },
                )
            })
            .collect();
        network_plan::plan(plan_file, &inputs, counting_keys()).unwrap()
    }

    fn assemble_text(text: &str) -> Result<Vec<NodeDeployment>> {
        let file = MultiFile::parse(text)?;
        let plan = file.network.as_ref().map(|_| plan_of(&file));
        assemble(&file, plan.as_ref(), &ImageOverride::default())
    }

    fn error_of(text: &str) -> String {
        format!("{:#}", assemble_text(text).unwrap_err())
    }

    fn names(spec: &DeploymentSpec) -> Vec<String> {
        spec.workloads
            .iter()
            .map(|w| format::text(w.name.as_bytes()))
            .collect()
    }

    const NETWORK: &str = r#"
        [network]
        ip_range = "10.20.0.0/16"
        laptop = false

        [[network.nodes]]
        node = 1
        endpoint = "198.51.100.10"

        [[network.nodes]]
        node = 2
    "#;

    /// A deployment on `node` with one VM attached to "net" at `ip`.
    fn vm_on(node: u32, ip: &str) -> String {
        format!(
            r#"
            [[deployments]]
            node = {node}

            [[deployments.workloads]]
            name = "vm{node}"

            [deployments.workloads.kind.vm]
            vcpus = 1
            memory_mib = 256
            rootfs_mib = 256
            networks = [{{ network = "net", ip = "{ip}" }}]

            [deployments.workloads.kind.vm.image]
            root_hash = "{root}"
            source = "http://127.0.0.1:8420"
            "#,
            root = "ab".repeat(32)
        )
    }

    #[test]
    fn the_example_assembles_a_network_on_every_node() {
        let file = MultiFile::parse(EXAMPLE).unwrap();
        assert_eq!(file.deployments.len(), 2);
        let plan = plan_of(&file);
        let root = "cd".repeat(32);
        let image = ImageOverride {
            image_root: Some(root.clone()),
            image_source: None,
        };
        let deployments = assemble(&file, Some(&plan), &image).unwrap();
        let summary: Vec<(NodeId, bool, Vec<String>)> = deployments
            .iter()
            .map(|d| (d.node, d.network_only, names(&d.spec)))
            .collect();
        assert_eq!(
            summary,
            vec![
                (1, false, vec!["net".into(), "web".into()]),
                (3, false, vec!["net".into(), "data".into(), "db".into()]),
                (2, true, vec!["net".into()]),
            ]
        );
        for d in &deployments {
            assert_eq!(d.spec.version, 0);
            d.spec.validate().unwrap();
            let planned = plan.nodes.iter().find(|n| n.node == d.node).unwrap();
            assert_eq!(d.spec.workloads[0], planned.workload);
            for vm in d.spec.workloads.iter().filter_map(Workload::as_vm) {
                assert_eq!(
                    hex::encode(vm.image.root_hash),
                    root,
                    "image override applied"
                );
                assert!(planned.subnet.contains(vm.networks[0].ip));
            }
        }
        assert!(plan.laptop.is_some());
    }

    #[test]
    fn a_node_of_the_plan_without_deployment_gets_a_network_only_contract() {
        let deployments = assemble_text(&format!("{NETWORK}{}", vm_on(1, "10.20.2.2"))).unwrap();
        assert_eq!(deployments.len(), 2);
        let only = &deployments[1];
        assert_eq!(only.node, 2);
        assert!(only.network_only);
        assert_eq!(names(&only.spec), vec!["net".to_string()]);
        assert!(matches!(
            only.spec.workloads[0].kind,
            WorkloadKind::Network(_)
        ));
        assert_eq!(only.spec.metadata.as_bytes(), b"network net");

        // With [network] alone, every node gets one.
        let deployments = assemble_text(NETWORK).unwrap();
        assert_eq!(
            deployments
                .iter()
                .map(|d| (d.node, d.network_only))
                .collect::<Vec<_>>(),
            vec![(1, true), (2, true)]
        );
    }

    #[test]
    fn an_attachment_on_a_node_outside_the_plan_is_refused() {
        let err = error_of(&format!("{NETWORK}{}", vm_on(7, "10.20.2.2")));
        assert!(
            err.contains("deployment 1 (node 7)")
                && err.contains("\"vm7\"")
                && err.contains("not in [network]"),
            "{err}"
        );
    }

    #[test]
    fn an_attachment_outside_the_nodes_subnet_is_refused() {
        // Node 2's subnet is 10.20.3.0/24; 10.20.2.5 belongs to node 1.
        let err = error_of(&format!("{NETWORK}{}", vm_on(2, "10.20.2.5")));
        assert!(
            err.contains("deployment 1 (node 2)")
                && err.contains("\"vm2\"")
                && err.contains("10.20.2.5")
                && err.contains("10.20.3.0/24"),
            "{err}"
        );
        let err = error_of(&format!("{NETWORK}{}", vm_on(2, "10.20.3.1")));
        assert!(err.contains("gateway"), "{err}");
    }

    #[test]
    fn a_workload_named_like_the_network_is_refused() {
        let text = format!("{NETWORK}{}", vm_on(1, "10.20.2.2")).replace("\"vm1\"", "\"net\"");
        let err = error_of(&text);
        assert!(
            err.contains("deployment 1 (node 1)") && err.contains("already has a workload named"),
            "{err}"
        );
    }

    #[test]
    fn a_node_of_the_plan_in_two_entries_is_refused() {
        let text = format!(
            "{NETWORK}{}{}",
            vm_on(1, "10.20.2.2"),
            vm_on(1, "10.20.2.3").replace("\"vm1\"", "\"other\"")
        );
        assert!(error_of(&text).contains("several [[deployments]]"));
    }

    #[test]
    fn without_network_the_specs_are_taken_as_they_are() {
        let text = vm_on(4, "10.20.2.2")
            .replace("networks = [{ network = \"net\", ip = \"10.20.2.2\" }]", "");
        let deployments = assemble_text(&text).unwrap();
        assert_eq!(deployments.len(), 1);
        assert_eq!(names(&deployments[0].spec), vec!["vm4".to_string()]);
        // An attachment to a network the spec lacks: the chain's rule, named with the entry.
        let err = error_of(&vm_on(4, "10.20.2.2"));
        assert!(
            err.contains("deployment 1 (node 4)") && err.contains("UnknownNetwork"),
            "{err}"
        );
        assert!(MultiFile::parse("").is_err());
        assert!(MultiFile::parse("[[deployments]]\nnode = 1\nversion = 0\n").is_err());
    }
}
