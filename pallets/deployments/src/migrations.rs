//! Storage migrations. Each is versioned (`VersionedMigration`), so it runs once, from the
//! version it expects, and the try-runtime checks of each run in the test suite.

use super::*;
use codec::{Decode, Encode};
use frame_support::{
    migrations::VersionedMigration, pallet_prelude::ValueQuery, storage_alias,
    traits::UncheckedOnRuntimeUpgrade, weights::Weight, Twox64Concat,
};
pub use zos_primitives::spec::v3::{DeploymentSpecV3, VmSpecV3, WorkloadKindV3, WorkloadV3};

/// Version 1's per-block expiry slots.
#[storage_alias]
pub type ProposalExpiries<T: Config> = StorageMap<
    Pallet<T>,
    Twox64Concat,
    BlockNumberFor<T>,
    BoundedVec<ContractId, <T as Config>::MaxExpiriesPerBlock>,
    ValueQuery,
>;

/// Version 1 to 2: the per-block expiry slots become one FIFO queue. Every slot's contracts
/// are queued in block order and the slots removed. Version 1 could put an expiry up to 7
/// blocks past the TTL (when the slots before were full); such proposals expire at the TTL from
/// the upgrade block instead, so that the queue stays in due order behind proposals made after
/// the upgrade.
pub type V1ToV2<T> =
    VersionedMigration<1, 2, InnerV1ToV2<T>, Pallet<T>, <T as frame_system::Config>::DbWeight>;

/// The unversioned body of [`V1ToV2`]; use [`V1ToV2`].
pub struct InnerV1ToV2<T>(core::marker::PhantomData<T>);

impl<T: Config> UncheckedOnRuntimeUpgrade for InnerV1ToV2<T> {
    fn on_runtime_upgrade() -> Weight {
        let mut slots: Vec<(
            BlockNumberFor<T>,
            BoundedVec<ContractId, T::MaxExpiriesPerBlock>,
        )> = ProposalExpiries::<T>::drain().collect();
        slots.sort_by_key(|(at, _)| *at);
        let latest =
            frame_system::Pallet::<T>::block_number().saturating_add(T::ProposalTtl::get());
        let (mut moved, mut moved_earlier) = (0u64, 0u64);
        for (at, contracts) in slots.iter() {
            let due = (*at).min(latest);
            for contract in contracts.iter() {
                if due != *at {
                    Proposals::<T>::mutate(contract, |proposal| {
                        if let Some(p) = proposal.as_mut().filter(|p| p.expires_at == *at) {
                            p.expires_at = due;
                            moved_earlier = moved_earlier.saturating_add(1);
                        }
                    });
                }
                Pallet::<T>::push_expiry(due, *contract);
                moved = moved.saturating_add(1);
            }
        }
        let slots = u64::try_from(slots.len()).unwrap_or(u64::MAX);
        T::DbWeight::get().reads_writes(
            slots.saturating_add(moved_earlier).saturating_add(1),
            slots
                .saturating_add(moved)
                .saturating_add(moved_earlier)
                .saturating_add(1),
        )
    }

    #[cfg(feature = "try-runtime")]
    fn pre_upgrade() -> Result<Vec<u8>, sp_runtime::TryRuntimeError> {
        use codec::Encode;
        let slotted: u64 = ProposalExpiries::<T>::iter_values()
            .map(|slot| slot.len() as u64)
            .sum();
        let (head, tail) = ExpiryQueueEnds::<T>::get();
        Ok((slotted, tail.saturating_sub(head)).encode())
    }

    #[cfg(feature = "try-runtime")]
    fn post_upgrade(state: Vec<u8>) -> Result<(), sp_runtime::TryRuntimeError> {
        use codec::Decode;
        let (slotted, queued_before) = <(u64, u64)>::decode(&mut &state[..])
            .map_err(|_| sp_runtime::TryRuntimeError::Other("pre-upgrade state"))?;
        frame_support::ensure!(
            ProposalExpiries::<T>::iter_keys().next().is_none(),
            "an expiry slot was left behind"
        );
        let (head, tail) = ExpiryQueueEnds::<T>::get();
        frame_support::ensure!(
            tail.saturating_sub(head) == queued_before.saturating_add(slotted),
            "an expiry was lost on the way into the queue"
        );
        Pallet::<T>::do_try_state()
    }
}

/// What version 2 stored per contract: [`Contract`] whose active spec info has no gateway host
/// count.
#[derive(Encode, Decode)]
pub struct ContractV2<AccountId, Signers, Balance, BlockNumber> {
    pub owner: AccountId,
    pub node: NodeId,
    pub signers: Signers,
    pub threshold: u32,
    pub state: ContractState,
    pub active: Option<ActiveSpecInfoV2>,
    pub public_ips: AssignedIps,
    pub deposit: Balance,
    pub created_at: BlockNumber,
    pub activated_at: Option<BlockNumber>,
}

#[derive(Encode, Decode)]
pub struct ActiveSpecInfoV2 {
    pub hash: SpecHash,
    pub version: u32,
    pub required: zos_primitives::spec::RequiredResourcesBeforeGateways,
}

/// Version 2 to 3: gateway workloads. A contract's required resources gain the count of
/// gateway hosts it serves: 0 for every existing contract (no spec could have a gateway).
pub type V2ToV3<T> =
    VersionedMigration<2, 3, InnerV2ToV3<T>, Pallet<T>, <T as frame_system::Config>::DbWeight>;

/// The unversioned body of [`V2ToV3`]; use [`V2ToV3`].
pub struct InnerV2ToV3<T>(core::marker::PhantomData<T>);

impl<T: Config> UncheckedOnRuntimeUpgrade for InnerV2ToV3<T> {
    fn on_runtime_upgrade() -> Weight {
        let mut count = 0u64;
        Contracts::<T>::translate::<
            ContractV2<T::AccountId, SignersOf<T>, BalanceOf<T>, BlockNumberFor<T>>,
            _,
        >(|_, old| {
            count = count.saturating_add(1);
            Some(Contract {
                owner: old.owner,
                node: old.node,
                signers: old.signers,
                threshold: old.threshold,
                state: old.state,
                active: old.active.map(|a| ActiveSpecInfo {
                    hash: a.hash,
                    version: a.version,
                    required: a.required.into(),
                }),
                public_ips: old.public_ips,
                deposit: old.deposit,
                created_at: old.created_at,
                activated_at: old.activated_at,
            })
        });
        T::DbWeight::get().reads_writes(count.saturating_add(1), count.saturating_add(1))
    }

    #[cfg(feature = "try-runtime")]
    fn pre_upgrade() -> Result<Vec<u8>, sp_runtime::TryRuntimeError> {
        use codec::Encode;
        Ok((Contracts::<T>::iter_keys().count() as u64).encode())
    }

    #[cfg(feature = "try-runtime")]
    fn post_upgrade(state: Vec<u8>) -> Result<(), sp_runtime::TryRuntimeError> {
        use codec::Decode;
        let before = u64::decode(&mut &state[..])
            .map_err(|_| sp_runtime::TryRuntimeError::Other("pre-upgrade state"))?;
        // `iter` decodes every entry: one left in the old layout would be skipped here.
        frame_support::ensure!(
            Contracts::<T>::iter().count() as u64 == before,
            "a contract was lost or left undecodable"
        );
        Pallet::<T>::do_try_state()
    }
}

/// What version 3 stored as a proposal's action: [`ProposalAction`] with the old spec layout.
#[derive(Encode, Decode)]
pub enum ProposalActionV3 {
    Deploy(DeploymentSpecV3),
    Cancel,
}

impl ProposalActionV3 {
    /// The same action in the current layout.
    pub fn upgrade(self) -> ProposalAction {
        match self {
            Self::Deploy(spec) => ProposalAction::Deploy(spec.upgrade()),
            Self::Cancel => ProposalAction::Cancel,
        }
    }
}

/// What version 3 stored as a proposal: [`Proposal`] with the old spec layout.
#[derive(Encode, Decode)]
pub struct ProposalV3<T: Config> {
    pub action: ProposalActionV3,
    pub hash: SpecHash,
    pub proposer: T::AccountId,
    pub approvals: BoundedVec<T::AccountId, T::MaxSigners>,
    pub expires_at: BlockNumberFor<T>,
    pub deposit: BalanceOf<T>,
}

impl<T: Config> ProposalV3<T> {
    /// The same proposal in the current layout. A deploy proposal is named by its spec's new
    /// hash; its approvals stand, since the spec means exactly what they approved. A cancel
    /// hash does not depend on any spec. The deposit is left to the migration.
    pub fn upgrade(self) -> Proposal<T> {
        let action = self.action.upgrade();
        let hash = match &action {
            ProposalAction::Deploy(spec) => spec.hash(),
            ProposalAction::Cancel => self.hash,
        };
        Proposal {
            action,
            hash,
            proposer: self.proposer,
            approvals: self.approvals,
            expires_at: self.expires_at,
            deposit: self.deposit,
        }
    }
}

/// Version 3 to 4: VMs gain an overlay card (`VmSpec::overlay`), off for every existing VM.
/// Every stored spec, active or proposed, is re-encoded, and what names a spec follows its new
/// hash: the contract's active hash and a deploy proposal's hash (its approvals are kept). Each
/// VM adds one byte to its spec, so the owner's deposit grows by that many bytes' worth, held
/// like any deposit; an owner who cannot pay it keeps the old deposit (logged, and reported by
/// try-state).
pub type V3ToV4<T> =
    VersionedMigration<3, 4, InnerV3ToV4<T>, Pallet<T>, <T as frame_system::Config>::DbWeight>;

/// The unversioned body of [`V3ToV4`]; use [`V3ToV4`].
pub struct InnerV3ToV4<T>(core::marker::PhantomData<T>);

/// Holds the deposit for `grown` more stored bytes from `contract`'s owner and adds it to the
/// contract's deposit. Returns what was held: zero if the owner cannot pay (or nothing is due).
fn top_up_deposit<T: Config>(
    id: ContractId,
    contract: &mut Contract<T>,
    grown: usize,
) -> BalanceOf<T> {
    let bytes: BalanceOf<T> = u32::try_from(grown).unwrap_or(u32::MAX).into();
    let Some(due) = T::DepositPerByte::get().checked_mul(&bytes) else {
        log::error!(target: "runtime::deployments", "contract {id}: deposit top-up overflows");
        return Zero::zero();
    };
    if due.is_zero() {
        return due;
    }
    match T::Currency::hold(&HoldReason::ContractDeposit.into(), &contract.owner, due) {
        Ok(()) => {
            contract.deposit = contract.deposit.saturating_add(due);
            due
        }
        Err(e) => {
            log::error!(target: "runtime::deployments", "contract {id}: deposit top-up failed: {e:?}");
            Zero::zero()
        }
    }
}

impl<T: Config> UncheckedOnRuntimeUpgrade for InnerV3ToV4<T> {
    fn on_runtime_upgrade() -> Weight {
        let (mut reads, mut writes) = (0u64, 0u64);
        ActiveSpecs::<T>::translate::<DeploymentSpecV3, _>(|id, old| {
            let old_len = old.encoded_size();
            let spec = old.upgrade();
            let grown = spec.encoded_size().saturating_sub(old_len);
            let hash = spec.hash();
            Contracts::<T>::mutate(id, |contract| {
                if let Some(contract) = contract.as_mut() {
                    if let Some(active) = contract.active.as_mut() {
                        active.hash = hash;
                    }
                    if grown > 0 {
                        top_up_deposit::<T>(id, contract, grown);
                        // A hold reads and writes the owner's account and holds.
                        reads = reads.saturating_add(2);
                        writes = writes.saturating_add(2);
                    }
                }
            });
            // The spec and its contract.
            reads = reads.saturating_add(2);
            writes = writes.saturating_add(2);
            Some(spec)
        });
        Proposals::<T>::translate::<ProposalV3<T>, _>(|id, old| {
            let old_len = old.action.encoded_size();
            let mut proposal = old.upgrade();
            let grown = proposal.action.encoded_size().saturating_sub(old_len);
            reads = reads.saturating_add(1);
            writes = writes.saturating_add(1);
            if grown > 0 {
                Contracts::<T>::mutate(id, |contract| {
                    if let Some(contract) = contract.as_mut() {
                        let held = top_up_deposit::<T>(id, contract, grown);
                        // An update's spec has its own part of the deposit; a creation
                        // proposal's spec is the contract's own, covered by its deposit alone.
                        if contract.active.is_some() {
                            proposal.deposit = proposal.deposit.saturating_add(held);
                        }
                    }
                });
                // The contract, and the hold.
                reads = reads.saturating_add(3);
                writes = writes.saturating_add(3);
            }
            Some(proposal)
        });
        T::DbWeight::get().reads_writes(reads, writes)
    }

    #[cfg(feature = "try-runtime")]
    fn pre_upgrade() -> Result<Vec<u8>, sp_runtime::TryRuntimeError> {
        use codec::Encode;
        let specs = ActiveSpecs::<T>::iter_keys().count() as u64;
        let proposals = Proposals::<T>::iter_keys().count() as u64;
        Ok((specs, proposals).encode())
    }

    #[cfg(feature = "try-runtime")]
    fn post_upgrade(state: Vec<u8>) -> Result<(), sp_runtime::TryRuntimeError> {
        use codec::Decode;
        let (specs, proposals) = <(u64, u64)>::decode(&mut &state[..])
            .map_err(|_| sp_runtime::TryRuntimeError::Other("pre-upgrade state"))?;
        // `iter` decodes every entry: one left in the old layout would be skipped here.
        frame_support::ensure!(
            ActiveSpecs::<T>::iter().count() as u64 == specs,
            "an active spec was lost or left undecodable"
        );
        frame_support::ensure!(
            Proposals::<T>::iter().count() as u64 == proposals,
            "a proposal was lost or left undecodable"
        );
        Pallet::<T>::do_try_state()
    }
}
