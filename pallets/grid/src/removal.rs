//! Nodes leaving the grid: removal at once, or after a notice period (asked by the farm owner
//! or the node) or forced by governance, in bounded steps from `on_initialize`.
//!
//! A node with contracts is not removed in the call that asks for it: it gets a
//! [`NodeRemoval`] (no new contracts from then on) and an entry in the queue of its
//! [`RemovalKind`]. When the entry is due, `on_initialize` ends the node's contracts through
//! [`Config::Contracts`], at most [`Config::MaxContractsEndedPerBlock`] a block over all
//! nodes, and removes the node once none is left. Deadlines in a queue are a fixed number of
//! blocks after the block that queued them, so a queue is in due order and only its head is
//! looked at.

use super::*;
use frame_support::{defensive, weights::Weight};
use frame_system::pallet_prelude::BlockNumberFor;
use sp_runtime::Saturating;

/// Node entries of a farm one `force_remove_farm` reads: nodes whose forced removal is under way
/// are passed over without counting against [`MAX_NODES_FORCE_REMOVED`], up to this many.
pub(crate) const MAX_NODES_READ_FORCE_REMOVED: u32 = 4 * MAX_NODES_FORCE_REMOVED;

/// Weight of removing a node by force, or of scheduling its forced removal (`force_remove_node`,
/// `remove_dead_node`, each node of `force_remove_farm`).
pub(crate) fn forced_node_removal_weight<T: Config>() -> Weight {
    T::WeightInfo::force_remove_node()
        .saturating_add(deposits::deposits_weight::<T>(1))
        .saturating_add(T::DbWeight::get().writes(1))
        .saturating_add(T::OnNodeRemoved::on_node_removed_weight())
        .saturating_add(Pallet::<T>::domain_index_weight())
}

/// Worst case of one `force_remove_farm`: the most node entries read and nodes removed, or the
/// farm with a full pool and the most authorizations (a call does one or the other).
pub(crate) fn force_remove_farm_weight<T: Config>() -> Weight {
    let db = T::DbWeight::get();
    let nodes = forced_node_removal_weight::<T>()
        .saturating_mul(u64::from(MAX_NODES_FORCE_REMOVED))
        .saturating_add(db.reads(2u64.saturating_mul(u64::from(MAX_NODES_READ_FORCE_REMOVED))));
    let farm = T::WeightInfo::force_remove_farm(T::MaxIpsPerFarm::get()).saturating_add(
        deposits::deposits_weight::<T>(
            T::MaxIpsPerFarm::get()
                .saturating_add(1)
                .saturating_add(MAX_AUTHORIZATIONS_FORCE_REMOVED),
        ),
    );
    // The freeze, and the end of it when the farm goes.
    nodes.max(farm).saturating_add(db.reads_writes(2, 2))
}

impl<T: Config> Pallet<T> {
    /// One step of `force_remove_farm`: freezes the farm, then removes (or schedules the
    /// forced removal of) up to [`MAX_NODES_FORCE_REMOVED`] of its nodes; with none left,
    /// clears its authorizations and removes it.
    pub(crate) fn force_remove_farm_step(
        farm_id: FarmId,
        farm: Farm<T>,
    ) -> frame_support::dispatch::DispatchResultWithPostInfo {
        let db = T::DbWeight::get();
        let mut weight = db.reads_writes(2, 1);
        if !FarmsUnderRemoval::<T>::contains_key(farm_id) {
            FarmsUnderRemoval::<T>::insert(farm_id, frame_system::Pallet::<T>::block_number());
            weight.saturating_accrue(db.writes(1));
            Self::deposit_event(Event::FarmFrozen { farm_id });
        }
        if FarmNodeCount::<T>::get(farm_id) > 0 {
            let step = Self::force_remove_farm_nodes(farm_id)?;
            Self::deposit_event(Event::FarmNodesForceRemoved {
                farm_id,
                removed: step.removed,
                scheduled: step.scheduled,
            });
            let acted_on = step.removed.saturating_add(step.scheduled);
            return Ok(Some(
                weight
                    .saturating_add(db.reads(2u64.saturating_mul(u64::from(step.read))))
                    .saturating_add(
                        forced_node_removal_weight::<T>().saturating_mul(u64::from(acted_on)),
                    ),
            )
            .into());
        }
        // Without nodes no address is assigned (a try_state invariant).
        let (cleared, more) = Self::clear_farm_authorizations(farm_id);
        if more {
            Self::deposit_event(Event::FarmNodeAuthorizationsCleared { farm_id, cleared });
            return Ok(Some(
                weight
                    .saturating_add(T::WeightInfo::force_remove_farm(0))
                    .saturating_add(deposits::deposits_weight::<T>(
                        MAX_AUTHORIZATIONS_FORCE_REMOVED,
                    )),
            )
            .into());
        }
        let ips_released = Self::remove_farm_entries(farm_id, &farm);
        Self::deposit_event(Event::FarmForceRemoved {
            farm_id,
            ips_released,
        });
        let released = cleared.saturating_add(ips_released).saturating_add(1);
        Ok(Some(
            weight
                .saturating_add(T::WeightInfo::force_remove_farm(ips_released))
                .saturating_add(deposits::deposits_weight::<T>(released)),
        )
        .into())
    }

    /// Removes at once the farm's nodes without contracts and schedules the forced removal of
    /// the others, at most [`MAX_NODES_FORCE_REMOVED`] of them, reading at most
    /// [`MAX_NODES_READ_FORCE_REMOVED`] node entries. Nodes whose forced removal is under way
    /// are left to it and not counted (a later call passes them over until they are gone).
    fn force_remove_farm_nodes(farm_id: FarmId) -> Result<FarmNodesStep, DispatchError> {
        let node_ids: Vec<NodeId> = NodesByFarm::<T>::iter_key_prefix(farm_id)
            .take(MAX_NODES_READ_FORCE_REMOVED as usize)
            .collect();
        let mut step = FarmNodesStep::default();
        for node_id in node_ids {
            if step.removed.saturating_add(step.scheduled) >= MAX_NODES_FORCE_REMOVED {
                break;
            }
            step.read = step.read.saturating_add(1);
            let Some(node) = Nodes::<T>::get(node_id) else {
                // Only a broken index gets here: one stale entry must not block the removal.
                defensive!("a farm member is not a node");
                continue;
            };
            if node.active_contracts == 0 {
                Self::remove_node_now(node_id, node, None)?;
                step.removed = step.removed.saturating_add(1);
            } else if NodeRemovals::<T>::get(node_id).map(|r| r.kind) != Some(RemovalKind::Forced) {
                Self::schedule_removal(node_id, &node, RemovalKind::Forced, None);
                step.scheduled = step.scheduled.saturating_add(1);
            }
        }
        Ok(step)
    }

    /// `cancel_node_removal` signed by `who`.
    pub(crate) fn withdraw_removal(node_id: NodeId, who: T::AccountId) -> DispatchResult {
        let node = Nodes::<T>::get(node_id).ok_or(Error::<T>::NodeNotFound)?;
        Self::ensure_node_or_farm_owner(&node, &who)?;
        let removal = NodeRemovals::<T>::get(node_id).ok_or(Error::<T>::NoNodeRemoval)?;
        ensure!(
            removal.kind == RemovalKind::Notice,
            Error::<T>::NodeRemovalForced
        );
        // Else a node could put off its eviction forever, withdrawing each notice.
        ensure!(
            who != node.account || removal.requested_by.as_ref() == Some(&who),
            Error::<T>::RemovalRequestedByFarmOwner
        );
        ensure!(
            removal.due > frame_system::Pallet::<T>::block_number(),
            Error::<T>::NodeRemovalUnderWay
        );
        // Its queue entry no longer matches a removal and is skipped when reached.
        NodeRemovals::<T>::remove(node_id);
        Self::deposit_event(Event::NodeRemovalCancelled {
            node_id,
            cancelled_by: who,
        });
        Ok(())
    }

    /// `remove_dead_node` signed by `who`.
    pub(crate) fn remove_dead(node_id: NodeId, who: T::AccountId) -> DispatchResult {
        let node = Nodes::<T>::get(node_id).ok_or(Error::<T>::NodeNotFound)?;
        let silent_since = node
            .last_heartbeat
            .map(|hb| hb.block)
            .unwrap_or(node.registered_at);
        let now = frame_system::Pallet::<T>::block_number();
        ensure!(
            now >= sp_runtime::Saturating::saturating_add(
                silent_since,
                T::DeadNodeAfterBlocks::get()
            ),
            Error::<T>::NodeNotDead
        );
        // Only contracts are freed this way: an idle node (powered down, say) is its
        // farm's business.
        ensure!(
            node.active_contracts > 0,
            Error::<T>::DeadNodeHasNoContracts
        );
        ensure!(
            NodeRemovals::<T>::get(node_id).map(|r| r.kind) != Some(RemovalKind::Forced),
            Error::<T>::NodeRemovalPending
        );
        Self::remove_or_schedule(node_id, node, RemovalKind::Forced, Some(who))
    }

    /// Removes up to [`MAX_AUTHORIZATIONS_FORCE_REMOVED`] unused node authorizations of a
    /// farm, returning their deposits; returns how many, and whether more are left.
    pub(crate) fn clear_farm_authorizations(farm_id: FarmId) -> (u32, bool) {
        // Counted by hand (one more than the limit tells whether any are left), so the bound
        // holds whatever is in the storage overlay.
        let accounts: Vec<T::AccountId> = NodeAuthorizations::<T>::iter_key_prefix(farm_id)
            .take(MAX_AUTHORIZATIONS_FORCE_REMOVED as usize + 1)
            .collect();
        let more = accounts.len() > MAX_AUTHORIZATIONS_FORCE_REMOVED as usize;
        let mut cleared = 0u32;
        for account in accounts
            .into_iter()
            .take(MAX_AUTHORIZATIONS_FORCE_REMOVED as usize)
        {
            NodeAuthorizations::<T>::remove(farm_id, &account);
            Self::release_deposit(DepositItem::NodeAuthorization(farm_id, account));
            cleared = cleared.saturating_add(1);
        }
        (cleared, more)
    }

    /// Removes a node without contracts and every index entry pointing at it.
    pub(crate) fn remove_node_now(
        node_id: NodeId,
        node: Node<T>,
        removed_by: Option<T::AccountId>,
    ) -> DispatchResult {
        ensure!(
            node.active_contracts == 0,
            Error::<T>::NodeHasActiveContracts
        );
        ensure!(node.assigned_ips == 0, Error::<T>::NodeHasAssignedIps);
        Self::move_node_ips(node_id, node.farm_id, node.public_config.as_ref(), None)?;
        Self::release_deposit(DepositItem::Node(node_id));
        // A queued entry of a pending removal is skipped once this is gone.
        NodeRemovals::<T>::remove(node_id);
        NodeOverlays::<T>::remove(node_id);
        NodeIdByAccount::<T>::remove(&node.account);
        NodesByFarm::<T>::remove(node.farm_id, node_id);
        FarmNodeCount::<T>::mutate(node.farm_id, |n| *n = n.saturating_sub(1));
        Nodes::<T>::remove(node_id);
        T::OnNodeRemoved::on_node_removed(node_id, &node.account);
        Self::deposit_event(Event::NodeRemoved {
            node_id,
            farm_id: node.farm_id,
            account: node.account,
            removed_by,
        });
        Ok(())
    }

    /// Removes the node at once when it runs no contracts; else marks it leaving and queues
    /// its removal.
    pub(crate) fn remove_or_schedule(
        node_id: NodeId,
        node: Node<T>,
        kind: RemovalKind,
        requested_by: Option<T::AccountId>,
    ) -> DispatchResult {
        if node.active_contracts == 0 {
            return Self::remove_node_now(node_id, node, requested_by);
        }
        Self::schedule_removal(node_id, &node, kind, requested_by);
        Ok(())
    }

    /// Marks the node as leaving and queues its removal: after the notice period, or at once
    /// when forced. Replaces a pending removal (whose queue entry is then skipped).
    pub(crate) fn schedule_removal(
        node_id: NodeId,
        node: &Node<T>,
        kind: RemovalKind,
        requested_by: Option<T::AccountId>,
    ) {
        let now = frame_system::Pallet::<T>::block_number();
        let due = match kind {
            RemovalKind::Notice => now.saturating_add(T::NodeRemovalNoticeBlocks::get()),
            RemovalKind::Forced => now,
        };
        NodeRemovalQueueEnds::<T>::mutate(kind, |(_, tail)| {
            NodeRemovalQueue::<T>::insert(kind, *tail, (node_id, due));
            *tail = tail.saturating_add(1);
        });
        NodeRemovals::<T>::insert(
            node_id,
            NodeRemoval {
                kind,
                due,
                requested_by: requested_by.clone(),
            },
        );
        Self::deposit_event(Event::NodeRemovalScheduled {
            node_id,
            farm_id: node.farm_id,
            due,
            requested_by,
        });
    }

    /// Works through the due removals: ends contracts of the node at the head of each queue
    /// (forced first) within this block's budget, and removes each node that has none left.
    pub(crate) fn handle_removals(now: BlockNumberFor<T>) -> Weight {
        let db = T::DbWeight::get();
        let mut budget = T::MaxContractsEndedPerBlock::get();
        // Queue entries looked at, finished or skipped: bounded like the contracts.
        let mut steps = T::MaxContractsEndedPerBlock::get().saturating_add(2);
        let mut weight = Weight::zero();
        for kind in RemovalKind::ALL {
            let (first, tail) = NodeRemovalQueueEnds::<T>::get(kind);
            weight.saturating_accrue(db.reads(1));
            let mut head = first;
            while head < tail && steps > 0 {
                steps = steps.saturating_sub(1);
                weight.saturating_accrue(db.reads(2));
                let Some((node_id, due)) = NodeRemovalQueue::<T>::get(kind, head) else {
                    defensive!("a queued node removal is missing");
                    head = head.saturating_add(1);
                    continue;
                };
                if due > now {
                    break;
                }
                let current = NodeRemovals::<T>::get(node_id);
                if current.as_ref().map(|r| (r.kind, r.due)) != Some((kind, due)) {
                    // Removed at once meanwhile, or forced after a notice: out of date.
                    NodeRemovalQueue::<T>::remove(kind, head);
                    weight.saturating_accrue(db.writes(1));
                    head = head.saturating_add(1);
                    continue;
                }
                if budget == 0 {
                    break;
                }
                let ended = T::Contracts::end_contracts_on_node(node_id, budget);
                budget = budget.saturating_sub(ended.attempted);
                weight.saturating_accrue(
                    T::Contracts::end_contract_weight()
                        .saturating_mul(u64::from(ended.attempted.max(1))),
                );
                if ended.failed {
                    // A contract that cannot end would hold this queue forever: the removal
                    // is dropped (the node stays and takes work again) for governance to see.
                    log::error!(target: "runtime::grid", "node {node_id}: a contract could not be ended; removal dropped");
                    NodeRemovals::<T>::remove(node_id);
                    Self::deposit_event(Event::NodeRemovalFailed { node_id });
                    NodeRemovalQueue::<T>::remove(kind, head);
                    head = head.saturating_add(1);
                    continue;
                }
                if ended.more {
                    // Budget spent: go on next block.
                    break;
                }
                let requested_by = current.and_then(|r| r.requested_by);
                let removed = Nodes::<T>::get(node_id)
                    .ok_or_else(|| DispatchError::from(Error::<T>::NodeNotFound))
                    .and_then(|node| Self::remove_node_now(node_id, node, requested_by));
                if let Err(e) = removed {
                    defensive!("a leaving node without contracts could not be removed");
                    log::error!(target: "runtime::grid", "removing node {node_id}: {e:?}");
                    NodeRemovals::<T>::remove(node_id);
                }
                weight.saturating_accrue(
                    T::WeightInfo::remove_node()
                        .saturating_add(deposits::deposits_weight::<T>(1))
                        .saturating_add(T::DbWeight::get().writes(1))
                        .saturating_add(T::OnNodeRemoved::on_node_removed_weight())
                        .saturating_add(Self::domain_index_weight()),
                );
                NodeRemovalQueue::<T>::remove(kind, head);
                head = head.saturating_add(1);
            }
            if head != first {
                NodeRemovalQueueEnds::<T>::mutate(kind, |ends| ends.0 = head);
                weight.saturating_accrue(db.writes(1));
            }
        }
        weight
    }

    /// Each removal belongs to an existing node and waits in its queue; queues are contiguous
    /// and in due order.
    #[cfg(any(feature = "try-runtime", feature = "std"))]
    pub(crate) fn removals_try_state() -> Result<(), sp_runtime::TryRuntimeError> {
        use alloc::collections::btree_set::BTreeSet;
        let mut queued = BTreeSet::new();
        for kind in RemovalKind::ALL {
            let (head, tail) = NodeRemovalQueueEnds::<T>::get(kind);
            ensure!(head <= tail, "removal queue head past its tail");
            let mut last_due = None;
            for seq in head..tail {
                let (node, due) = NodeRemovalQueue::<T>::get(kind, seq)
                    .ok_or("a removal queue entry is missing")?;
                ensure!(
                    last_due.map_or(true, |last| last <= due),
                    "removal queue out of due order"
                );
                last_due = Some(due);
                queued.insert((node, kind, due));
            }
            ensure!(
                NodeRemovalQueue::<T>::iter_prefix(kind).count() as u64 == tail - head,
                "removal queue has entries outside head..tail"
            );
        }
        for (node_id, removal) in NodeRemovals::<T>::iter() {
            ensure!(
                Nodes::<T>::contains_key(node_id),
                "a removal outlived its node"
            );
            ensure!(
                queued.contains(&(node_id, removal.kind, removal.due)),
                "a removal is not queued"
            );
        }
        Ok(())
    }
}

/// What one `force_remove_farm` did to a farm's nodes.
#[derive(Default)]
struct FarmNodesStep {
    /// Node entries read.
    read: u32,
    /// Nodes without contracts, removed at once.
    removed: u32,
    /// Nodes whose forced removal was scheduled.
    scheduled: u32,
}
