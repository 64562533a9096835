use super::*;
use codec::{Decode, Encode};
use polkadot_sdk::frame_support::{assert_noop, assert_ok};
use Sr25519Keyring::{Alice, Bob, Charlie, Dave};

fn rejected(reason: RejectReason, user: Sr25519Keyring, nonce: Nonce) -> Event<Test> {
    Event::ClaimRejected { provider: account(Bob), user: account(user), nonce, reason }
}

/// Settle one claim of Alice's with Bob and return the claim events (the batch event dropped).
fn settle_one(c: Claim) -> Vec<Event<Test>> {
    events();
    settle(Bob, vec![c]);
    let mut evs = events();
    assert!(matches!(evs.pop(), Some(Event::BatchSettled { .. })));
    evs
}

fn setup() {
    register(Bob, 0);
    deposit(Alice, Bob, 1_000);
}

#[test]
fn a_valid_claim_pays_the_provider_from_the_escrow_account() {
    new_test_ext().execute_with(|| {
        setup();
        let bob_free = paid_to(Bob);
        let evs = settle_one(claim(Alice, Bob, 3, 0, 200, 150));
        assert_eq!(
            evs,
            vec![Event::ClaimSettled {
                provider: account(Bob),
                user: account(Alice),
                nonce: 3,
                paid: 150
            }]
        );
        assert_eq!(paid_to(Bob), bob_free + 150);
        assert_eq!(escrowed(), 850);
        let e = escrow(Alice, Bob);
        assert_eq!(
            (
                e.balance,
                e.settled_nonce,
                e.settled_through,
                e.settled_total,
                e.last_claimed_total,
                e.last_settled_at
            ),
            (850, 3, 3, 150, 150, 1)
        );
        let info = provider_info(Bob);
        assert_eq!(
            (info.claims_settled, info.requests_settled, info.earned, info.last_settled_at),
            (1, 3, 150, 1)
        );

        // The next cumulative voucher pays only the difference.
        settle_one(claim(Alice, Bob, 5, 150, 100, 40));
        assert_eq!(escrow(Alice, Bob).settled_total, 190);
        assert_eq!(paid_to(Bob), bob_free + 190);
        assert_eq!(provider_info(Bob).requests_settled, 5);
        Compute::do_try_state().unwrap();
    });
}

#[test]
fn bytes_wrapped_signatures_are_accepted() {
    new_test_ext().execute_with(|| {
        setup();
        let v = voucher(Alice, Bob, 1, 0, 100);
        let mut wrapped = b"<Bytes>".to_vec();
        wrapped.extend(v.signing_payload(&genesis()));
        wrapped.extend(b"</Bytes>");
        let c = Claim {
            voucher: SignedVoucher { voucher: v, signature: sign(Alice, &wrapped) },
            fee_claim: 100,
        };
        assert!(matches!(settle_one(c)[..], [Event::ClaimSettled { paid: 100, .. }]));
    });
}

#[test]
fn forged_or_foreign_signatures_are_rejected() {
    new_test_ext().execute_with(|| {
        setup();
        // Signed by the provider instead of the user.
        let forged = Claim { voucher: signed(voucher(Alice, Bob, 1, 0, 100), Bob), fee_claim: 100 };
        assert_eq!(settle_one(forged), vec![rejected(RejectReason::BadSignature, Alice, 1)]);
        // Signed for another chain.
        let v = voucher(Alice, Bob, 1, 0, 100);
        let other_chain = compute_primitives::signing_payload(
            compute_primitives::VOUCHER_TAG,
            &H256::repeat_byte(7),
            &v,
        );
        let c = Claim {
            voucher: SignedVoucher { voucher: v.clone(), signature: sign(Alice, &other_chain) },
            fee_claim: 1,
        };
        assert_eq!(settle_one(c), vec![rejected(RejectReason::BadSignature, Alice, 1)]);
        // Signed under another domain tag.
        let other_domain =
            compute_primitives::signing_payload(compute_primitives::RECEIPT_TAG, &genesis(), &v);
        let c = Claim {
            voucher: SignedVoucher { voucher: v.clone(), signature: sign(Alice, &other_domain) },
            fee_claim: 1,
        };
        assert_eq!(settle_one(c), vec![rejected(RejectReason::BadSignature, Alice, 1)]);
        // A tampered voucher.
        let mut c = claim(Alice, Bob, 1, 0, 100, 100);
        c.voucher.voucher.cap = 1_000;
        c.fee_claim = 1_000;
        assert_eq!(settle_one(c), vec![rejected(RejectReason::BadSignature, Alice, 1)]);
        assert_eq!(escrow(Alice, Bob).balance, 1_000, "nothing was paid");
        assert_eq!(escrow(Alice, Bob).settled_nonce, 0);
    });
}

#[test]
fn stale_and_equal_nonces_are_rejected() {
    new_test_ext().execute_with(|| {
        setup();
        settle_one(claim(Alice, Bob, 4, 0, 100, 100));
        assert_eq!(
            settle_one(claim(Alice, Bob, 4, 0, 100, 100)),
            vec![rejected(RejectReason::StaleNonce, Alice, 4)]
        );
        assert_eq!(
            settle_one(claim(Alice, Bob, 3, 0, 100, 100)),
            vec![rejected(RejectReason::StaleNonce, Alice, 3)]
        );
        // Same nonce, but not a partial to collect.
        assert_eq!(
            settle_one(claim(Alice, Bob, 4, 100, 100, 0)),
            vec![rejected(RejectReason::StaleNonce, Alice, 4)]
        );
        assert_eq!(escrow(Alice, Bob).settled_total, 100);
    });
}

#[test]
fn wrong_provider_no_escrow_above_cap_and_overflow_are_rejected() {
    new_test_ext().execute_with(|| {
        setup();
        register(Charlie, 0);
        let for_charlie = claim(Alice, Charlie, 1, 0, 100, 100);
        assert_eq!(settle_one(for_charlie), vec![rejected(RejectReason::WrongProvider, Alice, 1)]);
        assert_eq!(
            settle_one(claim(Dave, Bob, 1, 0, 100, 100)),
            vec![rejected(RejectReason::NoEscrow, Dave, 1)]
        );
        assert_eq!(
            settle_one(claim(Alice, Bob, 1, 0, 100, 101)),
            vec![rejected(RejectReason::ClaimAboveCap, Alice, 1)]
        );
        assert_eq!(
            settle_one(claim(Alice, Bob, 1, u128::MAX, u128::MAX, 1)),
            vec![rejected(RejectReason::Overflow, Alice, 1)]
        );
        assert_eq!(escrow(Alice, Bob), Escrow { balance: 1_000, ..Default::default() });
    });
}

#[test]
fn an_empty_escrow_pays_in_part_and_the_rest_is_collected_later() {
    new_test_ext().execute_with(|| {
        setup();
        let evs = settle_one(claim(Alice, Bob, 2, 700, 500, 500));
        assert_eq!(
            evs,
            vec![Event::ClaimPartiallySettled {
                provider: account(Bob),
                user: account(Alice),
                nonce: 2,
                paid: 1_000,
                owed: 200
            }]
        );
        let e = escrow(Alice, Bob);
        assert_eq!((e.balance, e.settled_total, e.last_claimed_total), (0, 1_000, 1_200));
        // The user tops up; the provider collects the rest with the same voucher.
        deposit(Alice, Bob, 500);
        let evs = settle_one(claim(Alice, Bob, 2, 700, 500, 500));
        assert!(matches!(evs[..], [Event::ClaimSettled { paid: 200, .. }]));
        assert_eq!(escrow(Alice, Bob).balance, 300);
        // Once collected, the same voucher is stale.
        assert_eq!(
            settle_one(claim(Alice, Bob, 2, 700, 500, 500)),
            vec![rejected(RejectReason::StaleNonce, Alice, 2)]
        );
        assert_eq!(provider_info(Bob).requests_settled, 2, "collecting the rest advances no nonce");
        Compute::do_try_state().unwrap();
    });
}

#[test]
fn a_mixed_batch_pays_exactly_the_good_claims() {
    new_test_ext().execute_with(|| {
        register(Bob, 0);
        deposit(Alice, Bob, 1_000);
        deposit(Charlie, Bob, 1_000);
        deposit(Dave, Bob, 1_000);
        let bob_free = paid_to(Bob);
        events();
        settle(
            Bob,
            vec![
                claim(Alice, Bob, 1, 0, 100, 100),
                claim(Charlie, Bob, 1, 0, 100, 101),
                Claim { voucher: signed(voucher(Dave, Bob, 1, 0, 100), Alice), fee_claim: 50 },
                claim(Charlie, Bob, 2, 0, 60, 60),
                claim(Alice, Bob, 1, 0, 100, 100),
            ],
        );
        assert_eq!(paid_to(Bob), bob_free + 160);
        assert_eq!(escrow(Alice, Bob).balance, 900);
        assert_eq!(escrow(Charlie, Bob).balance, 940);
        assert_eq!(escrow(Dave, Bob).balance, 1_000);
        assert_eq!(
            events().last(),
            Some(&Event::BatchSettled {
                provider: account(Bob),
                trace_root: H256::repeat_byte(0xab),
                accepted: 2,
                rejected: 3,
                paid: 160
            })
        );
        Compute::do_try_state().unwrap();
    });
}

#[test]
fn an_ack_advances_the_nonce_but_not_settled_through() {
    new_test_ext().execute_with(|| {
        setup();
        settle_one(claim(Alice, Bob, 1, 0, 100, 80));
        settle_one(claim(Alice, Bob, 2, 80, 0, 0));
        let e = escrow(Alice, Bob);
        assert_eq!((e.settled_nonce, e.settled_through, e.settled_total), (2, 1, 80));
    });
}

#[test]
fn settling_requires_a_bond_of_at_least_min_bond() {
    new_test_ext().execute_with(|| {
        setup();
        let items: BoundedVec<Claim, _> =
            vec![claim(Alice, Charlie, 1, 0, 10, 10)].try_into().unwrap();
        assert_noop!(
            Compute::settle(RuntimeOrigin::signed(account(Charlie)), items, H256::zero()),
            Error::<Test>::NotAProvider
        );
        // Bob over-claims 600 and loses the dispute: the bond drops below MinBond.
        settle_one(claim(Alice, Bob, 1, 0, 700, 700));
        let r = signed_receipt(receipt(Alice, Bob, 1, 100, 100), Bob);
        assert_ok!(Compute::dispute(RuntimeOrigin::signed(account(Alice)), account(Bob), r));
        assert!(provider_info(Bob).bond < MIN_BOND);
        assert_ok!(Compute::remove_service(RuntimeOrigin::signed(account(Bob)), 0));
        let items: BoundedVec<Claim, _> =
            vec![claim(Alice, Bob, 2, 100, 10, 10)].try_into().unwrap();
        assert_noop!(
            Compute::settle(RuntimeOrigin::signed(account(Bob)), items, H256::zero()),
            Error::<Test>::ProviderNotBonded
        );
    });
}

#[test]
fn an_oversized_batch_is_refused_at_decode() {
    let encode_call = |n: usize| {
        new_test_ext().execute_with(|| {
            let claims: Vec<Claim> =
                (0..n).map(|i| claim(Alice, Bob, i as u64 + 1, 0, 1, 1)).collect();
            let mut bytes = vec![8u8]; // call_index of `settle`
            claims.encode_to(&mut bytes);
            H256::zero().encode_to(&mut bytes);
            bytes
        })
    };
    let fits = encode_call(MAX_BATCH as usize);
    assert!(crate::Call::<Test>::decode(&mut &fits[..]).is_ok());
    let too_big = encode_call(MAX_BATCH as usize + 1);
    assert!(crate::Call::<Test>::decode(&mut &too_big[..]).is_err());
}

/// A batch moves no funds out of the escrow account: its payments are held there for the
/// dispute window, then one `release` pays the provider with one transfer, whatever the number of
/// escrows; the escrow account keeps the rest of every escrow.
#[test]
fn a_batch_is_held_then_paid_to_its_provider_with_one_transfer() {
    new_test_ext().execute_with(|| {
        register(Bob, 0);
        deposit(Alice, Bob, 1_000);
        deposit(Charlie, Bob, 500);
        deposit(Dave, Bob, 300);
        let bob_free = paid_to(Bob);
        let transfers = || -> Vec<_> {
            let t =
                System::events()
                    .into_iter()
                    .filter_map(|r| match r.event {
                        RuntimeEvent::Balances(
                            polkadot_sdk::pallet_balances::Event::Transfer { from, to, amount },
                        ) => Some((from, to, amount)),
                        _ => None,
                    })
                    .collect();
            System::reset_events();
            t
        };
        System::reset_events();
        settle(
            Bob,
            vec![
                claim(Alice, Bob, 1, 0, 200, 120),
                claim(Charlie, Bob, 2, 0, 200, 80),
                claim(Dave, Bob, 1, 0, 400, 400), // above the escrow: 300 paid, 100 owed
            ],
        );
        assert_eq!(transfers(), vec![], "payments stay held through the dispute window");
        run_to(1 + DISPUTE_WINDOW);
        assert_ok!(Compute::release(
            RuntimeOrigin::signed(account(Bob)),
            vec![account(Alice), account(Charlie), account(Dave)].try_into().unwrap()
        ));
        assert_eq!(transfers(), vec![(Compute::escrow_account(), account(Bob), 120 + 80 + 300)]);
        assert_eq!(paid_to(Bob), bob_free + 500);
        assert_eq!(escrowed(), 1_800 - 500);
        assert_eq!(escrow(Dave, Bob).balance, 0);
    });
}

/// A deposit must leave the user alive (it may not take the existential deposit), and a
/// refused deposit moves nothing.
#[test]
fn a_deposit_keeps_the_user_alive() {
    new_test_ext().execute_with(|| {
        register(Bob, 0);
        let all = free(Alice);
        assert_noop!(
            Compute::deposit(RuntimeOrigin::signed(account(Alice)), account(Bob), all),
            Error::<Test>::InsufficientBalance
        );
        assert_eq!(escrowed(), 0);
        deposit(Alice, Bob, all - 1 - ESCROW_DEPOSIT);
        assert_eq!((free(Alice), escrowed()), (1, all - 1 - ESCROW_DEPOSIT));
    });
}

/// A provider signing vouchers for itself through another account cannot inflate its numbers
/// for free: a claim that pays nothing counts nothing, and a nonce jump counts at most one
/// request per unit paid.
#[test]
fn statistics_count_only_what_moved_funds() {
    new_test_ext().execute_with(|| {
        setup();
        settle_one(claim(Alice, Bob, 1, 0, 100, 0));
        settle_one(claim(Alice, Bob, 2, 0, 0, 0));
        let info = provider_info(Bob);
        assert_eq!((info.claims_settled, info.requests_settled, info.earned), (0, 0, 0));
        settle_one(claim(Alice, Bob, u64::MAX, 0, 10, 10));
        let info = provider_info(Bob);
        assert_eq!((info.claims_settled, info.requests_settled, info.earned), (1, 10, 10));
        Compute::do_try_state().unwrap();
    });
}
