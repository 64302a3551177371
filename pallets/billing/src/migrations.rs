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
