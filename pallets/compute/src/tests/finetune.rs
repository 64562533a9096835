//! Fine-tuning jobs: terms, the lifecycle, every deadline, and the fair exchange of the key.

use super::*;
use compute_primitives::seal_key;
use polkadot_sdk::{
    frame_support::{assert_noop, traits::fungible::Inspect},
    sp_keyring::Sr25519Keyring::{Alice, Bob, Charlie, Dave},
};

/// Price per trained token of the fine-tuning service.
const PRICE: Balance = 3;
const SERVICE: ServiceId = 7;
const USER_SECRET: [u8; 32] = [5; 32];
const KEY: [u8; 32] = [0x6b; 32];

fn ft_terms() -> FineTuneTerms {
    FineTuneTerms { max_dataset_tokens: 1_000, max_epochs: 4, max_rank: 16, turnaround: 20 }
}

/// Bob offers fine-tuning at `PRICE`; Alice deposits 10 000 with him.
fn offer() {
    assert_ok!(Compute::register_service(
        RuntimeOrigin::signed(account(Bob)),
        SERVICE,
        terms(ServiceKind::FineTune, "SmolLM2-135M-Instruct", "http://w", PRICE, 0, "none")
    ));
    assert_ok!(Compute::set_finetune_terms(
        RuntimeOrigin::signed(account(Bob)),
        SERVICE,
        ft_terms()
    ));
    deposit(Alice, Bob, 10_000);
    events();
}

fn spec(tokens: u64, epochs: u32) -> JobSpec {
    JobSpec {
        service_id: SERVICE,
        price_version: 0,
        max_turnaround: 20,
        dataset_hash: H256::repeat_byte(0xda),
        dataset_tokens: tokens,
        epochs,
        rank: 8,
        learning_rate: 2_000,
        seed: 1,
        user_key: public_key(&USER_SECRET),
    }
}

/// Alice creates a job of `tokens × epochs` with Bob; returns its id.
fn create(tokens: u64, epochs: u32) -> JobId {
    let id = NextJobId::<Test>::get();
    assert_ok!(Compute::create_job(
        RuntimeOrigin::signed(account(Alice)),
        account(Bob),
        spec(tokens, epochs)
    ));
    id
}

fn delivery(trained_tokens: u64) -> Delivery {
    Delivery {
        adapter_hash: H256::repeat_byte(0xad),
        adapter_len: 1_234,
        key_hash: key_hash(&KEY),
        trained_tokens,
        final_loss: 420,
    }
}

/// A job of 50 tokens × 2 epochs (fee 300), accepted, delivered in full and acknowledged.
fn acknowledged() -> JobId {
    let id = create(50, 2);
    assert_ok!(Compute::accept_job(RuntimeOrigin::signed(account(Bob)), id));
    assert_ok!(Compute::deliver(RuntimeOrigin::signed(account(Bob)), id, delivery(100)));
    assert_ok!(Compute::acknowledge(RuntimeOrigin::signed(account(Alice)), id));
    id
}

fn state(id: JobId) -> JobState<u64> {
    Jobs::<Test>::get(id).expect("job open").state
}

fn ended(id: JobId) -> Event<Test> {
    events()
        .into_iter()
        .find(|e| matches!(e, Event::JobEnded { id: i, .. } if *i == id))
        .expect("JobEnded")
}

fn issuance() -> Balance {
    Balances::total_issuance()
}

#[test]
fn terms_are_set_only_on_a_fine_tuning_service_of_ones_own() {
    new_test_ext().execute_with(|| {
        register(Bob, 0);
        assert_noop!(
            Compute::set_finetune_terms(RuntimeOrigin::signed(account(Bob)), 0, ft_terms()),
            Error::<Test>::NotFineTune
        );
        assert_noop!(
            Compute::set_finetune_terms(RuntimeOrigin::signed(account(Charlie)), 0, ft_terms()),
            Error::<Test>::ServiceNotFound
        );
        assert_ok!(Compute::register_service(
            RuntimeOrigin::signed(account(Bob)),
            SERVICE,
            terms(ServiceKind::FineTune, "m", "u", PRICE, 0, "none")
        ));
        deposit(Alice, Bob, 1_000);
        assert_noop!(
            Compute::create_job(RuntimeOrigin::signed(account(Alice)), account(Bob), spec(10, 1)),
            Error::<Test>::NoFineTuneTerms
        );
        let empty = FineTuneTerms { max_epochs: 0, ..ft_terms() };
        assert_noop!(
            Compute::set_finetune_terms(RuntimeOrigin::signed(account(Bob)), SERVICE, empty),
            Error::<Test>::EmptyTerms
        );
        assert_ok!(Compute::set_finetune_terms(
            RuntimeOrigin::signed(account(Bob)),
            SERVICE,
            ft_terms()
        ));
        // A chat service cannot take jobs, and changing the kind drops the terms.
        assert_noop!(
            Compute::create_job(
                RuntimeOrigin::signed(account(Alice)),
                account(Bob),
                JobSpec { service_id: 0, ..spec(10, 1) }
            ),
            Error::<Test>::NotFineTune
        );
        assert_ok!(Compute::update_service(
            RuntimeOrigin::signed(account(Bob)),
            SERVICE,
            terms(ServiceKind::Chat, "m", "u", PRICE, 0, "none")
        ));
        assert!(FineTuneOffers::<Test>::get(account(Bob), SERVICE).is_none());
        Compute::do_try_state().unwrap();
    });
}

#[test]
fn a_job_reserves_exactly_tokens_times_epochs_times_price_within_the_terms() {
    new_test_ext().execute_with(|| {
        offer();
        let before = escrow(Alice, Bob).balance;
        let id = create(100, 3);
        assert_eq!(escrow(Alice, Bob).balance, before - 900);
        let job = Jobs::<Test>::get(id).unwrap();
        assert_eq!((job.reserved, job.price, job.turnaround), (900, PRICE, 20));
        assert_eq!(state(id), JobState::Created { accept_by: 1 + ACCEPT_WINDOW });
        assert_eq!(UserJobs::<Test>::get(account(Alice)), 1);
        Compute::do_try_state().unwrap();

        let alice = RuntimeOrigin::signed(account(Alice));
        let create = |s: JobSpec| Compute::create_job(alice.clone(), account(Bob), s);
        assert_noop!(create(spec(1_001, 1)), Error::<Test>::DatasetTooLarge);
        assert_noop!(create(spec(0, 1)), Error::<Test>::EmptyDataset);
        assert_noop!(create(spec(10, 0)), Error::<Test>::EpochsOutOfRange);
        assert_noop!(create(spec(10, 5)), Error::<Test>::EpochsOutOfRange);
        assert_noop!(create(JobSpec { rank: 17, ..spec(10, 1) }), Error::<Test>::RankOutOfRange);
        assert_noop!(create(JobSpec { rank: 0, ..spec(10, 1) }), Error::<Test>::RankOutOfRange);
        // 1 000 × 4 × 3 = 12 000 > the 9 100 left.
        assert_noop!(create(spec(1_000, 4)), Error::<Test>::InsufficientEscrow);
        // A pending refund is not spendable.
        assert_ok!(Compute::request_refund(alice.clone(), account(Bob), 9_000));
        assert_noop!(create(spec(100, 1)), Error::<Test>::InsufficientEscrow);
        assert_ok!(Compute::cancel_refund(alice.clone(), account(Bob)));
        assert_noop!(
            Compute::create_job(RuntimeOrigin::signed(account(Charlie)), account(Bob), spec(10, 1)),
            Error::<Test>::EscrowNotFound
        );
        assert_noop!(
            Compute::create_job(RuntimeOrigin::signed(account(Bob)), account(Bob), spec(10, 1)),
            Error::<Test>::SelfEscrow
        );
        for _ in 1..MAX_JOBS_PER_USER {
            assert_ok!(create(spec(10, 1)));
        }
        assert_noop!(create(spec(10, 1)), Error::<Test>::TooManyJobs);
    });
}

#[test]
fn the_whole_exchange_pays_exactly_trained_tokens_times_price() {
    new_test_ext().execute_with(|| {
        offer();
        let issued = issuance();
        let id = create(100, 2);
        let bob = RuntimeOrigin::signed(account(Bob));
        let alice = RuntimeOrigin::signed(account(Alice));
        assert_ok!(Compute::accept_job(bob.clone(), id));
        assert_eq!(state(id), JobState::Accepted { deliver_by: 1 + 20 });
        assert_eq!(ProviderJobs::<Test>::get(account(Bob)), 1);
        // Fewer tokens than reserved were trained (a truncated example): the fee follows.
        assert_noop!(
            Compute::deliver(bob.clone(), id, delivery(201)),
            Error::<Test>::TooManyTrainedTokens
        );
        assert_ok!(Compute::deliver(bob.clone(), id, delivery(190)));
        assert_ok!(Compute::acknowledge(alice.clone(), id));
        let sealed = seal_key(id, &KEY, &[9; 32], &public_key(&USER_SECRET));
        let before = escrow(Alice, Bob).balance;
        assert_ok!(Compute::reveal_key(bob.clone(), id, sealed));
        // 190 × 3 = 570 kept by the job for Bob, the other 30 of the 600 back on the escrow;
        // nothing joins the escrow's held payments for inference.
        let e = escrow(Alice, Bob);
        assert_eq!((e.balance, e.held, e.held_next), (before + 30, 0, 0));
        assert_eq!(Jobs::<Test>::get(id).unwrap().reserved, 570);
        // The user opens the key from the chain.
        let JobState::Revealed { key, contest_until, .. } = state(id) else { panic!() };
        assert_eq!(unseal_key(id, &key, &USER_SECRET), KEY);
        assert_noop!(Compute::contest_key(alice.clone(), id, USER_SECRET), Error::<Test>::KeyOpens);
        Compute::do_try_state().unwrap();

        assert_noop!(Compute::expire_job(alice.clone(), id), Error::<Test>::DeadlineNotReached);
        run_to(contest_until);
        let free_bob = free(Bob);
        assert_ok!(Compute::expire_job(RuntimeOrigin::signed(account(Charlie)), id));
        assert!(matches!(
            ended(id),
            Event::JobEnded { end: JobEnd::Completed, paid: 570, refunded: 0, .. }
        ));
        assert_eq!(free(Bob), free_bob + 570);
        assert_eq!(provider_info(Bob).earned, 570);
        assert!(Jobs::<Test>::get(id).is_none());
        assert!(ProviderJobIds::<Test>::get(account(Bob), id).is_none());
        assert_eq!(UserJobs::<Test>::get(account(Alice)), 0);
        assert_eq!(ProviderJobs::<Test>::get(account(Bob)), 0);
        assert_eq!(escrow(Alice, Bob).balance, 10_000 - 570);
        assert_eq!(issuance(), issued);
        Compute::do_try_state().unwrap();
    });
}

#[test]
fn a_job_names_the_price_and_turnaround_its_user_accepted() {
    new_test_ext().execute_with(|| {
        offer();
        let bob = RuntimeOrigin::signed(account(Bob));
        let alice = RuntimeOrigin::signed(account(Alice));
        // The provider raises its price just ahead of the user's transaction.
        assert_ok!(Compute::update_service(
            bob.clone(),
            SERVICE,
            terms(
                ServiceKind::FineTune,
                "SmolLM2-135M-Instruct",
                "http://w",
                PRICE * 10,
                0,
                "none"
            )
        ));
        assert_noop!(
            Compute::create_job(alice.clone(), account(Bob), spec(10, 1)),
            Error::<Test>::PriceChanged
        );
        assert_ok!(Compute::create_job(
            alice.clone(),
            account(Bob),
            JobSpec { price_version: 1, ..spec(10, 1) }
        ));
        // Or promises a later delivery.
        let slow = FineTuneTerms { turnaround: 21, ..ft_terms() };
        assert_ok!(Compute::set_finetune_terms(bob.clone(), SERVICE, slow));
        assert_noop!(
            Compute::create_job(
                alice.clone(),
                account(Bob),
                JobSpec { price_version: 1, ..spec(10, 1) }
            ),
            Error::<Test>::TurnaroundTooLong
        );
        let endless = FineTuneTerms { turnaround: 1_001, ..ft_terms() };
        assert_noop!(
            Compute::set_finetune_terms(bob.clone(), SERVICE, endless),
            Error::<Test>::OutOfBounds
        );
        // A free service takes no jobs.
        assert_ok!(Compute::update_service(
            bob.clone(),
            SERVICE,
            terms(ServiceKind::FineTune, "SmolLM2-135M-Instruct", "http://w", 0, 0, "none")
        ));
        assert_ok!(Compute::set_finetune_terms(bob, SERVICE, ft_terms()));
        assert_noop!(
            Compute::create_job(alice, account(Bob), JobSpec { price_version: 2, ..spec(10, 1) }),
            Error::<Test>::FreeJob
        );
    });
}

#[test]
fn each_step_belongs_to_its_party_and_its_window() {
    new_test_ext().execute_with(|| {
        offer();
        let id = create(100, 2);
        let (alice, bob) =
            (RuntimeOrigin::signed(account(Alice)), RuntimeOrigin::signed(account(Bob)));
        let charlie = RuntimeOrigin::signed(account(Charlie));
        assert_noop!(Compute::accept_job(alice.clone(), id), Error::<Test>::NotJobProvider);
        assert_noop!(Compute::reject_job(charlie.clone(), id), Error::<Test>::NotJobProvider);
        assert_noop!(Compute::deliver(bob.clone(), id, delivery(1)), Error::<Test>::JobNotAccepted);
        assert_noop!(Compute::acknowledge(alice.clone(), id), Error::<Test>::JobNotDelivered);
        assert_noop!(Compute::cancel_job(charlie.clone(), id), Error::<Test>::NotJobUser);
        assert_noop!(Compute::accept_job(bob.clone(), 99), Error::<Test>::JobNotFound);
        run_to(1 + ACCEPT_WINDOW + 1);
        assert_noop!(Compute::accept_job(bob.clone(), id), Error::<Test>::DeadlinePassed);

        let id = create(100, 2);
        let now = System::block_number();
        assert_ok!(Compute::accept_job(bob.clone(), id));
        assert_noop!(Compute::accept_job(bob.clone(), id), Error::<Test>::JobNotCreated);
        assert_noop!(Compute::reject_job(bob.clone(), id), Error::<Test>::JobNotCreated);
        assert_noop!(
            Compute::deliver(bob.clone(), id, Delivery { adapter_len: 0, ..delivery(1) }),
            Error::<Test>::EmptyAdapter
        );
        run_to(now + 21);
        assert_noop!(Compute::deliver(bob.clone(), id, delivery(1)), Error::<Test>::DeadlinePassed);

        let id = create(10, 1);
        let now = System::block_number();
        assert_ok!(Compute::accept_job(bob.clone(), id));
        assert_ok!(Compute::deliver(bob.clone(), id, delivery(10)));
        assert_noop!(Compute::acknowledge(bob.clone(), id), Error::<Test>::NotJobUser);
        let sealed = seal_key(id, &KEY, &[9; 32], &public_key(&USER_SECRET));
        assert_noop!(
            Compute::reveal_key(bob.clone(), id, sealed),
            Error::<Test>::JobNotAcknowledged
        );
        run_to(now + ACK_WINDOW + 1);
        assert_noop!(Compute::acknowledge(alice.clone(), id), Error::<Test>::DeadlinePassed);
        Compute::do_try_state().unwrap();
    });
}

#[test]
fn rejected_cancelled_or_unanswered_jobs_refund_everything() {
    new_test_ext().execute_with(|| {
        offer();
        let (alice, bob) =
            (RuntimeOrigin::signed(account(Alice)), RuntimeOrigin::signed(account(Bob)));
        let bond = provider_info(Bob).bond;
        let a = create(100, 1);
        let b = create(100, 1);
        let c = create(100, 1);
        assert_eq!(escrow(Alice, Bob).balance, 10_000 - 900);
        assert_ok!(Compute::reject_job(bob, a));
        assert!(matches!(ended(a), Event::JobEnded { end: JobEnd::Rejected, refunded: 300, .. }));
        assert_ok!(Compute::cancel_job(alice.clone(), b));
        assert!(matches!(ended(b), Event::JobEnded { end: JobEnd::Cancelled, refunded: 300, .. }));
        assert_noop!(Compute::expire_job(alice.clone(), c), Error::<Test>::DeadlineNotReached);
        run_to(1 + ACCEPT_WINDOW + 1);
        assert_ok!(Compute::expire_job(alice, c));
        assert!(matches!(
            ended(c),
            Event::JobEnded { end: JobEnd::NotAccepted, refunded: 300, penalty: 0, .. }
        ));
        assert_eq!(escrow(Alice, Bob).balance, 10_000);
        assert_eq!(provider_info(Bob).bond, bond);
        assert_eq!(UserJobs::<Test>::get(account(Alice)), 0);
        Compute::do_try_state().unwrap();
    });
}

#[test]
fn no_delivery_refunds_and_penalizes_the_bond() {
    new_test_ext().execute_with(|| {
        offer();
        let issued = issuance();
        let id = create(1_000, 2); // 6 000 reserved
        assert_ok!(Compute::accept_job(RuntimeOrigin::signed(account(Bob)), id));
        let (bond, alice_free) = (provider_info(Bob).bond, free(Alice));
        run_to(1 + 20);
        assert_noop!(
            Compute::expire_job(RuntimeOrigin::signed(account(Charlie)), id),
            Error::<Test>::DeadlineNotReached
        );
        run_to(1 + 21);
        assert_ok!(Compute::expire_job(RuntimeOrigin::signed(account(Charlie)), id));
        // 10 % of 6 000 from the bond: half to Alice, half burned.
        assert!(matches!(
            ended(id),
            Event::JobEnded {
                end: JobEnd::NotDelivered,
                refunded: 6_000,
                penalty: 600,
                to_user: 300,
                ..
            }
        ));
        assert_eq!(escrow(Alice, Bob).balance, 10_000);
        assert_eq!(provider_info(Bob).bond, bond - 600);
        assert_eq!(bond_held(Bob), bond - 600);
        assert_eq!(free(Alice), alice_free + 300);
        assert_eq!(issuance(), issued - 300);
        assert_eq!(ProviderJobs::<Test>::get(account(Bob)), 0);
        Compute::do_try_state().unwrap();
    });
}

#[test]
fn walking_away_pays_the_provider_the_abandonment_share() {
    new_test_ext().execute_with(|| {
        offer();
        let (alice, bob) =
            (RuntimeOrigin::signed(account(Alice)), RuntimeOrigin::signed(account(Bob)));
        // Not acknowledged in time: 20 % of the delivered fee (200 × 3 = 600).
        let id = create(100, 2);
        assert_ok!(Compute::accept_job(bob.clone(), id));
        assert_ok!(Compute::deliver(bob.clone(), id, delivery(200)));
        run_to(1 + ACK_WINDOW + 1);
        let free_bob = free(Bob);
        assert_ok!(Compute::expire_job(bob.clone(), id));
        assert!(matches!(
            ended(id),
            Event::JobEnded { end: JobEnd::Abandoned, refunded: 480, paid: 120, penalty: 0, .. }
        ));
        assert_eq!(free(Bob), free_bob + 120, "paid at once");
        assert_eq!(escrow(Alice, Bob).balance, 10_000 - 120);

        // Cancelled after acceptance: 20 % of the reserve.
        let id = create(100, 1);
        assert_ok!(Compute::accept_job(bob.clone(), id));
        assert_ok!(Compute::cancel_job(alice.clone(), id));
        assert!(matches!(
            ended(id),
            Event::JobEnded { end: JobEnd::Abandoned, refunded: 240, paid: 60, .. }
        ));
        // An acknowledged job is the provider's to finish.
        let id = acknowledged();
        assert_noop!(Compute::cancel_job(alice, id), Error::<Test>::JobNotCancellable);
        assert_eq!(provider_info(Bob).earned, 180);
        Compute::do_try_state().unwrap();
    });
}

#[test]
fn a_withheld_key_refunds_and_slashes() {
    new_test_ext().execute_with(|| {
        offer();
        let issued = issuance();
        let id = acknowledged();
        let (bond, alice_free) = (provider_info(Bob).bond, free(Alice));
        let JobState::Acknowledged { reveal_by, .. } = state(id) else { panic!() };
        run_to(reveal_by + 1);
        let sealed = seal_key(id, &KEY, &[9; 32], &public_key(&USER_SECRET));
        assert_noop!(
            Compute::reveal_key(RuntimeOrigin::signed(account(Bob)), id, sealed),
            Error::<Test>::DeadlinePassed
        );
        assert_ok!(Compute::expire_job(RuntimeOrigin::signed(account(Alice)), id));
        // max(2 × 300, 50) = 600 from the bond, half to Alice.
        assert!(matches!(
            ended(id),
            Event::JobEnded {
                end: JobEnd::KeyWithheld,
                refunded: 300,
                penalty: 600,
                to_user: 300,
                ..
            }
        ));
        assert_eq!(escrow(Alice, Bob).balance, 10_000);
        assert_eq!(provider_info(Bob).bond, bond - 600);
        assert_eq!(free(Alice), alice_free + 300);
        assert_eq!(issuance(), issued - 300);
        Compute::do_try_state().unwrap();
    });
}

#[test]
fn a_key_that_does_not_open_is_proven_with_the_job_secret() {
    new_test_ext().execute_with(|| {
        offer();
        let issued = issuance();
        let id = acknowledged();
        let (alice, bob) =
            (RuntimeOrigin::signed(account(Alice)), RuntimeOrigin::signed(account(Bob)));
        // Sealed to the wrong job: it opens to something else for this one.
        let bad = seal_key(id + 1, &KEY, &[9; 32], &public_key(&USER_SECRET));
        assert_ok!(Compute::reveal_key(bob.clone(), id, bad));
        assert_eq!(Jobs::<Test>::get(id).unwrap().reserved, 300);
        let (bond, alice_free) = (provider_info(Bob).bond, free(Alice));
        assert_noop!(
            Compute::contest_key(alice.clone(), id, [6; 32]),
            Error::<Test>::WrongJobSecret
        );
        assert_noop!(
            Compute::contest_key(RuntimeOrigin::signed(account(Charlie)), id, USER_SECRET),
            Error::<Test>::NotJobUser
        );
        assert_ok!(Compute::contest_key(alice.clone(), id, USER_SECRET));
        assert!(matches!(
            ended(id),
            Event::JobEnded {
                end: JobEnd::KeyContested,
                refunded: 300,
                penalty: 600,
                to_user: 300,
                ..
            }
        ));
        let e = escrow(Alice, Bob);
        assert_eq!((e.balance, e.held), (10_000, 0));
        assert_eq!(provider_info(Bob).bond, bond - 600);
        assert_eq!(provider_info(Bob).earned, 0);
        assert_eq!(free(Alice), alice_free + 300);
        assert_eq!(issuance(), issued - 300);
        Compute::do_try_state().unwrap();
    });
}

#[test]
fn a_contest_after_the_window_fails_and_the_fee_is_the_providers() {
    new_test_ext().execute_with(|| {
        offer();
        let id = acknowledged();
        let (alice, bob) =
            (RuntimeOrigin::signed(account(Alice)), RuntimeOrigin::signed(account(Bob)));
        let bad = seal_key(id + 1, &KEY, &[9; 32], &public_key(&USER_SECRET));
        assert_ok!(Compute::reveal_key(bob.clone(), id, bad));
        let JobState::Revealed { contest_until, .. } = state(id) else { panic!() };
        // Root shortening the dispute window changes nothing for a revealed job.
        assert_ok!(Compute::set_dispute_window(RuntimeOrigin::root(), 1));
        run_to(contest_until - 1);
        assert_noop!(Compute::expire_job(bob.clone(), id), Error::<Test>::DeadlineNotReached);
        run_to(contest_until);
        assert_noop!(
            Compute::contest_key(alice.clone(), id, USER_SECRET),
            Error::<Test>::DeadlinePassed
        );
        let free_bob = free(Bob);
        assert_ok!(Compute::expire_job(bob, id));
        assert_eq!(free(Bob), free_bob + 300);
        Compute::do_try_state().unwrap();
    });
}

#[test]
fn job_payments_never_reach_inference_disputes() {
    new_test_ext().execute_with(|| {
        // Bob serves chat too: Alice's settled inference is disputable while held, and a job's
        // fee, kept by the job, neither extends nor feeds that.
        offer();
        register(Bob, 0);
        settle(Bob, vec![claim(Alice, Bob, 1, 0, 100, 100)]);
        run_to(1 + DISPUTE_WINDOW);
        assert_ok!(Compute::release(
            RuntimeOrigin::signed(account(Bob)),
            vec![account(Alice)].try_into().unwrap()
        ));
        let id = acknowledged();
        let sealed = seal_key(id, &KEY, &[9; 32], &public_key(&USER_SECRET));
        assert_ok!(Compute::reveal_key(RuntimeOrigin::signed(account(Bob)), id, sealed));
        // An old receipt of the released settlement: nothing is locked for it.
        let r = signed_receipt(receipt(Alice, Bob, 1, 10, 10), Bob);
        assert_noop!(
            Compute::dispute(RuntimeOrigin::signed(account(Alice)), account(Bob), r),
            Error::<Test>::DisputeWindowClosed
        );
        assert_eq!(escrow(Alice, Bob).locked(System::block_number()), 0);
        Compute::do_try_state().unwrap();
    });
}

#[test]
fn a_stuck_job_blocks_no_other_and_keeps_the_providers_bond() {
    new_test_ext().execute_with(|| {
        offer();
        let bob = RuntimeOrigin::signed(account(Bob));
        let stuck = create(10, 1);
        assert_ok!(Compute::accept_job(bob.clone(), stuck));
        let done = acknowledged();
        let sealed = seal_key(done, &KEY, &[9; 32], &public_key(&USER_SECRET));
        assert_ok!(Compute::reveal_key(bob.clone(), done, sealed));
        assert!(matches!(state(stuck), JobState::Accepted { .. }));
        // The fine-tuning service, its model and the bond stay while accepted jobs are open.
        assert_noop!(Compute::remove_service(bob.clone(), SERVICE), Error::<Test>::JobsOpen);
        let mut other =
            terms(ServiceKind::FineTune, "SmolLM2-135M-Instruct", "http://w", PRICE, 0, "none");
        other.model_hash = H256::repeat_byte(0x99);
        assert_noop!(Compute::update_service(bob.clone(), SERVICE, other), Error::<Test>::JobsOpen);
        run_to(1 + 21);
        assert_ok!(Compute::expire_job(bob.clone(), stuck));
        let JobState::Revealed { contest_until, .. } = state(done) else { panic!() };
        run_to(contest_until);
        assert_ok!(Compute::expire_job(bob.clone(), done));
        assert_ok!(Compute::remove_service(bob.clone(), SERVICE));
        assert!(FineTuneOffers::<Test>::get(account(Bob), SERVICE).is_none());
        Compute::do_try_state().unwrap();
    });
}

#[test]
fn jobs_with_oneself_through_another_account_lose_money() {
    new_test_ext().execute_with(|| {
        // Dave is Bob's second account: a self-run job that is never delivered moves half the
        // penalty to Dave and burns the other half.
        offer();
        deposit(Dave, Bob, 10_000);
        // Everything the two accounts own, holds and the escrow account included.
        let pair = |k: &[Sr25519Keyring]| -> Balance {
            k.iter().map(|k| Balances::total_balance(&account(*k))).sum::<Balance>()
                + Balances::total_balance(&Compute::escrow_account())
        };
        let before = pair(&[Bob, Dave]);
        let id = NextJobId::<Test>::get();
        assert_ok!(Compute::create_job(
            RuntimeOrigin::signed(account(Dave)),
            account(Bob),
            spec(1_000, 3)
        ));
        assert_ok!(Compute::accept_job(RuntimeOrigin::signed(account(Bob)), id));
        run_to(1 + 21);
        assert_ok!(Compute::expire_job(RuntimeOrigin::signed(account(Dave)), id));
        // 10 % of 9 000: 450 burned.
        assert_eq!(pair(&[Bob, Dave]), before - 450);
        Compute::do_try_state().unwrap();
    });
}
