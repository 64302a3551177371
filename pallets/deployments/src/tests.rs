use crate::{mock::*, *};
use codec::{Encode, MaxEncodedLen};
use frame_support::{assert_noop, assert_ok, traits::fungible::InspectHold};
use pallet_grid::Error as GridError;
use zos_primitives::{
    contracts::{CancelCause, ContractState, ContractsForBilling},
    spec::*,
    Resources, GIB, MIB,
};

const A: u64 = 1;
const B: u64 = 2;
const C: u64 = 3;
const D: u64 = 4;

fn big_node() -> (NodeId, u64) {
    online_node(Resources::new(16, 64 * GIB, 1024 * GIB, 0), 4)
}

fn wname(s: &str) -> WorkloadName {
    WorkloadName::try_from(s).unwrap()
}

/// One VM with `vcpus` cores and `ips` public IPv4 workloads (named `ip0`, `ip1`, ...).
fn spec(version: u32, vcpus: u32, ips: u32) -> DeploymentSpec {
    spec_with_ip_names(
        version,
        vcpus,
        &(0..ips).map(|i| format!("ip{i}")).collect::<Vec<_>>(),
    )
}

fn spec_with_ip_names(version: u32, vcpus: u32, ip_names: &[String]) -> DeploymentSpec {
    let mut workloads = vec![Workload {
        name: wname("vm"),
        kind: WorkloadKind::Vm(VmSpec {
            image: ImageRef {
                root_hash: [1; 32],
                source: ImageSource::try_from("https://hub/img").unwrap(),
            },
            vcpus,
            memory_mib: 1024,
            rootfs_mib: 1024,
            mounts: Default::default(),
            env: Default::default(),
            entrypoint: Default::default(),
            ssh_keys: Default::default(),
            networks: Default::default(),
            public_ip: ip_names.first().map(|n| wname(n)),
            overlay: false,
        }),
    }];
    for n in ip_names {
        workloads.push(Workload {
            name: wname(n),
            kind: WorkloadKind::PublicIp(PublicIpSpec {
                v4: true,
                v6: false,
            }),
        });
    }
    DeploymentSpec {
        version,
        workloads: workloads.try_into().unwrap(),
        metadata: Default::default(),
    }
}

fn needs(vcpus: u64) -> Resources {
    Resources::new(vcpus, 1024 * MIB, 1024 * MIB, 0)
}

fn signers(list: &[(u64, u32, bool)]) -> SignersOf<Test> {
    list.iter()
        .map(|&(account, weight, required)| Signer {
            account,
            weight,
            required,
        })
        .collect::<Vec<_>>()
        .try_into()
        .unwrap()
}

fn create(
    owner: u64,
    node: NodeId,
    spec: DeploymentSpec,
    s: &[(u64, u32, bool)],
    threshold: u32,
) -> ContractId {
    let id = NextContractId::<Test>::get();
    assert_ok!(Deployments::create(
        RuntimeOrigin::signed(owner),
        node,
        Box::new(spec),
        signers(s),
        threshold
    ));
    id
}

fn state(id: ContractId) -> ContractState {
    Contracts::<Test>::get(id).unwrap().state
}

fn reserved(node: NodeId) -> Resources {
    pallet_grid::Nodes::<Test>::get(node).unwrap().reserved
}

fn held(who: u64) -> u64 {
    Balances::balance_on_hold(&HoldReason::ContractDeposit.into(), &who)
}

fn free_ips(node: NodeId) -> usize {
    let farm = pallet_grid::Nodes::<Test>::get(node).unwrap().farm_id;
    Grid::free_public_ips(farm).len()
}

fn events() -> Vec<Event<Test>> {
    System::events()
        .into_iter()
        .filter_map(|r| match r.event {
            RuntimeEvent::Deployments(e) => Some(e),
            _ => None,
        })
        .collect()
}

#[test]
fn one_of_one_contract_activates_at_creation() {
    run_test(|| {
        let (node, _) = big_node();
        let s = spec(0, 2, 1);
        let hash = s.hash();
        let id = create(A, node, s.clone(), &[(A, 1, false)], 1);
        assert_eq!(state(id), ContractState::Active);
        let c = Contracts::<Test>::get(id).unwrap();
        assert_eq!(c.active.unwrap().hash, hash);
        assert_eq!(c.public_ips.len(), 1);
        assert_eq!(reserved(node), needs(2));
        assert_eq!(
            held(A),
            DEPOSIT_BASE + s.encoded_size() as u64 * DEPOSIT_PER_BYTE
        );
        assert!(events().contains(&Event::ContractActivated {
            contract: id,
            node,
            spec_hash: hash,
            version: 0
        }));
        assert_eq!(Proposals::<Test>::get(id), None);
        // Its queued expiry stays and is skipped when reached.
        run_to_block(1 + TTL);
        assert_eq!(state(id), ContractState::Active);
        assert_eq!(ExpiryQueueEnds::<Test>::get(), (1, 1));
    })
}

#[test]
fn two_of_three_activates_on_the_second_approval() {
    run_test(|| {
        let (node, _) = big_node();
        let s = spec(0, 1, 0);
        let hash = s.hash();
        let id = create(
            A,
            node,
            s,
            &[(A, 1, false), (B, 1, false), (C, 1, false)],
            2,
        );
        assert_eq!(state(id), ContractState::PendingApproval);
        assert_eq!(reserved(node), Resources::zero());
        assert_noop!(
            Deployments::approve(RuntimeOrigin::signed(A), id, hash),
            Error::<Test>::AlreadyApproved
        );
        assert_noop!(
            Deployments::approve(RuntimeOrigin::signed(D), id, hash),
            Error::<Test>::NotASigner
        );
        assert_ok!(Deployments::approve(RuntimeOrigin::signed(B), id, hash));
        assert_eq!(state(id), ContractState::Active);
        assert_eq!(reserved(node), needs(1));
        assert!(events().contains(&Event::ProposalApproved {
            contract: id,
            signer: B,
            hash,
            approved_weight: 2
        }));
        // Nothing left to approve.
        assert_noop!(
            Deployments::approve(RuntimeOrigin::signed(C), id, hash),
            Error::<Test>::NoPendingProposal
        );
    })
}

#[test]
fn weights_add_up_to_the_threshold() {
    run_test(|| {
        let (node, _) = big_node();
        let s = spec(0, 1, 0);
        let hash = s.hash();
        // A weighs 2, B and C 1 each; 3 needed: A+B passes, B+C does not.
        let id = create(
            B,
            node,
            s.clone(),
            &[(A, 2, false), (B, 1, false), (C, 1, false)],
            3,
        );
        assert_ok!(Deployments::approve(RuntimeOrigin::signed(C), id, hash));
        assert_eq!(state(id), ContractState::PendingApproval);
        assert_ok!(Deployments::approve(RuntimeOrigin::signed(A), id, hash));
        assert_eq!(state(id), ContractState::Active);

        // The owner's weight alone can reach the threshold.
        let id = create(A, node, s, &[(A, 3, false), (B, 1, false)], 3);
        assert_eq!(state(id), ContractState::Active);
    })
}

#[test]
fn required_signers_must_approve_whatever_the_weight() {
    run_test(|| {
        let (node, _) = big_node();
        let s = spec(0, 1, 0);
        let hash = s.hash();
        let id = create(A, node, s, &[(A, 1, false), (B, 1, true), (C, 5, false)], 2);
        assert_ok!(Deployments::approve(RuntimeOrigin::signed(C), id, hash));
        // Weight 6 >= 2, but B is required.
        assert_eq!(state(id), ContractState::PendingApproval);
        assert_ok!(Deployments::approve(RuntimeOrigin::signed(B), id, hash));
        assert_eq!(state(id), ContractState::Active);

        // An optional signer that never signs does not block anything.
        let id = create(A, node, spec(0, 1, 0), &[(A, 1, true), (B, 1, false)], 1);
        assert_eq!(state(id), ContractState::Active);
    })
}

#[test]
fn signer_sets_are_checked() {
    run_test(|| {
        let (node, _) = big_node();
        let try_create = |s: &[(u64, u32, bool)], t: u32| {
            Deployments::create(
                RuntimeOrigin::signed(A),
                node,
                Box::new(spec(0, 1, 0)),
                signers(s),
                t,
            )
        };
        assert_noop!(try_create(&[], 1), Error::<Test>::NoSigners);
        assert_noop!(
            try_create(&[(A, 1, false), (B, 1, false), (A, 1, true)], 2),
            Error::<Test>::DuplicateSigner
        );
        assert_noop!(
            try_create(&[(A, 1, false), (B, 0, false)], 1),
            Error::<Test>::ZeroSignerWeight
        );
        assert_noop!(
            try_create(&[(B, 1, false), (C, 1, false)], 1),
            Error::<Test>::OwnerNotSigner
        );
        assert_noop!(
            try_create(&[(A, 1, false)], 0),
            Error::<Test>::ZeroThreshold
        );
        assert_noop!(
            try_create(&[(A, 1, false), (B, 2, false)], 4),
            Error::<Test>::ThresholdUnreachable
        );
        assert_noop!(
            try_create(&[(A, u32::MAX, false), (B, 1, false)], 1),
            Error::<Test>::WeightOverflow
        );
    })
}

#[test]
fn create_checks_spec_version_and_node() {
    run_test(|| {
        let (node, _) = big_node();
        let one = &[(A, 1, false)];
        assert_noop!(
            Deployments::create(
                RuntimeOrigin::signed(A),
                node,
                Box::new(spec(1, 1, 0)),
                signers(one),
                1
            ),
            Error::<Test>::FirstVersionMustBeZero
        );
        assert_noop!(
            Deployments::create(
                RuntimeOrigin::signed(A),
                99,
                Box::new(spec(0, 1, 0)),
                signers(one),
                1
            ),
            Error::<Test>::UnknownNode
        );
        let mut bad = spec(0, 1, 0);
        bad.workloads[0].name = wname("VM");
        assert_noop!(
            Deployments::create(
                RuntimeOrigin::signed(A),
                node,
                Box::new(bad),
                signers(one),
                1
            ),
            Error::<Test>::InvalidSpec(SpecError::InvalidWorkloadName)
        );
        // No funds for the deposit.
        assert_noop!(
            Deployments::create(
                RuntimeOrigin::signed(99),
                node,
                Box::new(spec(0, 1, 0)),
                signers(&[(99, 1, false)]),
                1
            ),
            sp_runtime::TokenError::FundsUnavailable
        );
    })
}

#[test]
fn approving_a_stale_or_wrong_hash_fails() {
    run_test(|| {
        let (node, _) = big_node();
        let v0 = spec(0, 1, 0);
        let id = create(A, node, v0.clone(), &[(A, 1, false), (B, 1, false)], 2);
        assert_noop!(
            Deployments::approve(RuntimeOrigin::signed(B), id, spec(0, 2, 0).hash()),
            Error::<Test>::ProposalHashMismatch
        );
        assert_ok!(Deployments::approve(
            RuntimeOrigin::signed(B),
            id,
            v0.hash()
        ));

        // An update is proposed; approving the old spec's hash does not approve it.
        let v1 = spec(1, 2, 0);
        assert_ok!(Deployments::propose_update(
            RuntimeOrigin::signed(A),
            id,
            Box::new(v1.clone())
        ));
        assert_noop!(
            Deployments::approve(RuntimeOrigin::signed(B), id, v0.hash()),
            Error::<Test>::ProposalHashMismatch
        );
        // Nor can a cancel approval be mistaken for it.
        assert_noop!(
            Deployments::approve(
                RuntimeOrigin::signed(B),
                id,
                Deployments::cancel_hash(id, 0)
            ),
            Error::<Test>::ProposalHashMismatch
        );
        assert_ok!(Deployments::approve(
            RuntimeOrigin::signed(B),
            id,
            v1.hash()
        ));
        assert_eq!(
            Contracts::<Test>::get(id).unwrap().active.unwrap().version,
            1
        );
    })
}

#[test]
fn creation_proposal_expires_and_the_contract_ends() {
    run_test(|| {
        let (node, _) = big_node();
        let s = spec(0, 1, 0);
        let id = create(A, node, s.clone(), &[(A, 1, false), (B, 1, false)], 2);
        assert!(held(A) > 0);
        run_to_block(1 + TTL - 1);
        assert!(Contracts::<Test>::contains_key(id));
        run_to_block(1 + TTL);
        assert!(!Contracts::<Test>::contains_key(id));
        assert_eq!(held(A), 0);
        let evs = events();
        assert!(evs.contains(&Event::ProposalExpired {
            contract: id,
            hash: s.hash()
        }));
        assert!(evs.contains(&Event::ContractCancelled {
            contract: id,
            node,
            cause: CancelCause::Expired
        }));
        assert_noop!(
            Deployments::approve(RuntimeOrigin::signed(B), id, s.hash()),
            Error::<Test>::ContractNotFound
        );
    })
}

#[test]
fn update_proposal_expires_and_the_active_version_stays() {
    run_test(|| {
        let (node, _) = big_node();
        let id = create(A, node, spec(0, 1, 0), &[(A, 1, false), (B, 1, false)], 2);
        assert_ok!(Deployments::approve(
            RuntimeOrigin::signed(B),
            id,
            spec(0, 1, 0).hash()
        ));
        let before = held(A);
        let v1 = spec(1, 3, 0);
        assert_ok!(Deployments::propose_update(
            RuntimeOrigin::signed(B),
            id,
            Box::new(v1.clone())
        ));
        assert_eq!(
            held(A),
            before + v1.encoded_size() as u64 * DEPOSIT_PER_BYTE
        );
        assert_noop!(
            Deployments::propose_cancel(RuntimeOrigin::signed(A), id),
            Error::<Test>::ProposalPending
        );
        run_to_block(System::block_number() + TTL);
        assert_eq!(Proposals::<Test>::get(id), None);
        assert_eq!(held(A), before);
        assert_eq!(
            Contracts::<Test>::get(id).unwrap().active.unwrap().version,
            0
        );
        assert_eq!(reserved(node), needs(1));
    })
}

#[test]
fn a_flood_of_proposals_cannot_block_creation_and_expiries_fall_through() {
    run_test(|| {
        let (node, _) = big_node();
        let two = &[(A, 1, false), (B, 1, false)];
        // Far more proposals than the old per-block slots (4 per block, 8 blocks searched)
        // held, all in one block: the old scheme refused the 33rd with ExpiryQueueFull.
        let flood = (MAX_EXPIRIES * 8) as usize + 5;
        let ids: Vec<_> = (0..flood)
            .map(|_| create(A, node, spec(0, 1, 0), two, 2))
            .collect();
        // Somebody else still creates a contract in that block.
        let bystander = create(C, node, spec(0, 1, 0), &[(C, 1, false), (B, 1, false)], 2);
        assert!(ids
            .iter()
            .all(|id| Proposals::<Test>::get(id).unwrap().expires_at == 1 + TTL));

        // Due together, expired at most MAX_EXPIRIES per block, in creation order.
        run_to_block(1 + TTL);
        assert_eq!(
            Contracts::<Test>::iter().count(),
            flood + 1 - MAX_EXPIRIES as usize
        );
        assert!(Contracts::<Test>::get(ids[0]).is_none());
        assert!(Contracts::<Test>::get(ids[MAX_EXPIRIES as usize]).is_some());
        let blocks = (flood as u64 + 1).div_ceil(u64::from(MAX_EXPIRIES));
        run_to_block(1 + TTL + blocks - 2);
        assert!(Contracts::<Test>::get(bystander).is_some(), "last in line");
        run_to_block(1 + TTL + blocks - 1);
        assert_eq!(Contracts::<Test>::iter().count(), 0);
        assert_eq!(ExpiryQueue::<Test>::iter().count(), 0);
    })
}

#[test]
fn an_overdue_proposal_cannot_be_approved_and_gives_way_to_the_next_one() {
    run_test(|| {
        let (node, _) = big_node();
        let two = &[(A, 1, false), (B, 1, false)];
        let id = create(A, node, spec(0, 1, 0), two, 2);
        assert_ok!(Deployments::approve(
            RuntimeOrigin::signed(B),
            id,
            spec(0, 1, 0).hash()
        ));
        // A backlog queued ahead of the update: its expiry is handled blocks late.
        let flood: Vec<_> = (0..MAX_EXPIRIES * 3)
            .map(|_| create(C, node, spec(0, 1, 0), &[(C, 1, false), (B, 1, false)], 2))
            .collect();
        run_to_block(2);
        let before = held(A);
        let v1 = spec(1, 2, 0);
        assert_ok!(Deployments::propose_update(
            RuntimeOrigin::signed(A),
            id,
            Box::new(v1.clone())
        ));
        run_to_block(2 + TTL);
        assert!(Proposals::<Test>::get(id).is_some(), "still queued");
        // Its time is up: approving it now would pass an expired proposal, and so would
        // approving a creation of the backlog.
        assert_noop!(
            Deployments::approve(RuntimeOrigin::signed(B), id, v1.hash()),
            Error::<Test>::ProposalOverdue
        );
        let last = *flood.last().unwrap();
        assert_noop!(
            Deployments::approve(RuntimeOrigin::signed(B), last, spec(0, 1, 0).hash()),
            Error::<Test>::ProposalOverdue
        );
        assert_noop!(
            Deployments::reject(RuntimeOrigin::signed(B), id, v1.hash()),
            Error::<Test>::ProposalOverdue
        );
        // A new proposal expires it on the spot instead of waiting for the queue.
        assert_ok!(Deployments::propose_cancel(RuntimeOrigin::signed(B), id));
        assert!(events().contains(&Event::ProposalExpired {
            contract: id,
            hash: v1.hash()
        }));
        assert_eq!(held(A), before, "the update's deposit is back");
        assert_eq!(
            Proposals::<Test>::get(id).unwrap().expires_at,
            2 + TTL + TTL
        );
        // The stale queue entry is skipped: the cancel proposal stays until its own time.
        run_to_block(2 + TTL + 3);
        assert!(Proposals::<Test>::get(id).is_some());
        assert!(Contracts::<Test>::get(last).is_none());
    })
}

#[test]
fn a_node_evicted_by_its_farm_owner_ends_its_contracts_after_the_notice() {
    run_test(|| {
        let (node, owner) = big_node();
        let farm = pallet_grid::Nodes::<Test>::get(node).unwrap().farm_id;
        let farmer = pallet_grid::Farms::<Test>::get(farm).unwrap().owner;
        let a = create(A, node, spec(0, 1, 1), &[(A, 1, false)], 1);
        let b = create(B, node, spec(0, 2, 0), &[(B, 1, false)], 1);
        let (held_a, held_b) = (held(A), held(B));
        assert!(held_a > 0 && held_b > 0);
        assert_ok!(pallet_grid::Pallet::<Test>::remove_node(
            RuntimeOrigin::signed(farmer),
            node
        ));
        // The node takes nothing new while its contracts run out their notice, not even a
        // pending creation (enough of them would hold its removal up).
        assert_noop!(
            Deployments::create(
                RuntimeOrigin::signed(C),
                node,
                Box::new(spec(0, 1, 0)),
                signers(&[(C, 1, false), (A, 1, false)]),
                2
            ),
            Error::<Test>::NodeLeaving
        );
        run_to_block(1 + NOTICE_BLOCKS - 1);
        assert_eq!(state(a), ContractState::Active);
        run_to_block(1 + NOTICE_BLOCKS);
        for id in [a, b] {
            assert!(Contracts::<Test>::get(id).is_none());
            assert!(events().contains(&Event::ContractCancelled {
                contract: id,
                node,
                cause: CancelCause::NodeRemoved,
            }));
        }
        assert_eq!((held(A), held(B)), (0, 0), "deposits returned");
        assert_eq!(NodeReserved::<Test>::get(node), Resources::zero());
        assert!(pallet_grid::Nodes::<Test>::get(node).is_none());
        assert!(pallet_grid::NodeIdByAccount::<Test>::get(owner).is_none());
        assert_eq!(Grid::free_public_ips(farm).len(), 4);
    })
}

#[test]
fn an_update_approved_in_grace_keeps_the_contract_in_grace() {
    use zos_primitives::contracts::ContractsForBilling;
    run_test(|| {
        let (node, _) = big_node();
        let id = create(A, node, spec(0, 1, 0), &[(A, 1, false), (B, 1, false)], 2);
        assert_ok!(Deployments::approve(
            RuntimeOrigin::signed(B),
            id,
            spec(0, 1, 0).hash()
        ));
        let update = spec(1, 2, 0);
        assert_ok!(Deployments::propose_update(
            RuntimeOrigin::signed(A),
            id,
            Box::new(update.clone())
        ));
        // Billing puts it in grace while the update waits for B.
        assert_ok!(Deployments::set_grace_period(id, true));
        assert_ok!(Deployments::approve(
            RuntimeOrigin::signed(B),
            id,
            update.hash()
        ));
        assert_eq!(state(id), ContractState::GracePeriod);
        assert_eq!(reserved(node), needs(2), "the update applied");
        // Paying the debt ends the grace: the new version waits for its deployment report.
        assert_ok!(Deployments::set_grace_period(id, false));
        assert_eq!(state(id), ContractState::Active);
    })
}

#[test]
fn activation_fails_when_capacity_is_exhausted() {
    run_test(|| {
        let (node, _) = online_node(Resources::new(4, 4 * GIB, 100 * GIB, 0), 0);
        let id = create(A, node, spec(0, 3, 0), &[(A, 1, false)], 1);
        assert_eq!(state(id), ContractState::Active);
        // 3 + 2 cores > 4: the approval that would activate fails and is not recorded.
        let s = spec(0, 2, 0);
        let id2 = create(B, node, s.clone(), &[(B, 1, false), (C, 1, false)], 2);
        assert_noop!(
            Deployments::approve(RuntimeOrigin::signed(C), id2, s.hash()),
            GridError::<Test>::InsufficientCapacity
        );
        // A 1-of-1 creation that does not fit fails entirely.
        assert_noop!(
            Deployments::create(
                RuntimeOrigin::signed(C),
                node,
                Box::new(spec(0, 2, 0)),
                signers(&[(C, 1, false)]),
                1
            ),
            GridError::<Test>::InsufficientCapacity
        );
        // After the first contract ends, it fits.
        assert_ok!(Deployments::propose_cancel(RuntimeOrigin::signed(A), id));
        assert_ok!(Deployments::approve(
            RuntimeOrigin::signed(C),
            id2,
            s.hash()
        ));
        assert_eq!(reserved(node), needs(2));
    })
}

#[test]
fn activation_fails_when_public_ips_run_out() {
    run_test(|| {
        let (node, _) = online_node(Resources::new(16, 64 * GIB, 1024 * GIB, 0), 2);
        create(A, node, spec(0, 1, 1), &[(A, 1, false)], 1);
        assert_noop!(
            Deployments::create(
                RuntimeOrigin::signed(B),
                node,
                Box::new(spec(0, 1, 2)),
                signers(&[(B, 1, false)]),
                1
            ),
            GridError::<Test>::NotEnoughFreeIps
        );
        // Nothing was reserved by the failed attempt.
        assert_eq!(reserved(node), needs(1));
        assert_eq!(free_ips(node), 1);
    })
}

#[test]
fn activation_needs_a_node_that_accepts_workloads() {
    run_test(|| {
        let (node, account) = big_node();
        assert_ok!(Grid::set_power_state(
            RuntimeOrigin::signed(account),
            pallet_grid::Power::Down
        ));
        assert_noop!(
            Deployments::create(
                RuntimeOrigin::signed(A),
                node,
                Box::new(spec(0, 1, 0)),
                signers(&[(A, 1, false)]),
                1
            ),
            GridError::<Test>::NodePoweredDown
        );
        assert_ok!(Grid::set_power_state(
            RuntimeOrigin::signed(account),
            pallet_grid::Power::Up
        ));
        // Offline: the clock moves past the heartbeat timeout.
        pallet_timestamp::Now::<Test>::put(START_MS + 11 * 60 * 1000);
        assert_noop!(
            Deployments::create(
                RuntimeOrigin::signed(A),
                node,
                Box::new(spec(0, 1, 0)),
                signers(&[(A, 1, false)]),
                1
            ),
            GridError::<Test>::NodeOffline
        );
    })
}

#[test]
fn an_update_reserves_only_the_difference_and_keeps_addresses() {
    run_test(|| {
        let (node, _) = big_node();
        let id = create(A, node, spec(0, 2, 1), &[(A, 1, false)], 1);
        let ip0 = Contracts::<Test>::get(id).unwrap().public_ips[0].clone();
        assert_eq!(free_ips(node), 3);

        // Grow: 2 -> 5 cores and a second address; the first address stays.
        assert_ok!(Deployments::propose_update(
            RuntimeOrigin::signed(A),
            id,
            Box::new(spec(1, 5, 2))
        ));
        assert_eq!(reserved(node), needs(5));
        let ips = Contracts::<Test>::get(id).unwrap().public_ips;
        assert_eq!(ips.len(), 2);
        assert_eq!(ips[0], ip0);
        assert_eq!(free_ips(node), 2);
        assert!(events().contains(&Event::ContractUpdated {
            contract: id,
            node,
            spec_hash: spec(1, 5, 2).hash(),
            version: 1
        }));

        // Shrink: 5 -> 1 core, drop an address.
        assert_ok!(Deployments::propose_update(
            RuntimeOrigin::signed(A),
            id,
            Box::new(spec(2, 1, 1))
        ));
        assert_eq!(reserved(node), needs(1));
        assert_eq!(free_ips(node), 3);
        let ips = Contracts::<Test>::get(id).unwrap().public_ips;
        assert_eq!(ips[0].0, wname("ip0"));

        // Versions must follow one another.
        assert_noop!(
            Deployments::propose_update(RuntimeOrigin::signed(A), id, Box::new(spec(2, 1, 0))),
            Error::<Test>::NotTheNextVersion
        );
        // The deposit now covers the active spec only.
        assert_eq!(held(A), DEPOSIT_BASE + spec(2, 1, 1).encoded_size() as u64);
    })
}

#[test]
fn an_update_that_does_not_fit_leaves_the_active_version_running() {
    run_test(|| {
        let (node, _) = online_node(Resources::new(4, 64 * GIB, 1024 * GIB, 0), 0);
        let id = create(A, node, spec(0, 2, 0), &[(A, 1, false), (B, 1, false)], 2);
        assert_ok!(Deployments::approve(
            RuntimeOrigin::signed(B),
            id,
            spec(0, 2, 0).hash()
        ));
        assert_ok!(Deployments::propose_update(
            RuntimeOrigin::signed(A),
            id,
            Box::new(spec(1, 5, 0))
        ));
        assert_noop!(
            Deployments::approve(RuntimeOrigin::signed(B), id, spec(1, 5, 0).hash()),
            GridError::<Test>::InsufficientCapacity
        );
        assert_eq!(
            Contracts::<Test>::get(id).unwrap().active.unwrap().version,
            0
        );
        assert_eq!(reserved(node), needs(2));
    })
}

#[test]
fn cancel_releases_everything() {
    run_test(|| {
        let (node, _) = big_node();
        let id = create(A, node, spec(0, 2, 2), &[(A, 1, false), (B, 1, false)], 2);
        assert_ok!(Deployments::approve(
            RuntimeOrigin::signed(B),
            id,
            spec(0, 2, 2).hash()
        ));
        assert_ok!(Deployments::report_deployment(
            RuntimeOrigin::signed(pallet_grid::Nodes::<Test>::get(node).unwrap().account),
            id,
            0,
            ok_report(&spec(0, 2, 2)),
        ));
        assert_eq!(free_ips(node), 2);
        assert_ok!(Deployments::propose_cancel(RuntimeOrigin::signed(B), id));
        let hash = Deployments::cancel_hash(id, 0);
        assert_eq!(Proposals::<Test>::get(id).unwrap().hash, hash);
        assert_ok!(Deployments::approve(RuntimeOrigin::signed(A), id, hash));

        assert!(!Contracts::<Test>::contains_key(id));
        assert!(!ActiveSpecs::<Test>::contains_key(id));
        assert!(!Reports::<Test>::contains_key(id));
        assert_eq!(ContractsByNode::<Test>::iter().count(), 0);
        assert_eq!(ContractsByOwner::<Test>::iter().count(), 0);
        assert_eq!(NodeReserved::<Test>::iter().count(), 0);
        assert_eq!(reserved(node), Resources::zero());
        assert_eq!(free_ips(node), 4);
        assert_eq!(
            pallet_grid::Nodes::<Test>::get(node)
                .unwrap()
                .active_contracts,
            0
        );
        assert_eq!(held(A), 0);
        assert_eq!(Balances::free_balance(A), ENDOWMENT);
        assert!(events().contains(&Event::ContractCancelled {
            contract: id,
            node,
            cause: CancelCause::Signers
        }));
    })
}

#[test]
fn the_owner_alone_withdraws_a_contract_that_never_activated() {
    run_test(|| {
        let (node, _) = big_node();
        let id = create(A, node, spec(0, 1, 0), &[(A, 1, false), (B, 1, false)], 2);
        assert_noop!(
            Deployments::propose_cancel(RuntimeOrigin::signed(B), id),
            Error::<Test>::NotOwner
        );
        assert_ok!(Deployments::propose_cancel(RuntimeOrigin::signed(A), id));
        assert!(!Contracts::<Test>::contains_key(id));
        assert_eq!(held(A), 0);
        assert!(events().contains(&Event::ContractCancelled {
            contract: id,
            node,
            cause: CancelCause::Withdrawn
        }));
    })
}

#[test]
fn only_required_signers_reject() {
    run_test(|| {
        let (node, _) = big_node();
        let s = spec(0, 1, 0);
        let id = create(
            A,
            node,
            s.clone(),
            &[(A, 1, false), (B, 1, true), (C, 1, false)],
            3,
        );
        assert_noop!(
            Deployments::reject(RuntimeOrigin::signed(C), id, s.hash()),
            Error::<Test>::NotARequiredSigner
        );
        assert_noop!(
            Deployments::reject(RuntimeOrigin::signed(B), id, [0; 32]),
            Error::<Test>::ProposalHashMismatch
        );
        assert_ok!(Deployments::reject(RuntimeOrigin::signed(B), id, s.hash()));
        assert!(!Contracts::<Test>::contains_key(id));
        assert_eq!(held(A), 0);
        assert!(events().contains(&Event::ContractCancelled {
            contract: id,
            node,
            cause: CancelCause::Rejected
        }));

        // Rejecting an update only drops the proposal.
        let id = create(A, node, s.clone(), &[(A, 1, false), (B, 1, true)], 1);
        assert_ok!(Deployments::approve(RuntimeOrigin::signed(B), id, s.hash()));
        let base = held(A);
        assert_ok!(Deployments::propose_update(
            RuntimeOrigin::signed(A),
            id,
            Box::new(spec(1, 2, 0))
        ));
        assert_ok!(Deployments::reject(
            RuntimeOrigin::signed(B),
            id,
            spec(1, 2, 0).hash()
        ));
        assert_eq!(held(A), base);
        assert_eq!(state(id), ContractState::Active);
    })
}

fn ok_report(s: &DeploymentSpec) -> WorkloadReports {
    s.workloads
        .iter()
        .map(|w| WorkloadReport {
            name: w.name.clone(),
            result: WorkloadResult::Ok,
        })
        .collect::<Vec<_>>()
        .try_into()
        .unwrap()
}

#[test]
fn only_the_node_reports_and_only_for_the_active_version() {
    run_test(|| {
        let (node, account) = big_node();
        let (_, other_node_account) = big_node();
        let s = spec(0, 1, 1);
        let id = create(A, node, s.clone(), &[(A, 1, false)], 1);
        let report = ok_report(&s);
        for who in [A, other_node_account] {
            assert_noop!(
                Deployments::report_deployment(RuntimeOrigin::signed(who), id, 0, report.clone()),
                Error::<Test>::NotContractNode
            );
        }
        assert_noop!(
            Deployments::report_deployment(RuntimeOrigin::signed(account), id, 1, report.clone()),
            Error::<Test>::ReportForInactiveVersion
        );
        let mut short = report.clone();
        short.pop();
        assert_noop!(
            Deployments::report_deployment(RuntimeOrigin::signed(account), id, 0, short),
            Error::<Test>::ReportDoesNotMatchSpec
        );
        assert_ok!(Deployments::report_deployment(
            RuntimeOrigin::signed(account),
            id,
            0,
            report.clone()
        ));
        assert_eq!(state(id), ContractState::Deployed);

        let mut failed = report;
        failed[1].result = WorkloadResult::Error(b"no route".to_vec().try_into().unwrap());
        assert_ok!(Deployments::report_deployment(
            RuntimeOrigin::signed(account),
            id,
            0,
            failed
        ));
        assert_eq!(
            state(id),
            ContractState::Failed(FailureReason {
                workload: wname("ip0"),
                reason: b"no route".to_vec().try_into().unwrap()
            })
        );
        assert!(events().contains(&Event::DeploymentReported {
            contract: id,
            node,
            version: 0,
            failed: Some(wname("ip0"))
        }));

        // A pending contract has nothing to report on.
        let pending = create(A, node, spec(0, 1, 0), &[(A, 1, false), (B, 1, false)], 2);
        assert_noop!(
            Deployments::report_deployment(
                RuntimeOrigin::signed(account),
                pending,
                0,
                ok_report(&spec(0, 1, 0))
            ),
            Error::<Test>::NotActivated
        );
    })
}

#[test]
fn an_unhealthy_check_keeps_the_contract_deployed_and_is_announced_once() {
    run_test(|| {
        let (node, account) = big_node();
        let mut s = spec(0, 1, 0);
        s.workloads
            .try_push(Workload {
                name: wname("vm-health"),
                kind: WorkloadKind::HealthCheck(HealthCheckSpec {
                    vm: wname("vm"),
                    probe: HealthProbe::Tcp(80),
                    interval_secs: 10,
                    timeout_secs: 2,
                    retries: 3,
                    start_period_secs: 60,
                    on_unhealthy: OnUnhealthy::Restart,
                }),
            })
            .unwrap();
        let id = create(A, node, s.clone(), &[(A, 1, false)], 1);
        let report = |vm: WorkloadResult, check: WorkloadResult| -> WorkloadReports {
            vec![
                WorkloadReport {
                    name: wname("vm"),
                    result: vm,
                },
                WorkloadReport {
                    name: wname("vm-health"),
                    result: check,
                },
            ]
            .try_into()
            .unwrap()
        };
        let why: FailureText = b"connection refused".to_vec().try_into().unwrap();
        let unhealthy = WorkloadResult::Unhealthy(why.clone());
        // Only a health check can be unhealthy.
        assert_noop!(
            Deployments::report_deployment(
                RuntimeOrigin::signed(account),
                id,
                0,
                report(unhealthy.clone(), WorkloadResult::Ok)
            ),
            Error::<Test>::ReportDoesNotMatchSpec
        );
        let unhealthy_event = Event::WorkloadUnhealthy {
            contract: id,
            workload: wname("vm-health"),
            reason: why.clone(),
        };
        let count = |e: &Event<Test>| events().iter().filter(|x| *x == e).count();
        for _ in 0..2 {
            assert_ok!(Deployments::report_deployment(
                RuntimeOrigin::signed(account),
                id,
                0,
                report(WorkloadResult::Ok, unhealthy.clone())
            ));
            assert_eq!(state(id), ContractState::Deployed);
        }
        // Announced when it turns unhealthy, not again while it stays so.
        assert_eq!(count(&unhealthy_event), 1);
        assert_eq!(
            Reports::<Test>::get(id).unwrap().workloads[1].result,
            unhealthy
        );
        assert_ok!(Deployments::report_deployment(
            RuntimeOrigin::signed(account),
            id,
            0,
            report(WorkloadResult::Ok, WorkloadResult::Ok)
        ));
        let recovered = Event::WorkloadRecovered {
            contract: id,
            workload: wname("vm-health"),
        };
        assert_eq!(count(&recovered), 1);
        assert_eq!(state(id), ContractState::Deployed);
        // A failure of the VM itself still fails the contract.
        assert_ok!(Deployments::report_deployment(
            RuntimeOrigin::signed(account),
            id,
            0,
            report(WorkloadResult::Error(why.clone()), unhealthy)
        ));
        assert!(matches!(state(id), ContractState::Failed(_)));
        assert_eq!(count(&unhealthy_event), 2);
    })
}

#[test]
fn billing_sets_the_grace_period_and_cancels_out_of_funds() {
    run_test(|| {
        let (node, account) = big_node();
        let s = spec(0, 2, 1);
        let id = create(A, node, s.clone(), &[(A, 1, false)], 1);
        let info = Deployments::contract_billing_info(id).unwrap();
        assert_eq!(info.owner, A);
        assert_eq!(info.required, s.required_resources());
        assert_eq!(info.activated_at, 1);
        assert_ok!(Deployments::report_deployment(
            RuntimeOrigin::signed(account),
            id,
            0,
            ok_report(&s)
        ));

        assert_ok!(Deployments::set_grace_period(id, true));
        assert_eq!(state(id), ContractState::GracePeriod);
        // A report does not end the grace period; an update is refused.
        assert_ok!(Deployments::report_deployment(
            RuntimeOrigin::signed(account),
            id,
            0,
            ok_report(&s)
        ));
        assert_eq!(state(id), ContractState::GracePeriod);
        assert_noop!(
            Deployments::propose_update(RuntimeOrigin::signed(A), id, Box::new(spec(1, 2, 1))),
            Error::<Test>::InGracePeriod
        );
        assert_ok!(Deployments::set_grace_period(id, false));
        assert_eq!(state(id), ContractState::Deployed);

        assert_ok!(Deployments::set_grace_period(id, true));
        assert_ok!(Deployments::cancel_out_of_funds(id));
        assert!(!Contracts::<Test>::contains_key(id));
        assert_eq!(reserved(node), Resources::zero());
        assert!(events().contains(&Event::ContractCancelled {
            contract: id,
            node,
            cause: CancelCause::OutOfFunds
        }));

        let pending = create(A, node, spec(0, 1, 0), &[(A, 1, false), (B, 1, false)], 2);
        assert_eq!(Deployments::contract_billing_info(pending), None);
        assert_noop!(
            Deployments::set_grace_period(pending, true),
            Error::<Test>::NotActivated
        );
    })
}

#[test]
fn queries_give_the_node_its_desired_state() {
    run_test(|| {
        let (node, _) = big_node();
        let (other, _) = big_node();
        let a = create(A, node, spec(0, 1, 1), &[(A, 1, false)], 1);
        let pending = create(A, node, spec(0, 1, 0), &[(A, 1, false), (B, 1, false)], 2);
        let b = create(B, node, spec(0, 2, 0), &[(B, 1, false)], 1);
        create(B, other, spec(0, 1, 0), &[(B, 1, false)], 1);

        let desired = Deployments::contracts_of_node(node);
        assert_eq!(
            desired.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            vec![a, b]
        );
        assert_eq!(desired[0].1.spec, spec(0, 1, 1));
        assert_eq!(desired[0].1.spec_hash, spec(0, 1, 1).hash());
        assert_eq!(desired[0].1.public_ips.len(), 1);
        assert_eq!(desired[0].1.public_ips[0].0, wname("ip0"));

        let mine = Deployments::contracts_of_owner(&A);
        assert_eq!(
            mine.iter().map(|s| s.contract).collect::<Vec<_>>(),
            vec![a, pending]
        );
        assert_eq!(mine[1].state, ContractState::PendingApproval);
        assert_eq!(mine[1].active, None);
        assert_eq!(mine[1].pending_proposal, Some(spec(0, 1, 0).hash()));
        assert_eq!(mine[0].active, Some((spec(0, 1, 1).hash(), 0)));
    })
}

#[test]
fn the_worst_case_spec_is_valid_and_accepted() {
    run_test(|| {
        let worst = worst_case::spec(0);
        assert_eq!(worst.validate(), Ok(()));
        assert_eq!(worst_case::spec(1).validate(), Ok(()));
        let size = worst.encoded_size();
        println!(
            "worst-case spec: {size} bytes encoded (bound {}), deposit {}",
            DeploymentSpec::max_encoded_len(),
            Deployments::deposit_for(&worst, true).unwrap()
        );
        assert!(size > 100 * 1024);
        let (node, account) =
            online_node(Resources::new(64, 64 * GIB, 1024 * GIB, 0), MAX_PUBLIC_IPV4);
        let id = create(A, node, worst.clone(), &[(A, 1, false)], 1);
        assert_eq!(state(id), ContractState::Active);
        assert_ok!(Deployments::propose_update(
            RuntimeOrigin::signed(A),
            id,
            Box::new(worst_case::spec(1))
        ));
        assert_eq!(
            Contracts::<Test>::get(id).unwrap().public_ips.len() as u32,
            MAX_PUBLIC_IPV4
        );
        assert_ok!(Deployments::report_deployment(
            RuntimeOrigin::signed(account),
            id,
            1,
            ok_report(&worst_case::spec(1))
        ));
    })
}

mod random_sequences {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Create {
            owner: u64,
            node: usize,
            vcpus: u32,
            ips: u32,
            others: u8,
            threshold: u32,
            required: bool,
        },
        Approve {
            who: u64,
            contract: u64,
            stale: bool,
        },
        Reject {
            who: u64,
            contract: u64,
        },
        Update {
            who: u64,
            contract: u64,
            vcpus: u32,
            ips: u32,
        },
        Cancel {
            who: u64,
            contract: u64,
        },
        Report {
            contract: u64,
            fail: bool,
        },
        Grace {
            contract: u64,
            on: bool,
        },
        OutOfFunds {
            contract: u64,
        },
        Advance {
            blocks: u64,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        let who = 1u64..=4;
        let contract = 1u64..=8;
        prop_oneof![
            (
                1u64..=4,
                0usize..2,
                1u32..=6,
                0u32..=3,
                0u8..=3,
                1u32..=4,
                any::<bool>()
            )
                .prop_map(|(owner, node, vcpus, ips, others, threshold, required)| {
                    Op::Create {
                        owner,
                        node,
                        vcpus,
                        ips,
                        others,
                        threshold,
                        required,
                    }
                }),
            (who.clone(), contract.clone(), any::<bool>()).prop_map(|(who, contract, stale)| {
                Op::Approve {
                    who,
                    contract,
                    stale,
                }
            }),
            (who.clone(), contract.clone())
                .prop_map(|(who, contract)| Op::Reject { who, contract }),
            (who.clone(), contract.clone(), 1u32..=6, 0u32..=3).prop_map(
                |(who, contract, vcpus, ips)| Op::Update {
                    who,
                    contract,
                    vcpus,
                    ips
                }
            ),
            (who, contract.clone()).prop_map(|(who, contract)| Op::Cancel { who, contract }),
            (contract.clone(), any::<bool>())
                .prop_map(|(contract, fail)| Op::Report { contract, fail }),
            (contract.clone(), any::<bool>()).prop_map(|(contract, on)| Op::Grace { contract, on }),
            contract.prop_map(|contract| Op::OutOfFunds { contract }),
            (1u64..=6).prop_map(|blocks| Op::Advance { blocks }),
        ]
    }

    fn apply(op: &Op, nodes: &[(NodeId, u64)]) {
        // Errors are expected; each call is atomic, so state must stay consistent either way.
        let _ = match op.clone() {
            Op::Create {
                owner,
                node,
                vcpus,
                ips,
                others,
                threshold,
                required,
            } => {
                let mut list = vec![(owner, 1, false)];
                for o in (1..=4u64).filter(|o| *o != owner).take(others as usize) {
                    list.push((o, 1, required && o % 2 == 0));
                }
                Deployments::create(
                    RuntimeOrigin::signed(owner),
                    nodes[node].0,
                    Box::new(spec(0, vcpus, ips)),
                    signers(&list),
                    threshold,
                )
            }
            Op::Approve {
                who,
                contract,
                stale,
            } => {
                let hash = match Proposals::<Test>::get(contract) {
                    Some(p) if !stale => p.hash,
                    _ => [7; 32],
                };
                Deployments::approve(RuntimeOrigin::signed(who), contract, hash)
            }
            Op::Reject { who, contract } => {
                let hash = Proposals::<Test>::get(contract)
                    .map(|p| p.hash)
                    .unwrap_or_default();
                Deployments::reject(RuntimeOrigin::signed(who), contract, hash)
            }
            Op::Update {
                who,
                contract,
                vcpus,
                ips,
            } => {
                let version = Contracts::<Test>::get(contract)
                    .and_then(|c| c.active)
                    .map(|a| a.version + 1)
                    .unwrap_or(1);
                let names: Vec<String> = (0..ips)
                    .map(|i| format!("ip{}", (i + version) % 4))
                    .collect();
                Deployments::propose_update(
                    RuntimeOrigin::signed(who),
                    contract,
                    Box::new(spec_with_ip_names(version, vcpus, &names)),
                )
            }
            Op::Cancel { who, contract } => {
                Deployments::propose_cancel(RuntimeOrigin::signed(who), contract)
            }
            Op::Report { contract, fail } => {
                let Some(c) = Contracts::<Test>::get(contract) else {
                    return;
                };
                let Some(s) = ActiveSpecs::<Test>::get(contract) else {
                    return;
                };
                let mut report = ok_report(&s);
                if fail {
                    report[0].result = WorkloadResult::Error(Default::default());
                }
                let node_account = pallet_grid::Nodes::<Test>::get(c.node).unwrap().account;
                Deployments::report_deployment(
                    RuntimeOrigin::signed(node_account),
                    contract,
                    s.version,
                    report,
                )
            }
            Op::Grace { contract, on } => Deployments::set_grace_period(contract, on),
            Op::OutOfFunds { contract } => Deployments::cancel_out_of_funds(contract),
            Op::Advance { blocks } => {
                run_to_block(System::block_number() + blocks);
                Ok(())
            }
        };
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]
        #[test]
        fn random_call_sequences_keep_every_invariant(ops in proptest::collection::vec(op(), 1..40)) {
            new_test_ext().execute_with(|| {
                let nodes = vec![
                    online_node(Resources::new(8, 64 * GIB, 1024 * GIB, 0), 3),
                    online_node(Resources::new(4, 8 * GIB, 100 * GIB, 0), 1),
                ];
                for op in &ops {
                    frame_support::storage::with_storage_layer(|| -> Result<(), sp_runtime::DispatchError> {
                        apply(op, &nodes);
                        Ok(())
                    }).unwrap();
                    check_invariants();
                }
                // Cancelling everything leaves nothing behind.
                for (id, c) in Contracts::<Test>::iter().collect::<Vec<_>>() {
                    let _ = c;
                    assert_ok!(Deployments::cancel_out_of_funds(id));
                }
                check_invariants();
                for (node, _) in &nodes {
                    assert_eq!(reserved(*node), Resources::zero());
                }
                assert_eq!(Balances::total_balance_on_hold(&A) + Balances::total_balance_on_hold(&B), 0);
            });
        }
    }
}

#[test]
fn the_v1_to_v2_migration_moves_expiry_slots_into_the_queue_in_block_order() {
    use frame_support::traits::{GetStorageVersion, StorageVersion};
    run_test(|| {
        let (node, _) = big_node();
        let two = &[(A, 1, false), (B, 1, false)];
        let late = create(A, node, spec(0, 1, 0), two, 2);
        run_to_block(3);
        let early = create(A, node, spec(0, 1, 0), two, 2);
        let pushed = create(A, node, spec(0, 1, 0), two, 2);
        // As version 1 kept them: per-block slots (here written back from the queue).
        let _ = ExpiryQueue::<Test>::clear(u32::MAX, None);
        ExpiryQueueEnds::<Test>::kill();
        let slot = |ids: Vec<ContractId>| frame_support::BoundedVec::truncate_from(ids);
        crate::migrations::ProposalExpiries::<Test>::insert(3 + TTL, slot(vec![early]));
        crate::migrations::ProposalExpiries::<Test>::insert(1 + TTL, slot(vec![late]));
        // Version 1 pushed this one 7 blocks past its TTL (full slots before it).
        Proposals::<Test>::mutate(pushed, |p| p.as_mut().unwrap().expires_at = 3 + TTL + 7);
        crate::migrations::ProposalExpiries::<Test>::insert(3 + TTL + 7, slot(vec![pushed]));
        StorageVersion::new(1).put::<Deployments>();

        upgrade::<crate::migrations::V1ToV2<Test>>();

        assert_eq!(Deployments::on_chain_storage_version(), 2);
        assert_eq!(
            crate::migrations::ProposalExpiries::<Test>::iter().count(),
            0
        );
        assert_eq!(ExpiryQueue::<Test>::get(0), Some((1 + TTL, late)));
        assert_eq!(ExpiryQueue::<Test>::get(1), Some((3 + TTL, early)));
        // It expires at the TTL from the upgrade block, so it cannot hold up later proposals.
        assert_eq!(ExpiryQueue::<Test>::get(2), Some((3 + TTL, pushed)));
        assert_eq!(Proposals::<Test>::get(pushed).unwrap().expires_at, 3 + TTL);
        Deployments::do_try_state().expect("consistent after the migration");
        run_to_block(4);
        let after = create(A, node, spec(0, 1, 0), two, 2);
        Deployments::do_try_state().expect("a new proposal queues in due order");
        run_to_block(3 + TTL);
        assert_eq!(Contracts::<Test>::iter().count(), 1);
        run_to_block(4 + TTL);
        assert!(Contracts::<Test>::get(after).is_none());
        assert_eq!(Contracts::<Test>::iter().count(), 0);
    })
}

#[test]
fn try_state_catches_a_grid_ledger_that_disagrees_with_the_contracts() {
    let corruptions: [fn(NodeId); 3] = [
        |node| {
            pallet_grid::Nodes::<Test>::mutate(node, |n| n.as_mut().unwrap().active_contracts += 1)
        },
        |node| pallet_grid::Nodes::<Test>::mutate(node, |n| n.as_mut().unwrap().reserved.cru += 1),
        |node| {
            let farm = pallet_grid::Nodes::<Test>::get(node).unwrap().farm_id;
            pallet_grid::Farms::<Test>::mutate(farm, |f| {
                for entry in f.as_mut().unwrap().public_ips.iter_mut() {
                    entry.assigned = None;
                }
            })
        },
    ];
    for corrupt in corruptions {
        new_test_ext().execute_with(|| {
            let (node, _) = big_node();
            // One signer: active at once, with a farm IP.
            create(A, node, spec(0, 2, 1), &[(A, 1, true)], 1);
            assert_ok!(Deployments::do_try_state());
            corrupt(node);
            assert!(Deployments::do_try_state().is_err());
        });
    }
}

/// Gives `node` a gateway domain through its farmer's public config.
fn set_domain(node: NodeId, domain: &str) {
    assert_ok!(Grid::set_node_public_config(
        RuntimeOrigin::signed(FARMER),
        node,
        Some(pallet_grid::PublicConfig {
            ipv4: None,
            ipv6: None,
            domain: Some(frame_support::BoundedVec::truncate_from(
                domain.as_bytes().to_vec(),
            )),
        })
    ));
}

/// Another online node in the farm of `node` (a domain belongs to one farm: a gateway pair).
fn big_node_beside(node: NodeId) -> NodeId {
    let first = pallet_grid::Nodes::<Test>::get(node).unwrap();
    let account = 1_000 + u64::from(pallet_grid::NextNodeId::<Test>::get());
    assert_ok!(Grid::authorize_node(
        RuntimeOrigin::signed(FARMER),
        first.farm_id,
        account
    ));
    let id = pallet_grid::NextNodeId::<Test>::get();
    assert_ok!(Grid::register_node(
        RuntimeOrigin::signed(account),
        first.farm_id,
        first.capacity,
        first.box_key,
        first.location,
        None,
        first.executor_version
    ));
    assert_ok!(Grid::heartbeat(RuntimeOrigin::signed(account)));
    id
}

/// A VM spec plus gateways serving `hosts` (a public backend each).
fn gateway_spec(version: u32, hosts: &[GatewayHost]) -> DeploymentSpec {
    let mut s = spec(version, 1, 0);
    for (i, host) in hosts.iter().enumerate() {
        s.workloads
            .try_push(Workload {
                name: wname(&format!("gw{i}")),
                kind: WorkloadKind::Gateway(GatewaySpec {
                    host: host.clone(),
                    network: None,
                    backends: vec![GatewayBackend::V4 {
                        ip: [198, 51, 100, 20],
                        port: 80,
                    }]
                    .try_into()
                    .unwrap(),
                    tls_passthrough: false,
                }),
            })
            .unwrap();
    }
    s
}

fn gw_name(s: &str) -> GatewayHost {
    GatewayHost::Name(GatewayName::try_from(s).unwrap())
}

fn gw_fqdn(s: &str) -> GatewayHost {
    GatewayHost::Fqdn(Fqdn::try_from(s).unwrap())
}

#[test]
fn gateway_names_are_unique_per_domain_and_live_as_long_as_their_contract() {
    run_test(|| {
        let (n1, _) = big_node();
        let n2 = big_node_beside(n1);
        let (bare, _) = big_node();
        // Two gateway nodes sharing one domain (a farm's gateway pair), one without a domain.
        set_domain(n1, "gw.example.com");
        set_domain(n2, "gw.example.com");
        let solo = &[(A, 1, false)];

        let first = create(A, n1, gateway_spec(0, &[gw_name("myapp")]), solo, 1);
        assert_eq!(
            Contracts::<Test>::get(first)
                .unwrap()
                .active
                .unwrap()
                .required
                .gateway_hosts,
            1
        );
        // The same name under the same domain, even on the other node: taken.
        let taken = Deployments::create(
            RuntimeOrigin::signed(B),
            n2,
            Box::new(gateway_spec(0, &[gw_name("myapp")])),
            signers(&[(B, 1, false)]),
            1,
        );
        assert_eq!(taken, Err(Error::<Test>::GatewayHostTaken.into()));
        // A name needs a node with a domain.
        let no_domain = Deployments::create(
            RuntimeOrigin::signed(B),
            bare,
            Box::new(gateway_spec(0, &[gw_name("other")])),
            signers(&[(B, 1, false)]),
            1,
        );
        assert_eq!(no_domain, Err(Error::<Test>::NodeHasNoGatewayDomain.into()));
        // The FQDN a name spells under the node's domain is that name: no takeover by FQDN.
        let spelled = Deployments::create(
            RuntimeOrigin::signed(B),
            n1,
            Box::new(gateway_spec(0, &[gw_fqdn("myapp.gw.example.com")])),
            signers(&[(B, 1, false)]),
            1,
        );
        assert_eq!(spelled, Err(Error::<Test>::GatewayHostTaken.into()));
        // Nor may one spec serve a name and the FQDN it spells twice.
        let twice = Deployments::create(
            RuntimeOrigin::signed(B),
            n1,
            Box::new(gateway_spec(
                0,
                &[gw_name("twice"), gw_fqdn("twice.gw.example.com")],
            )),
            signers(&[(B, 1, false)]),
            1,
        );
        assert_eq!(
            twice,
            Err(Error::<Test>::InvalidSpec(SpecError::DuplicateGatewayHost).into())
        );
        // An FQDN is unique per node: another node may serve it too (its DNS decides).
        let shop = create(
            B,
            n1,
            gateway_spec(0, &[gw_fqdn("shop.example.org")]),
            &[(B, 1, false)],
            1,
        );
        create(
            C,
            n2,
            gateway_spec(0, &[gw_fqdn("shop.example.org")]),
            &[(C, 1, false)],
            1,
        );
        let again = Deployments::create(
            RuntimeOrigin::signed(C),
            n1,
            Box::new(gateway_spec(0, &[gw_fqdn("shop.example.org")])),
            signers(&[(C, 1, false)]),
            1,
        );
        assert_eq!(again, Err(Error::<Test>::GatewayHostTaken.into()));
        // An FQDN on a node without a domain is fine.
        create(
            C,
            bare,
            gateway_spec(0, &[gw_fqdn("c.example.net")]),
            &[(C, 1, false)],
            1,
        );

        // An update that drops the name frees it; another deployer takes it at once.
        assert_ok!(Deployments::propose_update(
            RuntimeOrigin::signed(A),
            first,
            Box::new(gateway_spec(1, &[]))
        ));
        assert_eq!(ContractGatewayHosts::<Test>::get(first), None);
        let second = create(
            B,
            n2,
            gateway_spec(0, &[gw_name("myapp")]),
            &[(B, 1, false)],
            1,
        );
        // Ending the contract frees its names too.
        assert_ok!(Deployments::propose_cancel(
            RuntimeOrigin::signed(B),
            second
        ));
        assert_ok!(Deployments::propose_cancel(RuntimeOrigin::signed(B), shop));
        create(
            D,
            n1,
            gateway_spec(0, &[gw_name("myapp"), gw_fqdn("shop.example.org")]),
            &[(D, 1, false)],
            1,
        );
        assert_eq!(GatewayHosts::<Test>::iter().count(), 4);
    });
}

#[test]
fn a_failed_fqdn_is_freed_on_its_node_and_names_stay_held() {
    run_test(|| {
        let (node, account) = big_node();
        set_domain(node, "gw.example.com");
        let hosts = [
            gw_name("myapp"),
            gw_fqdn("shop.example.org"),
            gw_fqdn("spelled.gw.example.com"),
        ];
        let s = gateway_spec(0, &hosts);
        let id = create(A, node, s.clone(), &[(A, 1, false)], 1);
        assert_eq!(ContractGatewayHosts::<Test>::get(id).unwrap().len(), 3);
        let fail = |report: &mut WorkloadReports, workload: &str| {
            let entry = report
                .iter_mut()
                .find(|r| r.name == wname(workload))
                .unwrap();
            entry.result = WorkloadResult::Error(b"points elsewhere".to_vec().try_into().unwrap());
        };
        // The name and the FQDN spelling a name fail: both stay held (the node can serve them).
        let mut report = ok_report(&s);
        fail(&mut report, "gw0");
        fail(&mut report, "gw2");
        assert_ok!(Deployments::report_deployment(
            RuntimeOrigin::signed(account),
            id,
            0,
            report
        ));
        assert_eq!(ContractGatewayHosts::<Test>::get(id).unwrap().len(), 3);
        let taken = Deployments::create(
            RuntimeOrigin::signed(B),
            node,
            Box::new(gateway_spec(0, &[gw_fqdn("shop.example.org")])),
            signers(&[(B, 1, false)]),
            1,
        );
        assert_eq!(taken, Err(Error::<Test>::GatewayHostTaken.into()));
        // The deployer's own domain fails its check on this node: freed, and its owner takes it.
        let mut report = ok_report(&s);
        fail(&mut report, "gw1");
        assert_ok!(Deployments::report_deployment(
            RuntimeOrigin::signed(account),
            id,
            0,
            report.clone()
        ));
        System::assert_has_event(
            Event::GatewayFqdnFreed {
                contract: id,
                workload: wname("gw1"),
            }
            .into(),
        );
        assert_eq!(ContractGatewayHosts::<Test>::get(id).unwrap().len(), 2);
        let owner = create(
            B,
            node,
            gateway_spec(0, &[gw_fqdn("shop.example.org")]),
            &[(B, 1, false)],
            1,
        );
        // A repeated failure report frees nothing of the new holder's.
        assert_ok!(Deployments::report_deployment(
            RuntimeOrigin::signed(account),
            id,
            0,
            report
        ));
        assert_eq!(ContractGatewayHosts::<Test>::get(owner).unwrap().len(), 1);
        assert_eq!(GatewayHosts::<Test>::iter().count(), 3);
        // Updating back to the same spec claims it again: taken now.
        assert_noop!(
            Deployments::propose_update(
                RuntimeOrigin::signed(A),
                id,
                Box::new(gateway_spec(1, &hosts))
            ),
            Error::<Test>::GatewayHostTaken
        );
        assert_ok!(Deployments::propose_cancel(RuntimeOrigin::signed(A), id));
        assert_eq!(GatewayHosts::<Test>::iter().count(), 1);
    });
}

#[test]
fn a_name_taken_while_a_proposal_waits_fails_that_proposal_at_approval_not_the_contract() {
    run_test(|| {
        let (node, _) = big_node();
        set_domain(node, "gw.example.com");
        let two = &[(A, 1, false), (B, 1, false)];
        let waiting = create(A, node, gateway_spec(0, &[gw_name("shop")]), two, 2);
        // Someone else claims the name first.
        create(
            C,
            node,
            gateway_spec(0, &[gw_name("shop")]),
            &[(C, 1, false)],
            1,
        );
        let hash = gateway_spec(0, &[gw_name("shop")]).hash();
        assert_noop!(
            Deployments::approve(RuntimeOrigin::signed(B), waiting, hash),
            Error::<Test>::GatewayHostTaken
        );
        assert_eq!(state(waiting), ContractState::PendingApproval);
        assert!(Proposals::<Test>::contains_key(waiting));
    });
}

#[test]
fn the_v2_to_v3_migration_gives_every_contract_a_gateway_host_count() {
    use crate::migrations::{ActiveSpecInfoV2, ContractV2};
    use frame_support::traits::{GetStorageVersion, StorageVersion};
    use zos_primitives::spec::RequiredResourcesBeforeGateways;
    run_test(|| {
        let (node, _) = big_node();
        let active = create(A, node, spec(0, 2, 1), &[(A, 1, false)], 1);
        let pending = create(A, node, spec(0, 1, 0), &[(A, 1, false), (B, 1, false)], 2);
        let before: Vec<_> = [active, pending]
            .iter()
            .map(|id| (*id, Contracts::<Test>::get(id).unwrap()))
            .collect();
        // As version 2 stored them.
        for (id, c) in &before {
            let old = ContractV2 {
                owner: c.owner,
                node: c.node,
                signers: c.signers.clone(),
                threshold: c.threshold,
                state: c.state.clone(),
                active: c.active.map(|a| ActiveSpecInfoV2 {
                    hash: a.hash,
                    version: a.version,
                    required: RequiredResourcesBeforeGateways {
                        resources: a.required.resources,
                        public_ipv4: a.required.public_ipv4,
                    },
                }),
                public_ips: c.public_ips.clone(),
                deposit: c.deposit,
                created_at: c.created_at,
                activated_at: c.activated_at,
            };
            frame_support::storage::unhashed::put(&Contracts::<Test>::hashed_key_for(id), &old);
        }
        assert!(
            Contracts::<Test>::try_get(active).is_err(),
            "the old layout does not decode"
        );
        StorageVersion::new(2).put::<Deployments>();

        upgrade::<crate::migrations::V2ToV3<Test>>();

        assert_eq!(Deployments::on_chain_storage_version(), 3);
        for (id, c) in before {
            assert_eq!(Contracts::<Test>::get(id).unwrap(), c);
        }
    });
}

#[test]
fn the_v3_to_v4_migration_re_encodes_specs_with_the_overlay_off_and_follows_their_new_hashes() {
    use crate::migrations::{DeploymentSpecV3, ProposalActionV3, ProposalV3};
    use frame_support::{
        storage::unhashed,
        traits::{fungible::MutateHold, tokens::Precision, GetStorageVersion, StorageVersion},
    };
    /// `spec` as version 3 stored it, its hash then, and the deposit it needed less.
    fn v3(spec: &DeploymentSpec) -> (DeploymentSpecV3, SpecHash, u64) {
        let old = DeploymentSpecV3::downgraded(spec);
        let less = (spec.encoded_size() - old.encoded_size()) as u64 * DEPOSIT_PER_BYTE;
        let hash = sp_crypto_hashing::blake2_256(&old.encode());
        (old, hash, less)
    }
    run_test(|| {
        let (node, _) = big_node();
        let two = &[(A, 1, false), (B, 1, false)];
        // Active with an update waiting, active with a cancellation waiting, never activated.
        let updating = create(A, node, spec(0, 1, 1), two, 2);
        let cancelling = create(A, node, spec(0, 2, 0), two, 2);
        for id in [updating, cancelling] {
            let hash = Proposals::<Test>::get(id).unwrap().hash;
            assert_ok!(Deployments::approve(RuntimeOrigin::signed(B), id, hash));
        }
        assert_ok!(Deployments::propose_update(
            RuntimeOrigin::signed(B),
            updating,
            Box::new(spec(1, 3, 1))
        ));
        assert_ok!(Deployments::propose_cancel(
            RuntimeOrigin::signed(A),
            cancelling
        ));
        let pending = create(A, node, spec(0, 1, 0), two, 2);
        let ids = [updating, cancelling, pending];
        let before: Vec<_> = ids
            .iter()
            .map(|id| {
                (
                    Contracts::<Test>::get(id).unwrap(),
                    ActiveSpecs::<Test>::get(id),
                    Proposals::<Test>::get(id).unwrap(),
                )
            })
            .collect();
        let held_before = held(A);

        // As version 3 stored them: shorter VMs, hashes of that encoding, deposits for it.
        for id in ids {
            let mut c = Contracts::<Test>::get(id).unwrap();
            if let Some(spec) = ActiveSpecs::<Test>::get(id) {
                let (old, hash, less) = v3(&spec);
                unhashed::put_raw(&ActiveSpecs::<Test>::hashed_key_for(id), &old.encode());
                c.active.as_mut().unwrap().hash = hash;
                c.deposit -= less;
            }
            let p = Proposals::<Test>::get(id).unwrap();
            let (action, hash, deposit) = match &p.action {
                ProposalAction::Deploy(spec) => {
                    let (old, hash, less) = v3(spec);
                    c.deposit -= less;
                    // A creation proposal's spec is paid for by the contract's deposit alone.
                    let deposit = if c.active.is_some() {
                        p.deposit - less
                    } else {
                        p.deposit
                    };
                    (ProposalActionV3::Deploy(old), hash, deposit)
                }
                ProposalAction::Cancel => (ProposalActionV3::Cancel, p.hash, p.deposit),
            };
            let old = ProposalV3::<Test> {
                action,
                hash,
                proposer: p.proposer,
                approvals: p.approvals,
                expires_at: p.expires_at,
                deposit,
            };
            unhashed::put_raw(&Proposals::<Test>::hashed_key_for(id), &old.encode());
            let less = Contracts::<Test>::get(id).unwrap().deposit - c.deposit;
            assert_ok!(Balances::release(
                &HoldReason::ContractDeposit.into(),
                &A,
                less,
                Precision::Exact
            ));
            Contracts::<Test>::insert(id, c);
        }
        assert!(held(A) < held_before);
        assert!(
            ActiveSpecs::<Test>::try_get(updating).is_err()
                && Proposals::<Test>::try_get(updating).is_err(),
            "the old layout does not decode"
        );
        StorageVersion::new(3).put::<Deployments>();

        upgrade::<crate::migrations::V3ToV4<Test>>();

        assert_eq!(Deployments::on_chain_storage_version(), 4);
        // Specs, hashes, approvals and deposits are back to what the pallet made of the same
        // calls with the current layout.
        for (id, (c, spec, p)) in ids.into_iter().zip(before) {
            assert_eq!(Contracts::<Test>::get(id).unwrap(), c);
            assert_eq!(ActiveSpecs::<Test>::get(id), spec);
            assert_eq!(Proposals::<Test>::get(id).unwrap(), p);
        }
        assert_eq!(held(A), held_before);
        let specs: Vec<DeploymentSpec> = ActiveSpecs::<Test>::iter_values()
            .chain(
                Proposals::<Test>::iter_values().filter_map(|p| match p.action {
                    ProposalAction::Deploy(s) => Some(s),
                    ProposalAction::Cancel => None,
                }),
            )
            .collect();
        assert_eq!(specs.len(), 4);
        for s in &specs {
            for w in s.workloads.iter() {
                if let WorkloadKind::Vm(vm) = &w.kind {
                    assert!(!vm.overlay);
                }
            }
        }
        let active = Contracts::<Test>::get(updating).unwrap().active.unwrap();
        assert_eq!(active.hash, spec(0, 1, 1).hash());
        assert_eq!(
            Proposals::<Test>::get(updating).unwrap().hash,
            spec(1, 3, 1).hash()
        );
        assert_eq!(
            Proposals::<Test>::get(cancelling).unwrap().hash,
            Deployments::cancel_hash(cancelling, 0)
        );
        Deployments::do_try_state().expect("consistent after the migration");
        // The kept approval counts: the second one passes the update under its new hash.
        assert_ok!(Deployments::approve(
            RuntimeOrigin::signed(A),
            updating,
            spec(1, 3, 1).hash()
        ));
        assert_eq!(
            Contracts::<Test>::get(updating)
                .unwrap()
                .active
                .unwrap()
                .version,
            1
        );
    });
}
