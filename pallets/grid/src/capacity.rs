//! The capacity ledger and IP assignments other pallets place work through
//! ([`GridCapacity`]).

use super::*;

impl<T: Config> GridCapacity<T::AccountId> for Pallet<T> {
    fn node_account(node: NodeId) -> Option<T::AccountId> {
        Nodes::<T>::get(node).map(|n| n.account)
    }

    fn node_farm(node: NodeId) -> Option<FarmId> {
        Nodes::<T>::get(node).map(|n| n.farm_id)
    }

    fn farm_owner(farm: FarmId) -> Option<T::AccountId> {
        Farms::<T>::get(farm).map(|f| f.owner)
    }

    fn farm_pricing_policy(farm: FarmId) -> Option<PricingPolicyId> {
        Farms::<T>::get(farm).map(|f| f.pricing_policy)
    }

    fn node_is_online(node: NodeId) -> bool {
        Self::node_status(node) == Some(NodeStatus::Online)
    }

    fn node_is_leaving(node: NodeId) -> bool {
        NodeRemovals::<T>::contains_key(node)
            || Nodes::<T>::get(node)
                .is_some_and(|n| FarmsUnderRemoval::<T>::contains_key(n.farm_id))
    }

    fn node_accepts_workloads(node_id: NodeId) -> Result<(), DispatchError> {
        let node = Nodes::<T>::get(node_id).ok_or(Error::<T>::NodeNotFound)?;
        ensure!(
            !NodeRemovals::<T>::contains_key(node_id),
            Error::<T>::NodeLeaving
        );
        Self::ensure_farm_not_frozen(node.farm_id)?;
        ensure!(
            Self::status_of(&node) == NodeStatus::Online,
            Error::<T>::NodeOffline
        );
        ensure!(
            node.power_target == Power::Up,
            Error::<T>::NodePowerTargetDown
        );
        ensure!(node.power_state == Power::Up, Error::<T>::NodePoweredDown);
        Ok(())
    }

    fn free_capacity(node: NodeId) -> Option<Resources> {
        Pallet::<T>::free_capacity(node)
    }

    fn reserve(node_id: NodeId, resources: &Resources) -> DispatchResult {
        let mut node = Nodes::<T>::get(node_id).ok_or(Error::<T>::NodeNotFound)?;
        let reserved = node
            .reserved
            .checked_add(resources)
            .ok_or(Error::<T>::CapacityOverflow)?;
        ensure!(
            reserved.fits_in(&node.capacity, T::CruOvercommit::get()),
            Error::<T>::InsufficientCapacity
        );
        node.reserved = reserved;
        Nodes::<T>::insert(node_id, node);
        Self::deposit_event(Event::CapacityReserved {
            node_id,
            resources: *resources,
            reserved,
        });
        Ok(())
    }

    fn release(node_id: NodeId, resources: &Resources) -> DispatchResult {
        let mut node = Nodes::<T>::get(node_id).ok_or(Error::<T>::NodeNotFound)?;
        let reserved = node
            .reserved
            .checked_sub(resources)
            .ok_or(Error::<T>::ReleaseExceedsReserved)?;
        node.reserved = reserved;
        Nodes::<T>::insert(node_id, node);
        Self::deposit_event(Event::CapacityReleased {
            node_id,
            resources: *resources,
            reserved,
        });
        Ok(())
    }

    fn node_gateway_domain(node: NodeId) -> Option<alloc::vec::Vec<u8>> {
        Nodes::<T>::get(node)?
            .public_config?
            .domain
            .map(|d| d.into_inner())
    }

    fn assign_public_ips(
        node_id: NodeId,
        contract: ContractId,
        count: u32,
    ) -> Result<Vec<PublicIpv4Config>, DispatchError> {
        let mut node = Nodes::<T>::get(node_id).ok_or(Error::<T>::NodeNotFound)?;
        if count == 0 {
            return Ok(Vec::new());
        }
        let farm_id = node.farm_id;
        let mut farm = Farms::<T>::get(farm_id).ok_or(Error::<T>::FarmNotFound)?;
        let free: Vec<usize> = farm
            .public_ips
            .iter()
            .enumerate()
            .filter(|(_, e)| e.assigned.is_none())
            .map(|(i, _)| i)
            .take(count as usize)
            .collect();
        ensure!(free.len() as u32 == count, Error::<T>::NotEnoughFreeIps);
        node.assigned_ips = node
            .assigned_ips
            .checked_add(count)
            .ok_or(Error::<T>::CounterOverflow)?;

        let mut configs = Vec::with_capacity(free.len());
        for i in free {
            if let Some(entry) = farm.public_ips.get_mut(i) {
                entry.assigned = Some(IpAssignment {
                    contract,
                    node: node_id,
                });
                configs.push(entry.config);
            }
        }
        Farms::<T>::insert(farm_id, farm);
        Nodes::<T>::insert(node_id, node);
        Self::deposit_event(Event::PublicIpsAssigned {
            farm_id,
            node_id,
            contract_id: contract,
            ips: configs.iter().map(|c| c.ip.ip).collect(),
        });
        Ok(configs)
    }

    fn release_public_ips(node_id: NodeId, contract: ContractId) -> DispatchResult {
        let mut node = Nodes::<T>::get(node_id).ok_or(Error::<T>::NodeNotFound)?;
        let farm_id = node.farm_id;
        let mut farm = Farms::<T>::get(farm_id).ok_or(Error::<T>::FarmNotFound)?;
        let holder = Some(IpAssignment {
            contract,
            node: node_id,
        });
        let mut ips = Vec::new();
        for entry in farm.public_ips.iter_mut().filter(|e| e.assigned == holder) {
            entry.assigned = None;
            ips.push(entry.config.ip.ip);
        }
        if ips.is_empty() {
            return Ok(());
        }
        // The counter equals the number of entries held by the node (a try_state invariant).
        node.assigned_ips = node.assigned_ips.saturating_sub(ips.len() as u32);
        Farms::<T>::insert(farm_id, farm);
        Nodes::<T>::insert(node_id, node);
        Self::deposit_event(Event::PublicIpsReleased {
            farm_id,
            node_id,
            contract_id: contract,
            ips,
        });
        Ok(())
    }

    fn contract_started(node_id: NodeId) -> DispatchResult {
        let mut node = Nodes::<T>::get(node_id).ok_or(Error::<T>::NodeNotFound)?;
        node.active_contracts = node
            .active_contracts
            .checked_add(1)
            .ok_or(Error::<T>::CounterOverflow)?;
        let active_contracts = node.active_contracts;
        Nodes::<T>::insert(node_id, node);
        Self::deposit_event(Event::NodeContractStarted {
            node_id,
            active_contracts,
        });
        Ok(())
    }

    fn contract_ended(node_id: NodeId) -> DispatchResult {
        let mut node = Nodes::<T>::get(node_id).ok_or(Error::<T>::NodeNotFound)?;
        node.active_contracts = node
            .active_contracts
            .checked_sub(1)
            .ok_or(Error::<T>::NoActiveContracts)?;
        let active_contracts = node.active_contracts;
        Nodes::<T>::insert(node_id, node);
        Self::deposit_event(Event::NodeContractEnded {
            node_id,
            active_contracts,
        });
        Ok(())
    }

    fn node_ledger(node_id: NodeId) -> Option<zos_primitives::NodeLedger> {
        Nodes::<T>::get(node_id).map(|node| zos_primitives::NodeLedger {
            reserved: node.reserved,
            active_contracts: node.active_contracts,
        })
    }

    fn assigned_public_ips(node_id: NodeId, contract: ContractId) -> Vec<[u8; 4]> {
        let Some(farm) = Nodes::<T>::get(node_id).and_then(|n| Farms::<T>::get(n.farm_id)) else {
            return Vec::new();
        };
        farm.public_ips
            .iter()
            .filter(|e| {
                e.assigned
                    .is_some_and(|a| a.contract == contract && a.node == node_id)
            })
            .map(|e| e.config.ip.ip)
            .collect()
    }
}
