use super::*;
use polkadot_sdk::frame_support::{assert_noop, assert_ok};
use Sr25519Keyring::{Alice, Bob, Charlie};

#[test]
fn deposit_holds_funds_in_the_escrow() {
    new_test_ext().execute_with(|| {
        register(Bob, 0);
        events();
        deposit(Alice, Bob, 300);
        deposit(Alice, Bob, 200);
        assert_eq!(escrow(Alice, Bob).balance, 500);
        assert_eq!(escrowed(), 500);
        assert_eq!(free(Alice), ENDOWMENT - 500 - ESCROW_DEPOSIT);
        assert_eq!(
            events().last(),
            Some(&Event::Deposited {
                user: account(Alice),
                provider: account(Bob),
                amount: 200,
                balance: 500
            })
        );
        Compute::do_try_state().unwrap();
    });
}

#[test]
fn bad_deposits_change_nothing() {
    new_test_ext().execute_with(|| {
        assert_noop!(
            Compute::deposit(RuntimeOrigin::signed(account(Alice)), account(Bob), 100),
            Error::<Test>::ProviderNotBonded
        );
        register(Bob, 0);
        assert_noop!(
            Compute::deposit(RuntimeOrigin::signed(account(Alice)), account(Bob), MIN_DEPOSIT - 1),
            Error::<Test>::DepositBelowMinimum
        );
        assert_noop!(
            Compute::deposit(RuntimeOrigin::signed(account(Alice)), account(Bob), ENDOWMENT + 1),
            Error::<Test>::InsufficientBalance
        );
    });
}

#[test]
fn refund_waits_for_the_lock_and_restarts_it() {
    new_test_ext().execute_with(|| {
        register(Bob, 0);
        deposit(Alice, Bob, 500);
        assert_ok!(Compute::request_refund(
            RuntimeOrigin::signed(account(Alice)),
            account(Bob),
            100
        ));
        let e = escrow(Alice, Bob);
        assert_eq!((e.pending_refund, e.unlock_at), (100, 1 + REFUND_LOCK));
        run_to(5);
        assert_ok!(Compute::request_refund(
            RuntimeOrigin::signed(account(Alice)),
            account(Bob),
            50
        ));
        let e = escrow(Alice, Bob);
        assert_eq!((e.pending_refund, e.unlock_at), (150, 5 + REFUND_LOCK));
        run_to(5 + REFUND_LOCK - 1);
        assert_noop!(
            Compute::withdraw_refund(RuntimeOrigin::signed(account(Alice)), account(Bob)),
            Error::<Test>::RefundLocked
        );
        run_to(5 + REFUND_LOCK);
        assert_ok!(Compute::withdraw_refund(RuntimeOrigin::signed(account(Alice)), account(Bob)));
        let e = escrow(Alice, Bob);
        assert_eq!((e.balance, e.pending_refund), (350, 0));
        assert_eq!(free(Alice), ENDOWMENT - 350 - ESCROW_DEPOSIT);
        assert_noop!(
            Compute::withdraw_refund(RuntimeOrigin::signed(account(Alice)), account(Bob)),
            Error::<Test>::NoPendingRefund
        );
        Compute::do_try_state().unwrap();
    });
}

#[test]
fn refund_above_balance_or_zero_or_without_escrow_is_refused() {
    new_test_ext().execute_with(|| {
        register(Bob, 0);
        assert_noop!(
            Compute::request_refund(RuntimeOrigin::signed(account(Alice)), account(Bob), 1),
            Error::<Test>::EscrowNotFound
        );
        deposit(Alice, Bob, 100);
        assert_noop!(
            Compute::request_refund(RuntimeOrigin::signed(account(Alice)), account(Bob), 0),
            Error::<Test>::ZeroAmount
        );
        assert_ok!(Compute::request_refund(
            RuntimeOrigin::signed(account(Alice)),
            account(Bob),
            60
        ));
        assert_noop!(
            Compute::request_refund(RuntimeOrigin::signed(account(Alice)), account(Bob), 41),
            Error::<Test>::RefundExceedsBalance
        );
        assert_noop!(
            Compute::request_refund(RuntimeOrigin::signed(account(Alice)), account(Bob), u128::MAX),
            Error::<Test>::Overflow
        );
        assert_noop!(
            Compute::cancel_refund(RuntimeOrigin::signed(account(Charlie)), account(Bob)),
            Error::<Test>::EscrowNotFound
        );
    });
}

#[test]
fn cancel_makes_the_pending_refund_spendable() {
    new_test_ext().execute_with(|| {
        register(Bob, 0);
        deposit(Alice, Bob, 100);
        assert_noop!(
            Compute::cancel_refund(RuntimeOrigin::signed(account(Alice)), account(Bob)),
            Error::<Test>::NoPendingRefund
        );
        assert_ok!(Compute::request_refund(
            RuntimeOrigin::signed(account(Alice)),
            account(Bob),
            70
        ));
        assert_eq!(escrow(Alice, Bob).spendable(), 30);
        assert_ok!(Compute::cancel_refund(RuntimeOrigin::signed(account(Alice)), account(Bob)));
        assert_eq!(escrow(Alice, Bob).spendable(), 100);
        assert_eq!(
            events().last(),
            Some(&Event::RefundCancelled {
                user: account(Alice),
                provider: account(Bob),
                amount: 70
            })
        );
    });
}

#[test]
fn settlement_draws_on_the_pending_refund_and_withdraw_gets_the_rest() {
    new_test_ext().execute_with(|| {
        register(Bob, 0);
        deposit(Alice, Bob, 100);
        assert_ok!(Compute::request_refund(
            RuntimeOrigin::signed(account(Alice)),
            account(Bob),
            100
        ));
        settle(Bob, vec![claim(Alice, Bob, 1, 0, 80, 80)]);
        let e = escrow(Alice, Bob);
        assert_eq!((e.balance, e.pending_refund), (20, 20));
        run_to(1 + REFUND_LOCK);
        assert_ok!(Compute::withdraw_refund(RuntimeOrigin::signed(account(Alice)), account(Bob)));
        assert_eq!(free(Alice), ENDOWMENT - 80 - ESCROW_DEPOSIT);
        assert_eq!(escrow(Alice, Bob).balance, 0);
        Compute::do_try_state().unwrap();
    });
}
