//! Property tests: random sequences of every call, from accounts that are users and providers at
//! once and sign with sr25519, ed25519 and ecdsa, with an existential deposit above one and
//! transfers that reap accounts. After every step each account's free balance and holds must
//! equal a ledger kept from the pallet's and the balances pallet's events alone (so a payout to
//! the wrong account fails, not only a wrong total), the escrow account must keep exactly the
//! escrows' balances and held payments, and no escrow may have paid more than the latest voucher
//! its user signed allows, and no job more than its user asked for when creating it.

use super::*;
use polkadot_sdk::{
    frame_support::traits::fungible::{Inspect, InspectHold},
    sp_core::{ecdsa, ed25519, Pair},
    sp_runtime::{traits::IdentifyAccount, MultiSignature, MultiSigner},
};
use proptest::prelude::*;
use std::collections::BTreeMap;

/// Who signs: every scheme `MultiSignature` accepts.
#[derive(Clone)]
enum Key {
    Sr(Sr25519Keyring),
    Ed(Box<ed25519::Pair>),
    Ec(ecdsa::Pair),
}

impl Key {
    fn account(&self) -> AccountId32 {
        match self {
            Key::Sr(k) => k.to_account_id(),
            Key::Ed(p) => MultiSigner::from(p.public()).into_account(),
            Key::Ec(p) => MultiSigner::from(p.public()).into_account(),
        }
    }
    fn sign(&self, payload: &[u8]) -> MultiSignature {
        match self {
            Key::Sr(k) => k.pair().sign(payload).into(),
            Key::Ed(p) => p.sign(payload).into(),
            Key::Ec(p) => p.sign(payload).into(),
        }
    }
}

/// Five accounts, each free to act as user and as provider.
fn keys() -> Vec<Key> {
    vec![
        Key::Sr(Sr25519Keyring::Alice),
        Key::Sr(Sr25519Keyring::Bob),
        Key::Ed(Box::new(ed25519::Pair::from_string("//Ed", None).unwrap())),
        Key::Ec(ecdsa::Pair::from_string("//Ec", None).unwrap()),
        Key::Sr(Sr25519Keyring::Eve),
    ]
}
const N: usize = 5;
const ED: Balance = 5;
const START: Balance = 20_000;

#[derive(Clone, Debug)]
struct ClaimSpec {
    /// Usually an index into the submitter's escrows (so that most claims meet an escrow),
    /// else an account index.
    user: usize,
    existing: bool,
    /// Voucher names this provider (index) instead of the submitter, rarely.
    named_provider: Option<usize>,
    nonce_step: i8,
    spent_delta: i16,
    cap: Balance,
    fee_claim: Balance,
    forged: bool,
    wrapped: bool,
}

#[derive(Clone, Debug)]
enum Action {
    Register {
        provider: usize,
        service: u32,
    },
    Remove {
        provider: usize,
        service: u32,
    },
    WithdrawBond {
        provider: usize,
    },
    Deposit {
        user: usize,
        provider: usize,
        amount: Balance,
    },
    RequestRefund {
        user: usize,
        provider: usize,
        amount: Balance,
    },
    CancelRefund {
        user: usize,
        provider: usize,
    },
    WithdrawRefund {
        user: usize,
        provider: usize,
    },
    Settle {
        provider: usize,
        claims: Vec<ClaimSpec>,
    },
    Release {
        provider: usize,
        users: Vec<usize>,
    },
    /// Dispute on an existing escrow (`pick` among them), with a receipt near its settled state.
    Dispute {
        pick: u8,
        nonce_delta: i8,
        total_delta: i16,
        forged: bool,
    },
    /// A dispute on any pair, usually without an escrow.
    DisputeAny {
        user: usize,
        provider: usize,
    },
    Transfer {
        from: usize,
        to: usize,
        amount: Balance,
    },
    Advance {
        blocks: u8,
    },
    /// Jump to a block where some window, lock or release starts or ends (`offset` -1, 0, 1).
    AdvanceToBoundary {
        pick: u8,
        offset: i8,
    },
    JoinVerifiers {
        who: usize,
    },
    LeaveVerifiers {
        who: usize,
    },
    WithdrawVerifierBond {
        who: usize,
    },
    /// A challenge of a receipt near an existing escrow's settled state (`pick` among them).
    Challenge {
        pick: u8,
        nonce_delta: i8,
        total_delta: i16,
        fee: Balance,
        /// 0: matching evidence, 1: a forged signature, 2: evidence that does not match.
        flaw: u8,
    },
    /// A vote by the `voter`-th verifier of the `pick`-th open challenge (or by anyone).
    Vote {
        pick: u8,
        voter: u8,
        cheated: bool,
        outsider: Option<usize>,
    },
    CloseChallenge {
        pick: u8,
    },
    /// A fine-tuning service (id `FT_SERVICE`) with terms.
    OfferFineTune {
        provider: usize,
    },
    CreateJob {
        user: usize,
        provider: usize,
        tokens: u64,
        epochs: u32,
    },
    /// One of the job steps on the `pick`-th open job, by its party or by `outsider`.
    JobStep {
        pick: u8,
        step: JobStep,
        outsider: Option<usize>,
    },
}

#[derive(Clone, Copy, Debug)]
enum JobStep {
    Accept,
    Reject,
    Deliver {
        tokens_short: u64,
    },
    Acknowledge,
    Reveal {
        good: bool,
    },
    Contest {
        right_secret: bool,
    },
    Cancel,
    Expire,
    /// The step the job's state waits for, by its party (a bad key when not `good`).
    Next {
        good: bool,
    },
}

const FT_SERVICE: ServiceId = 5;
const JOB_KEY: [u8; 32] = [0x4b; 32];

/// Each user's job secret: derived from its index.
fn job_secret(user: usize) -> [u8; 32] {
    [user as u8 + 1; 32]
}

fn job_step() -> impl Strategy<Value = JobStep> {
    prop_oneof![
        3 => Just(JobStep::Accept),
        1 => Just(JobStep::Reject),
        3 => (prop_oneof![3 => Just(0u64), 1 => 0..50u64]).prop_map(|tokens_short| JobStep::Deliver { tokens_short }),
        3 => Just(JobStep::Acknowledge),
        3 => prop::bool::weighted(0.7).prop_map(|good| JobStep::Reveal { good }),
        2 => prop::bool::weighted(0.8).prop_map(|right_secret| JobStep::Contest { right_secret }),
        1 => Just(JobStep::Cancel),
        2 => Just(JobStep::Expire),
        24 => prop::bool::weighted(0.7).prop_map(|good| JobStep::Next { good }),
    ]
}

fn claim_spec() -> impl Strategy<Value = ClaimSpec> {
    (
        (0..N, prop::bool::weighted(0.8)),
        prop_oneof![9 => Just(None), 1 => (0..N).prop_map(Some)],
        -1i8..4,
        -50i16..200,
        prop_oneof![1 => Just(0u128), 6 => 1..600u128],
        0..700u128,
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.2),
    )
        .prop_map(
            |(
                (user, existing),
                named_provider,
                nonce_step,
                spent_delta,
                cap,
                fee_claim,
                forged,
                wrapped,
            )| {
                ClaimSpec {
                    user,
                    existing,
                    named_provider,
                    nonce_step,
                    spent_delta,
                    cap,
                    fee_claim,
                    forged,
                    wrapped,
                }
            },
        )
}

fn action() -> impl Strategy<Value = Action> {
    // Two accounts are picked most of the time, so that escrows, settlements and disputes meet.
    let a = || prop_oneof![3 => 0..2usize, 1 => 0..N];
    prop_oneof![
        2 => (a(), 0..2u32).prop_map(|(provider, service)| Action::Register { provider, service }),
        1 => (a(), 0..2u32).prop_map(|(provider, service)| Action::Remove { provider, service }),
        1 => a().prop_map(|provider| Action::WithdrawBond { provider }),
        4 => (a(), a(), 0..3_000u128).prop_map(|(user, provider, amount)| Action::Deposit { user, provider, amount }),
        2 => (a(), a(), 0..1_500u128).prop_map(|(user, provider, amount)| Action::RequestRefund { user, provider, amount }),
        1 => (a(), a()).prop_map(|(user, provider)| Action::CancelRefund { user, provider }),
        2 => (a(), a()).prop_map(|(user, provider)| Action::WithdrawRefund { user, provider }),
        5 => (a(), prop::collection::vec(claim_spec(), 1..5)).prop_map(|(provider, claims)| Action::Settle { provider, claims }),
        2 => (a(), prop::collection::vec(a(), 1..4)).prop_map(|(provider, users)| Action::Release { provider, users }),
        4 => (any::<u8>(), -2i8..3, -400i16..50, prop::bool::weighted(0.1)).prop_map(|(pick, nonce_delta, total_delta, forged)| Action::Dispute { pick, nonce_delta, total_delta, forged }),
        1 => (a(), a()).prop_map(|(user, provider)| Action::DisputeAny { user, provider }),
        1 => (a(), a(), 0..25_000u128).prop_map(|(from, to, amount)| Action::Transfer { from, to, amount }),
        2 => (1..30u8).prop_map(|blocks| Action::Advance { blocks }),
        2 => (any::<u8>(), -1i8..2).prop_map(|(pick, offset)| Action::AdvanceToBoundary { pick, offset }),
        3 => (0..N).prop_map(|who| Action::JoinVerifiers { who }),
        1 => a().prop_map(|who| Action::LeaveVerifiers { who }),
        1 => a().prop_map(|who| Action::WithdrawVerifierBond { who }),
        4 => (any::<u8>(), -2i8..2, -300i16..50, 0..400u128, prop_oneof![8 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)])
            .prop_map(|(pick, nonce_delta, total_delta, fee, flaw)| Action::Challenge { pick, nonce_delta, total_delta, fee, flaw }),
        5 => (any::<u8>(), any::<u8>(), any::<bool>(), prop_oneof![9 => Just(None), 1 => (0..N).prop_map(Some)])
            .prop_map(|(pick, voter, cheated, outsider)| Action::Vote { pick, voter, cheated, outsider }),
        1 => any::<u8>().prop_map(|pick| Action::CloseChallenge { pick }),
    ]
}

/// Actions around challenges, after [`challenge_setup`]: settling, challenging, voting,
/// closing, and the calls that race them (releases, disputes, leaving, unbonding).
fn challenge_action() -> impl Strategy<Value = Action> {
    let a = || 0..N;
    prop_oneof![
        2 => (0..2usize, prop::collection::vec(claim_spec(), 1..3)).prop_map(|(provider, claims)| Action::Settle { provider, claims }),
        6 => (any::<u8>(), -1i8..1, -300i16..1, 1..400u128, prop_oneof![8 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)])
            .prop_map(|(pick, nonce_delta, total_delta, fee, flaw)| Action::Challenge { pick, nonce_delta, total_delta, fee, flaw }),
        8 => (any::<u8>(), any::<u8>(), prop::bool::weighted(0.6), prop_oneof![9 => Just(None), 1 => a().prop_map(Some)])
            .prop_map(|(pick, voter, cheated, outsider)| Action::Vote { pick, voter, cheated, outsider }),
        2 => any::<u8>().prop_map(|pick| Action::CloseChallenge { pick }),
        2 => (1..6u8).prop_map(|blocks| Action::Advance { blocks }),
        1 => (any::<u8>(), -1i8..2).prop_map(|(pick, offset)| Action::AdvanceToBoundary { pick, offset }),
        1 => (0..2usize, prop::collection::vec(a(), 1..4)).prop_map(|(provider, users)| Action::Release { provider, users }),
        1 => (any::<u8>(), -2i8..3, -400i16..50, Just(false)).prop_map(|(pick, nonce_delta, total_delta, forged)| Action::Dispute { pick, nonce_delta, total_delta, forged }),
        1 => a().prop_map(|who| Action::JoinVerifiers { who }),
        1 => a().prop_map(|who| Action::LeaveVerifiers { who }),
        1 => a().prop_map(|who| Action::WithdrawVerifierBond { who }),
        1 => (0..2usize, 0..1u32).prop_map(|(provider, service)| Action::Remove { provider, service }),
        1 => (0..2usize).prop_map(|provider| Action::WithdrawBond { provider }),
    ]
}

/// Actions around fine-tuning jobs, after [`job_setup`]: every step of the lifecycle, by the
/// right party or another, with time passing across deadlines, and the calls that race them.
fn job_action() -> impl Strategy<Value = Action> {
    let a = || 0..N;
    prop_oneof![
        3 => (2..N, 0..2usize, 1..400u64, 1..4u32).prop_map(|(user, provider, tokens, epochs)| Action::CreateJob { user, provider, tokens, epochs }),
        16 => (any::<u8>(), job_step(), prop_oneof![9 => Just(None), 1 => a().prop_map(Some)])
            .prop_map(|(pick, step, outsider)| Action::JobStep { pick, step, outsider }),
        2 => (1..8u8).prop_map(|blocks| Action::Advance { blocks }),
        2 => (any::<u8>(), -1i8..2).prop_map(|(pick, offset)| Action::AdvanceToBoundary { pick, offset }),
        1 => (0..2usize, prop::collection::vec(a(), 1..4)).prop_map(|(provider, users)| Action::Release { provider, users }),
        1 => (2..N, 0..2usize, 0..1_500u128).prop_map(|(user, provider, amount)| Action::RequestRefund { user, provider, amount }),
        1 => (2..N, 0..2usize).prop_map(|(user, provider)| Action::WithdrawRefund { user, provider }),
        1 => (2..N, 0..2usize, 0..3_000u128).prop_map(|(user, provider, amount)| Action::Deposit { user, provider, amount }),
        1 => (0..2usize, prop::collection::vec(claim_spec(), 1..3)).prop_map(|(provider, claims)| Action::Settle { provider, claims }),
        1 => (any::<u8>(), -2i8..3, -400i16..50, Just(false)).prop_map(|(pick, nonce_delta, total_delta, forged)| Action::Dispute { pick, nonce_delta, total_delta, forged }),
        1 => (0..2usize, prop_oneof![Just(0u32), Just(FT_SERVICE)]).prop_map(|(provider, service)| Action::Remove { provider, service }),
        1 => (0..2usize).prop_map(|provider| Action::WithdrawBond { provider }),
    ]
}

/// Providers 0 and 1 offer chat and fine-tuning; users 2, 3 and 4 deposit with both.
fn job_setup() -> Vec<Action> {
    let mut setup = Vec::new();
    for provider in 0..2 {
        setup.push(Action::Register { provider, service: 0 });
        setup.push(Action::OfferFineTune { provider });
    }
    for user in 2..N {
        for provider in 0..2 {
            setup.push(Action::Deposit { user, provider, amount: 3_000 });
        }
    }
    setup
}

/// Providers 0 and 1 serve, users 2, 3 and 4 pay both, every user settles a payment, and
/// accounts 2, 3 and 4 are verifiers.
fn challenge_setup() -> Vec<Action> {
    let paying = |user| ClaimSpec {
        user,
        existing: false,
        named_provider: None,
        nonce_step: 1,
        spent_delta: 0,
        cap: 600,
        fee_claim: 450,
        forged: false,
        wrapped: false,
    };
    let mut setup = vec![
        Action::Register { provider: 0, service: 0 },
        Action::Register { provider: 1, service: 0 },
    ];
    for user in 2..N {
        for provider in 0..2 {
            setup.push(Action::Deposit { user, provider, amount: 2_000 });
        }
        setup.push(Action::JoinVerifiers { who: user });
    }
    for provider in 0..2 {
        setup.push(Action::Settle { provider, claims: (2..N).map(paying).collect() });
    }
    setup
}

/// Free balance and holds of one account, as the events say they must be.
#[derive(Clone, Copy, Default, Debug, PartialEq)]
struct Books {
    free: Balance,
    bond: Balance,
    records: Balance,
    verifier_bond: Balance,
    challenge_deposit: Balance,
}

/// What the test remembers between steps, built from events and signatures only.
struct Model {
    keys: Vec<Key>,
    books: BTreeMap<AccountId32, Books>,
    escrow_account: Balance,
    issuance: Balance,
    /// `spent + cap` of every voucher a user really signed, by (user, provider, nonce).
    signed: BTreeMap<(AccountId32, AccountId32, Nonce), Balance>,
    /// (settled_nonce, settled_total) per escrow at the last step.
    last: BTreeMap<(AccountId32, AccountId32), (Nonce, Balance)>,
    /// Votes cast on each open challenge, from `Voted` events.
    votes: BTreeMap<ChallengeId, Vec<(AccountId32, Vote)>>,
    /// Deposit held for each open challenge, from `ChallengeOpened` events.
    deposits: BTreeMap<ChallengeId, Balance>,
    /// Reserve of each job the user created, from `JobCreated` events.
    jobs: BTreeMap<JobId, Balance>,
}

impl Model {
    fn acc(&self, i: usize) -> AccountId32 {
        self.keys[i].account()
    }

    fn index(&self, who: &AccountId32) -> usize {
        (0..N).find(|i| self.acc(*i) == *who).expect("only the test's accounts act")
    }

    /// Post every event of the last call to the books.
    fn post_events(&mut self) -> Vec<Event<Test>> {
        let mut ours = Vec::new();
        for record in System::events() {
            match record.event {
                RuntimeEvent::Balances(e) => {
                    use polkadot_sdk::pallet_balances::Event as B;
                    match e {
                        B::Transfer { from, to, amount } => {
                            let escrow = Compute::escrow_account();
                            if from == escrow || to == escrow {
                                continue; // posted from the pallet's own events
                            }
                            self.books.entry(from).or_default().free -= amount;
                            self.books.entry(to).or_default().free += amount;
                        }
                        B::DustLost { account, amount } => {
                            self.books.entry(account).or_default().free -= amount;
                            self.issuance -= amount;
                        }
                        _ => {}
                    }
                }
                RuntimeEvent::Compute(e) => {
                    match &e {
                        Event::ServiceRegistered { provider, bond_added, .. } => {
                            let b = self.books.entry(provider.clone()).or_default();
                            b.free -= bond_added;
                            b.bond += bond_added;
                        }
                        Event::BondWithdrawn { provider, amount } => {
                            let b = self.books.entry(provider.clone()).or_default();
                            b.bond -= amount;
                            b.free += amount;
                        }
                        Event::EscrowOpened { user, deposit, .. } => {
                            let b = self.books.entry(user.clone()).or_default();
                            b.free -= deposit;
                            b.records += deposit;
                        }
                        Event::Deposited { user, amount, .. } => {
                            self.books.entry(user.clone()).or_default().free -= amount;
                            self.escrow_account += amount;
                        }
                        Event::RefundWithdrawn { user, amount, .. } => {
                            self.books.entry(user.clone()).or_default().free += amount;
                            self.escrow_account -= amount;
                        }
                        Event::EarningsReleased { provider, amount } => {
                            self.books.entry(provider.clone()).or_default().free += amount;
                            self.escrow_account -= amount;
                        }
                        Event::DisputeWon { user, provider, rewarded, burned, .. } => {
                            self.books.entry(provider.clone()).or_default().bond -=
                                rewarded + burned;
                            self.books.entry(user.clone()).or_default().free += rewarded;
                            self.issuance -= burned;
                        }
                        Event::VerifierJoined { verifier, bond } => {
                            let b = self.books.entry(verifier.clone()).or_default();
                            b.free -= bond;
                            b.verifier_bond += bond;
                        }
                        Event::VerifierBondWithdrawn { verifier, amount }
                        | Event::VerifierRemoved { verifier, amount } => {
                            let b = self.books.entry(verifier.clone()).or_default();
                            b.verifier_bond -= amount;
                            b.free += amount;
                        }
                        Event::VerifierPenalized { verifier, amount, .. } => {
                            self.books.entry(verifier.clone()).or_default().verifier_bond -= amount;
                            self.issuance -= amount;
                        }
                        Event::ChallengeOpened { id, user, deposit, .. } => {
                            let b = self.books.entry(user.clone()).or_default();
                            b.free -= deposit;
                            b.challenge_deposit += deposit;
                            self.deposits.insert(*id, *deposit);
                        }
                        Event::JobCreated { id, reserved, .. } => {
                            self.jobs.insert(*id, *reserved);
                        }
                        Event::KeyRevealed { id, fee, refunded, .. } => {
                            let reserved = self.jobs.insert(*id, *fee).expect("created");
                            assert_eq!(
                                fee + refunded,
                                reserved,
                                "a reveal moved other than the reserve"
                            );
                        }
                        Event::JobEnded {
                            id,
                            user,
                            provider,
                            end,
                            refunded,
                            paid,
                            penalty,
                            to_user,
                        } => {
                            let reserved = self.jobs.remove(id).expect("created");
                            assert_eq!(
                                refunded + paid,
                                reserved,
                                "an ending moved other than the reserve"
                            );
                            if matches!(end, JobEnd::KeyContested) {
                                assert_eq!(*paid, 0, "a contested key pays nothing");
                            }
                            assert!(*to_user <= *penalty);
                            // What is paid comes with its `EarningsReleased` event.
                            self.books.entry(provider.clone()).or_default().bond -= penalty;
                            self.books.entry(user.clone()).or_default().free += to_user;
                            self.issuance -= penalty - to_user;
                        }
                        Event::Voted { id, verifier, vote } => {
                            self.votes.entry(*id).or_default().push((verifier.clone(), *vote));
                        }
                        Event::ChallengeEnded {
                            id,
                            user,
                            provider,
                            outcome,
                            from_bond,
                            slashed,
                            challenger_reward,
                            verifier_reward,
                            burned,
                            ..
                        } => {
                            let deposit = self.deposits.remove(id).expect("opened");
                            let votes = self.votes.remove(id).unwrap_or_default();
                            let majority = match outcome {
                                ChallengeOutcome::Upheld => Some(Vote::Cheated),
                                ChallengeOutcome::Rejected => Some(Vote::Honest),
                                ChallengeOutcome::Undecided => None,
                            };
                            let winners: Vec<_> = votes
                                .iter()
                                .filter(|(_, v)| Some(*v) == majority)
                                .map(|(w, _)| w.clone())
                                .collect();
                            let u = self.books.entry(user.clone()).or_default();
                            u.challenge_deposit -= deposit;
                            match outcome {
                                ChallengeOutcome::Upheld => {
                                    u.free += deposit + challenger_reward;
                                    self.books.entry(provider.clone()).or_default().bond -=
                                        from_bond + slashed;
                                    self.escrow_account += from_bond;
                                }
                                ChallengeOutcome::Rejected => {}
                                ChallengeOutcome::Undecided => u.free += deposit,
                            }
                            if !winners.is_empty() {
                                let share = verifier_reward / winners.len() as Balance;
                                assert_eq!(share * winners.len() as Balance, *verifier_reward);
                                for w in winners {
                                    self.books.entry(w).or_default().free += share;
                                }
                            }
                            self.issuance -= burned;
                        }
                        _ => {}
                    }
                    ours.push(e);
                }
                _ => {}
            }
        }
        System::reset_events();
        ours
    }
}

fn boundaries(now: u64) -> Vec<u64> {
    let mut at: Vec<u64> = Escrows::<Test>::iter_values()
        .flat_map(|e| [e.held_until, e.held_next_until, e.unlock_at])
        .chain(Providers::<Test>::iter_values().map(|p| p.bond_locked_until))
        .chain(Challenges::<Test>::iter_values().map(|c| c.deadline + 1))
        .chain(Jobs::<Test>::iter_values().map(|j| match j.state {
            JobState::Created { accept_by } => accept_by + 1,
            JobState::Accepted { deliver_by } => deliver_by + 1,
            JobState::Delivered { ack_by, .. } => ack_by + 1,
            JobState::Acknowledged { reveal_by, .. } => reveal_by + 1,
            JobState::Revealed { contest_until, .. } => contest_until,
        }))
        .filter(|b| *b > now)
        .collect();
    at.sort();
    at.dedup();
    at
}

fn apply(action: &Action, m: &mut Model) {
    let origin = |m: &Model, i: usize| RuntimeOrigin::signed(m.acc(i));
    // Errors are expected for many random calls; what matters is that they change nothing,
    // which the transactional dispatch and the checks below verify.
    match action.clone() {
        Action::Register { provider, service } => {
            let terms = terms(ServiceKind::Chat, "m", "u", 1, 2, "none");
            let _ = Compute::register_service(origin(m, provider), service, terms);
        }
        Action::Remove { provider, service } => {
            let _ = Compute::remove_service(origin(m, provider), service);
        }
        Action::WithdrawBond { provider } => {
            let _ = Compute::withdraw_bond(origin(m, provider));
        }
        Action::Deposit { user, provider, amount } => {
            let _ = Compute::deposit(origin(m, user), m.acc(provider), amount);
        }
        Action::RequestRefund { user, provider, amount } => {
            let _ = Compute::request_refund(origin(m, user), m.acc(provider), amount);
        }
        Action::CancelRefund { user, provider } => {
            let _ = Compute::cancel_refund(origin(m, user), m.acc(provider));
        }
        Action::WithdrawRefund { user, provider } => {
            let _ = Compute::withdraw_refund(origin(m, user), m.acc(provider));
        }
        Action::Settle { provider, claims } => {
            let items: Vec<Claim> = claims
                .iter()
                .map(|c| {
                    let named = c.named_provider.unwrap_or(provider);
                    let named_acc = m.acc(named);
                    let users: Vec<AccountId32> = Escrows::<Test>::iter()
                        .filter(|(_, p, _)| *p == named_acc)
                        .map(|(u, _, _)| u)
                        .collect();
                    let user_index = match (c.existing, users.is_empty()) {
                        (true, false) => m.index(&users[c.user % users.len()]),
                        _ => c.user,
                    };
                    let user = m.acc(user_index);
                    let e = Escrows::<Test>::get(&user, &named_acc).unwrap_or_default();
                    let nonce = (e.settled_nonce as i64 + c.nonce_step as i64).max(0) as Nonce;
                    let spent = (e.settled_total as i128 + c.spent_delta as i128).max(0) as Balance;
                    let v = Voucher {
                        user: user.clone(),
                        provider: named_acc.clone(),
                        service_id: 0,
                        price_version: 0,
                        nonce,
                        request_hash: H256::repeat_byte(nonce as u8),
                        spent,
                        cap: c.cap,
                    };
                    let signer = if c.forged { provider } else { user_index };
                    let mut payload = v.signing_payload(&genesis());
                    if c.wrapped {
                        payload = [b"<Bytes>".as_slice(), &payload, b"</Bytes>"].concat();
                    }
                    if !c.forged {
                        let bound = m.signed.entry((user, named_acc, nonce)).or_default();
                        *bound = (*bound).max(spent + c.cap);
                    }
                    Claim {
                        voucher: SignedVoucher {
                            signature: m.keys[signer].sign(&payload),
                            voucher: v,
                        },
                        fee_claim: c.fee_claim,
                    }
                })
                .collect();
            let _ = Compute::settle(origin(m, provider), items.try_into().unwrap(), H256::zero());
        }
        Action::Release { provider, users } => {
            let users: Vec<_> = users.iter().map(|u| m.acc(*u)).collect();
            let _ = Compute::release(origin(m, provider), users.try_into().unwrap());
        }
        Action::DisputeAny { user, provider } => {
            let r = Receipt {
                user: m.acc(user),
                provider: m.acc(provider),
                service_id: 0,
                nonce: 1,
                request_hash: H256::zero(),
                response_hash: H256::zero(),
                proof_hash: Default::default(),
                model_hash: Default::default(),
                input_tokens: 1,
                output_tokens: 1,
                fee: 0,
                total: 0,
            };
            let signature = m.keys[provider].sign(&r.signing_payload(&genesis()));
            let _ = Compute::dispute(
                origin(m, user),
                m.acc(provider),
                SignedReceipt { receipt: r, signature },
            );
        }
        Action::Dispute { pick, nonce_delta, total_delta, forged } => {
            let mut escrows: Vec<_> = Escrows::<Test>::iter().collect();
            if escrows.is_empty() {
                return;
            }
            escrows.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
            let (user_acc, provider_acc, e) = escrows.swap_remove(pick as usize % escrows.len());
            let (user, provider) = (m.index(&user_acc), m.index(&provider_acc));
            let nonce = (e.settled_through as i64 + nonce_delta as i64).max(0) as Nonce;
            let total = (e.settled_total as i128 + total_delta as i128).max(0) as Balance;
            let r = Receipt {
                user: m.acc(user),
                provider: m.acc(provider),
                service_id: 0,
                nonce,
                request_hash: H256::repeat_byte(nonce as u8),
                response_hash: H256::zero(),
                proof_hash: Default::default(),
                model_hash: Default::default(),
                input_tokens: 1,
                output_tokens: 1,
                fee: 0,
                total,
            };
            let signer = if forged { user } else { provider };
            let signature = m.keys[signer].sign(&r.signing_payload(&genesis()));
            let _ = Compute::dispute(
                origin(m, user),
                m.acc(provider),
                SignedReceipt { receipt: r, signature },
            );
        }
        Action::JoinVerifiers { who } => {
            let _ = Compute::join_verifiers(origin(m, who));
        }
        Action::LeaveVerifiers { who } => {
            let _ = Compute::leave_verifiers(origin(m, who));
        }
        Action::WithdrawVerifierBond { who } => {
            let _ = Compute::withdraw_verifier_bond(origin(m, who));
        }
        Action::Challenge { pick, nonce_delta, total_delta, fee, flaw } => {
            let mut escrows: Vec<_> = Escrows::<Test>::iter().collect();
            if escrows.is_empty() {
                return;
            }
            escrows.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
            let (user_acc, provider_acc, e) = escrows.swap_remove(pick as usize % escrows.len());
            let (user, provider) = (m.index(&user_acc), m.index(&provider_acc));
            let nonce = (e.settled_nonce as i64 + nonce_delta as i64).max(0) as Nonce;
            let total = (e.settled_total as i128 + total_delta as i128).max(0) as Balance;
            let (request, response, proof) = (b"req".to_vec(), b"resp".to_vec(), vec![1u8; 25]);
            let hash = |b: &[u8]| H256(polkadot_sdk::sp_io::hashing::blake2_256(b));
            let r = Receipt {
                user: m.acc(user),
                provider: m.acc(provider),
                service_id: 0,
                nonce,
                request_hash: hash(&request),
                response_hash: hash(&response),
                proof_hash: hash(&proof),
                model_hash: H256::repeat_byte(0x4d),
                input_tokens: 1,
                output_tokens: 1,
                fee,
                total,
            };
            let signer = if flaw == 1 { user } else { provider };
            let signature = m.keys[signer].sign(&r.signing_payload(&genesis()));
            let response = if flaw == 2 { b"other".to_vec() } else { response };
            let evidence = Evidence {
                request: request.try_into().unwrap(),
                response: response.try_into().unwrap(),
                proof: proof.try_into().unwrap(),
            };
            let _ = Compute::challenge(
                origin(m, user),
                m.acc(provider),
                SignedReceipt { receipt: r, signature },
                evidence,
            );
        }
        Action::Vote { pick, voter, cheated, outsider } => {
            let open: Vec<_> = Challenges::<Test>::iter().collect();
            if open.is_empty() {
                return;
            }
            let (id, c) = open.into_iter().min_by_key(|(id, _)| *id as u8 ^ pick).unwrap();
            let who = match outsider {
                Some(i) => m.acc(i),
                None => c.verifiers[voter as usize % c.verifiers.len()].0.clone(),
            };
            let vote = if cheated { Vote::Cheated } else { Vote::Honest };
            let _ = Compute::vote(RuntimeOrigin::signed(who), id, vote);
        }
        Action::CloseChallenge { pick } => {
            let open: Vec<_> = Challenges::<Test>::iter_keys().collect();
            if let Some(id) = open.into_iter().min_by_key(|id| *id as u8 ^ pick) {
                let _ = Compute::close_challenge(origin(m, 0), id);
            }
        }
        Action::OfferFineTune { provider } => {
            let terms = terms(ServiceKind::FineTune, "m", "u", 2, 0, "none");
            let _ = Compute::register_service(origin(m, provider), FT_SERVICE, terms);
            let offer = FineTuneTerms {
                max_dataset_tokens: 500,
                max_epochs: 3,
                max_rank: 8,
                turnaround: 10,
            };
            let _ = Compute::set_finetune_terms(origin(m, provider), FT_SERVICE, offer);
        }
        Action::CreateJob { user, provider, tokens, epochs } => {
            let spec = JobSpec {
                service_id: FT_SERVICE,
                price_version: 0,
                max_turnaround: 10,
                dataset_hash: H256::repeat_byte(1),
                dataset_tokens: tokens,
                epochs,
                rank: 4,
                learning_rate: 1_000,
                seed: 0,
                user_key: public_key(&job_secret(user)),
            };
            let _ = Compute::create_job(origin(m, user), m.acc(provider), spec);
        }
        Action::JobStep { pick, step, outsider } => {
            let open: Vec<_> = Jobs::<Test>::iter().collect();
            let Some((id, job)) = open.into_iter().min_by_key(|(id, _)| *id as u8 ^ pick) else {
                return;
            };
            let (user, provider) = (m.index(&job.user), m.index(&job.provider));
            let by = |party: usize| origin(m, outsider.unwrap_or(party));
            let step = match (step, &job.state) {
                (JobStep::Next { .. }, JobState::Created { .. }) => JobStep::Accept,
                (JobStep::Next { .. }, JobState::Accepted { .. }) => {
                    JobStep::Deliver { tokens_short: 0 }
                }
                (JobStep::Next { .. }, JobState::Delivered { .. }) => JobStep::Acknowledge,
                (JobStep::Next { good }, JobState::Acknowledged { .. }) => JobStep::Reveal { good },
                (JobStep::Next { good }, JobState::Revealed { .. }) => {
                    JobStep::Contest { right_secret: !good }
                }
                (step, _) => step,
            };
            let _ = match step {
                JobStep::Accept => Compute::accept_job(by(provider), id),
                JobStep::Reject => Compute::reject_job(by(provider), id),
                JobStep::Deliver { tokens_short } => {
                    let most = job.spec.trained_tokens().unwrap();
                    let delivery = Delivery {
                        adapter_hash: H256::repeat_byte(2),
                        adapter_len: 100,
                        key_hash: key_hash(&JOB_KEY),
                        trained_tokens: most.saturating_sub(tokens_short),
                        final_loss: 1,
                    };
                    Compute::deliver(by(provider), id, delivery)
                }
                JobStep::Acknowledge => Compute::acknowledge(by(user), id),
                JobStep::Reveal { good } => {
                    let for_job = if good { id } else { id + 1 };
                    let sealed = compute_primitives::seal_key(
                        for_job,
                        &JOB_KEY,
                        &[7; 32],
                        &job.spec.user_key,
                    );
                    Compute::reveal_key(by(provider), id, sealed)
                }
                JobStep::Contest { right_secret } => {
                    let secret = if right_secret { job_secret(user) } else { [0xee; 32] };
                    Compute::contest_key(by(user), id, secret)
                }
                JobStep::Cancel => Compute::cancel_job(by(user), id),
                JobStep::Expire => Compute::expire_job(by(user), id),
                JobStep::Next { .. } => unreachable!("mapped to the step the state waits for"),
            };
        }
        Action::Transfer { from, to, amount } => {
            let _ = Balances::transfer_allow_death(origin(m, from), m.acc(to), amount);
        }
        Action::Advance { blocks } => run_to(System::block_number() + blocks as u64),
        Action::AdvanceToBoundary { pick, offset } => {
            let now = System::block_number();
            let at = boundaries(now);
            if !at.is_empty() {
                let target = (at[pick as usize % at.len()] as i64 + offset as i64) as u64;
                run_to(target.max(now));
            }
        }
    }
}

fn check(m: &mut Model, events: &[Event<Test>]) -> Result<(), TestCaseError> {
    prop_assert_eq!(Balances::total_issuance(), m.issuance, "issuance moved without an event");
    let escrow_account = Balances::balance(&Compute::escrow_account());
    prop_assert_eq!(escrow_account, m.escrow_account, "escrow account differs from the events");
    let kept: Balance =
        Escrows::<Test>::iter_values().map(|e| e.balance + e.held + e.held_next).sum();
    let reserved: Balance = Jobs::<Test>::iter_values().map(|j| j.reserved).sum();
    prop_assert_eq!(
        escrow_account,
        kept + reserved + ED,
        "escrow account keeps exactly the escrows and the jobs' reserves"
    );
    for (id, job) in Jobs::<Test>::iter() {
        let booked = m.jobs.get(&id).copied();
        prop_assert_eq!(Some(job.reserved), booked, "job {} reserve differs from its events", id);
        // What a job can pay is what its user asked for when creating it.
        let asked = job.spec.trained_tokens().unwrap() as Balance * job.price;
        prop_assert!(job.reserved <= asked);
        if let JobState::Revealed { fee, delivery, .. } = job.state {
            prop_assert_eq!(fee, delivery.trained_tokens as Balance * job.price);
            prop_assert_eq!(job.reserved, fee);
            prop_assert!(fee <= asked);
        }
    }
    for i in 0..N {
        let who = m.acc(i);
        let books = m.books.get(&who).copied().unwrap_or_default();
        let actual = Books {
            free: Balances::free_balance(&who),
            bond: Balances::balance_on_hold(&HoldReason::ProviderBond.into(), &who),
            records: Balances::balance_on_hold(&HoldReason::EscrowRecord.into(), &who),
            verifier_bond: Balances::balance_on_hold(&HoldReason::VerifierBond.into(), &who),
            challenge_deposit: Balances::balance_on_hold(
                &HoldReason::ChallengeDeposit.into(),
                &who,
            ),
        };
        prop_assert_eq!(actual, books, "account {} differs from its books", i);
        let records = Escrows::<Test>::iter_prefix(&who).count() as Balance;
        prop_assert_eq!(actual.records, records * ESCROW_DEPOSIT, "record deposits of {}", i);
        prop_assert!(
            !Escrows::<Test>::contains_key(&who, &who),
            "account {} holds an escrow with itself",
            i
        );
    }
    Compute::do_try_state().map_err(|e| TestCaseError::fail(format!("try_state: {e:?}")))?;

    let now = System::block_number();
    for (user, provider, e) in Escrows::<Test>::iter() {
        let key = (user.clone(), provider.clone());
        let (nonce, total) = m.last.get(&key).copied().unwrap_or_default();
        prop_assert!(e.settled_nonce >= nonce, "settled_nonce decreased");
        let disputed = events.iter().any(|ev| {
            matches!(ev, Event::DisputeWon { user: u, provider: p, .. } if *u == user && *p == provider)
        });
        prop_assert!(disputed || e.settled_total >= total, "settled_total fell without a dispute");
        // Every settled nonce is a voucher the user signed, and whenever claims pay, the total
        // paid stays within the `spent + cap` of a voucher settled by this very step (a batch
        // may settle several; a later one may sign a smaller `spent` and pay nothing).
        if e.settled_nonce > 0 {
            let bound = m.signed.get(&(user.clone(), provider.clone(), e.settled_nonce));
            prop_assert!(bound.is_some(), "settled nonce {} was never signed", e.settled_nonce);
            if e.settled_total > total {
                let allowed = m
                    .signed
                    .range(
                        (user.clone(), provider.clone(), nonce + 1)
                            ..=(user.clone(), provider.clone(), e.settled_nonce),
                    )
                    .map(|(_, bound)| *bound)
                    .max()
                    .unwrap_or_default();
                prop_assert!(
                    e.settled_total <= allowed,
                    "paid up to {} above the {} the vouchers settled allow",
                    e.settled_total,
                    allowed
                );
            }
        } else {
            prop_assert_eq!(e.settled_total, 0);
        }
        // No block lets a bond go while a dispute could still need it.
        if e.locked(now) > 0 {
            let info = Providers::<Test>::get(&provider).unwrap();
            prop_assert!(now < info.bond_locked_until, "bond unlockable during a dispute window");
        }
        m.last.insert(key, (e.settled_nonce, e.settled_total));
    }
    Ok(())
}

proptest! {
    // 96 cases by default; `PROPTEST_CASES=N` runs a deeper search.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(96),
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_call_sequences_keep_every_account_exact(actions in prop::collection::vec(action(), 1..48)) {
        run(&actions)?;
    }

    #[test]
    fn random_jobs_keep_every_account_exact(actions in prop::collection::vec(job_action(), 1..64)) {
        run(&[job_setup(), actions].concat())?;
    }

    #[test]
    fn random_challenges_keep_every_account_exact(actions in prop::collection::vec(challenge_action(), 1..40)) {
        run(&[challenge_setup(), actions].concat())?;
    }
}

fn run(actions: &[Action]) -> Result<(), TestCaseError> {
    {
        ExistentialDeposit::set(ED);
        let result = new_test_ext().execute_with(|| {
            let mut m = Model {
                keys: keys(),
                books: BTreeMap::new(),
                escrow_account: ED,
                issuance: 0,
                signed: BTreeMap::new(),
                last: BTreeMap::new(),
                votes: BTreeMap::new(),
                deposits: BTreeMap::new(),
                jobs: BTreeMap::new(),
            };
            use polkadot_sdk::frame_support::traits::fungible::Mutate;
            for i in 0..N {
                Balances::set_balance(&m.acc(i), START);
            }
            System::reset_events();
            for i in 0..N {
                m.books.insert(m.acc(i), Books { free: START, ..Books::default() });
            }
            m.issuance = Balances::total_issuance();
            prop_assert_eq!(Balances::balance(&Compute::escrow_account()), ED);
            for a in actions {
                apply(a, &mut m);
                let events = m.post_events();
                check(&mut m, &events)?;
            }
            Ok::<(), TestCaseError>(())
        });
        ExistentialDeposit::set(1);
        result
    }
}
