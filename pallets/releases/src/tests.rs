use crate::{mock::*, Event};
use frame_support::{assert_noop, assert_ok};
use sp_core::H256;
use sp_runtime::DispatchError;

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
