//! Runtime API the executor and UIs use to read the grid without scanning storage.

use alloc::vec::Vec;
use codec::Codec;

use crate::{FarmId, NodeId, NodeStatus, PublicIpv4Config, Resources};

sp_api::decl_runtime_apis! {
    /// Read-only queries over the grid pallet.
    pub trait GridApi<AccountId> where AccountId: Codec {
        /// The node registered by this account, if any.
        fn node_by_account(account: AccountId) -> Option<NodeId>;
        /// The ids of the farm's nodes, ascending.
        fn nodes_of_farm(farm: FarmId) -> Vec<NodeId>;
        /// Capacity still reservable on the node (CPU including overcommit).
        fn free_capacity(node: NodeId) -> Option<Resources>;
        /// The farm's public IPs not assigned to any contract.
        fn free_public_ips(farm: FarmId) -> Vec<PublicIpv4Config>;
        /// Online or Offline from the node's last heartbeat; `None` for an unknown node.
        fn node_status(node: NodeId) -> Option<NodeStatus>;
        /// The farm with this name, compared case-insensitively.
        fn farm_by_name(name: Vec<u8>) -> Option<FarmId>;
    }
}
