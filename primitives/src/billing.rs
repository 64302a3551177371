//! What the billing pallet tells readers about a contract, and its runtime API.

use codec::{Decode, Encode};
use scale_info::TypeInfo;

use crate::{ContractId, NodeId};

/// Billing state of one activated contract.
#[derive(Clone, PartialEq, Eq, Encode, Decode, TypeInfo, Debug)]
pub struct ContractBillingStatus<Balance, BlockNumber> {
    pub contract: ContractId,
    pub node: NodeId,
    /// End (unix seconds) of the last accepted consumption window; `None` before the first.
    pub billed_until: Option<u64>,
    /// Owed and not yet collected.
    pub debt: Balance,
    /// Block the grace period started at, while the contract is in grace.
    pub grace_since: Option<BlockNumber>,
    /// No consumption was reported for longer than the chain's stale limit. A stale contract
    /// accrues no charge while it runs (only an ended contract's unreported final window is
    /// ever estimated).
    pub stale: bool,
    /// Set when the contract ended (unix seconds): its node may still report the final
    /// window, ending at or before this time, for a limited number of blocks.
    pub ended_at: Option<u64>,
}

#[cfg(feature = "runtime-api")]
sp_api::decl_runtime_apis! {
    /// Read-only queries over the billing pallet.
    pub trait BillingApi<Balance, BlockNumber> where
        Balance: codec::Codec,
        BlockNumber: codec::Codec,
    {
        /// Billing state of an activated contract, or of an ended one whose final window may
        /// still be reported; `None` for an unknown one.
        fn contract_billing(contract: ContractId) -> Option<ContractBillingStatus<Balance, BlockNumber>>;
        /// `(contract, node, billed_until)` by ascending contract id, for every contract whose
        /// last accepted window ended longer ago than the stale limit. Only contracts with at
        /// least one accepted report are scanned; `contract_billing` also covers the others.
        fn stale_contracts() -> alloc::vec::Vec<(ContractId, NodeId, u64)>;
    }
}
