//! Node registration and liveness.

use super::*;

impl<T: Config> Pallet<T> {
    /// Registers a checked node: takes the next id, claims its addresses, turns the
    /// authorization's deposit into the node's, and writes the node and its indexes.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn insert_node(
        farm_id: FarmId,
        account: T::AccountId,
        capacity: Resources,
        box_key: BoxKey,
        location: Location,
        public_config: Option<PublicConfig>,
        executor_version: ExecutorVersion,
    ) -> DispatchResult {
        let node_id = NextNodeId::<T>::get();
        let next = node_id.checked_add(1).ok_or(Error::<T>::NodeIdsExhausted)?;
        Self::move_node_ips(node_id, farm_id, None, public_config.as_ref())?;
        Self::move_deposit(
            DepositItem::NodeAuthorization(farm_id, account.clone()),
            DepositItem::Node(node_id),
        );
        Nodes::<T>::insert(
            node_id,
            Node {
                id: node_id,
                farm_id,
                account: account.clone(),
                capacity,
                reserved: Resources::zero(),
                box_key,
                location,
                public_config,
                executor_version,
                power_target: Power::Up,
                power_state: Power::Up,
                active_contracts: 0,
                assigned_ips: 0,
                last_heartbeat: None,
                online_since_ms: 0,
                uptime_seconds: 0,
                registered_at: frame_system::Pallet::<T>::block_number(),
            },
        );
        NodeIdByAccount::<T>::insert(&account, node_id);
        NodesByFarm::<T>::insert(farm_id, node_id, ());
        // Bounded by the number of node ids, which is a u32 too.
        FarmNodeCount::<T>::mutate(farm_id, |n| *n = n.saturating_add(1));
        NextNodeId::<T>::put(next);
        Self::deposit_event(Event::NodeRegistered {
            node_id,
            farm_id,
            account,
        });
        Ok(())
    }

    /// Records a heartbeat of `node_id` (signed by `account`) now: refused when sooner than
    /// [`Config::MinHeartbeatIntervalMs`] after the last; a gap longer than
    /// [`Config::HeartbeatTimeoutMs`] restarts the uptime.
    pub(crate) fn record_heartbeat(node_id: NodeId, account: T::AccountId) -> DispatchResult {
        let mut node = Nodes::<T>::get(node_id).ok_or(Error::<T>::NodeNotFound)?;
        let now = Self::now_ms();
        let continuous = match node.last_heartbeat {
            Some(last) => {
                let gap = now.saturating_sub(last.timestamp_ms);
                ensure!(
                    gap >= T::MinHeartbeatIntervalMs::get(),
                    Error::<T>::HeartbeatTooSoon
                );
                gap <= T::HeartbeatTimeoutMs::get()
            }
            None => false,
        };
        if !continuous {
            node.online_since_ms = now;
        }
        // Derived from the run's start rather than summed per beat: no rounding drift.
        node.uptime_seconds = now.saturating_sub(node.online_since_ms) / 1000;
        node.last_heartbeat = Some(Heartbeat {
            block: frame_system::Pallet::<T>::block_number(),
            timestamp_ms: now,
        });
        let uptime_seconds = node.uptime_seconds;
        Nodes::<T>::insert(node_id, node);
        Self::deposit_event(Event::NodeHeartbeat {
            node_id,
            account,
            timestamp_ms: now,
            uptime_seconds,
        });
        Ok(())
    }
}
