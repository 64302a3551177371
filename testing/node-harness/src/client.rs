use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use subxt::{
    dynamic::{self, At, Value},
    error::{DispatchError, TransactionEventsError, TransactionFinalizedSuccessError},
    transactions::Payload,
    utils::AccountId32,
    OnlineClient, SubstrateConfig,
};
use subxt_signer::sr25519::Keypair;

pub type Client = OnlineClient<SubstrateConfig>;

/// Events of one finalized extrinsic, as `(pallet, variant, fields)`.
pub type Events = Vec<(String, String, Value)>;

pub async fn connect(url: &str) -> Result<Client> {
    Client::from_url(url).await.with_context(|| format!("connecting to {url}"))
}

/// Waits until the finalized head is at least `number`.
pub async fn wait_finalized(api: &Client, number: u64, timeout: Duration) -> Result<()> {
    let mut blocks = api.stream_blocks().await?;
    let wait = async {
        while let Some(block) = blocks.next().await {
            if block?.number() >= number {
                return Ok(());
            }
        }
        bail!("finalized block stream ended")
    };
    tokio::time::timeout(timeout, wait)
        .await
        .map_err(|_| anyhow!("block {number} not finalized within {timeout:?}"))?
}

/// Signs, submits and waits until the extrinsic is in a finalized block. A dispatch error
/// becomes `Err("Pallet::Error")` so tests can assert on the chain's error name.
pub async fn submit<C: Payload>(api: &Client, call: &C, signer: &Keypair) -> Result<Events> {
    let progress = api
        .at_current_block()
        .await?
        .tx()
        .sign_and_submit_then_watch_default(call, signer)
        .await
        .context("submitting")?;
    match progress.wait_for_finalized_success().await {
        Ok(events) => {
            let mut out = Vec::new();
            for event in events.iter() {
                let event = event?;
                let fields = event.decode_fields_unchecked_as::<Value>()?;
                out.push((event.pallet_name().to_owned(), event.event_name().to_owned(), fields));
            }
            Ok(out)
        },
        Err(TransactionFinalizedSuccessError::SuccessError(TransactionEventsError::ExtrinsicFailed(
            DispatchError::Module(e),
        ))) => Err(anyhow!("{}", e.details_string())),
        Err(e) => Err(anyhow!("transaction failed: {e}")),
    }
}

/// The first event named `pallet.variant`, or an error listing what was emitted.
pub fn find_event<'a>(events: &'a Events, pallet: &str, variant: &str) -> Result<&'a Value> {
    events
        .iter()
        .find(|(p, v, _)| p == pallet && v == variant)
        .map(|(_, _, fields)| fields)
        .ok_or_else(|| {
            let names: Vec<String> = events.iter().map(|(p, v, _)| format!("{p}.{v}")).collect();
            anyhow!("no {pallet}.{variant} among {names:?}")
        })
}

pub async fn free_balance(api: &Client, who: &AccountId32) -> Result<u128> {
    let at = api.at_current_block().await?;
    let addr = dynamic::storage::<(AccountId32,), Value>("System", "Account");
    let account = at.storage().fetch(&addr, (who.clone(),)).await?.decode()?;
    account.at("data").at("free").and_then(|v| v.as_u128()).context("System.Account has no data.free")
}

/// `Balances.transfer_keep_alive` from `from` to `to`.
pub async fn fund(api: &Client, from: &Keypair, to: &AccountId32, amount: u128) -> Result<()> {
    let call = dynamic::tx(
        "Balances",
        "transfer_keep_alive",
        vec![Value::unnamed_variant("Id", [Value::from_bytes(to.0)]), Value::u128(amount)],
    );
    submit(api, &call, from).await.map(|_| ())
}

/// Calls a runtime API method with SCALE-encoded `args` at the latest finalized block and
/// decodes the result with `codec`.
pub async fn runtime_call<R: subxt::ext::codec::Decode>(api: &Client, method: &str, args: &[u8]) -> Result<R> {
    let at = api.at_current_block().await?;
    let bytes = at.runtime_apis().call_raw(method, Some(args)).await?;
    R::decode(&mut &bytes[..]).with_context(|| format!("decoding the result of {method}"))
}
