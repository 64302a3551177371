//! Stored and call-argument types of the grid pallet.

use codec::{Decode, DecodeWithMemTracking, Encode, MaxEncodedLen};
use frame_support::{
    pallet_prelude::ConstU32, BoundedVec, CloneNoBound, DebugNoBound, EqNoBound, PartialEqNoBound,
};
use frame_system::pallet_prelude::BlockNumberFor;
use scale_info::TypeInfo;
use zos_primitives::{
    ContractId, FarmId, NodeId, PricingPolicyId, PublicIpv4Config, PublicIpv6Config, Resources,
};

use crate::Config;

pub const MIN_FARM_NAME_LEN: u32 = 3;
pub const MAX_FARM_NAME_LEN: u32 = 40;
pub const MAX_LOCATION_NAME_LEN: u32 = 64;
/// Longest DNS name (RFC 1035, without the trailing dot).
pub const MAX_DOMAIN_LEN: u32 = 253;
pub const MAX_EXECUTOR_VERSION_LEN: u32 = 32;
/// Most unused node authorizations one `force_remove_farm` clears (with more, it clears that
/// many and is called again), so the call stays bounded.
pub const MAX_AUTHORIZATIONS_FORCE_REMOVED: u32 = 256;
/// Most nodes one `force_remove_farm` removes or schedules for removal (with more, it is
/// called again once those are gone), so the call stays bounded.
pub const MAX_NODES_FORCE_REMOVED: u32 = 32;
/// Latitude range in micro-degrees.
pub const MAX_LATITUDE: i32 = 90_000_000;
/// Longitude range in micro-degrees.
pub const MAX_LONGITUDE: i32 = 180_000_000;

/// Farm display name: 3-40 bytes of `[A-Za-z0-9_-]`.
pub type FarmName = BoundedVec<u8, ConstU32<MAX_FARM_NAME_LEN>>;
/// UTF-8 city or country name.
pub type LocationName = BoundedVec<u8, ConstU32<MAX_LOCATION_NAME_LEN>>;
/// A DNS name the node answers on.
pub type Domain = BoundedVec<u8, ConstU32<MAX_DOMAIN_LEN>>;
/// Printable ASCII version string of the node's executor.
pub type ExecutorVersion = BoundedVec<u8, ConstU32<MAX_EXECUTOR_VERSION_LEN>>;
/// x25519 public key deployers seal secrets to.
pub type BoxKey = [u8; 32];

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
pub enum FarmCertification {
    #[default]
    NotCertified,
    Gold,
}

/// Power of a node: the farmer's target and the node's reported state use the same values.
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
pub enum Power {
    #[default]
    Up,
    Down,
}

/// Which contract, running on which node, holds a farm IP.
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
pub struct IpAssignment {
    pub contract: ContractId,
    pub node: NodeId,
}

/// One address of a farm's public IPv4 pool.
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
pub struct PublicIpEntry {
    pub config: PublicIpv4Config,
    /// `None` while the address is free.
    pub assigned: Option<IpAssignment>,
}

/// What holds an IPv4 address, so an address appears once on the whole chain.
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
pub enum IpHolder {
    /// In the farm's public IP pool.
    Farm(FarmId),
    /// The node's own public address.
    Node(NodeId),
}

#[derive(
    CloneNoBound, PartialEqNoBound, EqNoBound, Encode, Decode, MaxEncodedLen, TypeInfo, DebugNoBound,
)]
#[scale_info(skip_type_params(T))]
#[codec(mel_bound())]
pub struct Farm<T: Config> {
    pub id: FarmId,
    pub owner: T::AccountId,
    /// As given by the owner; the name index holds the lowercase form.
    pub name: FarmName,
    pub certification: FarmCertification,
    pub pricing_policy: PricingPolicyId,
    pub public_ips: BoundedVec<PublicIpEntry, T::MaxIpsPerFarm>,
}

/// Where a node stands. Coordinates are micro-degrees so they stay integers.
#[derive(
    Clone,
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
pub struct Location {
    pub city: LocationName,
    pub country: LocationName,
    /// -90_000_000 ..= 90_000_000.
    pub latitude: i32,
    /// -180_000_000 ..= 180_000_000.
    pub longitude: i32,
}

/// Public reachability of the node itself (not the farm's pool).
#[derive(
    Clone,
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
pub struct PublicConfig {
    pub ipv4: Option<PublicIpv4Config>,
    pub ipv6: Option<PublicIpv6Config>,
    pub domain: Option<Domain>,
}

/// When the chain last heard from a node.
#[derive(Clone, Copy, PartialEq, Eq, Encode, Decode, MaxEncodedLen, TypeInfo, Debug)]
pub struct Heartbeat<BlockNumber> {
    pub block: BlockNumber,
    /// Chain time (timestamp pallet), milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
}

#[derive(
    CloneNoBound, PartialEqNoBound, EqNoBound, Encode, Decode, MaxEncodedLen, TypeInfo, DebugNoBound,
)]
#[scale_info(skip_type_params(T))]
#[codec(mel_bound())]
pub struct Node<T: Config> {
    pub id: NodeId,
    pub farm_id: FarmId,
    /// The executor's key; it signs heartbeats and updates.
    pub account: T::AccountId,
    pub capacity: Resources,
    /// Sum of the live reservations; never above `capacity` (CPU times the overcommit factor).
    pub reserved: Resources,
    pub box_key: BoxKey,
    pub location: Location,
    pub public_config: Option<PublicConfig>,
    pub executor_version: ExecutorVersion,
    pub power_target: Power,
    pub power_state: Power,
    /// Contracts running here; a node with any cannot be powered down, and is removed only
    /// after they end.
    pub active_contracts: u32,
    /// Farm IPs assigned to contracts on this node.
    pub assigned_ips: u32,
    /// `None` until the first heartbeat.
    pub last_heartbeat: Option<Heartbeat<BlockNumberFor<T>>>,
    /// Start of the current run of heartbeats with no gap above the timeout.
    pub online_since_ms: u64,
    /// Length of that run, seconds.
    pub uptime_seconds: u64,
    pub registered_at: BlockNumberFor<T>,
}

/// The queues of [`crate::NodeRemovalQueue`]: a removal after the notice period, or one
/// governance forced (due at once). Each queue's removals are due a fixed number of blocks
/// after they were scheduled, so each is in due order by construction.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Encode,
    Decode,
    DecodeWithMemTracking,
    MaxEncodedLen,
    TypeInfo,
    Debug,
)]
pub enum RemovalKind {
    /// Asked by the farm owner or the node: due after [`crate::Config::NodeRemovalNoticeBlocks`].
    Notice,
    /// Forced by governance, or asked for a dead node: due at once.
    Forced,
}

impl RemovalKind {
    /// Every queue, in the order `on_initialize` handles them.
    pub const ALL: [RemovalKind; 2] = [RemovalKind::Forced, RemovalKind::Notice];
}

/// A node that is leaving the grid: it takes no new contracts, and when `due` comes its
/// contracts are ended and the node removed.
#[derive(
    CloneNoBound, PartialEqNoBound, EqNoBound, Encode, Decode, MaxEncodedLen, TypeInfo, DebugNoBound,
)]
#[scale_info(skip_type_params(T))]
#[codec(mel_bound())]
pub struct NodeRemoval<T: Config> {
    /// The queue the removal waits in.
    pub kind: RemovalKind,
    /// First block whose `on_initialize` ends the node's contracts and removes it.
    pub due: BlockNumberFor<T>,
    /// Who asked for it: the farm owner, the node, or whoever found it dead; `None` for
    /// governance.
    pub requested_by: Option<T::AccountId>,
}

/// What a storage deposit pays for; each is held from the farm owner when the item is created
/// and returned to them when it goes.
#[derive(
    Clone, PartialEq, Eq, Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo, Debug,
)]
pub enum DepositItem<AccountId> {
    /// A farm, its name index entry and node count.
    Farm(FarmId),
    /// An address of a farm's pool and its IP index entry.
    FarmIp([u8; 4]),
    /// An unused node authorization; the deposit moves to the node when it registers.
    NodeAuthorization(FarmId, AccountId),
    /// A node and what grows with it: its index entries and addresses, its overlay endpoint,
    /// its pending removal, and the per-node entries of other pallets (deployments' reserved
    /// capacity, billing's fee-free report quota).
    Node(NodeId),
}

/// A deposit held for a [`DepositItem`]: who gets it back, and how much is held.
#[derive(
    Clone, PartialEq, Eq, Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo, Debug,
)]
pub struct HeldDeposit<AccountId, Balance> {
    pub depositor: AccountId,
    pub amount: Balance,
}
