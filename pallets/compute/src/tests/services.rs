use super::*;
use polkadot_sdk::frame_support::{assert_noop, assert_ok};
use Sr25519Keyring::{Alice, Bob, Charlie, One};

#[test]
fn registering_holds_the_bond_once() {
    new_test_ext().execute_with(|| {
        register(Bob, 0);
        assert_eq!(bond_held(Bob), PROVIDER_BOND);
        assert_eq!(free(Bob), ENDOWMENT - PROVIDER_BOND);
        register(Bob, 1);
        assert_eq!(bond_held(Bob), PROVIDER_BOND, "a second service holds nothing more");
        let info = provider_info(Bob);
        assert_eq!((info.services, info.bond, info.unbonding), (2, PROVIDER_BOND, false));
        assert_eq!(
            events(),
            vec![
                Event::ServiceRegistered {
                    provider: account(Bob),
                    service_id: 0,
                    bond_added: PROVIDER_BOND
                },
                Event::ServiceRegistered { provider: account(Bob), service_id: 1, bond_added: 0 },
            ]
        );
        Compute::do_try_state().unwrap();
    });
}

#[test]
fn duplicate_ids_and_too_many_services_are_refused() {
    new_test_ext().execute_with(|| {
        register(Bob, 0);
        assert_noop!(
            Compute::register_service(
                RuntimeOrigin::signed(account(Bob)),
                0,
                terms(ServiceKind::Chat, "m", "u", 1, 1, "none")
            ),
            Error::<Test>::ServiceAlreadyRegistered
        );
        for id in 1..4 {
            register(Bob, id);
        }
        assert_noop!(
            Compute::register_service(
                RuntimeOrigin::signed(account(Bob)),
                9,
                terms(ServiceKind::Embedding, "m", "u", 1, 0, "none")
            ),
            Error::<Test>::TooManyServices
        );
    });
}

#[test]
fn a_provider_without_funds_cannot_bond() {
    new_test_ext().execute_with(|| {
        assert_noop!(
            Compute::register_service(
                RuntimeOrigin::signed(account(One)),
                0,
                terms(ServiceKind::Chat, "m", "u", 1, 1, "none")
            ),
            Error::<Test>::InsufficientBalanceForBond
        );
    });
}

#[test]
fn updating_bumps_the_price_version() {
    new_test_ext().execute_with(|| {
        register(Bob, 0);
        assert_ok!(Compute::update_service(
            RuntimeOrigin::signed(account(Bob)),
            0,
            ServiceTerms {
                model_hash: H256::repeat_byte(0x4e),
                ..terms(ServiceKind::Chat, "m2", "http://x", 5, 7, "tee")
            }
        ));
        let s = Services::<Test>::get(account(Bob), 0).unwrap();
        assert_eq!((s.price_version, s.input_price, s.output_price), (1, 5, 7));
        assert_eq!(s.model.to_vec(), b"m2".to_vec());
        assert_eq!(s.model_hash, H256::repeat_byte(0x4e));
        assert_noop!(
            Compute::update_service(
                RuntimeOrigin::signed(account(Bob)),
                3,
                terms(ServiceKind::Chat, "m", "u", 1, 1, "none")
            ),
            Error::<Test>::ServiceNotFound
        );
        assert_noop!(
            Compute::update_service(
                RuntimeOrigin::signed(account(Charlie)),
                0,
                terms(ServiceKind::Chat, "m", "u", 1, 1, "none")
            ),
            Error::<Test>::ServiceNotFound
        );
    });
}

#[test]
fn removing_the_last_service_unbonds_and_registering_again_cancels_it() {
    new_test_ext().execute_with(|| {
        register(Bob, 0);
        register(Bob, 1);
        assert_ok!(Compute::remove_service(RuntimeOrigin::signed(account(Bob)), 0));
        assert!(!provider_info(Bob).unbonding);
        assert_noop!(
            Compute::remove_service(RuntimeOrigin::signed(account(Bob)), 0),
            Error::<Test>::ServiceNotFound
        );
        assert_noop!(
            Compute::withdraw_bond(RuntimeOrigin::signed(account(Bob))),
            Error::<Test>::ProviderHasServices
        );
        assert_ok!(Compute::remove_service(RuntimeOrigin::signed(account(Bob)), 1));
        assert!(provider_info(Bob).unbonding);
        assert_noop!(
            Compute::deposit(RuntimeOrigin::signed(account(Alice)), account(Bob), 100),
            Error::<Test>::ProviderNotBonded
        );
        register(Bob, 2);
        assert!(!provider_info(Bob).unbonding);
        deposit(Alice, Bob, 100);
        Compute::do_try_state().unwrap();
    });
}

#[test]
fn bond_is_released_only_a_dispute_window_after_the_last_settlement() {
    new_test_ext().execute_with(|| {
        register(Bob, 0);
        deposit(Alice, Bob, 100);
        run_to(5);
        settle(Bob, vec![claim(Alice, Bob, 1, 0, 50, 30)]);
        assert_ok!(Compute::remove_service(RuntimeOrigin::signed(account(Bob)), 0));
        run_to(5 + DISPUTE_WINDOW - 1);
        assert_noop!(
            Compute::withdraw_bond(RuntimeOrigin::signed(account(Bob))),
            Error::<Test>::BondStillLocked
        );
        run_to(5 + DISPUTE_WINDOW);
        let before = free(Bob);
        assert_ok!(Compute::withdraw_bond(RuntimeOrigin::signed(account(Bob))));
        assert_eq!(free(Bob), before + PROVIDER_BOND);
        assert_eq!(bond_held(Bob), 0);
        assert_noop!(
            Compute::withdraw_bond(RuntimeOrigin::signed(account(Bob))),
            Error::<Test>::BondAlreadyWithdrawn
        );
        assert_noop!(
            Compute::withdraw_bond(RuntimeOrigin::signed(account(Charlie))),
            Error::<Test>::NotAProvider
        );
        // The statistics survive the bond.
        assert_eq!(provider_info(Bob).earned, 30);
        Compute::do_try_state().unwrap();
    });
}

#[test]
fn root_sets_lock_and_window_within_bounds() {
    new_test_ext().execute_with(|| {
        assert_ok!(Compute::set_refund_lock(RuntimeOrigin::root(), 100));
        assert_eq!(RefundLock::<Test>::get(), 100);
        assert_ok!(Compute::set_dispute_window(RuntimeOrigin::root(), 200));
        assert_eq!(DisputeWindow::<Test>::get(), 200);
        assert_noop!(
            Compute::set_refund_lock(RuntimeOrigin::root(), 0),
            Error::<Test>::OutOfBounds
        );
        assert_noop!(
            Compute::set_dispute_window(RuntimeOrigin::root(), 1_001),
            Error::<Test>::OutOfBounds
        );
        assert_noop!(
            Compute::set_refund_lock(RuntimeOrigin::signed(account(Alice)), 5),
            polkadot_sdk::sp_runtime::DispatchError::BadOrigin
        );
    });
}

#[test]
fn integrity_test_passes() {
    new_test_ext().execute_with(|| {
        use polkadot_sdk::frame_support::traits::IntegrityTest;
        AllPalletsWithSystem::integrity_test();
    });
}
