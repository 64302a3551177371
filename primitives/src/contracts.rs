//! Deployment contracts as other pallets and the executor see them, and the interface billing
//! uses to act on them.

use alloc::vec::Vec;
use codec::{Decode, DecodeWithMemTracking, Encode, MaxEncodedLen};
use frame_support::{pallet_prelude::ConstU32, weights::Weight, BoundedVec};
use scale_info::TypeInfo;
use sp_runtime::DispatchResult;

use crate::{
    spec::{DeploymentSpec, RequiredResources, SpecHash, WorkloadName, MAX_PUBLIC_IPV4},
    ContractId, NodeId, PublicIpv4Config,
};

/// Bytes of the reason a node gives for a workload that failed to deploy.
pub const MAX_FAILURE_REASON_LEN: u32 = 256;

/// Why a workload failed, as the node reported it (UTF-8 expected, not enforced).
pub type FailureText = BoundedVec<u8, ConstU32<MAX_FAILURE_REASON_LEN>>;

/// The first failed workload of a deployment report.
#[derive(
    Clone, PartialEq, Eq, Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo, Debug,
)]
pub struct FailureReason {
    pub workload: WorkloadName,
    pub reason: FailureText,
}

/// Why a contract ended.
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
pub enum CancelCause {
    /// The signers reached the threshold on a cancel proposal.
    Signers,
    /// The owner withdrew a contract that never activated.
    Withdrawn,
    /// A required signer rejected the creation proposal.
    Rejected,
    /// The creation proposal was not approved in time.
    Expired,
    /// Billing ended it after its grace period.
    OutOfFunds,
    /// Its node left the grid: removed by the farm owner or the node after a notice period,
    /// or by governance.
    NodeRemoved,
    /// Governance removed a farm IP it held.
    PublicIpRemoved,
}

/// Life cycle of a contract.
///
/// `PendingApproval` until the creation proposal reaches the threshold, then `Active` (capacity
/// reserved, the node should deploy), then `Deployed` or `Failed` from the node's report for the
/// active version. Billing may put an activated contract in `GracePeriod` and take it out again.
/// `Cancelled` is final: the contract is removed in the same block and only the event keeps it.
#[derive(
    Clone, PartialEq, Eq, Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo, Debug,
)]
pub enum ContractState {
    PendingApproval,
    Active,
    Deployed,
    Failed(FailureReason),
    GracePeriod,
    Cancelled(CancelCause),
}

/// What the executor of a node needs to run one contract.
#[derive(Clone, PartialEq, Eq, Encode, Decode, TypeInfo, Debug)]
pub struct NodeContract {
    pub contract: ContractId,
    pub state: ContractState,
    /// The approved spec; its `version` is the one to deploy and report.
    pub spec: DeploymentSpec,
    pub spec_hash: SpecHash,
    /// The farm address assigned to each IPv4 public IP workload of the spec.
    pub public_ips: BoundedVec<(WorkloadName, PublicIpv4Config), ConstU32<MAX_PUBLIC_IPV4>>,
}

/// A contract as its owner lists it.
#[derive(Clone, PartialEq, Eq, Encode, Decode, TypeInfo, Debug)]
pub struct ContractSummary {
    pub contract: ContractId,
    pub node: NodeId,
    pub state: ContractState,
    /// Hash and version of the active spec; `None` before the first activation.
    pub active: Option<(SpecHash, u32)>,
    /// Hash of the proposal waiting for approvals, if any.
    pub pending_proposal: Option<SpecHash>,
}

/// What billing needs to charge for a contract.
#[derive(Clone, PartialEq, Eq, Encode, Decode, TypeInfo, Debug)]
pub struct BillingInfo<AccountId, BlockNumber> {
    /// Pays for the contract.
    pub owner: AccountId,
    pub node: NodeId,
    /// What is reserved on the node for the active spec (and charged for).
    pub required: RequiredResources,
    pub state: ContractState,
    /// Block of the first activation.
    pub activated_at: BlockNumber,
}

/// The small interface billing uses, implemented by the deployments pallet.
pub trait ContractsForBilling<AccountId, BlockNumber> {
    /// Billing data of a contract that has been activated; `None` for an unknown contract or
    /// one still waiting for its first approval (nothing to bill).
    fn contract_billing_info(contract: ContractId) -> Option<BillingInfo<AccountId, BlockNumber>>;
    /// Enters (`true`) or leaves (`false`) the grace period. Leaving restores the state the
    /// node last reported for the active version. Fails for an unknown or never-activated
    /// contract; setting the current value again is a no-op.
    fn set_grace_period(contract: ContractId, in_grace: bool) -> DispatchResult;
    /// Cancels the contract with cause `OutOfFunds`, releasing its capacity, IPs and deposit.
    fn cancel_out_of_funds(contract: ContractId) -> DispatchResult;
}

/// The outcome of [`EndContracts::end_contracts_on_node`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndedOnNode {
    /// Contracts it tried to end (each costs up to [`EndContracts::end_contract_weight`]).
    pub attempted: u32,
    /// Some of them could not be ended: the node cannot be emptied.
    pub failed: bool,
    /// Contracts are left on the node.
    pub more: bool,
}

/// What the grid asks of the deployments pallet when a node or a farm IP leaves: end the
/// contracts that use it, releasing their capacity, IPs and deposits.
pub trait EndContracts {
    /// Tries to end up to `max` contracts placed on `node` (cause [`CancelCause::NodeRemoved`]).
    fn end_contracts_on_node(node: NodeId, max: u32) -> EndedOnNode;
    /// Ends `contract` (cause [`CancelCause::PublicIpRemoved`]).
    fn end_contract_holding_ip(contract: ContractId) -> DispatchResult;
    /// Upper bound of the weight of ending one contract.
    fn end_contract_weight() -> Weight;
}

/// No contracts: nothing to end (a grid without the deployments pallet, and unit tests).
impl EndContracts for () {
    fn end_contracts_on_node(_node: NodeId, _max: u32) -> EndedOnNode {
        EndedOnNode::default()
    }
    fn end_contract_holding_ip(_contract: ContractId) -> DispatchResult {
        Ok(())
    }
    fn end_contract_weight() -> Weight {
        Weight::zero()
    }
}

/// Told when a contract ends, before it is removed, so billing can settle the last period.
pub trait OnContractEnded<AccountId, BlockNumber> {
    /// `info` is `None` for a contract that never activated.
    fn on_contract_ended(
        contract: ContractId,
        cause: CancelCause,
        info: Option<BillingInfo<AccountId, BlockNumber>>,
    );
    /// Upper bound of [`OnContractEnded::on_contract_ended`]'s weight where a caller's own
    /// benchmark does not cover its heaviest path (settling a contract ended by its node's
    /// removal).
    fn on_contract_ended_weight() -> Weight;
}

impl<AccountId, BlockNumber> OnContractEnded<AccountId, BlockNumber> for () {
    fn on_contract_ended(
        _contract: ContractId,
        _cause: CancelCause,
        _info: Option<BillingInfo<AccountId, BlockNumber>>,
    ) {
    }
    fn on_contract_ended_weight() -> Weight {
        Weight::zero()
    }
}

/// The executor's view of a node: every contract with an active spec.
pub type NodeContracts = Vec<NodeContract>;

/// Told when an approved update changes what an activated contract holds, so billing charges
/// the resources held before the change up to it, and the new ones after (pro rata inside a
/// window).
pub trait OnResourcesChanged {
    /// `previous` was held by `contract` until now.
    fn on_resources_changed(contract: ContractId, previous: &RequiredResources);
}

impl OnResourcesChanged for () {
    fn on_resources_changed(_contract: ContractId, _previous: &RequiredResources) {}
}

/// Told when a node leaves the grid, so other pallets drop what they keep per node account
/// (billing's free-report quota), covered by the node's deposit while it lived.
pub trait OnNodeRemoved<AccountId> {
    /// `node`, run by `account`, is gone with all its grid state.
    fn on_node_removed(node: NodeId, account: &AccountId);
    /// Upper bound of [`OnNodeRemoved::on_node_removed`]'s weight.
    fn on_node_removed_weight() -> Weight;
}

impl<AccountId> OnNodeRemoved<AccountId> for () {
    fn on_node_removed(_node: NodeId, _account: &AccountId) {}
    fn on_node_removed_weight() -> Weight {
        Weight::zero()
    }
}
