//! Storage deposits: everything a farm owner adds to the grid's storage (the farm, its pool
//! addresses, node authorizations and the nodes they turn into) holds a deposit on the farm
//! owner's account, returned when the item goes. A node's deposit is paid by the farm owner
//! when authorizing it, so a new node needs no funds to join.
//!
//! Each held amount is recorded in [`Deposits`] with its depositor, so a later change of the
//! deposit constants, or an item from before deposits existed (nothing recorded, nothing
//! returned), never releases more than was held for that item.

use super::*;
use frame_support::traits::{fungible::MutateHold, tokens::Precision};

impl<T: Config> Pallet<T> {
    /// Holds `amount` from `depositor` for `item`.
    pub(crate) fn hold_deposit(
        item: DepositItem<T::AccountId>,
        depositor: &T::AccountId,
        amount: BalanceOf<T>,
    ) -> DispatchResult {
        T::Currency::hold(&Self::hold_reason(&item), depositor, amount)
            .map_err(|_| Error::<T>::InsufficientBalanceForDeposit)?;
        Deposits::<T>::insert(
            item,
            HeldDeposit {
                depositor: depositor.clone(),
                amount,
            },
        );
        Ok(())
    }

    /// Returns the deposit held for `item`, if any, to its depositor.
    pub(crate) fn release_deposit(item: DepositItem<T::AccountId>) {
        let Some(deposit) = Deposits::<T>::take(&item) else {
            return;
        };
        // Best effort: holds are only ever reduced by this pallet, so the whole amount is
        // there; should it not be, what is left is returned rather than failing a removal.
        let _ = T::Currency::release(
            &Self::hold_reason(&item),
            &deposit.depositor,
            deposit.amount,
            Precision::BestEffort,
        );
    }

    /// Moves the deposit record of `from` to `to` (same depositor, same hold reason): an
    /// authorization's deposit becomes its node's.
    pub(crate) fn move_deposit(from: DepositItem<T::AccountId>, to: DepositItem<T::AccountId>) {
        if let Some(deposit) = Deposits::<T>::take(&from) {
            Deposits::<T>::insert(to, deposit);
        }
    }

    fn hold_reason(item: &DepositItem<T::AccountId>) -> T::RuntimeHoldReason {
        Self::reason_of(item).into()
    }

    fn reason_of(item: &DepositItem<T::AccountId>) -> HoldReason {
        match item {
            DepositItem::Farm(_) => HoldReason::FarmDeposit,
            DepositItem::FarmIp(_) => HoldReason::FarmIpDeposit,
            DepositItem::NodeAuthorization(..) | DepositItem::Node(_) => HoldReason::NodeDeposit,
        }
    }

    /// Every recorded deposit belongs to an existing item and, summed per depositor and
    /// reason, is at most what is held (items from before deposits hold nothing).
    #[cfg(any(feature = "try-runtime", feature = "std"))]
    pub(crate) fn deposits_try_state() -> Result<(), sp_runtime::TryRuntimeError> {
        use frame_support::traits::fungible::InspectHold;
        let mut sums: Vec<(T::AccountId, HoldReason, BalanceOf<T>)> = Vec::new();
        for (item, deposit) in Deposits::<T>::iter() {
            let exists = match &item {
                DepositItem::Farm(farm) => Farms::<T>::contains_key(farm),
                DepositItem::FarmIp(ip) => {
                    matches!(IpOwner::<T>::get(ip), Some(IpHolder::Farm(_)))
                }
                DepositItem::NodeAuthorization(farm, account) => {
                    NodeAuthorizations::<T>::contains_key(farm, account)
                }
                DepositItem::Node(node) => Nodes::<T>::contains_key(node),
            };
            ensure!(exists, "a deposit outlived its item");
            let reason = Self::reason_of(&item);
            match sums
                .iter_mut()
                .find(|(who, r, _)| *who == deposit.depositor && *r == reason)
            {
                Some((_, _, sum)) => {
                    *sum = sp_runtime::Saturating::saturating_add(*sum, deposit.amount)
                }
                None => sums.push((deposit.depositor, reason, deposit.amount)),
            }
        }
        for (depositor, reason, sum) in sums {
            ensure!(
                T::Currency::balance_on_hold(&reason.into(), &depositor) >= sum,
                "recorded deposits exceed the amount held"
            );
        }
        Ok(())
    }
}

/// Storage cost of holding, releasing or moving `n` deposits (the depositor's account and
/// holds, the record), added to the call weights: the benchmarked weights predate deposits.
/// Node removals add one write more for the IPv6 index.
pub(crate) fn deposits_weight<T: Config>(n: u32) -> frame_support::weights::Weight {
    T::DbWeight::get().reads_writes(3u64.saturating_mul(n.into()), 3u64.saturating_mul(n.into()))
}
