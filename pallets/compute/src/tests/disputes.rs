use super::*;
use polkadot_sdk::frame_support::{
    assert_noop, assert_ok,
    traits::fungible::{Inspect, InspectHold},
};
use Sr25519Keyring::{Alice, Bob, Charlie, Dave};

fn dispute(user: Sr25519Keyring, r: SignedReceipt) -> polkadot_sdk::sp_runtime::DispatchResult {
    Compute::dispute(RuntimeOrigin::signed(account(user)), account(Bob), r)
}

fn total(k: Sr25519Keyring) -> Balance {
    Balances::total_balance(&account(k))
}

/// Bob registers, Alice deposits 1 000, and Bob settles a claim for 300 where Alice's receipt
/// for the same nonce says 100.
fn over_claimed() -> SignedReceipt {
    register(Bob, 0);
    deposit(Alice, Bob, 1_000);
    settle(Bob, vec![claim(Alice, Bob, 1, 0, 300, 300)]);
    signed_receipt(receipt(Alice, Bob, 1, 100, 100), Bob)
}

#[test]
fn a_won_dispute_takes_the_excess_back_from_the_held_payment_and_slashes_the_bond() {
    new_test_ext().execute_with(|| {
        let r = over_claimed();
        let (alice_free, bob_free, issuance) = (free(Alice), free(Bob), Balances::total_issuance());
        assert_eq!(escrow(Alice, Bob).held, 300, "settlement holds the payment");
        events();
        assert_ok!(dispute(Alice, r));
        // 200 back from the held 300 onto the escrow; a penalty of 200 (1 x the over-claim)
        // from the bond: 100 to Alice, 100 burned.
        let e = escrow(Alice, Bob);
        assert_eq!(
            (e.balance, e.settled_total, e.held, e.last_claimed_total),
            (900, 100, 100, 100)
        );
        assert_eq!(escrowed(), 900);
        assert_eq!(bond_held(Bob), PROVIDER_BOND - 200);
        assert_eq!(free(Alice), alice_free + 100);
        assert_eq!(free(Bob), bob_free);
        assert_eq!(Balances::total_issuance(), issuance - 100);
        let info = provider_info(Bob);
        assert_eq!((info.bond, info.earned, info.disputes_lost), (800, 100, 1));
        assert_eq!(
            events(),
            vec![Event::DisputeWon {
                user: account(Alice),
                provider: account(Bob),
                nonce: 1,
                refunded: 200,
                unrecovered: 0,
                rewarded: 100,
                burned: 100,
            }]
        );
        Compute::do_try_state().unwrap();
    });
}

#[test]
fn a_provider_can_neither_escrow_with_nor_dispute_itself() {
    new_test_ext().execute_with(|| {
        register(Bob, 0);
        assert_noop!(
            Compute::deposit(RuntimeOrigin::signed(account(Bob)), account(Bob), 100),
            Error::<Test>::SelfEscrow
        );
        let r = signed_receipt(receipt(Bob, Bob, 1, 0, 0), Bob);
        assert_noop!(dispute(Bob, r), Error::<Test>::SelfEscrow);
    });
}

/// The attack: Bob over-claims from an account he controls (Charlie) and disputes it to move his
/// bond out at once. Charlie gets back only his own held money plus half the penalty; the other
/// half is burned, so the pair always ends poorer, and a real victim in the same window is
/// still repaid in full from what is held for her.
#[test]
fn disputing_oneself_through_another_account_costs_more_than_it_moves() {
    new_test_ext().execute_with(|| {
        register(Bob, 0);
        deposit(Alice, Bob, 1_000);
        deposit(Charlie, Bob, 5_000);
        let pair = || total(Bob) + total(Charlie);
        let before = pair();
        settle(
            Bob,
            vec![claim(Alice, Bob, 1, 0, 400, 400), claim(Charlie, Bob, 1, 0, 3_000, 3_000)],
        );
        for _ in 0..6 {
            let r = signed_receipt(receipt(Charlie, Bob, 1, 0, 0), Bob);
            let _ = Compute::dispute(RuntimeOrigin::signed(account(Charlie)), account(Bob), r);
        }
        let info = provider_info(Bob);
        assert_eq!(info.disputes_lost, 1, "the same over-claim is proven once");
        // Penalty min(bond 1 000, 3 000) = 1 000: 500 to Charlie, 500 burned.
        assert_eq!(bond_held(Bob), 0);
        assert_eq!(pair(), before - 500);
        assert_eq!(escrow(Charlie, Bob).balance, 5_000, "Charlie only got his own money back");

        // Alice was over-claimed by 300 in the same window: repaid in full without any bond.
        assert_ok!(dispute(Alice, signed_receipt(receipt(Alice, Bob, 1, 100, 100), Bob)));
        assert_eq!((escrow(Alice, Bob).balance, escrow(Alice, Bob).settled_total), (900, 100));
        Compute::do_try_state().unwrap();
    });
}

/// An over-claim paid out before the dispute cannot come back from the bond: the part still
/// held is refunded and the rest stays on the record, so the provider's next claims on that
/// escrow pay nothing until it is covered.
#[test]
fn an_unrecovered_over_claim_stays_on_the_record() {
    new_test_ext().execute_with(|| {
        register(Bob, 0);
        deposit(Alice, Bob, 5_000);
        settle(Bob, vec![claim(Alice, Bob, 1, 0, 3_000, 3_000)]);
        run_to(1 + DISPUTE_WINDOW);
        assert_ok!(Compute::release(
            RuntimeOrigin::signed(account(Bob)),
            vec![account(Alice)].try_into().unwrap()
        ));
        // A fresh small claim opens a new window (Alice signed `spent` = 3 000, as a client
        // tricked into adopting a forged total would); her receipt says her total is 10.
        settle(Bob, vec![claim(Alice, Bob, 2, 3_000, 10, 10)]);
        let bond = bond_held(Bob);
        events();
        assert_ok!(dispute(Alice, signed_receipt(receipt(Alice, Bob, 2, 10, 10), Bob)));
        assert!(matches!(
            events()[..],
            [Event::DisputeWon { refunded: 10, unrecovered: 2_990, rewarded: 5, burned: 5, .. }]
        ));
        assert_eq!(bond_held(Bob), bond - 10, "the bond pays only the penalty on what came back");
        let e = escrow(Alice, Bob);
        assert_eq!((e.balance, e.settled_total), (2_000, 3_000));
        // The debt offsets what Bob may collect next: an honest voucher for 50 more pays nothing.
        settle(Bob, vec![claim(Alice, Bob, 3, 10, 100, 50)]);
        assert_eq!(escrow(Alice, Bob).balance, 2_000);
        Compute::do_try_state().unwrap();
    });
}

#[test]
fn a_repeated_dispute_finds_nothing_to_prove() {
    new_test_ext().execute_with(|| {
        let r = over_claimed();
        assert_ok!(dispute(Alice, r.clone()));
        assert_noop!(dispute(Alice, r), Error::<Test>::NothingToDispute);
    });
}

#[test]
fn an_honest_receipt_proves_nothing() {
    new_test_ext().execute_with(|| {
        over_claimed();
        let honest = signed_receipt(receipt(Alice, Bob, 1, 300, 300), Bob);
        assert_noop!(dispute(Alice, honest), Error::<Test>::NothingToDispute);
    });
}

#[test]
fn only_the_providers_signature_counts() {
    new_test_ext().execute_with(|| {
        over_claimed();
        let by_alice = signed_receipt(receipt(Alice, Bob, 1, 100, 100), Alice);
        assert_noop!(dispute(Alice, by_alice), Error::<Test>::BadReceiptSignature);
        let by_charlie = signed_receipt(receipt(Alice, Bob, 1, 100, 100), Charlie);
        assert_noop!(dispute(Alice, by_charlie), Error::<Test>::BadReceiptSignature);
        let names_charlie = signed_receipt(receipt(Alice, Charlie, 1, 100, 100), Charlie);
        assert_noop!(dispute(Alice, names_charlie), Error::<Test>::ReceiptProviderMismatch);
    });
}

#[test]
fn only_the_receipts_user_may_dispute() {
    new_test_ext().execute_with(|| {
        let r = over_claimed();
        assert_noop!(dispute(Charlie, r), Error::<Test>::NotReceiptUser);
    });
}

/// Settled at block 1: disputes are open through block 1 + window - 1 and the bond is locked
/// through the same block; from block 1 + window the bond may go and no dispute is possible.
/// No block allows both.
#[test]
fn the_window_and_the_bond_lock_never_overlap() {
    new_test_ext().execute_with(|| {
        let r = over_claimed();
        let bob = || RuntimeOrigin::signed(account(Bob));
        assert_ok!(Compute::remove_service(bob(), 0));
        run_to(DISPUTE_WINDOW);
        assert_noop!(Compute::withdraw_bond(bob()), Error::<Test>::BondStillLocked);
        assert_ok!(polkadot_sdk::frame_support::storage::with_transaction(|| {
            let res = dispute(Alice, r.clone());
            polkadot_sdk::sp_runtime::TransactionOutcome::Rollback(res)
        }));
        run_to(1 + DISPUTE_WINDOW);
        assert_noop!(dispute(Alice, r), Error::<Test>::DisputeWindowClosed);
        assert_ok!(Compute::withdraw_bond(bob()));
    });
}

/// Root changing the window affects settlements made afterwards, never open windows.
#[test]
fn a_new_window_does_not_reach_back() {
    new_test_ext().execute_with(|| {
        let r = over_claimed();
        assert_ok!(Compute::set_dispute_window(RuntimeOrigin::root(), 500));
        run_to(1 + DISPUTE_WINDOW);
        assert_noop!(dispute(Alice, r), Error::<Test>::DisputeWindowClosed);

        let r2 = {
            settle(Bob, vec![claim(Alice, Bob, 2, 300, 300, 300)]);
            signed_receipt(receipt(Alice, Bob, 2, 0, 300), Bob)
        };
        assert_ok!(Compute::set_dispute_window(RuntimeOrigin::root(), 1));
        run_to(1 + DISPUTE_WINDOW + 100);
        assert_ok!(dispute(Alice, r2));
    });
}

#[test]
fn a_receipt_older_than_settled_through_proves_nothing() {
    new_test_ext().execute_with(|| {
        let r = over_claimed();
        settle(Bob, vec![claim(Alice, Bob, 2, 300, 50, 50)]);
        assert_noop!(dispute(Alice, r), Error::<Test>::ReceiptTooOld);
    });
}

#[test]
fn a_receipt_above_settled_through_proves_an_over_claim_too() {
    new_test_ext().execute_with(|| {
        over_claimed();
        // Alice's later receipt (nonce 4, not yet settled) still says her total is 150.
        assert_ok!(dispute(Alice, signed_receipt(receipt(Alice, Bob, 4, 50, 150), Bob)));
        assert_eq!(escrow(Alice, Bob).settled_total, 150);
    });
}

#[test]
fn an_ack_does_not_hide_an_over_claim() {
    new_test_ext().execute_with(|| {
        let r = over_claimed();
        // The closing ack advances the nonce without covering a request.
        settle(Bob, vec![claim(Alice, Bob, 2, 300, 0, 0)]);
        assert_eq!(escrow(Alice, Bob).settled_nonce, 2);
        assert_ok!(dispute(Alice, r));
        assert_eq!(escrow(Alice, Bob).settled_total, 100);
    });
}

#[test]
fn the_penalty_is_capped_by_the_bond_and_never_touches_free_balance() {
    new_test_ext().execute_with(|| {
        register(Bob, 0);
        deposit(Alice, Bob, 5_000);
        settle(Bob, vec![claim(Alice, Bob, 1, 0, 3_000, 3_000)]);
        let bob_free = free(Bob);
        assert_ok!(dispute(Alice, signed_receipt(receipt(Alice, Bob, 1, 500, 500), Bob)));
        // 2 500 back from the held 3 000; penalty min(2 500, bond 1 000).
        assert_eq!(free(Bob), bob_free);
        assert_eq!(bond_held(Bob), 0);
        assert_eq!(escrow(Alice, Bob).balance, 4_500);
        Compute::do_try_state().unwrap();
    });
}

#[test]
fn a_dispute_needs_an_escrow() {
    new_test_ext().execute_with(|| {
        register(Bob, 0);
        let r = signed_receipt(receipt(Alice, Bob, 1, 100, 100), Bob);
        assert_noop!(dispute(Alice, r), Error::<Test>::EscrowNotFound);
    });
}

#[test]
fn held_payments_are_released_after_the_window_in_two_buckets() {
    new_test_ext().execute_with(|| {
        register(Bob, 0);
        deposit(Alice, Bob, 1_000);
        let bob_free = free(Bob);
        settle(Bob, vec![claim(Alice, Bob, 1, 0, 100, 100)]);
        run_to(10);
        settle(Bob, vec![claim(Alice, Bob, 2, 100, 50, 50)]);
        let e = escrow(Alice, Bob);
        assert_eq!((e.held, e.held_until, e.held_next, e.held_next_until), (100, 21, 50, 30));
        assert_eq!(provider_info(Bob).bond_locked_until, 30);
        let release = || {
            Compute::release(
                RuntimeOrigin::signed(account(Bob)),
                vec![account(Alice), account(Dave)].try_into().unwrap(),
            )
        };
        run_to(20);
        assert_ok!(release());
        assert_eq!(free(Bob), bob_free, "nothing is released inside the window");
        run_to(21);
        // A settlement releases what is due and keeps the rest in order.
        events();
        settle(Bob, vec![claim(Alice, Bob, 3, 150, 20, 20)]);
        assert!(events().contains(&Event::EarningsReleased { provider: account(Bob), amount: 100 }));
        let e = escrow(Alice, Bob);
        assert_eq!((e.held, e.held_until, e.held_next, e.held_next_until), (50, 30, 20, 41));
        run_to(41);
        assert_ok!(release());
        assert_eq!(free(Bob), bob_free + 170);
        assert_eq!((escrow(Alice, Bob).held, escrow(Alice, Bob).held_next), (0, 0));
        Compute::do_try_state().unwrap();
    });
}

#[test]
fn the_first_deposit_holds_the_record_deposit_once() {
    new_test_ext().execute_with(|| {
        register(Bob, 0);
        let held = || Balances::balance_on_hold(&HoldReason::EscrowRecord.into(), &account(Alice));
        events();
        deposit(Alice, Bob, 100);
        assert_eq!(held(), ESCROW_DEPOSIT);
        assert!(events().contains(&Event::EscrowOpened {
            user: account(Alice),
            provider: account(Bob),
            deposit: ESCROW_DEPOSIT
        }));
        deposit(Alice, Bob, 100);
        assert_eq!(held(), ESCROW_DEPOSIT);
        // A user who cannot pay the record deposit on top of the amount is refused.
        let all = Balances::reducible_balance(
            &account(Dave),
            polkadot_sdk::frame_support::traits::tokens::Preservation::Preserve,
            polkadot_sdk::frame_support::traits::tokens::Fortitude::Polite,
        );
        assert_noop!(
            Compute::deposit(RuntimeOrigin::signed(account(Dave)), account(Bob), all),
            Error::<Test>::InsufficientBalance
        );
    });
}

/// Root shortening the window never shortens it for a payment already held: a later payment
/// joining the same bucket keeps the bucket locked as long as its first payment was promised.
#[test]
fn a_shorter_window_does_not_release_earlier_payments_sooner() {
    new_test_ext().execute_with(|| {
        register(Bob, 0);
        deposit(Alice, Bob, 1_000);
        settle(Bob, vec![claim(Alice, Bob, 1, 0, 100, 100)]); // held until 21
        run_to(5);
        settle(Bob, vec![claim(Alice, Bob, 2, 100, 100, 100)]); // younger, until 25
        assert_ok!(Compute::set_dispute_window(RuntimeOrigin::root(), 1));
        run_to(6);
        settle(Bob, vec![claim(Alice, Bob, 3, 200, 100, 100)]); // would be until 7
        let e = escrow(Alice, Bob);
        assert_eq!((e.held_until, e.held_next, e.held_next_until), (21, 200, 25));
        run_to(24);
        assert_ok!(dispute(Alice, signed_receipt(receipt(Alice, Bob, 3, 0, 100), Bob)));
        Compute::do_try_state().unwrap();
    });
}
