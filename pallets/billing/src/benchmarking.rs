//! Benchmarks at the worst case of each path.
//!
//! `report_consumption`: every report of the batch belongs to a different owner's contract in
//! grace with a debt; the report charges for a full window, so settlement collects the debt and
//! the charge, pays the farm owner and the treasury, burns, and takes the contract out of grace.
//!
//! `grace_expiry`: `on_initialize` finds one contract whose grace ran out and cancels it.
//!
//! `final_report_deadline`: `on_initialize` finds an ended contract whose node did not report
//! the final window, charges it at the last window's uptime (with a traffic-free but full
//! price: every resource kind and an IPv4), pays out and closes the billing state.

use super::*;
use crate::Pallet as Billing;
use frame_benchmarking::v2::*;
use frame_support::traits::{fungible::Mutate, EnsureOrigin, Hooks};
use frame_support::BoundedVec;
use frame_system::RawOrigin;
use zos_primitives::{spec::RequiredResources, Resources, GIB};

/// Any plausible chain time, far from zero.
const START_MS: u64 = 1_700_000_000_000;
const START: u64 = START_MS / 1000;
const WINDOW: u64 = 60;

/// A machine with every kind of resource and a public IP, so every price term is computed.
fn required() -> RequiredResources {
    RequiredResources {
        resources: Resources::new(4, 8 * GIB, 200 * GIB, 1_000 * GIB),
        public_ipv4: 1,
        gateway_hosts: 1,
    }
}

fn policy<T: Config>() -> PricingPolicy<BalanceOf<T>> {
    dev_pricing_policy().map_prices(BalanceOf::<T>::unique_saturated_from)
}

/// An account holding far more than any charge here (10^6 units of 12 decimals).
fn funded<T: Config>(name: &'static str, index: u32) -> T::AccountId {
    let who: T::AccountId = account(name, index, 0);
    let amount = BalanceOf::<T>::unique_saturated_from(1_000_000_000_000_000_000u128)
        .saturating_add(T::Currency::minimum_balance());
    T::Currency::set_balance(&who, amount);
    who
}

/// A node (and its farm) billed under policy 0, whose farm owner and the treasury exist.
fn node<T: Config>() -> (T::AccountId, NodeId) {
    PricingPolicies::<T>::insert(0, policy::<T>());
    let farm_owner = funded::<T>("farmer", 0);
    let node_account: T::AccountId = account("node", 0, 0);
    T::Currency::set_balance(&T::TreasuryAccount::get(), T::Currency::minimum_balance());
    let node = T::BenchmarkHelper::create_node(&farm_owner, &node_account, 0);
    (node_account, node)
}

/// A contract billed until `START` with `debt` owed, in grace since the current block.
fn contract_in_grace<T: Config>(
    owner: &T::AccountId,
    node: NodeId,
    debt: BalanceOf<T>,
) -> ContractId {
    let contract = T::BenchmarkHelper::create_contract(owner, node, &required());
    let last_report = ConsumptionReport {
        contract,
        window_start: START - WINDOW,
        window_end: START,
        uptime_seconds: 0,
        public_bytes_in: 0,
        public_bytes_out: 0,
    };
    ContractBillings::<T>::insert(
        contract,
        ContractBilling {
            node,
            last_report,
            debt,
        },
    );
    GraceSince::<T>::insert(contract, frame_system::Pallet::<T>::block_number());
    Billing::<T>::queue_deadline(
        DeadlineKind::GraceExpiry,
        contract,
        T::GracePeriodBlocks::get(),
    );
    LedgerTotals::<T>::mutate(|t| {
        t.charged = t.charged.saturating_add(debt);
        t.debt = t.debt.saturating_add(debt);
    });
    let _ = T::Contracts::set_grace_period(contract, true);
    contract
}

#[benchmarks]
mod benchmarks {
    use super::*;

    #[benchmark]
    fn set_pricing_policy() -> Result<(), BenchmarkError> {
        let origin =
            T::GovernanceOrigin::try_successful_origin().map_err(|_| BenchmarkError::Weightless)?;
        let policy = policy::<T>();

        #[extrinsic_call]
        _(origin as T::RuntimeOrigin, 7, policy.clone());

        assert_eq!(PricingPolicies::<T>::get(7), Some(policy));
        Ok(())
    }

    #[benchmark]
    fn report_consumption(
        n: Linear<1, { T::MaxReportsPerBatch::get() }>,
    ) -> Result<(), BenchmarkError> {
        T::BenchmarkHelper::set_time_ms(START_MS);
        let (node_account, node) = node::<T>();
        let debt = BalanceOf::<T>::unique_saturated_from(1_000_000u128);
        let mut reports = Vec::new();
        for i in 0..n {
            let owner = funded::<T>("owner", i);
            let contract = contract_in_grace::<T>(&owner, node, debt);
            // The most resource changes inside the window: the most spans to price.
            let changes: Vec<ResourceChange> = (0..MAX_RESOURCE_CHANGES)
                .map(|k| ResourceChange {
                    at: START + 1 + u64::from(k),
                    before: Default::default(),
                })
                .collect();
            ResourceChanges::<T>::insert(
                contract,
                BoundedVec::try_from(changes).map_err(|_| BenchmarkError::Weightless)?,
            );
            reports.push(ConsumptionReport {
                contract,
                window_start: START,
                window_end: START + WINDOW,
                uptime_seconds: WINDOW,
                public_bytes_in: GIB,
                public_bytes_out: GIB,
            });
        }
        T::BenchmarkHelper::set_time_ms(START_MS + WINDOW * 1000);
        let reports = BoundedVec::try_from(reports).map_err(|_| BenchmarkError::Weightless)?;
        let first = reports.first().map(|r| r.contract);

        #[extrinsic_call]
        _(RawOrigin::Signed(node_account), reports);

        if let Some(contract) = first {
            let billing =
                ContractBillings::<T>::get(contract).ok_or(BenchmarkError::Stop("not billed"))?;
            assert_eq!(billing.billed_until(), START + WINDOW);
            assert!(billing.debt.is_zero());
            assert!(!GraceSince::<T>::contains_key(contract));
            assert!(!ResourceChanges::<T>::contains_key(contract));
        }
        Ok(())
    }

    #[benchmark]
    fn grace_expiry() -> Result<(), BenchmarkError> {
        T::BenchmarkHelper::set_time_ms(START_MS);
        let (_, node) = node::<T>();
        let owner = funded::<T>("owner", 0);
        let contract = contract_in_grace::<T>(
            &owner,
            node,
            BalanceOf::<T>::unique_saturated_from(1_000u128),
        );
        let now =
            frame_system::Pallet::<T>::block_number().saturating_add(T::GracePeriodBlocks::get());
        frame_system::Pallet::<T>::set_block_number(now);

        #[block]
        {
            Billing::<T>::on_initialize(now);
        }

        assert!(!GraceSince::<T>::contains_key(contract));
        assert!(ContractBillings::<T>::get(contract).is_none());
        Ok(())
    }

    #[benchmark]
    fn final_report_deadline() -> Result<(), BenchmarkError> {
        T::BenchmarkHelper::set_time_ms(START_MS);
        let (_, node) = node::<T>();
        let owner = funded::<T>("owner", 0);
        let contract = T::BenchmarkHelper::create_contract(&owner, node, &required());
        ContractBillings::<T>::insert(
            contract,
            ContractBilling {
                node,
                last_report: ConsumptionReport {
                    contract,
                    window_start: START - WINDOW,
                    window_end: START,
                    uptime_seconds: WINDOW,
                    public_bytes_in: 0,
                    public_bytes_out: 0,
                },
                debt: Zero::zero(),
            },
        );
        EndedContracts::<T>::insert(
            contract,
            EndedContract {
                owner,
                node,
                required: required(),
                activated_at: frame_system::Pallet::<T>::block_number(),
                ended_at: START + WINDOW / 2,
            },
        );
        Billing::<T>::queue_deadline(
            DeadlineKind::FinalReport,
            contract,
            T::FinalReportBlocks::get(),
        );
        let now =
            frame_system::Pallet::<T>::block_number().saturating_add(T::FinalReportBlocks::get());
        frame_system::Pallet::<T>::set_block_number(now);

        #[block]
        {
            Billing::<T>::on_initialize(now);
        }

        assert!(EndedContracts::<T>::get(contract).is_none());
        assert!(ContractBillings::<T>::get(contract).is_none());
        assert!(!LedgerTotals::<T>::get().collected.is_zero());
        Ok(())
    }

    impl_benchmark_test_suite!(Billing, crate::mock::new_test_ext(), crate::mock::Test);
}
