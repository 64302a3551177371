//! Stored and call-argument types of the deployments pallet.

use codec::{Decode, DecodeWithMemTracking, Encode, MaxEncodedLen};
use frame_support::{
    pallet_prelude::ConstU32, traits::fungible::Inspect, BoundedVec, CloneNoBound, DebugNoBound,
    EqNoBound, PartialEqNoBound,
};
use frame_system::pallet_prelude::BlockNumberFor;
use scale_info::TypeInfo;
use zos_primitives::{
    contracts::{ContractState, FailureText},
    spec::{
        DeploymentSpec, RequiredResources, SpecHash, WorkloadName, MAX_PUBLIC_IPV4, MAX_WORKLOADS,
    },
    NodeId, PublicIpv4Config,
};

use crate::Config;

pub type BalanceOf<T> =
    <<T as Config>::Currency as Inspect<<T as frame_system::Config>::AccountId>>::Balance;

/// One party of a contract's multisig.
#[derive(
    Clone, PartialEq, Eq, Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo, Debug,
)]
pub struct Signer<AccountId> {
    pub account: AccountId,
    /// Counted towards the threshold when this signer approves; at least 1.
    pub weight: u32,
    /// No proposal passes without this signer's approval, and this signer may veto one.
    pub required: bool,
}

pub type SignersOf<T> =
    BoundedVec<Signer<<T as frame_system::Config>::AccountId>, <T as Config>::MaxSigners>;

/// The approved spec in force, summarised (the spec itself is in `ActiveSpecs`).
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
pub struct ActiveSpecInfo {
    pub hash: SpecHash,
    pub version: u32,
    /// What is reserved on the node for it.
    pub required: RequiredResources,
}

/// Public IPv4 addresses held by a contract, one per IPv4 public IP workload of its spec.
pub type AssignedIps = BoundedVec<(WorkloadName, PublicIpv4Config), ConstU32<MAX_PUBLIC_IPV4>>;

#[derive(
    CloneNoBound, PartialEqNoBound, EqNoBound, Encode, Decode, MaxEncodedLen, TypeInfo, DebugNoBound,
)]
#[scale_info(skip_type_params(T))]
#[codec(mel_bound())]
pub struct Contract<T: Config> {
    pub owner: T::AccountId,
    pub node: NodeId,
    pub signers: SignersOf<T>,
    /// Approving weight a proposal needs (besides every required signer).
    pub threshold: u32,
    pub state: ContractState,
    /// `None` until the creation proposal passes.
    pub active: Option<ActiveSpecInfo>,
    pub public_ips: AssignedIps,
    /// Held from the owner for the stored spec(s), pending proposal included.
    pub deposit: BalanceOf<T>,
    pub created_at: BlockNumberFor<T>,
    pub activated_at: Option<BlockNumberFor<T>>,
}

/// What a proposal does when it passes.
#[derive(Clone, PartialEq, Eq, Encode, Decode, MaxEncodedLen, TypeInfo, Debug)]
pub enum ProposalAction {
    /// Run this spec: the first version at creation, the next one for an update.
    Deploy(DeploymentSpec),
    /// End the contract.
    Cancel,
}

/// Kind of a proposal, for events.
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
pub enum ProposalKind {
    Deploy { version: u32 },
    Cancel,
}

#[derive(
    CloneNoBound, PartialEqNoBound, EqNoBound, Encode, Decode, MaxEncodedLen, TypeInfo, DebugNoBound,
)]
#[scale_info(skip_type_params(T))]
#[codec(mel_bound())]
pub struct Proposal<T: Config> {
    pub action: ProposalAction,
    /// What approvals name: the spec hash for `Deploy`, [`crate::Pallet::cancel_hash`] for `Cancel`.
    pub hash: SpecHash,
    pub proposer: T::AccountId,
    pub approvals: BoundedVec<T::AccountId, T::MaxSigners>,
    /// The proposal is dropped at the start of this block if not passed by then.
    pub expires_at: BlockNumberFor<T>,
    /// Part of the contract's deposit held for this proposal's spec.
    pub deposit: BalanceOf<T>,
}

/// Outcome of one workload as the node reports it.
#[derive(
    Clone, PartialEq, Eq, Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo, Debug,
)]
pub enum WorkloadResult {
    Ok,
    /// The workload failed; the contract is `Failed` with this reason.
    Error(FailureText),
    /// A health check's VM fails its probe (only for health-check workloads): the contract stays
    /// deployed and the reason is kept in the report.
    Unhealthy(FailureText),
}

#[derive(
    Clone, PartialEq, Eq, Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo, Debug,
)]
pub struct WorkloadReport {
    pub name: WorkloadName,
    pub result: WorkloadResult,
}

/// One entry per workload of the spec, in spec order.
pub type WorkloadReports = BoundedVec<WorkloadReport, ConstU32<MAX_WORKLOADS>>;

/// The node's last report for the active version.
#[derive(
    CloneNoBound, PartialEqNoBound, EqNoBound, Encode, Decode, MaxEncodedLen, TypeInfo, DebugNoBound,
)]
#[scale_info(skip_type_params(T))]
#[codec(mel_bound())]
pub struct DeploymentReport<T: Config> {
    pub version: u32,
    pub workloads: WorkloadReports,
    pub at: BlockNumberFor<T>,
}
