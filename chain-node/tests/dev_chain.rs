//! The real node: a `--dev` chain of our runtime produces and finalizes blocks, and accepts a
//! signed balance transfer.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use node_harness::{ChainNode, NodeOptions};
use subxt::{
    dynamic::{self, At, Value},
    utils::AccountId32,
    OnlineClient, SubstrateConfig,
};
use subxt_signer::sr25519::dev;

fn start_node() -> Result<ChainNode> {
    ChainNode::start(NodeOptions {
        binary: Some(env!("CARGO_BIN_EXE_zos-chain-node").into()),
        ..Default::default()
    })
}

async fn wait_finalized(api: &OnlineClient<SubstrateConfig>, number: u64) -> Result<()> {
    let mut blocks = api.stream_blocks().await?;
    let wait = async {
        while let Some(block) = blocks.next().await {
            if block?.number() >= number {
                return Ok(());
            }
        }
        anyhow::bail!("finalized block stream ended")
    };
    tokio::time::timeout(Duration::from_secs(120), wait)
        .await
        .with_context(|| format!("block {number} not finalized within 120 s"))?
}

async fn free_balance(api: &OnlineClient<SubstrateConfig>, who: &AccountId32) -> Result<u128> {
    let at = api.at_current_block().await?;
    let addr = dynamic::storage::<(AccountId32,), Value>("System", "Account");
    let account = at.storage().fetch(&addr, (who.clone(),)).await?.decode()?;
    account
        .at("data")
        .at("free")
        .and_then(|v| v.as_u128())
        .context("System.Account has no data.free")
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_chain_finalizes_and_accepts_a_transfer() -> Result<()> {
    let node = start_node()?;
    let api = OnlineClient::<SubstrateConfig>::from_url(node.ws_url()).await?;

    wait_finalized(&api, 3).await?;

    let alice = dev::alice();
    let bob: AccountId32 = dev::bob().public_key().to_account_id();
    let alice_id: AccountId32 = alice.public_key().to_account_id();
    let (alice_before, bob_before) = (
        free_balance(&api, &alice_id).await?,
        free_balance(&api, &bob).await?,
    );

    let amount: u128 = 1_234_000_000_000;
    let transfer = dynamic::tx(
        "Balances",
        "transfer_keep_alive",
        vec![
            Value::unnamed_variant("Id", [Value::from_bytes(bob.0)]),
            Value::u128(amount),
        ],
    );
    let events = api
        .at_current_block()
        .await?
        .tx()
        .sign_and_submit_then_watch_default(&transfer, &alice)
        .await?
        .wait_for_finalized_success()
        .await?;
    let transferred = events
        .iter()
        .filter_map(Result::ok)
        .any(|e| e.pallet_name() == "Balances" && e.event_name() == "Transfer");
    ensure!(
        transferred,
        "no Balances.Transfer event in the extrinsic's events"
    );

    let (alice_after, bob_after) = (
        free_balance(&api, &alice_id).await?,
        free_balance(&api, &bob).await?,
    );
    ensure!(
        bob_after == bob_before + amount,
        "Bob: {bob_before} -> {bob_after}, expected +{amount}"
    );
    let fee = alice_before - amount - alice_after;
    ensure!(
        alice_after < alice_before - amount,
        "Alice paid no fee: {alice_before} -> {alice_after}"
    );
    ensure!(fee < amount, "fee {fee} is implausibly large");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn chain_properties_are_set_for_wallets() -> Result<()> {
    let node = start_node()?;
    let api = OnlineClient::<SubstrateConfig>::from_url(node.ws_url()).await?;
    let rpc = subxt::rpcs::LegacyRpcMethods::<subxt::config::RpcConfigFor<SubstrateConfig>>::new(
        subxt::rpcs::RpcClient::from_url(node.ws_url()).await?,
    );
    let props = rpc.system_properties().await?;
    ensure!(
        props.get("tokenSymbol").and_then(|v| v.as_str()) == Some("ZGT"),
        "tokenSymbol: {props:?}"
    );
    ensure!(
        props.get("tokenDecimals").and_then(|v| v.as_u64()) == Some(12),
        "tokenDecimals: {props:?}"
    );
    ensure!(
        props.get("ss58Format").and_then(|v| v.as_u64()) == Some(42),
        "ss58Format: {props:?}"
    );
    // The runtime reports the same prefix the spec advertises.
    let prefix: u16 = api
        .at_current_block()
        .await?
        .constants()
        .entry(dynamic::constant::<u16>("System", "SS58Prefix"))?;
    ensure!(prefix == 42, "runtime SS58Prefix {prefix}");
    Ok(())
}

/// Chain specs come from the runtime presets: `build-spec` must produce them without any
/// committed JSON, with the properties wallets need.
#[test]
fn build_spec_from_presets() -> Result<()> {
    // Sudo only in development; the council everywhere.
    for (chain, sudo) in [("dev", true), ("local", false), ("production", false)] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_zos-chain-node"))
            .args(["build-spec", "--chain", chain])
            .output()?;
        ensure!(out.status.success(), "build-spec --chain {chain}");
        let spec: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let patch = &spec["genesis"]["runtimeGenesis"]["patch"];
        ensure!(
            patch["sudo"]["key"].is_string() == sudo,
            "{chain}: sudo key {}",
            patch["sudo"]
        );
        ensure!(
            patch["councilMembership"]["members"]
                .as_array()
                .is_some_and(|m| m.len() == 3),
            "{chain}: council {}",
            patch["councilMembership"]
        );
    }
    for chain in ["dev", "local", "production"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_zos-chain-node"))
            .args(["build-spec", "--chain", chain, "--raw"])
            .output()?;
        ensure!(
            out.status.success(),
            "build-spec --chain {chain}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let spec: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        ensure!(
            spec["properties"]["tokenSymbol"] == "ZGT",
            "{chain}: properties {}",
            spec["properties"]
        );
        ensure!(
            spec["genesis"]["raw"]["top"].is_object(),
            "{chain}: raw genesis missing"
        );
    }
    Ok(())
}
