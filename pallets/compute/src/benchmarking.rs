//! Benchmarks (v2) for every call, each on its costliest path. Signatures use ecdsa, the costliest
//! scheme `MultiSignature` accepts (a public-key recovery plus two hashes), over the
//! `<Bytes>`-wrapped payload: verification first tries the raw payload and fails, then recovers
//! again over the wrapped one, so every signature costs two recoveries (an invalid one costs the
//! same two and writes nothing). The weights cover sr25519 and ed25519 too.

use super::*;
use crate::pallet::{
    Call, Challenges, Config, DisputeWindow, Escrows, FineTuneOffers, Jobs, Pallet, Providers,
    RefundLock, Services, Verifiers,
};
use alloc::{format, vec::Vec};
use polkadot_sdk::{
    frame_benchmarking::v2::*,
    frame_support::{
        traits::{
            fungible::{Inspect, Mutate},
            Get,
        },
        BoundedVec,
    },
    frame_system::{pallet_prelude::BlockNumberFor, RawOrigin},
    sp_core::{crypto::KeyTypeId, ecdsa, H256},
    sp_runtime::{
        traits::{IdentifyAccount, One},
        AccountId32, MultiSignature, MultiSigner,
    },
};

const KEY: KeyTypeId = KeyTypeId(*b"bnch");
const FUNDS: Balance = 1_000_000_000_000_000_000;

/// An ecdsa key in the benchmark keystore and its account.
fn key(name: &str) -> (ecdsa::Public, AccountId32) {
    let public =
        polkadot_sdk::sp_io::crypto::ecdsa_generate(KEY, Some(format!("//{name}").into_bytes()));
    let account = MultiSigner::from(public).into_account();
    (public, account)
}

/// Sign `payload` wrapped in `<Bytes>…</Bytes>`, which verification tries second.
fn sign(public: &ecdsa::Public, payload: &[u8]) -> MultiSignature {
    let mut wrapped = b"<Bytes>".to_vec();
    wrapped.extend_from_slice(payload);
    wrapped.extend_from_slice(b"</Bytes>");
    let sig = polkadot_sdk::sp_io::crypto::ecdsa_sign(KEY, public, &wrapped)
        .expect("key is in the keystore");
    MultiSignature::Ecdsa(sig)
}

fn now<T: Config>() -> BlockNumberFor<T> {
    polkadot_sdk::frame_system::Pallet::<T>::block_number()
}

/// Give the escrow of (`user`, `provider`) both held buckets: `older` released at `older_at`,
/// the younger locked a full window, with the escrow account funded for them.
fn hold_both<T: Config>(
    user: &AccountId32,
    provider: &AccountId32,
    older: Balance,
    older_at: BlockNumberFor<T>,
) {
    let until = now::<T>() + DisputeWindow::<T>::get();
    Escrows::<T>::mutate(user, provider, |e| {
        let e = e.as_mut().expect("escrow exists");
        (e.held, e.held_until, e.held_next, e.held_next_until) = (older, older_at, 1_000, until);
    });
    Providers::<T>::mutate(provider, |p| {
        if let Some(p) = p.as_mut() {
            p.bond_locked_until = p.bond_locked_until.max(until);
        }
    });
    let escrow = Pallet::<T>::escrow_account();
    let have = T::Currency::balance(&escrow);
    T::Currency::set_balance(&escrow, have + older + 1_000);
}

fn fund<T: Config>(who: &AccountId32) {
    T::Currency::set_balance(who, FUNDS);
}

fn bytes<S: Get<u32>>(len: u32) -> BoundedVec<u8, S> {
    alloc::vec![b'x'; len.min(S::get()) as usize].try_into().expect("within bound")
}

/// Terms with every bounded field at its longest.
fn terms() -> ServiceTerms {
    ServiceTerms {
        kind: ServiceKind::Chat,
        model: bytes(compute_primitives::MAX_MODEL_LEN),
        model_hash: H256::repeat_byte(0x4d),
        url: bytes(compute_primitives::MAX_URL_LEN),
        input_price: 1_000,
        output_price: 2_000,
        verifiability: bytes(compute_primitives::MAX_VERIFIABILITY_LEN),
    }
}

/// A funded provider with one registered service.
fn provider<T: Config>(name: &str) -> (ecdsa::Public, AccountId32) {
    let (public, account) = key(name);
    fund::<T>(&account);
    Pallet::<T>::do_register_service(account.clone(), 0, Service::new(terms(), 0))
        .expect("registers");
    (public, account)
}

/// A funded user with an escrow of `amount` with `provider`.
fn user_with_escrow<T: Config>(
    name: &str,
    provider: &AccountId32,
    amount: Balance,
) -> (ecdsa::Public, AccountId32) {
    let (public, account) = key(name);
    fund::<T>(&account);
    Pallet::<T>::do_deposit(account.clone(), provider.clone(), amount).expect("deposits");
    (public, account)
}

/// An escrow that covers a first voucher's cap and satisfies the runtime's `MinDeposit`.
fn escrow_amount<T: Config>() -> Balance {
    T::MinDeposit::get().max(1_000_000)
}

/// The first voucher of an escrow: nonce 1, nothing spent, a cap of 1 000.
fn first_voucher(user: AccountId32, provider: AccountId32) -> Voucher {
    Voucher {
        user,
        provider,
        service_id: 0,
        price_version: 0,
        nonce: 1,
        request_hash: H256::repeat_byte(1),
        spent: 0,
        cap: 1_000,
    }
}

/// `n` funded, bonded verifiers.
fn verifiers<T: Config>(n: u32) -> Vec<AccountId32> {
    (0..n)
        .map(|i| {
            let who: AccountId32 = account("verifier", i, 0);
            fund::<T>(&who);
            Pallet::<T>::do_join_verifiers(who.clone()).expect("joins");
            who
        })
        .collect()
}

/// Evidence of `len` bytes in all, filling the request first, then the response, then the proof.
fn evidence(len: u32) -> Evidence {
    let max = compute_primitives::MAX_EVIDENCE_LEN;
    let request = len.min(max);
    let response = (len - request).min(max);
    let proof = (len - request - response).min(max);
    Evidence { request: bytes(request), response: bytes(response), proof: bytes(proof.max(1)) }
}

/// A provider with a paid, settled voucher whose payment is held for the longest window, and a
/// receipt for it committing to `evidence`, signed by the provider.
fn challengeable<T: Config>(evidence: &Evidence) -> (AccountId32, AccountId32, SignedReceipt) {
    DisputeWindow::<T>::put(T::MaxDisputeWindow::get());
    let (p_key, p) = provider::<T>("provider");
    let (u_key, user) = user_with_escrow::<T>("user", &p, escrow_amount::<T>());
    let genesis = Pallet::<T>::genesis_hash();
    let voucher = first_voucher(user.clone(), p.clone());
    let signature = sign(&u_key, &voucher.signing_payload(&genesis));
    let claim = Claim { voucher: SignedVoucher { voucher, signature }, fee_claim: 1_000 };
    let items: BoundedVec<Claim, T::MaxBatch> =
        alloc::vec![claim].try_into().expect("one claim fits");
    Pallet::<T>::do_settle(p.clone(), items, H256::zero()).expect("settles");
    let hash = |b: &[u8]| H256(polkadot_sdk::sp_io::hashing::blake2_256(b));
    let receipt = Receipt {
        user: user.clone(),
        provider: p.clone(),
        service_id: 0,
        nonce: 1,
        request_hash: hash(&evidence.request),
        response_hash: hash(&evidence.response),
        proof_hash: hash(&evidence.proof),
        model_hash: H256::repeat_byte(0x4d),
        input_tokens: 1,
        output_tokens: 1,
        fee: 1_000,
        total: 1_000,
    };
    let signature = sign(&p_key, &receipt.signing_payload(&genesis));
    (user, p, SignedReceipt { receipt, signature })
}

/// An open challenge with `MAX_VERIFIERS` verifiers assigned; returns its verifiers.
fn open_challenge<T: Config>() -> Vec<AccountId32> {
    let all = verifiers::<T>(MAX_VERIFIERS);
    let e = evidence(3);
    let (user, p, receipt) = challengeable::<T>(&e);
    Pallet::<T>::do_challenge(user, p, receipt, e).expect("opens");
    all
}

/// Challenge 0's votes one short of upholding it early: `threshold − 1` `Cheated`, as many
/// `Honest` as cannot reach it; half the fee still held, half to come from the bond. Returns the
/// first verifier that has not voted.
fn votes_short_of_a_decision<T: Config>() -> AccountId32 {
    let needed = Pallet::<T>::threshold(MAX_VERIFIERS);
    let honest = (MAX_VERIFIERS - needed).min(needed - 1);
    Challenges::<T>::mutate(0, |c| {
        let c = c.as_mut().expect("open");
        for (i, slot) in c.verifiers.iter_mut().enumerate() {
            let i = i as u32;
            slot.1 = if i < needed - 1 {
                Some(Vote::Cheated)
            } else if i < needed - 1 + honest {
                Some(Vote::Honest)
            } else {
                None
            };
        }
    });
    let c = Challenges::<T>::get(0).expect("open");
    Escrows::<T>::mutate(&c.user, &c.provider, |e| {
        e.as_mut().expect("escrow exists").held = 500;
    });
    c.verifiers[(needed - 1 + honest) as usize].0.clone()
}

const JOB_SECRET: [u8; 32] = [5; 32];
const JOB_KEY: [u8; 32] = [6; 32];

/// A provider offering fine-tuning as service 1, and a user with an escrow that covers a job.
fn finetune_parties<T: Config>() -> (AccountId32, AccountId32) {
    let (_, p) = provider::<T>("provider");
    let service = Service::new(ServiceTerms { kind: ServiceKind::FineTune, ..terms() }, 0);
    Pallet::<T>::do_register_service(p.clone(), 1, service).expect("registers");
    let offer = FineTuneTerms {
        max_dataset_tokens: 1_000_000,
        max_epochs: 10,
        max_rank: 64,
        turnaround: 100,
    };
    Pallet::<T>::do_set_finetune_terms(p.clone(), 1, offer).expect("sets terms");
    let (_, user) = user_with_escrow::<T>("user", &p, FUNDS / 2);
    (user, p)
}

fn job_spec() -> JobSpec {
    JobSpec {
        service_id: 1,
        price_version: 0,
        max_turnaround: 100,
        dataset_hash: H256::repeat_byte(0xda),
        dataset_tokens: 1_000_000,
        epochs: 10,
        rank: 64,
        learning_rate: 1_000,
        seed: 0,
        user_key: compute_primitives::public_key(&JOB_SECRET),
    }
}

fn job_delivery() -> Delivery {
    Delivery {
        adapter_hash: H256::repeat_byte(0xad),
        adapter_len: 1 << 20,
        key_hash: compute_primitives::key_hash(&JOB_KEY),
        trained_tokens: 10_000_000,
        final_loss: 500,
    }
}

/// Job 0 taken to `stage` steps: 0 created, 1 accepted, 2 delivered, 3 acknowledged,
/// 4 revealed with a key that does not open (sealed for another job).
fn job_at<T: Config>(stage: u8) -> (AccountId32, AccountId32) {
    let (user, p) = finetune_parties::<T>();
    Pallet::<T>::do_create_job(user.clone(), p.clone(), job_spec()).expect("creates");
    if stage >= 1 {
        Pallet::<T>::do_accept_job(p.clone(), 0).expect("accepts");
    }
    if stage >= 2 {
        Pallet::<T>::do_deliver(p.clone(), 0, job_delivery()).expect("delivers");
    }
    if stage >= 3 {
        Pallet::<T>::do_acknowledge(user.clone(), 0).expect("acknowledges");
    }
    if stage >= 4 {
        let user_key = compute_primitives::public_key(&JOB_SECRET);
        let bad = compute_primitives::seal_key(1, &JOB_KEY, &[9; 32], &user_key);
        Pallet::<T>::do_reveal_key(p.clone(), 0, bad).expect("reveals");
    }
    (user, p)
}

fn advance<T: Config>(blocks: BlockNumberFor<T>) {
    let now = polkadot_sdk::frame_system::Pallet::<T>::block_number();
    polkadot_sdk::frame_system::Pallet::<T>::set_block_number(now + blocks + One::one());
}

#[benchmarks]
mod benchmarks {
    use super::*;

    #[benchmark]
    fn register_service() {
        let (_, who) = key("provider");
        fund::<T>(&who);
        #[extrinsic_call]
        _(RawOrigin::Signed(who.clone()), 0, terms());
        assert!(Services::<T>::contains_key(&who, 0));
    }

    #[benchmark]
    fn update_service() {
        let (_, who) = provider::<T>("provider");
        let terms = ServiceTerms { input_price: 5, output_price: 6, ..terms() };
        #[extrinsic_call]
        _(RawOrigin::Signed(who.clone()), 0, terms);
        assert_eq!(Services::<T>::get(&who, 0).map(|s| s.price_version), Some(1));
    }

    #[benchmark]
    fn remove_service() {
        let (_, who) = provider::<T>("provider");
        #[extrinsic_call]
        _(RawOrigin::Signed(who.clone()), 0);
        assert!(Providers::<T>::get(&who).is_some_and(|p| p.unbonding));
    }

    #[benchmark]
    fn withdraw_bond() {
        let (_, who) = provider::<T>("provider");
        Pallet::<T>::do_remove_service(who.clone(), 0).expect("removes");
        Providers::<T>::mutate(&who, |p| {
            if let Some(p) = p.as_mut() {
                p.bond_locked_until = now::<T>() + DisputeWindow::<T>::get();
            }
        });
        advance::<T>(DisputeWindow::<T>::get());
        #[extrinsic_call]
        _(RawOrigin::Signed(who.clone()));
        assert!(Providers::<T>::get(&who).is_some_and(|p| p.bond == 0));
    }

    /// A first deposit: it also creates the record and holds its deposit.
    #[benchmark]
    fn deposit() {
        let (_, p) = provider::<T>("provider");
        let (_, user) = key("user");
        fund::<T>(&user);
        let amount = T::MinDeposit::get();
        #[extrinsic_call]
        _(RawOrigin::Signed(user.clone()), p.clone(), amount);
        assert_eq!(Escrows::<T>::get(&user, &p).map(|e| e.balance), Some(amount));
    }

    #[benchmark]
    fn request_refund() {
        let (_, p) = provider::<T>("provider");
        let (_, user) = user_with_escrow::<T>("user", &p, T::MinDeposit::get());
        #[extrinsic_call]
        _(RawOrigin::Signed(user.clone()), p.clone(), 1);
        assert_eq!(Escrows::<T>::get(&user, &p).map(|e| e.pending_refund), Some(1));
    }

    #[benchmark]
    fn cancel_refund() {
        let (_, p) = provider::<T>("provider");
        let (_, user) = user_with_escrow::<T>("user", &p, T::MinDeposit::get());
        Pallet::<T>::do_request_refund(user.clone(), p.clone(), 1).expect("requests");
        #[extrinsic_call]
        _(RawOrigin::Signed(user.clone()), p.clone());
        assert_eq!(Escrows::<T>::get(&user, &p).map(|e| e.pending_refund), Some(0));
    }

    #[benchmark]
    fn withdraw_refund() {
        let (_, p) = provider::<T>("provider");
        let (_, user) = user_with_escrow::<T>("user", &p, T::MinDeposit::get());
        Pallet::<T>::do_request_refund(user.clone(), p.clone(), 1).expect("requests");
        advance::<T>(RefundLock::<T>::get());
        #[extrinsic_call]
        _(RawOrigin::Signed(user.clone()), p.clone());
        assert_eq!(Escrows::<T>::get(&user, &p).map(|e| e.pending_refund), Some(0));
    }

    /// `n` claims from `n` different users, each paid in full: two signature recoveries, an
    /// escrow read and write per claim; every escrow's older held payment is due, so each claim
    /// also releases it and moves the younger one up, and the batch pays the provider once.
    #[benchmark]
    fn settle(n: Linear<1, { T::MaxBatch::get() }>) {
        let (_, p) = provider::<T>("provider");
        let genesis = Pallet::<T>::genesis_hash();
        let claims: Vec<Claim> = (0..n)
            .map(|i| {
                let (public, user) =
                    user_with_escrow::<T>(&format!("user{i}"), &p, escrow_amount::<T>());
                hold_both::<T>(&user, &p, 1_000, now::<T>());
                let voucher = first_voucher(user, p.clone());
                let signature = sign(&public, &voucher.signing_payload(&genesis));
                Claim { voucher: SignedVoucher { voucher, signature }, fee_claim: 1_000 }
            })
            .collect();
        let items: BoundedVec<Claim, T::MaxBatch> = claims.try_into().expect("n <= MaxBatch");
        #[extrinsic_call]
        _(RawOrigin::Signed(p.clone()), items, H256::repeat_byte(7));
        assert_eq!(Providers::<T>::get(&p).map(|i| i.claims_settled), Some(n as u64));
    }

    /// A won dispute that recovers from both held payments, and whose penalty both rewards
    /// the user and burns from the bond.
    #[benchmark]
    fn dispute() {
        // Both payments must still be locked when the dispute comes, whatever the genesis window.
        DisputeWindow::<T>::put(T::MaxDisputeWindow::get());
        let (p_key, p) = provider::<T>("provider");
        let (u_key, user) = user_with_escrow::<T>("user", &p, escrow_amount::<T>());
        let genesis = Pallet::<T>::genesis_hash();
        let mut voucher = first_voucher(user.clone(), p.clone());
        for _ in 0..2 {
            let signature = sign(&u_key, &voucher.signing_payload(&genesis));
            let claim = Claim {
                voucher: SignedVoucher { voucher: voucher.clone(), signature },
                fee_claim: 1_000,
            };
            let items: BoundedVec<Claim, T::MaxBatch> =
                alloc::vec![claim].try_into().expect("one claim fits");
            Pallet::<T>::do_settle(p.clone(), items, H256::zero()).expect("settles");
            advance::<T>(One::one());
            voucher.nonce += 1;
            voucher.spent += 1_000;
        }
        let receipt = Receipt {
            user: user.clone(),
            provider: p.clone(),
            service_id: 0,
            nonce: 2,
            request_hash: H256::repeat_byte(1),
            response_hash: H256::repeat_byte(2),
            proof_hash: Default::default(),
            model_hash: Default::default(),
            input_tokens: 1,
            output_tokens: 1,
            fee: 50,
            total: 100,
        };
        let signature = sign(&p_key, &receipt.signing_payload(&genesis));
        #[extrinsic_call]
        _(RawOrigin::Signed(user.clone()), p.clone(), SignedReceipt { receipt, signature });
        let e = Escrows::<T>::get(&user, &p).expect("escrow exists");
        assert_eq!((e.settled_total, e.held, e.held_next), (100, 100, 0));
    }

    /// `n` escrows whose both held payments are due.
    #[benchmark]
    fn release(n: Linear<1, { T::MaxBatch::get() }>) {
        let (_, p) = provider::<T>("provider");
        let users: Vec<AccountId32> = (0..n)
            .map(|i| {
                let (_, user) =
                    user_with_escrow::<T>(&format!("user{i}"), &p, escrow_amount::<T>());
                hold_both::<T>(&user, &p, 1_000, now::<T>());
                user
            })
            .collect();
        advance::<T>(DisputeWindow::<T>::get());
        let first = users[0].clone();
        let users: BoundedVec<AccountId32, T::MaxBatch> = users.try_into().expect("n <= MaxBatch");
        #[extrinsic_call]
        _(RawOrigin::Signed(p.clone()), users);
        assert_eq!(Escrows::<T>::get(&first, &p).map(|e| e.held + e.held_next), Some(0));
    }

    #[benchmark]
    fn set_refund_lock() {
        let blocks = T::MaxRefundLock::get();
        #[extrinsic_call]
        _(RawOrigin::Root, blocks);
        assert_eq!(RefundLock::<T>::get(), blocks);
    }

    #[benchmark]
    fn set_dispute_window() {
        let blocks = T::MaxDisputeWindow::get();
        #[extrinsic_call]
        _(RawOrigin::Root, blocks);
        assert_eq!(DisputeWindow::<T>::get(), blocks);
    }

    /// A full set: one idle verifier is removed to make room.
    #[benchmark]
    fn join_verifiers() {
        let all = verifiers::<T>(MAX_VERIFIERS);
        Pallet::<T>::do_leave_verifiers(all[0].clone()).expect("leaves");
        let (_, who) = key("verifier");
        fund::<T>(&who);
        #[extrinsic_call]
        _(RawOrigin::Signed(who.clone()));
        assert!(Verifiers::<T>::contains_key(&who));
    }

    #[benchmark]
    fn leave_verifiers() {
        let who = verifiers::<T>(1).remove(0);
        #[extrinsic_call]
        _(RawOrigin::Signed(who.clone()));
        assert!(Verifiers::<T>::get(&who).is_some_and(|v| v.leaving));
    }

    #[benchmark]
    fn withdraw_verifier_bond() {
        let who = verifiers::<T>(1).remove(0);
        Pallet::<T>::do_leave_verifiers(who.clone()).expect("leaves");
        #[extrinsic_call]
        _(RawOrigin::Signed(who.clone()));
        assert!(!Verifiers::<T>::contains_key(&who));
    }

    /// `b` bytes of evidence hashed, every verifier slot filled and assigned.
    #[benchmark]
    fn challenge(b: Linear<1, { 3 * compute_primitives::MAX_EVIDENCE_LEN }>) {
        verifiers::<T>(MAX_VERIFIERS);
        let e = evidence(b);
        let (user, p, receipt) = challengeable::<T>(&e);
        #[extrinsic_call]
        _(RawOrigin::Signed(user), p, receipt, e);
        assert!(Challenges::<T>::contains_key(0));
    }

    /// The vote that ends a challenge of `MAX_VERIFIERS` as upheld: the refund comes from the
    /// held payment and the bond, the slash pays the challenger and every majority verifier,
    /// and every minority verifier is penalized.
    #[benchmark]
    fn vote() {
        let all = open_challenge::<T>();
        let last = votes_short_of_a_decision::<T>();
        assert!(all.contains(&last));
        #[extrinsic_call]
        _(RawOrigin::Signed(last), 0, Vote::Cheated);
        assert!(!Challenges::<T>::contains_key(0));
    }

    /// A challenge of `MAX_VERIFIERS` closed after its deadline with the votes one short of an
    /// early decision: upheld by the votes cast, with every transfer and penalty of `vote`.
    #[benchmark]
    fn close_challenge() {
        let all = open_challenge::<T>();
        votes_short_of_a_decision::<T>();
        advance::<T>(T::VotingPeriod::get());
        #[extrinsic_call]
        _(RawOrigin::Signed(all[0].clone()), 0);
        assert!(!Challenges::<T>::contains_key(0));
    }

    #[benchmark]
    fn set_finetune_terms() {
        let (_, p) = provider::<T>("provider");
        let service = Service::new(ServiceTerms { kind: ServiceKind::FineTune, ..terms() }, 0);
        Pallet::<T>::do_register_service(p.clone(), 1, service).expect("registers");
        let offer =
            FineTuneTerms { max_dataset_tokens: 1, max_epochs: 1, max_rank: 1, turnaround: 1 };
        #[extrinsic_call]
        _(RawOrigin::Signed(p.clone()), 1, offer);
        assert!(FineTuneOffers::<T>::contains_key(&p, 1));
    }

    #[benchmark]
    fn create_job() {
        let (user, p) = finetune_parties::<T>();
        #[extrinsic_call]
        _(RawOrigin::Signed(user), p, job_spec());
        assert!(Jobs::<T>::contains_key(0));
    }

    #[benchmark]
    fn accept_job() {
        let (_, p) = job_at::<T>(0);
        #[extrinsic_call]
        _(RawOrigin::Signed(p), 0);
        assert!(matches!(Jobs::<T>::get(0).map(|j| j.state), Some(JobState::Accepted { .. })));
    }

    #[benchmark]
    fn deliver() {
        let (_, p) = job_at::<T>(1);
        #[extrinsic_call]
        _(RawOrigin::Signed(p), 0, job_delivery());
        assert!(matches!(Jobs::<T>::get(0).map(|j| j.state), Some(JobState::Delivered { .. })));
    }

    #[benchmark]
    fn acknowledge() {
        let (user, _) = job_at::<T>(2);
        #[extrinsic_call]
        _(RawOrigin::Signed(user), 0);
        assert!(matches!(Jobs::<T>::get(0).map(|j| j.state), Some(JobState::Acknowledged { .. })));
    }

    #[benchmark]
    fn reveal_key() {
        let (_, p) = job_at::<T>(3);
        let user_key = compute_primitives::public_key(&JOB_SECRET);
        let sealed = compute_primitives::seal_key(0, &JOB_KEY, &[9; 32], &user_key);
        #[extrinsic_call]
        _(RawOrigin::Signed(p), 0, sealed);
        assert!(matches!(Jobs::<T>::get(0).map(|j| j.state), Some(JobState::Revealed { .. })));
    }

    /// Two X25519 operations, the slash's transfer and burn, and the refund.
    #[benchmark]
    fn contest_key() {
        let (user, _) = job_at::<T>(4);
        #[extrinsic_call]
        _(RawOrigin::Signed(user), 0, JOB_SECRET);
        assert!(!Jobs::<T>::contains_key(0));
    }

    /// The costliest ending (`reject_job`, `cancel_job` and `expire_job` share this weight): a
    /// withheld key, whose slash moves part of the bond to the user and burns the rest.
    #[benchmark]
    fn end_job() {
        let (user, _) = job_at::<T>(3);
        advance::<T>(T::RevealWindow::get());
        #[extrinsic_call]
        expire_job(RawOrigin::Signed(user), 0);
        assert!(!Jobs::<T>::contains_key(0));
    }

    impl_benchmark_test_suite!(Pallet, crate::mock::new_bench_ext(), crate::mock::Test);
}
