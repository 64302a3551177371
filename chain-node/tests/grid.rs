//! pallet-grid on a real node: a farmer creates a farm and adds a public IP, a node registers
//! itself with its own key and heartbeats, and everything reads back over RPC.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use node_harness::{
    client::{self, find_event, runtime_call, submit},
    ChainNode, NodeOptions,
};
use subxt::{
    dynamic::{self, At, Value},
    ext::codec::Encode,
};
use subxt_signer::{sr25519::dev, sr25519::Keypair, SecretUri};
use zos_primitives::{NodeId, NodeStatus, Resources, GIB};

fn resources(r: Resources) -> Value {
    Value::named_composite([
        ("cru", Value::u128(r.cru.into())),
        ("mru", Value::u128(r.mru.into())),
        ("sru", Value::u128(r.sru.into())),
        ("hru", Value::u128(r.hru.into())),
    ])
}

fn text(s: &str) -> Value {
    Value::from_bytes(s.as_bytes())
}

#[tokio::test(flavor = "multi_thread")]
async fn farm_ip_node_and_heartbeat_over_rpc() -> Result<()> {
    let node = ChainNode::start(NodeOptions {
        binary: Some(env!("CARGO_BIN_EXE_zos-chain-node").into()),
        ..Default::default()
    })?;
    let api = client::connect(&node.ws_url()).await?;
    client::wait_finalized(&api, 1, Duration::from_secs(60)).await?;
    let farmer = dev::alice();

    // The farmer creates a farm; names are unique regardless of case.
    let events = submit(
        &api,
        &dynamic::tx("Grid", "create_farm", vec![text("Lisbon-Farm_1")]),
        &farmer,
    )
    .await?;
    let created = find_event(&events, "Grid", "FarmCreated")?;
    let farm_id = created
        .at("farm_id")
        .and_then(|v| v.as_u128())
        .context("farm_id")? as u32;
    let dup = submit(
        &api,
        &dynamic::tx("Grid", "create_farm", vec![text("lisbon-farm_1")]),
        &dev::bob(),
    )
    .await;
    ensure!(
        dup.as_ref()
            .err()
            .is_some_and(|e| e.to_string().contains("Grid::")),
        "duplicate name accepted: {dup:?}"
    );

    // A public IPv4 with its gateway; a private one is refused with the pallet's error.
    let ip = |a: [u8; 4], prefix: u8, gw: [u8; 4]| {
        Value::named_composite([
            (
                "ip",
                Value::named_composite([
                    ("ip", Value::from_bytes(a)),
                    ("prefix_len", Value::u128(prefix.into())),
                ]),
            ),
            ("gateway", Value::from_bytes(gw)),
        ])
    };
    submit(
        &api,
        &dynamic::tx(
            "Grid",
            "add_farm_ip",
            vec![
                Value::u128(farm_id.into()),
                ip([185, 20, 30, 10], 24, [185, 20, 30, 1]),
            ],
        ),
        &farmer,
    )
    .await?;
    let private = submit(
        &api,
        &dynamic::tx(
            "Grid",
            "add_farm_ip",
            vec![
                Value::u128(farm_id.into()),
                ip([192, 168, 1, 10], 24, [192, 168, 1, 1]),
            ],
        ),
        &farmer,
    )
    .await;
    ensure!(
        private
            .as_ref()
            .err()
            .is_some_and(|e| e.to_string().contains("Grid::InvalidPublicIpv4")),
        "{private:?}"
    );

    // The node's own key registers it; the farmer funds the account first.
    let node_key = Keypair::from_uri(&"//grid-test-node".parse::<SecretUri>()?)?;
    let node_account = node_key.public_key().to_account_id();
    client::fund(&api, &farmer, &node_account, 10_000_000_000_000).await?;
    let capacity = Resources::new(4, 8 * GIB, 100 * GIB, 0);
    let location = Value::named_composite([
        ("city", text("Lisbon")),
        ("country", text("PT")),
        ("latitude", Value::i128(38_722_000)),
        ("longitude", Value::i128(-9_139_000)),
    ]);
    let register = dynamic::tx(
        "Grid",
        "register_node",
        vec![
            Value::u128(farm_id.into()),
            resources(capacity),
            Value::from_bytes([7u8; 32]),
            location,
            Value::unnamed_variant("None", []),
            text("0.1.0"),
        ],
    );
    // Without the farmer's consent the node cannot join the farm.
    let unasked = submit(&api, &register, &node_key).await;
    ensure!(
        unasked
            .as_ref()
            .err()
            .is_some_and(|e| e.to_string().contains("Grid::NodeNotAuthorized")),
        "{unasked:?}"
    );
    client::authorize_node(&api, &farmer, farm_id, &node_account).await?;
    let events = submit(&api, &register, &node_key).await?;
    let node_id = find_event(&events, "Grid", "NodeRegistered")?
        .at("node_id")
        .and_then(|v| v.as_u128())
        .context("node_id")? as NodeId;

    // Offline until the first heartbeat, Online after it.
    let status: Option<NodeStatus> =
        runtime_call(&api, "GridApi_node_status", &node_id.encode()).await?;
    ensure!(
        status == Some(NodeStatus::Offline),
        "before heartbeat: {status:?}"
    );
    let balance_before = client::free_balance(&api, &node_account).await?;
    let events = submit(
        &api,
        &dynamic::tx("Grid", "heartbeat", Vec::<Value>::new()),
        &node_key,
    )
    .await?;
    find_event(&events, "Grid", "NodeHeartbeat")?;
    ensure!(
        client::free_balance(&api, &node_account).await? == balance_before,
        "a valid heartbeat must be free"
    );
    let status: Option<NodeStatus> =
        runtime_call(&api, "GridApi_node_status", &node_id.encode()).await?;
    ensure!(
        status == Some(NodeStatus::Online),
        "after heartbeat: {status:?}"
    );

    // Read back: runtime API queries and raw storage.
    let by_account: Option<NodeId> =
        runtime_call(&api, "GridApi_node_by_account", &node_account.0.encode()).await?;
    ensure!(by_account == Some(node_id));
    let nodes: Vec<NodeId> = runtime_call(&api, "GridApi_nodes_of_farm", &farm_id.encode()).await?;
    ensure!(nodes == vec![node_id], "{nodes:?}");
    let free: Option<Resources> =
        runtime_call(&api, "GridApi_free_capacity", &node_id.encode()).await?;
    ensure!(
        free.map(|r| (r.mru, r.sru)) == Some((8 * GIB, 100 * GIB)),
        "{free:?}"
    );
    let ips: Vec<zos_primitives::PublicIpv4Config> =
        runtime_call(&api, "GridApi_free_public_ips", &farm_id.encode()).await?;
    ensure!(
        ips.len() == 1 && ips[0].ip.ip == [185, 20, 30, 10],
        "{ips:?}"
    );

    let at = api.at_current_block().await?;
    let farm = at
        .storage()
        .fetch(
            &dynamic::storage::<(u32,), Value>("Grid", "Farms"),
            (farm_id,),
        )
        .await?
        .decode()?;
    let ips = farm.at("public_ips").context("farm public_ips")?;
    ensure!(
        format!("{ips}").contains("185, 20, 30, 10"),
        "farm IPs stored: {ips}"
    );
    let stored = at
        .storage()
        .fetch(
            &dynamic::storage::<(u32,), Value>("Grid", "Nodes"),
            (node_id,),
        )
        .await?
        .decode()?;
    ensure!(stored.at("capacity").at("mru").and_then(|v| v.as_u128()) == Some((8 * GIB).into()));
    ensure!(stored.at("last_heartbeat").is_some(), "heartbeat stored");
    Ok(())
}
