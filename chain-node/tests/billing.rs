//! pallet-billing on a real node: the node of an active contract reports one window of
//! consumption; the owner pays exactly the farm's price for it, split between the farm owner,
//! the treasury and the burn, and the report costs the node nothing. A resend changes nothing
//! and a window that leaves a gap is rejected. An update approved inside a window is charged
//! pro rata: the old resources up to the change, the new ones after.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use node_harness::{
    client::{
        self, arg_from_scale, batch_all, call_value, find_event, free_balance, runtime_call,
        submit, value_bytes,
    },
    ChainNode, NodeOptions,
};
use sp_runtime::{BoundedVec, Perbill};
use subxt::{
    dynamic::{self, At, Value},
    ext::codec::Encode,
    utils::AccountId32,
};
use subxt_signer::{sr25519::dev, sr25519::Keypair, SecretUri};
use zos_primitives::{
    billing::ContractBillingStatus,
    spec::{DeploymentSpec, DiskSpec, ImageRef, VmSpec, Workload, WorkloadKind},
    units, ContractId, NodeId, NodeStatus, Resources, DEFAULT_PRICING_POLICY, GIB,
};

fn name<T: TryFrom<&'static str>>(s: &'static str) -> T
where
    T::Error: std::fmt::Debug,
{
    T::try_from(s).expect("within bounds")
}

/// A small VM and a 20 GiB disk: both CU and SU are charged.
fn spec() -> DeploymentSpec {
    let vm = VmSpec {
        image: ImageRef {
            root_hash: [0x7e; 32],
            source: name("https://images.example/alpine"),
        },
        vcpus: 1,
        memory_mib: 1024,
        rootfs_mib: 2048,
        mounts: Default::default(),
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
                name: name("vm"),
                kind: WorkloadKind::Vm(vm),
            },
            Workload {
                name: name("scratch"),
                kind: WorkloadKind::Disk(DiskSpec {
                    size_mib: 20 * 1024,
                }),
            },
        ]),
        metadata: Default::default(),
    }
}

fn text(s: &str) -> Value {
    Value::from_bytes(s.as_bytes())
}

fn account(key: &Keypair) -> AccountId32 {
    key.public_key().to_account_id()
}

fn u128_field(fields: &Value, name: &str) -> Result<u128> {
    fields
        .at(name)
        .and_then(|v| v.as_u128())
        .with_context(|| format!("field {name} in {fields}"))
}

/// A `Perbill` value (a newtype around its parts per billion).
fn perbill_field(fields: &Value, name: &str) -> Result<Perbill> {
    let v = fields.at(name).with_context(|| format!("field {name}"))?;
    let parts = v
        .as_u128()
        .or_else(|| v.at(0).and_then(|p| p.as_u128()))
        .with_context(|| format!("{name}: {v}"))?;
    Ok(Perbill::from_parts(u32::try_from(parts)?))
}

/// Alice's farm with one Online node signing with `node_key`: two blocks.
async fn online_node(api: &client::Client, node_key: &Keypair) -> Result<NodeId> {
    let events = batch_all(
        api,
        vec![
            call_value("Grid", "create_farm", vec![text("billing-farm")]),
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
            Value::from_bytes([4u8; 32]),
            Value::named_composite([
                ("city", text("Tartu")),
                ("country", text("EE")),
                ("latitude", Value::i128(58_378_000)),
                ("longitude", Value::i128(26_729_000)),
            ]),
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
    let status: Option<NodeStatus> =
        runtime_call(api, "GridApi_node_status", &node_id.encode()).await?;
    ensure!(status == Some(NodeStatus::Online), "node status {status:?}");
    Ok(node_id)
}

struct Report {
    contract: ContractId,
    window_start: u64,
    window_end: u64,
    uptime_seconds: u64,
    public_bytes_in: u64,
    public_bytes_out: u64,
}

impl Report {
    fn value(&self) -> Value {
        Value::named_composite([
            ("contract", Value::u128(self.contract.into())),
            ("window_start", Value::u128(self.window_start.into())),
            ("window_end", Value::u128(self.window_end.into())),
            ("uptime_seconds", Value::u128(self.uptime_seconds.into())),
            ("public_bytes_in", Value::u128(self.public_bytes_in.into())),
            (
                "public_bytes_out",
                Value::u128(self.public_bytes_out.into()),
            ),
        ])
    }
}

fn report_consumption(reports: &[&Report]) -> impl subxt::transactions::Payload {
    dynamic::tx(
        "Billing",
        "report_consumption",
        vec![Value::unnamed_composite(reports.iter().map(|r| r.value()))],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn node_report_is_settled_free_resend_is_noop_gap_is_rejected() -> Result<()> {
    let node = ChainNode::start(NodeOptions {
        binary: Some(env!("CARGO_BIN_EXE_zos-chain-node").into()),
        ..Default::default()
    })?;
    let api = client::connect(&node.ws_url()).await?;
    client::wait_finalized(&api, 1, Duration::from_secs(60)).await?;
    let (alice, bob) = (dev::alice(), dev::bob());
    let node_key = Keypair::from_uri(&"//billing-test-node".parse::<SecretUri>()?)?;
    let node_id = online_node(&api, &node_key).await?;

    // Bob alone signs his contract, so creating it activates it at once.
    let spec = spec();
    let required = spec.required_resources();
    let create = dynamic::tx(
        "Deployments",
        "create",
        vec![
            Value::u128(node_id.into()),
            arg_from_scale(&api, "Deployments", "create", "spec", &spec.encode()).await?,
            Value::unnamed_composite([Value::named_composite([
                ("account", Value::from_bytes(account(&bob).0)),
                ("weight", Value::u128(1)),
                ("required", Value::bool(true)),
            ])]),
            Value::u128(1),
        ],
    );
    let events = submit(&api, &create, &bob).await?;
    let contract = u128_field(
        find_event(&events, "Deployments", "ContractActivated")?,
        "contract",
    )? as ContractId;

    // The farm's (the default) pricing policy, as stored.
    let at = api.at_current_block().await?;
    let policy = at
        .storage()
        .fetch(
            &dynamic::storage::<(u32,), Value>("Billing", "PricingPolicies"),
            (DEFAULT_PRICING_POLICY,),
        )
        .await?
        .decode()?;
    let price = |field: &str| u128_field(&policy, field);
    let (farm_share, burn_share) = (
        perbill_field(&policy, "farm_owner_share")?,
        perbill_field(&policy, "burn_share")?,
    );

    // One window from the chain's current second: 30 s up, 1 GiB in and 0.5 GiB out.
    let now_s = client::now_ms(&api).await? / 1000;
    let first = Report {
        contract,
        window_start: now_s,
        window_end: now_s + 30,
        uptime_seconds: 30,
        public_bytes_in: GIB,
        public_bytes_out: GIB / 2,
    };
    let expected = units::price_for(
        units::cu_milli(&required.resources),
        first.uptime_seconds,
        price("cu_hour")?,
    ) + units::price_for(
        units::su_milli(&required.resources),
        first.uptime_seconds,
        price("su_hour")?,
    ) + units::traffic_price(
        (first.public_bytes_in + first.public_bytes_out).into(),
        price("traffic_gib")?,
    );
    ensure!(expected > 0, "nothing to charge");

    let treasury: AccountId32 = AccountId32(zos_runtime::configs::TreasuryAccount::get().into());
    let alice_account = account(&alice);
    let balances = || async {
        Ok::<_, anyhow::Error>([
            free_balance(&api, &account(&bob)).await?,
            free_balance(&api, &alice_account).await?,
            free_balance(&api, &treasury).await?,
            free_balance(&api, &account(&node_key)).await?,
        ])
    };
    let [owner_before, farmer_before, treasury_before, node_before] = balances().await?;
    ensure!(
        treasury_before > 0,
        "the treasury is not endowed at genesis"
    );

    let events = submit(&api, &report_consumption(&[&first]), &node_key).await?;
    let settled = find_event(&events, "Billing", "ReportSettled")?;
    ensure!(
        u128_field(settled, "contract")? == u128::from(contract),
        "{settled}"
    );
    ensure!(
        u128_field(settled, "window_start")? == u128::from(first.window_start)
            && u128_field(settled, "window_end")? == u128::from(first.window_end),
        "{settled}"
    );
    let charged = u128_field(settled, "charged")?;
    ensure!(
        charged == expected,
        "charged {charged}, the policy prices it at {expected}"
    );
    ensure!(
        u128_field(settled, "collected")? == charged && u128_field(settled, "debt")? == 0,
        "{settled}"
    );
    let farm_owner = settled
        .at("farm_owner")
        .and_then(value_bytes)
        .context("farm_owner")?;
    ensure!(
        farm_owner == alice_account.0,
        "the farm owner paid is not Alice: {settled}"
    );
    let (to_farmer, to_treasury, burned) = (
        u128_field(settled, "to_farm_owner")?,
        u128_field(settled, "to_treasury")?,
        u128_field(settled, "burned")?,
    );
    ensure!(
        to_farmer == farm_share.mul_floor(charged) && burned == burn_share.mul_floor(charged),
        "{settled}"
    );
    ensure!(
        to_farmer + to_treasury + burned == charged && to_treasury > 0,
        "{settled}"
    );

    let [owner, farmer, treasury_now, node_now] = balances().await?;
    ensure!(
        owner_before - owner == charged,
        "owner paid {} for a charge of {charged}",
        owner_before as i128 - owner as i128
    );
    ensure!(
        farmer - farmer_before == to_farmer,
        "farm owner got {}, expected {to_farmer}",
        farmer as i128 - farmer_before as i128
    );
    ensure!(
        treasury_now - treasury_before == to_treasury,
        "treasury got {}, expected {to_treasury}",
        treasury_now as i128 - treasury_before as i128
    );
    ensure!(
        node_now == node_before,
        "an accepted report must be free: the node paid {}",
        node_before - node_now
    );

    let status: Option<ContractBillingStatus<u128, u32>> =
        runtime_call(&api, "BillingApi_contract_billing", &contract.encode()).await?;
    let status = status.context("billing status")?;
    ensure!(
        status.billed_until == Some(first.window_end) && status.debt == 0 && !status.stale,
        "{status:?}"
    );

    // One batch: the same report again (a retry) and a window starting 10 s after the billed
    // end. The retry is a no-op and the gap is rejected by name; nobody is charged.
    let gapped = Report {
        contract,
        window_start: first.window_end + 10,
        window_end: first.window_end + 20,
        uptime_seconds: 10,
        public_bytes_in: 0,
        public_bytes_out: 0,
    };
    let events = submit(&api, &report_consumption(&[&first, &gapped]), &node_key).await?;
    ensure!(
        events
            .iter()
            .all(|(p, v, _)| !(p == "Billing" && v == "ReportSettled")),
        "a resend or a gapped window was settled: {events:?}"
    );
    let rejected = find_event(&events, "Billing", "ReportRejected")?;
    ensure!(
        u128_field(rejected, "contract")? == u128::from(contract),
        "{rejected}"
    );
    let reason = rejected.at("reason").context("reason")?;
    ensure!(
        matches!(&reason.value, subxt::ext::scale_value::ValueDef::Variant(v) if v.name == "WindowGap"),
        "rejected for {reason}"
    );
    ensure!(
        events
            .iter()
            .filter(|(p, v, _)| p == "Billing" && v == "ReportRejected")
            .count()
            == 1,
        "the resend was rejected: {events:?}"
    );
    let [owner_after, farmer_after, treasury_after, _] = balances().await?;
    ensure!(
        (owner_after, farmer_after, treasury_after) == (owner, farmer, treasury_now),
        "balances moved on a resend or a rejected window"
    );
    let status: Option<ContractBillingStatus<u128, u32>> =
        runtime_call(&api, "BillingApi_contract_billing", &contract.encode()).await?;
    ensure!(
        status.and_then(|s| s.billed_until) == Some(first.window_end),
        "billed-until moved"
    );

    // Once chain time is past the billed end, Bob (the only signer: proposing approves) doubles
    // the VM. Billing records what the contract held until then.
    while client::now_ms(&api).await? / 1000 <= first.window_end {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut bigger = spec.clone();
    bigger.version = 1;
    if let WorkloadKind::Vm(vm) = &mut bigger.workloads[0].kind {
        vm.vcpus = 2;
        vm.memory_mib = 2048;
    }
    let update = dynamic::tx(
        "Deployments",
        "propose_update",
        vec![
            Value::u128(contract.into()),
            arg_from_scale(
                &api,
                "Deployments",
                "propose_update",
                "spec",
                &bigger.encode(),
            )
            .await?,
        ],
    );
    let events = submit(&api, &update, &bob).await?;
    find_event(&events, "Deployments", "ContractUpdated")?;
    let changes = api
        .at_current_block()
        .await?
        .storage()
        .fetch(
            &dynamic::storage::<(ContractId,), Value>("Billing", "ResourceChanges"),
            (contract,),
        )
        .await?
        .decode()?;
    // A BoundedVec decodes as a composite around the list.
    let first_change = changes
        .at(0)
        .filter(|c| c.at("at").is_some())
        .or_else(|| changes.at(0).and_then(|list| list.at(0)));
    let changed_at = first_change
        .and_then(|c| c.at("at"))
        .and_then(|v| v.as_u128())
        .with_context(|| format!("the change's time in {changes}"))? as u64;
    ensure!(
        changed_at > first.window_end,
        "the change at {changed_at} is not inside the next window"
    );

    // The next window spans the change: up the whole time, no traffic.
    let second = Report {
        contract,
        window_start: first.window_end,
        window_end: changed_at + 20,
        uptime_seconds: changed_at + 20 - first.window_end,
        public_bytes_in: 0,
        public_bytes_out: 0,
    };
    let compute = |required: &zos_primitives::spec::RequiredResources, secs: u64| -> Result<u128> {
        Ok(units::price_for(
            units::cu_milli(&required.resources),
            secs,
            price("cu_hour")?,
        ) + units::price_for(
            units::su_milli(&required.resources),
            secs,
            price("su_hour")?,
        ))
    };
    let expected = compute(&required, changed_at - second.window_start)?
        + compute(&bigger.required_resources(), second.window_end - changed_at)?;
    let events = submit(&api, &report_consumption(&[&second]), &node_key).await?;
    let charged = u128_field(find_event(&events, "Billing", "ReportSettled")?, "charged")?;
    ensure!(
        charged == expected,
        "charged {charged}; pro rata the window costs {expected}"
    );
    let whole_window_at_new = compute(&bigger.required_resources(), second.uptime_seconds)?;
    ensure!(
        charged < whole_window_at_new,
        "the old resources were charged at the new price"
    );
    Ok(())
}
