//! Storage invariants, checked by `try_state` and after every test.

use super::*;

#[cfg(any(feature = "try-runtime", feature = "std"))]
impl<T: Config> Pallet<T> {
    /// Checks every invariant of the pallet's storage; used by `try_state` and after each test.
    pub fn do_try_state() -> Result<(), sp_runtime::TryRuntimeError> {
        use alloc::collections::btree_map::BTreeMap;
        let overcommit = T::CruOvercommit::get();
        let next_farm = NextFarmId::<T>::get();
        let next_node = NextNodeId::<T>::get();
        // Addresses the items claim, to compare with the IP index afterwards.
        let mut claimed_ips: BTreeMap<[u8; 4], IpHolder> = BTreeMap::new();
        // Farm IPs assigned per node, to compare with each node's counter.
        let mut ips_per_node: BTreeMap<NodeId, u32> = BTreeMap::new();

        for (farm_id, farm) in Farms::<T>::iter() {
            ensure!(farm.id == farm_id, "farm stored under another id");
            ensure!(farm_id < next_farm, "farm id not below NextFarmId");
            Self::name_key(&farm.name).map_err(|_| "stored farm name is invalid")?;
            ensure!(
                FarmIdByName::<T>::get(Self::lowercase(&farm.name)) == Some(farm_id),
                "farm name index does not point at the farm"
            );
            let members = NodesByFarm::<T>::iter_key_prefix(farm_id).count() as u32;
            ensure!(
                FarmNodeCount::<T>::contains_key(farm_id)
                    && FarmNodeCount::<T>::get(farm_id) == members,
                "farm node count differs from its members"
            );
            for entry in farm.public_ips.iter() {
                validate_public_ipv4_in(&entry.config, DocumentationIpsArePublic::<T>::get())
                    .map_err(|_| "stored farm IP is invalid")?;
                ensure!(
                    claimed_ips
                        .insert(entry.config.ip.ip, IpHolder::Farm(farm_id))
                        .is_none(),
                    "IP listed twice"
                );
                if let Some(assignment) = entry.assigned {
                    // The holder is a live node of this farm that has the IP in its counter.
                    let node =
                        Nodes::<T>::get(assignment.node).ok_or("IP assigned to a missing node")?;
                    ensure!(
                        node.farm_id == farm_id,
                        "IP assigned to a node of another farm"
                    );
                    let n = ips_per_node.entry(assignment.node).or_insert(0);
                    *n = n.saturating_add(1);
                }
            }
        }
        for (key, farm_id) in FarmIdByName::<T>::iter() {
            let farm = Farms::<T>::get(farm_id).ok_or("name index points at a missing farm")?;
            ensure!(
                Self::lowercase(&farm.name) == key,
                "name index key is not the farm's name"
            );
        }
        for (farm_id, _) in FarmNodeCount::<T>::iter() {
            ensure!(
                Farms::<T>::contains_key(farm_id),
                "node count kept for a missing farm"
            );
        }

        let mut ipv6_held: u32 = 0;
        for (node_id, node) in Nodes::<T>::iter() {
            ensure!(node.id == node_id, "node stored under another id");
            ensure!(node_id < next_node, "node id not below NextNodeId");
            ensure!(
                Farms::<T>::contains_key(node.farm_id),
                "node of a missing farm"
            );
            ensure!(
                NodesByFarm::<T>::contains_key(node.farm_id, node_id),
                "node missing from its farm's index"
            );
            ensure!(
                NodeIdByAccount::<T>::get(&node.account) == Some(node_id),
                "account index does not point at the node"
            );
            ensure!(
                node.reserved.fits_in(&node.capacity, overcommit),
                "reserved above capacity"
            );
            ensure!(
                ips_per_node.get(&node_id).copied().unwrap_or(0) == node.assigned_ips,
                "node IP counter differs from the farm's assignments"
            );
            if let Some(ip) = Self::config_ipv4(node.public_config.as_ref()) {
                ensure!(
                    claimed_ips.insert(ip, IpHolder::Node(node_id)).is_none(),
                    "IP held twice"
                );
            }
            if let Some(ip) = Self::config_ipv6(node.public_config.as_ref()) {
                ensure!(
                    Ipv6Owner::<T>::get(ip) == Some(node_id),
                    "IPv6 index does not point at the node"
                );
                ipv6_held = ipv6_held.saturating_add(1);
            }
        }
        ensure!(
            Ipv6Owner::<T>::iter().count() as u32 == ipv6_held,
            "IPv6 index holds addresses no node has"
        );
        for (account, node_id) in NodeIdByAccount::<T>::iter() {
            let node = Nodes::<T>::get(node_id).ok_or("account index points at a missing node")?;
            ensure!(
                node.account == account,
                "account index key is not the node's account"
            );
        }
        for (farm_id, node_id, ()) in NodesByFarm::<T>::iter() {
            let node = Nodes::<T>::get(node_id).ok_or("farm index points at a missing node")?;
            ensure!(
                node.farm_id == farm_id,
                "farm index puts the node in another farm"
            );
        }

        for (node_id, endpoint) in NodeOverlays::<T>::iter() {
            ensure!(
                Nodes::<T>::contains_key(node_id),
                "an overlay endpoint outlived its node"
            );
            ensure!(
                endpoint.validate().is_ok(),
                "stored overlay endpoint is invalid"
            );
        }

        Self::removals_try_state()?;
        for farm_id in FarmsUnderRemoval::<T>::iter_keys() {
            ensure!(
                Farms::<T>::contains_key(farm_id),
                "a frozen farm is gone but still listed as under removal"
            );
        }
        Self::deposits_try_state()?;
        for (farm_id, _) in NodeAuthorizations::<T>::iter_keys() {
            ensure!(
                Farms::<T>::contains_key(farm_id),
                "a node authorization outlived its farm"
            );
        }

        ensure!(
            IpOwner::<T>::iter().count() == claimed_ips.len(),
            "IP index size differs from the IPs held"
        );
        for (ip, holder) in claimed_ips {
            ensure!(
                IpOwner::<T>::get(ip) == Some(holder),
                "IP index does not point at the holder"
            );
        }
        Self::check_domain_index()?;
        Ok(())
    }
}
