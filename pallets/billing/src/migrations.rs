//! Storage migrations. Each is versioned (`VersionedMigration`), so it runs once, from the
//! version it expects, and the try-runtime checks of each run in the test suite.

use super::*;
use frame_support::{
    migrations::VersionedMigration,
    traits::{PalletInfoAccess, UncheckedOnRuntimeUpgrade},
};

/// Version 1 to 2: grace expiry moves from the `on_idle` sweep to the deadline queue. Removes
/// the sweep's cursor and queues an expiry deadline for every contract in grace, oldest grace
/// period first, so the queue stays in due order. Repairs what version 1 could leave behind: a
/// contract in grace here but not in the contracts pallet (an update approved during grace
/// ended it there) is put back in grace, and the billing state of a contract that no longer
/// exists is closed.
pub type V1ToV2<T> =
    VersionedMigration<1, 2, InnerV1ToV2<T>, Pallet<T>, <T as frame_system::Config>::DbWeight>;

/// The unversioned body of [`V1ToV2`]; use [`V1ToV2`].
pub struct InnerV1ToV2<T>(core::marker::PhantomData<T>);

impl<T: Config> UncheckedOnRuntimeUpgrade for InnerV1ToV2<T> {
    fn on_runtime_upgrade() -> Weight {
        let cursor = frame_support::storage::storage_prefix(
            <Pallet<T> as PalletInfoAccess>::name().as_bytes(),
            b"GraceCursor",
        );
        frame_support::storage::unhashed::kill(&cursor);
        let mut in_grace: Vec<(ContractId, BlockNumberFor<T>)> = GraceSince::<T>::iter().collect();
        in_grace.sort_by_key(|(contract, since)| (*since, *contract));
        let grace = T::GracePeriodBlocks::get();
        let mut closed = 0u64;
        for (contract, since) in &in_grace {
            if T::Contracts::contract_billing_info(*contract).is_none() {
                Pallet::<T>::close(*contract);
                closed = closed.saturating_add(1);
                continue;
            }
            if let Err(e) = T::Contracts::set_grace_period(*contract, true) {
                log::error!(target: LOG_TARGET, "contract {contract}: restoring grace failed: {e:?}");
            }
            Pallet::<T>::push_deadline(
                DeadlineKind::GraceExpiry,
                Deadline {
                    due: since.saturating_add(grace),
                    contract: *contract,
                    queued_at: *since,
                },
            );
        }
        let count = u64::try_from(in_grace.len()).unwrap_or(u64::MAX);
        // Per contract: its grace entry and its contract read, the contract and a deadline
        // written (or, for a closed one, its three billing entries removed).
        T::DbWeight::get().reads_writes(
            count.saturating_mul(2).saturating_add(1),
            count
                .saturating_mul(3)
                .saturating_add(closed)
                .saturating_add(2),
        )
    }

    #[cfg(feature = "try-runtime")]
    fn pre_upgrade() -> Result<Vec<u8>, sp_runtime::TryRuntimeError> {
        use codec::Encode;
        Ok((GraceSince::<T>::iter().count() as u64).encode())
    }

    #[cfg(feature = "try-runtime")]
    fn post_upgrade(state: Vec<u8>) -> Result<(), sp_runtime::TryRuntimeError> {
        use codec::Decode;
        let in_grace = u64::decode(&mut &state[..])
            .map_err(|_| sp_runtime::TryRuntimeError::Other("pre-upgrade state"))?;
        let (head, tail) = DeadlineQueueEnds::<T>::get(DeadlineKind::GraceExpiry);
        let still_in_grace = GraceSince::<T>::iter().count() as u64;
        frame_support::ensure!(
            still_in_grace <= in_grace && tail.saturating_sub(head) >= still_in_grace,
            "a contract in grace lost its expiry"
        );
        Pallet::<T>::do_try_state()
    }
}

/// A version 2 pricing policy: no price for gateway hosts.
#[derive(codec::Encode, codec::Decode)]
pub struct PricingPolicyV2<Balance> {
    pub cu_hour: Balance,
    pub su_hour: Balance,
    pub ipv4_hour: Balance,
    pub traffic_gib: Balance,
    pub farm_owner_share: sp_runtime::Perbill,
    pub treasury_share: sp_runtime::Perbill,
    pub burn_share: sp_runtime::Perbill,
}

#[derive(codec::Encode, codec::Decode)]
pub struct ResourceChangeV2 {
    pub at: u64,
    pub before: zos_primitives::spec::RequiredResourcesBeforeGateways,
}

#[derive(codec::Encode, codec::Decode)]
pub struct EndedContractV2<AccountId, BlockNumber> {
    pub owner: AccountId,
    pub node: NodeId,
    pub required: zos_primitives::spec::RequiredResourcesBeforeGateways,
    pub activated_at: BlockNumber,
    pub ended_at: u64,
}

/// Version 2 to 3: gateway workloads. Pricing policies gain a price per gateway host-hour,
/// 0 (free) until the council sets one; the stored required resources (resource changes,
/// ended contracts) gain a gateway host count of 0 (no contract could have had a gateway).
pub type V2ToV3<T> =
    VersionedMigration<2, 3, InnerV2ToV3<T>, Pallet<T>, <T as frame_system::Config>::DbWeight>;

/// The unversioned body of [`V2ToV3`]; use [`V2ToV3`].
pub struct InnerV2ToV3<T>(core::marker::PhantomData<T>);

impl<T: Config> UncheckedOnRuntimeUpgrade for InnerV2ToV3<T> {
    fn on_runtime_upgrade() -> Weight {
        let mut count = 0u64;
        PricingPolicies::<T>::translate::<PricingPolicyV2<BalanceOf<T>>, _>(|_, old| {
            count = count.saturating_add(1);
            Some(PricingPolicy {
                cu_hour: old.cu_hour,
                su_hour: old.su_hour,
                ipv4_hour: old.ipv4_hour,
                traffic_gib: old.traffic_gib,
                gateway_host_hour: Zero::zero(),
                farm_owner_share: old.farm_owner_share,
                treasury_share: old.treasury_share,
                burn_share: old.burn_share,
            })
        });
        ResourceChanges::<T>::translate::<Vec<ResourceChangeV2>, _>(|_, old| {
            count = count.saturating_add(1);
            let changes: Vec<ResourceChange> = old
                .into_iter()
                .map(|c| ResourceChange {
                    at: c.at,
                    before: c.before.into(),
                })
                .collect();
            // As many as before, which fitted the same bound.
            Some(frame_support::BoundedVec::truncate_from(changes))
        });
        EndedContracts::<T>::translate::<EndedContractV2<T::AccountId, BlockNumberFor<T>>, _>(
            |_, old| {
                count = count.saturating_add(1);
                Some(EndedContract {
                    owner: old.owner,
                    node: old.node,
                    required: old.required.into(),
                    activated_at: old.activated_at,
                    ended_at: old.ended_at,
                })
            },
        );
        T::DbWeight::get().reads_writes(count.saturating_add(1), count.saturating_add(1))
    }

    #[cfg(feature = "try-runtime")]
    fn pre_upgrade() -> Result<Vec<u8>, sp_runtime::TryRuntimeError> {
        use codec::Encode;
        let counts = (
            PricingPolicies::<T>::iter_keys().count() as u64,
            ResourceChanges::<T>::iter_keys().count() as u64,
            EndedContracts::<T>::iter_keys().count() as u64,
        );
        Ok(counts.encode())
    }

    #[cfg(feature = "try-runtime")]
    fn post_upgrade(state: Vec<u8>) -> Result<(), sp_runtime::TryRuntimeError> {
        use codec::Decode;
        let before = <(u64, u64, u64)>::decode(&mut &state[..])
            .map_err(|_| sp_runtime::TryRuntimeError::Other("pre-upgrade state"))?;
        // `iter` decodes every entry: one left in the old layout would be skipped here.
        let after = (
            PricingPolicies::<T>::iter().count() as u64,
            ResourceChanges::<T>::iter().count() as u64,
            EndedContracts::<T>::iter().count() as u64,
        );
        frame_support::ensure!(after == before, "an entry was lost or left undecodable");
        Pallet::<T>::do_try_state()
    }
}
