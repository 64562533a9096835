use super::*;
use polkadot_sdk::frame_support::{assert_noop, assert_ok};
use Sr25519Keyring::{Alice, Bob, Charlie};

fn dispute(user: Sr25519Keyring, r: SignedReceipt) -> polkadot_sdk::sp_runtime::DispatchResult {
    Compute::dispute(RuntimeOrigin::signed(account(user)), account(Bob), r)
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
fn a_won_dispute_refunds_the_excess_and_slashes_the_bond() {
    new_test_ext().execute_with(|| {
        let r = over_claimed();
        let (alice_free, bob_free) = (free(Alice), free(Bob));
        events();
        assert_ok!(dispute(Alice, r));
        // 200 back from the bond onto the escrow, then 10% of the remaining 800 slashed to Alice.
        let e = escrow(Alice, Bob);
        assert_eq!((e.balance, e.settled_total), (900, 100));
        assert_eq!(escrowed(), 900);
        assert_eq!(bond_held(Bob), PROVIDER_BOND - 200 - 80);
        assert_eq!(free(Alice), alice_free + 80);
        assert_eq!(free(Bob), bob_free);
        let info = provider_info(Bob);
        assert_eq!((info.bond, info.earned, info.disputes_lost), (720, 100, 1));
        assert_eq!(
            events(),
            vec![Event::DisputeWon {
                user: account(Alice),
                provider: account(Bob),
                nonce: 1,
                refunded: 200,
                slashed: 80
            }]
        );
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

#[test]
fn the_window_closes() {
    new_test_ext().execute_with(|| {
        let r = over_claimed();
        run_to(1 + DISPUTE_WINDOW + 1);
        assert_noop!(dispute(Alice, r), Error::<Test>::DisputeWindowClosed);
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
fn an_excess_beyond_the_bond_comes_from_free_balance() {
    new_test_ext().execute_with(|| {
        register(Bob, 0);
        deposit(Alice, Bob, 5_000);
        settle(Bob, vec![claim(Alice, Bob, 1, 0, 3_000, 3_000)]);
        let bob_free = free(Bob);
        assert_ok!(dispute(Alice, signed_receipt(receipt(Alice, Bob, 1, 500, 500), Bob)));
        // 2 500 excess: 1 000 from the bond, 1 500 from free balance; nothing left to slash.
        assert_eq!(free(Bob), bob_free - 1_500);
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
