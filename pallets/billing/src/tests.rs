use crate::{mock::*, *};
use frame_support::{
    assert_noop, assert_ok,
    dispatch::{Pays, PostDispatchInfo},
    traits::{fungible::Mutate, Hooks},
    BoundedVec,
};
use sp_runtime::{DispatchError, Perbill};
use zos_primitives::{
    contracts::{CancelCause, ContractState},
    spec::RequiredResources,
    Resources, GIB,
};

/// 2 CPUs and 4 GiB (1 CU), 100 GiB SSD (0.5 SU), one public IPv4.
fn small_vm() -> RequiredResources {
    RequiredResources {
        resources: Resources::new(2, 4 * GIB, 100 * GIB, 0),
        public_ipv4: 1,
        gateway_hosts: 0,
    }
}

/// Price of `small_vm` for one hour under `test_policy`: CU 3600 + SU 180 + IPv4 7200.
const SMALL_VM_HOUR: Balance = 3_600 + 180 + 7_200;

fn report(contract: ContractId, start: u64, end: u64, uptime: u64) -> ConsumptionReport {
    ConsumptionReport {
        contract,
        window_start: start,
        window_end: end,
        uptime_seconds: uptime,
        public_bytes_in: 0,
        public_bytes_out: 0,
    }
}

fn submit(signer: AccountId, reports: Vec<ConsumptionReport>) -> PostDispatchInfo {
    let batch = BoundedVec::try_from(reports).expect("within the batch limit");
    Billing::report_consumption(RuntimeOrigin::signed(signer), batch).expect("a batch never fails")
}

fn billing_events() -> Vec<Event<Test>> {
    System::events()
        .into_iter()
        .filter_map(|r| match r.event {
            RuntimeEvent::Billing(e) => Some(e),
            _ => None,
        })
        .collect()
}

fn rejections() -> Vec<(ContractId, RejectReason)> {
    billing_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::ReportRejected { contract, reason } => Some((contract, reason)),
            _ => None,
        })
        .collect()
}

fn balance(who: AccountId) -> Balance {
    Balances::free_balance(who)
}

/// Moves funds from OWNER (minting would change the issuance the harness checks).
fn top_up(who: AccountId, amount: Balance) {
    assert_ok!(<Balances as Mutate<_>>::transfer(
        &OWNER,
        &who,
        amount,
        frame_support::traits::tokens::Preservation::Preserve
    ));
}

fn debt(contract: ContractId) -> Balance {
    ContractBillings::<Test>::get(contract)
        .map(|b| b.debt)
        .unwrap_or(0)
}

/// A contract of OWNER on NODE activated at START, with the clock one hour later.
fn contract_after_an_hour() -> ContractId {
    let c = add_contract(OWNER, NODE, small_vm());
    advance_secs(3_600);
    c
}

#[test]
fn genesis_installs_the_default_policy() {
    run_test(|| {
        let dev = PricingPolicies::<Test>::get(zos_primitives::DEFAULT_PRICING_POLICY).unwrap();
        assert_eq!(dev, dev_pricing_policy());
        assert!(dev.shares_are_complete());
        assert_eq!(PricingPolicies::<Test>::get(1), Some(test_policy()));
    });
}

#[test]
fn pricing_policy_needs_governance_and_complete_shares() {
    run_test(|| {
        let mut policy = test_policy();
        assert_noop!(
            Billing::set_pricing_policy(RuntimeOrigin::signed(OWNER), 7, policy.clone()),
            DispatchError::BadOrigin
        );
        policy.burn_share = Perbill::from_percent(11);
        assert_noop!(
            Billing::set_pricing_policy(RuntimeOrigin::root(), 7, policy.clone()),
            Error::<Test>::SharesNotComplete
        );
        policy.burn_share = Perbill::from_percent(9);
        assert_noop!(
            Billing::set_pricing_policy(RuntimeOrigin::root(), 7, policy.clone()),
            Error::<Test>::SharesNotComplete
        );
        // All to the treasury is a valid split.
        policy.farm_owner_share = Perbill::zero();
        policy.burn_share = Perbill::zero();
        policy.treasury_share = Perbill::one();
        assert_ok!(Billing::set_pricing_policy(
            RuntimeOrigin::root(),
            7,
            policy.clone()
        ));
        assert_eq!(PricingPolicies::<Test>::get(7), Some(policy.clone()));
        System::assert_last_event(
            Event::<Test>::PricingPolicySet {
                policy_id: 7,
                policy,
            }
            .into(),
        );
    });
}

#[test]
fn shares_round_down_and_the_treasury_gets_the_dust() {
    let policy = test_policy();
    let all = |amount: Balance| {
        let p = policy.split(amount);
        assert_eq!(
            p.farm_owner + p.treasury + p.burn,
            amount,
            "nothing lost for {amount}"
        );
        (p.farm_owner, p.treasury, p.burn)
    };
    assert_eq!(all(0), (0, 0, 0));
    assert_eq!(all(1), (0, 1, 0));
    assert_eq!(all(9), (6, 3, 0));
    assert_eq!(all(10), (7, 2, 1));
    assert_eq!(all(19), (13, 5, 1));
    assert_eq!(all(13_980), (9_786, 2_796, 1_398));
    let (farm, treasury, burn) = all(u128::MAX);
    assert_eq!(farm, Perbill::from_percent(70).mul_floor(u128::MAX));
    assert_eq!(burn, Perbill::from_percent(10).mul_floor(u128::MAX));
    assert!(treasury >= Perbill::from_percent(20).mul_floor(u128::MAX));
    // Odd thirds: 333_333_333 + 333_333_333 + 333_333_334 parts per billion.
    let thirds = PricingPolicy::<Balance> {
        farm_owner_share: Perbill::from_parts(333_333_333),
        burn_share: Perbill::from_parts(333_333_333),
        treasury_share: Perbill::from_parts(333_333_334),
        ..test_policy()
    };
    assert!(thirds.shares_are_complete());
    for amount in [1, 2, 3, 100, 1_000_000_007, u128::MAX] {
        let p = thirds.split(amount);
        assert_eq!(p.farm_owner + p.treasury + p.burn, amount);
        assert!(p.treasury >= p.farm_owner && p.treasury >= p.burn);
    }
}

#[test]
fn charge_at_the_bounds_saturates_instead_of_overflowing() {
    let max = RequiredResources {
        resources: Resources::new(u64::MAX, u64::MAX, u64::MAX, u64::MAX),
        public_ipv4: u32::MAX,
        gateway_hosts: u32::MAX,
    };
    let priciest = PricingPolicy::<Balance> {
        cu_hour: u128::MAX,
        su_hour: u128::MAX,
        ipv4_hour: u128::MAX,
        traffic_gib: u128::MAX,
        gateway_host_hour: u128::MAX,
        ..test_policy()
    };
    let long = ConsumptionReport {
        contract: 1,
        window_start: 0,
        window_end: u64::MAX,
        uptime_seconds: u64::MAX,
        public_bytes_in: u64::MAX,
        public_bytes_out: u64::MAX,
    };
    assert_eq!(priciest.charge(&max, &long), u128::MAX);
    // Nothing reserved and no traffic: nothing to pay, whatever the prices.
    let idle = ConsumptionReport {
        public_bytes_in: 0,
        public_bytes_out: 0,
        ..long.clone()
    };
    assert_eq!(priciest.charge(&RequiredResources::default(), &idle), 0);
    // Largest traffic at a unit price: (2^65 - 2) bytes / 2^30 rounded down.
    let unit = PricingPolicy::<Balance> {
        traffic_gib: 1,
        ..test_policy()
    };
    assert_eq!(
        unit.charge(&RequiredResources::default(), &long),
        (2 * u128::from(u64::MAX)) >> 30
    );
    // One hour of the largest machine at 1 per CU-hour: exactly its milli-CU / 1000.
    let cheap = PricingPolicy::<Balance> {
        cu_hour: 1,
        su_hour: 0,
        ipv4_hour: 0,
        traffic_gib: 0,
        gateway_host_hour: 0,
        ..test_policy()
    };
    let hour = ConsumptionReport {
        uptime_seconds: 3_600,
        ..idle
    };
    assert_eq!(
        cheap.charge(&max, &hour),
        zos_primitives::units::cu_milli(&max.resources) / 1_000
    );
}

#[test]
fn an_unpayable_charge_at_the_bounds_becomes_debt_and_totals_still_add_up() {
    run_test(|| {
        let huge = PricingPolicy::<Balance> {
            cu_hour: u128::MAX,
            su_hour: u128::MAX,
            ipv4_hour: u128::MAX,
            traffic_gib: u128::MAX,
            gateway_host_hour: u128::MAX,
            ..test_policy()
        };
        assert_ok!(Billing::set_pricing_policy(RuntimeOrigin::root(), 1, huge));
        let max = Resources::new(u64::MAX, u64::MAX, u64::MAX, u64::MAX);
        with_world(|w| w.nodes.get_mut(&NODE).unwrap().reserved = Resources::zero());
        let c = add_contract(
            OWNER,
            NODE,
            RequiredResources {
                resources: max,
                public_ipv4: u32::MAX,
                gateway_hosts: u32::MAX,
            },
        );
        advance_secs(MAX_WINDOW);
        let mut r = report(c, START, START + MAX_WINDOW, MAX_WINDOW);
        // As much traffic as the window may carry.
        r.public_bytes_in = MAX_WINDOW * MAX_TRAFFIC_PER_SEC / 2;
        r.public_bytes_out = MAX_WINDOW * MAX_TRAFFIC_PER_SEC / 2;
        assert_eq!(submit(NODE_ACCOUNT, vec![r]).pays_fee, Pays::No);
        // Everything but the existential deposit was taken; the rest is debt.
        assert_eq!(balance(OWNER), ED);
        assert_eq!(debt(c), u128::MAX - (OWNER_FUNDS - ED));
        let totals = LedgerTotals::<Test>::get();
        assert_eq!(totals.charged, u128::MAX);
        assert_eq!(totals.collected, OWNER_FUNDS - ED);
        assert!(totals.is_consistent());
        assert_eq!(contract_state(c), Some(ContractState::GracePeriod));
    });
}

#[test]
fn a_report_moves_funds_from_owner_to_farmer_treasury_and_burn() {
    run_test(|| {
        let c = contract_after_an_hour();
        let mut r = report(c, START, START + 3_600, 3_600);
        r.public_bytes_in = 2 * GIB;
        r.public_bytes_out = GIB;
        let charge = SMALL_VM_HOUR + 3_000;
        assert_eq!(charge, 13_980);
        let issuance = Balances::total_issuance();

        let info = submit(NODE_ACCOUNT, vec![r]);
        assert_eq!(info.pays_fee, Pays::No);

        assert_eq!(balance(OWNER), OWNER_FUNDS - charge);
        assert_eq!(balance(FARMER), ED + 9_786);
        assert_eq!(balance(TREASURY), ED + 2_796);
        assert_eq!(Balances::total_issuance(), issuance - 1_398);
        System::assert_last_event(
            Event::<Test>::ReportSettled {
                contract: c,
                owner: OWNER,
                window_start: START,
                window_end: START + 3_600,
                charged: charge,
                collected: charge,
                farm_owner: FARMER,
                to_farm_owner: 9_786,
                to_treasury: 2_796,
                burned: 1_398,
                debt: 0,
            }
            .into(),
        );
        let billing = ContractBillings::<Test>::get(c).unwrap();
        assert_eq!(billing.billed_until(), START + 3_600);
        assert_eq!(billing.node, NODE);
        let totals = LedgerTotals::<Test>::get();
        assert_eq!(
            (totals.charged, totals.collected, totals.burned),
            (charge, charge, 1_398)
        );
        assert_eq!(
            (totals.to_farm_owners, totals.to_treasury, totals.debt),
            (9_786, 2_796, 0)
        );
    });
}

#[test]
fn partial_uptime_is_charged_pro_rata() {
    run_test(|| {
        let c = contract_after_an_hour();
        submit(NODE_ACCOUNT, vec![report(c, START, START + 3_600, 900)]);
        assert_eq!(balance(OWNER), OWNER_FUNDS - SMALL_VM_HOUR / 4);
    });
}

#[test]
fn zero_uptime_windows_charge_nothing_for_compute() {
    run_test(|| {
        let c = contract_after_an_hour();
        let info = submit(NODE_ACCOUNT, vec![report(c, START, START + 3_600, 0)]);
        assert_eq!(info.pays_fee, Pays::No);
        assert_eq!(balance(OWNER), OWNER_FUNDS);
        assert_eq!(
            ContractBillings::<Test>::get(c).unwrap().billed_until(),
            START + 3_600
        );
        // Traffic is still what it is.
        advance_secs(3_600);
        let mut r = report(c, START + 3_600, START + 7_200, 0);
        r.public_bytes_out = GIB;
        submit(NODE_ACCOUNT, vec![r]);
        assert_eq!(balance(OWNER), OWNER_FUNDS - 1_000);
    });
}

#[test]
fn windows_shorter_than_the_minimum_must_end_on_its_grid() {
    run_test(|| {
        let c = contract_after_an_hour();
        // START is on the 10 s grid. A 1-second window off the grid is refused: without the
        // rule a node could cut an hour into 3,600 free reports.
        submit(NODE_ACCOUNT, vec![report(c, START, START + 1, 1)]);
        assert_eq!(rejections(), vec![(c, RejectReason::WindowTooShort)]);
        // Shorter than the minimum but ending on the grid (a first window after a deploy in
        // the middle of an interval, or a gap filler): accepted; so is any longer window.
        let first = report(c, START, START + MIN_WINDOW, MIN_WINDOW);
        let long = report(c, START + MIN_WINDOW, START + 3 * MIN_WINDOW + 3, 23);
        assert_eq!(submit(NODE_ACCOUNT, vec![first, long]).pays_fee, Pays::No);
        let short = report(c, START + 3 * MIN_WINDOW + 3, START + 4 * MIN_WINDOW, 7);
        let rest = report(c, START + 4 * MIN_WINDOW, START + 3_600, 0);
        submit(NODE_ACCOUNT, vec![short, rest]);
        assert_eq!(rejections().len(), 1);
        // The final window of an ended contract may be short and end off the grid: at the end.
        advance_secs(3);
        end_contract(c, CancelCause::Signers);
        let ended_at = EndedContracts::<Test>::get(c).unwrap().ended_at;
        assert_eq!(ended_at, START + 3_603);
        submit(
            NODE_ACCOUNT,
            vec![report(c, START + 3_600, ended_at - 1, 0)],
        );
        assert_eq!(
            rejections().last(),
            Some(&(c, RejectReason::WindowTooShort)),
            "only the window ending at the end is exempt"
        );
        submit(NODE_ACCOUNT, vec![report(c, START + 3_600, ended_at, 3)]);
        assert_eq!(rejections().len(), 2);
        assert!(ContractBillings::<Test>::get(c).is_none(), "billing closed");
    });
}

#[test]
fn a_node_has_a_quota_of_free_reports_per_period() {
    run_test(|| {
        let c = contract_after_an_hour();
        let period_start = System::block_number();
        let mut start = START;
        let mut next = |windows: u64| -> Vec<ConsumptionReport> {
            (0..windows)
                .map(|_| {
                    let r = report(c, start, start + MIN_WINDOW, MIN_WINDOW);
                    start += MIN_WINDOW;
                    r
                })
                .collect()
        };
        // Batches of one report each, then a batch that does not fit in what is left.
        for _ in 0..FREE_REPORTS - 2 {
            assert_eq!(submit(NODE_ACCOUNT, next(1)).pays_fee, Pays::No);
        }
        assert_eq!(submit(NODE_ACCOUNT, next(3)).pays_fee, Pays::Yes);
        // Accepted like any other, and it used none of the quota: two more still fit.
        assert!(rejections().is_empty());
        assert_eq!(submit(NODE_ACCOUNT, next(2)).pays_fee, Pays::No);
        assert_eq!(submit(NODE_ACCOUNT, next(1)).pays_fee, Pays::Yes);
        // The next period starts afresh.
        let next_period = (period_start / FREE_REPORT_PERIOD + 1) * FREE_REPORT_PERIOD;
        System::set_block_number(next_period);
        assert_eq!(submit(NODE_ACCOUNT, next(1)).pays_fee, Pays::No);
        assert_eq!(
            FreeReportsUsed::<Test>::get(NODE_ACCOUNT),
            Some((next_period / FREE_REPORT_PERIOD, 1))
        );
    });
}

#[test]
fn resending_the_last_accepted_report_is_a_no_op() {
    run_test(|| {
        let c = contract_after_an_hour();
        let r = report(c, START, START + 3_600, 3_600);
        assert_eq!(submit(NODE_ACCOUNT, vec![r.clone()]).pays_fee, Pays::No);
        let after_first = balance(OWNER);
        let events = System::events().len();

        // A batch of resends only: nothing happens, and it pays (free resends would be spam).
        assert_eq!(
            submit(NODE_ACCOUNT, vec![r.clone(), r.clone()]).pays_fee,
            Pays::Yes
        );
        assert_eq!(balance(OWNER), after_first);
        assert_eq!(System::events().len(), events);

        // A retry of a batch that also carries a new window stays free.
        advance_secs(3_600);
        let next = report(c, START + 3_600, START + 7_200, 3_600);
        assert_eq!(
            submit(NODE_ACCOUNT, vec![r.clone(), next.clone()]).pays_fee,
            Pays::No
        );
        assert_eq!(balance(OWNER), after_first - SMALL_VM_HOUR);
        // The old report is no longer the last one: sending it again is an overlap.
        assert_eq!(submit(NODE_ACCOUNT, vec![next]).pays_fee, Pays::Yes);
        assert!(rejections().is_empty());
        submit(NODE_ACCOUNT, vec![r]);
        assert_eq!(rejections(), vec![(c, RejectReason::WindowOverlap)]);
        // A changed report for the same window is not a resend either.
        let mut changed = report(c, START + 3_600, START + 7_200, 1);
        changed.public_bytes_in = 1;
        submit(NODE_ACCOUNT, vec![changed]);
        assert_eq!(rejections().last(), Some(&(c, RejectReason::WindowOverlap)));
        assert_eq!(balance(OWNER), after_first - SMALL_VM_HOUR);
    });
}

#[test]
fn gapped_and_overlapping_windows_are_rejected() {
    run_test(|| {
        let c = add_contract(OWNER, NODE, small_vm());
        advance_secs(3 * 3_600);
        submit(NODE_ACCOUNT, vec![report(c, START, START + 3_600, 3_600)]);
        let paid = balance(OWNER);

        let gap = report(c, START + 3_601, START + 7_200, 10);
        let overlap = report(c, START + 3_599, START + 3_700, 10);
        let info = submit(NODE_ACCOUNT, vec![gap, overlap]);
        assert_eq!(info.pays_fee, Pays::Yes);
        assert_eq!(
            rejections(),
            vec![
                (c, RejectReason::WindowGap),
                (c, RejectReason::WindowOverlap)
            ]
        );
        assert_eq!(balance(OWNER), paid);
        assert_eq!(
            ContractBillings::<Test>::get(c).unwrap().billed_until(),
            START + 3_600
        );

        // Contiguous windows in one batch are all accepted, in order.
        let a = report(c, START + 3_600, START + 7_200, 3_600);
        let b = report(c, START + 7_200, START + 10_800, 3_600);
        assert_eq!(submit(NODE_ACCOUNT, vec![a, b]).pays_fee, Pays::No);
        assert_eq!(
            ContractBillings::<Test>::get(c).unwrap().billed_until(),
            START + 10_800
        );
        assert_eq!(balance(OWNER), paid - 2 * SMALL_VM_HOUR);
    });
}

#[test]
fn window_rules_each_have_their_reason() {
    run_test(|| {
        let c = add_contract(OWNER, NODE, small_vm());
        advance_secs(2 * 3_600);
        let now = START + 2 * 3_600;
        let cases = [
            (
                report(c, START + 10, START + 10, 0),
                RejectReason::EmptyWindow,
            ),
            (
                report(c, START + 10, START + 5, 0),
                RejectReason::EmptyWindow,
            ),
            (
                report(c, START, START + MAX_WINDOW + 1, 0),
                RejectReason::WindowTooLong,
            ),
            (
                report(c, now + DRIFT - 100, now + DRIFT + 1, 0),
                RejectReason::WindowInFuture,
            ),
            (
                report(c, START, START + 100, 101),
                RejectReason::UptimeExceedsWindow,
            ),
            // The first window cannot start before activation (minus the drift).
            (
                report(c, START - DRIFT - 1, START + 100, 0),
                RejectReason::StartsBeforeActivation,
            ),
            (
                report(77, START, START + 100, 0),
                RejectReason::UnknownContract,
            ),
            // More traffic than 100 s at the cap could carry, split between both directions.
            (
                ConsumptionReport {
                    public_bytes_in: 50 * MAX_TRAFFIC_PER_SEC,
                    public_bytes_out: 50 * MAX_TRAFFIC_PER_SEC + 1,
                    ..report(c, START, START + 100, 100)
                },
                RejectReason::TrafficAboveCapacity,
            ),
        ];
        for (r, reason) in cases.iter() {
            System::reset_events();
            assert_eq!(submit(NODE_ACCOUNT, vec![r.clone()]).pays_fee, Pays::Yes);
            assert_eq!(rejections(), vec![(r.contract, *reason)], "{r:?}");
        }
        assert!(ContractBillings::<Test>::get(c).is_none());
        // Within the drift on both sides is fine.
        assert_eq!(
            submit(
                NODE_ACCOUNT,
                vec![report(c, START - DRIFT, START + 3_000, 0)]
            )
            .pays_fee,
            Pays::No
        );
        assert_eq!(
            submit(
                NODE_ACCOUNT,
                vec![report(c, START + 3_000, START + 6_600, 0)]
            )
            .pays_fee,
            Pays::No
        );
        assert_eq!(
            submit(NODE_ACCOUNT, vec![report(c, START + 6_600, now + DRIFT, 0)]).pays_fee,
            Pays::No
        );
    });
}

#[test]
fn reports_from_another_node_are_rejected_without_failing_the_batch() {
    run_test(|| {
        let mine = add_contract(OWNER, NODE, small_vm());
        let theirs = add_contract(OWNER, OTHER_NODE, small_vm());
        advance_secs(3_600);
        let info = submit(
            OTHER_NODE_ACCOUNT,
            vec![
                report(mine, START, START + 3_600, 3_600),
                report(theirs, START, START + 3_600, 3_600),
            ],
        );
        assert_eq!(info.pays_fee, Pays::Yes);
        assert_eq!(rejections(), vec![(mine, RejectReason::NotContractNode)]);
        assert!(ContractBillings::<Test>::get(mine).is_none());
        assert_eq!(
            ContractBillings::<Test>::get(theirs)
                .unwrap()
                .billed_until(),
            START + 3_600
        );
        assert_eq!(
            balance(OTHER_FARMER),
            Perbill::from_percent(70).mul_floor(SMALL_VM_HOUR)
        );
        // Any other account, too.
        System::reset_events();
        submit(OWNER, vec![report(mine, START, START + 3_600, 3_600)]);
        assert_eq!(rejections(), vec![(mine, RejectReason::NotContractNode)]);
    });
}

#[test]
fn empty_batches_fail() {
    run_test(|| {
        assert_noop!(
            Billing::report_consumption(RuntimeOrigin::signed(NODE_ACCOUNT), BoundedVec::new()),
            Error::<Test>::EmptyBatch
        );
    });
}

#[test]
fn a_farm_without_a_policy_or_owner_cannot_be_billed() {
    run_test(|| {
        let c = contract_after_an_hour();
        add_farm(FARM, FARMER, 42);
        submit(NODE_ACCOUNT, vec![report(c, START, START + 3_600, 3_600)]);
        assert_eq!(rejections(), vec![(c, RejectReason::NoPricingPolicy)]);
        with_world(|w| w.farms.remove(&FARM));
        System::reset_events();
        submit(NODE_ACCOUNT, vec![report(c, START, START + 3_600, 3_600)]);
        assert_eq!(rejections(), vec![(c, RejectReason::FarmUnknown)]);
        assert_eq!(balance(OWNER), OWNER_FUNDS);
    });
}

#[test]
fn a_payout_too_small_for_a_new_account_goes_to_the_treasury() {
    run_test(|| {
        // OTHER_FARMER has no account; 70% of 10 is below the existential deposit.
        let c = add_contract(OWNER, OTHER_NODE, RequiredResources::default());
        advance_secs(60);
        let mut r = report(c, START, START + 60, 60);
        // Just over 10/1000 GiB: a charge of exactly 10.
        r.public_bytes_out = 10 * GIB / 1_000 + 1;
        submit(OTHER_NODE_ACCOUNT, vec![r]);
        assert_eq!(balance(OWNER), OWNER_FUNDS - 10);
        assert_eq!(balance(OTHER_FARMER), 0);
        assert_eq!(balance(TREASURY), ED + 9);
        let totals = LedgerTotals::<Test>::get();
        assert_eq!(
            (totals.to_farm_owners, totals.to_treasury, totals.burned),
            (0, 9, 1)
        );
    });
}

#[test]
fn grace_then_top_up_then_resume() {
    run_test(|| {
        let c = add_contract(POOR, NODE, small_vm());
        advance_secs(3_600);
        // POOR holds 1000 and keeps the existential deposit: 990 collected, the rest owed.
        submit(NODE_ACCOUNT, vec![report(c, START, START + 3_600, 3_600)]);
        assert_eq!(balance(POOR), ED);
        let owed = SMALL_VM_HOUR - 990;
        assert_eq!(debt(c), owed);
        assert_eq!(contract_state(c), Some(ContractState::GracePeriod));
        assert_eq!(GraceSince::<Test>::get(c), Some(System::block_number()));
        System::assert_has_event(
            Event::<Test>::GracePeriodStarted {
                contract: c,
                owner: POOR,
                debt: owed,
            }
            .into(),
        );
        let grace_start = System::block_number();

        // In grace the node stops serving: zero uptime, nothing new to pay, still in debt.
        advance_secs(3_600);
        submit(
            NODE_ACCOUNT,
            vec![report(c, START + 3_600, START + 7_200, 0)],
        );
        assert_eq!(debt(c), owed);
        assert_eq!(
            GraceSince::<Test>::get(c),
            Some(grace_start),
            "the grace clock does not restart"
        );

        // A partial top-up pays part of the debt.
        top_up(POOR, 1_000);
        advance_secs(3_600);
        submit(
            NODE_ACCOUNT,
            vec![report(c, START + 7_200, START + 10_800, 0)],
        );
        assert_eq!(debt(c), owed - 1_000);
        assert_eq!(contract_state(c), Some(ContractState::GracePeriod));

        // Enough funds: the debt is settled first, then the contract resumes.
        top_up(POOR, 100_000);
        advance_secs(3_600);
        System::reset_events();
        submit(
            NODE_ACCOUNT,
            vec![report(c, START + 10_800, START + 14_400, 0)],
        );
        assert_eq!(debt(c), 0);
        assert_eq!(balance(POOR), ED + 100_000 - (owed - 1_000));
        assert_eq!(contract_state(c), Some(ContractState::Deployed));
        assert_eq!(GraceSince::<Test>::get(c), None);
        System::assert_last_event(
            Event::<Test>::ContractResumed {
                contract: c,
                owner: POOR,
            }
            .into(),
        );

        // And its grace deadline, when due, leaves it alone.
        advance_blocks(GRACE_BLOCKS * 2);
        Billing::on_initialize(System::block_number());
        assert_eq!(contract_state(c), Some(ContractState::Deployed));
    });
}

#[test]
fn grace_expiry_cancels_and_releases_capacity() {
    run_test(|| {
        let c = add_contract(POOR, NODE, small_vm());
        assert_eq!(reserved(NODE), small_vm().resources);
        advance_secs(3_600);
        submit(NODE_ACCOUNT, vec![report(c, START, START + 3_600, 3_600)]);
        let owed = debt(c);
        assert!(owed > 0);
        let since = GraceSince::<Test>::get(c).unwrap();

        // One block short of the grace length: nothing happens.
        System::set_block_number(since + GRACE_BLOCKS - 1);
        Billing::on_initialize(System::block_number());
        assert_eq!(contract_state(c), Some(ContractState::GracePeriod));

        System::set_block_number(since + GRACE_BLOCKS);
        Billing::on_initialize(System::block_number());
        assert_eq!(contract_state(c), None);
        assert_eq!(with_world(|w| w.cancelled.clone()), vec![c]);
        assert_eq!(reserved(NODE), Resources::zero());
        assert!(with_world(|w| !w.ips.contains_key(&c)));
        assert!(ContractBillings::<Test>::get(c).is_none());
        assert!(GraceSince::<Test>::get(c).is_none());
        System::assert_has_event(
            Event::<Test>::BillingClosed {
                contract: c,
                debt_written_off: owed,
            }
            .into(),
        );
        System::assert_has_event(
            Event::<Test>::GracePeriodExpired {
                contract: c,
                debt: owed,
            }
            .into(),
        );
        let totals = LedgerTotals::<Test>::get();
        assert_eq!((totals.debt, totals.written_off), (0, owed));
        // Later reports for it are rejected.
        System::reset_events();
        submit(
            NODE_ACCOUNT,
            vec![report(c, START + 3_600, START + 3_700, 0)],
        );
        assert_eq!(rejections(), vec![(c, RejectReason::UnknownContract)]);
    });
}

#[test]
fn grace_expiries_beyond_the_per_block_maximum_fall_through_to_the_next_blocks() {
    run_test(|| {
        let contracts: Vec<_> = (0..5)
            .map(|_| add_contract(POOR, NODE, RequiredResources::default()))
            .collect();
        advance_secs(60);
        for c in &contracts {
            // 2 GiB of traffic each = 2000: more than POOR can pay even once.
            let mut r = report(*c, START, START + 60, 60);
            r.public_bytes_out = 2 * GIB;
            submit(NODE_ACCOUNT, vec![r]);
        }
        assert_eq!(GraceSince::<Test>::iter().count(), 5);
        advance_blocks(GRACE_BLOCKS);

        // Two per block (MAX_DEADLINES_PER_BLOCK), each block's weight counting what it did.
        let one = Billing::on_initialize(System::block_number());
        assert!(one.all_gte(<() as WeightInfo>::grace_expiry() * 2));
        assert_eq!(GraceSince::<Test>::iter().count(), 3);
        System::set_block_number(System::block_number() + 1);
        Billing::on_initialize(System::block_number());
        assert_eq!(GraceSince::<Test>::iter().count(), 1);
        System::set_block_number(System::block_number() + 1);
        Billing::on_initialize(System::block_number());
        assert_eq!(GraceSince::<Test>::iter().count(), 0);
        let mut cancelled = with_world(|w| w.cancelled.clone());
        cancelled.sort();
        assert_eq!(cancelled, contracts);
        // The queue is empty: a block with nothing due costs only the head reads.
        let idle = Billing::on_initialize(System::block_number() + 1);
        assert!(idle.all_lt(<() as WeightInfo>::grace_expiry()));
    });
}

#[test]
fn grace_expiry_skips_contracts_whose_grace_has_not_run_out() {
    run_test(|| {
        let early = add_contract(POOR, NODE, RequiredResources::default());
        advance_secs(60);
        let mut r = report(early, START, START + 60, 60);
        r.public_bytes_out = 2 * GIB;
        submit(NODE_ACCOUNT, vec![r]);
        advance_blocks(GRACE_BLOCKS / 2);
        let late = add_contract(POOR, NODE, RequiredResources::default());
        advance_secs(60);
        let now = START + 60 + GRACE_BLOCKS / 2 * 6 + 60;
        let mut r = report(late, now - 60, now, 60);
        r.public_bytes_out = GIB;
        submit(NODE_ACCOUNT, vec![r]);
        advance_blocks(GRACE_BLOCKS / 2);
        Billing::on_initialize(System::block_number());
        assert_eq!(contract_state(early), None);
        assert_eq!(contract_state(late), Some(ContractState::GracePeriod));
    });
}

#[test]
fn ended_contracts_lose_their_billing_state() {
    run_test(|| {
        let c = contract_after_an_hour();
        submit(NODE_ACCOUNT, vec![report(c, START, START + 3_600, 3_600)]);
        assert!(ContractBillings::<Test>::get(c).is_some());
        <Billing as zos_primitives::contracts::OnContractEnded<_, _>>::on_contract_ended(
            c,
            zos_primitives::contracts::CancelCause::Signers,
            None,
        );
        assert!(ContractBillings::<Test>::get(c).is_none());
        System::assert_last_event(
            Event::<Test>::BillingClosed {
                contract: c,
                debt_written_off: 0,
            }
            .into(),
        );
        // A contract billing never saw: nothing to do, no event.
        let events = System::events().len();
        <Billing as zos_primitives::contracts::OnContractEnded<_, _>>::on_contract_ended(
            999,
            zos_primitives::contracts::CancelCause::Withdrawn,
            None,
        );
        assert_eq!(System::events().len(), events);
    });
}

#[test]
fn stale_contracts_are_listed_and_accrue_nothing() {
    run_test(|| {
        let silent = add_contract(OWNER, OTHER_NODE, small_vm());
        let reported = contract_after_an_hour();
        submit(
            NODE_ACCOUNT,
            vec![report(reported, START, START + 3_600, 3_600)],
        );
        let paid = balance(OWNER);
        assert!(Billing::stale_contracts().is_empty());
        assert!(!Billing::contract_billing(reported).unwrap().stale);

        advance_secs(STALE_AFTER + 1);
        assert_eq!(
            Billing::stale_contracts(),
            vec![(reported, NODE, START + 3_600)]
        );
        let status = Billing::contract_billing(reported).unwrap();
        assert!(status.stale);
        assert_eq!(status.billed_until, Some(START + 3_600));
        assert_eq!(status.debt, 0);
        // Never reported, activated long ago: stale too.
        let status = Billing::contract_billing(silent).unwrap();
        assert!(status.stale);
        assert_eq!(status.billed_until, None);
        assert_eq!(status.node, OTHER_NODE);
        assert_eq!(Billing::contract_billing(12_345), None);

        // Time passing without reports costs nothing.
        advance_blocks(10 * GRACE_BLOCKS);
        Billing::on_initialize(System::block_number());
        assert_eq!(balance(OWNER), paid);
    });
}

#[test]
fn the_owner_is_never_reaped() {
    run_test(|| {
        top_up(5, 10_000);
        let c = add_contract(5, NODE, small_vm());
        advance_secs(3_600);
        submit(NODE_ACCOUNT, vec![report(c, START, START + 3_600, 3_600)]);
        assert_eq!(balance(5), ED);
        assert_eq!(debt(c), SMALL_VM_HOUR - (10_000 - ED));
        assert!(frame_system::Pallet::<Test>::account_exists(&5));
    });
}

/// Native execution time of the worst-case report path (settlement of a debt and a charge,
/// three payouts, leaving grace), without database costs: the input of the estimates in
/// `weights.rs`. Run with `--ignored --nocapture`.
#[test]
#[ignore]
fn time_worst_case_reports() {
    run_test(|| {
        const BATCHES: u64 = 50;
        let mut batches = Vec::new();
        for b in 0..BATCHES {
            let mut reports = Vec::new();
            for i in 0..u64::from(MAX_BATCH) {
                let owner = 1_000 + b * 100 + i;
                top_up(owner, 1_000);
                let c = add_contract(owner, NODE, RequiredResources::default());
                reports.push((c, owner));
            }
            batches.push(reports);
        }
        advance_secs(60);
        // Each contract gets a debt and enters grace...
        for batch in &batches {
            let reports = batch
                .iter()
                .map(|(c, _)| {
                    let mut r = report(*c, START, START + 30, 30);
                    r.public_bytes_out = 2 * GIB;
                    r
                })
                .collect();
            submit(NODE_ACCOUNT, reports);
        }
        for batch in &batches {
            for (_, owner) in batch {
                top_up(*owner, 1_000_000);
            }
        }
        assert_eq!(
            GraceSince::<Test>::iter().count(),
            batches.len() * MAX_BATCH as usize
        );
        // ...and the timed reports settle it with a new charge, paying out three ways.
        let started = std::time::Instant::now();
        for batch in &batches {
            let reports = batch
                .iter()
                .map(|(c, _)| {
                    let mut r = report(*c, START + 30, START + 60, 30);
                    r.public_bytes_out = GIB;
                    r
                })
                .collect();
            assert_eq!(submit(NODE_ACCOUNT, reports).pays_fee, Pays::No);
        }
        let elapsed = started.elapsed();
        assert_eq!(GraceSince::<Test>::iter().count(), 0);
        let per_report = elapsed.as_nanos() / u128::from(BATCHES * u64::from(MAX_BATCH));
        println!("worst-case report: {per_report} ns native (in-memory storage)");
    });
}

/// The throughput goal: at least 50,000 contract-reports per hour in 25% of a block of 2 s of
/// compute at 6 s blocks. Checked with the `()` weights (the benchmarked times with ParityDB's
/// storage costs, as in the runtime), in full batches, each paying the extrinsic base weight.
#[test]
fn reports_per_hour_fit_the_goal() {
    use frame_support::weights::constants::{ExtrinsicBaseWeight, WEIGHT_REF_TIME_PER_SECOND};
    let budget = 2 * WEIGHT_REF_TIME_PER_SECOND / 4;
    let per_hour = |batch: u32| {
        let batch_weight = <() as WeightInfo>::report_consumption(batch).ref_time()
            + ExtrinsicBaseWeight::get().ref_time();
        let batches_per_block = budget / batch_weight;
        batches_per_block * u64::from(batch) * 600
    };
    for batch in [1, MAX_BATCH, 256] {
        assert!(
            per_hour(batch) >= 50_000,
            "batch {batch}: {} per hour",
            per_hour(batch)
        );
    }
    assert!(per_hour(256) > 400_000);
}

/// The `ReportSettled` charges of `contract`, with their windows.
fn settled(contract: ContractId) -> Vec<(u64, u64, Balance)> {
    billing_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::ReportSettled {
                contract: c,
                window_start,
                window_end,
                charged,
                ..
            } if c == contract => Some((window_start, window_end, charged)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_contract_cancelled_90_s_into_a_300_s_window_pays_for_the_90_s() {
    run_test(|| {
        let c = add_contract(OWNER, NODE, small_vm());
        advance_secs(300);
        submit(NODE_ACCOUNT, vec![report(c, START, START + 300, 300)]);
        advance_secs(90);
        end_contract(c, CancelCause::Signers);
        let ended_at = START + 390;
        System::assert_last_event(
            Event::<Test>::AwaitingFinalReport {
                contract: c,
                ended_at,
                report_by: System::block_number() + FINAL_REPORT_BLOCKS,
            }
            .into(),
        );
        let status = Billing::contract_billing(c).expect("still billed");
        assert_eq!(
            (status.ended_at, status.billed_until),
            (Some(ended_at), Some(START + 300))
        );

        // The node sees the end a few blocks later: a window past the end is refused.
        run_blocks(3);
        System::reset_events();
        let info = submit(NODE_ACCOUNT, vec![report(c, START + 300, START + 420, 108)]);
        assert_eq!(rejections(), vec![(c, RejectReason::AfterContractEnd)]);
        assert_eq!(info.pays_fee, Pays::Yes);

        // The final window, 90 s long, is charged for 90 s and closes the contract's billing.
        let paid_before = balance(OWNER);
        let final_window = report(c, START + 300, ended_at, 90);
        let info = submit(NODE_ACCOUNT, vec![final_window.clone()]);
        assert_eq!(info.pays_fee, Pays::No);
        let price = test_policy().charge(&small_vm(), &final_window);
        assert!(price > 0);
        assert_eq!(settled(c), vec![(START + 300, ended_at, price)]);
        assert_eq!(balance(OWNER), paid_before - price);
        assert!(EndedContracts::<Test>::get(c).is_none());
        assert!(ContractBillings::<Test>::get(c).is_none());
        assert_eq!(Billing::contract_billing(c), None);
        System::assert_last_event(
            Event::<Test>::BillingClosed {
                contract: c,
                debt_written_off: 0,
            }
            .into(),
        );
        // Its deadline later finds nothing to do.
        System::reset_events();
        run_blocks(FINAL_REPORT_BLOCKS);
        assert!(billing_events().is_empty());
    });
}

#[test]
fn a_contract_that_never_reported_bills_its_whole_life_as_the_final_window() {
    run_test(|| {
        let c = add_contract(OWNER, NODE, small_vm());
        advance_secs(90);
        end_contract(c, CancelCause::Signers);
        run_blocks(2);
        let window = report(c, START, START + 90, 90);
        submit(NODE_ACCOUNT, vec![window.clone()]);
        assert_eq!(
            settled(c),
            vec![(
                START,
                START + 90,
                test_policy().charge(&small_vm(), &window)
            )]
        );
        assert!(EndedContracts::<Test>::get(c).is_none());
    });
}

#[test]
fn an_unreported_final_window_is_charged_at_the_last_windows_uptime() {
    run_test(|| {
        let c = add_contract(OWNER, NODE, small_vm());
        advance_secs(300);
        // Up half of the last window.
        submit(NODE_ACCOUNT, vec![report(c, START, START + 300, 150)]);
        advance_secs(90);
        end_contract(c, CancelCause::Signers);
        System::reset_events();

        run_blocks(FINAL_REPORT_BLOCKS - 1);
        assert!(EndedContracts::<Test>::get(c).is_some(), "not due yet");
        run_blocks(1);
        let estimated = report(c, START + 300, START + 390, 45);
        System::assert_has_event(
            Event::<Test>::FinalWindowEstimated {
                contract: c,
                window_start: START + 300,
                window_end: START + 390,
                uptime_seconds: 45,
            }
            .into(),
        );
        assert_eq!(
            settled(c),
            vec![(
                START + 300,
                START + 390,
                test_policy().charge(&small_vm(), &estimated)
            )]
        );
        assert!(EndedContracts::<Test>::get(c).is_none());
        assert!(ContractBillings::<Test>::get(c).is_none());
        // Too late now: the node's report is refused.
        System::reset_events();
        submit(NODE_ACCOUNT, vec![report(c, START + 300, START + 390, 90)]);
        assert_eq!(rejections(), vec![(c, RejectReason::UnknownContract)]);
    });
}

#[test]
fn a_contract_ended_by_its_nodes_removal_pays_its_last_seconds_at_once() {
    run_test(|| {
        let c = add_contract(OWNER, NODE, small_vm());
        advance_secs(300);
        submit(NODE_ACCOUNT, vec![report(c, START, START + 300, 300)]);
        let owner_before = balance(OWNER);
        advance_secs(90);
        System::reset_events();
        end_contract(c, CancelCause::NodeRemoved);
        // No final report to wait for: the node leaves the grid with its contracts.
        let estimated = report(c, START + 300, START + 390, 90);
        System::assert_has_event(
            Event::<Test>::FinalWindowEstimated {
                contract: c,
                window_start: START + 300,
                window_end: START + 390,
                uptime_seconds: 90,
            }
            .into(),
        );
        let charge = test_policy().charge(&small_vm(), &estimated);
        assert!(charge > 0);
        assert_eq!(settled(c), vec![(START + 300, START + 390, charge)]);
        assert_eq!(owner_before - balance(OWNER), charge);
        assert!(EndedContracts::<Test>::get(c).is_none());
        assert!(ContractBillings::<Test>::get(c).is_none());
    });
}

#[test]
fn a_removed_nodes_free_report_count_goes_with_it() {
    run_test(|| {
        let c = add_contract(OWNER, NODE, small_vm());
        advance_secs(300);
        submit(NODE_ACCOUNT, vec![report(c, START, START + 300, 300)]);
        assert!(FreeReportsUsed::<Test>::contains_key(NODE_ACCOUNT));
        <Billing as OnNodeRemoved<AccountId>>::on_node_removed(NODE, &NODE_ACCOUNT);
        assert!(!FreeReportsUsed::<Test>::contains_key(NODE_ACCOUNT));
    });
}

#[test]
fn a_node_silent_long_before_the_end_gets_no_estimate() {
    run_test(|| {
        let c = add_contract(OWNER, NODE, small_vm());
        advance_secs(300);
        submit(NODE_ACCOUNT, vec![report(c, START, START + 300, 300)]);
        // Silent for longer than the longest window, then the contract ends.
        advance_secs(MAX_WINDOW + 60);
        end_contract(c, CancelCause::Signers);
        System::reset_events();
        let paid_before = balance(OWNER);
        run_blocks(FINAL_REPORT_BLOCKS);
        assert!(settled(c).is_empty());
        assert_eq!(balance(OWNER), paid_before);
        assert!(EndedContracts::<Test>::get(c).is_none());
        System::assert_last_event(
            Event::<Test>::BillingClosed {
                contract: c,
                debt_written_off: 0,
            }
            .into(),
        );
    });
}

#[test]
fn a_contract_ended_in_grace_closes_at_once_and_its_grace_time_is_never_charged() {
    run_test(|| {
        let c = add_contract(POOR, NODE, small_vm());
        advance_secs(3_600);
        submit(NODE_ACCOUNT, vec![report(c, START, START + 3_600, 3_600)]);
        let owed = debt(c);
        assert!(owed > 0 && GraceSince::<Test>::contains_key(c));
        // Ended by its signers well into grace: the node served nothing since the last window
        // (which was full), so no final window is awaited or estimated.
        advance_secs(3_000);
        end_contract(c, CancelCause::Signers);
        System::assert_last_event(
            Event::<Test>::BillingClosed {
                contract: c,
                debt_written_off: owed,
            }
            .into(),
        );
        assert!(!GraceSince::<Test>::contains_key(c));
        assert!(EndedContracts::<Test>::get(c).is_none());
        assert_eq!(
            DeadlineQueueEnds::<Test>::get(DeadlineKind::FinalReport),
            (0, 0)
        );
        // The old grace deadline is skipped: the contract is gone, nothing is cancelled.
        run_blocks(GRACE_BLOCKS);
        assert!(with_world(|w| w.cancelled.is_empty()));
        assert_eq!(LedgerTotals::<Test>::get().written_off, owed);
    });
}

#[test]
fn a_failed_grace_expiry_is_retried_a_grace_period_after_it_was_handled() {
    run_test(|| {
        let c = add_contract(POOR, NODE, small_vm());
        advance_secs(3_600);
        submit(NODE_ACCOUNT, vec![report(c, START, START + 3_600, 3_600)]);
        let since = GraceSince::<Test>::get(c).expect("in grace");
        let due = since + GRACE_BLOCKS;
        with_world(|w| w.refuse_cancel = true);
        // Handled late (a backlog of deadlines): the retry counts from now, not from `due`,
        // so it lands behind every deadline queued meanwhile.
        let late = due + 100;
        System::set_block_number(late);
        Billing::on_initialize(late);
        System::assert_has_event(
            Event::<Test>::GraceExpiryFailed {
                contract: c,
                // The message is not stored in events.
                error: DispatchError::Other(""),
            }
            .into(),
        );
        let (head, tail) = DeadlineQueueEnds::<Test>::get(DeadlineKind::GraceExpiry);
        assert_eq!(tail - head, 1);
        let retry = Deadlines::<Test>::get(DeadlineKind::GraceExpiry, head).unwrap();
        assert_eq!((retry.due, retry.queued_at), (late + GRACE_BLOCKS, since));
        with_world(|w| w.refuse_cancel = false);
        System::set_block_number(late + GRACE_BLOCKS);
        Billing::on_initialize(late + GRACE_BLOCKS);
        assert_eq!(with_world(|w| w.cancelled.clone()), vec![c]);
    });
}

#[test]
fn a_contract_billed_up_to_its_end_closes_at_once() {
    run_test(|| {
        let c = contract_after_an_hour();
        submit(NODE_ACCOUNT, vec![report(c, START, START + 3_600, 3_600)]);
        end_contract(c, CancelCause::Signers);
        assert!(EndedContracts::<Test>::get(c).is_none());
        assert!(ContractBillings::<Test>::get(c).is_none());
        assert_eq!(
            DeadlineQueueEnds::<Test>::get(DeadlineKind::FinalReport),
            (0, 0)
        );
    });
}

#[test]
fn the_v1_to_v2_migration_queues_each_grace_period_in_due_order() {
    use frame_support::traits::{GetStorageVersion, StorageVersion};
    run_test(|| {
        // Three contracts in grace since blocks 30, 10 and 20 (map order is by hash, not age).
        let contracts: Vec<_> = (0..3)
            .map(|_| add_contract(POOR, NODE, RequiredResources::default()))
            .collect();
        let mut total = 0;
        for (c, since) in contracts.iter().zip([30u64, 10, 20]) {
            ContractBillings::<Test>::insert(
                c,
                ContractBilling {
                    node: NODE,
                    last_report: report(*c, START - 60, START, 0),
                    debt: 5,
                },
            );
            GraceSince::<Test>::insert(c, since);
            total += 5;
        }
        // Version 1 let an update approved during grace end the grace in the contracts pallet
        // only: the first contract is Deployed there while billing holds it in grace.
        for c in &contracts[1..] {
            assert_ok!(MockContracts::set_grace_period(*c, true));
        }
        // And a contract that is gone without billing hearing of it.
        let gone = add_contract(POOR, NODE, RequiredResources::default());
        ContractBillings::<Test>::insert(
            gone,
            ContractBilling {
                node: NODE,
                last_report: report(gone, START - 60, START, 0),
                debt: 5,
            },
        );
        GraceSince::<Test>::insert(gone, 5);
        with_world(|w| w.contracts.remove(&gone));
        total += 5;
        LedgerTotals::<Test>::mutate(|t| {
            t.charged += total;
            t.debt += total;
        });
        let cursor = frame_support::storage::storage_prefix(b"Billing", b"GraceCursor");
        frame_support::storage::unhashed::put(&cursor, &contracts[0]);
        StorageVersion::new(1).put::<Billing>();

        upgrade::<crate::migrations::V1ToV2<Test>>();

        assert_eq!(Billing::on_chain_storage_version(), 2);
        assert!(frame_support::storage::unhashed::get_raw(&cursor).is_none());
        let queued: Vec<_> = (0..3)
            .map(|seq| {
                let d = Deadlines::<Test>::get(DeadlineKind::GraceExpiry, seq).unwrap();
                (d.queued_at, d.due, d.contract)
            })
            .collect();
        assert_eq!(
            queued,
            vec![
                (10, 10 + GRACE_BLOCKS, contracts[1]),
                (20, 20 + GRACE_BLOCKS, contracts[2]),
                (30, 30 + GRACE_BLOCKS, contracts[0]),
            ]
        );
        assert_eq!(
            contract_state(contracts[0]),
            Some(ContractState::GracePeriod)
        );
        assert!(!GraceSince::<Test>::contains_key(gone));
        assert!(!ContractBillings::<Test>::contains_key(gone));
        assert_eq!(LedgerTotals::<Test>::get().written_off, 5);
        Billing::do_try_state().expect("consistent after the migration");
        // A second run does nothing: the version is 2 now.
        upgrade::<crate::migrations::V1ToV2<Test>>();
        assert_eq!(
            DeadlineQueueEnds::<Test>::get(DeadlineKind::GraceExpiry),
            (0, 3)
        );
        // And the deadlines fire when due.
        System::set_block_number(10 + GRACE_BLOCKS);
        Billing::on_initialize(System::block_number());
        assert_eq!(with_world(|w| w.cancelled.clone()), vec![contracts[1]]);
    });
}

/// An approved update: the contract now holds `new`; billing is told what it held before.
fn update_resources(contract: ContractId, new: RequiredResources) {
    use zos_primitives::contracts::OnResourcesChanged;
    let old = with_world(|w| {
        let c = w.contracts.get_mut(&contract).expect("contract exists");
        core::mem::replace(&mut c.info.required, new)
    });
    Billing::on_resources_changed(contract, &old);
}

/// `small_vm` with twice the compute and storage.
fn big_vm() -> RequiredResources {
    RequiredResources {
        resources: Resources::new(4, 8 * GIB, 200 * GIB, 0),
        public_ipv4: 1,
        gateway_hosts: 0,
    }
}

#[test]
fn a_resource_change_inside_a_window_is_charged_pro_rata() {
    run_test(|| {
        let c = add_contract(OWNER, NODE, small_vm());
        advance_secs(1_200);
        update_resources(c, big_vm());
        advance_secs(2_400);
        let window = ConsumptionReport {
            public_bytes_out: 3 * GIB,
            ..report(c, START, START + 3_600, 3_600)
        };
        submit(NODE_ACCOUNT, vec![window.clone()]);
        let policy = test_policy();
        let part = |required: &RequiredResources, uptime: u64| {
            policy.charge(required, &report(c, START, START + 3_600, uptime))
        };
        let traffic = policy.charge(
            &RequiredResources::default(),
            &ConsumptionReport {
                uptime_seconds: 0,
                ..window.clone()
            },
        );
        assert!(traffic > 0);
        // 20 minutes of the small VM, 40 of the big one, the traffic once.
        let expected = part(&small_vm(), 1_200) + part(&big_vm(), 2_400) + traffic;
        assert_eq!(settled(c), vec![(START, START + 3_600, expected)]);
        assert!(expected > part(&small_vm(), 3_600) + traffic);
        assert!(expected < part(&big_vm(), 3_600) + traffic);
        // The change is covered: the next window is the big VM's alone.
        assert!(ResourceChanges::<Test>::get(c).is_none());
        advance_secs(600);
        System::reset_events();
        submit(
            NODE_ACCOUNT,
            vec![report(c, START + 3_600, START + 4_200, 600)],
        );
        let next = test_policy().charge(&big_vm(), &report(c, START + 3_600, START + 4_200, 600));
        assert_eq!(settled(c), vec![(START + 3_600, START + 4_200, next)]);
    });
}

#[test]
fn changes_after_a_window_wait_for_the_next_one_and_the_uptime_adds_up() {
    run_test(|| {
        let c = add_contract(OWNER, NODE, small_vm());
        advance_secs(100);
        update_resources(c, big_vm());
        advance_secs(100);
        update_resources(c, small_vm());
        advance_secs(400);
        let policy = test_policy();
        let charge = |required: RequiredResources, start: u64, end: u64, uptime: u64| {
            policy.charge(&required, &report(c, START + start, START + end, uptime))
        };
        // [0, 150): small until 100, then big; 149 s of uptime shared 99 + 50 (rounded down
        // cumulatively, so the parts add up).
        submit(NODE_ACCOUNT, vec![report(c, START, START + 150, 149)]);
        let first = charge(small_vm(), 0, 150, 99) + charge(big_vm(), 0, 150, 50);
        assert_eq!(settled(c), vec![(START, START + 150, first)]);
        // The change at 200 is kept for the next window.
        let kept = ResourceChanges::<Test>::get(c).expect("one change left");
        assert_eq!(kept.len(), 1);
        assert_eq!((kept[0].at, kept[0].before), (START + 200, big_vm()));
        // [150, 600): big until 200, small after.
        System::reset_events();
        submit(NODE_ACCOUNT, vec![report(c, START + 150, START + 600, 450)]);
        let second = charge(big_vm(), 150, 600, 50) + charge(small_vm(), 150, 600, 400);
        assert_eq!(settled(c), vec![(START + 150, START + 600, second)]);
        assert!(ResourceChanges::<Test>::get(c).is_none());
    });
}

#[test]
fn a_change_before_the_billed_end_is_not_recorded() {
    run_test(|| {
        let c = add_contract(OWNER, NODE, small_vm());
        advance_secs(100);
        // The node's clock runs ahead: its window ends 30 s in the chain's future.
        submit(NODE_ACCOUNT, vec![report(c, START, START + 130, 130)]);
        update_resources(c, big_vm());
        assert!(ResourceChanges::<Test>::get(c).is_none());
        // The next window is the big VM's alone.
        advance_secs(100);
        System::reset_events();
        submit(NODE_ACCOUNT, vec![report(c, START + 130, START + 200, 70)]);
        let price = test_policy().charge(&big_vm(), &report(c, START + 130, START + 200, 70));
        assert_eq!(settled(c), vec![(START + 130, START + 200, price)]);
    });
}

#[test]
fn many_changes_in_a_window_merge_the_oldest_at_the_larger_resources() {
    run_test(|| {
        let c = add_contract(OWNER, NODE, small_vm());
        for i in 0..=MAX_RESOURCE_CHANGES {
            advance_secs(10);
            update_resources(c, if i % 2 == 0 { big_vm() } else { small_vm() });
        }
        // Two changes in the same second count as one.
        update_resources(c, big_vm());
        let changes = ResourceChanges::<Test>::get(c).unwrap();
        assert_eq!(changes.len() as u32, MAX_RESOURCE_CHANGES);
        // The first two spans ([.., 10) small and [10, 20) big) were merged: big until 20.
        assert_eq!((changes[0].at, changes[0].before), (START + 20, big_vm()));
        // Closing the contract's billing forgets them.
        end_contract(c, CancelCause::OutOfFunds);
        assert!(ResourceChanges::<Test>::get(c).is_none());
    });
}

#[test]
fn gateway_hosts_are_charged_per_host_hour() {
    run_test(|| {
        let with_hosts = RequiredResources {
            gateway_hosts: 2,
            ..small_vm()
        };
        let c = add_contract(OWNER, NODE, with_hosts);
        advance_secs(3_600);
        submit(NODE_ACCOUNT, vec![report(c, START, START + 3_600, 3_600)]);
        // The VM's hour plus two hosts at 1,800 each.
        assert_eq!(balance(OWNER), OWNER_FUNDS - SMALL_VM_HOUR - 2 * 1_800);
    });
}

#[test]
fn the_v2_to_v3_migration_prices_gateway_hosts_at_zero_and_keeps_stored_requirements() {
    use crate::migrations::{EndedContractV2, PricingPolicyV2, ResourceChangeV2};
    use frame_support::traits::{GetStorageVersion, StorageVersion};
    use zos_primitives::spec::RequiredResourcesBeforeGateways;
    let old_required = |r: RequiredResources| RequiredResourcesBeforeGateways {
        resources: r.resources,
        public_ipv4: r.public_ipv4,
    };
    run_test(|| {
        // A resource change and an ended contract, as the current version stores them.
        let changed = add_contract(OWNER, NODE, small_vm());
        advance_secs(600);
        update_resources(changed, big_vm());
        let ended = add_contract(OWNER, NODE, small_vm());
        advance_secs(600);
        end_contract(ended, CancelCause::Signers);
        let changes = ResourceChanges::<Test>::get(changed).unwrap();
        let ended_entry = EndedContracts::<Test>::get(ended).unwrap();
        let policies: Vec<_> = PricingPolicies::<Test>::iter().collect();

        // Rewritten in version 2's layout.
        for (id, p) in &policies {
            let old = PricingPolicyV2 {
                cu_hour: p.cu_hour,
                su_hour: p.su_hour,
                ipv4_hour: p.ipv4_hour,
                traffic_gib: p.traffic_gib,
                farm_owner_share: p.farm_owner_share,
                treasury_share: p.treasury_share,
                burn_share: p.burn_share,
            };
            frame_support::storage::unhashed::put(
                &PricingPolicies::<Test>::hashed_key_for(id),
                &old,
            );
        }
        let old_changes: Vec<ResourceChangeV2> = changes
            .iter()
            .map(|c| ResourceChangeV2 {
                at: c.at,
                before: old_required(c.before),
            })
            .collect();
        frame_support::storage::unhashed::put(
            &ResourceChanges::<Test>::hashed_key_for(changed),
            &old_changes,
        );
        let old_ended = EndedContractV2 {
            owner: ended_entry.owner,
            node: ended_entry.node,
            required: old_required(ended_entry.required),
            activated_at: ended_entry.activated_at,
            ended_at: ended_entry.ended_at,
        };
        frame_support::storage::unhashed::put(
            &EndedContracts::<Test>::hashed_key_for(ended),
            &old_ended,
        );
        assert!(
            EndedContracts::<Test>::try_get(ended).is_err(),
            "the old layout does not decode"
        );
        StorageVersion::new(2).put::<Billing>();

        upgrade::<crate::migrations::V2ToV3<Test>>();

        assert_eq!(Billing::on_chain_storage_version(), 3);
        for (id, p) in policies {
            let migrated = PricingPolicies::<Test>::get(id).unwrap();
            assert_eq!(
                migrated,
                PricingPolicy {
                    gateway_host_hour: 0,
                    ..p
                }
            );
        }
        assert_eq!(ResourceChanges::<Test>::get(changed).unwrap(), changes);
        assert_eq!(EndedContracts::<Test>::get(ended).unwrap(), ended_entry);
    });
}
