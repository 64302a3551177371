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
    Client::from_url(url)
        .await
        .with_context(|| format!("connecting to {url}"))
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
                out.push((
                    event.pallet_name().to_owned(),
                    event.event_name().to_owned(),
                    fields,
                ));
            }
            Ok(out)
        }
        Err(TransactionFinalizedSuccessError::SuccessError(
            TransactionEventsError::ExtrinsicFailed(DispatchError::Module(e)),
        )) => Err(anyhow!("{}", e.details_string())),
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
    account
        .at("data")
        .at("free")
        .and_then(|v| v.as_u128())
        .context("System.Account has no data.free")
}

/// `Grid.authorize_node`: the owner of `farm` consents to `node_account` registering a node
/// into it (a node joins a farm only with its owner's consent).
pub async fn authorize_node(
    api: &Client,
    farm_owner: &Keypair,
    farm: u32,
    node_account: &AccountId32,
) -> Result<()> {
    let call = dynamic::tx(
        "Grid",
        "authorize_node",
        vec![Value::u128(farm.into()), Value::from_bytes(node_account.0)],
    );
    submit(api, &call, farm_owner).await.map(|_| ())
}

/// `Balances.transfer_keep_alive` from `from` to `to`.
pub async fn fund(api: &Client, from: &Keypair, to: &AccountId32, amount: u128) -> Result<()> {
    let call = dynamic::tx(
        "Balances",
        "transfer_keep_alive",
        vec![
            Value::unnamed_variant("Id", [Value::from_bytes(to.0)]),
            Value::u128(amount),
        ],
    );
    submit(api, &call, from).await.map(|_| ())
}

/// Calls a runtime API method with SCALE-encoded `args` at the latest finalized block and
/// decodes the result with `codec`.
pub async fn runtime_call<R: subxt::ext::codec::Decode>(
    api: &Client,
    method: &str,
    args: &[u8],
) -> Result<R> {
    let at = api.at_current_block().await?;
    let bytes = at.runtime_apis().call_raw(method, Some(args)).await?;
    R::decode(&mut &bytes[..]).with_context(|| format!("decoding the result of {method}"))
}

/// A runtime call as a value, e.g. for `Utility.batch_all`: `Pallet::call(args...)`, the
/// arguments by position.
pub fn call_value(pallet: &str, call: &str, args: Vec<Value>) -> Value {
    Value::unnamed_variant(pallet, [Value::unnamed_variant(call, args)])
}

/// `Utility.batch_all(calls)` signed by `signer`: all calls in one extrinsic (one block), or none.
pub async fn batch_all(api: &Client, calls: Vec<Value>, signer: &Keypair) -> Result<Events> {
    submit(
        api,
        &dynamic::tx(
            "Utility",
            "batch_all",
            vec![Value::unnamed_composite(calls)],
        ),
        signer,
    )
    .await
}

/// The value of argument `arg` of `Pallet::call` from its SCALE encoding, decoded against the
/// chain's metadata: build complex arguments with the runtime's own Rust types, encode them,
/// and pass the result to a dynamic call. Fails if the bytes do not match the argument's type
/// exactly (nothing left over).
pub async fn arg_from_scale(
    api: &Client,
    pallet: &str,
    call: &str,
    arg: &str,
    encoded: &[u8],
) -> Result<Value> {
    let at = api.at_current_block().await?;
    let metadata = at.metadata_ref();
    let variant = metadata
        .pallet_by_name(pallet)
        .and_then(|p| p.call_variant_by_name(call))
        .with_context(|| format!("no call {pallet}.{call} in the metadata"))?;
    let field = variant
        .fields
        .iter()
        .find(|f| f.name.as_deref() == Some(arg))
        .with_context(|| format!("{pallet}.{call} has no argument `{arg}`"))?;
    let mut input = encoded;
    let value =
        subxt::ext::scale_value::scale::decode_as_type(&mut input, field.ty.id, metadata.types())
            .map_err(|e| anyhow!("decoding {pallet}.{call}({arg}): {e}"))?;
    if !input.is_empty() {
        bail!(
            "{} bytes left over decoding {pallet}.{call}({arg})",
            input.len()
        );
    }
    Ok(value.remove_context())
}

/// The bytes of a value holding a byte array or sequence (`[u8; N]`, `Vec<u8>`, a hash).
pub fn value_bytes(value: &Value) -> Option<Vec<u8>> {
    use subxt::ext::scale_value::{Composite, ValueDef};
    match &value.value {
        // A newtype around the bytes (an account id).
        ValueDef::Composite(Composite::Unnamed(items))
            if items.len() == 1 && matches!(items[0].value, ValueDef::Composite(_)) =>
        {
            value_bytes(&items[0])
        }
        ValueDef::Composite(Composite::Unnamed(items)) => items
            .iter()
            .map(|v| v.as_u128().and_then(|b| u8::try_from(b).ok()))
            .collect(),
        ValueDef::Composite(Composite::Named(fields)) if fields.len() == 1 => {
            value_bytes(&fields[0].1)
        }
        _ => None,
    }
}

/// Chain time (`Timestamp.Now`, unix milliseconds) at the latest finalized block.
pub async fn now_ms(api: &Client) -> Result<u64> {
    let at = api.at_current_block().await?;
    let now = at
        .storage()
        .fetch(&dynamic::storage::<(), Value>("Timestamp", "Now"), ())
        .await?
        .decode()?;
    now.as_u128()
        .and_then(|ms| u64::try_from(ms).ok())
        .context("Timestamp.Now is not a u64")
}
