//! Benchmarks of the deployments pallet, each at its worst case: the largest valid spec
//! (`worst_case::spec`), `MaxSigners` signers, every public IPv4 address of the spec assigned,
//! and for `create` and the propose calls a full expiry-slot search plus immediate execution.

use super::*;
use alloc::{boxed::Box, vec::Vec};
use frame_benchmarking::v2::*;
use frame_support::traits::{
    fungible::{Inspect, Mutate},
    Hooks,
};
use frame_system::RawOrigin;
use zos_primitives::{contracts::FailureText, spec::MAX_PUBLIC_IPV4, GIB, TIB};

fn node<T: Config>() -> (NodeId, T::AccountId) {
    T::BenchmarkHelper::online_node(
        Resources::new(1024, 1024 * GIB, 64 * TIB, 0),
        MAX_PUBLIC_IPV4,
    )
}

/// An account able to pay the deposits of `contracts` worst-case contracts.
fn funded<T: Config>(name: &'static str, index: u32, contracts: u32) -> T::AccountId {
    let who: T::AccountId = account(name, index, 0);
    let per_contract = Pallet::<T>::deposit_for(&worst_case::spec(0), true)
        .unwrap_or_default()
        .saturating_mul(2u32.into());
    let amount = per_contract
        .saturating_mul(contracts.saturating_add(1).into())
        .saturating_add(T::Currency::minimum_balance());
    T::Currency::set_balance(&who, amount);
    who
}

/// `MaxSigners` signers of weight 1 with `owner` first; the last one `required` if asked.
fn signer_set<T: Config>(owner: &T::AccountId, last_required: bool) -> SignersOf<T> {
    let n = T::MaxSigners::get().max(1);
    let mut list: Vec<Signer<T::AccountId>> = alloc::vec![Signer {
        account: owner.clone(),
        weight: 1,
        required: false
    }];
    for i in 1..n {
        list.push(Signer {
            account: funded::<T>("signer", i, 1),
            weight: 1,
            required: last_required && i + 1 == n,
        });
    }
    BoundedVec::truncate_from(list)
}

/// An activated 1-of-1 contract (with `MaxSigners` signers) running the worst-case spec.
fn active_contract<T: Config>(owner: &T::AccountId, node: NodeId) -> ContractId {
    let id = NextContractId::<T>::get();
    let signers = signer_set::<T>(owner, false);
    let result = Pallet::<T>::create(
        RawOrigin::Signed(owner.clone()).into(),
        node,
        Box::new(worst_case::spec(0)),
        signers,
        1,
    );
    assert!(result.is_ok(), "worst-case contract created");
    id
}

#[benchmarks]
mod benchmarks {
    use super::*;

    #[benchmark]
    fn create() {
        let (node, _) = node::<T>();
        let owner = funded::<T>("owner", 0, 1);
        let signers = signer_set::<T>(&owner, false);
        let id = NextContractId::<T>::get();

        #[extrinsic_call]
        _(
            RawOrigin::Signed(owner),
            node,
            Box::new(worst_case::spec(0)),
            signers,
            1,
        );

        assert!(Contracts::<T>::get(id).and_then(|c| c.active).is_some());
    }

    #[benchmark]
    fn approve() {
        let (node, _) = node::<T>();
        let owner = funded::<T>("owner", 0, 1);
        let signers = signer_set::<T>(&owner, false);
        let n = signers.len() as u32;
        let spec = worst_case::spec(0);
        let hash = spec.hash();
        let id = NextContractId::<T>::get();
        assert!(Pallet::<T>::create(
            RawOrigin::Signed(owner).into(),
            node,
            Box::new(spec),
            signers.clone(),
            n,
        )
        .is_ok());
        // Everyone but the last approves beforehand; the last approval activates.
        let last = signers
            .last()
            .map(|s| s.account.clone())
            .unwrap_or_else(|| account("none", 0, 0));
        for s in signers.iter().skip(1).take(signers.len().saturating_sub(2)) {
            assert!(
                Pallet::<T>::approve(RawOrigin::Signed(s.account.clone()).into(), id, hash).is_ok()
            );
        }

        #[extrinsic_call]
        _(RawOrigin::Signed(last), id, hash);

        assert!(Contracts::<T>::get(id).and_then(|c| c.active).is_some());
    }

    #[benchmark]
    fn reject() {
        let (node, _) = node::<T>();
        let owner = funded::<T>("owner", 0, 1);
        let signers = signer_set::<T>(&owner, true);
        let spec = worst_case::spec(0);
        let hash = spec.hash();
        let id = NextContractId::<T>::get();
        let n = signers.len() as u32;
        assert!(Pallet::<T>::create(
            RawOrigin::Signed(owner).into(),
            node,
            Box::new(spec),
            signers.clone(),
            n
        )
        .is_ok());
        let vetoer = signers
            .last()
            .map(|s| s.account.clone())
            .unwrap_or_else(|| account("none", 0, 0));

        #[extrinsic_call]
        _(RawOrigin::Signed(vetoer), id, hash);

        assert!(!Contracts::<T>::contains_key(id));
    }

    #[benchmark]
    fn propose_update() {
        let (node, _) = node::<T>();
        let owner = funded::<T>("owner", 0, 2);
        let id = active_contract::<T>(&owner, node);

        #[extrinsic_call]
        _(RawOrigin::Signed(owner), id, Box::new(worst_case::spec(1)));

        assert_eq!(
            Contracts::<T>::get(id)
                .and_then(|c| c.active)
                .map(|a| a.version),
            Some(1)
        );
    }

    #[benchmark]
    fn propose_cancel() {
        let (node, _) = node::<T>();
        let owner = funded::<T>("owner", 0, 1);
        let id = active_contract::<T>(&owner, node);

        #[extrinsic_call]
        _(RawOrigin::Signed(owner), id);

        assert!(!Contracts::<T>::contains_key(id));
    }

    #[benchmark]
    fn report_deployment() {
        let (node, node_account) = node::<T>();
        let owner = funded::<T>("owner", 0, 1);
        let id = active_contract::<T>(&owner, node);
        let spec = worst_case::spec(0);
        let reason = FailureText::truncate_from(alloc::vec![b'x'; 256]);
        let reports: Vec<WorkloadReport> = spec
            .workloads
            .iter()
            .map(|w| WorkloadReport {
                name: w.name.clone(),
                result: WorkloadResult::Error(reason.clone()),
            })
            .collect();

        #[extrinsic_call]
        _(
            RawOrigin::Signed(node_account),
            id,
            0,
            BoundedVec::truncate_from(reports),
        );

        assert!(Reports::<T>::contains_key(id));
    }

    /// `n` creation proposals expire in one block, each ending its contract.
    #[benchmark]
    fn expire_proposals(n: Linear<0, { T::MaxExpiriesPerBlock::get() }>) {
        let (node, _) = node::<T>();
        let owner = funded::<T>("owner", 0, n);
        let signers = signer_set::<T>(&owner, false);
        let threshold = signers.len() as u32;
        for _ in 0..n {
            assert!(Pallet::<T>::create(
                RawOrigin::Signed(owner.clone()).into(),
                node,
                Box::new(worst_case::spec(0)),
                signers.clone(),
                threshold,
            )
            .is_ok());
        }
        let at = frame_system::Pallet::<T>::block_number().saturating_add(T::ProposalTtl::get());
        frame_system::Pallet::<T>::set_block_number(at);

        #[block]
        {
            Pallet::<T>::on_initialize(at);
        }

        assert_eq!(Proposals::<T>::iter().count(), 0);
    }

    impl_benchmark_test_suite!(Pallet, crate::mock::new_test_ext(), crate::mock::Test);
}
