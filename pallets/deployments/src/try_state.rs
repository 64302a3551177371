//! Storage invariants, checked by `try_state` and after every test.

use super::*;

#[cfg(any(feature = "try-runtime", feature = "std"))]
impl<T: Config> Pallet<T> {
    /// Checks every invariant of the pallet's storage; used by `try_state` and after each test.
    pub fn do_try_state() -> Result<(), sp_runtime::TryRuntimeError> {
        use alloc::collections::{btree_map::BTreeMap, btree_set::BTreeSet};
        use frame_support::traits::fungible::InspectHold;
        let next_id = NextContractId::<T>::get();
        let mut reserved: BTreeMap<NodeId, Resources> = BTreeMap::new();
        let mut deposits: BTreeMap<T::AccountId, BalanceOf<T>> = BTreeMap::new();
        let mut contract_count: usize = 0;
        // Activated contracts per node, to compare with the grid's ledger.
        let mut activated: BTreeMap<NodeId, u32> = BTreeMap::new();

        for (id, c) in Contracts::<T>::iter() {
            contract_count = contract_count.saturating_add(1);
            ensure!(id < next_id, "contract id not below NextContractId");
            ensure!(
                ContractsByNode::<T>::contains_key(c.node, id),
                "contract missing from node index"
            );
            ensure!(
                ContractsByOwner::<T>::contains_key(&c.owner, id),
                "contract missing from owner index"
            );
            Self::check_signers(&c.owner, &c.signers, c.threshold)
                .map_err(|_| "stored signer set invalid")?;
            let held = deposits.entry(c.owner.clone()).or_insert_with(Zero::zero);
            *held = held.saturating_add(c.deposit);

            let proposal = Proposals::<T>::get(id);
            match (&c.active, ActiveSpecs::<T>::get(id)) {
                (None, None) => {
                    ensure!(
                        c.state == ContractState::PendingApproval,
                        "inactive contract not pending"
                    );
                    ensure!(c.public_ips.is_empty(), "inactive contract holds IPs");
                    let Some(ProposalAction::Deploy(spec)) = proposal.as_ref().map(|p| &p.action)
                    else {
                        return Err("pending contract without a creation proposal".into());
                    };
                    let deposit = Self::deposit_for(spec, true).map_err(|_| "deposit overflow")?;
                    ensure!(
                        c.deposit == deposit,
                        "pending contract deposit differs from its spec"
                    );
                }
                (Some(active), Some(spec)) => {
                    ensure!(
                        c.state != ContractState::PendingApproval,
                        "activated contract pending"
                    );
                    ensure!(spec.hash() == active.hash, "active spec hash differs");
                    ensure!(
                        spec.version == active.version,
                        "active spec version differs"
                    );
                    ensure!(
                        spec.required_resources() == active.required,
                        "stored requirement stale"
                    );
                    let names: Vec<&WorkloadName> = spec.public_ipv4_workloads().collect();
                    ensure!(
                        c.public_ips.len() == names.len()
                            && c.public_ips.iter().zip(names).all(|((n, _), w)| n == w),
                        "assigned IPs differ from the spec's public IPv4 workloads"
                    );
                    // Across pallets: the grid holds what this pallet thinks it assigned.
                    let mut held = T::Grid::assigned_public_ips(c.node, id);
                    let mut assigned: Vec<[u8; 4]> =
                        c.public_ips.iter().map(|(_, ip)| ip.ip.ip).collect();
                    held.sort();
                    assigned.sort();
                    ensure!(
                        held == assigned,
                        "the farm's IP assignments differ from the contract's public IPs"
                    );
                    let count = activated.entry(c.node).or_insert(0);
                    *count = count.saturating_add(1);
                    let total = reserved.entry(c.node).or_insert_with(Resources::zero);
                    *total = total
                        .checked_add(&active.required.resources)
                        .ok_or("reserved sum overflows")?;
                    ensure!(
                        c.activated_at.is_some(),
                        "activated contract without activation block"
                    );
                    let deposit = Self::deposit_for(&spec, true).map_err(|_| "deposit overflow")?;
                    let pending = proposal
                        .as_ref()
                        .map(|p| p.deposit)
                        .unwrap_or_else(Zero::zero);
                    ensure!(
                        c.deposit == deposit.saturating_add(pending),
                        "contract deposit differs from its specs"
                    );
                }
                _ => return Err("active info and active spec disagree".into()),
            }
            if let Some(report) = Reports::<T>::get(id) {
                ensure!(
                    c.active.map(|a| a.version) == Some(report.version),
                    "report for another version"
                );
            }
        }

        for (node, total) in NodeReserved::<T>::iter() {
            ensure!(!total.is_zero(), "zero reservation entry kept");
            ensure!(
                reserved.get(&node).copied().unwrap_or_default() == total,
                "node reservation differs from the sum over its contracts"
            );
        }
        for (node, total) in reserved.iter() {
            ensure!(
                total.is_zero() || NodeReserved::<T>::get(node) == *total,
                "contracts reserve capacity the node ledger lacks"
            );
        }

        for (node, count) in activated.iter() {
            let ledger =
                T::Grid::node_ledger(*node).ok_or("an activated contract's node is gone")?;
            ensure!(
                ledger.active_contracts == *count,
                "the grid counts another number of active contracts on the node"
            );
            ensure!(
                ledger.reserved == NodeReserved::<T>::get(node),
                "the grid's reservation of a node differs from its contracts'"
            );
        }

        for (owner, total) in deposits {
            ensure!(
                T::Currency::balance_on_hold(&HoldReason::ContractDeposit.into(), &owner) == total,
                "held deposit differs from the owner's contracts"
            );
        }

        // The queue: contiguous, in due order; each pending proposal has its entry.
        let (head, tail) = ExpiryQueueEnds::<T>::get();
        ensure!(head <= tail, "expiry queue head past its tail");
        let mut scheduled: BTreeSet<(ContractId, BlockNumberFor<T>)> = BTreeSet::new();
        let mut previous_due = None;
        for seq in head..tail {
            let (due, id) = ExpiryQueue::<T>::get(seq).ok_or("a hole in the expiry queue")?;
            ensure!(
                previous_due.is_none_or(|p| p <= due),
                "expiry queue out of due order"
            );
            previous_due = Some(due);
            scheduled.insert((id, due));
        }
        ensure!(
            ExpiryQueue::<T>::iter().count() as u64 == tail - head,
            "expiry queue entries outside its range"
        );
        let mut proposal_count: usize = 0;
        for (id, p) in Proposals::<T>::iter() {
            proposal_count = proposal_count.saturating_add(1);
            let c = Contracts::<T>::get(id).ok_or("proposal of a missing contract")?;
            ensure!(
                scheduled.contains(&(id, p.expires_at)),
                "proposal never expires"
            );
            ensure!(!p.approvals.is_empty(), "proposal without approvals");
            for (i, a) in p.approvals.iter().enumerate() {
                ensure!(
                    c.signers.iter().any(|s| &s.account == a),
                    "approval by a non-signer"
                );
                ensure!(
                    !p.approvals.iter().take(i).any(|o| o == a),
                    "approval counted twice"
                );
            }
            ensure!(!Self::passes(&c, &p), "a passing proposal was not executed");
        }
        // One storage entry per contract: at most one pending proposal each.
        ensure!(
            proposal_count <= contract_count,
            "more proposals than contracts"
        );

        for (node, id, ()) in ContractsByNode::<T>::iter() {
            let c = Contracts::<T>::get(id).ok_or("node index points at a missing contract")?;
            ensure!(
                c.node == node,
                "node index puts the contract on another node"
            );
        }
        for (owner, id, ()) in ContractsByOwner::<T>::iter() {
            let c = Contracts::<T>::get(id).ok_or("owner index points at a missing contract")?;
            ensure!(c.owner == owner, "owner index names another owner");
        }
        for (id, _) in ActiveSpecs::<T>::iter() {
            ensure!(
                Contracts::<T>::contains_key(id),
                "active spec of a missing contract"
            );
        }
        for (id, _) in Reports::<T>::iter() {
            ensure!(
                Contracts::<T>::contains_key(id),
                "report of a missing contract"
            );
        }
        // Gateway hosts: each claimed by exactly the contract whose list names it, and that
        // list is the hosts of its active spec.
        let mut listed: usize = 0;
        for (id, keys) in ContractGatewayHosts::<T>::iter() {
            ensure!(
                Contracts::<T>::contains_key(id),
                "gateway hosts of a missing contract"
            );
            let spec = ActiveSpecs::<T>::get(id).ok_or("gateway hosts of an inactive contract")?;
            ensure!(
                u32::try_from(keys.len()).ok() == Some(spec.required_resources().gateway_hosts),
                "a contract holds another number of gateway hosts than its spec has"
            );
            ensure!(
                keys.iter().all(|k| GatewayHosts::<T>::get(k) == Some(id)),
                "a contract's gateway host is claimed by another contract"
            );
            listed = listed.saturating_add(keys.len());
        }
        ensure!(
            GatewayHosts::<T>::iter().count() == listed,
            "a gateway host is claimed without its contract listing it"
        );
        Ok(())
    }
}
