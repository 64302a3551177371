//! The CLI's connection to the chain: reads at the latest finalized block, signed writes
//! watched until finalized, and refusals turned into the chain's error name and documentation.

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use codec::Decode;
use subxt::{
    error::{DispatchError, TransactionEventsError, TransactionFinalizedSuccessError},
    ext::scale_value::Value,
    transactions::Payload,
    utils::AccountId32,
    OnlineClient, SubstrateConfig,
};
use subxt_signer::sr25519::Keypair;

pub type Api = OnlineClient<SubstrateConfig>;
pub type TxEvents = subxt::extrinsics::ExtrinsicEvents<SubstrateConfig>;

/// The runtime refused a transaction.
#[derive(Debug, Clone, thiserror::Error, serde::Serialize)]
#[error("{pallet}::{name}: {doc}{}", detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
pub struct ChainError {
    pub pallet: String,
    pub name: String,
    /// The error variant's documentation from the runtime metadata.
    pub doc: String,
    /// The error's fields, when it has any (e.g. which spec rule was broken).
    pub detail: Option<String>,
}

impl ChainError {
    fn from_module(e: &subxt::error::ModuleError) -> Self {
        match e.details() {
            Ok(details) => {
                let doc = details
                    .variant
                    .docs
                    .iter()
                    .map(|l| l.trim())
                    .collect::<Vec<_>>()
                    .join(" ");
                let detail = if details.variant.fields.is_empty() {
                    None
                } else {
                    // Outer enum -> pallet enum -> this variant: show what is inside.
                    e.as_root_error::<Value>()
                        .ok()
                        .map(|v| strip_outer(&v.to_string(), details.pallet.name()))
                };
                ChainError {
                    pallet: details.pallet.name().to_string(),
                    name: details.variant.name.clone(),
                    doc: if doc.is_empty() {
                        "(undocumented)".into()
                    } else {
                        doc
                    },
                    detail,
                }
            }
            Err(_) => ChainError {
                pallet: format!("pallet #{}", e.pallet_index()),
                name: format!("error #{}", e.error_index()),
                doc: "not in this chain's metadata".into(),
                detail: None,
            },
        }
    }

    fn other(name: &str, doc: String) -> Self {
        ChainError {
            pallet: "System".into(),
            name: name.into(),
            doc,
            detail: None,
        }
    }
}

/// `Deployments (InvalidSpec (ImageHashZero))` -> `InvalidSpec (ImageHashZero)`.
fn strip_outer(text: &str, pallet: &str) -> String {
    text.strip_prefix(pallet)
        .map(|rest| {
            let rest = rest.trim();
            rest.strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .unwrap_or(rest)
                .trim()
                .to_string()
        })
        .unwrap_or_else(|| text.to_string())
}

pub struct Chain {
    pub api: Api,
}

impl Chain {
    pub async fn connect(url: &str) -> Result<Self> {
        let api = tokio::time::timeout(Duration::from_secs(30), Api::from_insecure_url(url))
            .await
            .map_err(|_| anyhow!("connecting to {url}: no answer within 30 s"))?
            .with_context(|| {
                format!("connecting to {url} (is the chain running? `make chain` starts one)")
            })?;
        Ok(Self { api })
    }

    /// Calls a runtime API through its statically generated payload (`runtime::apis()...`) at
    /// the latest finalized block; the answer is decoded straight into primitives types.
    pub async fn runtime_api<P, R>(&self, payload: P) -> Result<R>
    where
        P: subxt::runtime_apis::Payload,
        R: Decode,
    {
        Ok(zos_client::chain::call_runtime_api(&self.api, payload)
            .await?
            .1)
    }

    /// Signs, submits and waits until the transaction is in a finalized block.
    pub async fn submit<C: Payload>(
        &self,
        call: &C,
        signer: &Keypair,
        timeout: Duration,
    ) -> Result<TxEvents> {
        let run = async {
            let progress = self
                .api
                .at_current_block()
                .await?
                .tx()
                .sign_and_submit_then_watch_default(call, signer)
                .await
                .map_err(|e| explain_submit_error(e.to_string()))?;
            match progress.wait_for_finalized_success().await {
                Ok(events) => Ok(events),
                Err(TransactionFinalizedSuccessError::SuccessError(
                    TransactionEventsError::ExtrinsicFailed(DispatchError::Module(e)),
                )) => Err(ChainError::from_module(&e).into()),
                Err(TransactionFinalizedSuccessError::SuccessError(
                    TransactionEventsError::ExtrinsicFailed(e),
                )) => Err(ChainError::other("DispatchError", e.to_string()).into()),
                Err(e) => Err(anyhow!("waiting for finality: {e}")),
            }
        };
        tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| anyhow!("not finalized within {timeout:?}"))?
    }

    pub async fn free_balance(&self, account: &AccountId32) -> Result<u128> {
        use zos_client::chain::runtime;
        let at = self.api.at_current_block().await?;
        let info = at
            .storage()
            .fetch(runtime::storage().system().account(), (account.clone(),))
            .await?
            .decode()?;
        Ok(info.data.free)
    }
}

/// The pool's refusals (no funds for fees, bad nonce) as readable errors.
fn explain_submit_error(text: String) -> anyhow::Error {
    if text.contains("Inability to pay some fees") || text.contains("1010") && text.contains("pay")
    {
        return ChainError::other(
            "Payment",
            "the signer cannot pay the transaction fee (fund the account first)".into(),
        )
        .into();
    }
    anyhow!("submitting: {text}")
}

/// Every event of a finished transaction as `(pallet, name, fields)`.
pub fn event_list(events: &TxEvents) -> Result<Vec<(String, String, Value)>> {
    let mut out = Vec::new();
    for ev in events.iter() {
        let ev = ev?;
        let fields = ev.decode_fields_unchecked_as::<Value>()?;
        out.push((
            ev.pallet_name().to_string(),
            ev.event_name().to_string(),
            fields,
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outer_pallet_name_is_stripped() {
        assert_eq!(
            strip_outer("Deployments (InvalidSpec (ImageHashZero))", "Deployments"),
            "InvalidSpec (ImageHashZero)"
        );
        assert_eq!(strip_outer("Other (X)", "Deployments"), "Other (X)");
    }

    #[test]
    fn chain_error_shows_name_and_doc() {
        let e = ChainError {
            pallet: "Grid".into(),
            name: "FarmNotFound".into(),
            doc: "No farm.".into(),
            detail: None,
        };
        assert_eq!(e.to_string(), "Grid::FarmNotFound: No farm.");
    }
}
