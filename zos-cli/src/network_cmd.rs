//! `zos network plan`: reads the plan inputs from the chain, plans, and prints or writes the
//! per-node workloads and the laptop's wg-quick config.

use std::{
    collections::BTreeMap,
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::Path,
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value as Json};
use zos_client::chain::{runtime, Chain};
use zos_primitives::{contracts::NodeContract, ContractId, NodeId};

use crate::{
    commands::{Ctx, Out},
    format,
    network_plan::{self, base64, NetworkPlan, NodeInputs, PlanFile},
};

pub(crate) async fn plan(ctx: &Ctx, file: &Path, out_dir: Option<&Path>) -> Result<Out> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let plan_file = PlanFile::parse(&text).with_context(|| format!("plan {}", file.display()))?;
    let chain = ctx.chain().await?;
    let inputs = plan_inputs(&chain, &plan_file).await?;
    let plan = network_plan::plan(&plan_file, &inputs, network_plan::random_key)
        .with_context(|| format!("plan {}", file.display()))?;
    match out_dir {
        Some(dir) => write_files(&plan, dir),
        None => print_all(&plan),
    }
}

/// What the chain says about every node of the plan.
pub(crate) async fn plan_inputs(
    chain: &Chain,
    plan_file: &PlanFile,
) -> Result<BTreeMap<NodeId, NodeInputs>> {
    let mut inputs = BTreeMap::new();
    for entry in &plan_file.nodes {
        if !inputs.contains_key(&entry.node) {
            inputs.insert(entry.node, node_inputs(chain, entry.node).await?);
        }
    }
    Ok(inputs)
}

/// The x25519 key secrets are sealed to for `node`, as registered on chain.
pub(crate) async fn node_box_key(chain: &Chain, node: NodeId) -> Result<[u8; 32]> {
    let at = chain.api.at_current_block().await?;
    let Some(n) = at
        .storage()
        .try_fetch(runtime::storage().grid().nodes(), (node,))
        .await?
    else {
        bail!("node {node} not found");
    };
    Ok(n.decode()?.box_key)
}

/// The node's box key, and the listen ports of the networks in its contracts with an approved
/// spec. A contract still waiting for approval is not counted: if it takes the same port, the
/// second network to deploy fails on the node and reports why.
async fn node_inputs(chain: &Chain, node: NodeId) -> Result<NodeInputs> {
    let box_key = node_box_key(chain, node).await?;
    let contracts: Vec<(ContractId, NodeContract)> = chain
        .runtime_api(
            runtime::runtime_apis()
                .deployments_api()
                .contracts_of_node(node),
        )
        .await
        .with_context(|| format!("contracts of node {node}"))?;
    let used_ports = contracts
        .iter()
        .flat_map(|(_, c)| c.spec.workloads.iter())
        .filter_map(|w| w.as_network())
        .map(|net| net.listen_port)
        .collect();
    Ok(NodeInputs {
        box_key,
        used_ports,
    })
}

/// One line per node, and the JSON fields every output shares.
fn summary(plan: &NetworkPlan) -> Result<(String, Json, Vec<Json>)> {
    let mut human = format!(
        "network {:?} {}: {} node(s){}{}",
        plan.name,
        format::cidr(&plan.ip_range),
        plan.nodes.len(),
        plan.access_node
            .map(|a| format!(", access through node {a}"))
            .unwrap_or_default(),
        plan.laptop
            .as_ref()
            .map(|l| format!(", laptop {}", format::cidr(&l.address)))
            .unwrap_or_default(),
    );
    let mut nodes = Vec::new();
    for n in &plan.nodes {
        let reach = match n.endpoint {
            Some(endpoint) => format!("endpoint {endpoint}"),
            None => "hidden".to_string(),
        };
        human.push_str(&format!(
            "\n  node {:<5} {:<16} port {:<5}  {reach}  key {}",
            n.node,
            format::cidr(&n.subnet),
            n.listen_port,
            base64(&n.public_key)
        ));
        nodes.push(json!({
            "node": n.node,
            "subnet": format::cidr(&n.subnet),
            "listen_port": n.listen_port,
            "endpoint": n.endpoint.map(|e| e.to_string()),
            "public_key": hex::encode(n.public_key),
            "public_key_base64": base64(&n.public_key),
            "workload": serde_json::to_value(&n.workload).context("the workload as JSON")?,
        }));
    }
    let head = json!({
        "name": plan.name,
        "ip_range": format::cidr(&plan.ip_range),
        "access_node": plan.access_node,
    });
    Ok((human, head, nodes))
}

fn laptop_json(plan: &NetworkPlan) -> Option<Json> {
    plan.laptop.as_ref().map(|l| {
        json!({
            "address": format::cidr(&l.address),
            "public_key_base64": base64(&l.public_key),
        })
    })
}

/// Everything on stdout: the workloads to paste and the laptop config.
fn print_all(plan: &NetworkPlan) -> Result<Out> {
    let (mut human, mut json, mut nodes) = summary(plan)?;
    for (n, row) in plan.nodes.iter().zip(nodes.iter_mut()) {
        let snippet = n.toml_snippet(plan)?;
        human.push_str(&format!(
            "\n\n# ---- node {}: add to its deployment spec\n{snippet}",
            n.node
        ));
        row["toml"] = Json::String(snippet);
    }
    let mut laptop = laptop_json(plan);
    if let (Some(l), Some(row)) = (&plan.laptop, laptop.as_mut()) {
        human.push_str(&format!(
            "\n\n# ---- laptop: save as e.g. zos.conf (mode 0600: it holds the laptop's private key), \
             then `wg-quick up ./zos.conf`\n{}",
            l.wg_quick.as_str()
        ));
        row["config"] = Json::String(l.wg_quick.as_str().to_owned());
    }
    json["nodes"] = Json::Array(nodes);
    json["laptop"] = laptop.unwrap_or(Json::Null);
    Ok(Out::new(json, human.trim_end()))
}

/// `DIR/node-<id>.network.toml` per node and `DIR/laptop.conf`.
fn write_files(plan: &NetworkPlan, dir: &Path) -> Result<Out> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (mut human, mut json, mut nodes) = summary(plan)?;
    human.push('\n');
    for (n, row) in plan.nodes.iter().zip(nodes.iter_mut()) {
        let path = dir.join(format!("node-{}.network.toml", n.node));
        write_file(&path, &n.toml_snippet(plan)?, false)?;
        human.push_str(&format!("\nwrote {}", path.display()));
        row["file"] = Json::String(path.display().to_string());
    }
    let mut laptop = laptop_json(plan);
    if let (Some(l), Some(row)) = (&plan.laptop, laptop.as_mut()) {
        let path = dir.join("laptop.conf");
        write_file(&path, l.wg_quick.as_str(), true)?;
        human.push_str(&format!(
            "\nwrote {} (mode 0600: it holds the laptop's private key); start it with `wg-quick up {}`",
            path.display(),
            path.display()
        ));
        row["file"] = Json::String(path.display().to_string());
    }
    json["nodes"] = Json::Array(nodes);
    json["laptop"] = laptop.unwrap_or(Json::Null);
    Ok(Out::new(json, human))
}

pub(crate) fn write_file(path: &Path, text: &str, private: bool) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if private {
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    if private {
        // `mode` applies to a new file only: an existing one is tightened before the secret
        // goes in.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
    }
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}
