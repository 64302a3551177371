//! Compute capacity and the interface other pallets use to reserve it.

use alloc::vec::Vec;
use codec::{Decode, DecodeWithMemTracking, Encode, MaxEncodedLen};
use scale_info::TypeInfo;
use sp_runtime::{DispatchError, DispatchResult};

use crate::{ContractId, FarmId, NodeId, PricingPolicyId, PublicIpv4Config};

/// Binary unit multiples, for byte amounts.
pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;
pub const GIB: u64 = 1024 * MIB;
pub const TIB: u64 = 1024 * GIB;

/// An amount of compute resources: a node's capacity, its reserved part, or a workload's need.
///
/// Units are explicit so no layer has to guess: `cru` counts logical CPU cores (hardware
/// threads); `mru`, `sru` and `hru` are bytes (use [`GIB`] and friends to build values).
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    Encode,
    Decode,
    DecodeWithMemTracking,
    MaxEncodedLen,
    TypeInfo,
    Debug,
)]
#[cfg_attr(feature = "std", derive(serde::Serialize, serde::Deserialize))]
pub struct Resources {
    /// Logical CPU cores.
    pub cru: u64,
    /// Memory, bytes.
    pub mru: u64,
    /// SSD storage, bytes.
    pub sru: u64,
    /// HDD storage, bytes.
    pub hru: u64,
}

impl Resources {
    pub const fn zero() -> Self {
        Resources {
            cru: 0,
            mru: 0,
            sru: 0,
            hru: 0,
        }
    }

    pub const fn new(cru: u64, mru: u64, sru: u64, hru: u64) -> Self {
        Resources { cru, mru, sru, hru }
    }

    pub fn is_zero(&self) -> bool {
        *self == Self::zero()
    }

    /// Component-wise sum; `None` if any component overflows.
    pub fn checked_add(&self, other: &Self) -> Option<Self> {
        Some(Resources {
            cru: self.cru.checked_add(other.cru)?,
            mru: self.mru.checked_add(other.mru)?,
            sru: self.sru.checked_add(other.sru)?,
            hru: self.hru.checked_add(other.hru)?,
        })
    }

    /// Component-wise difference; `None` if any component would go below zero.
    pub fn checked_sub(&self, other: &Self) -> Option<Self> {
        Some(Resources {
            cru: self.cru.checked_sub(other.cru)?,
            mru: self.mru.checked_sub(other.mru)?,
            sru: self.sru.checked_sub(other.sru)?,
            hru: self.hru.checked_sub(other.hru)?,
        })
    }

    /// Component-wise difference, each component floored at zero.
    pub fn saturating_sub(&self, other: &Self) -> Self {
        Resources {
            cru: self.cru.saturating_sub(other.cru),
            mru: self.mru.saturating_sub(other.mru),
            sru: self.sru.saturating_sub(other.sru),
            hru: self.hru.saturating_sub(other.hru),
        }
    }

    /// True if every component is at least the matching one of `min`.
    pub fn all_at_least(&self, min: &Self) -> bool {
        self.cru >= min.cru && self.mru >= min.mru && self.sru >= min.sru && self.hru >= min.hru
    }

    /// The capacity usable for reservations: CPU multiplied by the overcommit factor (saturating
    /// at `u64::MAX`, which no reservation can exceed anyway), everything else unchanged.
    ///
    /// A factor of 0 is treated as 1: "no overcommit" is the least surprising reading of a
    /// misconfigured constant, whereas 0 would make every node unusable.
    pub fn with_cru_overcommit(&self, cru_overcommit: u32) -> Self {
        let factor = u64::from(cru_overcommit.max(1));
        Resources {
            cru: self.cru.saturating_mul(factor),
            ..*self
        }
    }

    /// True if `self` (an amount already reserved plus a new need) fits in `capacity`.
    ///
    /// Memory and disks are never overcommitted: a VM touching its memory or disk must find it.
    /// CPU time is shared, so `cru` may exceed the cores by `cru_overcommit` times.
    pub fn fits_in(&self, capacity: &Self, cru_overcommit: u32) -> bool {
        capacity
            .with_cru_overcommit(cru_overcommit)
            .all_at_least(self)
    }
}

/// Liveness of a node, derived from the time of its last heartbeat.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    Encode,
    Decode,
    DecodeWithMemTracking,
    MaxEncodedLen,
    TypeInfo,
    Debug,
)]
#[cfg_attr(feature = "std", derive(serde::Serialize, serde::Deserialize))]
pub enum NodeStatus {
    /// A heartbeat arrived within the timeout.
    Online,
    /// No heartbeat yet, or the last one is older than the timeout.
    Offline,
}

/// What the deployments and billing pallets need from the grid: who owns what, whether a node
/// can take work, and the capacity and public IP ledger.
///
/// Every mutating function either applies fully or returns an error leaving state untouched, so
/// callers may compose them inside one extrinsic and rely on its storage layer for rollback of
/// their own later failures.
pub trait GridCapacity<AccountId> {
    /// The chain account the node's executor signs with.
    fn node_account(node: NodeId) -> Option<AccountId>;
    /// The farm a node belongs to.
    fn node_farm(node: NodeId) -> Option<FarmId>;
    /// The account owning a farm (receives the farmer's share of payments).
    fn farm_owner(farm: FarmId) -> Option<AccountId>;
    /// The pricing policy governance assigned to a farm.
    fn farm_pricing_policy(farm: FarmId) -> Option<PricingPolicyId>;
    /// True if the node exists and its last heartbeat is within the timeout.
    fn node_is_online(node: NodeId) -> bool;
    /// `Ok` if the node exists, is online, and is powered up with power target up; otherwise
    /// the error naming the first failed condition.
    fn node_accepts_workloads(node: NodeId) -> Result<(), DispatchError>;
    /// True while the node's removal is pending: it takes no new contracts, not even pending
    /// ones, so its removal is never held up.
    fn node_is_leaving(node: NodeId) -> bool;
    /// Capacity left for reservations (CPU including overcommit); `None` for an unknown node.
    fn free_capacity(node: NodeId) -> Option<Resources>;
    /// Adds `resources` to the node's reserved capacity, failing if it does not fit.
    fn reserve(node: NodeId, resources: &Resources) -> DispatchResult;
    /// Returns `resources` from the node's reserved capacity, failing if more than reserved.
    fn release(node: NodeId, resources: &Resources) -> DispatchResult;
    /// The domain under which the node serves gateway workloads (from its public config);
    /// `None` if it has none or the node is unknown.
    fn node_gateway_domain(node: NodeId) -> Option<alloc::vec::Vec<u8>>;
    /// Takes `count` free public IPs from the node's farm for `contract`: all of them or none.
    fn assign_public_ips(
        node: NodeId,
        contract: ContractId,
        count: u32,
    ) -> Result<Vec<PublicIpv4Config>, DispatchError>;
    /// Returns every IP held by `contract` on the node's farm to the pool (none held is fine).
    fn release_public_ips(node: NodeId, contract: ContractId) -> DispatchResult;
    /// Counts a contract as active on the node (an active node cannot be removed or powered down).
    fn contract_started(node: NodeId) -> DispatchResult;
    /// Undoes [`Self::contract_started`].
    fn contract_ended(node: NodeId) -> DispatchResult;
    /// What the grid's ledger holds for a node, for other pallets' invariant checks
    /// (`try_state`); `None` for an unknown node.
    fn node_ledger(node: NodeId) -> Option<NodeLedger>;
    /// The addresses of the node's farm pool assigned to `contract`, for invariant checks.
    fn assigned_public_ips(node: NodeId, contract: ContractId) -> Vec<[u8; 4]>;
}

/// A node's entries in the grid's capacity ledger.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct NodeLedger {
    /// Capacity reserved by contracts.
    pub reserved: Resources,
    /// Contracts counted as active ([`GridCapacity::contract_started`]).
    pub active_contracts: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Resources = Resources::new(u64::MAX, u64::MAX, u64::MAX, u64::MAX);

    #[test]
    fn add_and_sub_are_checked_at_the_bounds() {
        let one = Resources::new(1, 1, 1, 1);
        assert_eq!(MAX.checked_add(&Resources::zero()), Some(MAX));
        assert_eq!(MAX.checked_add(&Resources::new(0, 0, 0, 1)), None);
        assert_eq!(MAX.checked_sub(&MAX), Some(Resources::zero()));
        assert_eq!(
            Resources::zero().checked_sub(&Resources::new(0, 1, 0, 0)),
            None
        );
        assert_eq!(Resources::zero().saturating_sub(&one), Resources::zero());
        assert_eq!(
            Resources::new(5, 5, 5, 5).saturating_sub(&Resources::new(1, 9, 2, 5)),
            Resources::new(4, 0, 3, 0)
        );
        assert!(Resources::zero().is_zero());
        assert!(!one.is_zero());
    }

    #[test]
    fn fits_in_overcommits_cpu_only() {
        let cap = Resources::new(4, 8 * GIB, 100 * GIB, 0);
        assert!(Resources::new(4, 8 * GIB, 100 * GIB, 0).fits_in(&cap, 1));
        assert!(!Resources::new(5, 0, 0, 0).fits_in(&cap, 1));
        assert!(Resources::new(8, 0, 0, 0).fits_in(&cap, 2));
        assert!(!Resources::new(9, 0, 0, 0).fits_in(&cap, 2));
        // Overcommit never applies to memory or disks.
        assert!(!Resources::new(0, 8 * GIB + 1, 0, 0).fits_in(&cap, 100));
        assert!(!Resources::new(0, 0, 100 * GIB + 1, 0).fits_in(&cap, 100));
        assert!(!Resources::new(0, 0, 0, 1).fits_in(&cap, 100));
        // A factor of 0 behaves as 1.
        assert!(Resources::new(4, 0, 0, 0).fits_in(&cap, 0));
        assert!(!Resources::new(5, 0, 0, 0).fits_in(&cap, 0));
        // The multiplied capacity saturates instead of wrapping.
        assert!(MAX.fits_in(&MAX, u32::MAX));
        assert_eq!(MAX.with_cru_overcommit(u32::MAX).cru, u64::MAX);
        assert!(Resources::new(u64::MAX, 0, 0, 0)
            .fits_in(&Resources::new(u64::MAX / 2 + 1, 0, 0, 0), 2));
    }
}
