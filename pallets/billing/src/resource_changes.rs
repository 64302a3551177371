//! Resource changes inside a window: an approved update changes what a contract holds at once
//! (its capacity is reserved, or released, on the node in that block), while the node reports
//! the window later. Billing keeps what the contract held before each change
//! ([`ResourceChanges`]) and charges a window spanning changes piece by piece: each span at
//! the resources held during it, with the window's uptime shared in proportion to the spans'
//! lengths (the report carries no finer uptime). Traffic does not depend on resources and is
//! charged once.

use super::*;
use zos_primitives::{contracts::OnResourcesChanged, spec::RequiredResources};

impl<T: Config> Pallet<T> {
    /// What `report` costs for a contract holding `current` now, with the resource changes
    /// recorded inside its window taken into account.
    pub(crate) fn charge_window(
        policy: &PricingPolicy<BalanceOf<T>>,
        current: &RequiredResources,
        report: &ConsumptionReport,
    ) -> BalanceOf<T> {
        let changes = ResourceChanges::<T>::get(report.contract).unwrap_or_default();
        let (start, end) = (report.window_start, report.window_end);
        if changes.iter().all(|c| c.at <= start) || end <= start {
            return policy.charge(current, report);
        }
        // What was held at second `t`: the `before` of the first change after it, else now.
        let held_at = |t: u64| {
            changes
                .iter()
                .find(|c| c.at > t)
                .map(|c| c.before)
                .unwrap_or(*current)
        };
        let length = u128::from(end - start);
        let uptime = u128::from(report.uptime_seconds);
        // Uptime up to `t`, rounded down; differences of it add up to the whole uptime.
        let uptime_until = |t: u64| -> u64 {
            let share = uptime.saturating_mul(u128::from(t - start)) / length;
            u64::try_from(share).unwrap_or(u64::MAX)
        };
        let mut bounds: Vec<u64> = changes
            .iter()
            .map(|c| c.at)
            .filter(|at| *at > start && *at < end)
            .collect();
        bounds.push(end);
        let mut charge = policy.charge(
            &RequiredResources::default(),
            &ConsumptionReport {
                uptime_seconds: 0,
                ..report.clone()
            },
        );
        let mut from = start;
        for to in bounds {
            let span = ConsumptionReport {
                uptime_seconds: uptime_until(to).saturating_sub(uptime_until(from)),
                public_bytes_in: 0,
                public_bytes_out: 0,
                ..report.clone()
            };
            charge = charge.saturating_add(policy.charge(&held_at(from), &span));
            from = to;
        }
        charge
    }

    /// Drops the changes no window after `billed_until` can span.
    pub(crate) fn forget_changes_until(contract: ContractId, billed_until: u64) {
        ResourceChanges::<T>::mutate_exists(contract, |changes| {
            if let Some(list) = changes.as_mut() {
                list.retain(|c| c.at > billed_until);
                if list.is_empty() {
                    *changes = None;
                }
            }
        });
    }

    /// Changes are in strictly increasing time, after the last accepted window, and only for
    /// contracts billing knows.
    #[cfg(any(feature = "try-runtime", test))]
    pub(crate) fn resource_changes_try_state() -> Result<(), sp_runtime::TryRuntimeError> {
        use frame_support::ensure;
        for (contract, changes) in ResourceChanges::<T>::iter() {
            ensure!(!changes.is_empty(), "an empty resource change list is kept");
            ensure!(
                changes.windows(2).all(|w| w[0].at < w[1].at),
                "resource changes out of order"
            );
            ensure!(
                Self::payer(contract).is_some(),
                "resource changes of a contract billing does not know"
            );
            if let Some(billing) = ContractBillings::<T>::get(contract) {
                ensure!(
                    changes.iter().all(|c| c.at > billing.billed_until()),
                    "a resource change before the last accepted window's end is kept"
                );
            }
        }
        Ok(())
    }
}

impl<T: Config> OnResourcesChanged for Pallet<T> {
    fn on_resources_changed(contract: ContractId, previous: &RequiredResources) {
        let at = Self::now_ms() / 1000;
        // A window may end a little in the future (clock drift): a change at or before the
        // billed end comes before every window still to report, which pay the new resources.
        if ContractBillings::<T>::get(contract).is_some_and(|b| at <= b.billed_until()) {
            return;
        }
        ResourceChanges::<T>::mutate(contract, |entry| {
            let list = entry.get_or_insert_with(Default::default);
            match list.last() {
                // Several changes in one second: what the contract held before the first is
                // what it held over the span that ends at this second.
                Some(last) if last.at >= at => return,
                _ => {}
            }
            let change = ResourceChange {
                at,
                before: *previous,
            };
            if list.try_push(change).is_err() {
                // Full: merge the two oldest spans at the larger of their resources.
                let oldest = list.remove(0);
                if let Some(next) = list.get_mut(0) {
                    next.before = larger(&oldest.before, &next.before);
                }
                // Room was just made.
                let _ = list.try_push(change);
            }
        });
    }
}

/// Component-wise maximum.
fn larger(a: &RequiredResources, b: &RequiredResources) -> RequiredResources {
    RequiredResources {
        resources: zos_primitives::Resources::new(
            a.resources.cru.max(b.resources.cru),
            a.resources.mru.max(b.resources.mru),
            a.resources.sru.max(b.resources.sru),
            a.resources.hru.max(b.resources.hru),
        ),
        public_ipv4: a.public_ipv4.max(b.public_ipv4),
        gateway_hosts: a.gateway_hosts.max(b.gateway_hosts),
    }
}
