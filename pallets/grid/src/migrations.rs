//! Storage migrations. Each is versioned (`VersionedMigration`), so it runs once, from the
//! version it expects, and the try-runtime checks of each run in the test suite.

use super::*;
use frame_support::{
    migrations::VersionedMigration, traits::UncheckedOnRuntimeUpgrade, weights::Weight,
};

/// Version 1 to 2: nodes' own IPv6 addresses get the [`Ipv6Owner`] index. Where version 1
/// let two nodes declare one address, the node with the lower id keeps it and the other's
/// IPv6 configuration is cleared (its farm owner sets a free address again). Items created
/// before deposits existed hold none and are removed without returning any.
pub type V1ToV2<T> =
    VersionedMigration<1, 2, InnerV1ToV2<T>, Pallet<T>, <T as frame_system::Config>::DbWeight>;

/// The unversioned body of [`V1ToV2`]; use [`V1ToV2`].
pub struct InnerV1ToV2<T>(core::marker::PhantomData<T>);

impl<T: Config> UncheckedOnRuntimeUpgrade for InnerV1ToV2<T> {
    fn on_runtime_upgrade() -> Weight {
        let mut nodes: Vec<(NodeId, [u8; 16])> = Nodes::<T>::iter()
            .filter_map(|(id, node)| node.public_config?.ipv6.map(|v6| (id, v6.ip.ip)))
            .collect();
        nodes.sort_by_key(|(id, _)| *id);
        let mut cleared = 0u64;
        for (id, ip) in nodes.iter() {
            if Ipv6Owner::<T>::contains_key(ip) {
                Nodes::<T>::mutate(id, |node| {
                    if let Some(config) = node.as_mut().and_then(|n| n.public_config.as_mut()) {
                        config.ipv6 = None;
                    }
                });
                cleared = cleared.saturating_add(1);
                log::warn!(
                    target: "runtime::grid",
                    "node {id} shared its IPv6 address with an earlier node: cleared"
                );
            } else {
                Ipv6Owner::<T>::insert(ip, id);
            }
        }
        let reads = Nodes::<T>::iter_keys().count() as u64;
        T::DbWeight::get().reads_writes(
            reads.saturating_add(nodes.len() as u64),
            (nodes.len() as u64)
                .saturating_add(cleared)
                .saturating_add(1),
        )
    }

    #[cfg(feature = "try-runtime")]
    fn pre_upgrade() -> Result<Vec<u8>, sp_runtime::TryRuntimeError> {
        use codec::Encode;
        let with_ipv6 = Nodes::<T>::iter_values()
            .filter(|n| n.public_config.as_ref().is_some_and(|c| c.ipv6.is_some()))
            .count() as u64;
        Ok(with_ipv6.encode())
    }

    #[cfg(feature = "try-runtime")]
    fn post_upgrade(state: Vec<u8>) -> Result<(), sp_runtime::TryRuntimeError> {
        use codec::Decode;
        let before = u64::decode(&mut &state[..])
            .map_err(|_| sp_runtime::TryRuntimeError::Other("pre-upgrade state"))?;
        let mut indexed = 0u64;
        for (id, node) in Nodes::<T>::iter() {
            if let Some(v6) = node.public_config.and_then(|c| c.ipv6) {
                frame_support::ensure!(
                    Ipv6Owner::<T>::get(v6.ip.ip) == Some(id),
                    "a node's IPv6 address is not indexed to it"
                );
                indexed = indexed.saturating_add(1);
            }
        }
        frame_support::ensure!(
            indexed <= before && Ipv6Owner::<T>::iter().count() as u64 == indexed,
            "the IPv6 index does not match the nodes"
        );
        Pallet::<T>::do_try_state()
    }
}

/// Version 2 to 3: gateway domains get the [`GatewayDomainFarm`] and [`GatewayDomainsBelow`]
/// index, so each belongs to one farm. Nodes are indexed by ascending id; a node whose domain
/// another farm's earlier node declared (the domain, a parent or a subdomain of it), or whose
/// domain is deeper than [`domains::MAX_GATEWAY_DOMAIN_LABELS`] labels, has its domain cleared
/// (its farm owner declares a free one again).
pub type V2ToV3<T> =
    VersionedMigration<2, 3, InnerV2ToV3<T>, Pallet<T>, <T as frame_system::Config>::DbWeight>;

/// The unversioned body of [`V2ToV3`]; use [`V2ToV3`].
pub struct InnerV2ToV3<T>(core::marker::PhantomData<T>);

impl<T: Config> UncheckedOnRuntimeUpgrade for InnerV2ToV3<T> {
    fn on_runtime_upgrade() -> Weight {
        let mut nodes: Vec<(NodeId, FarmId, Domain)> = Nodes::<T>::iter()
            .filter_map(|(id, node)| {
                let domain = node.public_config?.domain?;
                Some((id, node.farm_id, domain))
            })
            .collect();
        nodes.sort_by_key(|(id, _, _)| *id);
        let mut cleared = 0u64;
        for (id, farm, domain) in nodes.iter() {
            let fits = domains::has_allowed_depth(domain)
                && Pallet::<T>::ensure_domain_free_for(*farm, domain).is_ok();
            if fits {
                Pallet::<T>::declare_domain(*farm, domain);
                continue;
            }
            Nodes::<T>::mutate(id, |node| {
                if let Some(config) = node.as_mut().and_then(|n| n.public_config.as_mut()) {
                    config.domain = None;
                }
            });
            cleared = cleared.saturating_add(1);
            log::warn!(
                target: "runtime::grid",
                "node {id}'s gateway domain is another farm's or too deep: cleared"
            );
        }
        let reads = Nodes::<T>::iter_keys().count() as u64;
        let per_domain = u64::from(domains::MAX_GATEWAY_DOMAIN_LABELS).saturating_mul(2);
        let indexed = (nodes.len() as u64).saturating_mul(per_domain);
        T::DbWeight::get().reads_writes(
            reads.saturating_add(indexed),
            indexed.saturating_add(cleared).saturating_add(1),
        )
    }

    #[cfg(feature = "try-runtime")]
    fn pre_upgrade() -> Result<Vec<u8>, sp_runtime::TryRuntimeError> {
        use codec::Encode;
        let with_domain = Nodes::<T>::iter_values()
            .filter(|n| n.public_config.as_ref().is_some_and(|c| c.domain.is_some()))
            .count() as u64;
        Ok(with_domain.encode())
    }

    #[cfg(feature = "try-runtime")]
    fn post_upgrade(state: Vec<u8>) -> Result<(), sp_runtime::TryRuntimeError> {
        use codec::Decode;
        let before = u64::decode(&mut &state[..])
            .map_err(|_| sp_runtime::TryRuntimeError::Other("pre-upgrade state"))?;
        let declared: u64 = GatewayDomainFarm::<T>::iter_values()
            .map(|(_, n)| u64::from(n))
            .sum();
        frame_support::ensure!(
            declared <= before,
            "more domain declarations indexed than nodes had"
        );
        Pallet::<T>::do_try_state()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::*;
    use frame_support::{assert_ok, traits::StorageVersion};
    use zos_primitives::{Ipv6Cidr, PublicIpv6Config, GIB};

    fn with_ipv6(last: u8) -> Option<PublicConfig> {
        let address = |host: u8| {
            let mut ip = [0u8; 16];
            ip[..4].copy_from_slice(&[0x2a, 0x02, 0x18, 0x02]);
            ip[15] = host;
            ip
        };
        Some(PublicConfig {
            ipv4: None,
            ipv6: Some(PublicIpv6Config {
                ip: Ipv6Cidr {
                    ip: address(last),
                    prefix_len: 64,
                },
                gateway: address(1),
            }),
            domain: None,
        })
    }

    #[test]
    fn v1_to_v2_indexes_ipv6_addresses_and_clears_duplicates() {
        new_test_ext().execute_with(|| {
            StorageVersion::new(1).put::<Pallet<Test>>();
            let capacity = Resources::new(1, GIB, 10 * GIB, 0);
            let mut nodes = Vec::new();
            for (owner, account, last) in [(1, 10, 2), (2, 11, 2), (3, 12, 3)] {
                let (_, node) = Grid::setup_online_node(owner, account, capacity, 0).unwrap();
                // Version 1 stored the addresses without the index.
                Nodes::<Test>::mutate(node, |n| {
                    n.as_mut().unwrap().public_config = with_ipv6(last)
                });
                nodes.push(node);
            }
            crate::mock::upgrade::<V1ToV2<Test>>();
            assert_eq!(StorageVersion::get::<Pallet<Test>>(), 2);
            assert_eq!(Ipv6Owner::<Test>::iter().count(), 2);
            let ipv6_of = |node| {
                Nodes::<Test>::get(node)
                    .unwrap()
                    .public_config
                    .unwrap()
                    .ipv6
            };
            assert!(ipv6_of(nodes[0]).is_some());
            assert!(
                ipv6_of(nodes[1]).is_none(),
                "the later duplicate is cleared"
            );
            assert!(ipv6_of(nodes[2]).is_some());
            Grid::do_try_state().unwrap();
        });
    }
    #[test]
    fn v2_to_v3_indexes_gateway_domains_and_clears_another_farms_and_deep_ones() {
        new_test_ext().execute_with(|| {
            StorageVersion::new(2).put::<Pallet<Test>>();
            let capacity = Resources::new(1, GIB, 10 * GIB, 0);
            let mut nodes = Vec::new();
            // A farm each; the first farm gets a second node (below). The second farm declares
            // a parent of the first's domain, the third a domain too deep to index.
            let mut first_farm = None;
            for (owner, account, domain) in [
                (1, 10, "gw.zone.example.com"),
                (1, 11, "gw.zone.example.com"),
                (2, 12, "zone.example.com"),
                (3, 13, "a.b.c.d.e.f.g.h.i"),
                (4, 14, "gw.example.org"),
            ] {
                let node = match first_farm {
                    Some(farm) if account == 11 => {
                        assert_ok!(Grid::authorize_node(
                            RuntimeOrigin::signed(owner),
                            farm,
                            account
                        ));
                        let id = NextNodeId::<Test>::get();
                        assert_ok!(Grid::register_node(
                            RuntimeOrigin::signed(account),
                            farm,
                            capacity,
                            [9; 32],
                            Nodes::<Test>::get(nodes[0]).unwrap().location,
                            None,
                            Nodes::<Test>::get(nodes[0]).unwrap().executor_version,
                        ));
                        id
                    }
                    _ => {
                        let (farm, node) =
                            Grid::setup_online_node(owner, account, capacity, 0).unwrap();
                        first_farm.get_or_insert(farm);
                        node
                    }
                };
                // Version 2 stored domains without the index.
                Nodes::<Test>::mutate(node, |n| {
                    n.as_mut().unwrap().public_config = Some(PublicConfig {
                        ipv4: None,
                        ipv6: None,
                        domain: Some(Domain::truncate_from(domain.as_bytes().to_vec())),
                    })
                });
                nodes.push(node);
            }
            crate::mock::upgrade::<V2ToV3<Test>>();
            assert_eq!(StorageVersion::get::<Pallet<Test>>(), 3);
            let has_domain = |node| {
                Nodes::<Test>::get(node)
                    .unwrap()
                    .public_config
                    .unwrap()
                    .domain
                    .is_some()
            };
            assert_eq!(
                nodes.iter().map(|n| has_domain(*n)).collect::<Vec<_>>(),
                vec![true, true, false, false, true]
            );
            assert_eq!(GatewayDomainFarm::<Test>::iter().count(), 2);
            Grid::do_try_state().unwrap();
        });
    }
}
