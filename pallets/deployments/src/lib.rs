//! # Deployments pallet
//!
//! Multisig workload contracts. A contract binds an owner, a node, a set of weighted signers
//! and a typed [`DeploymentSpec`]; the node runs a spec only after the signers approved exactly
//! that spec, and derives what to run from the chain alone ([`Pallet::contracts_of_node`]).
//!
//! - `create` proposes a node, the first spec (version 0), the signers and a weight threshold.
//!   The owner must be a signer and approves by creating.
//! - Every change is a proposal: `propose_update` (the next version) or `propose_cancel`. A
//!   contract has at most one pending proposal. Approvals name the proposal's hash, so a stale
//!   or swapped proposal can never be approved by mistake.
//! - A proposal passes when the approving weight reaches the threshold and every required
//!   signer approved. A required signer may `reject` it; otherwise it expires after
//!   `ProposalTtl` blocks. Expiries wait in one FIFO queue (every proposal lives the same
//!   number of blocks, so the queue is in due order); `on_initialize` handles at most
//!   `MaxExpiriesPerBlock` of them per block and the rest in the next blocks, so no number of
//!   proposals can make scheduling fail for anybody else: a flood only delays expiries.
//! - When a spec passes, the node must accept workloads; its resources are reserved and public
//!   IPv4 addresses assigned from the node's farm, all or nothing (an update reserves only the
//!   difference). Cancelling releases everything and removes the contract.
//! - The node reports per workload whether the active version deployed (`report_deployment`).
//! - A deposit proportional to the stored spec size is held from the owner while the contract
//!   exists.
//!
//! Billing uses [`ContractsForBilling`] (grace period, out-of-funds cancellation) and is told
//! of every ending through `Config::OnContractEnded`.
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

#[cfg(feature = "runtime-benchmarks")]
mod benchmarking;
pub mod gateway_hosts;
mod interfaces;
pub mod migrations;
#[cfg(test)]
mod mock;
mod proposals;
#[cfg(test)]
mod tests;
#[cfg(any(feature = "try-runtime", feature = "std"))]
mod try_state;
pub mod types;
pub mod weights;
#[cfg(any(feature = "std", feature = "runtime-benchmarks"))]
pub mod worst_case;

pub use pallet::*;
pub use types::*;
pub use weights::WeightInfo;

use alloc::vec::Vec;
use codec::Encode;
use frame_support::{
    defensive,
    dispatch::DispatchResult,
    ensure,
    traits::{fungible::MutateHold, tokens::Precision, Get},
    BoundedVec,
};
use frame_system::pallet_prelude::BlockNumberFor;
use sp_runtime::{
    traits::{CheckedAdd, CheckedMul, Saturating, Zero},
    DispatchError,
};
use zos_primitives::{
    contracts::{
        BillingInfo, CancelCause, ContractState, ContractSummary, ContractsForBilling,
        FailureReason, FailureText, NodeContract, OnContractEnded,
    },
    spec::{DeploymentSpec, SpecHash, WorkloadName},
    ContractId, GridCapacity, NodeId, Resources,
};

#[frame_support::pallet]
pub mod pallet {
    use super::*;
    use frame_support::pallet_prelude::*;
    use frame_system::pallet_prelude::*;
    use zos_primitives::spec::SpecError;

    /// 2: proposal expiries moved from per-block slots (`ProposalExpiries`) to one FIFO queue
    /// ([`ExpiryQueue`]); 3: gateway host counts in the required resources; 4: VMs' overlay
    /// card in stored specs. See [`crate::migrations`].
    pub const STORAGE_VERSION: StorageVersion = StorageVersion::new(4);

    #[pallet::pallet]
    #[pallet::storage_version(STORAGE_VERSION)]
    pub struct Pallet<T>(_);

    /// Sets up what benchmarks need from other pallets.
    #[cfg(feature = "runtime-benchmarks")]
    pub trait BenchmarkHelper<AccountId> {
        /// An online node accepting workloads with `capacity`, in a farm with `ips` free public
        /// IPv4 addresses. Returns the node and its account.
        fn online_node(capacity: Resources, ips: u32) -> (NodeId, AccountId);
    }

    #[pallet::config]
    pub trait Config: frame_system::Config {
        type RuntimeHoldReason: From<HoldReason>;
        /// Holds the storage deposit.
        type Currency: MutateHold<Self::AccountId, Reason = Self::RuntimeHoldReason>
            + frame_support::traits::fungible::Mutate<Self::AccountId>;
        /// Nodes, capacity and public IPs; the grid pallet in the runtime.
        type Grid: GridCapacity<Self::AccountId>;
        /// Told when a contract ends (billing settles the last period).
        type OnContractEnded: OnContractEnded<Self::AccountId, BlockNumberFor<Self>>;
        /// Told when an approved update changes the resources or IPs a contract holds
        /// (billing charges the old ones up to the change).
        type OnResourcesChanged: zos_primitives::contracts::OnResourcesChanged;
        /// Signers of one contract.
        #[pallet::constant]
        type MaxSigners: Get<u32>;
        /// Blocks a proposal may wait for approval.
        #[pallet::constant]
        type ProposalTtl: Get<BlockNumberFor<Self>>;
        /// Proposal expiries handled in one block at most (bounds the `on_initialize` work);
        /// later ones wait for the next blocks.
        #[pallet::constant]
        type MaxExpiriesPerBlock: Get<u32>;
        /// Deposit of every contract, whatever its size.
        #[pallet::constant]
        type DepositBase: Get<BalanceOf<Self>>;
        /// Deposit per byte of an encoded spec kept in storage (active or proposed).
        #[pallet::constant]
        type DepositPerByte: Get<BalanceOf<Self>>;
        #[cfg(feature = "runtime-benchmarks")]
        type BenchmarkHelper: BenchmarkHelper<Self::AccountId>;
        type WeightInfo: WeightInfo;
    }

    /// Why this pallet holds funds.
    #[pallet::composite_enum]
    pub enum HoldReason {
        /// Storage deposit of a contract's specs.
        ContractDeposit,
    }

    #[pallet::type_value]
    pub fn FirstContractId() -> ContractId {
        1
    }

    #[pallet::storage]
    pub type Contracts<T: Config> =
        StorageMap<_, Twox64Concat, ContractId, Contract<T>, OptionQuery>;

    /// The approved spec each activated contract runs (kept apart: it is large).
    #[pallet::storage]
    pub type ActiveSpecs<T: Config> =
        StorageMap<_, Twox64Concat, ContractId, DeploymentSpec, OptionQuery>;

    /// The pending proposal of a contract; one at most.
    #[pallet::storage]
    pub type Proposals<T: Config> =
        StorageMap<_, Twox64Concat, ContractId, Proposal<T>, OptionQuery>;

    /// Proposal expiries by sequence number: `(due block, contract)`, in due order. An entry
    /// whose contract no longer has a proposal due then (approved, rejected, cancelled) is
    /// skipped when reached. Bounded by the proposals opened in the last `ProposalTtl` blocks,
    /// each of which held a deposit.
    #[pallet::storage]
    pub type ExpiryQueue<T: Config> =
        StorageMap<_, Twox64Concat, u64, (BlockNumberFor<T>, ContractId), OptionQuery>;

    /// `(head, tail)` of [`ExpiryQueue`]: sequence numbers `head..tail` are queued.
    #[pallet::storage]
    pub type ExpiryQueueEnds<T: Config> = StorageValue<_, (u64, u64), ValueQuery>;

    #[pallet::storage]
    pub type ContractsByNode<T: Config> =
        StorageDoubleMap<_, Twox64Concat, NodeId, Twox64Concat, ContractId, (), OptionQuery>;

    #[pallet::storage]
    pub type ContractsByOwner<T: Config> = StorageDoubleMap<
        _,
        Blake2_128Concat,
        T::AccountId,
        Twox64Concat,
        ContractId,
        (),
        OptionQuery,
    >;

    /// Capacity this pallet holds reserved on each node: the sum over its activated contracts.
    #[pallet::storage]
    pub type NodeReserved<T: Config> = StorageMap<_, Twox64Concat, NodeId, Resources, ValueQuery>;

    /// The node's last report for each contract's active version.
    #[pallet::storage]
    pub type Reports<T: Config> =
        StorageMap<_, Twox64Concat, ContractId, DeploymentReport<T>, OptionQuery>;

    /// The contract serving each gateway host (keyed by
    /// [`zos_primitives::spec::gateway_host_key`]): claimed when a spec with the gateway
    /// passes, freed when an update drops it or the contract ends. Bounded by the contracts'
    /// gateway workloads, whose spec deposits cover it.
    #[pallet::storage]
    pub type GatewayHosts<T: Config> = StorageMap<_, Identity, [u8; 32], ContractId, OptionQuery>;

    /// The gateway host keys each contract holds, to free them when it changes or ends.
    #[pallet::storage]
    pub type ContractGatewayHosts<T: Config> =
        StorageMap<_, Twox64Concat, ContractId, gateway_hosts::GatewayHostKeys, OptionQuery>;

    /// Id the next contract gets; ids start at 1 and are never reused.
    #[pallet::storage]
    pub type NextContractId<T: Config> = StorageValue<_, ContractId, ValueQuery, FirstContractId>;

    #[pallet::event]
    #[pallet::generate_deposit(pub(super) fn deposit_event)]
    pub enum Event<T: Config> {
        ContractCreated {
            contract: ContractId,
            owner: T::AccountId,
            node: NodeId,
            deposit: BalanceOf<T>,
        },
        /// Approvals must name `hash`.
        ProposalCreated {
            contract: ContractId,
            proposer: T::AccountId,
            hash: SpecHash,
            kind: ProposalKind,
            expires_at: BlockNumberFor<T>,
        },
        /// `approved_weight` is the total after this approval.
        ProposalApproved {
            contract: ContractId,
            signer: T::AccountId,
            hash: SpecHash,
            approved_weight: u32,
        },
        ProposalRejected {
            contract: ContractId,
            signer: T::AccountId,
            hash: SpecHash,
        },
        ProposalExpired {
            contract: ContractId,
            hash: SpecHash,
        },
        /// The first spec passed: capacity is reserved and the node should deploy it.
        ContractActivated {
            contract: ContractId,
            node: NodeId,
            spec_hash: SpecHash,
            version: u32,
        },
        /// A new version passed and replaced the active one.
        ContractUpdated {
            contract: ContractId,
            node: NodeId,
            spec_hash: SpecHash,
            version: u32,
        },
        /// The contract ended and was removed; its capacity, IPs and deposit are released.
        ContractCancelled {
            contract: ContractId,
            node: NodeId,
            cause: CancelCause,
        },
        /// `failed` names the first workload that failed, if any.
        DeploymentReported {
            contract: ContractId,
            node: NodeId,
            version: u32,
            failed: Option<WorkloadName>,
        },
        GracePeriodStarted {
            contract: ContractId,
        },
        GracePeriodEnded {
            contract: ContractId,
        },
        /// The node reported gateway workload `workload` failed (its domain does not point at
        /// the node, say): the deployer's domain it claimed on that node is free again, so a
        /// claim nobody can serve does not keep the domain's owner away.
        GatewayFqdnFreed {
            contract: ContractId,
            workload: WorkloadName,
        },
        /// The node reported health check `workload` failing: `reason` is the probe's last
        /// answer. Emitted when the check turns unhealthy, not again while it stays so.
        WorkloadUnhealthy {
            contract: ContractId,
            workload: WorkloadName,
            reason: FailureText,
        },
        /// The node reported health check `workload`, unhealthy in its previous report,
        /// passing again.
        WorkloadRecovered {
            contract: ContractId,
            workload: WorkloadName,
        },
    }

    #[pallet::error]
    pub enum Error<T> {
        /// The spec breaks a rule; the field names it.
        InvalidSpec(SpecError),
        /// A new contract's spec must have version 0.
        FirstVersionMustBeZero,
        /// An update must carry exactly the active version plus one.
        NotTheNextVersion,
        /// The version counter is exhausted.
        VersionOverflow,
        /// No node has this id.
        UnknownNode,
        /// A contract needs at least one signer.
        NoSigners,
        /// An account appears twice in the signer set.
        DuplicateSigner,
        /// Every signer needs a weight of at least 1.
        ZeroSignerWeight,
        /// The creator must be one of the signers.
        OwnerNotSigner,
        /// The threshold must be at least 1.
        ZeroThreshold,
        /// The signers' total weight is below the threshold: no proposal could ever pass.
        ThresholdUnreachable,
        /// The signers' total weight overflows.
        WeightOverflow,
        ContractNotFound,
        /// The signer is not in the contract's signer set.
        NotASigner,
        /// Only a required signer may reject.
        NotARequiredSigner,
        /// The contract already has a pending proposal; approve, reject or let it expire first.
        ProposalPending,
        /// The contract has no pending proposal.
        NoPendingProposal,
        /// The pending proposal has another hash: it changed, or the hash is wrong.
        ProposalHashMismatch,
        /// The signer already approved this proposal.
        AlreadyApproved,
        /// The contract has not been activated yet.
        NotActivated,
        /// Only the owner may withdraw a contract that never activated.
        NotOwner,
        /// The contract is in its grace period: top up before updating it.
        InGracePeriod,
        /// Only the contract's node may report on it.
        NotContractNode,
        /// The report is for another version than the active one.
        ReportForInactiveVersion,
        /// The report must list every workload of the active spec, in spec order.
        ReportDoesNotMatchSpec,
        /// The deposit computation overflows.
        DepositOverflow,
        /// The node's capacity ledger in this pallet would overflow or underflow.
        ReservationAccounting,
        /// The farm returned a different number of addresses than asked for.
        IpAssignmentMismatch,
        /// All contract ids are used.
        ContractIdsExhausted,
        /// The contract is already in (or out of) its grace period.
        GracePeriodUnchanged,
        /// The proposal's time ran out; it is removed in one of the next blocks (or by the
        /// next proposal on the contract) and can no longer be approved or rejected.
        ProposalOverdue,
        /// The node is leaving the grid: it takes no new contracts.
        NodeLeaving,
        /// Another contract already serves this gateway host: the name under this gateway
        /// domain, or the FQDN on this node. Choose another name.
        GatewayHostTaken,
        /// A gateway name needs a node whose public config has a domain (a gateway node).
        NodeHasNoGatewayDomain,
        /// A proposal holds as many approvals as the contract can have signers. Approvals are
        /// distinct signers, so this means corrupted storage; nothing was changed.
        ApprovalsFull,
    }

    #[pallet::hooks]
    impl<T: Config> Hooks<BlockNumberFor<T>> for Pallet<T> {
        /// Expires the due proposals, oldest first, at most `MaxExpiriesPerBlock`.
        fn on_initialize(now: BlockNumberFor<T>) -> Weight {
            let (first, tail) = ExpiryQueueEnds::<T>::get();
            let mut head = first;
            let mut handled = 0u32;
            while head < tail && handled < T::MaxExpiriesPerBlock::get() {
                match ExpiryQueue::<T>::get(head) {
                    Some((due, _)) if due > now => break,
                    Some((due, contract)) => Self::expire(contract, due),
                    None => {
                        defensive!("a queued expiry is missing");
                    }
                }
                ExpiryQueue::<T>::remove(head);
                head = head.saturating_add(1);
                handled = handled.saturating_add(1);
            }
            if head != first {
                ExpiryQueueEnds::<T>::put((head, tail));
            }
            T::WeightInfo::expire_proposals(handled).saturating_add(T::DbWeight::get().reads(2))
        }

        #[cfg(feature = "try-runtime")]
        fn try_state(_n: BlockNumberFor<T>) -> Result<(), sp_runtime::TryRuntimeError> {
            Self::do_try_state()
        }
    }

    #[pallet::call]
    impl<T: Config> Pallet<T> {
        /// Creates a contract on `node` proposing `spec` (version 0) to `signers`; the signer
        /// (the owner, who must be one of them) approves by creating. Holds the deposit.
        #[pallet::call_index(0)]
        #[pallet::weight(T::WeightInfo::create().saturating_add(Pallet::<T>::gateway_hosts_weight()))]
        pub fn create(
            origin: OriginFor<T>,
            node: NodeId,
            spec: alloc::boxed::Box<DeploymentSpec>,
            signers: SignersOf<T>,
            threshold: u32,
        ) -> DispatchResult {
            let owner = ensure_signed(origin)?;
            spec.validate().map_err(Error::<T>::InvalidSpec)?;
            ensure!(spec.version == 0, Error::<T>::FirstVersionMustBeZero);
            ensure!(
                T::Grid::node_account(node).is_some(),
                Error::<T>::UnknownNode
            );
            // Even a pending contract would hold up the node's removal.
            ensure!(!T::Grid::node_is_leaving(node), Error::<T>::NodeLeaving);
            Self::check_signers(&owner, &signers, threshold)?;

            let contract_id = NextContractId::<T>::get();
            Self::ensure_gateway_hosts_free(contract_id, node, &spec)?;
            let next = contract_id
                .checked_add(1)
                .ok_or(Error::<T>::ContractIdsExhausted)?;
            let deposit = Self::deposit_for(&spec, true)?;
            T::Currency::hold(&HoldReason::ContractDeposit.into(), &owner, deposit)?;

            let now = frame_system::Pallet::<T>::block_number();
            let contract = Contract::<T> {
                owner: owner.clone(),
                node,
                signers,
                threshold,
                state: ContractState::PendingApproval,
                active: None,
                public_ips: BoundedVec::new(),
                deposit,
                created_at: now,
                activated_at: None,
            };
            Contracts::<T>::insert(contract_id, &contract);
            ContractsByNode::<T>::insert(node, contract_id, ());
            ContractsByOwner::<T>::insert(&owner, contract_id, ());
            NextContractId::<T>::put(next);
            Self::deposit_event(Event::ContractCreated {
                contract: contract_id,
                owner: owner.clone(),
                node,
                deposit,
            });

            let hash = spec.hash();
            Self::open_proposal(
                contract_id,
                contract,
                owner,
                ProposalAction::Deploy(*spec),
                hash,
                Zero::zero(),
            )
        }

        /// Approves the contract's pending proposal, which must have `proposal_hash`. Passes it
        /// when the threshold and all required signers are reached.
        #[pallet::call_index(1)]
        // Plus billing's record of a resource change (an update that passes).
        #[pallet::weight(T::WeightInfo::approve()
            .saturating_add(T::DbWeight::get().reads_writes(2, 1))
            .saturating_add(Pallet::<T>::gateway_hosts_weight()))]
        pub fn approve(
            origin: OriginFor<T>,
            contract_id: ContractId,
            proposal_hash: SpecHash,
        ) -> DispatchResult {
            let who = ensure_signed(origin)?;
            let contract = Contracts::<T>::get(contract_id).ok_or(Error::<T>::ContractNotFound)?;
            let mut proposal =
                Proposals::<T>::get(contract_id).ok_or(Error::<T>::NoPendingProposal)?;
            ensure!(
                proposal.hash == proposal_hash,
                Error::<T>::ProposalHashMismatch
            );
            Self::ensure_not_overdue(&proposal)?;
            Self::ensure_signer(&contract, &who)?;
            ensure!(
                !proposal.approvals.contains(&who),
                Error::<T>::AlreadyApproved
            );
            // Approvals are distinct signers, so they fit in `MaxSigners`.
            proposal
                .approvals
                .try_push(who.clone())
                .map_err(|_| Error::<T>::ApprovalsFull)?;
            let approved_weight = Self::approved_weight(&contract, &proposal);
            Self::deposit_event(Event::ProposalApproved {
                contract: contract_id,
                signer: who,
                hash: proposal_hash,
                approved_weight,
            });
            if Self::passes(&contract, &proposal) {
                Self::execute(contract_id, contract, proposal)
            } else {
                Proposals::<T>::insert(contract_id, proposal);
                Ok(())
            }
        }

        /// A required signer vetoes the pending proposal. Rejecting the creation proposal
        /// ends the contract.
        #[pallet::call_index(2)]
        // Plus the contract's gateway host list, read when a rejected creation ends it.
        #[pallet::weight(T::WeightInfo::reject().saturating_add(T::DbWeight::get().reads_writes(1, 1)))]
        pub fn reject(
            origin: OriginFor<T>,
            contract_id: ContractId,
            proposal_hash: SpecHash,
        ) -> DispatchResult {
            let who = ensure_signed(origin)?;
            let contract = Contracts::<T>::get(contract_id).ok_or(Error::<T>::ContractNotFound)?;
            let proposal = Proposals::<T>::get(contract_id).ok_or(Error::<T>::NoPendingProposal)?;
            ensure!(
                proposal.hash == proposal_hash,
                Error::<T>::ProposalHashMismatch
            );
            Self::ensure_not_overdue(&proposal)?;
            ensure!(
                contract
                    .signers
                    .iter()
                    .any(|s| s.account == who && s.required),
                Error::<T>::NotARequiredSigner
            );
            Self::close_proposal(contract_id, contract, &proposal)?;
            Self::deposit_event(Event::ProposalRejected {
                contract: contract_id,
                signer: who,
                hash: proposal_hash,
            });
            if Self::never_activated(contract_id)? {
                Self::do_cancel(contract_id, CancelCause::Rejected)?;
            }
            Ok(())
        }

        /// Proposes the next version of an activated contract's spec. The node keeps running
        /// the active version until this one passes. Holds a deposit for the proposed spec.
        #[pallet::call_index(3)]
        #[pallet::weight(T::WeightInfo::propose_update()
            .saturating_add(T::DbWeight::get().reads_writes(4, 4))
            .saturating_add(Pallet::<T>::gateway_hosts_weight()))]
        pub fn propose_update(
            origin: OriginFor<T>,
            contract_id: ContractId,
            spec: alloc::boxed::Box<DeploymentSpec>,
        ) -> DispatchResult {
            let who = ensure_signed(origin)?;
            Self::expire_overdue_proposal(contract_id)?;
            let contract = Contracts::<T>::get(contract_id).ok_or(Error::<T>::ContractNotFound)?;
            Self::ensure_signer(&contract, &who)?;
            let active = contract.active.ok_or(Error::<T>::NotActivated)?;
            ensure!(
                contract.state != ContractState::GracePeriod,
                Error::<T>::InGracePeriod
            );
            ensure!(
                !Proposals::<T>::contains_key(contract_id),
                Error::<T>::ProposalPending
            );
            spec.validate().map_err(Error::<T>::InvalidSpec)?;
            let next = active
                .version
                .checked_add(1)
                .ok_or(Error::<T>::VersionOverflow)?;
            ensure!(spec.version == next, Error::<T>::NotTheNextVersion);
            Self::ensure_gateway_hosts_free(contract_id, contract.node, &spec)?;

            let deposit = Self::deposit_for(&spec, false)?;
            T::Currency::hold(
                &HoldReason::ContractDeposit.into(),
                &contract.owner,
                deposit,
            )?;
            let mut contract = contract;
            contract.deposit = contract
                .deposit
                .checked_add(&deposit)
                .ok_or(Error::<T>::DepositOverflow)?;
            Contracts::<T>::insert(contract_id, &contract);
            let hash = spec.hash();
            Self::open_proposal(
                contract_id,
                contract,
                who,
                ProposalAction::Deploy(*spec),
                hash,
                deposit,
            )
        }

        /// Proposes to end an activated contract (needs the threshold like any proposal). For a
        /// contract that never activated, the owner alone withdraws it at once.
        #[pallet::call_index(4)]
        #[pallet::weight(T::WeightInfo::propose_cancel()
            .saturating_add(T::DbWeight::get().reads_writes(2, 3))
            .saturating_add(Pallet::<T>::gateway_hosts_weight()))]
        pub fn propose_cancel(origin: OriginFor<T>, contract_id: ContractId) -> DispatchResult {
            let who = ensure_signed(origin)?;
            Self::expire_overdue_proposal(contract_id)?;
            let contract = Contracts::<T>::get(contract_id).ok_or(Error::<T>::ContractNotFound)?;
            let Some(active) = contract.active else {
                ensure!(contract.owner == who, Error::<T>::NotOwner);
                return Self::do_cancel(contract_id, CancelCause::Withdrawn);
            };
            Self::ensure_signer(&contract, &who)?;
            ensure!(
                !Proposals::<T>::contains_key(contract_id),
                Error::<T>::ProposalPending
            );
            let hash = Self::cancel_hash(contract_id, active.version);
            Self::open_proposal(
                contract_id,
                contract,
                who,
                ProposalAction::Cancel,
                hash,
                Zero::zero(),
            )
        }

        /// The contract's node reports the outcome of deploying `version` (the active one): one
        /// entry per workload, in spec order. `Unhealthy` is for health-check workloads only;
        /// it leaves the contract deployed.
        #[pallet::call_index(5)]
        #[pallet::weight(T::WeightInfo::report_deployment()
            .saturating_add(Pallet::<T>::gateway_hosts_weight())
            .saturating_add(Pallet::<T>::previous_report_weight()))]
        pub fn report_deployment(
            origin: OriginFor<T>,
            contract_id: ContractId,
            version: u32,
            workloads: WorkloadReports,
        ) -> DispatchResult {
            let who = ensure_signed(origin)?;
            let mut contract =
                Contracts::<T>::get(contract_id).ok_or(Error::<T>::ContractNotFound)?;
            ensure!(
                T::Grid::node_account(contract.node) == Some(who),
                Error::<T>::NotContractNode
            );
            let active = contract.active.ok_or(Error::<T>::NotActivated)?;
            ensure!(
                active.version == version,
                Error::<T>::ReportForInactiveVersion
            );
            let spec = ActiveSpecs::<T>::get(contract_id).ok_or(Error::<T>::NotActivated)?;
            ensure!(
                spec.workloads.len() == workloads.len()
                    && spec
                        .workloads
                        .iter()
                        .zip(workloads.iter())
                        .all(|(w, r)| w.name == r.name
                            && (!matches!(r.result, WorkloadResult::Unhealthy(_))
                                || w.as_health_check().is_some())),
                Error::<T>::ReportDoesNotMatchSpec
            );
            let failure = Self::first_failure(&workloads);
            let failed = failure.as_ref().map(|f| f.workload.clone());
            if failure.is_some() {
                Self::release_failed_fqdns(contract_id, contract.node, &spec, &workloads);
            }
            if contract.state != ContractState::GracePeriod {
                contract.state = match failure {
                    Some(reason) => ContractState::Failed(reason),
                    None => ContractState::Deployed,
                };
                Contracts::<T>::insert(contract_id, &contract);
            }
            // Any version: a check that recovered across an update is announced too.
            let earlier = Reports::<T>::get(contract_id);
            Self::note_health_changes(contract_id, earlier.as_ref(), &workloads);
            let at = frame_system::Pallet::<T>::block_number();
            Reports::<T>::insert(
                contract_id,
                DeploymentReport {
                    version,
                    workloads,
                    at,
                },
            );
            Self::deposit_event(Event::DeploymentReported {
                contract: contract_id,
                node: contract.node,
                version,
                failed,
            });
            Ok(())
        }
    }
}

impl<T: Config> Pallet<T> {
    /// What approvals of a cancel proposal name: blake2-256 of
    /// `(b"zos/cancel", contract, active version)` in SCALE.
    pub fn cancel_hash(contract: ContractId, version: u32) -> SpecHash {
        sp_crypto_hashing::blake2_256(&(b"zos/cancel", contract, version).encode())
    }

    /// Deposit for keeping `spec` in storage; `with_base` for the contract's own spec.
    pub fn deposit_for(
        spec: &DeploymentSpec,
        with_base: bool,
    ) -> Result<BalanceOf<T>, DispatchError> {
        let len: BalanceOf<T> = (spec.encoded_size() as u32).into();
        let bytes = T::DepositPerByte::get()
            .checked_mul(&len)
            .ok_or(Error::<T>::DepositOverflow)?;
        if with_base {
            Ok(bytes
                .checked_add(&T::DepositBase::get())
                .ok_or(Error::<T>::DepositOverflow)?)
        } else {
            Ok(bytes)
        }
    }

    fn check_signers(
        owner: &T::AccountId,
        signers: &SignersOf<T>,
        threshold: u32,
    ) -> DispatchResult {
        ensure!(!signers.is_empty(), Error::<T>::NoSigners);
        let mut total: u32 = 0;
        for (i, s) in signers.iter().enumerate() {
            ensure!(s.weight > 0, Error::<T>::ZeroSignerWeight);
            ensure!(
                !signers.iter().take(i).any(|o| o.account == s.account),
                Error::<T>::DuplicateSigner
            );
            total = total
                .checked_add(s.weight)
                .ok_or(Error::<T>::WeightOverflow)?;
        }
        ensure!(
            signers.iter().any(|s| &s.account == owner),
            Error::<T>::OwnerNotSigner
        );
        ensure!(threshold > 0, Error::<T>::ZeroThreshold);
        ensure!(total >= threshold, Error::<T>::ThresholdUnreachable);
        Ok(())
    }

    /// Makes `spec` the active one: checks the node, reserves the resource difference and
    /// assigns the public IPs, adjusts the deposit. Any failure fails the whole call.
    fn apply_spec(
        contract_id: ContractId,
        mut contract: Contract<T>,
        spec: DeploymentSpec,
        hash: SpecHash,
    ) -> DispatchResult {
        let node = contract.node;
        T::Grid::node_accepts_workloads(node)?;
        let new = spec.required_resources();
        let old = contract.active.map(|a| a.required).unwrap_or_default();

        // Capacity: release what shrinks first, so a reshuffle fits whenever the result does.
        let release = old.resources.saturating_sub(&new.resources);
        let reserve = new.resources.saturating_sub(&old.resources);
        if !release.is_zero() {
            T::Grid::release(node, &release)?;
        }
        if !reserve.is_zero() {
            T::Grid::reserve(node, &reserve)?;
        }
        NodeReserved::<T>::try_mutate(node, |total| -> DispatchResult {
            *total = total
                .checked_sub(&release)
                .and_then(|t| t.checked_add(&reserve))
                .ok_or(Error::<T>::ReservationAccounting)?;
            Ok(())
        })?;

        contract.public_ips = Self::assign_ips(contract_id, &contract, &spec)?;
        Self::claim_gateway_hosts(contract_id, node, &spec)?;

        let now = frame_system::Pallet::<T>::block_number();
        let first = contract.active.is_none();
        if first {
            T::Grid::contract_started(node)?;
            contract.activated_at = Some(now);
        } else if old != new {
            <T::OnResourcesChanged as zos_primitives::contracts::OnResourcesChanged>::on_resources_changed(
                contract_id,
                &old,
            );
        }
        // The contract keeps the deposit of the new spec alone (the old spec's and the
        // proposal's were held until now); the rest goes back to the owner.
        let keep = Self::deposit_for(&spec, true)?;
        if contract.deposit > keep {
            T::Currency::release(
                &HoldReason::ContractDeposit.into(),
                &contract.owner,
                contract.deposit.saturating_sub(keep),
                Precision::BestEffort,
            )?;
            contract.deposit = keep;
        }

        let version = spec.version;
        contract.active = Some(ActiveSpecInfo {
            hash,
            version,
            required: new,
        });
        // An update approved during the grace period keeps the contract in grace: only paying
        // the debt ends it (billing then restores the state the node reports).
        if contract.state != ContractState::GracePeriod {
            contract.state = ContractState::Active;
        }
        Contracts::<T>::insert(contract_id, &contract);
        ActiveSpecs::<T>::insert(contract_id, spec);
        Reports::<T>::remove(contract_id);
        if first {
            Self::deposit_event(Event::ContractActivated {
                contract: contract_id,
                node,
                spec_hash: hash,
                version,
            });
        } else {
            Self::deposit_event(Event::ContractUpdated {
                contract: contract_id,
                node,
                spec_hash: hash,
                version,
            });
        }
        Ok(())
    }

    /// Public IPv4 addresses for the spec's IPv4 public IP workloads. Workloads that keep their
    /// name keep their address as long as no addressed workload is dropped; otherwise the
    /// contract's addresses are returned to the farm and assigned anew (the grid interface
    /// releases a contract's addresses all together).
    fn assign_ips(
        contract_id: ContractId,
        contract: &Contract<T>,
        spec: &DeploymentSpec,
    ) -> Result<AssignedIps, DispatchError> {
        let node = contract.node;
        let wanted: Vec<WorkloadName> = spec.public_ipv4_workloads().cloned().collect();
        let keep_all = contract
            .public_ips
            .iter()
            .all(|(name, _)| wanted.contains(name));
        let mut result: Vec<_> = if keep_all {
            contract.public_ips.to_vec()
        } else {
            T::Grid::release_public_ips(node, contract_id)?;
            Vec::new()
        };
        let missing: Vec<WorkloadName> = wanted
            .iter()
            .filter(|name| !result.iter().any(|(held, _)| held == *name))
            .cloned()
            .collect();
        if !missing.is_empty() {
            let ips = T::Grid::assign_public_ips(node, contract_id, missing.len() as u32)?;
            ensure!(ips.len() == missing.len(), Error::<T>::IpAssignmentMismatch);
            result.extend(missing.into_iter().zip(ips));
        }
        // Spec order, so the listing is stable.
        result.sort_by_key(|(name, _)| wanted.iter().position(|w| w == name));
        BoundedVec::try_from(result).map_err(|_| Error::<T>::IpAssignmentMismatch.into())
    }

    /// Ends a contract: releases capacity, IPs, the node's contract count and the deposit,
    /// and removes every trace of it.
    pub(crate) fn do_cancel(contract_id: ContractId, cause: CancelCause) -> DispatchResult {
        let contract = Contracts::<T>::get(contract_id).ok_or(Error::<T>::ContractNotFound)?;
        let node = contract.node;
        let info = Self::billing_info(&contract);
        Proposals::<T>::remove(contract_id);
        if let Some(active) = contract.active {
            let resources = active.required.resources;
            if !resources.is_zero() {
                T::Grid::release(node, &resources)?;
                NodeReserved::<T>::try_mutate_exists(node, |total| -> DispatchResult {
                    let left = total
                        .unwrap_or_default()
                        .checked_sub(&resources)
                        .ok_or(Error::<T>::ReservationAccounting)?;
                    *total = if left.is_zero() { None } else { Some(left) };
                    Ok(())
                })?;
            }
            if !contract.public_ips.is_empty() {
                T::Grid::release_public_ips(node, contract_id)?;
            }
            T::Grid::contract_ended(node)?;
        }
        Self::release_gateway_hosts(contract_id);
        T::Currency::release(
            &HoldReason::ContractDeposit.into(),
            &contract.owner,
            contract.deposit,
            Precision::BestEffort,
        )?;
        T::OnContractEnded::on_contract_ended(contract_id, cause, info);
        Contracts::<T>::remove(contract_id);
        ActiveSpecs::<T>::remove(contract_id);
        Reports::<T>::remove(contract_id);
        ContractsByNode::<T>::remove(node, contract_id);
        ContractsByOwner::<T>::remove(&contract.owner, contract_id);
        Self::deposit_event(Event::ContractCancelled {
            contract: contract_id,
            node,
            cause,
        });
        Ok(())
    }

    /// Reading the previous report (for the health changes): one read of at most a report's
    /// size, not in the benchmarked path.
    pub fn previous_report_weight() -> frame_support::weights::Weight {
        use codec::MaxEncodedLen;
        let proof = (DeploymentReport::<T>::max_encoded_len() as u64).saturating_add(48);
        T::DbWeight::get()
            .reads(1)
            .saturating_add(frame_support::weights::Weight::from_parts(0, proof))
    }

    /// Emits the health checks that turned unhealthy or recovered since `earlier` (the
    /// contract's previous report, of any version).
    fn note_health_changes(
        contract: ContractId,
        earlier: Option<&DeploymentReport<T>>,
        workloads: &WorkloadReports,
    ) {
        let was_unhealthy = |name: &WorkloadName| {
            earlier.is_some_and(|r| {
                r.workloads
                    .iter()
                    .any(|w| w.name == *name && matches!(w.result, WorkloadResult::Unhealthy(_)))
            })
        };
        for w in workloads.iter() {
            match &w.result {
                WorkloadResult::Unhealthy(reason) if !was_unhealthy(&w.name) => {
                    Self::deposit_event(Event::WorkloadUnhealthy {
                        contract,
                        workload: w.name.clone(),
                        reason: reason.clone(),
                    })
                }
                WorkloadResult::Ok if was_unhealthy(&w.name) => {
                    Self::deposit_event(Event::WorkloadRecovered {
                        contract,
                        workload: w.name.clone(),
                    })
                }
                _ => {}
            }
        }
    }

    fn first_failure(workloads: &WorkloadReports) -> Option<FailureReason> {
        workloads.iter().find_map(|w| match &w.result {
            WorkloadResult::Ok | WorkloadResult::Unhealthy(_) => None,
            WorkloadResult::Error(reason) => Some(FailureReason {
                workload: w.name.clone(),
                reason: reason.clone(),
            }),
        })
    }

    /// The state the node's last report gives the active version (`Active` if none).
    fn reported_state(contract_id: ContractId, version: u32) -> ContractState {
        match Reports::<T>::get(contract_id) {
            Some(report) if report.version == version => {
                match Self::first_failure(&report.workloads) {
                    Some(reason) => ContractState::Failed(reason),
                    None => ContractState::Deployed,
                }
            }
            _ => ContractState::Active,
        }
    }

    fn billing_info(
        contract: &Contract<T>,
    ) -> Option<BillingInfo<T::AccountId, BlockNumberFor<T>>> {
        let active = contract.active?;
        Some(BillingInfo {
            owner: contract.owner.clone(),
            node: contract.node,
            required: active.required,
            state: contract.state.clone(),
            activated_at: contract.activated_at.unwrap_or(contract.created_at),
        })
    }

    /// Every contract of `node` with an approved spec, by ascending id: the executor's
    /// desired state.
    pub fn contracts_of_node(node: NodeId) -> Vec<(ContractId, NodeContract)> {
        let mut ids: Vec<ContractId> = ContractsByNode::<T>::iter_key_prefix(node).collect();
        ids.sort_unstable();
        ids.into_iter()
            .filter_map(|id| {
                let contract = Contracts::<T>::get(id)?;
                let active = contract.active?;
                let spec = ActiveSpecs::<T>::get(id)?;
                Some((
                    id,
                    NodeContract {
                        contract: id,
                        state: contract.state,
                        spec,
                        spec_hash: active.hash,
                        public_ips: contract.public_ips,
                    },
                ))
            })
            .collect()
    }

    /// Every contract of `owner`, by ascending id.
    pub fn contracts_of_owner(owner: &T::AccountId) -> Vec<ContractSummary> {
        let mut ids: Vec<ContractId> = ContractsByOwner::<T>::iter_key_prefix(owner).collect();
        ids.sort_unstable();
        ids.into_iter()
            .filter_map(|id| {
                let contract = Contracts::<T>::get(id)?;
                Some(ContractSummary {
                    contract: id,
                    node: contract.node,
                    state: contract.state,
                    active: contract.active.map(|a| (a.hash, a.version)),
                    pending_proposal: Proposals::<T>::get(id).map(|p| p.hash),
                })
            })
            .collect()
    }
}
