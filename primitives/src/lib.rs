//! Types and traits shared by the grid pallets, the runtime and the node executor.
//!
//! Everything here is SCALE-encoded on chain, so changing a type's layout is a storage migration.
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

mod capacity;
mod ip;
mod overlay;
#[cfg(feature = "runtime-api")]
pub mod runtime_api;

pub mod billing;
pub mod contracts;
#[cfg(feature = "runtime-api")]
pub mod deployments_api;
pub mod releases;
#[cfg(feature = "sealing")]
pub mod sealing;
pub mod spec;
pub mod units;

pub use capacity::{GridCapacity, NodeLedger, NodeStatus, Resources, GIB, KIB, MIB, TIB};
pub use ip::{
    classify_ipv4, classify_ipv6, validate_public_ipv4, validate_public_ipv4_in,
    validate_public_ipv6, validate_public_ipv6_in, IpError, Ipv4Cidr, Ipv6Cidr, PublicIpv4Config,
    PublicIpv6Config, SpecialRange, MAX_IPV4_PREFIX, MAX_IPV6_PREFIX, MAX_IPV6_PREFIX_FOR_VMS,
    MIN_IPV4_PREFIX, MIN_IPV6_PREFIX,
};
pub use overlay::{
    overlay_key_proof_message, validate_overlay_address, OverlayAddress, OverlayAddressError,
    OverlayEndpoint, OverlayKeyProof, MAX_OVERLAY_ADDRESSES, MAX_OVERLAY_ADDRESS_LEN,
    OVERLAY_KEY_PROOF_TAG,
};
/// The client-side trait exists with `std` only; the runtime names `runtime_api::GridApi`.
#[cfg(all(feature = "runtime-api", feature = "std"))]
pub use runtime_api::GridApi;

/// Identifier of a farm (a farmer's group of nodes sharing a public IP pool and a pricing policy).
pub type FarmId = u32;
/// Identifier of a node (one machine running the executor, one chain account).
pub type NodeId = u32;
/// Identifier of a deployment contract; owned by the deployments pallet.
pub type ContractId = u64;
/// Identifier of a pricing policy; owned by the billing pallet.
pub type PricingPolicyId = u32;

/// Pricing policy a new farm starts with until governance assigns another.
pub const DEFAULT_PRICING_POLICY: PricingPolicyId = 0;
