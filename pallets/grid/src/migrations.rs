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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::*;
    use frame_support::traits::StorageVersion;
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
}
