//! Why a transaction did not land, with the runtime's own error name and documentation.

use subxt::ext::scale_value::Value;

/// The runtime (or the pool, for fees) refused a transaction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize)]
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
    pub(crate) fn from_module(e: &subxt::error::ModuleError) -> Self {
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

    pub(crate) fn other(name: &str, doc: String) -> Self {
        ChainError {
            pallet: "System".into(),
            name: name.into(),
            doc,
            detail: None,
        }
    }

    /// Whether this is `pallet::name`.
    pub fn is(&self, pallet: &str, name: &str) -> bool {
        self.pallet == pallet && self.name == name
    }
}

/// Why an extrinsic did not land.
#[derive(Debug, thiserror::Error)]
pub enum TxError {
    /// Refused by the runtime (`Pallet::Error` from the metadata) or, for want of fees, by the
    /// pool. Retrying the same transaction is pointless.
    #[error("{0}")]
    Dispatch(ChainError),
    /// Connection, pool or timeout trouble: retry.
    #[error(transparent)]
    Transient(#[from] anyhow::Error),
}

impl TxError {
    /// The pool's refusal of a submission: for want of fees that is final (until the account
    /// is funded), anything else (bad nonce, a full pool, a lost connection) may pass later.
    pub(crate) fn submission(text: String) -> Self {
        if text.contains("Inability to pay some fees")
            || text.contains("1010") && text.contains("pay")
        {
            return TxError::Dispatch(ChainError::other(
                "Payment",
                "the signer cannot pay the transaction fee (fund the account first)".into(),
            ));
        }
        TxError::Transient(anyhow::anyhow!("submitting: {text}"))
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
        assert!(e.is("Grid", "FarmNotFound") && !e.is("Grid", "NotANode"));
    }

    #[test]
    fn a_fee_refusal_is_final_and_other_pool_trouble_is_not() {
        assert!(matches!(
            TxError::submission("Invalid Transaction (1010): Inability to pay some fees".into()),
            TxError::Dispatch(c) if c.name == "Payment"
        ));
        assert!(matches!(
            TxError::submission("Priority is too low".into()),
            TxError::Transient(_)
        ));
    }
}
