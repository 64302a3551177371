//! pallet-deployments on a real node: a 2-of-3 contract is proposed, refused with a wrong
//! hash, approved with the spec's hash, reserves the node's capacity, is reported deployed by
//! the node alone, and is cancelled by two signers, which releases everything.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use node_harness::{
    client::{
        self, arg_from_scale, batch_all, call_value, find_event, runtime_call, submit, value_bytes,
    },
    ChainNode, NodeOptions,
};
use sp_runtime::BoundedVec;
use subxt::{
    dynamic::{self, At, Value},
    ext::codec::Encode,
    utils::AccountId32,
};
use subxt_signer::{sr25519::dev, sr25519::Keypair, SecretUri};
use zos_primitives::{
    contracts::{ContractState, ContractSummary, NodeContract},
    spec::{DeploymentSpec, DiskSpec, ImageRef, Mount, VmSpec, Workload, WorkloadKind},
    ContractId, NodeId, NodeStatus, Resources, GIB,
};

/// A bounded text field of a spec.
fn name<T: TryFrom<&'static str>>(s: &'static str) -> T
where
    T::Error: std::fmt::Debug,
{
    T::try_from(s).expect("within bounds")
}

/// A 10 GiB disk mounted in a small VM.
fn spec() -> DeploymentSpec {
    let vm = VmSpec {
        image: ImageRef {
            root_hash: [0x5a; 32],
            source: name("https://images.example/ubuntu-24.04"),
        },
        vcpus: 1,
        memory_mib: 512,
        rootfs_mib: 1024,
        mounts: BoundedVec::truncate_from(vec![Mount {
            workload: name("data"),
            path: name("/data"),
        }]),
        env: Default::default(),
        entrypoint: Default::default(),
        ssh_keys: Default::default(),
        networks: Default::default(),
        public_ip: None,
        overlay: false,
    };
    DeploymentSpec {
        version: 0,
        workloads: BoundedVec::truncate_from(vec![
            Workload {
                name: name("data"),
                kind: WorkloadKind::Disk(DiskSpec {
                    size_mib: 10 * 1024,
                }),
            },
            Workload {
                name: name("vm"),
                kind: WorkloadKind::Vm(vm),
            },
        ]),
        metadata: name("real-node deployments test"),
    }
}

fn text(s: &str) -> Value {
    Value::from_bytes(s.as_bytes())
}

fn account(key: &Keypair) -> AccountId32 {
    key.public_key().to_account_id()
}

fn signer(key: &Keypair) -> Value {
    Value::named_composite([
        ("account", Value::from_bytes(account(key).0)),
        ("weight", Value::u128(1)),
        ("required", Value::bool(false)),
    ])
}

fn hash_field(fields: &Value, name: &str) -> Result<[u8; 32]> {
    let bytes = fields
        .at(name)
        .and_then(value_bytes)
        .with_context(|| format!("event field {name}"))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| anyhow::anyhow!("{name} has {} bytes", b.len()))
}

fn u128_field(fields: &Value, name: &str) -> Result<u128> {
    fields
        .at(name)
        .and_then(|v| v.as_u128())
        .with_context(|| format!("event field {name}"))
}

/// Alice's farm with one Online node (capacity 4 cores, 8 GiB, 100 GiB SSD) signing with
/// `node_key`: two blocks.
async fn online_node(api: &client::Client, node_key: &Keypair) -> Result<NodeId> {
    let events = batch_all(
        api,
        vec![
            call_value("Grid", "create_farm", vec![text("deployments-farm")]),
            call_value(
                "Balances",
                "transfer_keep_alive",
                vec![
                    Value::unnamed_variant("Id", [Value::from_bytes(account(node_key).0)]),
                    Value::u128(10_000_000_000_000),
                ],
            ),
        ],
        &dev::alice(),
    )
    .await?;
    let farm_id = u128_field(find_event(&events, "Grid", "FarmCreated")?, "farm_id")?;
    client::authorize_node(api, &dev::alice(), farm_id as u32, &account(node_key)).await?;

    let capacity = Resources::new(4, 8 * GIB, 100 * GIB, 0);
    let location = Value::named_composite([
        ("city", text("Ghent")),
        ("country", text("BE")),
        ("latitude", Value::i128(51_054_000)),
        ("longitude", Value::i128(3_717_000)),
    ]);
    let register = call_value(
        "Grid",
        "register_node",
        vec![
            Value::u128(farm_id),
            Value::named_composite([
                ("cru", Value::u128(capacity.cru.into())),
                ("mru", Value::u128(capacity.mru.into())),
                ("sru", Value::u128(capacity.sru.into())),
                ("hru", Value::u128(capacity.hru.into())),
            ]),
            Value::from_bytes([3u8; 32]),
            location,
            Value::unnamed_variant("None", []),
            text("0.1.0"),
        ],
    );
    let events = batch_all(
        api,
        vec![register, call_value("Grid", "heartbeat", vec![])],
        node_key,
    )
    .await?;
    let node_id = u128_field(find_event(&events, "Grid", "NodeRegistered")?, "node_id")? as NodeId;
    find_event(&events, "Grid", "NodeHeartbeat")?;
    let status: Option<NodeStatus> =
        runtime_call(api, "GridApi_node_status", &node_id.encode()).await?;
    ensure!(status == Some(NodeStatus::Online), "node status {status:?}");
    Ok(node_id)
}

#[tokio::test(flavor = "multi_thread")]
async fn multisig_contract_lifecycle_on_a_real_node() -> Result<()> {
    let node = ChainNode::start(NodeOptions {
        binary: Some(env!("CARGO_BIN_EXE_zos-chain-node").into()),
        ..Default::default()
    })?;
    let api = client::connect(&node.ws_url()).await?;
    client::wait_finalized(&api, 1, Duration::from_secs(60)).await?;
    let (bob, charlie, dave) = (dev::bob(), dev::charlie(), dev::dave());
    let node_key = Keypair::from_uri(&"//deploy-test-node".parse::<SecretUri>()?)?;
    let node_id = online_node(&api, &node_key).await?;
    let free_before: Option<Resources> =
        runtime_call(&api, "GridApi_free_capacity", &node_id.encode()).await?;
    let free_before = free_before.context("free capacity of the node")?;

    // Bob proposes the spec to Bob, Charlie and Dave, two approvals needed; creating approves.
    let spec = spec();
    let required = spec.required_resources();
    ensure!(
        !required.resources.is_zero() && required.public_ipv4 == 0,
        "{required:?}"
    );
    let create = dynamic::tx(
        "Deployments",
        "create",
        vec![
            Value::u128(node_id.into()),
            arg_from_scale(&api, "Deployments", "create", "spec", &spec.encode()).await?,
            Value::unnamed_composite([signer(&bob), signer(&charlie), signer(&dave)]),
            Value::u128(2),
        ],
    );
    let events = submit(&api, &create, &bob).await?;
    let created = find_event(&events, "Deployments", "ContractCreated")?;
    let contract_id = u128_field(created, "contract")? as ContractId;
    ensure!(
        u128_field(created, "node")? == u128::from(node_id),
        "{created}"
    );
    let proposal = find_event(&events, "Deployments", "ProposalCreated")?;
    let hash = hash_field(proposal, "hash")?;
    ensure!(
        hash == spec.hash(),
        "proposal hash is not the blake2-256 of the encoded spec"
    );
    let deposit = u128_field(created, "deposit")?;
    ensure!(
        deposit > 0 && held_balance(&api, &account(&bob)).await? == deposit,
        "deposit {deposit} not held"
    );

    let owned: Vec<ContractSummary> = runtime_call(
        &api,
        "DeploymentsApi_contracts_of_owner",
        &account(&bob).0.encode(),
    )
    .await?;
    ensure!(owned.len() == 1, "{owned:?}");
    ensure!(
        owned[0].contract == contract_id
            && owned[0].state == ContractState::PendingApproval
            && owned[0].active.is_none()
            && owned[0].pending_proposal == Some(hash),
        "{owned:?}"
    );
    let running: Vec<(ContractId, NodeContract)> =
        runtime_call(&api, "DeploymentsApi_contracts_of_node", &node_id.encode()).await?;
    ensure!(
        running.is_empty(),
        "a pending contract is not the node's to run: {running:?}"
    );

    // An approval must name the pending proposal: the hash of another spec is refused.
    let mut other = spec.clone();
    other.metadata = name("something else");
    let approve = |h: [u8; 32]| {
        dynamic::tx(
            "Deployments",
            "approve",
            vec![Value::u128(contract_id.into()), Value::from_bytes(h)],
        )
    };
    let wrong = submit(&api, &approve(other.hash()), &charlie).await;
    ensure!(
        wrong
            .as_ref()
            .err()
            .is_some_and(|e| e.to_string() == "Deployments::ProposalHashMismatch"),
        "approval with a wrong hash: {wrong:?}"
    );

    // Charlie's approval reaches the threshold: the contract activates and reserves capacity.
    let events = submit(&api, &approve(hash), &charlie).await?;
    let approved = find_event(&events, "Deployments", "ProposalApproved")?;
    ensure!(u128_field(approved, "approved_weight")? == 2, "{approved}");
    let activated = find_event(&events, "Deployments", "ContractActivated")?;
    ensure!(
        u128_field(activated, "contract")? == u128::from(contract_id),
        "{activated}"
    );
    ensure!(
        hash_field(activated, "spec_hash")? == hash && u128_field(activated, "version")? == 0,
        "{activated}"
    );

    let running: Vec<(ContractId, NodeContract)> =
        runtime_call(&api, "DeploymentsApi_contracts_of_node", &node_id.encode()).await?;
    ensure!(
        running.len() == 1 && running[0].0 == contract_id,
        "{running:?}"
    );
    let desired = &running[0].1;
    ensure!(
        desired.state == ContractState::Active,
        "{:?}",
        desired.state
    );
    ensure!(
        desired.spec_hash == hash && desired.spec == spec,
        "the node is told another spec"
    );
    ensure!(desired.public_ips.is_empty(), "{:?}", desired.public_ips);
    let free: Option<Resources> =
        runtime_call(&api, "GridApi_free_capacity", &node_id.encode()).await?;
    ensure!(
        free.and_then(|f| f.checked_add(&required.resources)) == Some(free_before),
        "free capacity {free:?}, before {free_before:?}, required {required:?}"
    );

    // Only the node's own account reports on the deployment; its report of every workload
    // (in spec order) moves the contract to Deployed. Both are sent at once.
    let report = dynamic::tx(
        "Deployments",
        "report_deployment",
        vec![
            Value::u128(contract_id.into()),
            Value::u128(0),
            Value::unnamed_composite(spec.workloads.iter().map(|w| {
                Value::named_composite([
                    ("name", Value::from_bytes(w.name.as_bytes())),
                    ("result", Value::unnamed_variant("Ok", [])),
                ])
            })),
        ],
    );
    let (by_node, by_other) = tokio::join!(
        submit(&api, &report, &node_key),
        submit(&api, &report, &dave)
    );
    ensure!(
        by_other
            .as_ref()
            .err()
            .is_some_and(|e| e.to_string() == "Deployments::NotContractNode"),
        "report by a signer that is not the node: {by_other:?}"
    );
    let reported = by_node?;
    let reported = find_event(&reported, "Deployments", "DeploymentReported")?;
    ensure!(
        format!("{}", reported.at("failed").context("failed")?).contains("None"),
        "{reported}"
    );
    let running: Vec<(ContractId, NodeContract)> =
        runtime_call(&api, "DeploymentsApi_contracts_of_node", &node_id.encode()).await?;
    ensure!(
        running.len() == 1 && running[0].1.state == ContractState::Deployed,
        "{running:?}"
    );

    // Cancelling is a proposal too: Dave proposes, Bob's approval passes it.
    let events = submit(
        &api,
        &dynamic::tx(
            "Deployments",
            "propose_cancel",
            vec![Value::u128(contract_id.into())],
        ),
        &dave,
    )
    .await?;
    let cancel = find_event(&events, "Deployments", "ProposalCreated")?;
    let cancel_hash = hash_field(cancel, "hash")?;
    ensure!(
        cancel_hash == sp_io::hashing::blake2_256(&(b"zos/cancel", contract_id, 0u32).encode()),
        "cancel proposal hash {cancel}"
    );
    ensure!(
        events.iter().all(|(_, v, _)| v != "ContractCancelled"),
        "one approval must not cancel"
    );
    let events = submit(&api, &approve(cancel_hash), &bob).await?;
    let cancelled = find_event(&events, "Deployments", "ContractCancelled")?;
    ensure!(
        u128_field(cancelled, "contract")? == u128::from(contract_id),
        "{cancelled}"
    );
    ensure!(
        format!("{}", cancelled.at("cause").context("cause")?).contains("Signers"),
        "{cancelled}"
    );

    let free: Option<Resources> =
        runtime_call(&api, "GridApi_free_capacity", &node_id.encode()).await?;
    ensure!(
        free == Some(free_before),
        "capacity after cancel {free:?}, before {free_before:?}"
    );
    let running: Vec<(ContractId, NodeContract)> =
        runtime_call(&api, "DeploymentsApi_contracts_of_node", &node_id.encode()).await?;
    ensure!(running.is_empty(), "{running:?}");
    let owned: Vec<ContractSummary> = runtime_call(
        &api,
        "DeploymentsApi_contracts_of_owner",
        &account(&bob).0.encode(),
    )
    .await?;
    ensure!(owned.is_empty(), "{owned:?}");
    let held = held_balance(&api, &account(&bob)).await?;
    ensure!(held == 0, "Bob's deposit still held: {held}");
    Ok(())
}

/// `System.Account.data.reserved`: holds (the contract deposit) are counted there.
async fn held_balance(api: &client::Client, who: &AccountId32) -> Result<u128> {
    let at = api.at_current_block().await?;
    let addr = dynamic::storage::<(AccountId32,), Value>("System", "Account");
    let account = at.storage().fetch(&addr, (who.clone(),)).await?.decode()?;
    account
        .at("data")
        .at("reserved")
        .and_then(|v| v.as_u128())
        .context("System.Account has no data.reserved")
}
