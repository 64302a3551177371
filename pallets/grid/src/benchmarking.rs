//! Benchmarks of every extrinsic at the worst case of its bounds: the longest names and
//! descriptions, full IP pools, and the branches that touch the most storage items.

use super::*;
use crate::Pallet as Grid;
use codec::Encode;
use frame_benchmarking::v2::*;
use frame_support::{traits::EnsureOrigin, BoundedVec};
use frame_system::RawOrigin;
use zos_primitives::{
    Ipv6Cidr, OverlayAddress, PublicIpv6Config, MAX_OVERLAY_ADDRESSES, MAX_OVERLAY_ADDRESS_LEN,
};

fn assert_last_event<T: Config>(event: Event<T>) {
    frame_system::Pallet::<T>::assert_last_event(event.into());
}

/// A 40-character name (the maximum), distinct per `tag`.
fn max_name(tag: u8) -> FarmName {
    let mut name = alloc::vec![b'f'; MAX_FARM_NAME_LEN as usize];
    name[0] = b'a' + tag % 26;
    FarmName::truncate_from(name)
}

fn max_capacity() -> Resources {
    Resources::new(u64::MAX, u64::MAX, u64::MAX, u64::MAX)
}

fn max_location() -> Location {
    Location {
        city: LocationName::truncate_from(alloc::vec![b'c'; MAX_LOCATION_NAME_LEN as usize]),
        country: LocationName::truncate_from(alloc::vec![b'k'; MAX_LOCATION_NAME_LEN as usize]),
        latitude: -MAX_LATITUDE,
        longitude: MAX_LONGITUDE,
    }
}

/// Every optional field present and the domain at its 253-byte maximum.
fn max_public_config<T: Config>(ip_seed: u32) -> PublicConfig {
    let label = alloc::vec![b'a'; 63];
    let mut domain = Vec::new();
    for _ in 0..3 {
        domain.extend_from_slice(&label);
        domain.push(b'.');
    }
    domain.extend_from_slice(&label[..61]);
    PublicConfig {
        ipv4: Some(Grid::<T>::test_ip(ip_seed)),
        ipv6: Some(PublicIpv6Config {
            ip: Ipv6Cidr {
                ip: (0x2a02_1802_005eu128 << 80 | u128::from(ip_seed) + 2).to_be_bytes(),
                prefix_len: 64,
            },
            gateway: (0x2a02_1802_005eu128 << 80 | 1).to_be_bytes(),
        }),
        domain: Some(Domain::truncate_from(domain)),
    }
}

fn max_version() -> ExecutorVersion {
    ExecutorVersion::truncate_from(alloc::vec![b'v'; MAX_EXECUTOR_VERSION_LEN as usize])
}

/// An overlay key pair from `seed` (ed25519).
fn overlay_pair(seed: u8) -> sp_core::ed25519::Pair {
    use sp_core::Pair;
    sp_core::ed25519::Pair::from_seed(&[seed; 32])
}

/// `endpoint` with the proof, by `pair`, that the node of `account` holds its key.
fn proven<T: Config>(
    account: &T::AccountId,
    endpoint: OverlayEndpoint,
    pair: &sp_core::ed25519::Pair,
) -> (OverlayEndpoint, zos_primitives::OverlayKeyProof) {
    use sp_core::Pair;
    let proof = pair.sign(&zos_primitives::overlay_key_proof_message(
        &account.encode(),
    ));
    (endpoint, proof.0)
}

/// The largest overlay endpoint: the most addresses, each at the maximum length and differing
/// from the others only in its last byte (so the duplicate check compares them in full).
fn max_overlay() -> OverlayEndpoint {
    let addresses = (0..MAX_OVERLAY_ADDRESSES)
        .map(|i| {
            let mut text = alloc::vec![b'x'; MAX_OVERLAY_ADDRESS_LEN as usize];
            text[0] = b'/';
            text[MAX_OVERLAY_ADDRESS_LEN as usize - 1] = b'0' + i as u8;
            OverlayAddress::truncate_from(text)
        })
        .collect::<Vec<_>>();
    OverlayEndpoint {
        key: sp_core::Pair::public(&overlay_pair(3)).0,
        addresses: BoundedVec::truncate_from(addresses),
    }
}

/// The node of `account` publishes the largest overlay endpoint.
fn with_max_overlay<T: Config>(account: &T::AccountId) -> Result<(), BenchmarkError> {
    Grid::<T>::set_node_overlay(
        RawOrigin::Signed(account.clone()).into(),
        Some(proven::<T>(account, max_overlay(), &overlay_pair(3))),
    )?;
    Ok(())
}

/// `who` with enough balance for any number of deposits.
fn funded<T: Config>(who: T::AccountId) -> T::AccountId {
    use frame_support::traits::fungible::Mutate;
    use sp_runtime::traits::Bounded;
    T::Currency::set_balance(&who, BalanceOf::<T>::max_value() / 8u32.into());
    who
}

/// A farm with a maximum-length name and `ips` pool addresses.
fn farm_with_ips<T: Config>(owner: &T::AccountId, ips: u32) -> Result<FarmId, BenchmarkError> {
    let farm_id = NextFarmId::<T>::get();
    Grid::<T>::create_farm(
        RawOrigin::Signed(owner.clone()).into(),
        max_name(farm_id as u8),
    )?;
    for i in 0..ips {
        Grid::<T>::add_farm_ip(
            RawOrigin::Signed(owner.clone()).into(),
            farm_id,
            Grid::<T>::test_ip(i),
        )?;
    }
    Ok(farm_id)
}

/// The farm's owner authorizes `account` to register a node into it.
fn authorize<T: Config>(farm_id: FarmId, account: &T::AccountId) -> Result<(), BenchmarkError> {
    let owner = Farms::<T>::get(farm_id)
        .ok_or(BenchmarkError::Stop("no farm"))?
        .owner;
    Grid::<T>::authorize_node(RawOrigin::Signed(owner).into(), farm_id, account.clone())?;
    Ok(())
}

/// A node with every field at its maximum size and a public IPv4 address of its own.
fn max_node<T: Config>(account: &T::AccountId, farm_id: FarmId) -> Result<NodeId, BenchmarkError> {
    authorize::<T>(farm_id, account)?;
    Grid::<T>::register_node(
        RawOrigin::Signed(account.clone()).into(),
        farm_id,
        max_capacity(),
        [1; 32],
        max_location(),
        Some(max_public_config::<T>(1_000_000)),
        max_version(),
    )?;
    NodeIdByAccount::<T>::get(account).ok_or(BenchmarkError::Stop("node not registered"))
}

#[benchmarks]
mod benchmarks {
    use super::*;

    #[benchmark]
    fn create_farm() {
        let caller: T::AccountId = funded::<T>(whitelisted_caller());
        let name = max_name(0);
        let farm_id = NextFarmId::<T>::get();

        #[extrinsic_call]
        _(RawOrigin::Signed(caller.clone()), name.clone());

        assert_last_event::<T>(Event::FarmCreated {
            farm_id,
            owner: caller,
            name,
        });
    }

    #[benchmark]
    fn rename_farm() -> Result<(), BenchmarkError> {
        let caller: T::AccountId = funded::<T>(whitelisted_caller());
        let farm_id = farm_with_ips::<T>(&caller, T::MaxIpsPerFarm::get())?;
        let name = max_name(25);

        #[extrinsic_call]
        _(RawOrigin::Signed(caller.clone()), farm_id, name.clone());

        assert_last_event::<T>(Event::FarmRenamed {
            farm_id,
            owner: caller,
            name,
        });
        Ok(())
    }

    #[benchmark]
    fn remove_farm(i: Linear<0, { T::MaxIpsPerFarm::get() }>) -> Result<(), BenchmarkError> {
        let caller: T::AccountId = funded::<T>(whitelisted_caller());
        let farm_id = farm_with_ips::<T>(&caller, i)?;

        #[extrinsic_call]
        _(RawOrigin::Signed(caller.clone()), farm_id);

        assert_last_event::<T>(Event::FarmRemoved {
            farm_id,
            owner: caller,
            ips_released: i,
        });
        assert_eq!(IpOwner::<T>::iter().count(), 0);
        Ok(())
    }

    #[benchmark]
    fn set_farm_certification() -> Result<(), BenchmarkError> {
        let origin =
            T::GovernanceOrigin::try_successful_origin().map_err(|_| BenchmarkError::Weightless)?;
        let owner: T::AccountId = funded::<T>(whitelisted_caller());
        let farm_id = farm_with_ips::<T>(&owner, T::MaxIpsPerFarm::get())?;

        #[extrinsic_call]
        _(origin as T::RuntimeOrigin, farm_id, FarmCertification::Gold);

        assert_last_event::<T>(Event::FarmCertificationSet {
            farm_id,
            certification: FarmCertification::Gold,
        });
        Ok(())
    }

    #[benchmark]
    fn set_farm_pricing_policy() -> Result<(), BenchmarkError> {
        let origin =
            T::GovernanceOrigin::try_successful_origin().map_err(|_| BenchmarkError::Weightless)?;
        let owner: T::AccountId = funded::<T>(whitelisted_caller());
        let farm_id = farm_with_ips::<T>(&owner, T::MaxIpsPerFarm::get())?;

        #[extrinsic_call]
        _(origin as T::RuntimeOrigin, farm_id, 7);

        assert_last_event::<T>(Event::FarmPricingPolicySet {
            farm_id,
            pricing_policy: 7,
        });
        Ok(())
    }

    /// `i` addresses already in the pool; the worst case fills the last slot.
    #[benchmark]
    fn add_farm_ip(
        i: Linear<0, { T::MaxIpsPerFarm::get().saturating_sub(1) }>,
    ) -> Result<(), BenchmarkError> {
        let caller: T::AccountId = funded::<T>(whitelisted_caller());
        let farm_id = farm_with_ips::<T>(&caller, i)?;
        let ip = Grid::<T>::test_ip(i);

        #[extrinsic_call]
        _(RawOrigin::Signed(caller.clone()), farm_id, ip);

        assert_last_event::<T>(Event::FarmIpAdded {
            farm_id,
            owner: caller,
            ip,
        });
        Ok(())
    }

    /// `i` addresses in the pool; the one removed is the last, found after a full scan.
    #[benchmark]
    fn remove_farm_ip(i: Linear<1, { T::MaxIpsPerFarm::get() }>) -> Result<(), BenchmarkError> {
        let caller: T::AccountId = funded::<T>(whitelisted_caller());
        let farm_id = farm_with_ips::<T>(&caller, i)?;
        let ip = Grid::<T>::test_ip(i - 1).ip.ip;

        #[extrinsic_call]
        _(RawOrigin::Signed(caller.clone()), farm_id, ip);

        assert_last_event::<T>(Event::FarmIpRemoved {
            farm_id,
            owner: caller,
            ip,
        });
        Ok(())
    }

    #[benchmark]
    fn register_node() -> Result<(), BenchmarkError> {
        let owner: T::AccountId = funded::<T>(whitelisted_caller());
        let farm_id = farm_with_ips::<T>(&owner, T::MaxIpsPerFarm::get())?;
        let node: T::AccountId = account("node", 0, 0);
        authorize::<T>(farm_id, &node)?;
        let node_id = NextNodeId::<T>::get();

        #[extrinsic_call]
        _(
            RawOrigin::Signed(node.clone()),
            farm_id,
            max_capacity(),
            [1; 32],
            max_location(),
            Some(max_public_config::<T>(1_000_000)),
            max_version(),
        );

        assert_last_event::<T>(Event::NodeRegistered {
            node_id,
            farm_id,
            account: node,
        });
        Ok(())
    }

    /// The node moves to another public IPv4 address: both index entries change.
    #[benchmark]
    fn update_node() -> Result<(), BenchmarkError> {
        let owner: T::AccountId = funded::<T>(whitelisted_caller());
        let farm_id = farm_with_ips::<T>(&owner, 0)?;
        let node: T::AccountId = account("node", 0, 0);
        let node_id = max_node::<T>(&node, farm_id)?;

        #[extrinsic_call]
        _(
            RawOrigin::Signed(node.clone()),
            max_capacity(),
            max_location(),
            Some(max_public_config::<T>(1_000_001)),
            max_version(),
            [2; 32],
        );

        assert_last_event::<T>(Event::NodeUpdated {
            node_id,
            farm_id,
            account: node,
        });
        Ok(())
    }

    /// Removed by the farm owner (one more read than by the node) with a public IP to free
    /// and an overlay endpoint to drop.
    #[benchmark]
    fn remove_node() -> Result<(), BenchmarkError> {
        let owner: T::AccountId = funded::<T>(whitelisted_caller());
        let farm_id = farm_with_ips::<T>(&owner, T::MaxIpsPerFarm::get())?;
        let node: T::AccountId = account("node", 0, 0);
        let node_id = max_node::<T>(&node, farm_id)?;
        with_max_overlay::<T>(&node)?;

        #[extrinsic_call]
        _(RawOrigin::Signed(owner.clone()), node_id);

        assert!(!NodeOverlays::<T>::contains_key(node_id));
        assert_last_event::<T>(Event::NodeRemoved {
            node_id,
            farm_id,
            account: node,
            removed_by: Some(owner),
        });
        Ok(())
    }

    /// A heartbeat continuing a run (the uptime branch) when the clock allows setting one up.
    #[benchmark]
    fn heartbeat() -> Result<(), BenchmarkError> {
        let owner: T::AccountId = funded::<T>(whitelisted_caller());
        let farm_id = farm_with_ips::<T>(&owner, 0)?;
        let node: T::AccountId = account("node", 0, 0);
        let node_id = max_node::<T>(&node, farm_id)?;
        let now = Grid::<T>::now_ms();
        if let Some(last) = now.checked_sub(T::MinHeartbeatIntervalMs::get()) {
            Nodes::<T>::mutate(node_id, |n| {
                if let Some(n) = n {
                    n.last_heartbeat = Some(Heartbeat {
                        block: frame_system::Pallet::<T>::block_number(),
                        timestamp_ms: last,
                    });
                    n.online_since_ms = last;
                }
            });
        }

        #[extrinsic_call]
        _(RawOrigin::Signed(node.clone()));

        let stored = Nodes::<T>::get(node_id).ok_or(BenchmarkError::Stop("node gone"))?;
        assert_eq!(stored.last_heartbeat.map(|h| h.timestamp_ms), Some(now));
        Ok(())
    }

    #[benchmark]
    fn set_power_target() -> Result<(), BenchmarkError> {
        let owner: T::AccountId = funded::<T>(whitelisted_caller());
        let farm_id = farm_with_ips::<T>(&owner, T::MaxIpsPerFarm::get())?;
        let node: T::AccountId = account("node", 0, 0);
        let node_id = max_node::<T>(&node, farm_id)?;

        #[extrinsic_call]
        _(RawOrigin::Signed(owner.clone()), node_id, Power::Down);

        assert_last_event::<T>(Event::PowerTargetSet {
            node_id,
            farm_id,
            by: owner,
            target: Power::Down,
        });
        Ok(())
    }

    #[benchmark]
    fn set_power_state() -> Result<(), BenchmarkError> {
        let owner: T::AccountId = funded::<T>(whitelisted_caller());
        let farm_id = farm_with_ips::<T>(&owner, 0)?;
        let node: T::AccountId = account("node", 0, 0);
        let node_id = max_node::<T>(&node, farm_id)?;

        #[extrinsic_call]
        _(RawOrigin::Signed(node.clone()), Power::Down);

        assert_last_event::<T>(Event::PowerStateSet {
            node_id,
            account: node,
            state: Power::Down,
        });
        Ok(())
    }

    /// The owner of a full farm moves the node to another public IPv4 address, with every
    /// field at its maximum size: both index entries change.
    #[benchmark]
    fn set_node_public_config() -> Result<(), BenchmarkError> {
        let owner: T::AccountId = funded::<T>(whitelisted_caller());
        let farm_id = farm_with_ips::<T>(&owner, T::MaxIpsPerFarm::get())?;
        let node: T::AccountId = account("node", 0, 0);
        let node_id = max_node::<T>(&node, farm_id)?;
        let config = max_public_config::<T>(1_000_001);

        #[extrinsic_call]
        _(RawOrigin::Signed(owner), node_id, Some(config.clone()));

        assert_last_event::<T>(Event::NodePublicConfigSet { node_id, farm_id });
        let stored = Nodes::<T>::get(node_id).ok_or(BenchmarkError::Stop("node gone"))?;
        assert_eq!(stored.public_config, Some(config));
        assert_eq!(IpOwner::<T>::get(Grid::<T>::test_ip(1_000_000).ip.ip), None);
        assert_eq!(
            IpOwner::<T>::get(Grid::<T>::test_ip(1_000_001).ip.ip),
            Some(IpHolder::Node(node_id))
        );
        Ok(())
    }

    #[benchmark]
    fn authorize_node() -> Result<(), BenchmarkError> {
        let owner: T::AccountId = funded::<T>(whitelisted_caller());
        let farm_id = farm_with_ips::<T>(&owner, 0)?;
        let node: T::AccountId = account("node", 0, 0);

        #[extrinsic_call]
        _(RawOrigin::Signed(owner), farm_id, node.clone());

        assert!(NodeAuthorizations::<T>::contains_key(farm_id, &node));
        Ok(())
    }

    #[benchmark]
    fn revoke_node_authorization() -> Result<(), BenchmarkError> {
        let owner: T::AccountId = funded::<T>(whitelisted_caller());
        let farm_id = farm_with_ips::<T>(&owner, 0)?;
        let node: T::AccountId = account("node", 0, 0);
        authorize::<T>(farm_id, &node)?;

        #[extrinsic_call]
        _(RawOrigin::Signed(owner), farm_id, node.clone());

        assert!(!NodeAuthorizations::<T>::contains_key(farm_id, &node));
        Ok(())
    }

    /// Withdrawn by the farm owner (the branch that also reads the farm).
    #[benchmark]
    fn cancel_node_removal() -> Result<(), BenchmarkError> {
        let owner: T::AccountId = funded::<T>(whitelisted_caller());
        let farm_id = farm_with_ips::<T>(&owner, 0)?;
        let node_id = max_node::<T>(&account("node", 0, 0), farm_id)?;
        <Grid<T> as GridCapacity<T::AccountId>>::contract_started(node_id)?;
        Grid::<T>::remove_node(RawOrigin::Signed(owner.clone()).into(), node_id)?;
        assert!(NodeRemovals::<T>::contains_key(node_id));

        #[extrinsic_call]
        _(RawOrigin::Signed(owner.clone()), node_id);

        assert!(!NodeRemovals::<T>::contains_key(node_id));
        assert_last_event::<T>(Event::NodeRemovalCancelled {
            node_id,
            cancelled_by: owner,
        });
        Ok(())
    }

    /// A node without contracts, removed at once (the branch with every index write; one with
    /// contracts only queues its removal, whose steps `on_initialize` accounts for).
    #[benchmark]
    fn force_remove_node() -> Result<(), BenchmarkError> {
        let origin =
            T::GovernanceOrigin::try_successful_origin().map_err(|_| BenchmarkError::Weightless)?;
        let owner: T::AccountId = funded::<T>(whitelisted_caller());
        let farm_id = farm_with_ips::<T>(&owner, 0)?;
        let node: T::AccountId = account("node", 0, 0);
        let node_id = max_node::<T>(&node, farm_id)?;
        with_max_overlay::<T>(&node)?;

        #[extrinsic_call]
        _(origin as T::RuntimeOrigin, node_id);

        assert!(!Nodes::<T>::contains_key(node_id));
        assert!(!NodeOverlays::<T>::contains_key(node_id));
        Ok(())
    }

    /// The node replaces its overlay endpoint with the largest one: the most addresses at the
    /// maximum length, every byte and every pair checked, and the key's proof verified.
    #[benchmark]
    fn set_node_overlay() -> Result<(), BenchmarkError> {
        let owner: T::AccountId = funded::<T>(whitelisted_caller());
        let farm_id = farm_with_ips::<T>(&owner, 0)?;
        let node: T::AccountId = account("node", 0, 0);
        let node_id = max_node::<T>(&node, farm_id)?;
        with_max_overlay::<T>(&node)?;
        let pair = overlay_pair(4);
        let endpoint = OverlayEndpoint {
            key: sp_core::Pair::public(&pair).0,
            ..max_overlay()
        };
        let proven = proven::<T>(&node, endpoint.clone(), &pair);

        #[extrinsic_call]
        _(RawOrigin::Signed(node), Some(proven));

        assert_eq!(NodeOverlays::<T>::get(node_id), Some(endpoint.clone()));
        assert_last_event::<T>(Event::NodeOverlaySet {
            node_id,
            endpoint: Some(endpoint),
        });
        Ok(())
    }

    /// A farm with `i` pool addresses and the most unused authorizations one call clears.
    #[benchmark]
    fn force_remove_farm(i: Linear<0, { T::MaxIpsPerFarm::get() }>) -> Result<(), BenchmarkError> {
        let origin =
            T::GovernanceOrigin::try_successful_origin().map_err(|_| BenchmarkError::Weightless)?;
        let owner: T::AccountId = funded::<T>(whitelisted_caller());
        let farm_id = farm_with_ips::<T>(&owner, i)?;
        for n in 0..MAX_AUTHORIZATIONS_FORCE_REMOVED {
            authorize::<T>(farm_id, &account("node", n, 0))?;
        }

        #[extrinsic_call]
        _(origin as T::RuntimeOrigin, farm_id);

        assert!(!Farms::<T>::contains_key(farm_id));
        assert_eq!(NodeAuthorizations::<T>::iter().count(), 0);
        Ok(())
    }

    /// The last of `i` pool addresses, unassigned (ending a contract that holds it is added
    /// to the call's weight from the deployments pallet's own benchmark).
    #[benchmark]
    fn force_remove_farm_ip(
        i: Linear<1, { T::MaxIpsPerFarm::get() }>,
    ) -> Result<(), BenchmarkError> {
        let origin =
            T::GovernanceOrigin::try_successful_origin().map_err(|_| BenchmarkError::Weightless)?;
        let owner: T::AccountId = funded::<T>(whitelisted_caller());
        let farm_id = farm_with_ips::<T>(&owner, i)?;
        let ip = Grid::<T>::test_ip(i - 1).ip.ip;

        #[extrinsic_call]
        _(origin as T::RuntimeOrigin, farm_id, ip);

        assert!(!IpOwner::<T>::contains_key(ip));
        Ok(())
    }

    impl_benchmark_test_suite!(Grid, crate::mock::new_test_ext(), crate::mock::Test);
}
