use super::*;
use polkadot_sdk::{
    frame_support::{
        assert_noop, assert_ok,
        traits::fungible::{Inspect, InspectHold, Mutate},
    },
    sp_io::hashing::blake2_256,
};
use Sr25519Keyring::{Alice, Bob, Charlie, Dave, Eve, Ferdie};

const REQUEST: &[u8] = br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
const RESPONSE: &[u8] = b"Hello there";
const PROOF: &[u8] = b"\x01\x02\x00\x00\x00proof bytes";
const WEIGHTS: H256 = H256::repeat_byte(0x4d);
const FEE: Balance = 100;

fn evidence(request: &[u8], response: &[u8], proof: &[u8]) -> Evidence {
    Evidence {
        request: request.to_vec().try_into().unwrap(),
        response: response.to_vec().try_into().unwrap(),
        proof: proof.to_vec().try_into().unwrap(),
    }
}

fn good_evidence() -> Evidence {
    evidence(REQUEST, RESPONSE, PROOF)
}

/// Alice's receipt from Bob for nonce 1: fee 100, committing to the evidence above.
fn chat_receipt() -> Receipt {
    Receipt {
        request_hash: H256(blake2_256(REQUEST)),
        response_hash: H256(blake2_256(RESPONSE)),
        proof_hash: H256(blake2_256(PROOF)),
        model_hash: WEIGHTS,
        ..receipt(Alice, Bob, 1, FEE, FEE)
    }
}

/// Bob registers, Alice deposits 1 000, Bob settles her voucher for the receipt's fee, and
/// Charlie, Dave and Eve bond as verifiers.
fn paid() -> SignedReceipt {
    register(Bob, 0);
    deposit(Alice, Bob, 1_000);
    settle(Bob, vec![claim(Alice, Bob, 1, 0, 300, FEE)]);
    for v in [Charlie, Dave, Eve] {
        assert_ok!(Compute::join_verifiers(RuntimeOrigin::signed(account(v))));
    }
    events();
    signed_receipt(chat_receipt(), Bob)
}

fn challenge(user: Sr25519Keyring, r: SignedReceipt, e: Evidence) -> DispatchResult {
    Compute::challenge(RuntimeOrigin::signed(account(user)), account(Bob), r, e)
}

fn vote(v: Sr25519Keyring, vote: Vote) -> DispatchResult {
    Compute::vote(RuntimeOrigin::signed(account(v)), 0, vote)
}

fn verifier(k: Sr25519Keyring) -> VerifierInfo {
    Verifiers::<Test>::get(account(k)).expect("a verifier")
}

fn deposit_held(k: Sr25519Keyring) -> Balance {
    Balances::balance_on_hold(&HoldReason::ChallengeDeposit.into(), &account(k))
}

fn verifier_bond_held(k: Sr25519Keyring) -> Balance {
    Balances::balance_on_hold(&HoldReason::VerifierBond.into(), &account(k))
}

type DispatchResult = polkadot_sdk::sp_runtime::DispatchResult;

#[test]
fn an_upheld_challenge_refunds_the_fee_and_slashes_the_bond() {
    new_test_ext().execute_with(|| {
        let r = paid();
        let (alice, charlie, issuance) = (free(Alice), free(Charlie), Balances::total_issuance());
        assert_ok!(challenge(Alice, r, good_evidence()));
        assert_eq!(deposit_held(Alice), CHALLENGE_DEPOSIT);
        assert_eq!(ProviderChallenges::<Test>::get(account(Bob)).open, 1);
        assert_eq!(verifier(Eve).assigned, 1);
        Compute::do_try_state().unwrap();
        assert_ok!(vote(Charlie, Vote::Cheated));
        assert!(Challenges::<Test>::contains_key(0), "one vote of three decides nothing");
        assert_ok!(vote(Dave, Vote::Cheated));
        assert!(!Challenges::<Test>::contains_key(0), "two of three end it");

        // The fee comes back from the held payment onto the escrow; the voucher stays spent.
        let e = escrow(Alice, Bob);
        assert_eq!((e.balance, e.held, e.settled_total), (1_000, 0, FEE));
        // Slash: 9 x the fee = 900 (above the least, 50): 30 % (270) to Alice, 40 % (360)
        // split between Charlie and Dave, 270 burned. The deposit is back.
        assert_eq!(bond_held(Bob), PROVIDER_BOND - 900);
        assert_eq!(free(Alice), alice + 270);
        assert_eq!(deposit_held(Alice), 0);
        assert_eq!(free(Charlie), charlie + 180);
        assert_eq!(free(Dave), charlie + 180);
        assert_eq!(Balances::total_issuance(), issuance - 270);
        let info = provider_info(Bob);
        assert_eq!((info.bond, info.earned), (100, 0));
        let record = ProviderChallenges::<Test>::get(account(Bob));
        assert_eq!((record.open, record.lost, record.won), (0, 1, 0));
        assert_eq!((verifier(Charlie).with_majority, verifier(Eve).missed), (1, 1));
        assert_eq!(verifier(Eve).assigned, 0);
        let ended = events().into_iter().last().unwrap();
        assert_eq!(
            ended,
            Event::ChallengeEnded {
                id: 0,
                user: account(Alice),
                provider: account(Bob),
                outcome: ChallengeOutcome::Upheld,
                refunded: FEE,
                from_bond: 0,
                slashed: 900,
                challenger_reward: 270,
                verifier_reward: 360,
                burned: 270,
            }
        );
        Compute::do_try_state().unwrap();
    });
}

#[test]
fn a_rejected_challenge_pays_the_majority_and_costs_the_minority() {
    new_test_ext().execute_with(|| {
        let r = paid();
        let (alice, dave) = (free(Alice), free(Dave));
        assert_ok!(challenge(Alice, r, good_evidence()));
        assert_ok!(vote(Charlie, Vote::Cheated));
        assert_ok!(vote(Dave, Vote::Honest));
        assert_ok!(vote(Eve, Vote::Honest));
        // The deposit (40) goes to Dave and Eve; Charlie loses 10 % of the verifier bond.
        assert_eq!(free(Alice), alice - CHALLENGE_DEPOSIT);
        assert_eq!(free(Dave), dave + 20);
        assert_eq!(verifier_bond_held(Charlie), VERIFIER_BOND - 30);
        assert_eq!(verifier(Charlie).against_majority, 1);
        assert_eq!(bond_held(Bob), PROVIDER_BOND, "an honest provider keeps its bond");
        assert_eq!(escrow(Alice, Bob).held, FEE, "and its payment");
        assert_eq!(ProviderChallenges::<Test>::get(account(Bob)).won, 1);
        // Charlie's bond is below `VerifierBond`: no new challenges for him.
        settle(Bob, vec![claim(Alice, Bob, 2, FEE, 300, FEE)]);
        let later = signed_receipt(Receipt { nonce: 2, total: 2 * FEE, ..chat_receipt() }, Bob);
        assert_ok!(challenge(Alice, later, good_evidence()));
        let assigned: Vec<_> =
            Challenges::<Test>::get(1).unwrap().verifiers.iter().map(|(v, _)| v.clone()).collect();
        assert_eq!(assigned, {
            let mut a = vec![account(Dave), account(Eve)];
            a.sort_by_key(|a| Verifiers::<Test>::hashed_key_for(a));
            a
        });
        Compute::do_try_state().unwrap();
    });
}

#[test]
fn a_challenge_without_a_supermajority_ends_undecided_after_the_deadline() {
    new_test_ext().execute_with(|| {
        let r = paid();
        let alice = free(Alice);
        assert_ok!(challenge(Alice, r, good_evidence()));
        assert_ok!(vote(Charlie, Vote::Cheated));
        assert_ok!(vote(Dave, Vote::Honest));
        let closer = RuntimeOrigin::signed(account(Ferdie));
        assert_noop!(Compute::close_challenge(closer.clone(), 0), Error::<Test>::VotingStillOpen);
        run_to(1 + VOTING_PERIOD + 1);
        assert_noop!(vote(Eve, Vote::Honest), Error::<Test>::VotingClosed);
        assert_ok!(Compute::close_challenge(closer.clone(), 0));
        assert_eq!(free(Alice), alice, "the deposit is back");
        assert_eq!(verifier(Eve).missed, 1);
        assert_eq!(verifier_bond_held(Charlie), VERIFIER_BOND, "no majority, no penalty");
        assert_eq!(verifier_bond_held(Eve), VERIFIER_BOND, "absence is only counted");
        assert_eq!(ProviderChallenges::<Test>::get(account(Bob)).undecided, 1);
        assert_noop!(Compute::close_challenge(closer, 0), Error::<Test>::ChallengeNotFound);
        // Nobody decided it: Alice may challenge again.
        assert_ok!(challenge(Alice, signed_receipt(chat_receipt(), Bob), good_evidence()));
        assert_eq!(Challenges::<Test>::get(1).unwrap().verifiers.len(), 3);
        Compute::do_try_state().unwrap();
    });
}

#[test]
fn malformed_mismatched_and_replayed_challenges_are_refused() {
    new_test_ext().execute_with(|| {
        let r = paid();
        let resign = |f: &dyn Fn(&mut Receipt)| {
            let mut receipt = chat_receipt();
            f(&mut receipt);
            signed_receipt(receipt, Bob)
        };
        let mut forged = r.clone();
        forged.receipt.input_tokens = 99;
        assert_noop!(challenge(Alice, forged, good_evidence()), Error::<Test>::BadReceiptSignature);
        assert_noop!(challenge(Charlie, r.clone(), good_evidence()), Error::<Test>::NotReceiptUser);
        assert_noop!(
            Compute::challenge(
                RuntimeOrigin::signed(account(Alice)),
                account(Dave),
                r.clone(),
                good_evidence()
            ),
            Error::<Test>::ReceiptProviderMismatch
        );
        assert_noop!(
            challenge(Alice, resign(&|r| r.proof_hash = H256::zero()), good_evidence()),
            Error::<Test>::NothingToChallenge
        );
        assert_noop!(
            challenge(Alice, resign(&|r| r.model_hash = H256::zero()), good_evidence()),
            Error::<Test>::NoCommittedWeights
        );
        assert_noop!(
            challenge(Alice, resign(&|r| r.fee = FEE + 1), good_evidence()),
            Error::<Test>::InconsistentReceipt
        );
        assert_noop!(
            challenge(Alice, r.clone(), evidence(b"{}", RESPONSE, PROOF)),
            Error::<Test>::RequestMismatch
        );
        assert_noop!(
            challenge(Alice, r.clone(), evidence(REQUEST, b"Hello", PROOF)),
            Error::<Test>::ResponseMismatch
        );
        assert_noop!(
            challenge(Alice, r.clone(), evidence(REQUEST, RESPONSE, b"\x01")),
            Error::<Test>::ProofMismatch
        );
        assert_noop!(
            challenge(Alice, resign(&|r| r.total = FEE + 1), good_evidence()),
            Error::<Test>::ReceiptNotSettled
        );
        assert_ok!(challenge(Alice, r.clone(), good_evidence()));
        assert_noop!(
            challenge(Alice, r.clone(), good_evidence()),
            Error::<Test>::AlreadyChallenged
        );
        assert_ok!(vote(Charlie, Vote::Honest));
        assert_ok!(vote(Dave, Vote::Honest));
        assert_noop!(challenge(Alice, r, good_evidence()), Error::<Test>::AlreadyChallenged);
        // The same voucher under another receipt is not a second chance either.
        let again = resign(&|r| r.response_hash = H256(blake2_256(b"other")));
        assert_noop!(
            challenge(Alice, again, evidence(REQUEST, b"other", PROOF)),
            Error::<Test>::AlreadyChallenged
        );
        Compute::do_try_state().unwrap();
    });
}

#[test]
fn a_challenge_needs_the_dispute_window_and_independent_verifiers() {
    new_test_ext().execute_with(|| {
        register(Bob, 0);
        deposit(Alice, Bob, 1_000);
        settle(Bob, vec![claim(Alice, Bob, 1, 0, 300, FEE)]);
        let r = signed_receipt(chat_receipt(), Bob);
        assert_noop!(
            challenge(Alice, r.clone(), good_evidence()),
            Error::<Test>::NotEnoughVerifiers
        );
        // The parties cannot judge their own case.
        assert_ok!(Compute::join_verifiers(RuntimeOrigin::signed(account(Alice))));
        assert_ok!(Compute::join_verifiers(RuntimeOrigin::signed(account(Bob))));
        assert_noop!(
            challenge(Alice, r.clone(), good_evidence()),
            Error::<Test>::NotEnoughVerifiers
        );
        assert_ok!(Compute::join_verifiers(RuntimeOrigin::signed(account(Charlie))));
        run_to(1 + DISPUTE_WINDOW);
        assert_noop!(challenge(Alice, r, good_evidence()), Error::<Test>::DisputeWindowClosed);
    });
}

#[test]
fn votes_come_only_from_assigned_verifiers_once() {
    new_test_ext().execute_with(|| {
        let r = paid();
        assert_ok!(challenge(Alice, r, good_evidence()));
        assert_ok!(Compute::join_verifiers(RuntimeOrigin::signed(account(Ferdie))));
        assert_noop!(vote(Ferdie, Vote::Cheated), Error::<Test>::NotAssignedVerifier);
        assert_noop!(vote(Bob, Vote::Honest), Error::<Test>::NotAssignedVerifier);
        assert_ok!(vote(Charlie, Vote::Honest));
        assert_noop!(vote(Charlie, Vote::Cheated), Error::<Test>::AlreadyVoted);
        assert_noop!(
            Compute::vote(RuntimeOrigin::signed(account(Dave)), 7, Vote::Honest),
            Error::<Test>::ChallengeNotFound
        );
    });
}

#[test]
fn bonds_stay_while_challenges_are_open() {
    new_test_ext().execute_with(|| {
        let r = paid();
        assert_ok!(challenge(Alice, r, good_evidence()));
        // Bob can change his prices, but not the weights his service names, nor remove it.
        let bob = RuntimeOrigin::signed(account(Bob));
        let mut new_terms = terms(
            ServiceKind::Chat,
            "SmolLM2-135M-Instruct",
            "http://127.0.0.1:8080",
            2,
            3,
            "none",
        );
        assert_ok!(Compute::update_service(bob.clone(), 0, new_terms.clone()));
        new_terms.model_hash = H256::repeat_byte(0x77);
        assert_noop!(
            Compute::update_service(bob.clone(), 0, new_terms),
            Error::<Test>::ChallengesOpen
        );
        assert_noop!(Compute::remove_service(bob.clone(), 0), Error::<Test>::ChallengesOpen);
        run_to(1 + DISPUTE_WINDOW);
        let charlie = RuntimeOrigin::signed(account(Charlie));
        assert_noop!(
            Compute::withdraw_verifier_bond(charlie.clone()),
            Error::<Test>::VerifierNotLeft
        );
        assert_ok!(Compute::leave_verifiers(charlie.clone()));
        assert_noop!(Compute::leave_verifiers(charlie.clone()), Error::<Test>::VerifierAlreadyLeft);
        assert_noop!(
            Compute::withdraw_verifier_bond(charlie.clone()),
            Error::<Test>::VerifierHasChallenges
        );
        assert_ok!(Compute::close_challenge(charlie.clone(), 0));
        // Bob stops serving: his bond can go once the window has passed.
        assert_ok!(Compute::remove_service(bob, 0));
        let before = free(Charlie);
        assert_ok!(Compute::withdraw_verifier_bond(charlie));
        assert_eq!(free(Charlie), before + VERIFIER_BOND);
        assert!(!Verifiers::<Test>::contains_key(account(Charlie)));
        assert_ok!(Compute::withdraw_bond(RuntimeOrigin::signed(account(Bob))));
        Compute::do_try_state().unwrap();
    });
}

#[test]
fn a_fee_already_released_comes_back_from_the_bond() {
    new_test_ext().execute_with(|| {
        let r = paid();
        // Challenged late in the dispute window; the window closes while the verifiers work
        // and Bob collects the payment.
        run_to(DISPUTE_WINDOW - 2);
        assert_ok!(challenge(Alice, r, good_evidence()));
        run_to(1 + DISPUTE_WINDOW);
        let users: BoundedVec<_, _> = vec![account(Alice)].try_into().unwrap();
        assert_ok!(Compute::release(RuntimeOrigin::signed(account(Bob)), users));
        assert_eq!(escrow(Alice, Bob).held, 0);
        assert_ok!(vote(Charlie, Vote::Cheated));
        assert_ok!(vote(Eve, Vote::Cheated));
        // 100 back from the bond, then a slash of 900: the whole bond.
        let e = escrow(Alice, Bob);
        assert_eq!((e.balance, e.settled_total), (1_000, FEE));
        assert_eq!(bond_held(Bob), 0);
        assert_eq!(escrowed(), 1_000);
        Compute::do_try_state().unwrap();
    });
}

#[test]
fn the_verifier_set_is_bounded_and_bonded() {
    new_test_ext().execute_with(|| {
        assert_ok!(Compute::join_verifiers(RuntimeOrigin::signed(account(Alice))));
        assert_noop!(
            Compute::join_verifiers(RuntimeOrigin::signed(account(Alice))),
            Error::<Test>::AlreadyVerifier
        );
        assert_eq!(verifier_bond_held(Alice), VERIFIER_BOND);
        let poor = AccountId32::new([0xaa; 32]);
        assert_noop!(
            Compute::join_verifiers(RuntimeOrigin::signed(poor)),
            Error::<Test>::InsufficientBalanceForBond
        );
        for i in 1..MAX_VERIFIERS {
            let who = AccountId32::new([i as u8; 32]);
            Balances::set_balance(&who, 10 * VERIFIER_BOND);
            assert_ok!(Compute::join_verifiers(RuntimeOrigin::signed(who)));
        }
        assert_noop!(
            Compute::join_verifiers(RuntimeOrigin::signed(account(Bob))),
            Error::<Test>::TooManyVerifiers
        );
        assert_eq!(Balances::total_balance(&account(Alice)), ENDOWMENT);
        Compute::do_try_state().unwrap();
    });
}

#[test]
fn a_receipt_whose_payment_was_released_cannot_be_challenged() {
    new_test_ext().execute_with(|| {
        let r = paid();
        run_to(1 + DISPUTE_WINDOW);
        // A later payment is held, but not the challenged receipt's.
        settle(Bob, vec![claim(Alice, Bob, 2, FEE, 300, FEE)]);
        assert_eq!(escrow(Alice, Bob).locked(System::block_number()), FEE);
        assert_noop!(challenge(Alice, r, good_evidence()), Error::<Test>::DisputeWindowClosed);
        let later = signed_receipt(Receipt { nonce: 2, total: 2 * FEE, ..chat_receipt() }, Bob);
        assert_ok!(challenge(Alice, later, good_evidence()));
    });
}

/// The attack: Bob pays himself through Alice, lets the payment be released, and has Alice
/// challenge a receipt with a fee as large as his bond, hoping the refund moves the bond into
/// Alice's escrow ahead of the slash. The slash comes first: the pair loses 70 % of the bond.
#[test]
fn a_provider_cannot_move_its_bond_out_through_a_self_challenge() {
    new_test_ext().execute_with(|| {
        register(Bob, 0);
        deposit(Alice, Bob, 1_000);
        for v in [Charlie, Dave, Eve] {
            assert_ok!(Compute::join_verifiers(RuntimeOrigin::signed(account(v))));
        }
        settle(Bob, vec![claim(Alice, Bob, 1, 0, 1_000, 900)]);
        let r = signed_receipt(Receipt { fee: 900, total: 900, ..chat_receipt() }, Bob);
        let pair = || free(Alice) + free(Bob) + bond_held(Bob) + escrow(Alice, Bob).balance;
        let before = pair() + escrow(Alice, Bob).held;
        run_to(DISPUTE_WINDOW - 2);
        assert_ok!(challenge(Alice, r, good_evidence()));
        run_to(1 + DISPUTE_WINDOW);
        let users: BoundedVec<_, _> = vec![account(Alice)].try_into().unwrap();
        assert_ok!(Compute::release(RuntimeOrigin::signed(account(Bob)), users));
        assert_ok!(vote(Charlie, Vote::Cheated));
        assert_ok!(vote(Dave, Vote::Cheated));
        // Slash: min(bond 1 000, 9 x 900) = the whole bond; nothing is left to refund from.
        assert_eq!(bond_held(Bob), 0);
        assert_eq!(escrow(Alice, Bob).balance, 100, "no refund moved the bond out");
        assert_eq!(pair(), before - 700, "30 % of the slash came back to the pair");
        Compute::do_try_state().unwrap();
    });
}

#[test]
fn a_full_set_makes_room_by_removing_an_idle_verifier() {
    new_test_ext().execute_with(|| {
        let who = |i: u32| AccountId32::new([i as u8 + 1; 32]);
        for i in 0..MAX_VERIFIERS {
            Balances::set_balance(&who(i), 10 * VERIFIER_BOND);
            assert_ok!(Compute::join_verifiers(RuntimeOrigin::signed(who(i))));
        }
        assert_noop!(
            Compute::join_verifiers(RuntimeOrigin::signed(account(Alice))),
            Error::<Test>::TooManyVerifiers
        );
        assert_ok!(Compute::leave_verifiers(RuntimeOrigin::signed(who(7))));
        assert_ok!(Compute::join_verifiers(RuntimeOrigin::signed(account(Alice))));
        assert!(!Verifiers::<Test>::contains_key(who(7)));
        assert_eq!(Balances::free_balance(who(7)), 10 * VERIFIER_BOND, "its bond is released");
        assert_eq!(Verifiers::<Test>::count(), MAX_VERIFIERS);
        Compute::do_try_state().unwrap();
    });
}

/// Verifiers that stay away cannot block a decision: at the deadline, with half of the assigned
/// verifiers voting, the votes cast decide by supermajority.
#[test]
fn absent_verifiers_cannot_block_a_decision() {
    new_test_ext().execute_with(|| {
        let r = paid();
        assert_ok!(Compute::join_verifiers(RuntimeOrigin::signed(account(Ferdie))));
        assert_ok!(challenge(Alice, r, good_evidence()));
        // Four assigned (Charlie, Dave, Eve, Ferdie): three are needed early; two vote.
        assert_ok!(vote(Charlie, Vote::Cheated));
        assert_ok!(vote(Dave, Vote::Cheated));
        assert!(Challenges::<Test>::contains_key(0));
        run_to(1 + VOTING_PERIOD + 1);
        assert_ok!(Compute::close_challenge(RuntimeOrigin::signed(account(Eve)), 0));
        let record = ProviderChallenges::<Test>::get(account(Bob));
        assert_eq!((record.lost, record.undecided), (1, 0), "upheld by the votes cast");
        assert_eq!(bond_held(Bob), PROVIDER_BOND - 900);
        assert_eq!((verifier(Eve).missed, verifier_bond_held(Eve)), (1, VERIFIER_BOND));
        Compute::do_try_state().unwrap();
    });
}

#[test]
fn the_votes_cast_decide_only_with_a_quorum_and_a_supermajority() {
    new_test_ext().execute_with(|| {
        let r = paid();
        assert_ok!(Compute::join_verifiers(RuntimeOrigin::signed(account(Ferdie))));
        assert_ok!(challenge(Alice, r, good_evidence()));
        let c = |votes: &[Option<Vote>]| {
            let mut c = Challenges::<Test>::get(0).unwrap();
            for (slot, v) in c.verifiers.iter_mut().zip(votes) {
                slot.1 = *v;
            }
            Compute::outcome_at_deadline(&c)
        };
        use Vote::{Cheated as C, Honest as H};
        // One of four voted: no quorum.
        assert_eq!(c(&[Some(C), None, None, None]), ChallengeOutcome::Undecided);
        // Two of four, split: no supermajority of the votes cast.
        assert_eq!(c(&[Some(C), Some(H), None, None]), ChallengeOutcome::Undecided);
        assert_eq!(c(&[Some(H), Some(H), None, None]), ChallengeOutcome::Rejected);
        // Three cast, two to one: two thirds.
        assert_eq!(c(&[Some(C), Some(C), Some(H), None]), ChallengeOutcome::Upheld);
        // Four cast, two to two.
        assert_eq!(c(&[Some(C), Some(C), Some(H), Some(H)]), ChallengeOutcome::Undecided);
    });
}

#[test]
fn a_provider_that_stopped_serving_keeps_its_bond_while_challenged() {
    new_test_ext().execute_with(|| {
        let r = paid();
        assert_ok!(Compute::remove_service(RuntimeOrigin::signed(account(Bob)), 0));
        run_to(DISPUTE_WINDOW - 2);
        assert_ok!(challenge(Alice, r, good_evidence()));
        run_to(1 + DISPUTE_WINDOW);
        assert_noop!(
            Compute::withdraw_bond(RuntimeOrigin::signed(account(Bob))),
            Error::<Test>::ChallengesOpen
        );
        // Found honest, Bob gets his whole bond back.
        assert_ok!(vote(Charlie, Vote::Honest));
        assert_ok!(vote(Dave, Vote::Honest));
        let before = free(Bob);
        assert_ok!(Compute::withdraw_bond(RuntimeOrigin::signed(account(Bob))));
        assert_eq!((bond_held(Bob), free(Bob)), (0, before + PROVIDER_BOND));
        Compute::do_try_state().unwrap();
    });
}
