use crate::{mock::*, Error, Event, NodeReleases};
use frame_support::{assert_noop, assert_ok};
use sp_core::H256;
use sp_runtime::DispatchError;
use zos_primitives::releases::{NodeRelease, PilotFarms, ReleaseVersion, Runmode};

#[test]
fn only_the_release_origin_authorizes_a_runtime_upgrade() {
    new_test_ext().execute_with(|| {
        let code_hash = H256::repeat_byte(7);
        assert_noop!(
            Releases::authorize_runtime_upgrade(RuntimeOrigin::signed(2), code_hash),
            DispatchError::BadOrigin
        );
        assert!(System::authorized_upgrade().is_none());

        assert_ok!(Releases::authorize_runtime_upgrade(
            RuntimeOrigin::signed(COUNCIL),
            code_hash
        ));
        System::assert_last_event(Event::RuntimeUpgradeAuthorized { code_hash }.into());
        let authorized = System::authorized_upgrade().expect("authorized");
        assert_eq!(authorized.code_hash(), &code_hash);
    });
}

#[test]
fn applying_needs_the_authorized_code() {
    new_test_ext().execute_with(|| {
        let code = b"not the authorized runtime".to_vec();
        assert_ok!(Releases::authorize_runtime_upgrade(
            RuntimeOrigin::signed(COUNCIL),
            H256::repeat_byte(7)
        ));
        assert_noop!(
            System::apply_authorized_upgrade(RuntimeOrigin::signed(2), code),
            frame_system::Error::<Test>::Unauthorized
        );
    });
}

fn node_release(version: (u32, u32, u32), pilots: Vec<u32>) -> NodeRelease<u64> {
    NodeRelease {
        version: ReleaseVersion {
            major: version.0,
            minor: version.1,
            patch: version.2,
        },
        manifest_blake3: [version.2 as u8; 32],
        safe_to_upgrade: true,
        pilot_farms: PilotFarms::truncate_from(pilots),
        general_from: 50,
    }
}

#[test]
fn the_council_sets_node_releases_per_runmode_and_versions_only_go_up() {
    new_test_ext().execute_with(|| {
        let v1 = node_release((1, 0, 0), vec![7]);
        assert_noop!(
            Releases::set_node_release(RuntimeOrigin::signed(2), Runmode::Test, v1.clone()),
            DispatchError::BadOrigin
        );
        assert_ok!(Releases::set_node_release(
            RuntimeOrigin::signed(COUNCIL),
            Runmode::Test,
            v1.clone()
        ));
        System::assert_last_event(
            Event::NodeReleaseSet {
                runmode: Runmode::Test,
                version: v1.version,
                manifest_blake3: v1.manifest_blake3,
                safe_to_upgrade: true,
            }
            .into(),
        );
        assert_eq!(NodeReleases::<Test>::get(Runmode::Test), Some(v1.clone()));
        assert_eq!(
            NodeReleases::<Test>::get(Runmode::Main),
            None,
            "runmodes are separate"
        );
        // The same or an older version is refused: a rollback is a new version.
        for older in [(1, 0, 0), (0, 9, 9)] {
            assert_noop!(
                Releases::set_node_release(
                    RuntimeOrigin::signed(COUNCIL),
                    Runmode::Test,
                    node_release(older, vec![])
                ),
                Error::<Test>::VersionNotNewer
            );
        }
        assert_ok!(Releases::set_node_release(
            RuntimeOrigin::signed(COUNCIL),
            Runmode::Test,
            node_release((1, 0, 1), vec![])
        ));
        // The main net may start anywhere.
        assert_ok!(Releases::set_node_release(
            RuntimeOrigin::signed(COUNCIL),
            Runmode::Main,
            node_release((0, 1, 0), vec![])
        ));
    });
}

#[test]
fn duplicate_pilot_farms_are_refused() {
    new_test_ext().execute_with(|| {
        assert_noop!(
            Releases::set_node_release(
                RuntimeOrigin::signed(COUNCIL),
                Runmode::Dev,
                node_release((1, 0, 0), vec![3, 4, 3])
            ),
            Error::<Test>::DuplicatePilotFarm
        );
    });
}

#[test]
fn a_halt_stops_the_rollout_until_a_newer_release() {
    new_test_ext().execute_with(|| {
        assert_noop!(
            Releases::halt_node_release(RuntimeOrigin::signed(COUNCIL), Runmode::Dev),
            Error::<Test>::NoNodeRelease
        );
        assert_ok!(Releases::set_node_release(
            RuntimeOrigin::signed(COUNCIL),
            Runmode::Dev,
            node_release((2, 0, 0), vec![7])
        ));
        assert_noop!(
            Releases::halt_node_release(RuntimeOrigin::signed(2), Runmode::Dev),
            DispatchError::BadOrigin
        );
        assert_ok!(Releases::halt_node_release(
            RuntimeOrigin::signed(COUNCIL),
            Runmode::Dev
        ));
        System::assert_last_event(
            Event::NodeReleaseHalted {
                runmode: Runmode::Dev,
                version: ReleaseVersion {
                    major: 2,
                    minor: 0,
                    patch: 0,
                },
            }
            .into(),
        );
        let halted = NodeReleases::<Test>::get(Runmode::Dev).unwrap();
        assert!(!halted.applies_to(7, 1_000));
        assert_ok!(Releases::set_node_release(
            RuntimeOrigin::signed(COUNCIL),
            Runmode::Dev,
            node_release((2, 0, 1), vec![7])
        ));
        assert!(NodeReleases::<Test>::get(Runmode::Dev)
            .unwrap()
            .applies_to(7, 1));
    });
}
