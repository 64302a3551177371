//! Runtime API of the deployments pallet: the executor's desired state in one call.

use alloc::vec::Vec;
use codec::Codec;

use crate::{
    contracts::{ContractSummary, NodeContract},
    ContractId, NodeId,
};

sp_api::decl_runtime_apis! {
    /// Read-only queries over deployment contracts.
    pub trait DeploymentsApi<AccountId> where AccountId: Codec {
        /// Every contract of the node with an approved spec (Active, Deployed, Failed or in
        /// GracePeriod), by ascending id: what the node should be running.
        fn contracts_of_node(node: NodeId) -> Vec<(ContractId, NodeContract)>;
        /// Every contract of the owner, by ascending id, including those awaiting approval.
        fn contracts_of_owner(owner: AccountId) -> Vec<ContractSummary>;
    }
}
