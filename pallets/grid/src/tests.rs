use crate::{mock::*, *};
use frame_support::{
    assert_noop, assert_ok,
    dispatch::{DispatchErrorWithPostInfo, Pays},
    BoundedVec,
};
use sp_runtime::{DispatchError, DispatchResult};
use zos_primitives::{
    GridCapacity, IpError, Ipv4Cidr, Ipv6Cidr, NodeStatus, OverlayAddress, OverlayAddressError,
    PublicIpv4Config, PublicIpv6Config, Resources, SpecialRange, DEFAULT_PRICING_POLICY, GIB,
};

const FARMER: u64 = 1;
const OTHER: u64 = 2;
const NODE: u64 = 10;
const NODE2: u64 = 11;

type GridError = Error<Test>;
type GridEvent = Event<Test>;

fn signed(who: u64) -> RuntimeOrigin {
    RuntimeOrigin::signed(who)
}

fn name(s: &str) -> FarmName {
    FarmName::try_from(s.as_bytes().to_vec()).unwrap()
}

fn ipv4(ip: [u8; 4], prefix_len: u8, gateway: [u8; 4]) -> PublicIpv4Config {
    PublicIpv4Config {
        ip: Ipv4Cidr { ip, prefix_len },
        gateway,
    }
}

fn farm_ip(last: u8) -> PublicIpv4Config {
    ipv4([185, 69, 166, last], 24, [185, 69, 166, 1])
}

fn capacity() -> Resources {
    Resources::new(8, 16 * GIB, 500 * GIB, 1000 * GIB)
}

fn location() -> Location {
    Location {
        city: BoundedVec::truncate_from(b"Ghent".to_vec()),
        country: BoundedVec::truncate_from(b"Belgium".to_vec()),
        latitude: 51_054_342,
        longitude: 3_717_424,
    }
}

fn version() -> ExecutorVersion {
    ExecutorVersion::truncate_from(b"v1.2.3".to_vec())
}

fn create_farm(owner: u64, farm_name: &str) -> FarmId {
    let id = NextFarmId::<Test>::get();
    assert_ok!(Grid::create_farm(signed(owner), name(farm_name)));
    id
}

/// The farm's owner authorizes `account` to register a node into it.
fn authorize(farm_id: FarmId, account: u64) {
    let owner = Farms::<Test>::get(farm_id).expect("farm exists").owner;
    assert_ok!(Grid::authorize_node(signed(owner), farm_id, account));
}

fn register_with(account: u64, farm_id: FarmId, public_config: Option<PublicConfig>) -> NodeId {
    authorize(farm_id, account);
    let id = NextNodeId::<Test>::get();
    assert_ok!(Grid::register_node(
        signed(account),
        farm_id,
        capacity(),
        [9; 32],
        location(),
        public_config,
        version()
    ));
    id
}

fn register(account: u64, farm_id: FarmId) -> NodeId {
    register_with(account, farm_id, None)
}

/// A farm with `ips` pool addresses and an online node.
fn farm_with_online_node(ips: u8) -> (FarmId, NodeId) {
    let farm = create_farm(FARMER, "farm");
    for i in 0..ips {
        assert_ok!(Grid::add_farm_ip(signed(FARMER), farm, farm_ip(10 + i)));
    }
    let node = register(NODE, farm);
    assert_ok!(Grid::heartbeat(signed(NODE)));
    (farm, node)
}

fn node(id: NodeId) -> Node<Test> {
    Nodes::<Test>::get(id).unwrap()
}

fn update(
    account: u64,
    capacity: Resources,
    public_config: Option<PublicConfig>,
) -> DispatchResult {
    Grid::update_node(
        signed(account),
        capacity,
        location(),
        public_config,
        version(),
        [9; 32],
    )
}

fn set_config(who: u64, node_id: NodeId, public_config: Option<PublicConfig>) -> DispatchResult {
    Grid::set_node_public_config(signed(who), node_id, public_config)
}

fn public_v4(ip: PublicIpv4Config) -> Option<PublicConfig> {
    Some(PublicConfig {
        ipv4: Some(ip),
        ipv6: None,
        domain: None,
    })
}

// ---------------------------------------------------------------- farms

#[test]
fn create_farm_stores_farm_and_indexes() {
    run_test(|| {
        let id = create_farm(FARMER, "My-Farm_1");
        assert_eq!(id, 1);
        let farm = Farms::<Test>::get(id).unwrap();
        assert_eq!(farm.owner, FARMER);
        assert_eq!(farm.name, name("My-Farm_1"));
        assert_eq!(farm.certification, FarmCertification::NotCertified);
        assert_eq!(farm.pricing_policy, DEFAULT_PRICING_POLICY);
        assert_eq!(FarmIdByName::<Test>::get(name("my-farm_1")), Some(id));
        assert_eq!(FarmNodeCount::<Test>::get(id), 0);
        assert_eq!(NextFarmId::<Test>::get(), 2);
        System::assert_last_event(
            GridEvent::FarmCreated {
                farm_id: id,
                owner: FARMER,
                name: name("My-Farm_1"),
            }
            .into(),
        );
        assert_eq!(create_farm(OTHER, "second"), 2);
    });
}

#[test]
fn farm_name_rules() {
    run_test(|| {
        assert_noop!(
            Grid::create_farm(signed(FARMER), name("ab")),
            GridError::FarmNameTooShort
        );
        assert_noop!(
            Grid::create_farm(signed(FARMER), name("")),
            GridError::FarmNameTooShort
        );
        for bad in [
            "my farm",
            "farm.io",
            "farm/1",
            "ferm\u{e9}",
            "farm!",
            "a\0b",
        ] {
            assert_noop!(
                Grid::create_farm(signed(FARMER), name(bad)),
                GridError::FarmNameInvalidCharacter
            );
        }
        // Bounds: 3 and 40 characters are accepted, 41 cannot even be built.
        create_farm(FARMER, "abc");
        create_farm(FARMER, &"x".repeat(40));
        assert!(FarmName::try_from(vec![b'a'; 41]).is_err());
    });
}

#[test]
fn farm_names_are_unique_case_insensitively() {
    run_test(|| {
        let id = create_farm(FARMER, "MyFarm");
        for clash in ["myfarm", "MYFARM", "mYfArM"] {
            assert_noop!(
                Grid::create_farm(signed(OTHER), name(clash)),
                GridError::FarmNameTaken
            );
        }
        // The display name keeps its case; look-ups ignore it.
        assert_eq!(Farms::<Test>::get(id).unwrap().name, name("MyFarm"));
        assert_eq!(Grid::farm_by_name(b"MYFARM".to_vec()), Some(id));
        assert_eq!(Grid::farm_by_name(b"other".to_vec()), None);
        assert_eq!(Grid::farm_by_name(vec![b'a'; 100]), None);
    });
}

#[test]
fn farm_ids_exhausted() {
    run_test(|| {
        NextFarmId::<Test>::put(u32::MAX);
        assert_noop!(
            Grid::create_farm(signed(FARMER), name("last")),
            GridError::FarmIdsExhausted
        );
    });
}

#[test]
fn rename_farm_moves_the_name_index() {
    run_test(|| {
        let id = create_farm(FARMER, "alpha");
        create_farm(OTHER, "beta");
        assert_ok!(Grid::rename_farm(signed(FARMER), id, name("Gamma")));
        System::assert_last_event(
            GridEvent::FarmRenamed {
                farm_id: id,
                owner: FARMER,
                name: name("Gamma"),
            }
            .into(),
        );
        assert_eq!(FarmIdByName::<Test>::get(name("alpha")), None);
        assert_eq!(FarmIdByName::<Test>::get(name("gamma")), Some(id));
        // Only the letter case changes: the farm keeps its own name.
        assert_ok!(Grid::rename_farm(signed(FARMER), id, name("GAMMA")));
        assert_eq!(Farms::<Test>::get(id).unwrap().name, name("GAMMA"));
        // The old name is free again.
        create_farm(OTHER, "alpha");

        assert_noop!(
            Grid::rename_farm(signed(FARMER), id, name("BETA")),
            GridError::FarmNameTaken
        );
        assert_noop!(
            Grid::rename_farm(signed(OTHER), id, name("delta")),
            GridError::NotFarmOwner
        );
        assert_noop!(
            Grid::rename_farm(signed(FARMER), 99, name("delta")),
            GridError::FarmNotFound
        );
        assert_noop!(
            Grid::rename_farm(signed(FARMER), id, name("de")),
            GridError::FarmNameTooShort
        );
        assert_noop!(
            Grid::rename_farm(signed(FARMER), id, name("de lta")),
            GridError::FarmNameInvalidCharacter
        );
    });
}

#[test]
fn remove_farm_cleans_every_index() {
    run_test(|| {
        let id = create_farm(FARMER, "Doomed");
        for i in 0..MAX_IPS as u8 {
            assert_ok!(Grid::add_farm_ip(signed(FARMER), id, farm_ip(10 + i)));
        }
        assert_noop!(
            Grid::remove_farm(signed(OTHER), id),
            GridError::NotFarmOwner
        );
        assert_noop!(
            Grid::remove_farm(signed(FARMER), 99),
            GridError::FarmNotFound
        );
        // An authorization nobody used would outlive the farm.
        authorize(id, NODE);
        assert_noop!(
            Grid::remove_farm(signed(FARMER), id),
            GridError::FarmHasNodeAuthorizations
        );
        assert_ok!(Grid::revoke_node_authorization(signed(FARMER), id, NODE));
        let result = Grid::remove_farm(signed(FARMER), id).unwrap();
        // The fee is for the IPs actually removed.
        assert_eq!(
            result.actual_weight,
            Some(<() as WeightInfo>::remove_farm(MAX_IPS))
        );
        System::assert_last_event(
            GridEvent::FarmRemoved {
                farm_id: id,
                owner: FARMER,
                ips_released: MAX_IPS,
            }
            .into(),
        );
        assert_eq!(Farms::<Test>::iter().count(), 0);
        assert_eq!(FarmIdByName::<Test>::iter().count(), 0);
        assert_eq!(FarmNodeCount::<Test>::iter().count(), 0);
        assert_eq!(IpOwner::<Test>::iter().count(), 0);
        // Name and addresses are reusable; the id is not.
        let again = create_farm(OTHER, "doomed");
        assert_eq!(again, id + 1);
        assert_ok!(Grid::add_farm_ip(signed(OTHER), again, farm_ip(10)));
    });
}

#[test]
fn remove_farm_refuses_with_nodes_or_assigned_ips() {
    // Not `run_test`: reaching the second check needs a state the pallet never produces.
    new_test_ext().execute_with(|| {
        let (farm, node_id) = farm_with_online_node(2);
        assert_noop!(
            Grid::remove_farm(signed(FARMER), farm),
            GridError::FarmHasNodes
        );
        assert_ok!(Grid::assign_public_ips(node_id, 7, 1));
        // Simulate the node having vanished without its assignments being released, to reach
        // the second check (the pallet itself never allows this state).
        Nodes::<Test>::mutate(node_id, |n| n.as_mut().unwrap().assigned_ips = 0);
        NodesByFarm::<Test>::remove(farm, node_id);
        FarmNodeCount::<Test>::insert(farm, 0);
        assert_noop!(
            Grid::remove_farm(signed(FARMER), farm),
            GridError::FarmHasAssignedIps
        );
    });
}

#[test]
fn governance_sets_certification_and_pricing_policy() {
    run_test(|| {
        let id = create_farm(FARMER, "farm");
        assert_noop!(
            Grid::set_farm_certification(signed(FARMER), id, FarmCertification::Gold),
            DispatchError::BadOrigin
        );
        assert_noop!(
            Grid::set_farm_certification(RuntimeOrigin::root(), 99, FarmCertification::Gold),
            GridError::FarmNotFound
        );
        assert_ok!(Grid::set_farm_certification(
            RuntimeOrigin::root(),
            id,
            FarmCertification::Gold
        ));
        System::assert_last_event(
            GridEvent::FarmCertificationSet {
                farm_id: id,
                certification: FarmCertification::Gold,
            }
            .into(),
        );
        assert_eq!(
            Farms::<Test>::get(id).unwrap().certification,
            FarmCertification::Gold
        );

        assert_noop!(
            Grid::set_farm_pricing_policy(signed(FARMER), id, 3),
            DispatchError::BadOrigin
        );
        assert_noop!(
            Grid::set_farm_pricing_policy(RuntimeOrigin::root(), 99, 3),
            GridError::FarmNotFound
        );
        assert_ok!(Grid::set_farm_pricing_policy(RuntimeOrigin::root(), id, 3));
        System::assert_last_event(
            GridEvent::FarmPricingPolicySet {
                farm_id: id,
                pricing_policy: 3,
            }
            .into(),
        );
        assert_eq!(Grid::farm_pricing_policy(id), Some(3));
        assert_eq!(Grid::farm_pricing_policy(99), None);
    });
}

// ---------------------------------------------------------------- farm IP pool

#[test]
fn add_farm_ip_validates_and_indexes() {
    run_test(|| {
        let id = create_farm(FARMER, "farm");
        let other = create_farm(OTHER, "other");
        assert_ok!(Grid::add_farm_ip(signed(FARMER), id, farm_ip(10)));
        System::assert_last_event(
            GridEvent::FarmIpAdded {
                farm_id: id,
                owner: FARMER,
                ip: farm_ip(10),
            }
            .into(),
        );
        assert_eq!(
            IpOwner::<Test>::get([185, 69, 166, 10]),
            Some(IpHolder::Farm(id))
        );
        assert_eq!(Grid::free_public_ips(id), vec![farm_ip(10)]);

        // Unique chain-wide, whatever the prefix or gateway.
        assert_noop!(
            Grid::add_farm_ip(signed(FARMER), id, farm_ip(10)),
            GridError::IpAlreadyRegistered
        );
        assert_noop!(
            Grid::add_farm_ip(
                signed(OTHER),
                other,
                ipv4([185, 69, 166, 10], 25, [185, 69, 166, 2])
            ),
            GridError::IpAlreadyRegistered
        );
        assert_noop!(
            Grid::add_farm_ip(signed(FARMER), id, ipv4([10, 0, 0, 5], 24, [10, 0, 0, 1])),
            GridError::InvalidPublicIpv4(IpError::IpNotPublic(SpecialRange::Private))
        );
        assert_noop!(
            Grid::add_farm_ip(
                signed(FARMER),
                id,
                ipv4([185, 69, 166, 20], 24, [185, 69, 166, 20])
            ),
            GridError::InvalidPublicIpv4(IpError::GatewayEqualsIp)
        );
        assert_noop!(
            Grid::add_farm_ip(signed(OTHER), id, farm_ip(11)),
            GridError::NotFarmOwner
        );
        assert_noop!(
            Grid::add_farm_ip(signed(FARMER), 99, farm_ip(11)),
            GridError::FarmNotFound
        );
    });
}

#[test]
fn add_farm_ip_refuses_a_node_address_and_a_full_pool() {
    run_test(|| {
        let id = create_farm(FARMER, "farm");
        register_with(NODE, id, public_v4(farm_ip(200)));
        assert_noop!(
            Grid::add_farm_ip(signed(FARMER), id, farm_ip(200)),
            GridError::IpAlreadyRegistered
        );
        for i in 0..MAX_IPS as u8 {
            assert_ok!(Grid::add_farm_ip(signed(FARMER), id, farm_ip(10 + i)));
        }
        assert_noop!(
            Grid::add_farm_ip(signed(FARMER), id, farm_ip(100)),
            GridError::TooManyFarmIps
        );
    });
}

#[test]
fn remove_farm_ip_rules() {
    run_test(|| {
        let (farm, node_id) = farm_with_online_node(2);
        assert_noop!(
            Grid::remove_farm_ip(signed(OTHER), farm, [185, 69, 166, 10]),
            GridError::NotFarmOwner
        );
        assert_noop!(
            Grid::remove_farm_ip(signed(FARMER), 99, [185, 69, 166, 10]),
            GridError::FarmNotFound
        );
        assert_noop!(
            Grid::remove_farm_ip(signed(FARMER), farm, [185, 69, 166, 99]),
            GridError::IpNotInFarm
        );
        let assigned = Grid::assign_public_ips(node_id, 5, 1).unwrap();
        assert_noop!(
            Grid::remove_farm_ip(signed(FARMER), farm, assigned[0].ip.ip),
            GridError::IpAssigned
        );
        assert_ok!(Grid::remove_farm_ip(
            signed(FARMER),
            farm,
            [185, 69, 166, 11]
        ));
        System::assert_last_event(
            GridEvent::FarmIpRemoved {
                farm_id: farm,
                owner: FARMER,
                ip: [185, 69, 166, 11],
            }
            .into(),
        );
        assert_eq!(IpOwner::<Test>::get([185, 69, 166, 11]), None);
        assert_eq!(Farms::<Test>::get(farm).unwrap().public_ips.len(), 1);
    });
}

// ---------------------------------------------------------------- nodes

#[test]
fn register_node_stores_node_and_indexes() {
    run_test(|| {
        let farm = create_farm(FARMER, "farm");
        let config = PublicConfig {
            ipv4: Some(farm_ip(50)),
            ipv6: Some(PublicIpv6Config {
                ip: Ipv6Cidr {
                    ip: (0x2a02_1802_005eu128 << 80 | 0x10).to_be_bytes(),
                    prefix_len: 64,
                },
                gateway: (0xfe80u128 << 112 | 1).to_be_bytes(),
            }),
            domain: Some(Domain::truncate_from(b"node-1.example.com".to_vec())),
        };
        let id = register_with(NODE, farm, Some(config.clone()));
        System::assert_last_event(
            GridEvent::NodeRegistered {
                node_id: id,
                farm_id: farm,
                account: NODE,
            }
            .into(),
        );
        let n = node(id);
        assert_eq!((n.id, n.farm_id, n.account), (id, farm, NODE));
        assert_eq!(n.capacity, capacity());
        assert!(n.reserved.is_zero());
        assert_eq!(n.public_config, Some(config));
        assert_eq!((n.power_target, n.power_state), (Power::Up, Power::Up));
        assert_eq!(
            (n.active_contracts, n.assigned_ips, n.uptime_seconds),
            (0, 0, 0)
        );
        assert_eq!(n.last_heartbeat, None);
        assert_eq!(n.registered_at, 1);
        assert_eq!(Grid::node_by_account(NODE), Some(id));
        assert_eq!(Grid::nodes_of_farm(farm), vec![id]);
        assert_eq!(FarmNodeCount::<Test>::get(farm), 1);
        assert_eq!(
            IpOwner::<Test>::get([185, 69, 166, 50]),
            Some(IpHolder::Node(id))
        );
        // No heartbeat yet: registered but not online.
        assert_eq!(Grid::node_status(id), Some(NodeStatus::Offline));
        assert_eq!(Grid::node_status(99), None);

        assert_noop!(
            Grid::register_node(
                signed(NODE),
                farm,
                capacity(),
                [9; 32],
                location(),
                None,
                version()
            ),
            GridError::AccountAlreadyHasNode
        );
        authorize(farm, NODE2);
        assert_noop!(
            Grid::register_node(
                signed(NODE2),
                farm,
                capacity(),
                [9; 32],
                location(),
                public_v4(farm_ip(50)),
                version()
            ),
            GridError::IpAlreadyRegistered
        );
    });
}

#[test]
fn register_node_rejects_bad_fields() {
    run_test(|| {
        let farm = create_farm(FARMER, "farm");
        authorize(farm, NODE);
        let reg = |farm_id: FarmId,
                   cap: Resources,
                   key: BoxKey,
                   loc: Location,
                   cfg: Option<PublicConfig>,
                   ver: &[u8]| {
            Grid::register_node(
                signed(NODE),
                farm_id,
                cap,
                key,
                loc,
                cfg,
                ExecutorVersion::truncate_from(ver.to_vec()),
            )
        };
        let v = b"v1".as_slice();
        assert_noop!(
            reg(99, capacity(), [9; 32], location(), None, v),
            GridError::FarmNotFound
        );
        let min = MinCapacity::get();
        for below in [
            Resources {
                cru: min.cru - 1,
                ..capacity()
            },
            Resources {
                mru: min.mru - 1,
                ..capacity()
            },
            Resources {
                sru: min.sru - 1,
                ..capacity()
            },
        ] {
            assert_noop!(
                reg(farm, below, [9; 32], location(), None, v),
                GridError::CapacityBelowMinimum
            );
        }
        // Exactly the minimum is enough (hru minimum is 0: SSD-only nodes).
        assert_ok!(reg(farm, min, [9; 32], location(), None, v));
        assert_ok!(Grid::remove_node(signed(NODE), 1));
        authorize(farm, NODE);

        assert_noop!(
            reg(farm, capacity(), [0; 32], location(), None, v),
            GridError::InvalidBoxKey
        );
        for (lat, lon) in [
            (90_000_001, 0),
            (-90_000_001, 0),
            (0, 180_000_001),
            (0, -180_000_001),
        ] {
            let loc = Location {
                latitude: lat,
                longitude: lon,
                ..location()
            };
            assert_noop!(
                reg(farm, capacity(), [9; 32], loc, None, v),
                GridError::InvalidCoordinates
            );
        }
        let edge = Location {
            latitude: -90_000_000,
            longitude: 180_000_000,
            ..location()
        };
        assert_ok!(reg(farm, capacity(), [9; 32], edge, None, v));
        assert_ok!(Grid::remove_node(signed(NODE), 2));
        authorize(farm, NODE);

        let bad_city = Location {
            city: BoundedVec::truncate_from(vec![0xff, 0xfe]),
            ..location()
        };
        assert_noop!(
            reg(farm, capacity(), [9; 32], bad_city, None, v),
            GridError::InvalidLocationName
        );
        let bad_country = Location {
            country: BoundedVec::truncate_from(vec![0xc3]),
            ..location()
        };
        assert_noop!(
            reg(farm, capacity(), [9; 32], bad_country, None, v),
            GridError::InvalidLocationName
        );
        let versions: [&[u8]; 4] = [b"", b"v 1", b"v1\n", &[0x80]];
        for ver in versions {
            assert_noop!(
                reg(farm, capacity(), [9; 32], location(), None, ver),
                GridError::InvalidExecutorVersion
            );
        }
        let bad_v4 = public_v4(ipv4([185, 69, 166, 0], 24, [185, 69, 166, 1]));
        assert_noop!(
            reg(farm, capacity(), [9; 32], location(), bad_v4, v),
            GridError::InvalidPublicIpv4(IpError::IpIsNetworkAddress)
        );
        let bad_v6 = Some(PublicConfig {
            ipv4: None,
            ipv6: Some(PublicIpv6Config {
                ip: Ipv6Cidr {
                    ip: (0xfd00u128 << 112 | 1).to_be_bytes(),
                    prefix_len: 64,
                },
                gateway: (0xfe80u128 << 112 | 1).to_be_bytes(),
            }),
            domain: None,
        });
        assert_noop!(
            reg(farm, capacity(), [9; 32], location(), bad_v6, v),
            GridError::InvalidPublicIpv6(IpError::IpNotPublic(SpecialRange::Private))
        );
        let domains: [&[u8]; 8] = [
            b"",
            b"-node.example.com",
            b"node-.example.com",
            b"node..example.com",
            b"node.example.com.",
            b"no de.example.com",
            b"node_1.example.com",
            &[b'a'; 64],
        ];
        for domain in domains {
            let cfg = Some(PublicConfig {
                ipv4: None,
                ipv6: None,
                domain: Some(Domain::truncate_from(domain.to_vec())),
            });
            assert_noop!(
                reg(farm, capacity(), [9; 32], location(), cfg, v),
                GridError::InvalidDomain
            );
        }
        // A 63-character label is the longest allowed.
        let long_label = Some(PublicConfig {
            ipv4: None,
            ipv6: None,
            domain: Some(Domain::truncate_from(
                [vec![b'a'; 63], b".example.io".to_vec()].concat(),
            )),
        });
        assert_ok!(reg(farm, capacity(), [9; 32], location(), long_label, v));
    });
}

#[test]
fn node_ids_exhausted() {
    run_test(|| {
        let farm = create_farm(FARMER, "farm");
        authorize(farm, NODE);
        NextNodeId::<Test>::put(u32::MAX);
        assert_noop!(
            Grid::register_node(
                signed(NODE),
                farm,
                capacity(),
                [9; 32],
                location(),
                None,
                version()
            ),
            GridError::NodeIdsExhausted
        );
    });
}

#[test]
fn update_node_replaces_fields_but_keeps_reservations_covered() {
    run_test(|| {
        let (farm, id) = farm_with_online_node(0);
        assert_noop!(update(OTHER, capacity(), None), GridError::NotANode);
        assert_noop!(
            update(
                NODE,
                Resources {
                    mru: 1,
                    ..capacity()
                },
                None
            ),
            GridError::CapacityBelowMinimum
        );

        assert_ok!(Grid::reserve(
            id,
            &Resources::new(20, 8 * GIB, 100 * GIB, 0)
        ));
        // CPU may shrink to reserved / overcommit (20 / 4 = 5 cores), not below.
        assert_ok!(update(
            NODE,
            Resources {
                cru: 5,
                ..capacity()
            },
            None
        ));
        assert_noop!(
            update(
                NODE,
                Resources {
                    cru: 4,
                    ..capacity()
                },
                None
            ),
            GridError::CapacityBelowReserved
        );
        assert_noop!(
            update(
                NODE,
                Resources {
                    mru: 8 * GIB - 1,
                    ..capacity()
                },
                None
            ),
            GridError::CapacityBelowReserved
        );
        assert_noop!(
            update(
                NODE,
                Resources {
                    sru: 100 * GIB - 1,
                    ..capacity()
                },
                None
            ),
            GridError::CapacityBelowReserved
        );
        assert_ok!(update(
            NODE,
            Resources {
                mru: 8 * GIB,
                sru: 100 * GIB,
                ..capacity()
            },
            None
        ));
        System::assert_last_event(
            GridEvent::NodeUpdated {
                node_id: id,
                farm_id: farm,
                account: NODE,
            }
            .into(),
        );
        assert_eq!(node(id).capacity.mru, 8 * GIB);

        let new_loc = Location {
            latitude: 1,
            ..location()
        };
        assert_ok!(Grid::update_node(
            signed(NODE),
            capacity(),
            new_loc.clone(),
            None,
            ExecutorVersion::truncate_from(b"v2".to_vec()),
            [3; 32]
        ));
        let n = node(id);
        assert_eq!(
            (n.location, n.box_key, n.executor_version.to_vec()),
            (new_loc, [3; 32], b"v2".to_vec())
        );
        assert_noop!(
            Grid::update_node(
                signed(NODE),
                capacity(),
                location(),
                None,
                version(),
                [0; 32]
            ),
            GridError::InvalidBoxKey
        );
    });
}

#[test]
fn update_node_moves_its_public_ip_in_the_index() {
    run_test(|| {
        let farm = create_farm(FARMER, "farm");
        assert_ok!(Grid::add_farm_ip(signed(FARMER), farm, farm_ip(10)));
        let id = register_with(NODE, farm, public_v4(farm_ip(50)));
        register_with(NODE2, farm, public_v4(farm_ip(60)));
        // Keeping the same address is not a conflict with itself.
        assert_ok!(update(NODE, capacity(), public_v4(farm_ip(50))));
        assert_noop!(
            update(NODE, capacity(), public_v4(farm_ip(60))),
            GridError::IpAlreadyRegistered
        );
        assert_noop!(
            update(NODE, capacity(), public_v4(farm_ip(10))),
            GridError::IpAlreadyRegistered
        );
        assert_noop!(
            update(
                NODE,
                capacity(),
                public_v4(ipv4([192, 168, 1, 2], 24, [192, 168, 1, 1]))
            ),
            GridError::InvalidPublicIpv4(IpError::IpNotPublic(SpecialRange::Private))
        );
        assert_ok!(update(NODE, capacity(), public_v4(farm_ip(51))));
        assert_eq!(IpOwner::<Test>::get([185, 69, 166, 50]), None);
        assert_eq!(
            IpOwner::<Test>::get([185, 69, 166, 51]),
            Some(IpHolder::Node(id))
        );
        assert_ok!(update(NODE, capacity(), None));
        assert_eq!(IpOwner::<Test>::get([185, 69, 166, 51]), None);
    });
}

// ---------------------------------------------------------------- node public config

#[test]
fn farmer_sets_changes_and_clears_node_public_config() {
    run_test(|| {
        let farm = create_farm(FARMER, "farm");
        let id = register(NODE, farm);
        let config = PublicConfig {
            ipv4: Some(farm_ip(50)),
            ipv6: Some(PublicIpv6Config {
                ip: Ipv6Cidr {
                    ip: (0x2a02_1802_005eu128 << 80 | 0x10).to_be_bytes(),
                    prefix_len: 64,
                },
                gateway: (0xfe80u128 << 112 | 1).to_be_bytes(),
            }),
            domain: Some(Domain::truncate_from(b"gw.example.com".to_vec())),
        };
        assert_ok!(set_config(FARMER, id, Some(config.clone())));
        System::assert_last_event(
            GridEvent::NodePublicConfigSet {
                node_id: id,
                farm_id: farm,
            }
            .into(),
        );
        assert_eq!(node(id).public_config, Some(config.clone()));
        assert_eq!(
            IpOwner::<Test>::get([185, 69, 166, 50]),
            Some(IpHolder::Node(id))
        );

        // Keeping the same address is not a conflict with itself.
        let same_ip = PublicConfig {
            domain: None,
            ..config.clone()
        };
        assert_ok!(set_config(FARMER, id, Some(same_ip.clone())));
        assert_eq!(node(id).public_config, Some(same_ip));
        assert_eq!(
            IpOwner::<Test>::get([185, 69, 166, 50]),
            Some(IpHolder::Node(id))
        );

        // A new address: the index follows, and the old one is free for anyone again.
        assert_ok!(set_config(FARMER, id, public_v4(farm_ip(51))));
        assert_eq!(node(id).public_config, public_v4(farm_ip(51)));
        assert_eq!(IpOwner::<Test>::get([185, 69, 166, 50]), None);
        assert_eq!(
            IpOwner::<Test>::get([185, 69, 166, 51]),
            Some(IpHolder::Node(id))
        );
        assert_ok!(Grid::add_farm_ip(signed(FARMER), farm, farm_ip(50)));

        // No IPv4 any more: the node's address leaves the index.
        let without_v4 = PublicConfig {
            ipv4: None,
            ..config
        };
        assert_ok!(set_config(FARMER, id, Some(without_v4.clone())));
        assert_eq!(node(id).public_config, Some(without_v4));
        assert_eq!(IpOwner::<Test>::get([185, 69, 166, 51]), None);

        assert_ok!(set_config(FARMER, id, None));
        System::assert_last_event(
            GridEvent::NodePublicConfigSet {
                node_id: id,
                farm_id: farm,
            }
            .into(),
        );
        assert_eq!(node(id).public_config, None);
        // Clearing twice is fine.
        assert_ok!(set_config(FARMER, id, None));
        // Only the farm's pool address is left in the index.
        assert_eq!(IpOwner::<Test>::iter().count(), 1);
        // The rest of the node's description is untouched.
        let n = node(id);
        assert_eq!(
            (n.account, n.capacity, n.location, n.executor_version),
            (NODE, capacity(), location(), version())
        );
    });
}

#[test]
fn only_the_farm_owner_sets_node_public_config() {
    run_test(|| {
        let farm = create_farm(FARMER, "farm");
        create_farm(OTHER, "other");
        let id = register_with(NODE, farm, public_v4(farm_ip(50)));
        // Neither another farmer nor the node itself, whatever the config.
        for who in [OTHER, NODE] {
            assert_noop!(
                set_config(who, id, public_v4(farm_ip(51))),
                GridError::NotFarmOwner
            );
            assert_noop!(set_config(who, id, None), GridError::NotFarmOwner);
            assert_noop!(
                set_config(who, id, public_v4(ipv4([10, 0, 0, 5], 24, [10, 0, 0, 1]))),
                GridError::NotFarmOwner
            );
        }
        assert_eq!(node(id).public_config, public_v4(farm_ip(50)));
        assert_eq!(
            IpOwner::<Test>::get([185, 69, 166, 50]),
            Some(IpHolder::Node(id))
        );
        assert_eq!(IpOwner::<Test>::get([185, 69, 166, 51]), None);
    });
}

#[test]
fn node_public_config_keeps_ipv4_unique() {
    run_test(|| {
        let farm = create_farm(FARMER, "farm");
        let other = create_farm(OTHER, "other");
        assert_ok!(Grid::add_farm_ip(signed(FARMER), farm, farm_ip(10)));
        assert_ok!(Grid::add_farm_ip(signed(OTHER), other, farm_ip(20)));
        let id = register_with(NODE, farm, public_v4(farm_ip(50)));
        let other_node = register_with(NODE2, other, public_v4(farm_ip(60)));
        // Pool addresses of its own or another farm, and another node's address.
        for taken in [10, 20, 60] {
            assert_noop!(
                set_config(FARMER, id, public_v4(farm_ip(taken))),
                GridError::IpAlreadyRegistered
            );
        }
        // Whatever the prefix, gateway or other fields.
        assert_noop!(
            set_config(
                FARMER,
                id,
                Some(PublicConfig {
                    ipv4: Some(ipv4([185, 69, 166, 60], 25, [185, 69, 166, 2])),
                    ipv6: None,
                    domain: Some(Domain::truncate_from(b"gw.example.com".to_vec())),
                })
            ),
            GridError::IpAlreadyRegistered
        );
        // Also for a node that has no address yet.
        let bare = register(12, farm);
        assert_noop!(
            set_config(FARMER, bare, public_v4(farm_ip(50))),
            GridError::IpAlreadyRegistered
        );
        assert_eq!(node(id).public_config, public_v4(farm_ip(50)));
        assert_eq!(
            IpOwner::<Test>::get([185, 69, 166, 60]),
            Some(IpHolder::Node(other_node))
        );
        assert_eq!(
            IpOwner::<Test>::get([185, 69, 166, 10]),
            Some(IpHolder::Farm(farm))
        );
    });
}

#[test]
fn node_public_config_is_validated_like_update_node() {
    run_test(|| {
        let farm = create_farm(FARMER, "farm");
        let id = register_with(NODE, farm, public_v4(farm_ip(50)));
        let v6 = |ip: u128| {
            Some(PublicConfig {
                ipv4: None,
                ipv6: Some(PublicIpv6Config {
                    ip: Ipv6Cidr {
                        ip: ip.to_be_bytes(),
                        prefix_len: 64,
                    },
                    gateway: (0xfe80u128 << 112 | 1).to_be_bytes(),
                }),
                domain: None,
            })
        };
        let domain = |name: Vec<u8>| {
            Some(PublicConfig {
                ipv4: None,
                ipv6: None,
                domain: Some(Domain::truncate_from(name)),
            })
        };
        let cases: [(Option<PublicConfig>, DispatchError); 8] = [
            (
                public_v4(ipv4([185, 69, 166, 0], 24, [185, 69, 166, 1])),
                GridError::InvalidPublicIpv4(IpError::IpIsNetworkAddress).into(),
            ),
            (
                public_v4(ipv4([192, 168, 1, 2], 24, [192, 168, 1, 1])),
                GridError::InvalidPublicIpv4(IpError::IpNotPublic(SpecialRange::Private)).into(),
            ),
            (
                public_v4(ipv4([185, 69, 166, 20], 24, [185, 69, 166, 20])),
                GridError::InvalidPublicIpv4(IpError::GatewayEqualsIp).into(),
            ),
            (
                v6(0xfd00u128 << 112 | 1),
                GridError::InvalidPublicIpv6(IpError::IpNotPublic(SpecialRange::Private)).into(),
            ),
            (domain(vec![]), GridError::InvalidDomain.into()),
            (
                domain(b"node..example.com".to_vec()),
                GridError::InvalidDomain.into(),
            ),
            (
                domain(b"node_1.example.com".to_vec()),
                GridError::InvalidDomain.into(),
            ),
            (domain(vec![b'a'; 64]), GridError::InvalidDomain.into()),
        ];
        for (config, error) in cases {
            assert_noop!(update(NODE, capacity(), config.clone()), error);
            assert_noop!(set_config(FARMER, id, config), error);
        }
        // An invalid config is refused before the address check: the index is untouched.
        assert_eq!(
            IpOwner::<Test>::get([185, 69, 166, 50]),
            Some(IpHolder::Node(id))
        );
        // Documentation addresses only on a test network, as for the node itself.
        let doc = public_v4(ipv4([198, 51, 100, 10], 24, [198, 51, 100, 1]));
        assert_noop!(
            set_config(FARMER, id, doc.clone()),
            GridError::InvalidPublicIpv4(IpError::IpNotPublic(SpecialRange::Documentation))
        );
        DocumentationIpsArePublic::<Test>::put(true);
        assert_ok!(set_config(FARMER, id, doc));
    });
}

#[test]
fn node_public_config_of_an_unknown_node() {
    run_test(|| {
        let farm = create_farm(FARMER, "farm");
        assert_noop!(
            set_config(FARMER, 99, public_v4(farm_ip(50))),
            GridError::NodeNotFound
        );
        // A removed node is unknown too.
        let id = register(NODE, farm);
        assert_ok!(Grid::remove_node(signed(NODE), id));
        assert_noop!(set_config(FARMER, id, None), GridError::NodeNotFound);
    });
}

#[test]
fn remove_node_by_node_or_farmer_cleans_every_index() {
    run_test(|| {
        let farm = create_farm(FARMER, "farm");
        let a = register_with(NODE, farm, public_v4(farm_ip(50)));
        let b = register(NODE2, farm);
        assert_noop!(
            Grid::remove_node(signed(OTHER), a),
            GridError::NotNodeOrFarmOwner
        );
        assert_noop!(
            Grid::remove_node(signed(NODE2), a),
            GridError::NotNodeOrFarmOwner
        );
        assert_noop!(Grid::remove_node(signed(NODE), 99), GridError::NodeNotFound);

        assert_ok!(Grid::remove_node(signed(NODE), a));
        System::assert_last_event(
            GridEvent::NodeRemoved {
                node_id: a,
                farm_id: farm,
                account: NODE,
                removed_by: Some(NODE),
            }
            .into(),
        );
        assert_eq!(FarmNodeCount::<Test>::get(farm), 1);
        assert_ok!(Grid::remove_node(signed(FARMER), b));
        System::assert_last_event(
            GridEvent::NodeRemoved {
                node_id: b,
                farm_id: farm,
                account: NODE2,
                removed_by: Some(FARMER),
            }
            .into(),
        );
        assert_eq!(Nodes::<Test>::iter().count(), 0);
        assert_eq!(NodeIdByAccount::<Test>::iter().count(), 0);
        assert_eq!(NodesByFarm::<Test>::iter().count(), 0);
        assert_eq!(IpOwner::<Test>::iter().count(), 0);
        assert_eq!(FarmNodeCount::<Test>::get(farm), 0);
        assert!(Grid::nodes_of_farm(farm).is_empty());
        // Other pallets were told, to drop their per-node entries.
        assert_eq!(
            REMOVED_NODES.with(|r| r.borrow().clone()),
            vec![(a, NODE), (b, NODE2)]
        );
        // The account may register again, under a new id, and the farm can now go.
        assert_eq!(register(NODE, farm), b + 1);
        assert_ok!(Grid::remove_node(signed(NODE), b + 1));
        assert_ok!(Grid::remove_farm(signed(FARMER), farm));
    });
}

/// Runs `on_initialize` for each block up to `n`.
fn run_to_block(n: u64) {
    use frame_support::traits::Hooks;
    while System::block_number() < n {
        let next = System::block_number() + 1;
        System::set_block_number(next);
        Grid::on_initialize(next);
    }
}

#[test]
fn the_farm_owner_evicts_a_node_with_contracts_after_a_notice_period() {
    run_test(|| {
        let (farm, id) = farm_with_online_node(2);
        let vm = Resources::new(1, GIB, 0, 0);
        add_contract(7, id, vm, 1);
        add_contract(8, id, vm, 1);
        // Asked by the farm owner: the node stays until the notice runs out.
        assert_ok!(Grid::remove_node(signed(FARMER), id));
        let due = 1 + NOTICE_BLOCKS;
        System::assert_last_event(
            GridEvent::NodeRemovalScheduled {
                node_id: id,
                farm_id: farm,
                due,
                requested_by: Some(FARMER),
            }
            .into(),
        );
        assert_noop!(
            Grid::remove_node(signed(NODE), id),
            GridError::NodeRemovalPending
        );
        // No new work meanwhile.
        assert_noop!(
            <Grid as GridCapacity<u64>>::node_accepts_workloads(id),
            GridError::NodeLeaving
        );
        run_to_block(due - 1);
        assert_eq!(contracts_on(id), 2);
        run_to_block(due);
        // Contracts ended, capacity and IPs released, the node gone with its indexes.
        assert_eq!(contracts_on(id), 0);
        assert!(Nodes::<Test>::get(id).is_none());
        assert!(NodeRemovals::<Test>::get(id).is_none());
        assert_eq!(Grid::free_public_ips(farm).len(), 2);
        assert_eq!(FarmNodeCount::<Test>::get(farm), 0);
        System::assert_has_event(
            GridEvent::NodeRemoved {
                node_id: id,
                farm_id: farm,
                account: NODE,
                removed_by: Some(FARMER),
            }
            .into(),
        );
    });
}

#[test]
fn node_removals_end_a_bounded_number_of_contracts_per_block() {
    run_test(|| {
        let (farm, a) = farm_with_online_node(0);
        let b = register(NODE2, farm);
        assert_ok!(Grid::heartbeat(signed(NODE2)));
        let vm = Resources::new(1, GIB, 0, 0);
        for c in 0..5 {
            add_contract(c, a, vm, 0);
        }
        add_contract(10, b, vm, 0);
        assert_ok!(Grid::remove_node(signed(FARMER), a));
        assert_ok!(Grid::remove_node(signed(NODE2), b));
        let due = 1 + NOTICE_BLOCKS;
        run_to_block(due);
        // 3 a block: the first node keeps 2 contracts, the second waits behind it.
        assert_eq!((contracts_on(a), contracts_on(b)), (2, 1));
        run_to_block(due + 1);
        assert!(Nodes::<Test>::get(a).is_none());
        assert!(Nodes::<Test>::get(b).is_none());
        assert_eq!(
            NodeRemovalQueueEnds::<Test>::get(RemovalKind::Notice),
            (2, 2)
        );
    });
}

#[test]
fn governance_forces_a_removal_without_notice() {
    run_test(|| {
        let (farm, id) = farm_with_online_node(1);
        add_contract(7, id, Resources::new(1, GIB, 0, 0), 1);
        assert_noop!(
            Grid::force_remove_node(signed(FARMER), id),
            sp_runtime::DispatchError::BadOrigin
        );
        // A notice was running; governance cuts it short.
        assert_ok!(Grid::remove_node(signed(NODE), id));
        assert_ok!(Grid::force_remove_node(RuntimeOrigin::root(), id));
        run_to_block(2);
        assert!(Nodes::<Test>::get(id).is_none());
        System::assert_has_event(
            GridEvent::NodeRemoved {
                node_id: id,
                farm_id: farm,
                account: NODE,
                removed_by: None,
            }
            .into(),
        );
        // The notice's stale queue entry is skipped when it comes.
        run_to_block(2 + NOTICE_BLOCKS);
        assert_eq!(
            NodeRemovalQueueEnds::<Test>::get(RemovalKind::Notice),
            (1, 1)
        );
        // The emptied farm: governance removes it with its pool and authorizations.
        authorize(farm, OTHER);
        assert_ok!(Grid::force_remove_farm(RuntimeOrigin::root(), farm));
        assert!(Farms::<Test>::get(farm).is_none());
        assert_eq!(NodeAuthorizations::<Test>::iter().count(), 0);
        assert_eq!(IpOwner::<Test>::iter().count(), 0);
    });
}

#[test]
fn governance_removes_a_farm_ip_ending_the_contract_that_holds_it() {
    run_test(|| {
        let (farm, id) = farm_with_online_node(2);
        add_contract(7, id, Resources::new(1, GIB, 0, 0), 1);
        let held = Farms::<Test>::get(farm)
            .unwrap()
            .public_ips
            .iter()
            .find(|e| e.assigned.is_some())
            .unwrap()
            .config
            .ip
            .ip;
        assert_noop!(
            Grid::force_remove_farm_ip(signed(FARMER), farm, held),
            sp_runtime::DispatchError::BadOrigin
        );
        assert_ok!(Grid::force_remove_farm_ip(
            RuntimeOrigin::root(),
            farm,
            held
        ));
        System::assert_last_event(
            GridEvent::FarmIpForceRemoved {
                farm_id: farm,
                ip: held,
                contract: Some(7),
            }
            .into(),
        );
        assert_eq!(contracts_on(id), 0);
        let farm_now = Farms::<Test>::get(farm).unwrap();
        assert_eq!(farm_now.public_ips.len(), 1);
        assert!(IpOwner::<Test>::get(held).is_none());
        assert_eq!(Nodes::<Test>::get(id).unwrap().assigned_ips, 0);
    });
}

#[test]
fn governance_removes_a_farm_with_its_nodes_and_the_farm_stays_frozen_meanwhile() {
    run_test(|| {
        let (farm, busy) = farm_with_online_node(2);
        let idle = register(NODE2, farm);
        add_contract(7, busy, Resources::new(1, GIB, 0, 0), 1);
        authorize(farm, 30);
        assert_noop!(
            Grid::force_remove_farm(signed(FARMER), farm),
            sp_runtime::DispatchError::BadOrigin
        );
        assert_ok!(Grid::force_remove_farm(RuntimeOrigin::root(), farm));
        System::assert_has_event(GridEvent::FarmFrozen { farm_id: farm }.into());
        System::assert_last_event(
            GridEvent::FarmNodesForceRemoved {
                farm_id: farm,
                removed: 1,
                scheduled: 1,
            }
            .into(),
        );
        // The idle node went at once; the busy one waits for its contract to end.
        assert!(Nodes::<Test>::get(idle).is_none());
        assert!(Nodes::<Test>::get(busy).is_some());
        assert!(FarmsUnderRemoval::<Test>::contains_key(farm));
        // Frozen: the farmer cannot add what the removal would have to chase.
        assert_noop!(
            Grid::authorize_node(signed(FARMER), farm, 31),
            GridError::FarmBeingRemoved
        );
        assert_noop!(
            Grid::register_node(
                signed(30),
                farm,
                capacity(),
                [9; 32],
                location(),
                None,
                version()
            ),
            GridError::FarmBeingRemoved
        );
        assert_noop!(
            Grid::add_farm_ip(signed(FARMER), farm, farm_ip(40)),
            GridError::FarmBeingRemoved
        );
        assert_noop!(
            Grid::rename_farm(signed(FARMER), farm, name("elsewhere")),
            GridError::FarmBeingRemoved
        );
        assert_noop!(
            <Grid as GridCapacity<u64>>::node_accepts_workloads(busy),
            GridError::NodeLeaving
        );
        // Calling again while the forced removal is under way changes nothing.
        assert_ok!(Grid::force_remove_farm(RuntimeOrigin::root(), farm));
        System::assert_last_event(
            GridEvent::FarmNodesForceRemoved {
                farm_id: farm,
                removed: 0,
                scheduled: 0,
            }
            .into(),
        );
        run_to_block(2);
        assert_eq!(contracts_on(busy), 0);
        assert!(Nodes::<Test>::get(busy).is_none());
        assert!(Farms::<Test>::get(farm).is_some());
        // Nodes gone: the next call removes the farm, its pool and the unused authorization.
        assert_ok!(Grid::force_remove_farm(RuntimeOrigin::root(), farm));
        System::assert_last_event(
            GridEvent::FarmForceRemoved {
                farm_id: farm,
                ips_released: 2,
            }
            .into(),
        );
        assert!(Farms::<Test>::get(farm).is_none());
        assert!(!FarmsUnderRemoval::<Test>::contains_key(farm));
        assert_eq!(NodeAuthorizations::<Test>::iter().count(), 0);
        assert_eq!(IpOwner::<Test>::iter().count(), 0);
        assert_eq!(Deposits::<Test>::iter().count(), 0);
    });
}

#[test]
fn a_farm_with_more_nodes_than_one_call_removes_is_removed_in_steps() {
    run_test(|| {
        let farm = create_farm(FARMER, "crowded");
        let nodes: Vec<NodeId> = (0..=MAX_NODES_FORCE_REMOVED)
            .map(|n| register(1_000 + u64::from(n), farm))
            .collect();
        for (n, node_id) in nodes.iter().enumerate() {
            add_contract(n as u64 + 1, *node_id, Resources::new(1, GIB, 0, 0), 0);
        }
        assert_ok!(Grid::force_remove_farm(RuntimeOrigin::root(), farm));
        System::assert_last_event(
            GridEvent::FarmNodesForceRemoved {
                farm_id: farm,
                removed: 0,
                scheduled: MAX_NODES_FORCE_REMOVED,
            }
            .into(),
        );
        // The one node not scheduled yet takes no work either: its farm is frozen.
        let waiting = *nodes
            .iter()
            .find(|id| !NodeRemovals::<Test>::contains_key(**id))
            .unwrap();
        assert!(<Grid as GridCapacity<u64>>::node_is_leaving(waiting));
        assert_noop!(
            <Grid as GridCapacity<u64>>::node_accepts_workloads(waiting),
            GridError::FarmBeingRemoved
        );
        // The next call passes over the removals under way and schedules the last node.
        assert_ok!(Grid::force_remove_farm(RuntimeOrigin::root(), farm));
        System::assert_last_event(
            GridEvent::FarmNodesForceRemoved {
                farm_id: farm,
                removed: 0,
                scheduled: 1,
            }
            .into(),
        );
        run_to_block(
            2 + u64::from(MAX_NODES_FORCE_REMOVED + 1) / u64::from(MAX_ENDED_PER_BLOCK) + 1,
        );
        assert_eq!(FarmNodeCount::<Test>::get(farm), 0);
        // Emptied, the frozen farm may also go by its owner's hand.
        assert_ok!(Grid::remove_farm(signed(FARMER), farm));
        assert!(Farms::<Test>::get(farm).is_none());
        assert!(!FarmsUnderRemoval::<Test>::contains_key(farm));
    });
}

#[test]
fn anyone_removes_a_dead_node_and_its_contracts_end() {
    run_test(|| {
        let (farm, id) = farm_with_online_node(1);
        add_contract(7, id, Resources::new(1, GIB, 0, 0), 1);
        // Last heartbeat at block 1: alive until block 1 + DEAD_AFTER_BLOCKS.
        System::set_block_number(DEAD_AFTER_BLOCKS);
        assert_noop!(
            Grid::remove_dead_node(signed(OTHER), id),
            GridError::NodeNotDead
        );
        System::set_block_number(1 + DEAD_AFTER_BLOCKS);
        assert_ok!(Grid::remove_dead_node(signed(OTHER), id));
        assert_noop!(
            Grid::remove_dead_node(signed(OTHER), id),
            GridError::NodeRemovalPending
        );
        run_to_block(2 + DEAD_AFTER_BLOCKS);
        assert_eq!(contracts_on(id), 0);
        assert!(Nodes::<Test>::get(id).is_none());
        assert_eq!(Grid::free_public_ips(farm).len(), 1);
        System::assert_has_event(
            GridEvent::NodeRemoved {
                node_id: id,
                farm_id: farm,
                account: NODE,
                removed_by: Some(OTHER),
            }
            .into(),
        );
        // A silent node without contracts holds nothing of anyone else: left to its farm.
        let silent = register(NODE2, farm);
        let registered = System::block_number();
        assert_noop!(
            Grid::remove_dead_node(signed(OTHER), silent),
            GridError::NodeNotDead
        );
        System::set_block_number(registered + DEAD_AFTER_BLOCKS);
        assert_noop!(
            Grid::remove_dead_node(signed(OTHER), silent),
            GridError::DeadNodeHasNoContracts
        );
    });
}

#[test]
fn a_contract_that_cannot_end_drops_the_removal_instead_of_blocking_the_queue() {
    run_test(|| {
        let (farm, a) = farm_with_online_node(0);
        let b = register(NODE2, farm);
        assert_ok!(Grid::heartbeat(signed(NODE2)));
        let vm = Resources::new(1, GIB, 0, 0);
        add_contract(7, a, vm, 0);
        add_contract(8, b, vm, 0);
        UNENDABLE.with(|u| u.borrow_mut().insert(7));
        assert_ok!(Grid::force_remove_node(RuntimeOrigin::root(), a));
        assert_ok!(Grid::force_remove_node(RuntimeOrigin::root(), b));
        // Forcing again keeps its place in the queue.
        assert_ok!(Grid::force_remove_node(RuntimeOrigin::root(), b));
        assert_eq!(
            NodeRemovalQueueEnds::<Test>::get(RemovalKind::Forced),
            (0, 2)
        );
        run_to_block(2);
        System::assert_has_event(GridEvent::NodeRemovalFailed { node_id: a }.into());
        assert!(Nodes::<Test>::get(a).is_some());
        assert!(!<Grid as GridCapacity<u64>>::node_is_leaving(a));
        // The node behind it was not held up.
        assert!(Nodes::<Test>::get(b).is_none());
        assert_eq!(
            NodeRemovalQueueEnds::<Test>::get(RemovalKind::Forced),
            (2, 2)
        );
    });
}

#[test]
fn a_farm_with_many_authorizations_is_force_removed_in_steps() {
    run_test(|| {
        let farm = create_farm(FARMER, "crowded");
        for n in 0..=MAX_AUTHORIZATIONS_FORCE_REMOVED {
            authorize(farm, 1_000 + u64::from(n));
        }
        assert_ok!(Grid::force_remove_farm(RuntimeOrigin::root(), farm));
        System::assert_last_event(
            GridEvent::FarmNodeAuthorizationsCleared {
                farm_id: farm,
                cleared: MAX_AUTHORIZATIONS_FORCE_REMOVED,
            }
            .into(),
        );
        assert!(Farms::<Test>::get(farm).is_some());
        assert_ok!(Grid::force_remove_farm(RuntimeOrigin::root(), farm));
        assert!(Farms::<Test>::get(farm).is_none());
        assert_eq!(NodeAuthorizations::<Test>::iter().count(), 0);
    });
}

#[test]
fn a_node_without_contracts_is_removed_at_once() {
    run_test(|| {
        let (_, id) = farm_with_online_node(1);
        assert_ok!(Grid::remove_node(signed(NODE), id));
        assert!(Nodes::<Test>::get(id).is_none());
        assert_eq!(
            NodeRemovalQueueEnds::<Test>::get(RemovalKind::Notice),
            (0, 0)
        );
    });
}

// ---------------------------------------------------------------- liveness

#[test]
fn heartbeat_is_free_rate_limited_and_tracks_uptime() {
    run_test(|| {
        let farm = create_farm(FARMER, "farm");
        let id = register(NODE, farm);
        assert_noop!(Grid::heartbeat(signed(OTHER)), GridError::NotANode);

        let post = Grid::heartbeat(signed(NODE)).unwrap();
        assert_eq!(post.pays_fee, Pays::No);
        System::assert_last_event(
            GridEvent::NodeHeartbeat {
                node_id: id,
                account: NODE,
                timestamp_ms: START_MS,
                uptime_seconds: 0,
            }
            .into(),
        );
        assert_eq!(
            node(id).last_heartbeat,
            Some(Heartbeat {
                block: 1,
                timestamp_ms: START_MS
            })
        );
        assert_eq!(Grid::node_status(id), Some(NodeStatus::Online));

        // Too soon: an error that pays its fee (default post info).
        advance_ms(MIN_INTERVAL_MS - 1);
        let err = Grid::heartbeat(signed(NODE)).unwrap_err();
        assert_eq!(
            err,
            DispatchErrorWithPostInfo {
                post_info: Default::default(),
                error: GridError::HeartbeatTooSoon.into()
            }
        );
        assert_eq!(err.post_info.pays_fee, Pays::Yes);
        assert_noop!(Grid::heartbeat(signed(NODE)), GridError::HeartbeatTooSoon);

        // Exactly the minimum interval is enough; uptime counts the whole run.
        advance_ms(1);
        assert_ok!(Grid::heartbeat(signed(NODE)));
        assert_eq!(node(id).uptime_seconds, MIN_INTERVAL_MS / 1000);
        // A gap of exactly the timeout still continues the run.
        advance_ms(TIMEOUT_MS);
        assert_eq!(Grid::node_status(id), Some(NodeStatus::Online));
        assert_ok!(Grid::heartbeat(signed(NODE)));
        assert_eq!(
            node(id).uptime_seconds,
            (MIN_INTERVAL_MS + TIMEOUT_MS) / 1000
        );
        assert_eq!(node(id).last_heartbeat.unwrap().block, 4);

        // Sub-second remainders are not lost across beats.
        for _ in 0..3 {
            advance_ms(MIN_INTERVAL_MS + 400);
            assert_ok!(Grid::heartbeat(signed(NODE)));
        }
        assert_eq!(
            node(id).uptime_seconds,
            (4 * MIN_INTERVAL_MS + TIMEOUT_MS + 1200) / 1000
        );

        // A longer gap: Offline in between, and the run restarts.
        advance_ms(TIMEOUT_MS + 1);
        assert_eq!(Grid::node_status(id), Some(NodeStatus::Offline));
        assert!(!Grid::node_is_online(id));
        assert_ok!(Grid::heartbeat(signed(NODE)));
        assert_eq!(node(id).uptime_seconds, 0);
        assert!(Grid::node_is_online(id));
        advance_ms(MIN_INTERVAL_MS);
        assert_ok!(Grid::heartbeat(signed(NODE)));
        assert_eq!(node(id).uptime_seconds, MIN_INTERVAL_MS / 1000);
    });
}

#[test]
fn power_target_and_state() {
    run_test(|| {
        let (farm, id) = farm_with_online_node(0);
        assert_noop!(
            Grid::set_power_target(signed(NODE), id, Power::Down),
            GridError::NotFarmOwner
        );
        assert_noop!(
            Grid::set_power_target(signed(FARMER), 99, Power::Down),
            GridError::NodeNotFound
        );
        assert_noop!(
            Grid::set_power_state(signed(OTHER), Power::Down),
            GridError::NotANode
        );

        assert_ok!(Grid::contract_started(id));
        assert_noop!(
            Grid::set_power_target(signed(FARMER), id, Power::Down),
            GridError::NodeHasActiveContracts
        );
        assert_noop!(
            Grid::set_power_state(signed(NODE), Power::Down),
            GridError::NodeHasActiveContracts
        );
        // Up is always allowed.
        assert_ok!(Grid::set_power_target(signed(FARMER), id, Power::Up));
        assert_ok!(Grid::set_power_state(signed(NODE), Power::Up));
        assert_ok!(Grid::contract_ended(id));

        assert_ok!(Grid::set_power_target(signed(FARMER), id, Power::Down));
        System::assert_last_event(
            GridEvent::PowerTargetSet {
                node_id: id,
                farm_id: farm,
                by: FARMER,
                target: Power::Down,
            }
            .into(),
        );
        assert_eq!(
            Grid::node_accepts_workloads(id),
            Err(GridError::NodePowerTargetDown.into())
        );
        assert_ok!(Grid::set_power_state(signed(NODE), Power::Down));
        System::assert_last_event(
            GridEvent::PowerStateSet {
                node_id: id,
                account: NODE,
                state: Power::Down,
            }
            .into(),
        );
        assert_eq!(
            (node(id).power_target, node(id).power_state),
            (Power::Down, Power::Down)
        );
    });
}

#[test]
fn node_accepts_workloads_checks_each_condition() {
    run_test(|| {
        let farm = create_farm(FARMER, "farm");
        assert_eq!(
            Grid::node_accepts_workloads(1),
            Err(GridError::NodeNotFound.into())
        );
        let id = register(NODE, farm);
        assert_eq!(
            Grid::node_accepts_workloads(id),
            Err(GridError::NodeOffline.into())
        );
        assert_ok!(Grid::heartbeat(signed(NODE)));
        assert_ok!(Grid::node_accepts_workloads(id));
        assert_ok!(Grid::set_power_state(signed(NODE), Power::Down));
        assert_eq!(
            Grid::node_accepts_workloads(id),
            Err(GridError::NodePoweredDown.into())
        );
        assert_ok!(Grid::set_power_state(signed(NODE), Power::Up));
        advance_ms(TIMEOUT_MS + 1);
        assert_eq!(
            Grid::node_accepts_workloads(id),
            Err(GridError::NodeOffline.into())
        );
    });
}

// ---------------------------------------------------------------- capacity ledger

#[test]
fn reserve_and_release_follow_capacity_and_overcommit() {
    run_test(|| {
        let (_, id) = farm_with_online_node(0);
        let cap = capacity();
        assert_eq!(
            Grid::free_capacity(id),
            Some(Resources {
                cru: cap.cru * OVERCOMMIT as u64,
                ..cap
            })
        );
        assert_eq!(Grid::free_capacity(99), None);

        let need = Resources::new(2, 4 * GIB, 50 * GIB, 0);
        assert_ok!(Grid::reserve(id, &need));
        System::assert_last_event(
            GridEvent::CapacityReserved {
                node_id: id,
                resources: need,
                reserved: need,
            }
            .into(),
        );
        // Memory and disks are never overcommitted: one byte above is refused.
        for extra in [
            Resources::new(0, cap.mru - need.mru + 1, 0, 0),
            Resources::new(0, 0, cap.sru - need.sru + 1, 0),
            Resources::new(0, 0, 0, cap.hru + 1),
            Resources::new(cap.cru * OVERCOMMIT as u64 - need.cru + 1, 0, 0, 0),
        ] {
            assert_noop!(Grid::reserve(id, &extra), GridError::InsufficientCapacity);
        }
        // Exactly the rest fits, CPU up to cores x overcommit.
        let rest = Grid::free_capacity(id).unwrap();
        assert_eq!(rest.cru, cap.cru * OVERCOMMIT as u64 - 2);
        assert_ok!(Grid::reserve(id, &rest));
        assert!(Grid::free_capacity(id).unwrap().is_zero());
        assert_noop!(
            Grid::reserve(id, &Resources::new(1, 0, 0, 0)),
            GridError::InsufficientCapacity
        );

        assert_ok!(Grid::release(id, &need));
        System::assert_last_event(
            GridEvent::CapacityReleased {
                node_id: id,
                resources: need,
                reserved: rest,
            }
            .into(),
        );
        assert_noop!(
            Grid::release(
                id,
                &Resources {
                    cru: rest.cru + 1,
                    ..rest
                }
            ),
            GridError::ReleaseExceedsReserved
        );
        assert_ok!(Grid::release(id, &rest));
        assert!(node(id).reserved.is_zero());
        assert_noop!(
            Grid::release(id, &Resources::new(0, 0, 0, 1)),
            GridError::ReleaseExceedsReserved
        );
        assert_noop!(Grid::reserve(99, &need), GridError::NodeNotFound);
        assert_noop!(Grid::release(99, &need), GridError::NodeNotFound);
        // Zero-sized reservations are harmless no-ops with an event.
        assert_ok!(Grid::reserve(id, &Resources::zero()));
    });
}

#[test]
fn reservation_arithmetic_at_u64_max() {
    run_test(|| {
        let farm = create_farm(FARMER, "farm");
        let max = Resources::new(u64::MAX, u64::MAX, u64::MAX, u64::MAX);
        authorize(farm, NODE);
        assert_ok!(Grid::register_node(
            signed(NODE),
            farm,
            max,
            [9; 32],
            location(),
            None,
            version()
        ));
        let id = Grid::node_by_account(NODE).unwrap();
        // CPU capacity x overcommit saturates instead of wrapping.
        assert_eq!(Grid::free_capacity(id), Some(max));
        assert_ok!(Grid::reserve(id, &max));
        assert_eq!(Grid::free_capacity(id), Some(Resources::zero()));
        for one in [
            Resources::new(1, 0, 0, 0),
            Resources::new(0, 1, 0, 0),
            Resources::new(0, 0, 1, 0),
            Resources::new(0, 0, 0, 1),
        ] {
            assert_noop!(Grid::reserve(id, &one), GridError::CapacityOverflow);
        }
        assert_ok!(Grid::release(id, &max));
        assert!(node(id).reserved.is_zero());

        // CPU overcommit near the top: cores = MAX / 4 + 1 lets MAX cores be reserved.
        let cores = u64::MAX / OVERCOMMIT as u64 + 1;
        assert_ok!(update(NODE, Resources { cru: cores, ..max }, None));
        assert_ok!(Grid::reserve(id, &Resources::new(u64::MAX, 0, 0, 0)));
        assert_ok!(Grid::release(id, &Resources::new(u64::MAX, 0, 0, 0)));
        assert_ok!(update(
            NODE,
            Resources {
                cru: cores - 1,
                ..max
            },
            None
        ));
        assert_noop!(
            Grid::reserve(id, &Resources::new(u64::MAX, 0, 0, 0)),
            GridError::InsufficientCapacity
        );
    });
}

#[test]
fn public_ips_are_assigned_all_or_nothing_and_released() {
    run_test(|| {
        let (farm, id) = farm_with_online_node(3);
        assert_eq!(Grid::assign_public_ips(id, 1, 0), Ok(vec![]));
        assert_eq!(
            Grid::assign_public_ips(99, 1, 1),
            Err(GridError::NodeNotFound.into())
        );

        let got = Grid::assign_public_ips(id, 1, 2).unwrap();
        assert_eq!(got, vec![farm_ip(10), farm_ip(11)]);
        System::assert_last_event(
            GridEvent::PublicIpsAssigned {
                farm_id: farm,
                node_id: id,
                contract_id: 1,
                ips: vec![[185, 69, 166, 10], [185, 69, 166, 11]],
            }
            .into(),
        );
        assert_eq!(node(id).assigned_ips, 2);
        assert_eq!(Grid::free_public_ips(farm), vec![farm_ip(12)]);

        // Two requested, one free: nothing is taken.
        assert_noop!(
            Grid::assign_public_ips(id, 2, 2),
            GridError::NotEnoughFreeIps
        );
        assert_eq!(Grid::free_public_ips(farm), vec![farm_ip(12)]);
        assert_eq!(Grid::assign_public_ips(id, 2, 1), Ok(vec![farm_ip(12)]));
        assert!(Grid::free_public_ips(farm).is_empty());

        // Releasing a contract without IPs is fine and silent.
        let events = System::events().len();
        assert_ok!(Grid::release_public_ips(id, 77));
        assert_eq!(System::events().len(), events);
        assert_eq!(
            Grid::release_public_ips(99, 1),
            Err(GridError::NodeNotFound.into())
        );

        assert_ok!(Grid::release_public_ips(id, 1));
        System::assert_last_event(
            GridEvent::PublicIpsReleased {
                farm_id: farm,
                node_id: id,
                contract_id: 1,
                ips: vec![[185, 69, 166, 10], [185, 69, 166, 11]],
            }
            .into(),
        );
        assert_eq!(node(id).assigned_ips, 1);
        assert_eq!(Grid::free_public_ips(farm), vec![farm_ip(10), farm_ip(11)]);
        assert_eq!(Grid::free_public_ips(99), vec![]);
    });
}

#[test]
fn assign_public_ips_counter_overflow() {
    run_test(|| {
        let (_, id) = farm_with_online_node(1);
        let stored = node(id);
        Nodes::<Test>::mutate(id, |n| n.as_mut().unwrap().assigned_ips = u32::MAX);
        assert_noop!(
            Grid::assign_public_ips(id, 1, 1),
            GridError::CounterOverflow
        );
        Nodes::<Test>::insert(id, stored);
    });
}

#[test]
fn contract_counter() {
    run_test(|| {
        let (_, id) = farm_with_online_node(0);
        assert_noop!(Grid::contract_ended(id), GridError::NoActiveContracts);
        assert_noop!(Grid::contract_started(99), GridError::NodeNotFound);
        assert_noop!(Grid::contract_ended(99), GridError::NodeNotFound);
        assert_ok!(Grid::contract_started(id));
        System::assert_last_event(
            GridEvent::NodeContractStarted {
                node_id: id,
                active_contracts: 1,
            }
            .into(),
        );
        assert_ok!(Grid::contract_started(id));
        assert_eq!(node(id).active_contracts, 2);
        assert_ok!(Grid::contract_ended(id));
        System::assert_last_event(
            GridEvent::NodeContractEnded {
                node_id: id,
                active_contracts: 1,
            }
            .into(),
        );
        Nodes::<Test>::mutate(id, |n| n.as_mut().unwrap().active_contracts = u32::MAX);
        assert_noop!(Grid::contract_started(id), GridError::CounterOverflow);
    });
}

// ---------------------------------------------------------------- queries and helpers

#[test]
fn queries() {
    run_test(|| {
        let farm = create_farm(FARMER, "farm");
        let other = create_farm(OTHER, "other");
        let ids: Vec<NodeId> = (20..30).map(|acc| register(acc, farm)).collect();
        let lone = register(NODE, other);
        assert_eq!(Grid::nodes_of_farm(farm), ids);
        assert_eq!(Grid::nodes_of_farm(other), vec![lone]);
        assert!(Grid::nodes_of_farm(99).is_empty());
        assert_eq!(Grid::node_by_account(NODE), Some(lone));
        assert_eq!(Grid::node_by_account(OTHER), None);
        assert_eq!(Grid::node_account(lone), Some(NODE));
        assert_eq!(Grid::node_account(99), None);
        assert_eq!(Grid::node_farm(lone), Some(other));
        assert_eq!(Grid::node_farm(99), None);
        assert_eq!(Grid::farm_owner(other), Some(OTHER));
        assert_eq!(Grid::farm_owner(99), None);
        assert!(!Grid::node_is_online(99));
        assert_eq!(
            <Grid as GridCapacity<u64>>::free_capacity(lone),
            Grid::free_capacity(lone)
        );
    });
}

#[test]
fn setup_online_node_helper() {
    run_test(|| {
        let (farm, id) = Grid::setup_online_node(FARMER, NODE, capacity(), 4).unwrap();
        assert_ok!(Grid::node_accepts_workloads(id));
        assert_eq!(Grid::free_public_ips(farm).len(), 4);
        let (farm2, _) = Grid::setup_online_node(FARMER, NODE2, capacity(), 4).unwrap();
        assert_ne!(farm, farm2);
        assert_eq!(Grid::free_public_ips(farm2).len(), 4);
    });
}

#[test]
fn try_state_detects_broken_indexes() {
    let broken: [fn(); 17] = [
        || FarmIdByName::<Test>::remove(name("farm")),
        || NodeOverlays::<Test>::insert(42, overlay(1, &[TCP])),
        || NodeOverlays::<Test>::insert(1, overlay(1, &["no-slash"])),
        || {
            Deposits::<Test>::insert(
                DepositItem::Node(42),
                HeldDeposit {
                    depositor: FARMER,
                    amount: 1,
                },
            )
        },
        || {
            Deposits::<Test>::mutate(DepositItem::Farm(1), |d| {
                d.as_mut().unwrap().amount = FARM_DEPOSIT + 1
            })
        },
        || Ipv6Owner::<Test>::insert([0x20; 16], 1),
        || FarmIdByName::<Test>::insert(name("ghost"), 1),
        || FarmNodeCount::<Test>::insert(1, 5),
        || NodeIdByAccount::<Test>::remove(NODE),
        || NodeIdByAccount::<Test>::insert(OTHER, 1),
        || NodesByFarm::<Test>::insert(1, 42, ()),
        || IpOwner::<Test>::remove([185, 69, 166, 10]),
        || IpOwner::<Test>::insert([1, 1, 1, 1], IpHolder::Farm(1)),
        || Nodes::<Test>::mutate(1, |n| n.as_mut().unwrap().reserved.mru = u64::MAX),
        || Nodes::<Test>::mutate(1, |n| n.as_mut().unwrap().assigned_ips = 3),
        || NextNodeId::<Test>::put(1),
        || {
            Farms::<Test>::mutate(1, |f| {
                let f = f.as_mut().unwrap();
                f.public_ips.get_mut(0).unwrap().assigned = Some(IpAssignment {
                    contract: 1,
                    node: 42,
                });
            })
        },
    ];
    for corrupt in broken {
        new_test_ext().execute_with(|| {
            farm_with_online_node(2);
            assert_ok!(Grid::do_try_state());
            corrupt();
            assert!(Grid::do_try_state().is_err());
        });
    }
}

#[test]
fn a_test_network_accepts_documentation_addresses_in_farm_pools() {
    run_test(|| {
        let id = create_farm(FARMER, "farm");
        let doc = ipv4([198, 51, 100, 10], 24, [198, 51, 100, 1]);
        assert_noop!(
            Grid::add_farm_ip(signed(FARMER), id, doc),
            GridError::InvalidPublicIpv4(IpError::IpNotPublic(SpecialRange::Documentation))
        );
        DocumentationIpsArePublic::<Test>::put(true);
        assert_ok!(Grid::add_farm_ip(signed(FARMER), id, doc));
        // Private ranges stay refused on any network.
        assert_noop!(
            Grid::add_farm_ip(signed(FARMER), id, ipv4([10, 0, 0, 10], 24, [10, 0, 0, 1])),
            GridError::InvalidPublicIpv4(IpError::IpNotPublic(SpecialRange::Private))
        );
    });
}

#[test]
fn a_node_joins_a_farm_only_with_the_farm_owners_consent() {
    run_test(|| {
        let farm = create_farm(FARMER, "farm");
        let join = |account| {
            Grid::register_node(
                signed(account),
                farm,
                capacity(),
                [9; 32],
                location(),
                None,
                version(),
            )
        };
        // Unasked: refused, and nothing changes.
        assert_noop!(join(NODE), GridError::NodeNotAuthorized);
        // Only the farm owner authorizes.
        assert_noop!(
            Grid::authorize_node(signed(NODE2), farm, NODE),
            GridError::NotFarmOwner
        );
        assert_noop!(
            Grid::authorize_node(signed(FARMER), 99, NODE),
            GridError::FarmNotFound
        );
        assert_ok!(Grid::authorize_node(signed(FARMER), farm, NODE));
        System::assert_last_event(
            Event::NodeAuthorized {
                farm_id: farm,
                account: NODE,
            }
            .into(),
        );
        // An authorization for one farm does not open another.
        let other = create_farm(OTHER, "other");
        assert_noop!(
            Grid::register_node(
                signed(NODE),
                other,
                capacity(),
                [9; 32],
                location(),
                None,
                version(),
            ),
            GridError::NodeNotAuthorized
        );
        // Used up by the registration.
        assert_ok!(join(NODE));
        assert!(!NodeAuthorizations::<Test>::contains_key(farm, NODE));
        assert_noop!(
            Grid::authorize_node(signed(FARMER), farm, NODE),
            GridError::AccountAlreadyHasNode
        );
        // Revoked before use: refused again.
        assert_ok!(Grid::authorize_node(signed(FARMER), farm, NODE2));
        assert_noop!(
            Grid::revoke_node_authorization(signed(NODE2), farm, NODE2),
            GridError::NotFarmOwner
        );
        assert_ok!(Grid::revoke_node_authorization(signed(FARMER), farm, NODE2));
        assert_noop!(join(NODE2), GridError::NodeNotAuthorized);
        assert_noop!(
            Grid::revoke_node_authorization(signed(FARMER), farm, NODE2),
            GridError::NodeNotAuthorized
        );
    });
}

fn held(who: u64, reason: HoldReason) -> u64 {
    use frame_support::traits::fungible::InspectHold;
    <Balances as InspectHold<u64>>::balance_on_hold(&reason.into(), &who)
}

fn public_v6(last: u8) -> Option<PublicConfig> {
    let mut ip = [0u8; 16];
    ip[..4].copy_from_slice(&[0x2a, 0x02, 0x18, 0x02]);
    ip[15] = last;
    let mut gateway = ip;
    gateway[15] = 1;
    Some(PublicConfig {
        ipv4: None,
        ipv6: Some(PublicIpv6Config {
            ip: Ipv6Cidr { ip, prefix_len: 64 },
            gateway,
        }),
        domain: None,
    })
}

#[test]
fn farms_and_their_addresses_hold_deposits_returned_on_removal() {
    run_test(|| {
        let farm = create_farm(FARMER, "farm");
        assert_eq!(held(FARMER, HoldReason::FarmDeposit), FARM_DEPOSIT);
        for last in 10..13 {
            assert_ok!(Grid::add_farm_ip(signed(FARMER), farm, farm_ip(last)));
        }
        assert_eq!(held(FARMER, HoldReason::FarmIpDeposit), 3 * FARM_IP_DEPOSIT);
        assert_eq!(
            Balances::free_balance(FARMER),
            ENDOWMENT - FARM_DEPOSIT - 3 * FARM_IP_DEPOSIT
        );
        assert_ok!(Grid::remove_farm_ip(
            signed(FARMER),
            farm,
            farm_ip(10).ip.ip
        ));
        assert_eq!(held(FARMER, HoldReason::FarmIpDeposit), 2 * FARM_IP_DEPOSIT);
        assert_ok!(Grid::force_remove_farm_ip(
            RuntimeOrigin::root(),
            farm,
            farm_ip(11).ip.ip
        ));
        assert_eq!(held(FARMER, HoldReason::FarmIpDeposit), FARM_IP_DEPOSIT);
        // Removing the farm returns its own deposit and its last address's.
        assert_ok!(Grid::remove_farm(signed(FARMER), farm));
        assert_eq!(held(FARMER, HoldReason::FarmDeposit), 0);
        assert_eq!(held(FARMER, HoldReason::FarmIpDeposit), 0);
        assert_eq!(Balances::free_balance(FARMER), ENDOWMENT);
        assert_eq!(Deposits::<Test>::iter().count(), 0);
    });
}

#[test]
fn an_account_that_cannot_pay_the_deposit_creates_nothing() {
    run_test(|| {
        const POOR: u64 = 99;
        assert_ok!(Balances::force_set_balance(
            RuntimeOrigin::root(),
            POOR,
            FARM_DEPOSIT - 1
        ));
        assert_noop!(
            Grid::create_farm(signed(POOR), name("squat")),
            GridError::InsufficientBalanceForDeposit
        );
        assert_ok!(Balances::force_set_balance(
            RuntimeOrigin::root(),
            POOR,
            FARM_DEPOSIT + FARM_IP_DEPOSIT - 1
        ));
        let farm = create_farm(POOR, "squat");
        // The rest is below the next deposit (the existential deposit stays free too).
        assert_noop!(
            Grid::add_farm_ip(signed(POOR), farm, farm_ip(10)),
            GridError::InsufficientBalanceForDeposit
        );
        assert_noop!(
            Grid::authorize_node(signed(POOR), farm, NODE),
            GridError::InsufficientBalanceForDeposit
        );
        assert!(IpOwner::<Test>::iter().next().is_none());
        assert!(NodeAuthorizations::<Test>::iter().next().is_none());
    });
}

#[test]
fn the_farm_owner_pays_the_node_deposit_from_authorization_to_removal() {
    run_test(|| {
        let farm = create_farm(FARMER, "farm");
        authorize(farm, NODE);
        // Authorizing again holds nothing more.
        authorize(farm, NODE);
        assert_eq!(held(FARMER, HoldReason::NodeDeposit), NODE_DEPOSIT);
        assert_ok!(Grid::revoke_node_authorization(signed(FARMER), farm, NODE));
        assert_eq!(held(FARMER, HoldReason::NodeDeposit), 0);

        // The node itself pays nothing: the authorization's deposit becomes the node's.
        let id = register(NODE, farm);
        assert_eq!(held(FARMER, HoldReason::NodeDeposit), NODE_DEPOSIT);
        assert_eq!(held(NODE, HoldReason::NodeDeposit), 0);
        assert_eq!(Balances::free_balance(NODE), ENDOWMENT);
        assert_eq!(
            Deposits::<Test>::get(DepositItem::Node(id)),
            Some(HeldDeposit {
                depositor: FARMER,
                amount: NODE_DEPOSIT
            })
        );
        // Evicted after the notice: the deposit comes back with the removal.
        add_contract(7, id, Resources::new(1, GIB, 0, 0), 0);
        assert_ok!(Grid::remove_node(signed(NODE), id));
        assert_eq!(held(FARMER, HoldReason::NodeDeposit), NODE_DEPOSIT);
        run_to_block(1 + NOTICE_BLOCKS);
        assert!(Nodes::<Test>::get(id).is_none());
        assert_eq!(held(FARMER, HoldReason::NodeDeposit), 0);

        // Governance clearing unused authorizations returns their deposits too.
        authorize(farm, NODE2);
        authorize(farm, 12);
        assert_eq!(held(FARMER, HoldReason::NodeDeposit), 2 * NODE_DEPOSIT);
        assert_ok!(Grid::force_remove_farm(RuntimeOrigin::root(), farm));
        assert_eq!(Balances::free_balance(FARMER), ENDOWMENT);
        assert_eq!(Deposits::<Test>::iter().count(), 0);
    });
}

#[test]
fn an_item_from_before_deposits_returns_nothing_it_did_not_hold() {
    run_test(|| {
        let farm = create_farm(FARMER, "farm");
        let other = create_farm(FARMER, "other");
        // As if `farm` predated deposits: no record, nothing of its own held.
        assert_ok!(<Balances as frame_support::traits::fungible::MutateHold<
            u64,
        >>::release(
            &HoldReason::FarmDeposit.into(),
            &FARMER,
            FARM_DEPOSIT,
            frame_support::traits::tokens::Precision::Exact,
        ));
        Deposits::<Test>::remove(DepositItem::Farm(farm));
        assert_ok!(Grid::remove_farm(signed(FARMER), farm));
        // The other farm's deposit stays held.
        assert_eq!(held(FARMER, HoldReason::FarmDeposit), FARM_DEPOSIT);
        assert!(Deposits::<Test>::contains_key(DepositItem::Farm(other)));
    });
}

#[test]
fn a_node_ipv6_address_is_registered_once_chain_wide() {
    run_test(|| {
        let farm = create_farm(FARMER, "farm");
        let other = create_farm(OTHER, "other");
        let first = register_with(NODE, farm, public_v6(2));
        authorize(other, NODE2);
        assert_noop!(
            Grid::register_node(
                signed(NODE2),
                other,
                capacity(),
                [9; 32],
                location(),
                public_v6(2),
                version()
            ),
            GridError::Ipv6AlreadyRegistered
        );
        let second = register_with(NODE2, other, public_v6(3));
        assert_noop!(
            set_config(OTHER, second, public_v6(2)),
            GridError::Ipv6AlreadyRegistered
        );
        assert_noop!(
            update(NODE2, capacity(), public_v6(2)),
            GridError::Ipv6AlreadyRegistered
        );
        // Keeping one's own address is no conflict; moving frees the old one.
        assert_ok!(set_config(FARMER, first, public_v6(2)));
        assert_ok!(set_config(FARMER, first, public_v6(4)));
        assert_eq!(
            Ipv6Owner::<Test>::get(public_v6(4).unwrap().ipv6.unwrap().ip.ip),
            Some(first)
        );
        assert_ok!(set_config(OTHER, second, public_v6(2)));
        // A removed node's address is free again.
        assert_ok!(Grid::remove_node(signed(NODE), first));
        assert_ok!(set_config(OTHER, second, public_v6(4)));
        assert_eq!(Ipv6Owner::<Test>::iter().count(), 1);
    });
}

#[test]
fn a_removal_with_notice_can_be_withdrawn_before_it_is_due() {
    run_test(|| {
        let (farm, id) = farm_with_online_node(1);
        add_contract(7, id, Resources::new(1, GIB, 0, 0), 1);
        assert_noop!(
            Grid::cancel_node_removal(signed(FARMER), id),
            GridError::NoNodeRemoval
        );
        assert_ok!(Grid::remove_node(signed(NODE), id));
        assert_noop!(
            Grid::cancel_node_removal(signed(OTHER), id),
            GridError::NotNodeOrFarmOwner
        );
        // The farm owner withdraws what the node asked for.
        assert_ok!(Grid::cancel_node_removal(signed(FARMER), id));
        System::assert_last_event(
            GridEvent::NodeRemovalCancelled {
                node_id: id,
                cancelled_by: FARMER,
            }
            .into(),
        );
        assert_ok!(<Grid as GridCapacity<u64>>::node_accepts_workloads(id));
        // The stale queue entry is skipped: the node and its contract stay.
        run_to_block(1 + NOTICE_BLOCKS + 1);
        assert!(Nodes::<Test>::get(id).is_some());
        assert_eq!(contracts_on(id), 1);
        assert_eq!(Grid::free_public_ips(farm).len(), 0);
        // The node cannot withdraw its farm owner's eviction (it could put it off forever).
        assert_ok!(Grid::remove_node(signed(FARMER), id));
        assert_noop!(
            Grid::cancel_node_removal(signed(NODE), id),
            GridError::RemovalRequestedByFarmOwner
        );
        // A forced removal cannot be withdrawn.
        assert_ok!(Grid::force_remove_node(RuntimeOrigin::root(), id));
        assert_noop!(
            Grid::cancel_node_removal(signed(FARMER), id),
            GridError::NodeRemovalForced
        );
    });
}

#[test]
fn a_removal_under_way_cannot_be_withdrawn() {
    run_test(|| {
        let (_, id) = farm_with_online_node(0);
        for c in 0..(MAX_ENDED_PER_BLOCK as u64 + 2) {
            add_contract(100 + c, id, Resources::new(1, GIB, 0, 0), 0);
        }
        assert_ok!(Grid::remove_node(signed(FARMER), id));
        let due = 1 + NOTICE_BLOCKS;
        run_to_block(due);
        // Part of its contracts ended; the rest end in the next block.
        assert_eq!(contracts_on(id), 2);
        assert_noop!(
            Grid::cancel_node_removal(signed(FARMER), id),
            GridError::NodeRemovalUnderWay
        );
        run_to_block(due + 1);
        assert!(Nodes::<Test>::get(id).is_none());
    });
}

fn with_domain(domain: &str) -> Option<PublicConfig> {
    Some(PublicConfig {
        ipv4: None,
        ipv6: None,
        domain: Some(Domain::truncate_from(domain.as_bytes().to_vec())),
    })
}

#[test]
fn a_gateway_domain_its_parents_and_subdomains_belong_to_one_farm() {
    run_test(|| {
        let mine = create_farm(FARMER, "mine");
        let theirs = create_farm(OTHER, "theirs");
        let a = register_with(NODE, mine, with_domain("gw.zone.example.com"));
        // A second node of the same farm serves the same domain (a gateway pair), in any case.
        let b = register_with(NODE2, mine, with_domain("GW.Zone.example.com"));
        assert_eq!(
            GatewayDomainFarm::<Test>::get(Domain::truncate_from(b"gw.zone.example.com".to_vec())),
            Some((mine, 2))
        );
        // Another farm's node: not the domain, not a parent, not a subdomain.
        let c = register(7, theirs);
        for taken in [
            "gw.zone.example.com",
            "Gw.Zone.Example.Com",
            "zone.example.com",
            "x.gw.zone.example.com",
        ] {
            assert_noop!(
                set_config(OTHER, c, with_domain(taken)),
                GridError::GatewayDomainOfAnotherFarm
            );
        }
        authorize(theirs, 8);
        assert_noop!(
            Grid::register_node(
                signed(8),
                theirs,
                capacity(),
                [9; 32],
                location(),
                with_domain("a.b.gw.zone.example.com"),
                version()
            ),
            GridError::GatewayDomainOfAnotherFarm
        );
        // Siblings and unrelated domains are free; the shared top-level parent blocks nobody.
        assert_ok!(set_config(OTHER, c, with_domain("gw2.zone.example.com")));
        assert_ok!(set_config(OTHER, c, with_domain("gw.example.org")));
        // The owning farm may nest its own domains.
        assert_ok!(set_config(FARMER, b, with_domain("eu.gw.zone.example.com")));
        // Fewer than 3 or more than 8 labels are refused outright: nobody takes `com`, `co.uk`.
        for refused in ["a.b.c.d.e.f.g.h.i", "co.uk", "com"] {
            assert_noop!(
                set_config(OTHER, c, with_domain(refused)),
                GridError::GatewayDomainLabelCount
            );
        }
        // Once no node of the farm declares it (cleared, moved, removed), it is free.
        assert_noop!(
            set_config(OTHER, c, with_domain("zone.example.com")),
            GridError::GatewayDomainOfAnotherFarm
        );
        assert_ok!(set_config(FARMER, a, None));
        assert_ok!(update(NODE2, capacity(), with_domain("gw.example.net")));
        assert_ok!(set_config(OTHER, c, with_domain("zone.example.com")));
        assert_noop!(
            set_config(FARMER, a, with_domain("gw.zone.example.com")),
            GridError::GatewayDomainOfAnotherFarm
        );
        assert_ok!(Grid::remove_node(signed(7), c));
        assert_ok!(set_config(FARMER, a, with_domain("gw.zone.example.com")));
        assert_eq!(GatewayDomainFarm::<Test>::iter().count(), 2);
    });
}

// ---------------------------------------------------------------- overlay endpoint

/// The overlay key pair of seed `[seed; 32]`.
fn overlay_pair(seed: u8) -> sp_core::ed25519::Pair {
    <sp_core::ed25519::Pair as sp_core::Pair>::from_seed(&[seed; 32])
}

/// An overlay endpoint with the key of seed `[seed; 32]`, listening on `addresses`.
fn overlay(seed: u8, addresses: &[&str]) -> OverlayEndpoint {
    OverlayEndpoint {
        key: sp_core::Pair::public(&overlay_pair(seed)).0,
        addresses: BoundedVec::truncate_from(
            addresses
                .iter()
                .map(|a| OverlayAddress::truncate_from(a.as_bytes().to_vec()))
                .collect(),
        ),
    }
}

/// The key's ed25519 signature over the proof message for account `who`.
fn key_proof(pair: &sp_core::ed25519::Pair, who: u64) -> zos_primitives::OverlayKeyProof {
    use codec::Encode;
    sp_core::Pair::sign(
        pair,
        &zos_primitives::overlay_key_proof_message(&who.encode()),
    )
    .0
}

/// `who` publishes `endpoint` (made by [`overlay`]) with its key's proof.
fn set_overlay(who: u64, endpoint: Option<OverlayEndpoint>) -> DispatchResult {
    let proven = endpoint.map(|e| {
        let pair = (0..=u8::MAX)
            .map(overlay_pair)
            .find(|p| sp_core::Pair::public(p).0 == e.key)
            .expect("an endpoint made by overlay()");
        let proof = key_proof(&pair, who);
        (e, proof)
    });
    Grid::set_node_overlay(signed(who), proven)
}

const TCP: &str = "/ip4/198.51.100.1/tcp/9651";
const QUIC: &str = "/ip4/198.51.100.1/udp/9651/quic-v1";

#[test]
fn a_node_sets_replaces_and_clears_its_overlay_endpoint() {
    run_test(|| {
        let id = register(NODE, create_farm(FARMER, "farm"));
        let first = overlay(1, &[TCP, QUIC]);
        assert_ok!(set_overlay(NODE, Some(first.clone())));
        System::assert_last_event(
            GridEvent::NodeOverlaySet {
                node_id: id,
                endpoint: Some(first.clone()),
            }
            .into(),
        );
        assert_eq!(NodeOverlays::<Test>::get(id), Some(first));
        // Replaced whole: another key, and no address (a node nobody can dial).
        let second = overlay(2, &[]);
        assert_ok!(set_overlay(NODE, Some(second.clone())));
        assert_eq!(NodeOverlays::<Test>::get(id), Some(second));
        assert_ok!(set_overlay(NODE, None));
        System::assert_last_event(
            GridEvent::NodeOverlaySet {
                node_id: id,
                endpoint: None,
            }
            .into(),
        );
        assert_eq!(NodeOverlays::<Test>::iter().count(), 0);
        // Clearing twice is fine.
        assert_ok!(set_overlay(NODE, None));
    });
}

#[test]
fn only_a_node_sets_an_overlay_endpoint_with_valid_addresses() {
    use OverlayAddressError::*;
    run_test(|| {
        let id = register(NODE, create_farm(FARMER, "farm"));
        // Not even its farm owner: the endpoint is the node's own.
        for who in [FARMER, OTHER] {
            assert_noop!(
                set_overlay(who, Some(overlay(1, &[TCP]))),
                GridError::NotANode
            );
            assert_noop!(set_overlay(who, None), GridError::NotANode);
        }
        let cases: [(&[&str], OverlayAddressError); 6] = [
            (&[TCP, ""], Empty),
            (&["ip4/198.51.100.1/tcp/9651"], NotAMultiaddr),
            (&["/ip4/198.51.100.1 /tcp/9651"], NotPrintable),
            (&["/ip4/198.51.100.1/tcp/9651\n"], NotPrintable),
            (&["/dns/caf\u{e9}.example/tcp/9651"], NotPrintable),
            (&[TCP, QUIC, TCP], Duplicate),
        ];
        for (addresses, error) in cases {
            assert_noop!(
                set_overlay(NODE, Some(overlay(1, addresses))),
                GridError::InvalidOverlayAddress(error)
            );
        }
        assert!(NodeOverlays::<Test>::get(id).is_none());
    });
}

#[test]
fn an_overlay_key_is_published_only_with_its_proof_for_this_node() {
    run_test(|| {
        let farm = create_farm(FARMER, "farm");
        let id = register(NODE, farm);
        register(NODE2, farm);
        let endpoint = overlay(1, &[TCP]);
        // Another node's key, with the proof that node made for itself; signed by another key;
        // garbage; all refused.
        let proofs = [
            key_proof(&overlay_pair(1), NODE2),
            key_proof(&overlay_pair(2), NODE),
            [0; 64],
            [0xff; 64],
        ];
        for proof in proofs {
            assert_noop!(
                Grid::set_node_overlay(signed(NODE), Some((endpoint.clone(), proof))),
                GridError::OverlayKeyNotProven
            );
        }
        assert!(NodeOverlays::<Test>::get(id).is_none());
        let proof = key_proof(&overlay_pair(1), NODE);
        assert_ok!(Grid::set_node_overlay(
            signed(NODE),
            Some((endpoint.clone(), proof))
        ));
        assert_eq!(NodeOverlays::<Test>::get(id), Some(endpoint));
    });
}

#[test]
fn the_overlay_endpoint_goes_with_the_node() {
    run_test(|| {
        let (farm, a) = farm_with_online_node(0);
        let b = register(NODE2, farm);
        assert_ok!(set_overlay(NODE, Some(overlay(1, &[TCP]))));
        assert_ok!(set_overlay(NODE2, Some(overlay(2, &[QUIC]))));
        // Evicted with a contract: the endpoint stays through the notice period.
        add_contract(7, a, Resources::new(1, GIB, 0, 0), 0);
        assert_ok!(Grid::remove_node(signed(FARMER), a));
        run_to_block(NOTICE_BLOCKS);
        assert!(NodeOverlays::<Test>::contains_key(a));
        run_to_block(1 + NOTICE_BLOCKS);
        assert!(Nodes::<Test>::get(a).is_none());
        assert!(!NodeOverlays::<Test>::contains_key(a));
        // Removed with its farm by governance.
        assert_ok!(Grid::force_remove_farm(RuntimeOrigin::root(), farm));
        assert!(Nodes::<Test>::get(b).is_none());
        assert_eq!(NodeOverlays::<Test>::iter().count(), 0);
        // The accounts run no node any more.
        assert_noop!(set_overlay(NODE, None), GridError::NotANode);
    });
}
